/**
 * Connection admission for the hub's two listeners (issue #14, connection exhaustion): every
 * accepted socket costs a file descriptor, and past the process's descriptor limit the hub can
 * accept nothing at all, devices included. This module owns:
 *   - the descriptor budget: the soft RLIMIT_NOFILE read from /proc/self/limits at start (Node
 *     has no getrlimit; a configured value elsewhere), minus a reserve for SQLite, artifact files
 *     and probe pipes, split into disjoint shares for HTTP and MQTT, so an HTTP flood can never
 *     take the descriptors kept for devices;
 *   - per listener: a global cap, a cap on connections that have not yet proven anything
 *     (pending), per-address caps, and deadlines;
 *   - shedding: when a cap is reached, a newcomer from an address holding fewer unproven
 *     connections than the heaviest address closes that address's longest-waiting unproven one
 *     (opening before started), so a device reconnect or a /healthz probe gets in while
 *     sockets that never sent a request or a CONNECT make room; a newcomer from the heaviest
 *     address (or one at its per-address cap) is refused at accept.
 *
 * A connection goes through three stages:
 *   opening      accepted, nothing useful received yet (HTTP: no complete request head;
 *                MQTT: no CONNECT). Deadline `openingTimeoutMs` from entering the stage.
 *   started      HTTP: head parsed, body still arriving; MQTT: CONNECT parsed, authenticating.
 *                Every `startedTimeoutMs` it must have read `minBytesPerSecond` × that window
 *                (HTTP: a slow but moving upload lives, a dribble or a silent body dies) or,
 *                without a rate, have been established within the window (MQTT).
 *   established  HTTP: the request is complete and being answered; MQTT: authenticated. Never
 *                shed; the listener's own idle timeouts (keep-alive, MQTT keep-alive) apply.
 * An HTTP connection goes back to opening when its response is done (keep-alive).
 *
 * Sockets are anything with destroy(), bytesRead and a 'close' event, so the logic runs in unit
 * tests with fake sockets and a fake clock (test/unit/conn-limits.test.ts).
 */
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { Counter, Gauge, type Registry } from 'prom-client';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';

export type Listener = 'http' | 'mqtt';
export type Stage = 'opening' | 'started' | 'established';

export interface TrackedSocket {
  destroy(): void;
  readonly bytesRead: number;
  once(event: 'close', listener: () => void): unknown;
}

/** The `limits.connections` block of the hub config (hub/config.ts documents each field). */
export interface ConnectionSettings {
  fallbackFdLimit: number;
  reservedFds: number;
  httpShare: number;
  mqttPendingShare: number;
  httpMaxPerAddress: number;
  mqttMaxPendingPerAddress: number;
  mqttMaxPerAddress: number;
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  minBodyBytesPerSecond: number;
  connectTimeoutMs: number;
  sweepMs: number;
}

export interface LimiterOptions {
  listener: Listener;
  /** Open connections, all stages. */
  max: number;
  /** Connections not established (opening + started). */
  maxPending: number;
  maxPerAddress: number;
  maxPendingPerAddress: number;
  openingTimeoutMs: number;
  startedTimeoutMs: number;
  /** Started connections must read this fast; undefined: they must be established within startedTimeoutMs. */
  minBytesPerSecond?: number;
  /** Whether started connections may be shed (HTTP bodies: yes; MQTT authentications: no, they are device reconnects). */
  shedStarted: boolean;
  /** Names of the two deadlines in the timeouts counter, e.g. headers/body, connect/auth. */
  phases: { opening: string; started: string };
  sweepMs: number;
  now: () => number;
  log: Logger;
  metrics: ConnectionMetrics;
}

interface Entry {
  readonly socket: TrackedSocket;
  readonly address: string;
  stage: Stage;
  /** When the current stage (or the current progress window) began, and bytesRead then. */
  since: number;
  bytesAtSince: number;
  /** Started HTTP requests: true once the whole body is in (polled: no listener on the request). */
  complete?: () => boolean;
  reader?: { readonly bytesRead: number };
}

interface AddressState {
  readonly address: string;
  readonly entries: Set<Entry>;
  /** Entries not established, longest waiting first; the address sits in the bucket of its size. */
  readonly unproven: Set<Entry>;
}

/** A connection's handle for its listener: tell it what the connection has proven so far. */
export class Conn {
  constructor(
    readonly limiter: ConnectionLimiter,
    readonly entry: Entry,
  ) {}

  get stage(): Stage {
    return this.entry.stage;
  }

  /** HTTP: a request head arrived (`complete` polls the body; `reader` is the socket it is read from). MQTT: CONNECT parsed. */
  start(progress?: { complete: () => boolean; reader: { readonly bytesRead: number } }): void {
    // Only from opening: an established connection never becomes unproven again this way, so
    // the pending cap holds. (A pipelined HTTP request stays under its predecessor's stage.)
    if (this.entry.stage === 'opening') this.limiter.move(this.entry, 'started', progress);
  }

  /** HTTP: the request is complete. MQTT: authenticated. */
  establish(): void {
    this.limiter.move(this.entry, 'established');
  }

  /** HTTP keep-alive: the response is done, the connection waits for the next request head. */
  idle(): void {
    this.limiter.move(this.entry, 'opening');
  }
}

export class ConnectionLimiter {
  readonly listener: Listener;
  readonly #o: LimiterOptions;
  readonly #throttle: LogThrottle;
  /** Per stage, ordered by stage entry: the first is the one waiting longest. */
  readonly #stages: Record<Stage, Map<Entry, Conn>> = { opening: new Map(), started: new Map(), established: new Map() };
  readonly #addresses = new Map<string, AddressState>();
  /** Addresses by their count of unproven connections (counts >= 1), to find the heaviest in O(1). */
  readonly #byPending = new Map<number, Set<AddressState>>();
  #topPending = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(opts: LimiterOptions) {
    this.#o = opts;
    this.listener = opts.listener;
    this.#throttle = new LogThrottle(5000, opts.now);
  }

  get max(): number {
    return this.#o.max;
  }

  get maxPending(): number {
    return this.#o.maxPending;
  }

  get open(): number {
    return this.#stages.opening.size + this.#stages.started.size + this.#stages.established.size;
  }

  count(stage: Stage): number {
    return this.#stages[stage].size;
  }

  get pending(): number {
    return this.#stages.opening.size + this.#stages.started.size;
  }

  /** Starts the deadline sweep (the owning server's start()). */
  start(): void {
    this.stop();
    this.#timer = setInterval(() => this.sweep(), this.#o.sweepMs);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Admits a just-accepted socket, shedding older unproven connections when a cap is reached.
   * Returns undefined when it was refused (the socket is destroyed and the refusal counted).
   */
  admit(socket: TrackedSocket, address: string): Conn | undefined {
    const o = this.#o;
    const addr = this.#addresses.get(address) ?? { address, entries: new Set<Entry>(), unproven: new Set<Entry>() };
    // An address at its own cap gets its new connection refused: its older ones are closer to
    // proving something, and the deadlines clear the ones that never will.
    if (addr.unproven.size >= o.maxPendingPerAddress || addr.entries.size >= o.maxPerAddress) return this.#refuse(socket, address, 'per_address');
    while (this.pending >= o.maxPending || this.open >= o.max) {
      // Fair shares: a newcomer from an address lighter than the heaviest one (a /healthz probe,
      // a device reconnecting) sheds that address's longest-waiting unproven connection, so it
      // gets in however fast a few addresses open sockets; a newcomer from the heaviest address
      // is refused at accept, which costs the hub the least.
      // Heavier by two: shedding must not just swap which of two busy addresses is heavier (a
      // ping-pong that costs a connection per accept); an address with nothing pending always
      // gets in while any address holds one.
      const top = this.#heaviest();
      if (!top || top.unproven.size - addr.unproven.size < (addr.unproven.size === 0 ? 1 : 2)) return this.#refuse(socket, address, 'full');
      const pendingBefore = this.pending;
      const victim = this.#victim(top.unproven);
      if (victim) this.#shed(victim, this.pending >= o.maxPending ? 'pending' : 'full');
      // Looking for a victim may have found completed requests (now established): look again.
      else if (this.pending >= pendingBefore) return this.#refuse(socket, address, 'full');
    }
    const entry: Entry = { socket, address, stage: 'opening', since: o.now(), bytesAtSince: socket.bytesRead };
    const conn = new Conn(this, entry);
    this.#stages.opening.set(entry, conn);
    addr.entries.add(entry);
    this.#addresses.set(address, addr);
    this.#proven(addr, entry, false);
    socket.once('close', () => this.#release(entry));
    return conn;
  }

  /** Closes connections past their deadlines. Called every sweepMs; tests call it after moving the clock. */
  sweep(): void {
    const o = this.#o;
    const t = o.now();
    for (const entry of this.#stages.opening.keys()) {
      // Ordered by stage entry: the first one still in time ends the scan.
      if (t - entry.since < o.openingTimeoutMs) break;
      this.#timeout(entry, o.phases.opening);
    }
    for (const entry of [...this.#stages.started.keys()]) {
      if (this.#promoted(entry) || t - entry.since < o.startedTimeoutMs) continue;
      const read = (entry.reader ?? entry.socket).bytesRead - entry.bytesAtSince;
      const needed = o.minBytesPerSecond === undefined ? Infinity : (o.minBytesPerSecond * (t - entry.since)) / 1000;
      if (read < needed) {
        this.#timeout(entry, o.phases.started);
      } else {
        entry.since = t; // moving fast enough: a new window
        entry.bytesAtSince = (entry.reader ?? entry.socket).bytesRead;
      }
    }
  }

  move(entry: Entry, stage: Stage, progress?: { complete: () => boolean; reader: { readonly bytesRead: number } }): void {
    const from = entry.stage;
    const conn = this.#stages[from].get(entry);
    if (!conn) return; // already released (closed, shed, timed out)
    this.#stages[from].delete(entry);
    entry.stage = stage;
    entry.since = this.#o.now();
    entry.complete = progress?.complete;
    entry.reader = progress?.reader;
    entry.bytesAtSince = (entry.reader ?? entry.socket).bytesRead;
    this.#stages[stage].set(entry, conn);
    const addr = this.#addresses.get(entry.address);
    if (addr && (from === 'established') !== (stage === 'established')) this.#proven(addr, entry, stage === 'established');
  }

  /** A started request whose body is complete is established (checked lazily, no listener on the request). */
  #promoted(entry: Entry): boolean {
    if (entry.stage !== 'started' || !entry.complete?.()) return false;
    this.move(entry, 'established');
    return true;
  }

  /** The sheddable connection waiting longest among `entries` (opening before started). */
  #victim(entries: Iterable<Entry>): Entry | undefined {
    let started: Entry | undefined;
    for (const e of entries) {
      if (e.stage === 'opening') return e;
      if (e.stage === 'started' && this.#o.shedStarted && !this.#promoted(e)) started ??= e;
    }
    return started;
  }

  #release(entry: Entry): void {
    if (!this.#stages[entry.stage].delete(entry)) return;
    const addr = this.#addresses.get(entry.address);
    if (!addr) return;
    addr.entries.delete(entry);
    this.#proven(addr, entry, true);
    if (addr.entries.size === 0) this.#addresses.delete(entry.address);
  }

  /** Moves `entry` out of (proven) or into its address's unproven set, and the address between buckets. */
  #proven(addr: AddressState, entry: Entry, proven: boolean): void {
    const before = addr.unproven.size;
    if (proven) addr.unproven.delete(entry);
    else addr.unproven.add(entry);
    const after = addr.unproven.size;
    if (after === before) return;
    if (before > 0) this.#byPending.get(before)?.delete(addr);
    if (after > 0) {
      let bucket = this.#byPending.get(after);
      if (!bucket) this.#byPending.set(after, (bucket = new Set()));
      bucket.add(addr);
    }
    if (after > this.#topPending) this.#topPending = after;
  }

  /** The address with the most unproven connections (undefined when there are none). */
  #heaviest(): AddressState | undefined {
    while (this.#topPending > 0) {
      const bucket = this.#byPending.get(this.#topPending);
      const first = bucket?.values().next();
      if (first && !first.done) return first.value;
      this.#byPending.delete(this.#topPending);
      this.#topPending--;
    }
    return undefined;
  }

  #close(entry: Entry): void {
    this.#release(entry);
    entry.socket.destroy();
  }

  #refuse(socket: TrackedSocket, address: string, reason: 'per_address' | 'full'): undefined {
    this.#o.metrics.refused.inc({ listener: this.listener, reason });
    this.#throttle.run(`refused:${reason}`, (suppressed) =>
      this.#o.log.warn({ listener: this.listener, remote: address, reason, open: this.open, pending: this.pending, suppressed }, 'connection refused: connection cap reached'),
    );
    socket.destroy();
    return undefined;
  }

  #shed(entry: Entry, reason: 'full' | 'pending'): void {
    this.#o.metrics.shed.inc({ listener: this.listener, reason });
    this.#throttle.run(`shed:${reason}`, (suppressed) =>
      this.#o.log.warn({ listener: this.listener, remote: entry.address, stage: entry.stage, reason, open: this.open, pending: this.pending, suppressed }, 'connection shed to admit a new one'),
    );
    this.#close(entry);
  }

  #timeout(entry: Entry, phase: string): void {
    this.#o.metrics.timeouts.inc({ listener: this.listener, phase });
    this.#throttle.run(`timeout:${phase}`, (suppressed) =>
      this.#o.log.info({ listener: this.listener, remote: entry.address, phase, suppressed }, 'connection closed: deadline passed'),
    );
    this.#close(entry);
  }
}

export interface ConnectionMetrics {
  refused: Counter<'listener' | 'reason'>;
  shed: Counter<'listener' | 'reason'>;
  timeouts: Counter<'listener' | 'phase'>;
}

/** The soft "Max open files" limit from /proc/self/limits text; undefined when absent or unreadable. */
export function parseFdLimit(text: string): number | undefined {
  const m = /^Max open files\s+(\S+)/m.exec(text);
  if (!m) return undefined;
  if (m[1] === 'unlimited') return 1_048_576; // Linux's default nr_open: no more than this anyway
  const n = Number(m[1]);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

/** How the descriptors are shared out; pure, so the arithmetic is unit-tested. */
export function planBudget(fdLimit: number, s: ConnectionSettings): { http: number; mqtt: number; mqttPending: number } {
  const total = fdLimit - s.reservedFds;
  // An HTTP connection may hold a second descriptor (an artifact being read, a sample being
  // written): each counts twice against the HTTP share.
  const http = Math.floor((total * s.httpShare) / 2);
  const mqtt = total - 2 * http;
  if (http < 4 || mqtt < 16) {
    throw new EdgefleetError(
      ErrorCode.BAD_CONFIG,
      `descriptor limit ${fdLimit} leaves ${http} HTTP and ${mqtt} MQTT connections after limits.connections.reservedFds=${s.reservedFds}: raise the limit (ulimit -n, LimitNOFILE=) or lower the reserve`,
    );
  }
  return { http, mqtt, mqttPending: Math.max(8, Math.floor(mqtt * s.mqttPendingShare)) };
}

/**
 * The process's descriptor budget and both listeners' limiters, with their metrics. Built once
 * in hub/main.ts; the API server takes `http`, the broker `mqtt`.
 */
export class ConnectionBudget {
  readonly fdLimit: number;
  readonly fdLimitSource: 'proc' | 'config';
  readonly http: ConnectionLimiter;
  readonly mqtt: ConnectionLimiter;

  constructor(opts: { settings: ConnectionSettings; registry: Registry; log: Logger; now?: () => number; readLimits?: () => string }) {
    const s = opts.settings;
    const now = opts.now ?? Date.now;
    let fromProc: number | undefined;
    try {
      fromProc = parseFdLimit((opts.readLimits ?? (() => readFileSync('/proc/self/limits', 'utf8')))());
    } catch {
      fromProc = undefined; // not Linux: the configured value
    }
    this.fdLimit = fromProc ?? s.fallbackFdLimit;
    this.fdLimitSource = fromProc === undefined ? 'config' : 'proc';
    const plan = planBudget(this.fdLimit, s);
    const registers = [opts.registry];
    const metrics: ConnectionMetrics = {
      refused: new Counter({
        name: 'edgefleet_hub_connections_refused_total',
        help: 'New connections closed at accept because a cap was reached and nothing could be shed, by listener and reason (per_address, full).',
        labelNames: ['listener', 'reason'],
        registers,
      }),
      shed: new Counter({
        name: 'edgefleet_hub_connections_shed_total',
        help: 'Unproven connections (no request / no CONNECT yet, or a body still arriving) closed to admit one from a lighter address, by listener and reason (pending: the unauthenticated share was full; full: the listener was).',
        labelNames: ['listener', 'reason'],
        registers,
      }),
      timeouts: new Counter({
        name: 'edgefleet_hub_connection_timeouts_total',
        help: 'Connections closed at a deadline, by listener and phase (http: headers, body; mqtt: connect, auth).',
        labelNames: ['listener', 'phase'],
        registers,
      }),
    };
    const log = opts.log;
    this.http = new ConnectionLimiter({
      listener: 'http',
      max: plan.http,
      maxPending: plan.http,
      maxPerAddress: s.httpMaxPerAddress,
      maxPendingPerAddress: s.httpMaxPerAddress,
      openingTimeoutMs: s.headersTimeoutMs,
      startedTimeoutMs: s.bodyTimeoutMs,
      minBytesPerSecond: s.minBodyBytesPerSecond,
      shedStarted: true,
      phases: { opening: 'headers', started: 'body' },
      sweepMs: s.sweepMs,
      now,
      log,
      metrics,
    });
    this.mqtt = new ConnectionLimiter({
      listener: 'mqtt',
      max: plan.mqtt,
      maxPending: plan.mqttPending,
      maxPerAddress: s.mqttMaxPerAddress,
      maxPendingPerAddress: s.mqttMaxPendingPerAddress,
      openingTimeoutMs: s.connectTimeoutMs,
      startedTimeoutMs: s.connectTimeoutMs,
      shedStarted: false,
      phases: { opening: 'connect', started: 'auth' },
      sweepMs: s.sweepMs,
      now,
      log,
      metrics,
    });
    const limiters = [this.http, this.mqtt];
    new Gauge({
      name: 'edgefleet_hub_connections_open',
      help: 'Open connections per listener and stage (opening: nothing proven yet; started: body arriving / authenticating; established).',
      labelNames: ['listener', 'stage'],
      registers,
      collect() {
        for (const l of limiters) for (const stage of ['opening', 'started', 'established'] as const) this.set({ listener: l.listener, stage }, l.count(stage));
      },
    });
    new Gauge({
      name: 'edgefleet_hub_connections_max',
      help: 'Connection cap per listener, from the descriptor limit (edgefleet_hub_fd_limit) less limits.connections.reservedFds.',
      labelNames: ['listener'],
      registers,
      collect() {
        for (const l of limiters) this.set({ listener: l.listener }, l.max);
      },
    });
    const fdLimit = this.fdLimit;
    new Gauge({ name: 'edgefleet_hub_fd_limit', help: 'The descriptor limit the connection caps were planned with.', registers, collect() { this.set(fdLimit); } });
    log.info({ fdLimit, source: this.fdLimitSource, http: plan.http, mqtt: plan.mqtt, mqttPending: plan.mqttPending }, 'connection budget');
  }
}

/** The TCP socket under a TLS one (the limiter tracks accepted sockets; TLS wraps them later). */
export function rawSocket(s: Socket): Socket {
  const parent = s instanceof TLSSocket ? (s as TLSSocket & { _parent?: unknown })._parent : undefined;
  return parent instanceof Socket ? parent : s;
}
