/**
 * Ingest of what agents report: telemetry batches, hello, status and command results, taken
 * from the broker through the MessageBus (so it works the same behind an external broker).
 *
 * Telemetry: decode and validate, check the payload's deviceId against the topic, store the
 * whole batch in one transaction (each record once), and only after the commit publish an Ack
 * (QoS 1) covering every record of the batch. A failed commit (SQLITE_BUSY, SQLITE_FULL) gets
 * `ok: false` and acks nothing; undecodable messages get no ack at all. Every bad message is
 * counted per device and in metrics and logged (throttled) with its error code; nothing here
 * throws into the broker.
 *
 * Listeners (the rollout engine, the KPI index, drift): command results, every recorded hello,
 * and the records of a batch that were stored for the first time, after the commit, so a
 * resent batch does not report an install or count a window twice.
 */
import { Counter, Histogram, type Registry } from 'prom-client';
import { decodeJson, encodeJson } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import {
  CommandResultSchema,
  HelloSchema,
  PROTOCOL_VERSION,
  StatusSchema,
  TelemetryBatchSchema,
  parseTopic,
  topics,
  type Ack,
  type CommandResult,
  type Hello,
  type MessageKind,
  type TelemetryRecord,
} from '../../shared/protocol.ts';
import type { MessageBus } from '../broker/bus.ts';
import type { HubStore } from '../store/store.ts';
import { toRanges } from './ranges.ts';

export interface IngestOptions {
  bus: MessageBus;
  store: HubStore;
  log: Logger;
  registry: Registry;
  maxPayloadBytes: number;
  now?: () => number;
}

/** Records stored per second over a sliding window of one-second buckets. */
class RateWindow {
  readonly #buckets = new Map<number, number>();
  constructor(private readonly seconds: number) {}
  add(n: number, nowMs: number): void {
    const s = Math.floor(nowMs / 1000);
    this.#buckets.set(s, (this.#buckets.get(s) ?? 0) + n);
    for (const k of this.#buckets.keys()) if (k <= s - this.seconds) this.#buckets.delete(k);
  }
  perSecond(nowMs: number): number {
    const s = Math.floor(nowMs / 1000);
    let sum = 0;
    for (const [k, n] of this.#buckets) if (k > s - this.seconds) sum += n;
    return sum / this.seconds;
  }
}

export class Ingest implements Component {
  readonly name = 'ingest';
  readonly #o: IngestOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #throttle = new LogThrottle(5000);
  readonly #rate = new RateWindow(60);
  readonly #commandListeners: ((deviceId: string, result: CommandResult) => void)[] = [];
  readonly #recordListeners: ((deviceId: string, records: TelemetryRecord[]) => void)[] = [];
  readonly #helloListeners: ((hello: Hello) => void)[] = [];
  readonly #records: Counter<'result'>;
  readonly #batches: Counter<'outcome'>;
  readonly #bad: Counter<'kind' | 'code'>;
  readonly #commitSeconds: Histogram;
  #running = false;

  constructor(opts: IngestOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    const registers = [opts.registry];
    this.#records = new Counter({
      name: 'edgefleet_hub_telemetry_records_total',
      help: 'Telemetry records received, by result (stored, duplicate).',
      labelNames: ['result'],
      registers,
    });
    this.#batches = new Counter({
      name: 'edgefleet_hub_telemetry_batches_total',
      help: 'Telemetry batches, by outcome (acked, store_failed).',
      labelNames: ['outcome'],
      registers,
    });
    this.#bad = new Counter({
      name: 'edgefleet_hub_bad_messages_total',
      help: 'Messages from agents that could not be decoded or were inconsistent, by topic kind and error code.',
      labelNames: ['kind', 'code'],
      registers,
    });
    this.#commitSeconds = new Histogram({
      name: 'edgefleet_hub_telemetry_commit_seconds',
      help: 'Time to store one telemetry batch (one transaction).',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
  }

  async start(_signal: AbortSignal): Promise<void> {
    const { bus } = this.#o;
    bus.onPresence((id, online) => {
      if (!this.#running) return;
      this.#o.store.setOnline(id, online, this.#now()).catch((err: unknown) => this.#log.warn({ err: toEdgefleetError(err), id }, 'cannot record presence'));
    });
    this.#running = true;
    await bus.subscribe(topics.fleet('telemetry'), (t, p) => this.#guard('telemetry', t, () => this.#telemetry(t, p)));
    await bus.subscribe(topics.fleet('hello'), (t, p) => this.#guard('hello', t, () => this.#hello(t, p)));
    await bus.subscribe(topics.fleet('status'), (t, p) => this.#guard('status', t, () => this.#status(t, p)));
    await bus.subscribe(topics.fleet('cmd/result'), (t, p) => this.#guard('cmd/result', t, () => this.#commandResult(t, p)));
  }

  stop(): Promise<void> {
    this.#running = false;
    return Promise.resolve();
  }

  /** Records stored per second, averaged over the last minute (this process only). */
  recordsPerSecond(): number {
    return this.#rate.perSecond(this.#now());
  }

  /** For the command/rollout layer: every valid command result, by device. */
  onCommandResult(listener: (deviceId: string, result: CommandResult) => void): void {
    this.#commandListeners.push(listener);
  }

  /**
   * For the rollout engine, the KPI index and drift: the records of a batch stored for the first
   * time (all kinds; each listener filters), called after their batch committed, so a resent
   * batch is not seen twice.
   */
  onRecords(listener: (deviceId: string, records: TelemetryRecord[]) => void): void {
    this.#recordListeners.push(listener);
  }

  /** For the rollout engine's reconciliation: every valid hello, after it was recorded. */
  onHello(listener: (hello: Hello) => void): void {
    this.#helloListeners.push(listener);
  }

  #notify<A extends unknown[]>(listeners: readonly ((...args: A) => void)[], what: string, ...args: A): void {
    for (const l of listeners) {
      try {
        l(...args);
      } catch (err) {
        this.#log.error({ err: toEdgefleetError(err) }, `${what} listener failed`);
      }
    }
  }

  async #guard(kind: MessageKind, topic: string, fn: () => Promise<void>): Promise<void> {
    if (!this.#running) return;
    try {
      await fn();
    } catch (err) {
      const e = toEdgefleetError(err);
      this.#log.error({ err: e, kind, topic }, 'ingest handler failed');
    }
  }

  async #badMessage(deviceId: string, kind: MessageKind, error: EdgefleetError): Promise<void> {
    this.#bad.inc({ kind, code: error.code });
    this.#throttle.run(`${deviceId}:${kind}:${error.code}`, (suppressed) =>
      this.#log.warn({ deviceId, kind, code: error.code, detail: error.message.slice(0, 500), suppressed }, 'bad message'),
    );
    try {
      await this.#o.store.countBadMessage(deviceId, this.#now());
    } catch (err) {
      this.#log.warn({ err: toEdgefleetError(err), deviceId }, 'cannot count bad message');
    }
  }

  /** Decodes a message of `kind` whose payload must name the topic's device. */
  async #decode<T extends { deviceId: string }>(
    kind: MessageKind,
    topic: string,
    payload: Buffer,
    decode: (p: Buffer) => { ok: true; value: T } | { ok: false; error: EdgefleetError },
  ): Promise<{ deviceId: string; msg: T } | undefined> {
    const t = parseTopic(topic);
    if (!t) return undefined;
    const d = decode(payload);
    if (!d.ok) {
      await this.#badMessage(t.deviceId, kind, d.error);
      return undefined;
    }
    if (d.value.deviceId !== t.deviceId) {
      await this.#badMessage(t.deviceId, kind, new EdgefleetError(ErrorCode.BAD_PAYLOAD, `deviceId ${d.value.deviceId} does not match topic device ${t.deviceId}`));
      return undefined;
    }
    return { deviceId: t.deviceId, msg: d.value };
  }

  async #telemetry(topic: string, payload: Buffer): Promise<void> {
    const max = this.#o.maxPayloadBytes;
    const got = await this.#decode('telemetry', topic, payload, (p) => decodeJson(TelemetryBatchSchema, p, max));
    if (!got) return;
    const { deviceId, msg: batch } = got;
    const t0 = performance.now();
    let ack: Ack;
    try {
      const r = await this.#o.store.ingestTelemetry(deviceId, batch.records, this.#now());
      this.#commitSeconds.observe((performance.now() - t0) / 1000);
      this.#records.inc({ result: 'stored' }, r.stored);
      this.#records.inc({ result: 'duplicate' }, r.duplicates);
      this.#batches.inc({ outcome: 'acked' });
      this.#rate.add(r.stored, this.#now());
      ack = { v: PROTOCOL_VERSION, type: 'ack', batchId: batch.batchId, ok: true, ranges: toRanges(batch.records), stored: r.stored, duplicates: r.duplicates };
      // Every record stored for the first time; each listener picks its kinds (rollouts: model
      // and health; KPIs: inference and health; drift: drift).
      const fresh = r.fresh.map((i) => batch.records[i]).filter((x): x is TelemetryRecord => x !== undefined);
      if (fresh.length) this.#notify(this.#recordListeners, 'record', deviceId, fresh);
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.STORAGE);
      this.#batches.inc({ outcome: 'store_failed' });
      this.#throttle.run(`store:${e.code}`, (suppressed) => this.#log.error({ err: e, deviceId, batchId: batch.batchId, suppressed }, 'telemetry batch not stored'));
      ack = {
        v: PROTOCOL_VERSION,
        type: 'ack',
        batchId: batch.batchId,
        ok: false,
        ranges: [],
        stored: 0,
        duplicates: 0,
        error: { code: e.code, message: 'batch not stored; retry later' },
      };
    }
    // Not awaited (issue #15): this handler holds one of aedes' delivery slots (mqemitter
    // `concurrency`, 100) until it returns, and the ack needs a slot of its own. With 100 batches
    // in flight at once every slot waited for an ack queued behind them: the hub stopped
    // answering for good (bench:scale, one batch from each of 10,000 devices: 50 acks). The
    // PUBACK still waits for the commit; the ack follows as soon as a slot is free.
    // The agent times out and resends; the records are stored, the resend is acked as duplicates.
    const unsent = (err: unknown): void => this.#log.warn({ err: toEdgefleetError(err), deviceId, batchId: batch.batchId }, 'cannot publish ack');
    try {
      this.#o.bus.publish(topics.of(deviceId, 'ack'), encodeJson(ack), { qos: 1 }).catch(unsent);
    } catch (err) {
      unsent(err);
    }
  }

  async #hello(topic: string, payload: Buffer): Promise<void> {
    const got = await this.#decode('hello', topic, payload, (p) => decodeJson(HelloSchema, p, this.#o.maxPayloadBytes));
    if (!got) return;
    await this.#o.store.recordHello(got.msg, this.#now());
    this.#notify(this.#helloListeners, 'hello', got.msg);
    this.#log.debug({ deviceId: got.deviceId, agentVersion: got.msg.agentVersion, bootEpoch: got.msg.bootEpoch }, 'hello');
  }

  async #status(topic: string, payload: Buffer): Promise<void> {
    // An empty retained payload clears the retained status; it is not a bad message.
    if (payload.length === 0) return;
    const got = await this.#decode('status', topic, payload, (p) => decodeJson(StatusSchema, p, this.#o.maxPayloadBytes));
    if (!got) return;
    const online = got.msg.state === 'online';
    // A last-will `offline` from a dropped connection can arrive after the device already
    // reconnected; the broker's view wins.
    if (!online && this.#o.bus.isConnected(got.deviceId) === true) return;
    await this.#o.store.setOnline(got.deviceId, online, this.#now());
  }

  async #commandResult(topic: string, payload: Buffer): Promise<void> {
    const parsed = parseTopic(topic);
    if (!parsed) return;
    const d = decodeJson(CommandResultSchema, payload, this.#o.maxPayloadBytes);
    if (!d.ok) return this.#badMessage(parsed.deviceId, 'cmd/result', d.error);
    this.#notify(this.#commandListeners, 'command result', parsed.deviceId, d.value);
  }
}
