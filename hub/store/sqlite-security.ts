/**
 * The security half of the SQLite HubStore (tables of migration 6): principal and operator
 * token revocation, enrollment tokens, and the operator audit log (hash-chained and pruned behind
 * checkpoints since migration 8, shared/audit-chain.ts). Same connection
 * as sqlite-store.ts; every function is one synchronous statement or transaction, so nothing
 * here spans an `await`.
 *
 * Enrollment is checked twice on purpose: the caller verifies the token's secret (scrypt, async,
 * outside any transaction), then `enrollPrincipal` re-reads the row inside the transaction that
 * creates the device and counts the use. Two devices racing for the last use of a token cannot
 * both get in: the second transaction sees `uses = max_uses`.
 */
import type Database from 'better-sqlite3';
import { z } from 'zod';
import { AUDIT_GENESIS, AUDIT_PRUNE_ACTION, AuditChainVerifier, auditRowHash, parseCheckpoint, type ChainedAuditRow } from '../../shared/audit-chain.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { parseStored } from './sqlite-rollouts.ts';
import type {
  AuditEntry,
  AuditQuery,
  AuditPrune,
  AuditPruneResult,
  AuditRecord,
  EnrollRefusal,
  EnrollmentTokenRecord,
  NewPrincipal,
  PrincipalKind,
} from './store.ts';

type Db = Database.Database;

interface EnrollmentRow {
  id: string;
  grp: string;
  labels: string;
  allow_device_labels: string;
  token_kdf: string;
  token_salt: Buffer;
  token_hash: Buffer;
  max_uses: number;
  uses: number;
  expires_at: number;
  created_at: number;
  created_by: string;
  revoked_at: number | null;
}

/** An audit_log row as SQLite returns it. */
export interface AuditRow {
  id: number;
  ts: number;
  actor: string;
  actor_id: string | null;
  role: string | null;
  action: string;
  target: string | null;
  outcome: AuditEntry['outcome'];
  status: number | null;
  remote: string | null;
  details: string;
  prev_hash: string | null;
  hash: string | null;
}

const LabelsSchema = z.record(z.string(), z.string());
const LabelKeysSchema = z.array(z.string());
const DetailsSchema = z.record(z.string(), z.unknown());

const toEnrollment = (r: EnrollmentRow): EnrollmentTokenRecord => ({
  id: r.id,
  group: r.grp,
  labels: parseStored(LabelsSchema, r.labels, {}),
  allowDeviceLabels: parseStored(LabelKeysSchema, r.allow_device_labels, []),
  token: { kdf: r.token_kdf, salt: r.token_salt, hash: r.token_hash },
  maxUses: r.max_uses,
  uses: r.uses,
  expiresAt: r.expires_at,
  createdAt: r.created_at,
  createdBy: r.created_by,
  revokedAt: r.revoked_at,
});

export function revokePrincipal(db: Db, id: string, at: number): { id: string; kind: PrincipalKind; revokedAt: number } | undefined {
  return db
    .transaction(() => {
      db.prepare('UPDATE principals SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id);
      const r = db.prepare('SELECT id, kind, revoked_at FROM principals WHERE id = ?').get(id) as { id: string; kind: PrincipalKind; revoked_at: number } | undefined;
      return r && { id: r.id, kind: r.kind, revokedAt: r.revoked_at };
    })
    .immediate();
}

export function revokeApiToken(db: Db, id: string, at: number): boolean {
  db.prepare('UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id);
  return db.prepare('SELECT 1 FROM api_tokens WHERE id = ?').get(id) !== undefined;
}

export function createEnrollmentToken(db: Db, t: EnrollmentTokenRecord): void {
  db.prepare(
    `INSERT INTO enrollment_tokens (id, grp, labels, allow_device_labels, token_kdf, token_salt, token_hash, max_uses, uses, expires_at, created_at, created_by, revoked_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  ).run(t.id, t.group, JSON.stringify(t.labels), JSON.stringify(t.allowDeviceLabels), t.token.kdf, t.token.salt, t.token.hash, t.maxUses, t.uses, t.expiresAt, t.createdAt, t.createdBy, t.revokedAt);
}

export function getEnrollmentToken(db: Db, id: string): EnrollmentTokenRecord | undefined {
  const r = db.prepare('SELECT * FROM enrollment_tokens WHERE id = ?').get(id) as EnrollmentRow | undefined;
  return r && toEnrollment(r);
}

export function listEnrollmentTokens(db: Db): EnrollmentTokenRecord[] {
  return (db.prepare('SELECT * FROM enrollment_tokens ORDER BY created_at DESC, id').all() as EnrollmentRow[]).map(toEnrollment);
}

export function revokeEnrollmentToken(db: Db, id: string, at: number): boolean {
  db.prepare('UPDATE enrollment_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(at, id);
  return db.prepare('SELECT 1 FROM enrollment_tokens WHERE id = ?').get(id) !== undefined;
}

/** Why the token cannot be used at `at`, or undefined when it can. */
export function enrollmentRefusal(t: Pick<EnrollmentTokenRecord, 'uses' | 'maxUses' | 'expiresAt' | 'revokedAt'> | undefined, at: number): EnrollRefusal | undefined {
  if (!t) return 'unknown';
  if (t.revokedAt !== null) return 'revoked';
  if (t.expiresAt <= at) return 'expired';
  if (t.uses >= t.maxUses) return 'used_up';
  return undefined;
}

/**
 * The keys of `labels` an enrolling device may not set (issue #14): a device may add only keys
 * the token allows, and may restate a token label only with the token's value (token labels win).
 */
export function refusedDeviceLabels(t: Pick<EnrollmentTokenRecord, 'labels' | 'allowDeviceLabels'>, labels: Record<string, string>): string[] {
  return Object.entries(labels)
    .filter(([k, v]) => (Object.hasOwn(t.labels, k) ? t.labels[k] !== v : !t.allowDeviceLabels.includes(k)))
    .map(([k]) => k)
    .sort();
}

export function enrollPrincipal(db: Db, tokenId: string, p: Omit<NewPrincipal, 'group' | 'kind'>): { group: string } | { refused: EnrollRefusal } {
  return db
    .transaction((): { group: string } | { refused: EnrollRefusal } => {
      const t = getEnrollmentToken(db, tokenId);
      const refused = enrollmentRefusal(t, p.createdAt);
      if (refused || !t) return { refused: refused ?? 'unknown' };
      if (db.prepare('SELECT 1 FROM principals WHERE id = ?').get(p.id)) throw new EdgefleetError(ErrorCode.CONFLICT, `${p.id} already exists`);
      // The caller refuses labels the token does not allow; dropped here too, and token labels win.
      const refusedKeys = new Set(refusedDeviceLabels(t, p.labels));
      const labels = { ...Object.fromEntries(Object.entries(p.labels).filter(([k]) => !refusedKeys.has(k))), ...t.labels };
      db.prepare(
        `INSERT INTO principals (id, kind, grp, labels, token_kdf, token_salt, token_hash, device_id, created_at, enrolled_by)
         VALUES (?, 'device', ?, ?, ?, ?, ?, NULL, ?, ?)`,
      ).run(p.id, t.group, JSON.stringify(labels), p.token.kdf, p.token.salt, p.token.hash, p.createdAt, t.id);
      db.prepare('UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?').run(t.id);
      return { group: t.group };
    })
    .immediate();
}

/** Canonical chain fields of a stored row. */
export const toChained = (r: AuditRow): ChainedAuditRow => ({
  id: r.id,
  ts: r.ts,
  actor: r.actor,
  actorId: r.actor_id,
  role: r.role,
  action: r.action,
  target: r.target,
  outcome: r.outcome,
  status: r.status,
  remote: r.remote,
  details: r.details,
  prevHash: r.prev_hash,
  hash: r.hash,
});

/**
 * Hashes rows written before the chain existed (migration 8), in id order, once: the update
 * guard lets a row's NULL hash be filled and nothing else. Returns how many were sealed.
 */
export function sealAudit(db: Db): number {
  const unsealed = db.prepare('SELECT * FROM audit_log WHERE hash IS NULL ORDER BY id').all() as AuditRow[];
  if (!unsealed.length) return 0;
  const seal = db.prepare('UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?');
  const before = db.prepare('SELECT hash FROM audit_log WHERE id < ? ORDER BY id DESC LIMIT 1');
  let prev: string | undefined;
  for (const r of unsealed) {
    prev ??= (before.get(r.id) as { hash: string | null } | undefined)?.hash ?? AUDIT_GENESIS;
    const hash = auditRowHash(toChained(r), prev);
    seal.run(prev, hash, r.id);
    prev = hash;
  }
  return unsealed.length;
}

/** Appends one chained row after the current tail (sealing older unchained rows first); returns it. */
function appendChained(db: Db, e: AuditEntry): ChainedAuditRow {
  const tail = db.prepare('SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1').get() as { id: number; hash: string | null } | undefined;
  if (tail && tail.hash === null) sealAudit(db);
  const prevHash = tail ? (db.prepare('SELECT hash FROM audit_log WHERE id = ?').get(tail.id) as { hash: string }).hash : AUDIT_GENESIS;
  // AUTOINCREMENT never reuses an id, even after the prune empties the table's head; the hash
  // needs the id before the insert, so take it from the same counter.
  const seq = (db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").get() as { seq: number } | undefined)?.seq ?? 0;
  const row = {
    id: Math.max(seq, tail?.id ?? 0) + 1,
    ts: e.ts,
    actor: e.actor,
    actorId: e.actorId,
    role: e.role,
    action: e.action,
    target: e.target,
    outcome: e.outcome,
    status: e.status,
    remote: e.remote,
    details: JSON.stringify(e.details),
  };
  const hash = auditRowHash(row, prevHash);
  db.prepare(
    `INSERT INTO audit_log (id, ts, actor, actor_id, role, action, target, outcome, status, remote, details, prev_hash, hash)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  ).run(row.id, row.ts, row.actor, row.actorId, row.role, row.action, row.target, row.outcome, row.status, row.remote, row.details, prevHash, hash);
  return { ...row, prevHash, hash };
}

export function appendAudit(db: Db, e: AuditEntry): void {
  db.transaction(() => void appendChained(db, e)).immediate();
}

/** Up to `limit` rows with ids above `afterId`, oldest first, as stored (for verify and export). */
export function readAuditChain(db: Db, afterId: number, limit: number): ChainedAuditRow[] {
  return (db.prepare('SELECT * FROM audit_log WHERE id > ? ORDER BY id LIMIT ?').all(afterId, limit) as AuditRow[]).map(toChained);
}

export function getAuditRow(db: Db, id: number): ChainedAuditRow | undefined {
  const r = db.prepare('SELECT * FROM audit_log WHERE id = ?').get(id) as AuditRow | undefined;
  return r && toChained(r);
}

/**
 * Retention (issue #14): deletes the oldest rows older than `olderThan` or beyond the newest
 * `maxRows`, at most `batch` per call. In one transaction: the rows to prune are checked first
 * (a broken chain is evidence: CONFLICT, nothing deleted), then a checkpoint row recording the
 * last pruned id and its hash is appended, the delete guard's cut moved to that id, and the rows
 * deleted. Undefined when nothing is due.
 */
export function pruneAudit(db: Db, p: AuditPrune): AuditPruneResult | undefined {
  return db
    .transaction((): AuditPruneResult | undefined => {
      sealAudit(db);
      const span = db.prepare('SELECT MIN(id) AS first, MAX(id) AS last, COUNT(*) AS n FROM audit_log').get() as { first: number | null; last: number | null; n: number };
      if (span.first === null || span.last === null) return undefined;
      const byAge = (db.prepare('SELECT MAX(id) AS id FROM audit_log WHERE ts < ?').get(p.olderThan) as { id: number | null }).id ?? 0;
      // Past maxRows, down to maxRows including the checkpoint about to be written; at maxRows
      // nothing is due, so a full log does not churn a row and a checkpoint every run.
      const byCount = span.n > p.maxRows ? span.last + 1 - p.maxRows : 0;
      const through = Math.min(Math.max(byAge, byCount), span.first + p.batch - 1, span.last);
      if (through < span.first) return undefined;
      const verifier = new AuditChainVerifier();
      for (const r of readAuditChain(db, span.first - 1, through - span.first + 2)) verifier.push(r);
      const latest = db.prepare(`SELECT * FROM audit_log WHERE action = ? AND id > ? ORDER BY id DESC LIMIT 1`).get(AUDIT_PRUNE_ACTION, through + 1) as AuditRow | undefined;
      const cp = latest && parseCheckpoint(latest.details);
      if (cp) verifier.vouch(cp);
      const v = verifier.result();
      if (v.broken) throw new EdgefleetError(ErrorCode.CONFLICT, `audit chain broken at row ${v.broken.id} (${v.broken.reason}): not pruning`, { details: { ...v.broken } });
      const last = getAuditRow(db, through);
      if (!last?.hash) throw new EdgefleetError(ErrorCode.CONFLICT, `audit row ${through} is missing: not pruning`);
      const rows = through - span.first + 1;
      const checkpoint = appendChained(db, {
        ts: p.at,
        actor: 'hub',
        actorId: null,
        role: null,
        action: AUDIT_PRUNE_ACTION,
        target: null,
        outcome: 'ok',
        status: null,
        remote: null,
        details: { through, throughHash: last.hash, rows, olderThan: p.olderThan, maxRows: p.maxRows },
      });
      db.prepare('UPDATE audit_prune_cut SET through = ? WHERE one = 1').run(through);
      const deleted = db.prepare('DELETE FROM audit_log WHERE id <= ?').run(through).changes;
      return { pruned: deleted, through, checkpointId: checkpoint.id };
    })
    .immediate();
}

export function queryAudit(db: Db, q: AuditQuery): AuditRecord[] {
  const where: string[] = [];
  const args: (string | number)[] = [];
  const add = (sql: string, v: string | number | undefined): void => {
    if (v === undefined) return;
    where.push(sql);
    args.push(v);
  };
  add('ts >= ?', q.since);
  add('ts < ?', q.until);
  add('actor = ?', q.actor);
  add('action = ?', q.action);
  add('outcome = ?', q.outcome);
  add('id < ?', q.before);
  const sql = `SELECT * FROM audit_log ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
  return (db.prepare(sql).all(...args, q.limit) as AuditRow[]).map((r) => {
    const { prevHash: _p, hash: _h, ...c } = toChained(r);
    return { ...c, outcome: r.outcome, details: parseStored(DetailsSchema, r.details, {}) };
  });
}
