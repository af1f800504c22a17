/**
 * The MessageBus on an existing MQTT broker (issue #15, `broker: { kind: external }`): the hub
 * is an mqtt.js client of Mosquitto (or any MQTT 5 broker with shared subscriptions) instead of
 * embedding aedes.
 *
 * Connections. `subscribers` worker connections each subscribe every filter as
 * `$share/<shareGroup>/<filter>`, so the broker hands each message to one member of the group,
 * whether the members are this process's connections or another hub worker's. A worker
 * connection delivers one message at a time and sends the QoS 1 PUBACK only after the handler
 * settled (mqtt.js calls `handleMessage` before the PUBACK and reads the next packet only after
 * it: node_modules/mqtt/build/lib/handlers/publish.js). So the concurrency is bounded by the
 * number of worker connections, and backpressure is the broker's: what a busy worker has not
 * acknowledged stays in the broker's inflight window and queue. One control connection publishes
 * (acks, commands, alerts) and watches presence: its packets are never held behind a handler, so
 * a handler awaiting a QoS 1 publish cannot deadlock on its own connection.
 *
 * Presence. An external broker does not tell its clients who connects. Agents publish a retained
 * `status` (online on connect, offline as their last-will; shared/protocol.ts), so the control
 * connection subscribes (not shared: every worker needs the whole fleet, and retained messages
 * are not sent to shared subscriptions) to `<root>/+/status` and keeps the latest state per
 * device. `isConnected` answers from it and returns undefined for a device whose status it has
 * not seen (or whose retained status was cleared): callers treat undefined as "cannot tell".
 * Status payloads are validated with StatusSchema; the broker's ordering makes the last one win.
 *
 * Reconnects: mqtt.js's own fixed-period reconnect is off (mqttjs#561); each connection
 * reconnects with jittered exponential backoff from its 'close' handler (which also covers a
 * refused CONNACK), and subscribes again in its connect handler (clean sessions: the broker
 * keeps nothing for the hub). A lost connection is logged and counted. Telemetry a device sent
 * while no worker was connected is not acked, so the agent resends it (the store de-duplicates).
 * `publish` on a lost control connection fails at once (UNAVAILABLE) instead of waiting in
 * mqtt.js's in-memory queue, which a restart loses (PITFALLS).
 */
import { randomBytes } from 'node:crypto';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { Backoff, type BackoffOptions } from '../../shared/backoff.ts';
import { decodeJson } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { StatusSchema, parseTopic, topics } from '../../shared/protocol.ts';
import type { ClientTls } from '../../shared/tls.ts';
import { topicMatches } from '../../shared/topic-match.ts';
import type { MessageBus, MessageHandler } from './bus.ts';

export interface ExternalBusOptions {
  /** `mqtt://host:port` or `mqtts://host:port`. */
  url: string;
  username?: string;
  password?: string;
  /** Client ids are `<prefix>-<random>-<role>`: two hub workers never take over each other's connections (mqttjs#1585). */
  clientIdPrefix: string;
  shareGroup: string;
  /** Worker connections: at most this many messages are being handled at once. */
  subscribers: number;
  keepaliveSeconds: number;
  connectTimeoutMs: number;
  reconnect: BackoffOptions;
  /** How long start() waits for every connection's first CONNACK. */
  startTimeoutMs: number;
  tls?: ClientTls;
  log: Logger;
  registry: Registry;
  random?: () => number;
}

interface Subscription {
  filter: string;
  handler: MessageHandler;
}

interface Metrics {
  connected: Gauge<'role'>;
  lost: Counter<'role'>;
  connects: Counter<'role'>;
  messages: Counter<'outcome'>;
  handlerSeconds: Histogram;
}

type Role = 'control' | `worker${number}`;

/** One mqtt.js connection with its own backoff; `onConnect` runs on every (re)connect. */
class Connection {
  readonly client: MqttClient;
  readonly #backoff: Backoff;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;
  #everConnected = false;
  #firstConnect: Promise<void>;

  constructor(
    readonly role: Role,
    url: string,
    options: IClientOptions,
    backoff: Backoff,
    private readonly hooks: { onConnect: (c: Connection) => Promise<void>; onLost: (c: Connection, err: Error | undefined) => void; log: Logger },
  ) {
    this.#backoff = backoff;
    this.client = mqtt.connect(url, options);
    let lastError: Error | undefined;
    let markFirst: (subscribed: Promise<void>) => void = () => {};
    this.#firstConnect = new Promise<void>((resolve) => (markFirst = resolve));
    this.client.on('connect', () => {
      this.#backoff.reset();
      this.#everConnected = true;
      lastError = undefined;
      const subscribed = hooks.onConnect(this);
      // start() fails on refused subscriptions; later reconnects only log them.
      subscribed.catch(() => undefined);
      markFirst(subscribed);
    });
    // Never end() here: it would stop reconnecting for good (mqttjs#1466).
    this.client.on('error', (err) => {
      lastError = err;
    });
    this.client.on('close', () => {
      if (this.#stopping) return;
      if (this.#everConnected) hooks.onLost(this, lastError);
      this.#everConnected = false;
      this.#schedule(lastError);
    });
  }

  /** Settles after the first CONNACK and its subscriptions (rejects when the broker refused them). */
  get firstConnect(): Promise<void> {
    return this.#firstConnect;
  }

  #schedule(err: Error | undefined): void {
    if (this.#timer || this.#stopping) return;
    const delay = this.#backoff.next();
    this.hooks.log.debug({ role: this.role, delayMs: delay, attempt: this.#backoff.attempts, err: err ? { message: err.message } : undefined }, 'external broker: reconnecting');
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (!this.#stopping) this.client.reconnect();
    }, delay);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.client.endAsync(true);
  }
}

export class ExternalBus implements Component, MessageBus {
  readonly name = 'external-broker';
  readonly #o: ExternalBusOptions;
  readonly #log: Logger;
  readonly #throttle = new LogThrottle(5000);
  readonly #subs: Subscription[] = [];
  readonly #presenceListeners: ((id: string, online: boolean) => void)[] = [];
  readonly #presence = new Map<string, boolean>();
  readonly #metrics: Metrics;
  readonly #instance = randomBytes(4).toString('hex');
  #control: Connection | undefined;
  #workers: Connection[] = [];

  constructor(o: ExternalBusOptions) {
    if (!/^[^/+#]+$/.test(o.shareGroup)) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `broker.shareGroup ${o.shareGroup}: no '/', '+' or '#'`);
    this.#o = o;
    this.#log = o.log;
    const registers = [o.registry];
    const workers = (): Connection[] => this.#workers;
    const control = (): Connection | undefined => this.#control;
    this.#metrics = {
      connected: new Gauge({
        name: 'edgefleet_hub_external_broker_connected',
        help: 'Connections of the hub to the external MQTT broker that are up (1) or down (0), by role (control, workerN).',
        labelNames: ['role'],
        registers,
        collect() {
          for (const c of [control(), ...workers()]) if (c) this.set({ role: c.role }, c.client.connected ? 1 : 0);
        },
      }),
      lost: new Counter({ name: 'edgefleet_hub_external_broker_connection_lost_total', help: 'Connections to the external MQTT broker that were up and went down, by role.', labelNames: ['role'], registers }),
      connects: new Counter({ name: 'edgefleet_hub_external_broker_connects_total', help: 'Successful (re)connects to the external MQTT broker, by role.', labelNames: ['role'], registers }),
      messages: new Counter({
        name: 'edgefleet_hub_external_broker_messages_total',
        help: 'Messages delivered by the external broker to the hub, by outcome (handled, failed: the handler threw; unmatched: no subscription matched).',
        labelNames: ['outcome'],
        registers,
      }),
      handlerSeconds: new Histogram({
        name: 'edgefleet_hub_external_broker_handler_seconds',
        help: 'Time from a message reaching a worker connection to its handler settling (the PUBACK follows).',
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
        registers,
      }),
    };
  }

  /** The broker URL, as configured. */
  get url(): string {
    return this.#o.url;
  }

  async start(signal: AbortSignal): Promise<void> {
    if (this.#control) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'external broker bus already started');
    const o = this.#o;
    const options = (role: Role): IClientOptions => ({
      protocolVersion: 5,
      clientId: `${o.clientIdPrefix}-${this.#instance}-${role}`,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      clean: true,
      keepalive: o.keepaliveSeconds,
      connectTimeout: o.connectTimeoutMs,
      reconnectPeriod: 0,
      reconnectOnConnackError: true,
      resubscribe: false,
      queueQoSZero: false,
      ...o.tls,
    });
    const hooks = {
      log: this.#log,
      onConnect: (c: Connection) => this.#onConnect(c),
      onLost: (c: Connection, err: Error | undefined) => {
        this.#metrics.lost.inc({ role: c.role });
        this.#throttle.run(`lost:${c.role}`, (suppressed) =>
          this.#log.warn({ role: c.role, url: o.url, err: err ? { message: err.message } : undefined, suppressed }, 'external broker connection lost; reconnecting with backoff'),
        );
      },
    };
    const backoff = (): Backoff => new Backoff(o.reconnect, o.random);
    this.#control = new Connection('control', o.url, options('control'), backoff(), hooks);
    this.#control.client.on('message', (topic, payload) => this.#onStatus(topic, payload));
    this.#workers = Array.from({ length: o.subscribers }, (_, i) => {
      const c = new Connection(`worker${i}`, o.url, options(`worker${i}`), backoff(), hooks);
      // Called by mqtt.js before the PUBACK; the next packet of this connection waits for `done`.
      c.client.handleMessage = (packet, done) => {
        if (packet.cmd !== 'publish') return done();
        const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
        this.#deliver(packet.topic, payload).then(() => done(), () => done());
      };
      return c;
    });
    const all = [this.#control, ...this.#workers];
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    try {
      await Promise.race([
        Promise.all(all.map((c) => c.firstConnect)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new EdgefleetError(ErrorCode.UNAVAILABLE, `external MQTT broker ${o.url}: not connected within ${o.startTimeoutMs} ms (check broker.url and the hub's credentials)`)), o.startTimeoutMs);
          onAbort = () => reject(new EdgefleetError(ErrorCode.ABORTED, 'external broker connect aborted'));
          if (signal.aborted) onAbort();
          signal.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } catch (err) {
      await this.stop();
      throw err;
    } finally {
      clearTimeout(timer);
      if (onAbort) signal.removeEventListener('abort', onAbort);
    }
    this.#log.info({ url: o.url, shareGroup: o.shareGroup, subscribers: o.subscribers, filters: this.#subs.map((s) => s.filter) }, 'connected to the external mqtt broker');
  }

  async stop(): Promise<void> {
    const all = [this.#control, ...this.#workers].filter((c): c is Connection => c !== undefined);
    this.#control = undefined;
    this.#workers = [];
    await Promise.all(all.map((c) => c.stop()));
  }

  // --- MessageBus ---------------------------------------------------------------------------

  /** Subscribes every worker connection (now, when connected, and on every reconnect). */
  async subscribe(filter: string, handler: MessageHandler): Promise<void> {
    this.#subs.push({ filter, handler });
    await Promise.all(this.#workers.filter((w) => w.client.connected).map((w) => this.#subscribe(w, [`$share/${this.#o.shareGroup}/${filter}`])));
  }

  async publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }): Promise<void> {
    const c = this.#control?.client;
    if (!c?.connected) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `not connected to the external mqtt broker ${this.#o.url}`);
    try {
      await c.publishAsync(topic, payload, { qos: opts.qos, retain: opts.retain ?? false });
    } catch (err) {
      throw toEdgefleetError(err, ErrorCode.UNAVAILABLE);
    }
  }

  /** The device's last status (online/offline) as seen on its retained status topic; undefined when none was seen. */
  isConnected(clientId: string): boolean | undefined {
    return this.#presence.get(clientId);
  }

  onPresence(listener: (id: string, online: boolean) => void): void {
    this.#presenceListeners.push(listener);
  }

  // --- internals ----------------------------------------------------------------------------

  async #onConnect(c: Connection): Promise<void> {
    this.#metrics.connects.inc({ role: c.role });
    this.#log.info({ role: c.role, url: this.#o.url }, 'external broker connected');
    try {
      if (c.role === 'control') await this.#subscribe(c, [topics.fleet('status')]);
      else await this.#subscribe(c, this.#subs.map((s) => `$share/${this.#o.shareGroup}/${s.filter}`));
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.FORBIDDEN);
      this.#log.error({ err: e, role: c.role }, 'external broker: subscription refused');
      throw e;
    }
  }

  async #subscribe(c: Connection, filters: string[]): Promise<void> {
    if (filters.length === 0) return;
    let refused: string[];
    try {
      const granted = await c.client.subscribeAsync([...new Set(filters)], { qos: 1 });
      refused = granted.filter((g) => g.qos >= 0x80).map((g) => g.topic);
    } catch (err) {
      // mqtt.js 5 rejects a SUBACK with a failure code (ErrorWithSubackPacket).
      if (!(err instanceof Error) || !('packet' in err)) throw err;
      refused = filters;
    }
    if (refused.length) throw new EdgefleetError(ErrorCode.FORBIDDEN, `the external broker refused the hub's subscriptions ${refused.join(', ')} (may the hub's broker user subscribe to them, shared-subscription prefix included?)`);
  }

  async #deliver(topic: string, payload: Buffer): Promise<void> {
    const t0 = performance.now();
    const matching = this.#subs.filter((s) => topicMatches(s.filter, topic));
    if (matching.length === 0) {
      this.#metrics.messages.inc({ outcome: 'unmatched' });
      return;
    }
    let ok = true;
    for (const s of matching) {
      try {
        await s.handler(topic, payload);
      } catch (err) {
        ok = false;
        this.#log.error({ err: toEdgefleetError(err), topic }, 'message handler failed');
      }
    }
    this.#metrics.messages.inc({ outcome: ok ? 'handled' : 'failed' });
    this.#metrics.handlerSeconds.observe((performance.now() - t0) / 1000);
  }

  #onStatus(topic: string, payload: Buffer): void {
    const t = parseTopic(topic);
    if (!t || t.rest !== 'status') return;
    let online: boolean | undefined;
    if (payload.length > 0) {
      const d = decodeJson(StatusSchema, payload, 4096);
      // A status that does not parse or names another device says nothing about presence (ingest counts it as bad).
      if (!d.ok || d.value.deviceId !== t.deviceId) return;
      online = d.value.state === 'online';
    }
    const before = this.#presence.get(t.deviceId);
    if (online === undefined) this.#presence.delete(t.deviceId);
    else this.#presence.set(t.deviceId, online);
    if (online === undefined || online === before) return;
    for (const l of this.#presenceListeners) {
      try {
        l(t.deviceId, online);
      } catch (err) {
        this.#log.error({ err: toEdgefleetError(err) }, 'presence listener failed');
      }
    }
  }
}
