/**
 * HubStore on SQLite (better-sqlite3): WAL, configurable `synchronous`, a short busy timeout,
 * numbered migrations. One connection, owned by the main thread; every write is one short
 * synchronous transaction, so no transaction ever spans an `await`.
 *
 * Failures (SQLITE_BUSY when another process holds the write lock, SQLITE_FULL on a full disk)
 * roll the transaction back and reject with EdgefleetError STORAGE; callers decide what that
 * means (ingest answers `ok: false` and acks nothing).
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { z } from 'zod';
import type { ChainedAuditRow } from '../../shared/audit-chain.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import { ModelRefSchema, StreamPositionSchema, type Hello, type TelemetryRecord } from '../../shared/protocol.ts';
import type { HealthWindow } from '../../shared/updates.ts';
import type { TokenHash } from '../auth/tokens.ts';
import { privateSqlite, securePrivateTree } from '../../shared/private-files.ts';
import { MIGRATIONS, type Migration } from './migrations.ts';
import * as kpis from './sqlite-kpis.ts';
import * as drift from './sqlite-drift.ts';
import * as rollouts from './sqlite-rollouts.ts';
import * as security from './sqlite-security.ts';
import type {
  AccuracyBucket,
  IndexedHealthWindow,
  IndexedInference,
  PresenceChange,
  ApiRole,
  DesiredModel,
  DeviceTransition,
  HistoryEntry,
  HistoryRecord,
  NewRollout,
  RolloutCandidate,
  RolloutDeviceRecord,
  RolloutPatch,
  RolloutRecord,
  RolloutState,
  ApiTokenRecord,
  AuditEntry,
  AuditPrune,
  AuditPruneResult,
  AuditQuery,
  AuditRecord,
  EnrollRefusal,
  EnrollmentTokenRecord,
  DevicePage,
  DeviceQuery,
  DeviceRecord,
  FleetTotals,
  HubStore,
  IngestResult,
  ModelRecord,
  NewModelRelease,
  NewPrincipal,
  PendingUpload,
  PrincipalCredentials,
  PrincipalKind,
  StreamStat,
  TelemetryQuery,
  TelemetryRow,
} from './store.ts';
import type {
  AlertRecord,
  AlertState,
  AlertWindowResult,
  AlertWindowUpdate,
  DeliveryRecord,
  DriftDeviceWindow,
  DriftFindingQuery,
  DriftFindingRow,
  DriftMergeItem,
  DriftReportRow,
  MergeOutcome,
  NewDelivery,
} from './store.ts';

export const HUB_DB_FILE = 'hub.db';

export interface SqliteStoreOptions {
  /** Directory holding hub.db; created if missing. */
  dataDir: string;
  synchronous: 'NORMAL' | 'FULL';
  busyTimeoutMs: number;
  walLimitBytes: number;
  log: Logger;
}

interface PrincipalRow {
  id: string;
  kind: PrincipalKind;
  grp: string;
  labels: string;
  token_kdf: string;
  token_salt: Buffer;
  token_hash: Buffer;
  device_id: string | null;
  created_at: number;
  last_seen: number | null;
  online: number;
  agent_version: string | null;
  boot_epoch: number | null;
  models: string;
  streams: string;
  revoked_at: number | null;
  enrolled_by: string | null;
}
interface ApiTokenRow {
  id: string;
  name: string;
  role: ApiRole;
  token_kdf: string;
  token_salt: Buffer;
  token_hash: Buffer;
  created_at: number;
  created_by: string | null;
  revoked_at: number | null;
}
interface ModelRow {
  name: string;
  version: string;
  sha256: string;
  size: number;
  manifest: string;
  release: string;
  counter: number;
  key_id: string;
  created_at: number;
}
const toModel = (r: ModelRow): ModelRecord => ({
  name: r.name,
  version: r.version,
  sha256: r.sha256,
  size: r.size,
  manifest: r.manifest,
  release: r.release,
  counter: r.counter,
  keyId: r.key_id,
  createdAt: r.created_at,
});

interface DeviceRow extends PrincipalRow {
  stored: number;
  duplicates: number;
  bad_messages: number;
  gaps: number;
}

const ModelsSchema = z.array(ModelRefSchema);
const StreamsSchema = z.array(StreamPositionSchema);
const { LabelsSchema, parseStored } = rollouts;

const DEVICE_SELECT = `
  SELECT p.*,
         COALESCE(c.stored, 0) AS stored,
         COALESCE(c.duplicates, 0) AS duplicates,
         COALESCE(c.bad_messages, 0) AS bad_messages,
         COALESCE((SELECT SUM(s.max_seq - s.min_seq + 1 - s.count) FROM stream_stats s WHERE s.device_id = p.id), 0) AS gaps
  FROM principals p LEFT JOIN device_counters c ON c.device_id = p.id`;

/** `%`, `_` and the backslash itself match literally in a LIKE pattern whose ESCAPE is the backslash. */
const likeLiteral = (s: string): string => s.replace(/[\\%_]/g, (c) => `\\${c}`);

/**
 * The WHERE terms of a device query (without its cursor). Each is served by an index or bounded
 * by the page: group by principals_by_group, labels by principal_labels_by_pair; status, kind
 * and the search are checked on the rows the id-ordered walk visits.
 */
function deviceFilter(q: DeviceQuery): { where: string[]; args: (string | number)[] } {
  const where: string[] = [];
  const args: (string | number)[] = [];
  for (const [column, value] of [
    ['p.grp', q.group],
    ['p.kind', q.kind],
  ] as const) {
    if (value === undefined) continue;
    where.push(`${column} = ?`);
    args.push(value);
  }
  if (q.status === 'revoked') where.push('p.revoked_at IS NOT NULL');
  else if (q.status !== undefined) where.push(`p.revoked_at IS NULL AND p.online = ${q.status === 'online' ? 1 : 0}`);
  for (const [key, value] of q.labels ?? []) {
    where.push('p.id IN (SELECT principal_id FROM principal_labels WHERE key = ? AND value = ?)');
    args.push(key, value);
  }
  if (q.search !== undefined && q.search !== '') {
    const pattern = `%${likeLiteral(q.search)}%`;
    where.push("(p.id LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM principal_labels l WHERE l.principal_id = p.id AND l.value LIKE ? ESCAPE '\\'))");
    args.push(pattern, pattern);
  }
  return { where, args };
}

export class SqliteHubStore implements HubStore {
  readonly name = 'store';
  readonly file: string;
  #db: Database.Database | undefined;
  readonly #opts: SqliteStoreOptions;

  constructor(opts: SqliteStoreOptions) {
    this.#opts = opts;
    this.file = join(opts.dataDir, HUB_DB_FILE);
  }

  start(_signal: AbortSignal): Promise<void> {
    try {
      // State is private (issue #14): the data dir and everything in it 0700/0600, whatever the
      // umask; the database is narrowed before WAL mode creates -wal and -shm with its mode.
      securePrivateTree(this.#opts.dataDir, this.#opts.log);
      const db = new Database(this.file);
      try {
        privateSqlite(this.file);
        db.pragma('journal_mode = WAL');
        db.pragma(`synchronous = ${this.#opts.synchronous}`);
        db.pragma(`busy_timeout = ${Math.trunc(this.#opts.busyTimeoutMs)}`);
        // The WAL is checkpointed automatically (this is the only connection, so checkpoints
        // are never starved by readers); this caps the file size left behind afterwards.
        db.pragma(`journal_size_limit = ${Math.trunc(this.#opts.walLimitBytes)}`);
        db.pragma('foreign_keys = ON');
        migrate(db, MIGRATIONS, this.#opts.log);
      } catch (err) {
        db.close();
        throw err;
      }
      this.#db = db;
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(toEdgefleetError(err, ErrorCode.STORAGE));
    }
  }

  stop(): Promise<void> {
    const db = this.#db;
    this.#db = undefined;
    if (db?.open) {
      try {
        db.pragma('wal_checkpoint(TRUNCATE)');
      } catch (err) {
        this.#opts.log.warn({ err }, 'final WAL checkpoint failed');
      }
      db.close();
    }
    return Promise.resolve();
  }

  get #conn(): Database.Database {
    if (!this.#db) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'store is not open');
    return this.#db;
  }

  /** Runs synchronous SQLite work and turns any failure into a rejected STORAGE error. */
  #run<T>(what: string, fn: (db: Database.Database) => T): Promise<T> {
    try {
      return Promise.resolve(fn(this.#conn));
    } catch (err) {
      if (err instanceof EdgefleetError) return Promise.reject(err);
      const e = toEdgefleetError(err, ErrorCode.STORAGE);
      return Promise.reject(e.code === ErrorCode.STORAGE ? new EdgefleetError(ErrorCode.STORAGE, `${what}: ${e.message}`, { cause: err }) : e);
    }
  }

  createPrincipal(p: NewPrincipal): Promise<void> {
    return this.#run('create principal', (db) => {
      db.transaction(() => {
        if (db.prepare('SELECT 1 FROM principals WHERE id = ?').get(p.id)) {
          throw new EdgefleetError(ErrorCode.CONFLICT, `${p.id} already exists`);
        }
        if (p.kind === 'sensor') {
          const dev = db.prepare('SELECT kind FROM principals WHERE id = ?').get(p.deviceId ?? '') as { kind: string } | undefined;
          if (!dev || dev.kind !== 'device') throw new EdgefleetError(ErrorCode.NOT_FOUND, `device ${p.deviceId ?? '(none)'} does not exist`);
        }
        db.prepare(
          `INSERT INTO principals (id, kind, grp, labels, token_kdf, token_salt, token_hash, device_id, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(p.id, p.kind, p.group, JSON.stringify(p.labels), p.token.kdf, p.token.salt, p.token.hash, p.kind === 'sensor' ? (p.deviceId ?? null) : null, p.createdAt);
      }).immediate();
    });
  }

  getCredentials(id: string): Promise<PrincipalCredentials | undefined> {
    return this.#run('get credentials', (db) => {
      const r = db.prepare('SELECT id, kind, device_id, token_kdf, token_salt, token_hash, revoked_at FROM principals WHERE id = ?').get(id) as PrincipalRow | undefined;
      return r && { id: r.id, kind: r.kind, deviceId: r.device_id, token: { kdf: r.token_kdf, salt: r.token_salt, hash: r.token_hash }, revokedAt: r.revoked_at };
    });
  }

  /**
   * Replaces a principal's token hash when it still is `from` (issue #15: a scrypt hash upgraded
   * to the fast kdf on login); false when the row is gone or its hash changed meanwhile.
   */
  replacePrincipalToken(id: string, from: TokenHash, to: TokenHash): Promise<boolean> {
    return this.#run('replace principal token', (db) => {
      const r = db
        .prepare('UPDATE principals SET token_kdf = ?, token_salt = ?, token_hash = ? WHERE id = ? AND token_kdf = ? AND token_salt = ? AND token_hash = ?')
        .run(to.kdf, to.salt, to.hash, id, from.kdf, from.salt, from.hash);
      return r.changes === 1;
    });
  }

  #toDevice(r: DeviceRow): DeviceRecord {
    const streams = parseStored(StreamsSchema, r.streams, []);
    return {
      id: r.id,
      kind: r.kind,
      revokedAt: r.revoked_at,
      enrolledBy: r.enrolled_by,
      group: r.grp,
      labels: parseStored(LabelsSchema, r.labels, {}),
      deviceId: r.device_id,
      createdAt: r.created_at,
      lastSeen: r.last_seen,
      online: r.online === 1,
      agentVersion: r.agent_version,
      bootEpoch: r.boot_epoch,
      models: parseStored(ModelsSchema, r.models, []),
      streams,
      counters: {
        stored: r.stored,
        duplicates: r.duplicates,
        badMessages: r.bad_messages,
        gaps: r.gaps,
        backlog: streams.reduce((n, s) => n + s.pending, 0),
      },
    };
  }

  getDevice(id: string): Promise<DeviceRecord | undefined> {
    return this.#run('get device', (db) => {
      const r = db.prepare(`${DEVICE_SELECT} WHERE p.id = ?`).get(id) as DeviceRow | undefined;
      return r && this.#toDevice(r);
    });
  }

  listDevices(): Promise<DeviceRecord[]> {
    return this.#run('list devices', (db) => (db.prepare(`${DEVICE_SELECT} ORDER BY p.id`).all() as DeviceRow[]).map((r) => this.#toDevice(r)));
  }

  queryDevices(q: DeviceQuery): Promise<DevicePage> {
    return this.#run('query devices', (db) => {
      const { where, args } = deviceFilter(q);
      const page = [...where, ...(q.after === undefined ? [] : ['p.id > ?'])];
      const rows = db
        .prepare(`${DEVICE_SELECT} ${page.length ? `WHERE ${page.join(' AND ')}` : ''} ORDER BY p.id LIMIT ?`)
        .all(...args, ...(q.after === undefined ? [] : [q.after]), q.limit + 1) as DeviceRow[];
      const { n } = db.prepare(`SELECT COUNT(*) AS n FROM principals p ${where.length ? `WHERE ${where.join(' AND ')}` : ''}`).get(...args) as { n: number };
      return { items: rows.slice(0, q.limit).map((r) => this.#toDevice(r)), total: n, more: rows.length > q.limit };
    });
  }

  streamStats(deviceId: string): Promise<StreamStat[]> {
    return this.#run('stream stats', (db) => {
      const rows = db
        .prepare('SELECT stream, epoch, min_seq, max_seq, count FROM stream_stats WHERE device_id = ? ORDER BY stream, epoch')
        .all(deviceId) as { stream: string; epoch: number; min_seq: number; max_seq: number; count: number }[];
      return rows.map((r) => ({ stream: r.stream, epoch: r.epoch, minSeq: r.min_seq, maxSeq: r.max_seq, count: r.count, gaps: r.max_seq - r.min_seq + 1 - r.count }));
    });
  }

  markAllOffline(at: number): Promise<void> {
    return this.#run('mark offline', (db) => {
      db.transaction(() => {
        // For uptime (presence_log): a device the database still calls online lost the hub when
        // the hub went away; its last contact is the best estimate of when.
        db.prepare(
          "INSERT INTO presence_log (device_id, ts, online) SELECT id, min(COALESCE(last_seen, ?), ?), 0 FROM principals WHERE online = 1 AND kind = 'device'",
        ).run(at, at);
        db.prepare('UPDATE principals SET online = 0 WHERE online = 1').run();
      }).immediate();
    });
  }

  setOnline(id: string, online: boolean, at: number): Promise<void> {
    return this.#run('set online', (db) => {
      db.transaction(() => {
        kpis.logPresence(db, id, online, at);
        db.prepare('UPDATE principals SET online = ?, last_seen = max(COALESCE(last_seen, 0), ?) WHERE id = ?').run(online ? 1 : 0, at, id);
      }).immediate();
    });
  }

  recordHello(hello: Hello, at: number): Promise<void> {
    return this.#run('record hello', (db) => {
      db.prepare(
        `UPDATE principals SET agent_version = ?, boot_epoch = ?, models = ?, streams = ?, hello_at = ?,
                last_seen = max(COALESCE(last_seen, 0), ?), model_state = COALESCE(?, model_state)
         WHERE id = ? AND kind = 'device'`,
      ).run(
        hello.agentVersion,
        hello.bootEpoch,
        JSON.stringify(hello.models),
        JSON.stringify(hello.streams),
        at,
        at,
        hello.modelState ? JSON.stringify(hello.modelState) : null,
        hello.deviceId,
      );
    });
  }

  ingestTelemetry(deviceId: string, records: readonly TelemetryRecord[], receivedAt: number): Promise<IngestResult> {
    return this.#run('ingest telemetry', (db) => {
      const insert = db.prepare(
        'INSERT OR IGNORE INTO telemetry (device_id, stream, epoch, seq, ts, kind, body, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      );
      const stat = db.prepare(
        `INSERT INTO stream_stats (device_id, stream, epoch, min_seq, max_seq, count, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (device_id, stream, epoch) DO UPDATE SET
           min_seq = min(stream_stats.min_seq, excluded.min_seq),
           max_seq = max(stream_stats.max_seq, excluded.max_seq),
           count = stream_stats.count + excluded.count,
           updated_at = excluded.updated_at`,
      );
      const counters = db.prepare(
        `INSERT INTO device_counters (device_id, stored, duplicates, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (device_id) DO UPDATE SET stored = stored + excluded.stored, duplicates = duplicates + excluded.duplicates,
           updated_at = excluded.updated_at`,
      );
      const seen = db.prepare('UPDATE principals SET last_seen = max(COALESCE(last_seen, 0), ?) WHERE id = ?');
      return db
        .transaction((): IngestResult => {
          let stored = 0;
          const freshIndexes: number[] = [];
          const fresh = new Map<string, { stream: string; epoch: number; min: number; max: number; n: number }>();
          for (const [i, r] of records.entries()) {
            if (insert.run(deviceId, r.stream, r.epoch, r.seq, r.ts, r.kind, JSON.stringify(r.body), receivedAt).changes !== 1) continue;
            stored++;
            freshIndexes.push(i);
            const key = `${r.stream}\u0000${r.epoch}`;
            const s = fresh.get(key);
            if (s) {
              s.min = Math.min(s.min, r.seq);
              s.max = Math.max(s.max, r.seq);
              s.n++;
            } else fresh.set(key, { stream: r.stream, epoch: r.epoch, min: r.seq, max: r.seq, n: 1 });
          }
          for (const s of fresh.values()) stat.run(deviceId, s.stream, s.epoch, s.min, s.max, s.n, receivedAt);
          counters.run(deviceId, stored, records.length - stored, receivedAt);
          seen.run(receivedAt, deviceId);
          return { stored, duplicates: records.length - stored, fresh: freshIndexes };
        })
        .immediate();
    });
  }

  countBadMessage(id: string, at: number): Promise<void> {
    return this.#run('count bad message', (db) => {
      db.prepare(
        `INSERT INTO device_counters (device_id, bad_messages, updated_at) VALUES (?, 1, ?)
         ON CONFLICT (device_id) DO UPDATE SET bad_messages = bad_messages + 1, updated_at = excluded.updated_at`,
      ).run(id, at);
    });
  }

  queryTelemetry(q: TelemetryQuery): Promise<TelemetryRow[]> {
    return this.#run('query telemetry', (db) => {
      const where = ['rowid > ?'];
      const args: (string | number)[] = [q.after ?? 0];
      if (q.deviceId !== undefined) {
        where.push('device_id = ?');
        args.push(q.deviceId);
      }
      if (q.stream !== undefined) {
        where.push('stream = ?');
        args.push(q.stream);
      }
      if (q.kind !== undefined) {
        where.push('kind = ?');
        args.push(q.kind);
      }
      args.push(q.limit);
      const rows = db
        .prepare(`SELECT rowid AS cursor, device_id, stream, epoch, seq, ts, kind, body, received_at FROM telemetry WHERE ${where.join(' AND ')} ORDER BY rowid LIMIT ?`)
        .all(...args) as { cursor: number; device_id: string; stream: string; epoch: number; seq: number; ts: number; kind: string; body: string; received_at: number }[];
      return rows.map((r) => ({
        cursor: r.cursor,
        deviceId: r.device_id,
        stream: r.stream,
        epoch: r.epoch,
        seq: r.seq,
        ts: r.ts,
        kind: r.kind,
        body: parseStored(z.record(z.string(), z.unknown()), r.body, {}),
        receivedAt: r.received_at,
      }));
    });
  }

  fleetTotals(): Promise<FleetTotals> {
    return this.#run('fleet totals', (db) => {
      const p = db
        .prepare(
          `SELECT COALESCE(SUM(kind = 'device'), 0) AS devices, COALESCE(SUM(kind = 'device' AND online = 1), 0) AS devices_online,
                  COALESCE(SUM(kind = 'sensor'), 0) AS sensors, COALESCE(SUM(kind = 'sensor' AND online = 1), 0) AS sensors_online
           FROM principals`,
        )
        .get() as { devices: number; devices_online: number; sensors: number; sensors_online: number };
      const c = db.prepare('SELECT COALESCE(SUM(stored), 0) AS stored FROM device_counters').get() as { stored: number };
      return { devices: p.devices, devicesOnline: p.devices_online, sensors: p.sensors, sensorsOnline: p.sensors_online, recordsStored: c.stored };
    });
  }

  createApiToken(t: ApiTokenRecord): Promise<void> {
    return this.#run('create api token', (db) => {
      db.prepare('INSERT INTO api_tokens (id, name, role, token_kdf, token_salt, token_hash, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)').run(
        t.id,
        t.name,
        t.role,
        t.token.kdf,
        t.token.salt,
        t.token.hash,
        t.createdAt,
        t.createdBy ?? null,
      );
    });
  }

  #toApiToken(r: ApiTokenRow): ApiTokenRecord {
    return {
      id: r.id,
      name: r.name,
      role: r.role,
      token: { kdf: r.token_kdf, salt: r.token_salt, hash: r.token_hash },
      createdAt: r.created_at,
      ...(r.created_by === null ? {} : { createdBy: r.created_by }),
      revokedAt: r.revoked_at,
    };
  }

  getApiToken(id: string): Promise<ApiTokenRecord | undefined> {
    return this.#run('get api token', (db) => {
      const r = db.prepare('SELECT * FROM api_tokens WHERE id = ?').get(id) as ApiTokenRow | undefined;
      return r && this.#toApiToken(r);
    });
  }

  findApiTokensByName(name: string): Promise<ApiTokenRecord[]> {
    return this.#run('find api tokens', (db) =>
      (db.prepare('SELECT * FROM api_tokens WHERE name = ? ORDER BY created_at').all(name) as ApiTokenRow[]).map((r) =>
        this.#toApiToken(r),
      ),
    );
  }

  deleteApiToken(id: string): Promise<void> {
    return this.#run('delete api token', (db) => {
      db.prepare('DELETE FROM api_tokens WHERE id = ?').run(id);
    });
  }

  // --- revocation, enrollment, audit (sqlite-security.ts) ------------------------------------

  revokePrincipal(id: string, at: number): Promise<{ id: string; kind: PrincipalKind; revokedAt: number } | undefined> {
    return this.#run('revoke principal', (db) => security.revokePrincipal(db, id, at));
  }

  listApiTokens(): Promise<ApiTokenRecord[]> {
    return this.#run('list api tokens', (db) => (db.prepare('SELECT * FROM api_tokens ORDER BY created_at, id').all() as ApiTokenRow[]).map((r) => this.#toApiToken(r)));
  }

  revokeApiToken(id: string, at: number): Promise<boolean> {
    return this.#run('revoke api token', (db) => security.revokeApiToken(db, id, at));
  }

  createEnrollmentToken(t: EnrollmentTokenRecord): Promise<void> {
    return this.#run('create enrollment token', (db) => security.createEnrollmentToken(db, t));
  }

  getEnrollmentToken(id: string): Promise<EnrollmentTokenRecord | undefined> {
    return this.#run('get enrollment token', (db) => security.getEnrollmentToken(db, id));
  }

  listEnrollmentTokens(): Promise<EnrollmentTokenRecord[]> {
    return this.#run('list enrollment tokens', (db) => security.listEnrollmentTokens(db));
  }

  revokeEnrollmentToken(id: string, at: number): Promise<boolean> {
    return this.#run('revoke enrollment token', (db) => security.revokeEnrollmentToken(db, id, at));
  }

  enrollPrincipal(tokenId: string, p: Omit<NewPrincipal, 'group' | 'kind'>): Promise<{ group: string } | { refused: EnrollRefusal }> {
    return this.#run('enroll principal', (db) => security.enrollPrincipal(db, tokenId, p));
  }

  appendAudit(e: AuditEntry): Promise<void> {
    return this.#run('append audit', (db) => security.appendAudit(db, e));
  }

  queryAudit(q: AuditQuery): Promise<AuditRecord[]> {
    return this.#run('query audit', (db) => security.queryAudit(db, q));
  }

  readAuditChain(afterId: number, limit: number): Promise<ChainedAuditRow[]> {
    return this.#run('read audit chain', (db) => security.readAuditChain(db, afterId, limit));
  }

  getAuditRow(id: number): Promise<ChainedAuditRow | undefined> {
    return this.#run('get audit row', (db) => security.getAuditRow(db, id));
  }

  sealAudit(): Promise<number> {
    return this.#run('seal audit', (db) => db.transaction(() => security.sealAudit(db)).immediate());
  }

  pruneAudit(p: AuditPrune): Promise<AuditPruneResult | undefined> {
    return this.#run('prune audit', (db) => security.pruneAudit(db, p));
  }

  putPendingUpload(p: PendingUpload): Promise<void> {
    return this.#run('put pending upload', (db) => {
      db.transaction(() => {
        if (db.prepare('SELECT 1 FROM models WHERE name = ? AND version = ?').get(p.name, p.version)) {
          throw new EdgefleetError(ErrorCode.CONFLICT, `${p.name}@${p.version} is already released`);
        }
        db.prepare(
          `INSERT INTO model_uploads (name, version, manifest, created_at) VALUES (?, ?, ?, ?)
           ON CONFLICT (name, version) DO UPDATE SET manifest = excluded.manifest, created_at = excluded.created_at`,
        ).run(p.name, p.version, p.manifest, p.createdAt);
      }).immediate();
    });
  }

  getPendingUpload(name: string, version: string): Promise<PendingUpload | undefined> {
    return this.#run('get pending upload', (db) => {
      const r = db.prepare('SELECT name, version, manifest, created_at FROM model_uploads WHERE name = ? AND version = ?').get(name, version) as
        | { name: string; version: string; manifest: string; created_at: number }
        | undefined;
      return r && { name: r.name, version: r.version, manifest: r.manifest, createdAt: r.created_at };
    });
  }

  createModelRelease(m: NewModelRelease, sign: (counter: number) => { release: string; keyId: string }): Promise<ModelRecord> {
    return this.#run('create model release', (db) =>
      db
        .transaction((): ModelRecord => {
          if (db.prepare('SELECT 1 FROM models WHERE name = ? AND version = ?').get(m.name, m.version)) {
            throw new EdgefleetError(ErrorCode.CONFLICT, `${m.name}@${m.version} is already released`);
          }
          const { value: counter } = db.prepare("UPDATE counters SET value = value + 1 WHERE name = 'release' RETURNING value").get() as { value: number };
          const signed = sign(counter);
          db.prepare(
            'INSERT INTO models (name, version, sha256, size, manifest, release, counter, key_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
          ).run(m.name, m.version, m.sha256, m.size, m.manifest, signed.release, counter, signed.keyId, m.createdAt);
          db.prepare('DELETE FROM model_uploads WHERE name = ? AND version = ?').run(m.name, m.version);
          return { ...m, release: signed.release, counter, keyId: signed.keyId };
        })
        .immediate(),
    );
  }

  getModel(name: string, version: string): Promise<ModelRecord | undefined> {
    return this.#run('get model', (db) => {
      const r = db.prepare('SELECT * FROM models WHERE name = ? AND version = ?').get(name, version) as ModelRow | undefined;
      return r && toModel(r);
    });
  }

  listModels(): Promise<ModelRecord[]> {
    return this.#run('list models', (db) => (db.prepare('SELECT * FROM models ORDER BY counter DESC').all() as ModelRow[]).map(toModel));
  }

  hasReleasedArtifact(sha256: string): Promise<boolean> {
    // A release's artifacts: the model, and its test-vector sidecar when the manifest names one.
    return this.#run(
      'find artifact',
      (db) => db.prepare("SELECT 1 FROM models WHERE sha256 = ? OR json_extract(manifest, '$.testVectorsFile.sha256') = ? LIMIT 1").get(sha256, sha256) !== undefined,
    );
  }

  lastReleaseCounter(): Promise<number> {
    return this.#run('release counter', (db) => (db.prepare("SELECT value FROM counters WHERE name = 'release'").get() as { value: number }).value);
  }

  // --- rollouts (sqlite-rollouts.ts) -----------------------------------------------------------

  createRollout(r: NewRollout, devices: readonly { deviceId: string; wave: number }[]): Promise<RolloutRecord> {
    return this.#run('create rollout', (db) => rollouts.createRollout(db, r, devices));
  }
  getRollout(id: string): Promise<RolloutRecord | undefined> {
    return this.#run('get rollout', (db) => rollouts.getRollout(db, id));
  }
  listRollouts(): Promise<RolloutRecord[]> {
    return this.#run('list rollouts', (db) => rollouts.listRollouts(db));
  }
  updateRollout(id: string, from: readonly RolloutState[], patch: RolloutPatch, at: number, wave?: number): Promise<RolloutRecord | undefined> {
    return this.#run('update rollout', (db) => rollouts.updateRollout(db, id, from, patch, at, wave));
  }
  startWave(id: string, from: number, to: number, at: number): Promise<boolean> {
    return this.#run('start wave', (db) => rollouts.startWave(db, id, from, to, at));
  }
  addRolloutDevices(id: string, devices: readonly { deviceId: string; wave: number }[], at: number): Promise<number> {
    return this.#run('add rollout devices', (db) => rollouts.addRolloutDevices(db, id, devices, at));
  }
  rolloutDevices(id: string): Promise<RolloutDeviceRecord[]> {
    return this.#run('rollout devices', (db) => rollouts.rolloutDevices(db, id));
  }
  rolloutsOfDevice(deviceId: string, model: string, version?: string): Promise<RolloutDeviceRecord[]> {
    return this.#run('rollouts of device', (db) => rollouts.rolloutsOfDevice(db, deviceId, model, version));
  }
  transitionDevice(t: DeviceTransition): Promise<boolean> {
    return this.#run('device transition', (db) => rollouts.transitionDevice(db, t));
  }
  markDispatched(rolloutId: string, deviceId: string, at: number, from: { version: string; counter: number } | null, commandId: string): Promise<boolean> {
    return this.#run('mark dispatched', (db) => rollouts.markDispatched(db, rolloutId, deviceId, at, from, commandId));
  }
  rollbackRollout(id: string, from: readonly RolloutState[], at: number, reason: string): Promise<RolloutDeviceRecord[] | undefined> {
    return this.#run('roll back rollout', (db) => rollouts.rollbackRollout(db, id, from, at, reason));
  }
  abortRollout(id: string, from: readonly RolloutState[], at: number, reason: string): Promise<RolloutRecord | undefined> {
    return this.#run('abort rollout', (db) => rollouts.abortRollout(db, id, from, at, reason));
  }
  desiredModels(deviceId: string): Promise<DesiredModel[]> {
    return this.#run('desired models', (db) => rollouts.desiredModels(db, deviceId));
  }
  appendHistory(e: HistoryEntry): Promise<boolean> {
    return this.#run('append history', (db) => rollouts.appendHistory(db, e));
  }
  deviceHistory(deviceId: string): Promise<HistoryRecord[]> {
    return this.#run('device history', (db) => rollouts.deviceHistory(db, deviceId));
  }
  listRolloutCandidates(): Promise<RolloutCandidate[]> {
    return this.#run('rollout candidates', (db) => rollouts.listRolloutCandidates(db));
  }
  getRolloutCandidate(id: string): Promise<RolloutCandidate | undefined> {
    return this.#run('rollout candidate', (db) => rollouts.getRolloutCandidate(db, id));
  }
  healthWindows(deviceIds: readonly string[], model: string, from: number, to: number): Promise<{ deviceId: string; window: HealthWindow }[]> {
    return this.#run('health windows', (db) => rollouts.healthWindows(db, deviceIds, model, from, to));
  }

  // --- drift and alerts (sqlite-drift.ts) ------------------------------------------------------

  mergeDriftSummaries(items: readonly DriftMergeItem[]): Promise<(MergeOutcome | EdgefleetError)[]> {
    return this.#run('merge drift summaries', (db) => drift.mergeDriftSummaries(db, items));
  }
  driftDeviceWindows(model: string, version: string, windowStart: number): Promise<DriftDeviceWindow[]> {
    return this.#run('drift device windows', (db) => drift.driftDeviceWindows(db, model, version, windowStart));
  }
  driftRecordsSince(receivedAt: number, after: number, limit: number): Promise<{ cursor: number; deviceId: string; record: TelemetryRecord }[]> {
    return this.#run('drift records since', (db) => drift.driftRecordsSince(db, receivedAt, after, limit));
  }
  pendingDriftWindows(windowEndBefore: number): Promise<{ model: string; version: string; windowStart: number; windowMs: number }[]> {
    return this.#run('pending drift windows', (db) => drift.pendingDriftWindows(db, windowEndBefore));
  }
  putDriftReport(r: DriftReportRow, findings: readonly DriftFindingRow[]): Promise<boolean> {
    return this.#run('put drift report', (db) => drift.putDriftReport(db, r, findings));
  }
  driftReports(q: { model?: string; version?: string; from?: number; to?: number; limit: number }): Promise<DriftReportRow[]> {
    return this.#run('drift reports', (db) => drift.driftReports(db, q));
  }
  driftFindings(q: DriftFindingQuery): Promise<DriftFindingRow[]> {
    return this.#run('drift findings', (db) => drift.driftFindings(db, q));
  }
  pruneDrift(before: number): Promise<{ summaries: number; windows: number; reports: number; findings: number; alerts: number }> {
    return this.#run('prune drift', (db) => drift.pruneDrift(db, before));
  }
  applyAlertWindow(u: AlertWindowUpdate): Promise<AlertWindowResult> {
    return this.#run('apply alert window', (db) => drift.applyAlertWindow(db, u));
  }
  getAlert(id: string): Promise<AlertRecord | undefined> {
    return this.#run('get alert', (db) => drift.getAlert(db, id));
  }
  listAlerts(q: { state?: AlertState; model?: string; version?: string; limit: number }): Promise<AlertRecord[]> {
    return this.#run('list alerts', (db) => drift.listAlerts(db, q));
  }
  transitionAlert(id: string, from: readonly AlertState[], to: AlertState, at: number, by: string): Promise<AlertRecord | undefined> {
    return this.#run('alert transition', (db) => drift.transitionAlert(db, id, from, to, at, by));
  }
  addDeliveries(d: readonly NewDelivery[]): Promise<void> {
    return this.#run('add deliveries', (db) => drift.addDeliveries(db, d));
  }
  dueDeliveries(at: number, limit: number): Promise<DeliveryRecord[]> {
    return this.#run('due deliveries', (db) => drift.dueDeliveries(db, at, limit));
  }
  recordDeliveryAttempt(id: number, attempt: { at: number; ok: boolean; status?: number; error?: string; nextAt?: number; giveUp?: boolean }): Promise<void> {
    return this.#run('record delivery attempt', (db) => drift.recordDeliveryAttempt(db, id, attempt));
  }
  deliveries(alertId: string): Promise<DeliveryRecord[]> {
    return this.#run('deliveries', (db) => drift.deliveries(db, alertId));
  }

  // --- feedback and KPIs (sqlite-kpis.ts) ------------------------------------------------------

  indexInferences(rows: readonly IndexedInference[]): Promise<void> {
    return this.#run('index inferences', (db) => kpis.indexInferences(db, rows));
  }
  indexHealthWindows(rows: readonly IndexedHealthWindow[]): Promise<void> {
    return this.#run('index health windows', (db) => kpis.indexHealthWindows(db, rows));
  }
  findInferences(keys: readonly { id: string; deviceId?: string }[]): Promise<IndexedInference[]> {
    return this.#run('find inferences', (db) => kpis.findInferences(db, keys));
  }
  recordFeedback(items: readonly { deviceId: string; id: string; truth: string; at: number }[]): Promise<number> {
    return this.#run('record feedback', (db) => kpis.recordFeedback(db, items));
  }
  accuracyBuckets(model: string, version: string, from: number, to: number, windowMs: number): Promise<AccuracyBucket[]> {
    return this.#run('accuracy buckets', (db) => kpis.accuracyBuckets(db, model, version, from, to, windowMs));
  }
  confusion(model: string, version: string, from: number, to: number): Promise<{ truth: string; label: string; n: number }[]> {
    return this.#run('confusion', (db) => kpis.confusion(db, model, version, from, to));
  }
  predictedLabels(model: string, version: string, from: number, to: number): Promise<{ label: string; n: number }[]> {
    return this.#run('predicted labels', (db) => kpis.predictedLabels(db, model, version, from, to));
  }
  taskPredictions(model: string, version: string, from: number, to: number): Promise<{ predictions: number; alarms: number }> {
    return this.#run('task predictions', (db) => kpis.taskPredictions(db, model, version, from, to));
  }
  taskFeedback(model: string, version: string, from: number, to: number): Promise<{ label: string; pred: string | null; truth: string }[]> {
    return this.#run('task feedback', (db) => kpis.taskFeedback(db, model, version, from, to));
  }
  kpiHealthWindows(model: string, version: string, from: number, to: number): Promise<IndexedHealthWindow[]> {
    return this.#run('kpi health windows', (db) => kpis.kpiHealthWindows(db, model, version, from, to));
  }
  modelVersionsSeen(from: number, to: number, model?: string): Promise<{ model: string; version: string }[]> {
    return this.#run('model versions seen', (db) => kpis.modelVersionsSeen(db, from, to, model));
  }
  presenceChanges(deviceIds: readonly string[], from: number, to: number): Promise<PresenceChange[]> {
    return this.#run('presence changes', (db) => kpis.presenceChanges(db, deviceIds, from, to));
  }
  pruneKpiData(before: number): Promise<{ inferences: number; healthWindows: number; presence: number }> {
    return this.#run('prune kpi data', (db) => kpis.pruneKpiData(db, before));
  }
}

/** Applies the migrations not yet recorded; refuses a database written by a newer hub. */
export function migrate(db: Database.Database, migrations: readonly Migration[], log: Logger): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)');
  const current = (db.prepare('SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations').get() as { v: number }).v;
  const latest = migrations.reduce((m, x) => Math.max(m, x.version), 0);
  if (current > latest) {
    throw new EdgefleetError(ErrorCode.STORAGE, `database schema version ${current} is newer than this hub understands (${latest})`);
  }
  for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
    if (m.version <= current) continue;
    db.transaction(() => {
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(m.version, m.name, Date.now());
    }).immediate();
    log.info({ version: m.version, migration: m.name }, 'applied migration');
  }
}
