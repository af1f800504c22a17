/**
 * The agent's MQTT session with the hub: connection and reconnection (jittered exponential
 * backoff), retained online/offline status with a last-will, hello on every (re)connect,
 * the telemetry sender that drains the outbox, command handling, and the shared connection
 * that inputs subscribe through and pipelines publish live results on.
 *
 * Delivery (ARCHITECTURE §3): the outbox is the truth. The sender reads committed records
 * after a rowid cursor, publishes them as QoS 1 batches and deletes them only when the hub's
 * ack arrives (the hub acks after committing). Nothing here relies on mqtt.js's in-memory
 * queue: on a disconnect, an ack timeout or a refused batch the cursor goes back to the
 * oldest unacked record and everything still pending is sent again, oldest first, so order
 * per stream holds and the hub de-duplicates what it already has.
 *
 * Acks with an unknown batch id (a batch we gave up on after a timeout, or one from before a
 * reconnect) still have their ranges applied: the hub sends an ack only after committing
 * exactly those records, so deleting them loses nothing and saves sending them again. Only the
 * device itself and the hub may publish on the device's ack topic (hub ACL, ARCHITECTURE §6).
 *
 * Packet size (issue #12): the hub's broker disconnects a client that publishes a payload over
 * its `limits.maxPayloadBytes`, which would cost the device its connection and, for telemetry,
 * wedge the outbox (the same oversize batch resent after every reconnect). MQTT 3.1.1 has no
 * way for the broker to announce a limit, so the agent is told it (`hub.maxPacketBytes`, default
 * the hub's default) and no packet over it ever leaves through this link: live messages over it
 * are not sent (counted per topic kind, warned), telemetry batches are cut to fit, and a single
 * record that cannot fit even alone is sent as a stub (see #stubFor for why a stub and not a
 * drop).
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { Backoff, type BackoffOptions } from '../../shared/backoff.ts';
import { decodeJson, encodeJson } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import { withTimeout, type Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import {
  AckSchema,
  CommandSchema,
  DeviceIdSchema,
  MAX_BATCH_RECORDS,
  MAX_PAYLOAD_BYTES,
  PROTOCOL_VERSION,
  parseTopic,
  topics,
  type Ack,
  type Command,
  type CommandResult,
  type Hello,
  type ModelRef,
  type Status,
  type TelemetryBatch,
  type TelemetryRecord,
} from '../../shared/protocol.ts';
import type { ClientTls } from '../../shared/tls.ts';
import type { ModelSlot } from '../../shared/updates.ts';
import { topicMatches } from '../../shared/topic-match.ts';
import type { Outbox, OutboxRecord } from '../outbox/outbox.ts';
import type { CommandGuard } from './command-guard.ts';

/** Re-exported for agent/inputs (it moved to shared/ for the hub's external-broker bus). */
export { topicMatches };

/** What the link needs from the outbox. */
export type LinkOutbox = Pick<Outbox, 'readBatch' | 'ack' | 'positions' | 'onAppend' | 'epoch'>;

export interface HubLinkOptions {
  deviceId: string;
  /** mqtt://host:port (or mqtts://). */
  url: string;
  token: string;
  keepaliveSeconds?: number;
  /** Give up on a connection attempt that got no CONNACK after this long. Default 10 s. */
  connectTimeoutMs?: number;
  backoff: BackoffOptions;
  outbox: LinkOutbox;
  agentVersion: string;
  models: () => ModelRef[];
  /** The updater's model state per name (issue #3), sent in every hello so the hub reconciles. */
  modelState?: () => ModelSlot[];
  /** Records per telemetry batch (also capped by MAX_BATCH_RECORDS and maxPacketBytes). Default 500. */
  batchSize?: number;
  /**
   * Largest MQTT packet (PUBLISH as encoded) sent to the hub: its `limits.maxPayloadBytes`,
   * which any packet within this stays under. Default MAX_PAYLOAD_BYTES, the hub's default.
   */
  maxPacketBytes?: number;
  maxInflightBatches?: number;
  ackTimeoutMs?: number;
  /**
   * A connection must stay up this long before the reconnect backoff starts over. Resetting on
   * CONNACK alone would let a broker that accepts and then drops us at once (a duplicate
   * clientId, mqttjs#1585; an ACL kick) drive a reconnect storm at the initial delay.
   * Default 10 s.
   */
  stableMs?: number;
  /** Longest stop() waits for the offline status and a clean DISCONNECT. Default 2 s. */
  stopTimeoutMs?: number;
  /** Most command results remembered for de-duplication by id. Default 1000. */
  commandMemory?: number;
  /** Signature and replay checks before a command runs (issue #14); none when absent (tests of the link alone). */
  commandGuard?: CommandGuard;
  log: Logger;
  registry?: Registry;
  /** Random source for backoff jitter (tests). */
  random?: () => number;
  /** For mqtts:// URLs: CA, client certificate and key, servername (shared/tls.ts clientTlsOptions). */
  tls?: ClientTls;
}

export type CommandHandler = (cmd: Command) => Promise<unknown>;
export type MessageHandler = (topic: string, payload: Buffer, retain: boolean) => void;

export interface LinkStatus {
  connected: boolean;
  /** Epoch ms of the last successful CONNACK, undefined before the first. */
  lastConnectedAt: number | undefined;
  /** Successful connections after the first. */
  reconnects: number;
  /** Scheduled reconnect attempts (including failed ones). */
  reconnectAttempts: number;
  /** Records published (resends included). */
  sent: number;
  /** Records deleted from the outbox because the hub acked them. */
  acked: number;
  /** Telemetry batches awaiting their ack. */
  inflight: number;
  ackTimeouts: number;
  nacks: number;
  badMessages: number;
  droppedLive: number;
  /** Messages not sent, or records stubbed, because their packet was over maxPacketBytes. */
  oversize: number;
  commands: number;
  duplicateCommands: number;
}

export interface HubLinkEvents {
  connected: [];
  disconnected: [];
  /** A reconnect was scheduled `delayMs` from now; `attempt` counts from 1 since the last stable connection. */
  reconnectScheduled: [delayMs: number, attempt: number];
  /** An ack deleted `records` records from the outbox. */
  acked: [records: number];
}

interface Inflight {
  sentAt: number;
  records: number;
  timer: NodeJS.Timeout;
}

interface LinkMetrics {
  connected: Gauge;
  reconnects: Counter;
  sent: Counter;
  acked: Counter;
  inflight: Gauge;
  ackLatency: Histogram;
  ackFailures: Counter<'reason'>;
  droppedLive: Counter;
  oversize: Counter<'topic_kind'>;
  bad: Counter<'kind'>;
  commands: Counter<'outcome'>;
}

type ResolvedOptions = Required<Omit<HubLinkOptions, 'registry' | 'random' | 'modelState' | 'tls' | 'commandGuard'>> & Pick<HubLinkOptions, 'modelState' | 'tls' | 'commandGuard'>;

export class HubLink extends EventEmitter<HubLinkEvents> implements Component {
  readonly name = 'hub-link';
  readonly #o: ResolvedOptions;
  readonly #log: Logger;
  readonly #throttle = new LogThrottle(5000);
  readonly #metrics: LinkMetrics | undefined;
  readonly #backoff: Backoff;
  /** Spaces out resends after a refused or unanswered batch. */
  readonly #sendBackoff: Backoff;
  readonly #topics: { status: string; hello: string; telemetry: string; ack: string; cmd: string; cmdResult: string };
  readonly #subs = new Map<string, { qos: 0 | 1; handlers: MessageHandler[] }>();
  #client: MqttClient | undefined;
  #stopping = false;
  #connected = false;
  #everConnected = false;
  /** Bumped on every connect and close so async steps of an old session stop. */
  #session = 0;
  #sessionReady = false;
  #reconnectTimer: NodeJS.Timeout | undefined;
  #stableTimer: NodeJS.Timeout | undefined;
  #unsubAppend: (() => void) | undefined;
  // sender
  #cursor = 0;
  readonly #inflight = new Map<string, Inflight>();
  #retryTimer: NodeJS.Timeout | undefined;
  #pumpScheduled = false;
  // commands
  #commandHandler: CommandHandler | undefined;
  readonly #commandResults = new Map<string, Promise<CommandResult>>();
  #stats = {
    lastConnectedAt: undefined as number | undefined,
    reconnects: 0,
    reconnectAttempts: 0,
    sent: 0,
    acked: 0,
    ackTimeouts: 0,
    nacks: 0,
    badMessages: 0,
    droppedLive: 0,
    oversize: 0,
    commands: 0,
    duplicateCommands: 0,
  };
  /** Largest telemetry payload that fits in maxPacketBytes on the telemetry topic. */
  readonly #telemetryBudget: number;
  /** Records already stubbed (stream|epoch|seq), so a resend of their batch is not counted again. */
  readonly #stubbed = new Set<string>();

  constructor(opts: HubLinkOptions) {
    super();
    if (!DeviceIdSchema.safeParse(opts.deviceId).success) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `hub link: invalid device id ${JSON.stringify(opts.deviceId)}`);
    }
    this.#o = {
      deviceId: opts.deviceId,
      url: opts.url,
      token: opts.token,
      keepaliveSeconds: opts.keepaliveSeconds ?? 30,
      connectTimeoutMs: opts.connectTimeoutMs ?? 10_000,
      backoff: opts.backoff,
      outbox: opts.outbox,
      agentVersion: opts.agentVersion,
      models: opts.models,
      modelState: opts.modelState,
      batchSize: Math.min(MAX_BATCH_RECORDS, Math.max(1, opts.batchSize ?? 500)),
      maxPacketBytes: opts.maxPacketBytes ?? MAX_PAYLOAD_BYTES,
      maxInflightBatches: Math.max(1, opts.maxInflightBatches ?? 4),
      ackTimeoutMs: opts.ackTimeoutMs ?? 10_000,
      stableMs: opts.stableMs ?? 10_000,
      stopTimeoutMs: opts.stopTimeoutMs ?? 2000,
      commandMemory: opts.commandMemory ?? 1000,
      commandGuard: opts.commandGuard,
      log: opts.log,
      tls: opts.tls,
    };
    this.#log = opts.log;
    this.#backoff = new Backoff(opts.backoff, opts.random);
    this.#sendBackoff = new Backoff(opts.backoff, opts.random);
    const id = opts.deviceId;
    this.#topics = {
      status: topics.of(id, 'status'),
      hello: topics.of(id, 'hello'),
      telemetry: topics.of(id, 'telemetry'),
      ack: topics.of(id, 'ack'),
      cmd: topics.of(id, 'cmd'),
      cmdResult: topics.of(id, 'cmd/result'),
    };
    if (!Number.isInteger(this.#o.maxPacketBytes) || this.#o.maxPacketBytes < MIN_PACKET_BYTES) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `hub link: maxPacketBytes must be an integer >= ${MIN_PACKET_BYTES}`);
    }
    this.#telemetryBudget = maxPayloadFor(this.#topics.telemetry, 1, this.#o.maxPacketBytes);
    this.#metrics = opts.registry ? createMetrics(opts.registry) : undefined;
  }

  get connected(): boolean {
    return this.#connected;
  }

  status(): LinkStatus {
    return { connected: this.#connected, inflight: this.#inflight.size, ...this.#stats };
  }

  /** Starts connecting and returns at once: the agent works offline. */
  start(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new EdgefleetError(ErrorCode.ABORTED, 'hub link start aborted'));
    if (this.#client) return Promise.reject(new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'hub link already started'));
    this.#stopping = false;
    this.#unsubAppend = this.#o.outbox.onAppend(() => this.#wake());
    const options: IClientOptions = {
      protocolVersion: 4,
      clientId: this.#o.deviceId,
      username: this.#o.deviceId,
      password: this.#o.token,
      clean: true,
      keepalive: this.#o.keepaliveSeconds,
      connectTimeout: this.#o.connectTimeoutMs,
      // mqtt.js retries at a fixed period (mqttjs#561); we schedule reconnect() ourselves with
      // jittered backoff from the 'close' handler, which also covers a refused CONNACK.
      reconnectPeriod: 0,
      reconnectOnConnackError: true,
      // Nothing may wait in mqtt.js's memory queue (lost on restart): the outbox resends.
      queueQoSZero: false,
      resubscribe: false,
      will: this.#will(),
      // Server certificates are always verified (ClientTls.rejectUnauthorized is true, as mqtt.js' default).
      ...this.#o.tls,
    };
    const client = connect(this.#o.url, options);
    this.#client = client;
    client.on('connect', () => this.#onConnect());
    client.on('close', () => this.#onClose());
    // Never end() here: it would kill reconnection for good (mqttjs#1466).
    client.on('error', (err) => this.#onError(err));
    client.on('message', (topic, payload, packet) => this.#onMessage(topic, payload, packet.retain));
    this.#log.info({ url: redactUrl(this.#o.url), deviceId: this.#o.deviceId }, 'connecting to hub');
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    const client = this.#client;
    if (!client || this.#stopping) return;
    this.#stopping = true;
    this.#unsubAppend?.();
    this.#unsubAppend = undefined;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    clearTimeout(this.#stableTimer);
    this.#resetSender();
    const budget = this.#o.stopTimeoutMs;
    if (this.#connected) {
      // A clean DISCONNECT makes the broker discard the will, so say offline ourselves.
      try {
        await withTimeout(client.publishAsync(this.#topics.status, this.#statusPayload('offline'), { qos: 1, retain: true }), budget, 'offline status');
      } catch (err) {
        this.#log.warn({ err }, 'could not publish offline status');
      }
      try {
        await withTimeout(client.endAsync(false), budget, 'mqtt disconnect');
      } catch (err) {
        this.#log.warn({ err }, 'graceful disconnect hung; forcing');
        // end(true) is a no-op while end(false) is pending (mqtt.js client.js `if (this.disconnecting)`),
        // and end(false) never finishes when QoS 1 publishes from a dropped connection stay unacked.
        client.stream.destroy();
      }
    } else {
      await withTimeout(client.endAsync(true), budget, 'mqtt forced close').catch((err: unknown) => this.#log.warn({ err }, 'mqtt close hung'));
    }
    this.#setConnected(false);
    this.#client = undefined;
    this.#log.info(this.status(), 'hub link stopped');
  }

  /**
   * Live publish (inference results and the like), not the outbox path: returns false and
   * counts a drop when offline instead of queueing in memory, and returns false without sending
   * (counted in edgefleet_agent_publish_oversize_total, warned) when the packet would be over
   * maxPacketBytes: the hub would refuse it by closing the connection.
   */
  publish(topic: string, payload: Buffer | string, opts?: { qos?: 0 | 1; retain?: boolean }): boolean {
    const client = this.#client;
    if (!client || !this.#connected) {
      this.#dropLive();
      return false;
    }
    const qos = opts?.qos ?? 0;
    const bytes = publishPacketBytes(topic, typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length, qos);
    if (bytes > this.#o.maxPacketBytes) {
      this.#oversize(topic, bytes, 'message not sent; make it smaller (e.g. a lower topK)');
      return false;
    }
    client.publish(topic, payload, { qos, retain: opts?.retain ?? false }, (err) => {
      if (err) this.#throttle.run('live', (suppressed) => this.#log.debug({ err, topic, suppressed }, 'live publish failed'));
    });
    return true;
  }

  /**
   * Routes messages matching `topicFilter` to `handler` over the hub connection; the
   * subscription is renewed on every reconnect.
   */
  subscribe(topicFilter: string, handler: MessageHandler, opts?: { qos?: 0 | 1 }): void {
    if (!topicFilter || topicFilter.includes('\0')) throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'empty or invalid topic filter');
    const qos = opts?.qos ?? 0;
    const entry = this.#subs.get(topicFilter);
    if (entry) {
      entry.handlers.push(handler);
      if (qos > entry.qos) entry.qos = qos;
    } else {
      this.#subs.set(topicFilter, { qos, handlers: [handler] });
    }
    const client = this.#client;
    // While a session is being set up its SUBSCRIBE may already be on the wire without this
    // filter; subscribing twice is harmless (the broker replaces the subscription).
    if (client && this.#connected) {
      client.subscribe(topicFilter, { qos }, (err) => {
        if (err) this.#log.error({ err, topicFilter }, 'subscribe failed');
      });
    }
  }

  /**
   * Handles hub commands; a repeated command id gets the first result again. With a
   * `commandGuard`, a command first passes its checks (signed, this device, in its window, not a
   * replay: agent/link/command-guard.ts); a refused one is answered FORBIDDEN and never runs.
   */
  onCommand(handler: CommandHandler): void {
    this.#commandHandler = handler;
  }

  // ---- connection ----

  #onConnect(): void {
    const session = ++this.#session;
    const now = Date.now();
    if (this.#everConnected) this.#stats.reconnects++;
    this.#everConnected = true;
    this.#stats.lastConnectedAt = now;
    this.#setConnected(true);
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      if (session === this.#session) this.#backoff.reset();
    }, this.#o.stableMs);
    this.#stableTimer.unref();
    this.#log.info({ reconnects: this.#stats.reconnects }, 'connected to hub');
    this.emit('connected');
    this.#startSession(session).catch((err: unknown) => {
      if (session !== this.#session) return; // the connection went away mid-setup; next connect redoes it
      this.#log.error({ err }, 'session setup failed');
    });
  }

  async #startSession(session: number): Promise<void> {
    const client = this.#client!;
    // Clean session: the broker forgot our subscriptions, so make them on every connect, and
    // before anything is sent, so no ack can arrive before we listen for it.
    const map: Record<string, { qos: 0 | 1 }> = { [this.#topics.ack]: { qos: 1 }, [this.#topics.cmd]: { qos: 1 } };
    for (const [filter, s] of this.#subs) map[filter] = { qos: s.qos };
    const granted = await client.subscribeAsync(map);
    if (session !== this.#session) return;
    for (const g of granted) {
      if (g.qos === 128) this.#log.error({ topic: g.topic }, 'subscription refused by the broker');
    }
    this.#sessionReady = true;
    const online = this.#statusPayload('online');
    if (this.#fits(this.#topics.status, online, 1, 'status not sent')) {
      client.publish(this.#topics.status, online, { qos: 1, retain: true }, (err) => {
        if (err) this.#log.debug({ err }, 'online status not delivered');
      });
    }
    this.#publishHello(client);
    this.#resetSender();
    this.#pump();
  }

  /**
   * Publishes a fresh hello now (after a model install, rollback or probation change), so the
   * hub reconciles against the new state without waiting for a reconnect. A no-op while
   * disconnected: the next connect sends one anyway.
   */
  republishHello(): void {
    const client = this.#client;
    if (!client || !this.#connected || !this.#sessionReady) return;
    this.#publishHello(client);
  }

  #publishHello(client: MqttClient): void {
    const modelState = this.#o.modelState?.().slice(0, 64);
    const hello: Hello = {
      v: PROTOCOL_VERSION,
      type: 'hello',
      deviceId: this.#o.deviceId,
      ts: Date.now(),
      agentVersion: this.#o.agentVersion,
      bootEpoch: Math.max(0, this.#o.outbox.epoch),
      models: this.#o.models().slice(0, 64),
      streams: this.#o.outbox.positions().slice(0, 64),
      ...(modelState ? { modelState } : {}),
    };
    const payload = encodeJson(hello);
    // 64 models and 64 streams at most: a hello this large means something else went wrong.
    if (!this.#fits(this.#topics.hello, payload, 1, 'hello not sent')) return;
    client.publish(this.#topics.hello, payload, { qos: 1 }, (err) => {
      if (err) this.#log.debug({ err }, 'hello not delivered');
    });
  }

  #onClose(): void {
    const wasConnected = this.#connected;
    this.#session++;
    this.#sessionReady = false;
    clearTimeout(this.#stableTimer);
    this.#resetSender();
    if (wasConnected) {
      this.#setConnected(false);
      this.#log.warn('disconnected from hub');
      this.emit('disconnected');
    }
    if (!this.#stopping) this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    if (this.#reconnectTimer || !this.#client) return;
    const delay = this.#backoff.next();
    const attempt = this.#backoff.attempts;
    this.#stats.reconnectAttempts++;
    this.#metrics?.reconnects.inc();
    this.#log.debug({ delay, attempt }, 'reconnect scheduled');
    this.emit('reconnectScheduled', delay, attempt);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      const client = this.#client;
      if (this.#stopping || !client) return;
      client.options.will = this.#will(); // a fresh ts in the last-will
      client.reconnect();
    }, delay);
  }

  #onError(err: Error): void {
    this.#throttle.run(`error:${(err as { code?: unknown }).code as string}`, (suppressed) =>
      this.#log.warn({ err, suppressed }, 'hub connection error'),
    );
  }

  #setConnected(c: boolean): void {
    this.#connected = c;
    this.#metrics?.connected.set(c ? 1 : 0);
  }

  #will(): NonNullable<IClientOptions['will']> {
    return { topic: this.#topics.status, payload: this.#statusPayload('offline'), qos: 1, retain: true };
  }

  #statusPayload(state: 'online' | 'offline'): Buffer {
    const status: Status = { v: PROTOCOL_VERSION, type: 'status', deviceId: this.#o.deviceId, ts: Date.now(), state };
    if (this.#o.outbox.epoch >= 0) status.bootEpoch = this.#o.outbox.epoch;
    return encodeJson(status);
  }

  // ---- telemetry sender ----

  /** Forgets every batch in flight and rewinds to the oldest unacked record. */
  #resetSender(): void {
    for (const f of this.#inflight.values()) clearTimeout(f.timer);
    this.#inflight.clear();
    this.#cursor = 0;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    this.#metrics?.inflight.set(0);
  }

  #wake(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    setImmediate(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    const client = this.#client;
    if (!client || !this.#connected || !this.#sessionReady || this.#stopping || this.#retryTimer) return;
    while (this.#inflight.size < this.#o.maxInflightBatches) {
      let rows;
      try {
        rows = this.#o.outbox.readBatch(this.#cursor, this.#o.batchSize);
      } catch (err) {
        this.#throttle.run('read', (suppressed) => this.#log.error({ err, suppressed }, 'outbox read failed'));
        this.#retryLater('outbox read failed');
        return;
      }
      if (rows.length === 0) break;
      const batchId = randomUUID();
      const { payload, n } = this.#buildBatch(batchId, rows);
      this.#cursor = rows[n - 1]!.rowid;
      const timer = setTimeout(() => this.#onAckTimeout(batchId), this.#o.ackTimeoutMs);
      this.#inflight.set(batchId, { sentAt: performance.now(), records: n, timer });
      client.publish(this.#topics.telemetry, payload, { qos: 1 }, (err) => {
        // The ack (or its timeout) decides; a failed QoS 1 publish just means no ack comes.
        if (err) this.#log.debug({ err, batchId }, 'telemetry publish failed');
      });
      this.#stats.sent += n;
      this.#metrics?.sent.inc(n);
    }
    this.#metrics?.inflight.set(this.#inflight.size);
  }

  /**
   * The longest prefix of `rows` whose batch fits the telemetry budget (at least one record).
   * Usually the whole read fits and is encoded once. Otherwise each record is serialized once
   * and measured, and the payload is the batch envelope with the record texts spliced into its
   * `records` array: byte for byte what encodeJson of that batch gives, since JSON.stringify of
   * an array is its items joined by commas.
   */
  #buildBatch(batchId: string, rows: readonly OutboxRecord[]): { payload: Buffer; n: number } {
    const budget = this.#telemetryBudget;
    const envelope: TelemetryBatch = { v: PROTOCOL_VERSION, type: 'telemetry', deviceId: this.#o.deviceId, batchId, records: [] };
    const all = encodeJson({ ...envelope, records: rows.map(({ rowid: _rowid, ...r }) => r) });
    if (all.length <= budget) return { payload: all, n: rows.length };
    const shell = JSON.stringify(envelope);
    const at = shell.lastIndexOf('[]') + 1; // `records` is the last key
    let size = Buffer.byteLength(shell);
    const parts: string[] = [];
    for (const { rowid: _rowid, ...record } of rows) {
      let text = JSON.stringify(record);
      let bytes = Buffer.byteLength(text);
      if (parts.length === 0 && size + bytes > budget) {
        text = JSON.stringify(this.#stubFor(record, publishPacketBytes(this.#topics.telemetry, size + bytes, 1)));
        bytes = Buffer.byteLength(text);
      }
      const add = bytes + (parts.length > 0 ? 1 : 0);
      if (parts.length > 0 && size + add > budget) break;
      parts.push(text);
      size += add;
    }
    return { payload: Buffer.from(`${shell.slice(0, at)}${parts.join(',')}${shell.slice(at)}`), n: parts.length };
  }

  /**
   * What is sent instead of a record whose batch would be over the packet limit even alone.
   * A stub, not a drop: the record keeps its identity (stream, epoch, seq), so the hub stores a
   * marker of what was lost instead of seeing a gap it would count as data loss, acks it like
   * any record, and the outbox deletes the original, so the stream moves on instead of resending
   * a batch the hub can only refuse. Kind `oversize` is one no hub consumer (KPIs, drift,
   * rollouts) reads, so it is not mistaken for the original; the body says what it was.
   * The outbox caps bodies (256 KiB by default), so this only happens when the hub's limit is
   * set below that.
   */
  #stubFor(record: TelemetryRecord, bytes: number): TelemetryRecord {
    const key = `${record.stream}|${record.epoch}|${record.seq}`;
    if (!this.#stubbed.has(key)) {
      if (this.#stubbed.size >= STUBBED_MEMORY) this.#stubbed.clear();
      this.#stubbed.add(key);
      this.#oversize(this.#topics.telemetry, bytes, `record sent as a stub (kind ${OVERSIZE_KIND}) and deleted from the outbox`, {
        stream: record.stream,
        seq: record.seq,
        kind: record.kind,
      });
    }
    return { ...record, kind: OVERSIZE_KIND, body: { kind: record.kind, bytes, limit: this.#o.maxPacketBytes } };
  }

  /** True when `payload` on `topic` fits maxPacketBytes; else counts and warns (`what` happened instead). */
  #fits(topic: string, payload: Buffer, qos: 0 | 1, what: string): boolean {
    const bytes = publishPacketBytes(topic, payload.length, qos);
    if (bytes <= this.#o.maxPacketBytes) return true;
    this.#oversize(topic, bytes, what);
    return false;
  }

  #oversize(topic: string, bytes: number, what: string, extra: Record<string, unknown> = {}): void {
    const kind = topicKind(topic);
    this.#stats.oversize++;
    this.#metrics?.oversize.inc({ topic_kind: kind });
    this.#throttle.run(`oversize:${kind}`, (suppressed) =>
      this.#log.warn(
        { topic, topicKind: kind, bytes, limit: this.#o.maxPacketBytes, ...extra, suppressed },
        `MQTT packet of ${bytes} bytes is over the hub's limit of ${this.#o.maxPacketBytes} (the hub would drop the connection): ${what}. ` +
          `If the hub accepts more, raise the hub's limits.maxPayloadBytes and the agent's hub.maxPacketBytes together`,
      ),
    );
  }

  /** Rewinds and resends everything pending after a backoff delay. */
  #retryLater(reason: string): void {
    this.#resetSender();
    const delay = this.#sendBackoff.next();
    this.#log.debug({ reason, delay }, 'telemetry resend scheduled');
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#pump();
    }, delay);
  }

  #onAckTimeout(batchId: string): void {
    const f = this.#inflight.get(batchId);
    if (!f) return;
    this.#stats.ackTimeouts++;
    this.#metrics?.ackFailures.inc({ reason: 'timeout' });
    this.#throttle.run('ack-timeout', (suppressed) =>
      this.#log.warn({ batchId, records: f.records, suppressed }, 'no ack from hub in time; will resend'),
    );
    this.#retryLater('ack timeout');
  }

  #onAck(ack: Ack): void {
    const f = this.#inflight.get(ack.batchId);
    if (f) {
      clearTimeout(f.timer);
      this.#inflight.delete(ack.batchId);
      this.#metrics?.ackLatency.observe((performance.now() - f.sentAt) / 1000);
      this.#metrics?.inflight.set(this.#inflight.size);
    }
    if (!ack.ok) {
      this.#stats.nacks++;
      this.#metrics?.ackFailures.inc({ reason: 'refused' });
      this.#throttle.run('nack', (suppressed) =>
        this.#log.warn({ batchId: ack.batchId, error: ack.error, suppressed }, 'hub refused a telemetry batch; will resend'),
      );
      // A stale refusal (of a batch already given up on) must not stall the current sending.
      if (f) this.#retryLater('batch refused');
      return;
    }
    let deleted = 0;
    try {
      deleted = this.#o.outbox.ack(ack.ranges);
    } catch (err) {
      // The records stay in the outbox and are resent; the hub de-duplicates them.
      this.#throttle.run('ack-apply', (suppressed) => this.#log.error({ err, suppressed }, 'could not apply ack to the outbox'));
    }
    this.#stats.acked += deleted;
    this.#metrics?.acked.inc(deleted);
    if (f) this.#sendBackoff.reset();
    else this.#log.debug({ batchId: ack.batchId, deleted }, 'ack for an unknown batch applied');
    this.emit('acked', deleted);
    this.#pump();
  }

  // ---- inbound ----

  #onMessage(topic: string, payload: Buffer, retain: boolean): void {
    if (topic === this.#topics.ack) {
      const d = decodeJson(AckSchema, payload, MAX_PAYLOAD_BYTES);
      if (d.ok) this.#onAck(d.value);
      else this.#bad('ack', d.error);
    } else if (topic === this.#topics.cmd) {
      const d = decodeJson(CommandSchema, payload, MAX_PAYLOAD_BYTES);
      if (d.ok) this.#onCommand(d.value, payload);
      else this.#bad('cmd', d.error);
    }
    for (const [filter, s] of this.#subs) {
      if (!topicMatches(filter, topic)) continue;
      for (const h of s.handlers) {
        try {
          h(topic, payload, retain);
        } catch (err) {
          this.#throttle.run(`handler:${filter}`, (suppressed) => this.#log.error({ err, topic, suppressed }, 'message handler threw'));
        }
      }
    }
  }

  #bad(kind: string, error: EdgefleetError): void {
    this.#stats.badMessages++;
    this.#metrics?.bad.inc({ kind });
    this.#throttle.run(`bad:${kind}`, (suppressed) => this.#log.warn({ kind, err: error, suppressed }, 'bad message from hub ignored'));
  }

  #onCommand(cmd: Command, payload: Buffer): void {
    const handler = this.#commandHandler;
    if (!handler) {
      // Not remembered: once a handler is registered, a retry of this id must really run.
      this.#sendResult(this.#result(cmd.id, { ok: false, error: { code: ErrorCode.UNAVAILABLE, message: 'no command handler' } }));
      return;
    }
    // Verified before the id is looked up, so a tampered copy of a known id is refused and
    // counted; refusals are not remembered, so the hub's own (re-signed) send of the id still runs.
    const guard = this.#o.commandGuard;
    const check = guard?.verify(cmd, payload);
    if (check && !check.ok) return this.#refuseCommand(cmd, check.reason, check.message);
    this.#stats.commands++;
    let p = this.#commandResults.get(cmd.id);
    if (p) {
      // The same command again (a QoS 1 redelivery, a re-send, a replay while we remember it):
      // the first result again, never a second run.
      this.#stats.duplicateCommands++;
      this.#metrics?.commands.inc({ outcome: 'duplicate' });
    } else {
      let admitted: Promise<void> | undefined;
      if (guard && check?.auth) {
        const a = guard.admit(cmd, check.auth);
        if (!a.ok) return this.#refuseCommand(cmd, a.reason, a.message);
        admitted = a.persisted;
      }
      p = admitted
        ? admitted.then(
            () => this.#runCommand(handler, cmd),
            (err: unknown) => {
              this.#commandResults.delete(cmd.id); // not run: a re-send of the id may try again
              return this.#result(cmd.id, { ok: false, error: { code: ErrorCode.STORAGE, message: `command not run: its replay record could not be saved: ${toEdgefleetError(err).message}` } });
            },
          )
        : this.#runCommand(handler, cmd);
      this.#commandResults.set(cmd.id, p);
      if (this.#commandResults.size > this.#o.commandMemory) {
        const oldest = this.#commandResults.keys().next().value;
        if (oldest !== undefined) this.#commandResults.delete(oldest);
      }
    }
    void p.then((r) => this.#sendResult(r));
  }

  /** Answers a refused command (CommandGuard counted and logged it) without remembering it. */
  #refuseCommand(cmd: Command, reason: string, message: string): void {
    this.#sendResult(this.#result(cmd.id, { ok: false, error: { code: ErrorCode.FORBIDDEN, message: `command refused (${reason}): ${message}` } }));
  }

  async #runCommand(handler: CommandHandler, cmd: Command): Promise<CommandResult> {
    try {
      const result = await handler(cmd);
      JSON.stringify(result); // fails here, as an error result, rather than when publishing
      this.#metrics?.commands.inc({ outcome: 'ok' });
      return this.#result(cmd.id, result === undefined ? { ok: true } : { ok: true, result });
    } catch (err) {
      const e = toEdgefleetError(err);
      this.#metrics?.commands.inc({ outcome: 'error' });
      this.#log.warn({ err: e, command: cmd.name, id: cmd.id }, 'command failed');
      return this.#result(cmd.id, { ok: false, error: { code: e.code, message: e.message } });
    }
  }

  #result(id: string, r: Pick<CommandResult, 'ok' | 'result' | 'error'>): CommandResult {
    return { v: PROTOCOL_VERSION, type: 'command_result', id, ts: Date.now(), ...r };
  }

  #sendResult(result: CommandResult): void {
    const client = this.#client;
    // Offline: the hub re-sends the command on reconnect and gets the remembered result.
    if (!client || !this.#connected) return;
    let payload = encodeJson(result);
    if (!this.#fits(this.#topics.cmdResult, payload, 1, 'command result replaced by a PAYLOAD_TOO_LARGE error')) {
      // The hub still gets an answer for the id, rather than waiting for one that never comes.
      const error = { code: ErrorCode.PAYLOAD_TOO_LARGE, message: `result of ${payload.length} bytes is over the hub packet limit ${this.#o.maxPacketBytes}` };
      payload = encodeJson(this.#result(result.id, { ok: false, error }));
    }
    client.publish(this.#topics.cmdResult, payload, { qos: 1 }, (err) => {
      if (err) this.#log.debug({ err, id: result.id }, 'command result not delivered');
    });
  }

  #dropLive(): void {
    this.#stats.droppedLive++;
    this.#metrics?.droppedLive.inc();
  }
}

/** The kind a stub record carries in place of a record too large to send (HubLink #stubFor). */
export const OVERSIZE_KIND = 'oversize';
/** Smallest packet limit accepted: a stub record in its batch envelope must always fit. */
const MIN_PACKET_BYTES = 1024;
/** Stubbed record identities remembered so a resend does not count them twice. */
const STUBBED_MEMORY = 1024;

/**
 * Size in bytes of an MQTT 3.1.1 PUBLISH packet: fixed header (1 byte and a 1-4 byte remaining
 * length), topic (2-byte length and UTF-8), packet id for QoS > 0 (2 bytes), then the payload.
 */
export function publishPacketBytes(topic: string, payloadBytes: number, qos: 0 | 1 | 2): number {
  const remaining = 2 + Buffer.byteLength(topic) + (qos > 0 ? 2 : 0) + payloadBytes;
  return 1 + varintBytes(remaining) + remaining;
}

function varintBytes(n: number): number {
  return n < 128 ? 1 : n < 16_384 ? 2 : n < 2_097_152 ? 3 : 4;
}

/** Largest payload whose PUBLISH on `topic` is at most `maxPacketBytes`. */
export function maxPayloadFor(topic: string, qos: 0 | 1 | 2, maxPacketBytes: number): number {
  let payload = maxPacketBytes - publishPacketBytes(topic, 0, qos) + 1;
  while (payload > 0 && publishPacketBytes(topic, payload, qos) > maxPacketBytes) payload--;
  return Math.max(0, payload);
}

/** A bounded label for a topic: the protocol kind it belongs to. */
function topicKind(topic: string): 'out' | 'telemetry' | 'hello' | 'status' | 'cmd_result' | 'other' {
  const rest = parseTopic(topic)?.rest;
  if (rest === undefined) return 'other';
  if (rest === 'out' || rest.startsWith('out/')) return 'out';
  if (rest === 'telemetry' || rest === 'hello' || rest === 'status') return rest;
  return rest === 'cmd/result' ? 'cmd_result' : 'other';
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = 'redacted';
    return u.toString();
  } catch {
    return '(unparseable url)';
  }
}

function createMetrics(registry: Registry): LinkMetrics {
  return {
    connected: new Gauge({ name: 'edgefleet_agent_hub_connected', help: '1 while connected to the hub.', registers: [registry] }),
    reconnects: new Counter({ name: 'edgefleet_agent_hub_reconnect_attempts_total', help: 'Reconnect attempts scheduled.', registers: [registry] }),
    sent: new Counter({ name: 'edgefleet_agent_telemetry_sent_total', help: 'Telemetry records published (resends included).', registers: [registry] }),
    acked: new Counter({ name: 'edgefleet_agent_telemetry_acked_total', help: 'Telemetry records acked by the hub and deleted.', registers: [registry] }),
    inflight: new Gauge({ name: 'edgefleet_agent_telemetry_batches_inflight', help: 'Telemetry batches awaiting an ack.', registers: [registry] }),
    ackLatency: new Histogram({
      name: 'edgefleet_agent_telemetry_ack_seconds',
      help: 'Time from publishing a telemetry batch to its ack.',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    ackFailures: new Counter({
      name: 'edgefleet_agent_telemetry_ack_failures_total',
      help: 'Telemetry batches not acked: timeout or refused by the hub.',
      labelNames: ['reason'],
      registers: [registry],
    }),
    droppedLive: new Counter({ name: 'edgefleet_agent_live_dropped_total', help: 'Live messages dropped because the hub link was down.', registers: [registry] }),
    oversize: new Counter({
      name: 'edgefleet_agent_publish_oversize_total',
      help: 'Messages not sent to the hub (live: out, hello, status), replaced (cmd_result) or sent as a stub (telemetry records) because their MQTT packet was over hub.maxPacketBytes.',
      labelNames: ['topic_kind'],
      registers: [registry],
    }),
    bad: new Counter({ name: 'edgefleet_agent_link_bad_messages_total', help: 'Malformed messages from the hub, by kind.', labelNames: ['kind'], registers: [registry] }),
    commands: new Counter({ name: 'edgefleet_agent_commands_total', help: 'Hub commands by outcome.', labelNames: ['outcome'], registers: [registry] }),
  };
}
