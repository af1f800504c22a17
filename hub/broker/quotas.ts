/**
 * Per-principal resource caps in the embedded broker (issue #14): what one MQTT identity may make
 * the hub hold in memory. Owns the accounting, the decisions, the drop counters and the throttled
 * logs; hub/broker/quota-persistence.ts applies the decisions where aedes stores things.
 *
 * A principal is the authenticated identity, and its client id must equal its id (broker.ts
 * `authenticate`), so a principal has at most one session: "per client" below is "per principal",
 * and the number of offline persistent sessions is bounded by the number of principals.
 *
 *   queued        QoS 1/2 messages a persistent session (clean: false) holds, offline or not yet
 *                 acknowledged: count and bytes per session, plus a total over all sessions. Past
 *                 a cap new messages are dropped (the first N are kept, see `admitQueued`). The
 *                 hub's own messages (commands, acks, alerts) get a reserve of a tenth above the
 *                 per-session caps, so a flood from other principals cannot crowd them out.
 *   retained      retained messages a principal owns (the last publisher of the topic): count and
 *                 bytes. Past a cap the message is still delivered live but not retained (the
 *                 previous retained message of the topic stays). An empty payload (a delete) is
 *                 always accepted. The hub's own retained messages are counted, never capped.
 *   subscriptions filters one connection holds; past the cap SUBACK 128.
 *   sessions      a persistent session offline longer than `sessionExpiryMs` is dropped (its
 *                 subscriptions and queued messages), as MQTT 5's session expiry would; a revoked
 *                 principal's at once (it cannot come back for it).
 *
 * Bytes are payload plus topic, what the message costs beyond a fixed overhead per packet.
 * Every drop counts in edgefleet_hub_broker_quota_drops_total{kind,limit}.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { ErrorCode } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';

export interface BrokerQuotaLimits {
  /** Messages one persistent session may hold queued (offline or unacknowledged). */
  queuedMessages: number;
  /** Bytes (payload + topic) one persistent session may hold queued. */
  queuedBytes: number;
  /** Bytes queued over all sessions together: the last bound on the broker's queue memory. */
  queuedBytesTotal: number;
  /** Retained messages one principal may own. */
  retainedMessages: number;
  /** Bytes (payload + topic) of retained messages one principal may own. */
  retainedBytes: number;
  /** Subscription filters one connection may hold. */
  subscriptions: number;
  /** A persistent session offline longer than this is dropped. */
  sessionExpiryMs: number;
}

/** What one principal holds in the broker (tests and the figures read it). */
export interface QuotaUsage {
  queued: number;
  queuedBytes: number;
  retained: number;
  retainedBytes: number;
  /** Filters of the current connection (0 when offline). */
  subscriptions: number;
  /** When its persistent session went offline, or null (online, or no persistent session). */
  offlineSince: number | null;
}

export type QuotaKind = 'queued' | 'retained' | 'subscription' | 'session';
export type QuotaLimit = 'count' | 'bytes' | 'total' | 'expired' | 'revoked';

/** offlineSince of a revoked principal's session: due at once. */
const REVOKED = Number.NEGATIVE_INFINITY;

/** The hub's own publishes carry no client id; they own retained topics under this name. */
const HUB = '';

interface Tally {
  count: number;
  bytes: number;
}

export interface BrokerQuotasOptions {
  limits: BrokerQuotaLimits;
  log: Logger;
  registry: Registry;
  now?: () => number;
}

/** Payload plus topic bytes of a publish packet. */
export function packetBytes(packet: { topic: string; payload: Buffer | string | undefined }): number {
  const p = packet.payload;
  return Buffer.byteLength(packet.topic) + (p === undefined ? 0 : typeof p === 'string' ? Buffer.byteLength(p) : p.length);
}

export class BrokerQuotas {
  readonly limits: Readonly<BrokerQuotaLimits>;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #throttle = new LogThrottle(5000);
  readonly #drops: Counter<'kind' | 'limit'>;
  readonly #queued = new Map<string, Tally>();
  #queuedTotal = 0;
  /** topic → its owner and size; the owners' totals in #retainedBy. */
  readonly #retained = new Map<string, { owner: string; bytes: number }>();
  readonly #retainedBy = new Map<string, Tally>();
  /** Filters granted per connection (keyed by aedes' Client object, so a new connection starts at 0). */
  readonly #subscriptions = new WeakMap<object, Set<string>>();
  readonly #live = new Map<string, object>();
  readonly #offlineSince = new Map<string, number>();
  /** Revoked principals not offline yet: their session is due as soon as they are. */
  readonly #revoked = new Set<string>();

  constructor(opts: BrokerQuotasOptions) {
    this.limits = Object.freeze({ ...opts.limits });
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    const registers = [opts.registry];
    this.#drops = new Counter({
      name: 'edgefleet_hub_broker_quota_drops_total',
      help: 'Broker quota refusals, by kind (queued: message not queued for a persistent session; retained: message not retained; subscription: SUBACK 128; session: offline session dropped) and limit (count, bytes, total; expired, revoked).',
      labelNames: ['kind', 'limit'],
      registers,
    });
    const queued = this.#queued;
    const sum = (m: Map<string, Tally>, k: keyof Tally): number => [...m.values()].reduce((s, t) => s + t[k], 0);
    new Gauge({
      name: 'edgefleet_hub_broker_queued_messages',
      help: 'QoS 1/2 messages queued for persistent sessions (offline or unacknowledged).',
      registers,
      collect() {
        this.set(sum(queued, 'count'));
      },
    });
    const queuedBytes = (): number => this.#queuedTotal;
    new Gauge({
      name: 'edgefleet_hub_broker_queued_bytes',
      help: 'Bytes (payload + topic) queued for persistent sessions.',
      registers,
      collect() {
        this.set(queuedBytes());
      },
    });
    const retainedBy = this.#retainedBy;
    new Gauge({
      name: 'edgefleet_hub_broker_retained_bytes',
      help: 'Bytes (payload + topic) of retained messages held by the broker.',
      registers,
      collect() {
        this.set(sum(retainedBy, 'bytes'));
      },
    });
    const offline = this.#offlineSince;
    new Gauge({
      name: 'edgefleet_hub_broker_offline_sessions',
      help: 'Persistent sessions whose client is offline (dropped after limits.brokerQuotas.sessionExpiryMs).',
      registers,
      collect() {
        this.set(offline.size);
      },
    });
  }

  // --- queued messages ----------------------------------------------------------------------

  /**
   * Charges a message queued for `clientId`, or refuses it. Past a cap the new message is
   * dropped and the queue keeps its first N: dropping on arrival never touches a packet aedes
   * may already have sent with a packet id (evicting one would break its PUBACK bookkeeping in
   * the persistence), costs O(1), and is what Mosquitto does (max_queued_messages). Which
   * messages survive matters little to the fleet: it heals by reconciliation on reconnect, not
   * by broker persistence (ARCHITECTURE §4).
   */
  admitQueued(clientId: string, bytes: number, fromHub: boolean): boolean {
    const t = this.#queued.get(clientId) ?? { count: 0, bytes: 0 };
    // The hub's own messages may use a reserve of a tenth above the per-session caps.
    const reserve = (n: number): number => (fromHub ? n + Math.ceil(n / 10) : n);
    const limit: QuotaLimit | undefined =
      t.count + 1 > reserve(this.limits.queuedMessages)
        ? 'count'
        : t.bytes + bytes > reserve(this.limits.queuedBytes)
          ? 'bytes'
          : this.#queuedTotal + bytes > this.limits.queuedBytesTotal
            ? 'total'
            : undefined;
    if (limit) {
      this.#dropped('queued', limit, clientId, { queued: t.count, queuedBytes: t.bytes, bytes, fromHub }, 'message not queued for a persistent session: quota reached');
      return false;
    }
    t.count++;
    t.bytes += bytes;
    this.#queued.set(clientId, t);
    this.#queuedTotal += bytes;
    return true;
  }

  /** A queued message left the queue (acknowledged, or discarded by aedes). */
  releaseQueued(clientId: string, bytes: number): void {
    const t = this.#queued.get(clientId);
    if (!t) return;
    t.count = Math.max(0, t.count - 1);
    t.bytes = Math.max(0, t.bytes - bytes);
    this.#queuedTotal = Math.max(0, this.#queuedTotal - bytes);
    if (t.count === 0) {
      this.#queuedTotal = Math.max(0, this.#queuedTotal - t.bytes);
      this.#queued.delete(clientId);
    }
  }

  /** Whether `clientId`'s queue is at a cap (why aedes could not find a packet it handed over). */
  queueFull(clientId: string): boolean {
    const t = this.#queued.get(clientId);
    return !!t && (t.count >= this.limits.queuedMessages || t.bytes >= this.limits.queuedBytes);
  }

  get queuedBytesTotal(): number {
    return this.#queuedTotal;
  }

  // --- retained messages --------------------------------------------------------------------

  /**
   * Charges a retained message on `topic` to `owner` (undefined: the hub), replacing what the
   * topic held, or refuses it (the topic keeps its previous message). An empty payload deletes
   * and is always accepted.
   */
  admitRetained(owner: string | undefined, topic: string, bytes: number, empty: boolean): boolean {
    const who = owner ?? HUB;
    const prev = this.#retained.get(topic);
    if (empty) {
      if (prev) this.#uncharge(prev.owner, prev.bytes);
      this.#retained.delete(topic);
      return true;
    }
    const t = this.#retainedBy.get(who) ?? { count: 0, bytes: 0 };
    const same = prev?.owner === who;
    const count = t.count + (same ? 0 : 1);
    const total = t.bytes - (same ? prev.bytes : 0) + bytes;
    const limit: QuotaLimit | undefined = who === HUB ? undefined : count > this.limits.retainedMessages ? 'count' : total > this.limits.retainedBytes ? 'bytes' : undefined;
    if (limit) {
      this.#dropped('retained', limit, who, { retained: t.count, retainedBytes: t.bytes, topic: topic.slice(0, 256), bytes }, 'message delivered but not retained: quota reached');
      return false;
    }
    if (prev) this.#uncharge(prev.owner, prev.bytes);
    const after = this.#retainedBy.get(who) ?? { count: 0, bytes: 0 };
    after.count++;
    after.bytes += bytes;
    this.#retainedBy.set(who, after);
    this.#retained.set(topic, { owner: who, bytes });
    return true;
  }

  #uncharge(owner: string, bytes: number): void {
    const t = this.#retainedBy.get(owner);
    if (!t) return;
    t.count--;
    t.bytes -= bytes;
    if (t.count <= 0) this.#retainedBy.delete(owner);
  }

  // --- subscriptions ------------------------------------------------------------------------

  /** Grants `filter` to the connection `client` of `clientId`, or refuses it past the cap. */
  admitSubscription(client: object, clientId: string, filter: string): boolean {
    const set = this.#subscriptions.get(client) ?? new Set<string>();
    this.#subscriptions.set(client, set);
    this.#live.set(clientId, client);
    if (set.has(filter)) return true;
    if (set.size >= this.limits.subscriptions) {
      this.#dropped('subscription', 'count', clientId, { subscriptions: set.size, filter: filter.slice(0, 256) }, 'mqtt subscribe refused: quota reached');
      return false;
    }
    set.add(filter);
    return true;
  }

  /** Whether `filter` was granted to `client` (refused filters must not enter a persistent session). */
  granted(client: object, filter: string): boolean {
    return this.#subscriptions.get(client)?.has(filter) ?? false;
  }

  unsubscribed(client: object, filters: readonly string[]): void {
    const set = this.#subscriptions.get(client);
    if (set) for (const f of filters) set.delete(f);
  }

  // --- sessions -----------------------------------------------------------------------------

  /** The client of `clientId` connected (any session it had is now online or discarded). */
  online(clientId: string, client: object): void {
    this.#offlineSince.delete(clientId);
    this.#live.set(clientId, client);
  }

  /**
   * The connection `client` ended; `persistent`: it leaves a session (clean: false) behind.
   * Returns true when that session is due at once (its principal was revoked).
   */
  offline(clientId: string, client: object, persistent: boolean): boolean {
    const live = this.#live.get(clientId);
    // On a takeover the old connection ends after the new one restored the session.
    if (live !== undefined && live !== client) return false;
    this.#live.delete(clientId);
    const revoked = this.#revoked.delete(clientId);
    if (persistent) this.#offlineSince.set(clientId, revoked ? REVOKED : this.#now());
    return persistent && revoked;
  }

  /**
   * `clientId` was revoked: it cannot come back, so its session is due once it is offline (its
   * connection may still be closing). The set only holds revoked ids that have not gone offline.
   */
  revoke(clientId: string): void {
    if (this.#offlineSince.has(clientId)) this.#offlineSince.set(clientId, REVOKED);
    else this.#revoked.add(clientId);
  }

  /** Offline sessions older than sessionExpiryMs (the caller drops them, then calls `expired`). */
  dueSessions(): string[] {
    const before = this.#now() - this.limits.sessionExpiryMs;
    return [...this.#offlineSince].filter(([, since]) => since <= before).map(([id]) => id);
  }

  expired(clientId: string): void {
    const since = this.#offlineSince.get(clientId);
    this.#offlineSince.delete(clientId);
    if (since === REVOKED) return this.#dropped('session', 'revoked', clientId, {}, 'offline persistent session dropped: principal revoked');
    this.#dropped('session', 'expired', clientId, { offlineSince: since === undefined ? undefined : new Date(since).toISOString() }, 'offline persistent session dropped: expired');
  }

  usage(clientId: string): QuotaUsage {
    const q = this.#queued.get(clientId);
    const r = this.#retainedBy.get(clientId);
    const live = this.#live.get(clientId);
    return {
      queued: q?.count ?? 0,
      queuedBytes: q?.bytes ?? 0,
      retained: r?.count ?? 0,
      retainedBytes: r?.bytes ?? 0,
      subscriptions: live ? (this.#subscriptions.get(live)?.size ?? 0) : 0,
      offlineSince: this.#offlineSince.get(clientId) ?? null,
    };
  }

  #dropped(kind: QuotaKind, limit: QuotaLimit, principal: string, details: Record<string, unknown>, msg: string): void {
    this.#drops.inc({ kind, limit });
    this.#throttle.run(`${kind}:${limit}:${principal}`, (suppressed) =>
      this.#log.warn({ principal, kind, limit, code: ErrorCode.OVERLOADED, ...details, suppressed }, msg),
    );
  }
}
