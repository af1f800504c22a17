/**
 * Test fixture for the hub's rollouts: a real hub (aedes on port 0, SQLite in a temp dir) on a
 * fake clock, releases pushed through the real API (probe included), and scripted devices: mqtt.js
 * clients authenticated as registered devices that answer `model.install` / `model.rollback` the
 * way the agent does (cmd/result, a `model` event in a telemetry batch, a hello with modelState)
 * and publish health windows on demand. They are test doubles for the agent, which has its own
 * tests; here they let one file drive a dozen devices through a rollout in seconds.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { silentLogger } from '../../shared/log.ts';
import { CommandSchema, PROTOCOL_VERSION, topics, type Command, type Hello, type TelemetryRecord } from '../../shared/protocol.ts';
import { CONFIDENCE_BINS, LATENCY_EDGES_MS, type HealthWindow, type InstallOutcome, type ModelEvent, type ModelSlot } from '../../shared/updates.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { until } from '../helpers/fleet-in-process.ts';

export { until };

export const T0 = Date.UTC(2026, 0, 5, 12, 0, 0); // a Monday, 12:00 UTC

export class FakeClock {
  t = T0;
  readonly now = (): number => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

export interface Release {
  name: string;
  version: string;
  counter: number;
  sha256: string;
}

export type Behaviour = 'install' | 'reject' | 'silent';

interface ReleaseEnvelope {
  release: { counter: number; manifest: { name: string; version: string; artifact: { sha256: string } } };
}

export class ScriptedDevice {
  client: MqttClient | undefined;
  readonly commands: Command[] = [];
  readonly slots = new Map<string, ModelSlot>();
  behaviour: Behaviour = 'install';
  #seq = 0;
  readonly #epoch = 1;

  constructor(
    readonly fx: RolloutFixture,
    readonly id: string,
    readonly token: string,
  ) {}

  /** Starts as if running `r` (installed by hand: counter as released). */
  runs(r: Release): this {
    this.slots.set(r.name, { name: r.name, active: { version: r.version, counter: r.counter, sha256: r.sha256 }, highestCounter: r.counter, failed: [] });
    return this;
  }

  installs(name: string): Command[] {
    return this.commands.filter((c) => c.name === name);
  }

  async connect(): Promise<void> {
    const c = await mqtt.connectAsync(this.fx.hub.mqttUrl, { clientId: this.id, username: this.id, password: this.token, protocolVersion: 4, reconnectPeriod: 0 });
    this.client = c;
    c.on('message', (_topic, payload) => {
      const cmd = CommandSchema.parse(JSON.parse(payload.toString('utf8')));
      this.commands.push(cmd);
      // A reply cut off by a deliberate disconnect (hub restart) is what a real agent sees too.
      this.#handle(cmd).catch((err: unknown) => {
        if (this.client === c) throw err;
      });
    });
    await c.subscribeAsync(topics.of(this.id, 'cmd'), { qos: 1 });
    await this.hello();
  }

  async disconnect(): Promise<void> {
    const c = this.client;
    this.client = undefined;
    if (c) await c.endAsync(true);
  }

  async hello(): Promise<void> {
    const hello: Hello = {
      v: PROTOCOL_VERSION,
      type: 'hello',
      deviceId: this.id,
      ts: this.fx.clock.now(),
      agentVersion: 'scripted',
      bootEpoch: this.#epoch,
      models: [...this.slots.values()].filter((s) => s.active).map((s) => ({ name: s.name, version: s.active?.version ?? '' })),
      streams: [],
      modelState: [...this.slots.values()],
    };
    await this.#pub('hello', hello);
  }

  async telemetry(records: { stream: string; kind: string; body: Record<string, unknown> }[]): Promise<void> {
    const recs: TelemetryRecord[] = records.map((r) => ({ ...r, epoch: this.#epoch, seq: this.#seq++, ts: this.fx.clock.now() }));
    await this.#pub('telemetry', { v: PROTOCOL_VERSION, type: 'telemetry', deviceId: this.id, batchId: `b${this.#seq}`, records: recs });
  }

  async event(e: ModelEvent): Promise<void> {
    await this.telemetry([{ stream: 'events', kind: 'model', body: e }]);
  }

  /** One health window: `n` inferences spread over `classCounts` (confidence high, latency ~1 ms). */
  async health(name: string, version: string, windowStart: number, classCounts: number[], errors = 0): Promise<void> {
    const ok = classCounts.reduce((a, b) => a + b, 0);
    const latency = new Array<number>(LATENCY_EDGES_MS.length + 1).fill(0);
    latency[2] = ok + errors;
    const confidence = new Array<number>(CONFIDENCE_BINS).fill(0);
    confidence[CONFIDENCE_BINS - 1] = ok;
    const w: HealthWindow = { model: name, version, windowStart, windowMs: 60_000, ok, errors, latency, classCounts, confidence };
    await this.telemetry([{ stream: 'health', kind: 'health', body: w }]);
  }

  async #pub(kind: 'hello' | 'telemetry' | 'cmd/result', body: unknown): Promise<void> {
    if (!this.client) return;
    await this.client.publishAsync(topics.of(this.id, kind), JSON.stringify(body), { qos: 1 });
  }

  async #result(id: string, ok: boolean, result?: InstallOutcome, error?: { code: string; message: string }): Promise<void> {
    await this.#pub('cmd/result', { v: PROTOCOL_VERSION, type: 'command_result', id, ts: this.fx.clock.now(), ok, ...(result ? { result } : {}), ...(error ? { error } : {}) });
  }

  async #handle(cmd: Command): Promise<void> {
    if (this.behaviour === 'silent') return;
    if (cmd.name === 'model.install') {
      const env = cmd.args.release as ReleaseEnvelope;
      const { counter, manifest } = env.release;
      const slot = this.slots.get(manifest.name) ?? { name: manifest.name, active: null, highestCounter: 0, failed: [] };
      const rolloutId = cmd.args.rolloutId as string | undefined;
      if (this.behaviour === 'reject') {
        slot.failed.push({ version: manifest.version, counter, phase: 'validate', code: 'BAD_MODEL', message: 'test vectors failed', ts: this.fx.clock.now() });
        this.slots.set(slot.name, slot);
        await this.#result(cmd.id, false, undefined, { code: 'BAD_MODEL', message: 'test vectors failed' });
        await this.event({ event: 'rejected', name: manifest.name, version: manifest.version, counter, rolloutId, phase: 'validate', code: 'BAD_MODEL', message: 'test vectors failed' });
      } else {
        const previous = slot.active ?? undefined;
        slot.previous = previous;
        slot.active = { version: manifest.version, counter, sha256: manifest.artifact.sha256 };
        slot.highestCounter = Math.max(slot.highestCounter, counter);
        this.slots.set(slot.name, slot);
        await this.#result(cmd.id, true, { name: manifest.name, version: manifest.version, counter, state: 'active' });
        await this.event({ event: 'installed', name: manifest.name, version: manifest.version, counter, rolloutId, ...(previous ? { previous } : {}) });
      }
      await this.hello();
    } else if (cmd.name === 'model.rollback') {
      const name = cmd.args.name as string;
      const version = cmd.args.version as string;
      const slot = this.slots.get(name);
      if (!slot?.active || slot.active.version !== version || !slot.previous) {
        await this.#result(cmd.id, true, { name, version, counter: slot?.active?.counter ?? 0, state: 'not_active' });
        return;
      }
      const gone = slot.active;
      slot.active = slot.previous;
      delete slot.previous;
      slot.failed.push({ version: gone.version, counter: gone.counter, phase: 'rollback', code: 'HUB_ROLLBACK', message: String(cmd.args.reason), ts: this.fx.clock.now() });
      await this.#result(cmd.id, true, { name, version, counter: gone.counter, state: 'rolled_back' });
      await this.event({ event: 'rolled_back', name, version, counter: gone.counter, rolloutId: cmd.args.rolloutId as string | undefined, restored: slot.active, phase: 'rollback' });
      await this.hello();
    }
  }
}

export class RolloutFixture {
  hub!: Hub;
  readonly clock = new FakeClock();
  readonly devices: ScriptedDevice[] = [];

  constructor(readonly dataDir: string) {}

  async start(rollouts: Record<string, unknown> = {}): Promise<Hub> {
    const config = loadHubConfig({
      env: {},
      overrides: {
        dataDir: this.dataDir,
        mqtt: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        // Ticks come from events and from the test (hub.rollouts.tick()) after moving the clock.
        rollouts: { tickMs: 60_000, ...rollouts },
      },
    });
    this.hub = await createHub(config, { log: silentLogger(), now: this.clock.now });
    await this.hub.start(new AbortController().signal);
    return this.hub;
  }

  async stop(): Promise<void> {
    for (const d of this.devices) await d.disconnect();
    if (this.hub) assert.deepEqual(await this.hub.stop(), []);
  }

  async api<T>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const res = await fetch(`${this.hub.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${this.hub.adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as T };
  }

  async ok<T>(method: string, path: string, body?: unknown): Promise<T> {
    const r = await this.api<T>(method, path, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${path} → ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  /** Pushes the demo machine-state model as `name@version` through the API. */
  async release(name: string, version: string): Promise<Release> {
    const manifest = JSON.parse(await readFile(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8')) as Record<string, unknown>;
    const bytes = await readFile(join(REPO_ROOT, 'models', 'machine-state.onnx'));
    await this.ok('POST', '/v1/models', { manifest: { ...manifest, name, version } });
    const res = await fetch(`${this.hub.httpUrl}/v1/models/${name}/${version}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${this.hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: bytes,
    });
    const body = (await res.json()) as Release;
    assert.equal(res.status, 201, JSON.stringify(body));
    return { name, version, counter: body.counter, sha256: body.sha256 };
  }

  async register(id: string, group: string, labels: Record<string, string> = {}): Promise<ScriptedDevice> {
    const { token } = await this.ok<{ token: string }>('POST', '/v1/devices', { id, group, labels });
    const d = new ScriptedDevice(this, id, token);
    this.devices.push(d);
    return d;
  }

  status(id: string): Promise<RolloutStatusBody> {
    return this.ok<RolloutStatusBody>('GET', `/v1/rollouts/${id}`);
  }

  async history(deviceId: string): Promise<{ event: string; version?: string; details: Record<string, unknown> }[]> {
    return (await this.ok<{ history: { event: string; version?: string; details: Record<string, unknown> }[] }>('GET', `/v1/devices/${deviceId}/history`)).history;
  }

  /** Moves the fake clock and runs one engine tick. */
  async advance(ms: number): Promise<void> {
    this.clock.advance(ms);
    await this.hub.rollouts.tick();
  }
}

export interface RolloutStatusBody {
  id: string;
  counter: number;
  state: string;
  phase: string;
  reason: string | null;
  currentWave: number;
  waves: { index: number; cumulative: number; devices: number; status: string; counts: Record<string, number> }[];
  counts: Record<string, number>;
  gates: { verdict: string; action: string; breaches: { metric: string }[]; samples: { candidate: number; baseline: number }; baseline: string }[];
  devices: { id: string; wave: number; state: string; attempts: number }[];
}
