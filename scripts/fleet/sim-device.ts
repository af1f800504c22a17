/**
 * A simulated device for fleet-scale rollout runs (scripts/bench-rollout.ts): a real MQTT client
 * with the device's own credentials that speaks the agent's side of the update protocol
 * (shared/updates.ts) for real — hello with model state, `model.install` verified against the
 * trusted keys and the release counter, the artifact downloaded over HTTP with device
 * credentials and checked against the signed sha256 and size, a `model` event through a
 * telemetry batch, the command result, and synthetic health windows — but without loading the
 * model in ONNX Runtime. Hundreds of these fit in one process; real agents cannot (one Node
 * process and ORT sessions each), which is why end-to-end tests use real agents and the
 * benchmark uses these.
 */
import { createHash } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { decodeJson } from '../../shared/codec.ts';
import { CommandSchema, PROTOCOL_VERSION, topics, type Command, type TelemetryRecord } from '../../shared/protocol.ts';
import { verifyRelease, type TrustedKey } from '../../shared/signing.ts';
import {
  CONFIDENCE_BINS,
  EVENTS_STREAM,
  HEALTH_KIND,
  HEALTH_STREAM,
  INSTALL_COMMAND,
  InstallArgsSchema,
  LATENCY_EDGES_MS,
  MODEL_EVENT_KIND,
  ROLLBACK_COMMAND,
  RollbackArgsSchema,
  type HealthWindow,
  type InstalledVersion,
  type InstallOutcome,
  type ModelEvent,
  type ModelSlot,
} from '../../shared/updates.ts';

export interface SimDeviceOptions {
  deviceId: string;
  token: string;
  mqttUrl: string;
  httpUrl: string;
  trustedKeys: readonly TrustedKey[];
  model: string;
  /** The version serving at start (counter 0 = from the device's own config). */
  initial: InstalledVersion;
  /** Emit a health window of `perWindow` inferences this often (0 = never). */
  healthEveryMs?: number;
  perWindow?: number;
  /** Class mix of the synthetic inferences (normal, worn, failing). */
  mix?: readonly number[];
}

const MAX_FAILED = 16;

export class SimulatedDevice {
  readonly #o: SimDeviceOptions;
  #client: MqttClient | undefined;
  #slot: ModelSlot;
  #seq = 0;
  readonly #epoch = Date.now();
  readonly #results = new Map<string, Promise<void>>();
  #healthTimer: NodeJS.Timeout | undefined;
  /** Installs completed, bytes downloaded, commands refused. */
  installs = 0;
  downloadedBytes = 0;
  refused = 0;
  /** performance.now() of the last install command's arrival and of its completion. */
  lastCommandAt = 0;
  lastInstalledAt = 0;

  constructor(opts: SimDeviceOptions) {
    this.#o = opts;
    this.#slot = { name: opts.model, active: opts.initial, highestCounter: opts.initial.counter, failed: [] };
  }

  get slot(): ModelSlot {
    return this.#slot;
  }

  async start(): Promise<void> {
    const o = this.#o;
    const client = await mqtt.connectAsync(o.mqttUrl, {
      clientId: o.deviceId,
      username: o.deviceId,
      password: o.token,
      protocolVersion: 4,
      reconnectPeriod: 1000,
      connectTimeout: 30_000,
      queueQoSZero: false,
      will: { topic: topics.of(o.deviceId, 'status'), payload: Buffer.from(this.#status('offline')), qos: 1, retain: true },
    });
    client.on('error', () => undefined);
    client.on('message', (topic, payload) => this.#onMessage(topic, payload));
    client.on('connect', () => this.#announce());
    this.#client = client;
    await client.subscribeAsync(topics.of(o.deviceId, 'cmd'), { qos: 1 });
    this.#announce();
    if (o.healthEveryMs) this.#healthTimer = setInterval(() => this.#health(), o.healthEveryMs);
  }

  async stop(): Promise<void> {
    clearInterval(this.#healthTimer);
    await Promise.allSettled(this.#results.values());
    await this.#client?.endAsync();
    this.#client = undefined;
  }

  #status(state: 'online' | 'offline'): string {
    return JSON.stringify({ v: PROTOCOL_VERSION, type: 'status', deviceId: this.#o.deviceId, ts: Date.now(), state });
  }

  #announce(): void {
    const c = this.#client;
    if (!c) return;
    c.publish(topics.of(this.#o.deviceId, 'status'), this.#status('online'), { qos: 1, retain: true });
    this.#hello();
  }

  #hello(): void {
    const active = this.#slot.active;
    const hello = {
      v: PROTOCOL_VERSION,
      type: 'hello',
      deviceId: this.#o.deviceId,
      ts: Date.now(),
      agentVersion: 'sim-device',
      bootEpoch: this.#epoch,
      models: active ? [{ name: this.#slot.name, version: active.version }] : [],
      streams: [],
      modelState: [this.#slot],
    };
    this.#client?.publish(topics.of(this.#o.deviceId, 'hello'), JSON.stringify(hello), { qos: 1 });
  }

  #telemetry(stream: string, kind: string, body: Record<string, unknown>): void {
    const record: TelemetryRecord = { stream, epoch: this.#epoch, seq: this.#seq++, ts: Date.now(), kind, body };
    const batch = { v: PROTOCOL_VERSION, type: 'telemetry', deviceId: this.#o.deviceId, batchId: `${this.#epoch}-${record.seq}`, records: [record] };
    this.#client?.publish(topics.of(this.#o.deviceId, 'telemetry'), JSON.stringify(batch), { qos: 1 });
  }

  #health(): void {
    const active = this.#slot.active;
    const n = this.#o.perWindow ?? 100;
    if (!active || !this.#client?.connected) return;
    const mix = this.#o.mix ?? [0.7, 0.2, 0.1];
    const latency = new Array<number>(LATENCY_EDGES_MS.length + 1).fill(0);
    latency[3] = n; // (1, 2] ms
    const confidence = new Array<number>(CONFIDENCE_BINS).fill(0);
    confidence[CONFIDENCE_BINS - 1] = n;
    const classCounts = mix.map((p) => Math.round(p * n));
    const w: HealthWindow = {
      model: this.#slot.name,
      version: active.version,
      windowStart: Date.now() - (this.#o.healthEveryMs ?? 0),
      windowMs: this.#o.healthEveryMs ?? 1,
      ok: classCounts.reduce((a, b) => a + b, 0),
      errors: 0,
      latency,
      classCounts,
      confidence,
    };
    this.#telemetry(HEALTH_STREAM, HEALTH_KIND, w);
  }

  #onMessage(_topic: string, payload: Buffer): void {
    const d = decodeJson(CommandSchema, payload, 8 * 1024 * 1024);
    if (!d.ok) return;
    const cmd = d.value;
    // Idempotent by command id, like the agent's HubLink: a re-sent command gets the first result.
    if (this.#results.has(cmd.id)) return;
    if (cmd.name === INSTALL_COMMAND) this.lastCommandAt = performance.now();
    this.#results.set(cmd.id, this.#run(cmd));
  }

  async #run(cmd: Command): Promise<void> {
    let reply: { ok: true; result: InstallOutcome } | { ok: false; error: { code: string; message: string } };
    try {
      reply = { ok: true, result: cmd.name === INSTALL_COMMAND ? await this.#install(cmd) : cmd.name === ROLLBACK_COMMAND ? this.#rollback(cmd) : unknown(cmd) };
    } catch (err) {
      const e = err as Error & { code?: string };
      this.refused++;
      reply = { ok: false, error: { code: e.code ?? 'INTERNAL', message: e.message } };
    }
    const result = { v: PROTOCOL_VERSION, type: 'command_result', id: cmd.id, ts: Date.now(), ...reply };
    this.#client?.publish(topics.of(this.#o.deviceId, 'cmd/result'), JSON.stringify(result), { qos: 1 });
    this.#hello();
  }

  #fail(version: string, counter: number, phase: 'verify' | 'download', code: string, message: string, rolloutId: string | undefined): never {
    const failed = [...this.#slot.failed, { version, counter, phase, code, message, ts: Date.now() }].slice(-MAX_FAILED);
    this.#slot = { ...this.#slot, failed };
    const ev: ModelEvent = { event: 'rejected', name: this.#slot.name, version, counter, phase, code, message, ...(rolloutId ? { rolloutId } : {}) };
    this.#telemetry(EVENTS_STREAM, MODEL_EVENT_KIND, ev);
    throw Object.assign(new Error(message), { code });
  }

  async #install(cmd: Command): Promise<InstallOutcome> {
    const t0 = performance.now();
    const args = InstallArgsSchema.parse(cmd.args);
    const slot = this.#slot;
    const v = verifyRelease(args.release, this.#o.trustedKeys);
    if (!v.ok) this.#fail('unknown', 0, 'verify', v.code, v.message, args.rolloutId);
    const { manifest, counter } = v.release;
    if (slot.active?.counter === counter && slot.active.version === manifest.version) {
      return { name: manifest.name, version: manifest.version, counter, state: 'already_active' };
    }
    if (counter <= slot.highestCounter) this.#fail(manifest.version, counter, 'verify', 'REPLAY', `counter ${counter} <= ${slot.highestCounter}`, args.rolloutId);
    const res = await fetch(`${this.#o.httpUrl}${args.artifactPath}`, { headers: { authorization: `Bearer ${this.#o.deviceId}:${this.#o.token}` } });
    if (!res.ok || !res.body) this.#fail(manifest.version, counter, 'download', 'UNAVAILABLE', `artifact: HTTP ${res.status}`, args.rolloutId);
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      size += chunk.length;
      if (size > manifest.artifact.size) this.#fail(manifest.version, counter, 'download', 'BAD_MODEL', 'artifact larger than signed', args.rolloutId);
      hash.update(chunk);
    }
    this.downloadedBytes += size;
    const digest = hash.digest('hex');
    if (size !== manifest.artifact.size || digest !== manifest.artifact.sha256) {
      this.#fail(manifest.version, counter, 'download', 'BAD_MODEL', 'artifact does not match the signed size and sha256', args.rolloutId);
    }
    const installed: InstalledVersion = { version: manifest.version, counter, sha256: digest };
    const previous = slot.active ?? undefined;
    this.#slot = { ...slot, active: installed, ...(previous ? { previous } : {}), highestCounter: counter };
    this.installs++;
    this.lastInstalledAt = performance.now();
    const ev: ModelEvent = {
      event: 'installed',
      name: manifest.name,
      version: manifest.version,
      counter,
      ...(previous ? { previous } : {}),
      ...(args.rolloutId ? { rolloutId: args.rolloutId } : {}),
      durationMs: Math.round(performance.now() - t0),
    };
    this.#telemetry(EVENTS_STREAM, MODEL_EVENT_KIND, ev);
    return { name: manifest.name, version: manifest.version, counter, state: 'active' };
  }

  #rollback(cmd: Command): InstallOutcome {
    const args = RollbackArgsSchema.parse(cmd.args);
    const slot = this.#slot;
    const active = slot.active;
    if (!active || active.version !== args.version || !slot.previous) {
      return { name: args.name, version: args.version, counter: active?.counter ?? 0, state: 'not_active' };
    }
    const restored = slot.previous;
    const failed = [...slot.failed, { version: active.version, counter: active.counter, phase: 'rollback' as const, code: 'ROLLED_BACK', message: args.reason.slice(0, 500), ts: Date.now() }].slice(-MAX_FAILED);
    const { previous: _dropped, ...rest } = slot;
    this.#slot = { ...rest, active: restored, failed };
    const ev: ModelEvent = { event: 'rolled_back', name: args.name, version: active.version, counter: active.counter, restored, phase: 'rollback', message: args.reason.slice(0, 500), ...(args.rolloutId ? { rolloutId: args.rolloutId } : {}) };
    this.#telemetry(EVENTS_STREAM, MODEL_EVENT_KIND, ev);
    return { name: args.name, version: restored.version, counter: restored.counter, state: 'rolled_back' };
  }
}

function unknown(cmd: Command): never {
  throw Object.assign(new Error(`unknown command ${cmd.name}`), { code: 'NOT_FOUND' });
}
