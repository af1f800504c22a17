/**
 * The security half of the SQLite HubStore (tables of migration 6): principal and operator
 * token revocation, enrollment tokens, and the append-only operator audit log. Same connection
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
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { parseStored } from './sqlite-rollouts.ts';
import type {
  AuditEntry,
  AuditQuery,
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

interface AuditRow {
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
}

const LabelsSchema = z.record(z.string(), z.string());
const DetailsSchema = z.record(z.string(), z.unknown());

const toEnrollment = (r: EnrollmentRow): EnrollmentTokenRecord => ({
  id: r.id,
  group: r.grp,
  labels: parseStored(LabelsSchema, r.labels, {}),
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
    `INSERT INTO enrollment_tokens (id, grp, labels, token_kdf, token_salt, token_hash, max_uses, uses, expires_at, created_at, created_by, revoked_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  ).run(t.id, t.group, JSON.stringify(t.labels), t.token.kdf, t.token.salt, t.token.hash, t.maxUses, t.uses, t.expiresAt, t.createdAt, t.createdBy, t.revokedAt);
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

export function enrollPrincipal(db: Db, tokenId: string, p: Omit<NewPrincipal, 'group' | 'kind'>): { group: string } | { refused: EnrollRefusal } {
  return db
    .transaction((): { group: string } | { refused: EnrollRefusal } => {
      const t = getEnrollmentToken(db, tokenId);
      const refused = enrollmentRefusal(t, p.createdAt);
      if (refused || !t) return { refused: refused ?? 'unknown' };
      if (db.prepare('SELECT 1 FROM principals WHERE id = ?').get(p.id)) throw new EdgefleetError(ErrorCode.CONFLICT, `${p.id} already exists`);
      const labels = { ...t.labels, ...p.labels };
      db.prepare(
        `INSERT INTO principals (id, kind, grp, labels, token_kdf, token_salt, token_hash, device_id, created_at, enrolled_by)
         VALUES (?, 'device', ?, ?, ?, ?, ?, NULL, ?, ?)`,
      ).run(p.id, t.group, JSON.stringify(labels), p.token.kdf, p.token.salt, p.token.hash, p.createdAt, t.id);
      db.prepare('UPDATE enrollment_tokens SET uses = uses + 1 WHERE id = ?').run(t.id);
      return { group: t.group };
    })
    .immediate();
}

export function appendAudit(db: Db, e: AuditEntry): void {
  db.prepare(
    `INSERT INTO audit_log (ts, actor, actor_id, role, action, target, outcome, status, remote, details)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  ).run(e.ts, e.actor, e.actorId, e.role, e.action, e.target, e.outcome, e.status, e.remote, JSON.stringify(e.details));
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
  return (db.prepare(sql).all(...args, q.limit) as AuditRow[]).map((r) => ({
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
    details: parseStored(DetailsSchema, r.details, {}),
  }));
}
