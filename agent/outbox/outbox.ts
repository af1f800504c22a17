/**
 * The agent's outbox: every record the agent must report to the hub is committed here first
 * (ARCHITECTURE §3, "SQLite is the truth, MQTT is transport"), and deleted only when the hub
 * acked it. Owns the SQLite file, its migrations, the boot epoch, group commit, the pending cap
 * and WAL checkpoints.
 *
 * Identity of a record: (stream, epoch, seq). The epoch is bumped and committed durably at every
 * start before anything else is written, so a record from this boot can never collide with one
 * from an earlier boot; `seq` starts at 0 in each epoch, per stream.
 *
 * Durability (`synchronous`):
 * - `NORMAL` (default): WAL commits are not fsynced one by one. A process crash or kill -9
 *   loses nothing committed; a power loss may lose the last commits (they were never acked,
 *   but they may already have reached the hub — harmless, see the epoch note below). One fsync
 *   per checkpoint instead of one per commit, which is what SD cards and slow flash want.
 * - `FULL`: an fsync per commit; survives power loss, costs latency and flash wear.
 * Either way the epoch bump is committed with `synchronous=FULL`: if the bump were lost to a
 * power cut, the next boot would reuse the epoch and its seqs, and the hub would de-duplicate
 * new records as "already stored" — silent data loss.
 *
 * The connection belongs to the thread that started the outbox; never hand it to a worker.
 */
import Database from 'better-sqlite3';
import type { Registry } from 'prom-client';
import { Counter, Gauge, Histogram } from 'prom-client';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { privateSqlite } from '../../shared/private-files.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { z } from 'zod';
import { NameSchema, type SeqRange, type StreamPositionSchema, type TelemetryRecord } from '../../shared/protocol.ts';

export type StreamPosition = z.infer<typeof StreamPositionSchema>;

export type OutboxSynchronous = 'NORMAL' | 'FULL';

export interface OutboxOptions {
  /** SQLite file; created 0600 if missing (with its -wal and -shm). */
  path: string;
  /** See the module header. Default NORMAL. */
  synchronous?: OutboxSynchronous;
  /** Most records kept unacked; beyond it the oldest are dropped (counted). Default 1,000,000. */
  maxPending?: number;
  /** Longest a queued record waits for its group commit. Default 5 ms. */
  flushMs?: number;
  /** A group commit happens at once when this many records are queued. Default 500. */
  flushMax?: number;
  /** Largest serialized body accepted; a record must fit in one MQTT batch. Default 256 KiB. */
  maxBodyBytes?: number;
  /** Cap on the database file (SQLITE_FULL beyond it, like a full disk). Default: none. */
  maxDbBytes?: number;
  /** Period of the `wal_checkpoint(TRUNCATE)`. Default 60 s. */
  checkpointMs?: number;
  /** The WAL file is truncated to at most this after a checkpoint. Default 64 MiB. */
  walLimitBytes?: number;
  /** How long SQLite waits on a lock before SQLITE_BUSY. Default 1000 ms. */
  busyTimeoutMs?: number;
  log: Logger;
  registry?: Registry;
}

/** A committed record as read back for sending, with its rowid (the sender's cursor). */
export type OutboxRecord = TelemetryRecord & { rowid: number };

export interface AppendResult {
  epoch: number;
  seq: number;
}

/** One record waiting for its group commit; `seq` is filled in by the commit. */
interface Queued {
  readonly stream: string;
  readonly kind: string;
  readonly body: string;
  readonly ts: number;
  seq: number;
}

/**
 * The records of one group commit and ONE promise shared by them (hot path, issue #5): a
 * per-record `new Promise` with its resolve/reject closures cost about as much as the insert.
 * `append` derives each record's own promise from `done` with a `.then` that reads the record's
 * seq, so a record still resolves only after ITS commit, with its own identity. `done` is
 * created lazily: a group made only of `appendNow` records never allocates it (and so never
 * leaves a rejected promise without a handler).
 */
class CommitGroup {
  readonly items: Queued[] = [];
  #done: Promise<void> | undefined;
  #resolve: (() => void) | undefined;
  #reject: ((e: EdgefleetError) => void) | undefined;

  get done(): Promise<void> {
    this.#done ??= new Promise<void>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    return this.#done;
  }

  resolve(): void {
    this.#resolve?.();
  }

  reject(e: EdgefleetError): void {
    this.#reject?.(e);
  }
}

/** Names already checked against NameSchema; bounded so hostile callers cannot grow it. */
const KNOWN_NAMES_MAX = 1024;

interface OutboxMetrics {
  committed: Counter;
  dropped: Counter;
  deleted: Counter;
  storageErrors: Counter;
  pending: Gauge;
  flush: Histogram;
}

const MIGRATIONS: readonly string[] = [
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
   INSERT INTO meta (key, value) VALUES ('epoch', 0);
   -- AUTOINCREMENT: rowids never go back, even when every row was deleted, so a sender's
   -- "after rowid" cursor can never skip a new record.
   CREATE TABLE records (
     rowid INTEGER PRIMARY KEY AUTOINCREMENT,
     stream TEXT NOT NULL,
     epoch INTEGER NOT NULL,
     seq INTEGER NOT NULL,
     ts INTEGER NOT NULL,
     kind TEXT NOT NULL,
     body TEXT NOT NULL
   ) STRICT;
   CREATE UNIQUE INDEX records_identity ON records (stream, epoch, seq);`,
];

const CLOSED = 'outbox is not running';

export class Outbox implements Component {
  readonly name = 'outbox';
  readonly #opts: Required<Omit<OutboxOptions, 'registry' | 'maxDbBytes'>> & { maxDbBytes: number | undefined };
  readonly #log: Logger;
  readonly #throttle = new LogThrottle(5000);
  readonly #metrics: OutboxMetrics | undefined;
  #db: Database.Database | undefined;
  #epoch = -1;
  /** Next seq per stream in the current epoch; only advanced after a commit succeeded. */
  readonly #nextSeq = new Map<string, number>();
  #pending = 0;
  #group = new CommitGroup();
  /** Stream and kind names that passed NameSchema (see #checkName). */
  readonly #knownNames = new Set<string>();
  /** The group-commit transaction, built once per connection (better-sqlite3 wraps per call). */
  #commit: ((items: readonly Queued[]) => number) | undefined;
  #flushTimer: NodeJS.Timeout | undefined;
  #checkpointTimer: NodeJS.Timeout | undefined;
  readonly #listeners = new Set<() => void>();
  #stats = { committed: 0, dropped: 0, deleted: 0, storageErrors: 0 };
  #stmts: Statements | undefined;

  constructor(opts: OutboxOptions) {
    this.#opts = {
      path: opts.path,
      synchronous: opts.synchronous ?? 'NORMAL',
      maxPending: opts.maxPending ?? 1_000_000,
      flushMs: opts.flushMs ?? 5,
      flushMax: opts.flushMax ?? 500,
      maxBodyBytes: opts.maxBodyBytes ?? 256 * 1024,
      maxDbBytes: opts.maxDbBytes,
      checkpointMs: opts.checkpointMs ?? 60_000,
      walLimitBytes: opts.walLimitBytes ?? 64 * 1024 * 1024,
      busyTimeoutMs: opts.busyTimeoutMs ?? 1000,
      log: opts.log,
    };
    if (!Number.isInteger(this.#opts.maxPending) || this.#opts.maxPending < 1) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'outbox maxPending must be a positive integer');
    }
    if (!Number.isInteger(this.#opts.flushMax) || this.#opts.flushMax < 1) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'outbox flushMax must be a positive integer');
    }
    this.#log = opts.log;
    this.#metrics = opts.registry ? createMetrics(opts.registry, () => this.#pending) : undefined;
  }

  /** Boot epoch of this run (valid after start). */
  get epoch(): number {
    return this.#epoch;
  }

  get running(): boolean {
    return this.#db !== undefined;
  }

  /** Counters since start, for tests and the health endpoint. */
  stats(): { committed: number; dropped: number; deleted: number; storageErrors: number; pending: number; queued: number } {
    return { ...this.#stats, pending: this.#pending, queued: this.#group.items.length };
  }

  start(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new EdgefleetError(ErrorCode.ABORTED, 'outbox start aborted'));
    if (this.#db) return Promise.reject(new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'outbox already started'));
    let db: Database.Database | undefined;
    try {
      db = new Database(this.#opts.path, { timeout: this.#opts.busyTimeoutMs });
      // 0600 before WAL mode creates -wal and -shm, which SQLite gives the database's mode (issue #14).
      privateSqlite(this.#opts.path);
      db.pragma('journal_mode = WAL');
      db.pragma(`busy_timeout = ${Math.round(this.#opts.busyTimeoutMs)}`);
      db.pragma(`journal_size_limit = ${Math.round(this.#opts.walLimitBytes)}`);
      db.pragma('foreign_keys = ON');
      migrate(db);
      // The epoch bump must survive power loss whatever the configured mode (module header).
      db.pragma('synchronous = FULL');
      const epoch = db.transaction(() => {
        const row = db!.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'epoch'").get();
        const next = (row?.value ?? 0) + 1;
        db!.prepare("UPDATE meta SET value = ? WHERE key = 'epoch'").run(next);
        return next;
      })();
      db.pragma(`synchronous = ${this.#opts.synchronous}`);
      this.#db = db;
      this.#epoch = epoch;
      this.#applyMaxDbBytes();
      this.#stmts = {
        insert: db.prepare('INSERT INTO records (stream, epoch, seq, ts, kind, body) VALUES (?, ?, ?, ?, ?, ?)'),
        dropOldest: db.prepare('DELETE FROM records WHERE rowid IN (SELECT rowid FROM records ORDER BY rowid LIMIT ?)'),
        read: db.prepare('SELECT rowid, stream, epoch, seq, ts, kind, body FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?'),
        ackRange: db.prepare('DELETE FROM records WHERE stream = ? AND epoch = ? AND seq BETWEEN ? AND ?'),
        count: db.prepare('SELECT COUNT(*) AS n FROM records'),
        perStream: db.prepare('SELECT stream, COUNT(*) AS n FROM records GROUP BY stream ORDER BY stream'),
      };
      this.#commit = db.transaction((items: readonly Queued[]) => this.#insertGroup(items));
      this.#pending = this.#stmts.count.get()?.n ?? 0;
      this.#nextSeq.clear();
      this.#stats = { committed: 0, dropped: 0, deleted: 0, storageErrors: 0 };
    } catch (err) {
      try {
        db?.close();
      } catch {
        // already failing; the open error is the one to report
      }
      this.#db = undefined;
      this.#stmts = undefined;
      this.#commit = undefined;
      return Promise.reject(toEdgefleetError(err, ErrorCode.STORAGE));
    }
    this.#checkpointTimer = setInterval(() => this.checkpoint(), this.#opts.checkpointMs);
    this.#checkpointTimer.unref();
    this.#log.info({ path: this.#opts.path, epoch: this.#epoch, pending: this.#pending, synchronous: this.#opts.synchronous }, 'outbox open');
    return Promise.resolve();
  }

  /**
   * Queues a record for the next group commit. Resolves with its identity once it is committed
   * (only then does it count as kept); rejects with STORAGE if the commit failed, BAD_INPUT if
   * the record cannot be stored at all.
   */
  append(stream: string, kind: string, body: Record<string, unknown>, ts: number = Date.now()): Promise<AppendResult> {
    let item: Queued;
    try {
      item = this.#prepare(stream, kind, body, ts);
    } catch (err) {
      return Promise.reject(toEdgefleetError(err));
    }
    const group = this.#group;
    const epoch = this.#epoch;
    const result = group.done.then(() => ({ epoch, seq: item.seq }));
    this.#enqueue(item);
    return result;
  }

  /**
   * Synchronous variant: commits everything queued so far plus this record, in order, and
   * returns its identity; throws EdgefleetError (STORAGE, BAD_INPUT) instead of rejecting.
   */
  appendNow(stream: string, kind: string, body: Record<string, unknown>, ts: number = Date.now()): AppendResult {
    const item = this.#prepare(stream, kind, body, ts);
    this.#group.items.push(item);
    const error = this.#flush();
    if (error) throw error;
    return { epoch: this.#epoch, seq: item.seq };
  }

  /** Commits every queued record in one transaction. Called by the timer; public for tests. */
  flush(): void {
    this.#flush();
  }

  #enqueue(item: Queued): void {
    const n = this.#group.items.push(item);
    if (n >= this.#opts.flushMax) this.#flush();
    else if (!this.#flushTimer) this.#flushTimer = setTimeout(() => this.#flush(), this.#opts.flushMs);
  }

  /** The group commit; returns the error its records were rejected with, if it failed. */
  #flush(): EdgefleetError | undefined {
    if (this.#flushTimer) {
      clearTimeout(this.#flushTimer);
      this.#flushTimer = undefined;
    }
    const group = this.#group;
    const batch = group.items;
    if (batch.length === 0) return undefined;
    this.#group = new CommitGroup();
    const commit = this.#commit;
    if (!this.#db || !commit) {
      const e = new EdgefleetError(ErrorCode.ILLEGAL_STATE, CLOSED);
      group.reject(e);
      return e;
    }
    const t0 = performance.now();
    let dropped: number;
    try {
      dropped = commit(batch);
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.STORAGE);
      const storage = e.code === ErrorCode.STORAGE ? e : new EdgefleetError(ErrorCode.STORAGE, e.message, { cause: err });
      this.#stats.storageErrors++;
      this.#metrics?.storageErrors.inc();
      this.#throttle.run('flush', (suppressed) =>
        this.#log.error({ err: storage, records: batch.length, suppressed }, 'outbox commit failed; records rejected'),
      );
      group.reject(storage);
      return storage;
    }
    // Only now, after the commit, do the seqs count as used (a rolled-back group burns none).
    // Within a stream the seqs grow through the group, so the end of each run of one stream
    // carries that stream's highest seq so far.
    let stream = batch[0]!.stream;
    let last = -1;
    for (const q of batch) {
      if (q.stream !== stream) {
        this.#nextSeq.set(stream, last + 1);
        stream = q.stream;
      }
      last = q.seq;
    }
    this.#nextSeq.set(stream, last + 1);
    this.#pending += batch.length - dropped;
    this.#stats.committed += batch.length;
    this.#metrics?.committed.inc(batch.length);
    this.#metrics?.flush.observe((performance.now() - t0) / 1000);
    if (dropped > 0) {
      this.#stats.dropped += dropped;
      this.#metrics?.dropped.inc(dropped);
      this.#throttle.run('drop', (suppressed) =>
        this.#log.warn({ dropped, maxPending: this.#opts.maxPending, suppressed }, 'outbox full: oldest records dropped'),
      );
    }
    group.resolve();
    for (const l of this.#listeners) {
      try {
        l();
      } catch (err) {
        this.#log.error({ err }, 'outbox append listener threw');
      }
    }
    return undefined;
  }

  /**
   * Body of the group-commit transaction: assigns seqs and inserts; returns how many of the
   * oldest records the pending cap dropped. Seqs are published to #nextSeq only after the
   * commit (in #flush), so a rolled-back group leaves no hole in the sequence.
   */
  #insertGroup(items: readonly Queued[]): number {
    const stmts = this.#stmts!;
    const epoch = this.#epoch;
    const next = new Map<string, number>();
    let stream = '';
    let seq = 0;
    for (const q of items) {
      if (q.stream !== stream) {
        if (stream !== '') next.set(stream, seq);
        stream = q.stream;
        seq = next.get(stream) ?? this.#nextSeq.get(stream) ?? 0;
      }
      q.seq = seq++;
      stmts.insert.run(stream, epoch, q.seq, q.ts, q.kind, q.body);
    }
    const over = this.#pending + items.length - this.#opts.maxPending;
    return over > 0 ? stmts.dropOldest.run(over).changes : 0;
  }

  /** Oldest-first committed records with rowid > afterRowId. */
  readBatch(afterRowId: number, limit: number): OutboxRecord[] {
    const stmts = this.#requireStmts();
    const rows = stmts.read.all(afterRowId, Math.max(1, Math.floor(limit)));
    return rows.map((r) => ({ rowid: r.rowid, stream: r.stream, epoch: r.epoch, seq: r.seq, ts: r.ts, kind: r.kind, body: parseBody(r.body) }));
  }

  /** Deletes exactly the records in `ranges` (one transaction); returns how many were deleted. */
  ack(ranges: readonly SeqRange[]): number {
    const db = this.#db;
    const stmts = this.#requireStmts();
    if (ranges.length === 0) return 0;
    let deleted = 0;
    try {
      db!.transaction(() => {
        for (const r of ranges) {
          if (r.to < r.from) continue;
          deleted += stmts.ackRange.run(r.stream, r.epoch, r.from, r.to).changes;
        }
      })();
    } catch (err) {
      this.#stats.storageErrors++;
      this.#metrics?.storageErrors.inc();
      throw toEdgefleetError(err, ErrorCode.STORAGE);
    }
    this.#pending = Math.max(0, this.#pending - deleted);
    this.#stats.deleted += deleted;
    this.#metrics?.deleted.inc(deleted);
    return deleted;
  }

  /** Per-stream position for hello: current epoch, next seq, records still pending. */
  positions(): StreamPosition[] {
    const stmts = this.#requireStmts();
    const pending = new Map<string, number>();
    for (const r of stmts.perStream.all()) pending.set(r.stream, r.n);
    const streams = new Set<string>([...this.#nextSeq.keys(), ...pending.keys()]);
    return [...streams].sort().map((stream) => ({
      stream,
      epoch: this.#epoch,
      nextSeq: this.#nextSeq.get(stream) ?? 0,
      pending: pending.get(stream) ?? 0,
    }));
  }

  /** Committed records not yet acked (kept in memory: cheap for health checks). */
  pendingCount(): number {
    return this.#pending;
  }

  /** Called after every group commit that added records; returns an unsubscribe function. */
  onAppend(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Changes the database size cap at run time (undefined = none). */
  setMaxDbBytes(bytes: number | undefined): void {
    this.#opts.maxDbBytes = bytes;
    if (this.#db) this.#applyMaxDbBytes();
  }

  /**
   * Truncating checkpoint: moves the WAL into the database and truncates it, so the WAL never
   * grows without bound. SQLite's own auto-checkpoint (PASSIVE, every 1000 pages) keeps it small
   * between runs; failures are logged and retried on the next period.
   */
  checkpoint(): void {
    if (!this.#db) return;
    try {
      this.#db.pragma('wal_checkpoint(TRUNCATE)');
    } catch (err) {
      this.#stats.storageErrors++;
      this.#metrics?.storageErrors.inc();
      this.#throttle.run('checkpoint', (suppressed) => this.#log.warn({ err, suppressed }, 'outbox checkpoint failed'));
    }
  }

  stop(): Promise<void> {
    if (this.#checkpointTimer) clearInterval(this.#checkpointTimer);
    this.#checkpointTimer = undefined;
    if (!this.#db) return Promise.resolve();
    this.flush();
    this.checkpoint();
    try {
      this.#db.close();
    } finally {
      this.#db = undefined;
      this.#stmts = undefined;
      this.#commit = undefined;
      this.#listeners.clear();
    }
    this.#log.info({ pending: this.#pending }, 'outbox closed');
    return Promise.resolve();
  }

  #prepare(stream: string, kind: string, body: Record<string, unknown>, ts: number): Queued {
    if (!this.#db) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, CLOSED);
    // Anything the hub's schema would refuse must be refused here: a poison record would block
    // its stream forever (the hub never acks it, the agent never deletes it).
    if (!this.#checkName(stream)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `bad stream name ${JSON.stringify(stream)}`);
    if (!this.#checkName(kind)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `bad record kind ${JSON.stringify(kind)}`);
    if (!Number.isSafeInteger(ts) || ts < 0) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'record ts must be a non-negative integer (ms)');
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, 'record body must be a JSON object');
    }
    let text: string;
    try {
      text = JSON.stringify(body);
    } catch (err) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `record body is not serializable: ${(err as Error).message}`, { cause: err });
    }
    // A UTF-16 code unit is at most 3 UTF-8 bytes: only bodies near the cap need the exact count.
    if (text.length * 3 > this.#opts.maxBodyBytes && Buffer.byteLength(text) > this.#opts.maxBodyBytes) {
      throw new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `record body exceeds ${this.#opts.maxBodyBytes} bytes`);
    }
    return { stream, kind, body: text, ts, seq: -1 };
  }

  /** NameSchema, once per distinct name: the streams and kinds in use are a handful of constants. */
  #checkName(name: string): boolean {
    if (this.#knownNames.has(name)) return true;
    if (typeof name !== 'string' || !NameSchema.safeParse(name).success) return false;
    if (this.#knownNames.size < KNOWN_NAMES_MAX) this.#knownNames.add(name);
    return true;
  }

  #requireStmts(): Statements {
    if (!this.#stmts) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, CLOSED);
    return this.#stmts;
  }

  #applyMaxDbBytes(): void {
    const db = this.#db!;
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    // SQLite cannot shrink max_page_count below the current size; it silently keeps the larger.
    const pages = this.#opts.maxDbBytes === undefined ? 0xfffffffe : Math.max(1, Math.floor(this.#opts.maxDbBytes / pageSize));
    db.pragma(`max_page_count = ${pages}`);
  }
}

interface Statements {
  insert: Database.Statement<[string, number, number, number, string, string]>;
  dropOldest: Database.Statement<[number]>;
  read: Database.Statement<[number, number], RawRow>;
  ackRange: Database.Statement<[string, number, number, number]>;
  count: Database.Statement<[], { n: number }>;
  perStream: Database.Statement<[], { stream: string; n: number }>;
}

interface RawRow {
  rowid: number;
  stream: string;
  epoch: number;
  seq: number;
  ts: number;
  kind: string;
  body: string;
}

function parseBody(text: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through: a damaged row must not block its stream; it is sent as a marker instead
  }
  return { unreadable: true };
}

function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > MIGRATIONS.length) {
    throw new EdgefleetError(ErrorCode.STORAGE, `outbox schema version ${current} is newer than this agent (${MIGRATIONS.length})`);
  }
  for (let v = current; v < MIGRATIONS.length; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}

function createMetrics(registry: Registry, pending: () => number): OutboxMetrics {
  return {
    committed: new Counter({ name: 'edgefleet_agent_outbox_committed_total', help: 'Records committed to the outbox.', registers: [registry] }),
    dropped: new Counter({
      name: 'edgefleet_agent_outbox_dropped_total',
      help: 'Oldest unacked records dropped because the outbox reached maxPending.',
      registers: [registry],
    }),
    deleted: new Counter({ name: 'edgefleet_agent_outbox_acked_total', help: 'Records deleted after the hub acked them.', registers: [registry] }),
    storageErrors: new Counter({
      name: 'edgefleet_agent_outbox_storage_errors_total',
      help: 'SQLite failures (full disk, busy, I/O) in commits, acks and checkpoints.',
      registers: [registry],
    }),
    pending: new Gauge({
      name: 'edgefleet_agent_outbox_pending',
      help: 'Records committed and not yet acked by the hub.',
      registers: [registry],
      collect() {
        this.set(pending());
      },
    }),
    flush: new Histogram({
      name: 'edgefleet_agent_outbox_commit_seconds',
      help: 'Duration of one group commit.',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5],
      registers: [registry],
    }),
  };
}
