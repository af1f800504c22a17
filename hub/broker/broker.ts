/**
 * The embedded MQTT broker: aedes on a `net` server, locked down. aedes accepts every login,
 * subscription and publish by default (PITFALLS), so every hook is set here:
 *   authenticate       username = principal id, password = token (scrypt-verified, async);
 *                      clientId must equal the username, so nobody can take over (kick off)
 *                      another principal's session by reusing its clientId; will topics
 *                      are checked against the same ACL as publishes.
 *   authorizePublish   ACL (hub/broker/acl.ts) and payload size cap; a refusal closes the
 *                      connection (MQTT 3.1.1 has no negative PUBACK) and is counted.
 *   authorizeSubscribe ACL; refused filters get SUBACK 128.
 *   authorizeForward   delivery-time check, so retained messages never cross devices.
 * Plus a short drainTimeout (one stalled reader must not stall everyone) and a topic depth cap.
 * TLS (hub config `tls`, issue #6): mqtts on a node:tls server; the packet guard wraps the
 * TLSSocket like a plain one. With client certificates, a verified certificate's CN must equal
 * the client id (refused `cert_cn_mismatch`); the token is still checked: the certificate binds
 * the identity, the token proves it. Refused client certificates (cert_missing, cert_expired,
 * cert_untrusted, ...: shared/tls.ts) and failed handshakes (plain MQTT on the TLS port, a client
 * that does not trust the hub) are counted in edgefleet_hub_mqtt_tls_refused_total{reason}.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, TLSSocket } from 'node:tls';
import { Aedes, type AedesPublishPacket, type Client, type ConnectPacket, type PublishPacket, type Subscription } from 'aedes';
import { Counter, Gauge, type Registry } from 'prom-client';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { enforceClientCerts, peerCertificate, readTlsFiles, serverTlsOptions, type ClientCertMode, type TlsFiles } from '../../shared/tls.ts';
import type { AuthFailureLimiter } from '../auth/failures.ts';
import { PrincipalVerifier } from '../auth/principals.ts';
import type { HubStore } from '../store/store.ts';
import { rawSocket, type Conn, type ConnectionLimiter } from '../net/conn-limits.ts';
import { guardConnection } from './packet-guard.ts';
import { mayReceive, publishRefusal, subscribeRefusal, type Identity } from './acl.ts';
import type { MessageBus, MessageHandler } from './bus.ts';
import { QuotaPersistence } from './quota-persistence.ts';
import { BrokerQuotas, type BrokerQuotaLimits, type QuotaUsage } from './quotas.ts';

export interface BrokerOptions {
  host: string;
  port: number;
  maxPayloadBytes: number;
  maxTopicDepth: number;
  drainTimeoutMs: number;
  /** mqtts when certFile and keyFile are set (read at start); clientCerts as in hub config `tls`. */
  tls?: TlsFiles & { clientCerts: ClientCertMode };
  /** QoS 2 PUBLISHes one connection may leave unreleased (no PUBREL yet) before it is cut. */
  maxInflight?: number;
  /** What one principal may make the broker hold: queued, retained, subscriptions, offline sessions (quotas.ts). */
  quotas: BrokerQuotaLimits;
  /** New connections accepted per second from one remote address (a token bucket, burst = 2 s worth). */
  maxConnectsPerSecondPerIp?: number;
  /** Longest topic (bytes) accepted in a publish, a will or a subscription filter. */
  maxTopicBytes?: number;
  /** Failed credential checks per address (shared with the API); past the budget CONNECTs are refused without a scrypt. */
  failures?: AuthFailureLimiter;
  /** Connection caps, shedding and the CONNECT deadline (hub/net/conn-limits.ts); none without it. */
  connections?: ConnectionLimiter;
  store: HubStore;
  log: Logger;
  registry: Registry;
  now?: () => number;
}

/** CONNACK return codes of MQTT 3.1.1 (aedes declares them as an ambient const enum). */
const CONNACK = { IDENTIFIER_REJECTED: 2, SERVER_UNAVAILABLE: 3, BAD_USERNAME_OR_PASSWORD: 4, NOT_AUTHORIZED: 5 } as const;

function refuse(returnCode: number, message: string): Error & { returnCode: number } {
  return Object.assign(new Error(message), { returnCode });
}

interface BrokerMetrics {
  connectRefused: Counter<'reason'>;
  publishRefused: Counter<'reason'>;
  subscribeRefused: Counter<'reason'>;
  forwardBlocked: Counter;
  clientErrors: Counter;
  tlsRefused: Counter<'reason'>;
}

export class EmbeddedBroker implements Component, MessageBus {
  readonly name = 'broker';
  readonly #opts: BrokerOptions;
  readonly #log: Logger;
  readonly #throttle = new LogThrottle(5000);
  readonly #identities = new WeakMap<Client, Identity>();
  readonly #wills = new WeakMap<Client, { topic: string; size: number }>();
  readonly #presence: ((id: string, online: boolean) => void)[] = [];
  readonly #metrics: BrokerMetrics;
  readonly #now: () => number;
  #aedes: Aedes | undefined;
  #server: Server | undefined;
  readonly #sockets = new Set<Socket>();
  /** Each admitted TCP socket's handle in the connection limiter. */
  readonly #conns = new WeakMap<Socket, Conn>();
  #port = 0;

  readonly #verifier: PrincipalVerifier;
  readonly #connectRate: RateBuckets;
  readonly #quotas: BrokerQuotas;
  readonly #persistence: QuotaPersistence;
  #expirySweep: NodeJS.Timeout | undefined;

  constructor(opts: BrokerOptions) {
    this.#opts = opts;
    this.#connectRate = new RateBuckets(opts.maxConnectsPerSecondPerIp ?? 100, opts.now ?? Date.now);
    this.#verifier = new PrincipalVerifier(opts.store);
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    const registers = [opts.registry];
    this.#metrics = {
      connectRefused: new Counter({
        name: 'edgefleet_hub_mqtt_connect_refused_total',
        help: 'MQTT connections refused, by reason (bad_credentials, auth_rate, revoked, client_id_mismatch, will_not_allowed, topic_too_long, rate, unavailable).',
        labelNames: ['reason'],
        registers,
      }),
      publishRefused: new Counter({
        name: 'edgefleet_hub_mqtt_publish_refused_total',
        help: 'MQTT publishes refused (the client is disconnected), by reason (acl, too_large, topic_too_long, packet_too_large, inflight, unknown_client).',
        labelNames: ['reason'],
        registers,
      }),
      subscribeRefused: new Counter({
        name: 'edgefleet_hub_mqtt_subscribe_refused_total',
        help: 'MQTT subscriptions refused with SUBACK 128, by reason (acl, unknown_client, quota).',
        labelNames: ['reason'],
        registers,
      }),
      forwardBlocked: new Counter({
        name: 'edgefleet_hub_mqtt_forward_blocked_total',
        help: 'Deliveries (retained included) withheld because the receiver may not see the topic.',
        registers,
      }),
      clientErrors: new Counter({ name: 'edgefleet_hub_mqtt_client_errors_total', help: 'Client and connection errors seen by the broker.', registers }),
      tlsRefused: new Counter({
        name: 'edgefleet_hub_mqtt_tls_refused_total',
        help: 'TLS connections refused before MQTT, by reason (cert_missing, cert_expired, cert_not_yet_valid, cert_untrusted, cert_invalid; handshake: failed before that, e.g. not TLS at all).',
        labelNames: ['reason'],
        registers,
      }),
    };
    const connected = (): number => this.#aedes?.connectedClients ?? 0;
    new Gauge({
      name: 'edgefleet_hub_mqtt_clients',
      help: 'MQTT clients currently connected to the embedded broker.',
      registers,
      collect() {
        this.set(connected());
      },
    });
    this.#quotas = new BrokerQuotas({ limits: opts.quotas, log: opts.log, registry: opts.registry, now: this.#now });
    this.#persistence = new QuotaPersistence(this.#quotas, (id) => this.isConnected(id));
    // Built here, not in start(): the MessageBus can take subscriptions before the broker
    // listens, so nothing a reconnecting fleet publishes right after a restart is missed.
    const aedes = new Aedes({
      persistence: this.#persistence,
      drainTimeout: this.#opts.drainTimeoutMs,
      maxTopicLevels: this.#opts.maxTopicDepth,
      preConnect: (client, packet, done) => this.#preConnect(client, packet, done),
      authenticate: (client, username, password, done) => {
        this.#authenticate(client, username, password).then(
          () => done(null, true),
          (err: Error & { returnCode: number }) => done(err, false),
        );
      },
      authorizePublish: (client, packet, done) => done(this.#authorizePublish(client, packet)),
      authorizeSubscribe: (client, sub, done) => done(null, this.#authorizeSubscribe(client, sub)),
      authorizeForward: (client, packet) => this.#authorizeForward(client, packet),
    });
    this.#aedes = aedes;
    aedes.on('clientReady', (client) => {
      this.#connOf(client)?.establish();
      const who = this.#identities.get(client);
      if (who) for (const l of this.#presence) l(who.id, true);
      this.#quotas.online(client.id, client);
    });
    aedes.on('unsubscribe', (filters, client) => this.#quotas.unsubscribed(client, filters));
    aedes.on('clientDisconnect', (client) => {
      if (this.#quotas.offline(client.id, client, !client.clean)) this.#expireNow();
      const who = this.#identities.get(client);
      if (!who) return;
      // On a takeover (same id reconnecting) the old connection ends after the new one is in.
      const current = this.#clients()[who.id];
      if (current && current !== client && current.connected) return;
      for (const l of this.#presence) l(who.id, false);
    });
    const onError = (kind: string) => (client: Client | null, err: Error) => {
      this.#metrics.clientErrors.inc();
      this.#throttle.run(`${kind}:${err.message}`, (suppressed) =>
        this.#log.debug({ clientId: client?.id, err: { message: err.message }, suppressed }, kind),
      );
    };
    aedes.on('clientError', onError('client error'));
    aedes.on('connectionError', onError('connection error'));
  }

  /** The port the broker listens on (the bound one when configured with 0). */
  get port(): number {
    return this.#port;
  }

  async start(signal: AbortSignal): Promise<void> {
    const aedes = this.#aedes;
    if (!aedes) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'broker was stopped');
    // Read before anything listens: an unreadable certificate is a clear BAD_CONFIG at start.
    const tlsFiles = this.#opts.tls;
    const tls = tlsFiles?.certFile ? serverTlsOptions(readTlsFiles(tlsFiles, 'tls'), tlsFiles.clientCerts) : undefined;
    await aedes.listen();

    const onSocket = (socket: Socket): void => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      // Room for the largest accepted payload plus a maximal topic and the headers.
      const maxPacket = this.#opts.maxPayloadBytes + 65_536 + 16;
      const maxInflight = this.#opts.maxInflight ?? 64;
      if (socket.destroyed) return; // refused by enforceClientCerts (it runs first)
      aedes.handle(socket);
      // After aedes.handle: its 'readable' reader is in place, so this listener sees every chunk
      // just before aedes parses it and never switches the socket to flowing mode.
      guardConnection(socket, { maxPacketBytes: maxPacket, maxInflight }, (v) => {
        this.#metrics.publishRefused.inc({ reason: v.reason });
        this.#throttle.run(v.reason, (suppressed) =>
          this.#log.warn(
            { remote: socket.remoteAddress, ...v, max: v.reason === 'inflight' ? maxInflight : maxPacket, suppressed },
            v.reason === 'inflight' ? 'too many unreleased QoS 2 publishes; connection closed' : 'mqtt packet too large; connection closed',
          ),
        );
      });
    };
    const inner = tls ? this.#tlsServer(tls, onSocket) : undefined;
    // One accept path: the connection rate is checked before a TLS handshake costs anything;
    // admitted TLS connections go to a tls.Server that does not listen itself.
    const server = createServer((raw) => {
      if (!this.#admit(raw)) return;
      const limiter = this.#opts.connections;
      const conn = limiter?.admit(raw, raw.remoteAddress ?? '');
      if (limiter && !conn) return;
      if (conn) this.#conns.set(raw, conn);
      if (!inner) return onSocket(raw);
      // Tracked from accept on: one still in its handshake would otherwise hold stop() open.
      this.#sockets.add(raw);
      raw.once('close', () => this.#sockets.delete(raw));
      inner.emit('connection', raw);
    });
    this.#server = server;
    this.#opts.connections?.start();
    try {
      await new Promise<void>((resolve, reject) => {
        const onAbort = (): void => reject(new EdgefleetError(ErrorCode.ABORTED, 'broker start aborted'));
        if (signal.aborted) return onAbort();
        signal.addEventListener('abort', onAbort, { once: true });
        server.once('error', (err) => reject(new EdgefleetError(ErrorCode.UNAVAILABLE, `mqtt listen on ${this.#opts.host}:${this.#opts.port}: ${err.message}`, { cause: err })));
        server.listen({ host: this.#opts.host, port: this.#opts.port }, () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        });
      });
    } catch (err) {
      await this.stop();
      throw err;
    }
    const addr = server.address();
    this.#port = typeof addr === 'object' && addr ? addr.port : this.#opts.port;
    this.#log.info({ host: this.#opts.host, port: this.#port, tls: !!tls, clientCerts: tls ? tlsFiles?.clientCerts : undefined }, 'mqtt listening');
    const sweepMs = Math.min(60_000, this.#quotas.limits.sessionExpiryMs);
    this.#expirySweep = setInterval(() => this.#expireNow(), sweepMs).unref();
  }

  /** Connection rate per remote address; a refused connection is closed at once. */
  #admit(socket: Socket): boolean {
    if (this.#connectRate.take(socket.remoteAddress ?? '')) return true;
    this.#metrics.connectRefused.inc({ reason: 'rate' });
    this.#throttle.run(`rate:${socket.remoteAddress ?? ''}`, (suppressed) =>
      this.#log.warn({ remote: socket.remoteAddress, suppressed }, 'mqtt connection rate exceeded; connection closed'),
    );
    socket.destroy();
    return false;
  }

  /** The limiter handle of a client's TCP socket (under TLS, the socket the TLS one wraps). */
  #connOf(client: Client): Conn | undefined {
    return this.#conns.get(rawSocket(client.conn as Socket));
  }

  #tlsServer(options: ReturnType<typeof serverTlsOptions>, onSocket: (socket: Socket) => void): Server {
    const server = createTlsServer(options, onSocket);
    const refusedTls = (reason: string, detail: string, remote: string | undefined): void => {
      this.#metrics.tlsRefused.inc({ reason });
      this.#throttle.run(`tls:${reason}:${detail}`, (suppressed) => this.#log.warn({ remote, reason, detail, suppressed }, 'mqtt tls connection refused'));
    };
    server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => refusedTls('handshake', err.code ?? err.message, socket.remoteAddress));
    enforceClientCerts(server, this.#opts.tls?.clientCerts ?? 'none', (reason, detail, socket) => refusedTls(reason, detail, socket.remoteAddress));
    return server;
  }

  async stop(): Promise<void> {
    this.#opts.connections?.stop();
    const server = this.#server;
    const aedes = this.#aedes;
    this.#server = undefined;
    this.#aedes = undefined;
    clearInterval(this.#expirySweep);
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    if (aedes) await new Promise<void>((resolve) => aedes.close(() => resolve()));
    // Sockets aedes never adopted (a connect still being authenticated) would hold close() open.
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  #clients(): Record<string, Client | undefined> {
    return (this.#aedes as unknown as { clients?: Record<string, Client | undefined> } | undefined)?.clients ?? {};
  }

  // --- MessageBus ---------------------------------------------------------------------------

  subscribe(filter: string, handler: MessageHandler): Promise<void> {
    const aedes = this.#requireAedes();
    return new Promise<void>((resolve) => {
      // aedes.subscribe listens on the broker's emitter, below client ACLs: it sees every
      // publish on the filter, and the publisher's PUBACK waits until the handler is done.
      aedes.subscribe(
        filter,
        (packet: AedesPublishPacket, done: () => void) => {
          const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
          handler(packet.topic, payload).then(done, (err: unknown) => {
            this.#log.error({ err: toEdgefleetError(err), topic: packet.topic }, 'message handler failed');
            done();
          });
        },
        () => resolve(),
      );
    });
  }

  publish(topic: string, payload: Buffer, opts: { qos: 0 | 1; retain?: boolean }): Promise<void> {
    const aedes = this.#requireAedes();
    return new Promise((resolve, reject) => {
      const packet: PublishPacket = { cmd: 'publish', topic, payload, qos: opts.qos, retain: opts.retain ?? false, dup: false };
      aedes.publish(packet, (err) => (err ? reject(toEdgefleetError(err, ErrorCode.UNAVAILABLE)) : resolve()));
    });
  }

  /** Closes the connection of `clientId` if it is connected (revocation); its will, if any, goes out as for any lost connection. */
  disconnect(clientId: string, reason: string): boolean {
    const c = this.#clients()[clientId];
    if (!c) return false;
    this.#log.warn({ clientId, reason }, 'mqtt client disconnected by the hub');
    c.close();
    return true;
  }

  isConnected(clientId: string): boolean {
    const c = this.#clients()[clientId];
    return !!c && c.connected && !c.closed;
  }

  onPresence(listener: (id: string, online: boolean) => void): void {
    this.#presence.push(listener);
  }

  /** What principal `id` holds in the broker (queued, retained, subscriptions, offline since). */
  quotaUsage(id: string): QuotaUsage {
    return this.#quotas.usage(id);
  }

  /** `id` was revoked: its persistent session (subscriptions, queued messages) is dropped once it is offline. */
  forgetSession(id: string): void {
    this.#quotas.revoke(id);
    this.#expireNow();
  }

  #expireNow(): void {
    this.expireSessions().catch((err: unknown) => this.#log.error({ err: toEdgefleetError(err) }, 'cannot drop expired sessions'));
  }

  /** Drops the persistent sessions offline longer than the expiry (also run every minute); returns their ids. */
  async expireSessions(): Promise<string[]> {
    const dropped: string[] = [];
    for (const id of this.#quotas.dueSessions()) {
      if (this.isConnected(id)) continue; // back online: the session is in use again
      await this.#persistence.dropSession(id);
      this.#quotas.expired(id);
      dropped.push(id);
    }
    return dropped;
  }

  #requireAedes(): Aedes {
    if (!this.#aedes) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'broker is not running');
    return this.#aedes;
  }

  // --- hooks --------------------------------------------------------------------------------

  #preConnect(client: Client, packet: ConnectPacket, done: (err: Error | null, ok: boolean) => void): void {
    // A whole CONNECT arrived: no longer sheddable, authentication has its own deadline.
    this.#connOf(client)?.start();
    // authenticate() does not see the CONNECT packet; keep the will to check it there.
    if (packet.will) {
      const p = packet.will.payload as Buffer | string | undefined;
      this.#wills.set(client, { topic: packet.will.topic, size: p === undefined ? 0 : typeof p === 'string' ? Buffer.byteLength(p) : p.length });
    }
    done(null, true);
  }

  async #authenticate(client: Client, username: string | undefined, password: Buffer | undefined): Promise<void> {
    const refused = (reason: string, code: number, message: string): Error => {
      this.#metrics.connectRefused.inc({ reason });
      this.#throttle.run(`connect:${reason}:${username ?? ''}`, (suppressed) =>
        this.#log.warn({ clientId: client.id, username, reason, suppressed }, 'mqtt connect refused'),
      );
      return refuse(code, message);
    };
    if (!username || !password || password.length === 0) throw refused('bad_credentials', CONNACK.BAD_USERNAME_OR_PASSWORD, 'username and password required');
    if (client.id !== username) throw refused('client_id_mismatch', CONNACK.IDENTIFIER_REJECTED, 'client id must equal the username');
    // aedes handles the socket itself (TCP, or TLS): its remote address (failed-login budget) and peer certificate.
    const socket = client.conn as Socket | undefined;
    const peer = peerCertificate(socket instanceof TLSSocket ? socket : undefined);
    if (this.#opts.tls?.clientCerts === 'required' && !peer.verified) throw refused('cert_missing', CONNACK.NOT_AUTHORIZED, 'a verified client certificate is required');
    if (peer.verified && peer.cn !== client.id) throw refused('cert_cn_mismatch', CONNACK.NOT_AUTHORIZED, 'the client certificate CN must equal the client id');
    const remote = socket?.remoteAddress ?? '';
    if (this.#opts.failures && !this.#opts.failures.allowed(remote)) throw refused('auth_rate', CONNACK.SERVER_UNAVAILABLE, 'too many failed logins from this address; retry later');
    const token = password.toString('utf8');
    let ok: boolean;
    let creds;
    try {
      creds = await this.#verifier.verify(username, token);
      ok = creds !== undefined;
    } catch (err) {
      this.#log.error({ err: toEdgefleetError(err) }, 'authentication failed on the store');
      throw refused('unavailable', CONNACK.SERVER_UNAVAILABLE, 'server unavailable');
    }
    if (!creds || !ok) {
      this.#opts.failures?.fail(remote);
      throw refused('bad_credentials', CONNACK.BAD_USERNAME_OR_PASSWORD, 'bad user name or password');
    }
    if (creds.revokedAt !== null) throw refused('revoked', CONNACK.NOT_AUTHORIZED, 'credentials revoked');
    const who: Identity = { id: creds.id, kind: creds.kind, deviceId: creds.deviceId };
    const will = this.#wills.get(client);
    if (will) {
      const why = will.size > this.#opts.maxPayloadBytes ? 'will payload too large' : (this.#topicTooLong(will.topic) ?? publishRefusal(who, will.topic));
      if (why) throw refused('will_not_allowed', CONNACK.NOT_AUTHORIZED, `will topic refused: ${why}`);
    }
    this.#identities.set(client, who);
  }

  #authorizePublish(client: Client | null, packet: PublishPacket): Error | null {
    // client is null only for wills of vanished clients that aedes publishes itself; those
    // wills passed the ACL when their client connected.
    if (!client) return null;
    const who = this.#identities.get(client);
    if (!who) {
      this.#metrics.publishRefused.inc({ reason: 'unknown_client' });
      return new Error('not authenticated');
    }
    const size = typeof packet.payload === 'string' ? Buffer.byteLength(packet.payload) : packet.payload.length;
    const tooLarge = size > this.#opts.maxPayloadBytes;
    const topicTooLong = this.#topicTooLong(packet.topic);
    const aclRefusal = tooLarge ? undefined : (topicTooLong ?? publishRefusal(who, packet.topic));
    if (!tooLarge && !aclRefusal) {
      // The publisher's id travels with the packet (aedes copies it), so the persistence can
      // charge a retained or queued message to it; the hub's own publishes carry none.
      (packet as PublishPacket & { clientId?: string }).clientId = who.id;
      return null;
    }
    const reason = tooLarge ? 'too_large' : topicTooLong ? 'topic_too_long' : 'acl';
    const detail = aclRefusal ?? `payload of ${size} bytes exceeds ${this.#opts.maxPayloadBytes}`;
    this.#metrics.publishRefused.inc({ reason });
    this.#throttle.run(`publish:${reason}:${who.id}`, (suppressed) =>
      this.#log.warn(
        { principal: who.id, topic: packet.topic.slice(0, 256), code: reason === 'too_large' ? ErrorCode.PAYLOAD_TOO_LARGE : ErrorCode.FORBIDDEN, detail, suppressed },
        'mqtt publish refused',
      ),
    );
    this.#opts.store.countBadMessage(who.id, this.#now()).catch((err: unknown) => this.#log.warn({ err: toEdgefleetError(err) }, 'cannot count bad message'));
    return new Error(`publish refused: ${detail}`);
  }

  /** Why a topic or filter is too long, or undefined. (Depth is aedes' maxTopicLevels.) */
  #topicTooLong(topic: string): string | undefined {
    const max = this.#opts.maxTopicBytes ?? 512;
    return Buffer.byteLength(topic) > max ? `topic longer than ${max} bytes` : undefined;
  }

  #authorizeSubscribe(client: Client, sub: Subscription): Subscription | null {
    const who = this.#identities.get(client);
    const why = who ? (this.#topicTooLong(sub.topic) ?? subscribeRefusal(who, sub.topic)) : 'not authenticated';
    if (!why) {
      if (this.#quotas.admitSubscription(client, client.id, sub.topic)) return sub;
      this.#metrics.subscribeRefused.inc({ reason: 'quota' });
      return null;
    }
    this.#metrics.subscribeRefused.inc({ reason: who ? 'acl' : 'unknown_client' });
    this.#throttle.run(`subscribe:${who?.id ?? client.id}`, (suppressed) =>
      this.#log.warn({ principal: who?.id ?? client.id, filter: sub.topic.slice(0, 256), why, suppressed }, 'mqtt subscribe refused'),
    );
    return null;
  }

  #authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const who = this.#identities.get(client);
    if (who && mayReceive(who, packet.topic)) return packet;
    this.#metrics.forwardBlocked.inc();
    return null;
  }
}

/**
 * Token buckets per key (remote address): `perSecond` refill, burst of two seconds' worth. The
 * map is swept when it grows, so a scan from many addresses cannot grow it without bound.
 */
export class RateBuckets {
  readonly #buckets = new Map<string, { tokens: number; at: number }>();
  constructor(
    private readonly perSecond: number,
    private readonly now: () => number,
  ) {}

  take(key: string): boolean {
    const t = this.now();
    const burst = this.perSecond * 2;
    if (this.#buckets.size > 10_000) {
      for (const [k, b] of this.#buckets) if (b.tokens + ((t - b.at) / 1000) * this.perSecond >= burst) this.#buckets.delete(k);
    }
    const b = this.#buckets.get(key) ?? { tokens: burst, at: t };
    b.tokens = Math.min(burst, b.tokens + ((t - b.at) / 1000) * this.perSecond);
    b.at = t;
    this.#buckets.set(key, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }
}
