/**
 * The audit log's hash chain (issue #14): the canonical encoding each row's hash covers, the
 * JSON-lines export format, and the check over rows in id order. Shared because the hub checks
 * its own table (GET /v1/audit/verify) and the CLI checks an exported file offline with the same
 * code (`edgefleet audit verify --file`).
 *
 * hash = sha256(JSON.stringify([AUDIT_CHAIN_FORMAT, id, ts, actor, actorId, role, action, target,
 * outcome, status, remote, details, prevHash])), hex, where `details` is the stored JSON text
 * (the hash covers those exact bytes) and prevHash is the previous row's hash, or 64 zeros for
 * the first row ever written. The retention prune deletes the oldest rows only after appending a
 * checkpoint row (action audit.prune) whose details record the last pruned id and its hash, so
 * the first kept row still links to something the chain vouches for.
 *
 * What this proves: a row edited, deleted or inserted after the fact without recomputing every
 * later hash. Someone who can write the database can also recompute the whole chain; that is
 * caught only against a hash kept elsewhere (an earlier export's head: `verify --against`).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';

export const AUDIT_CHAIN_FORMAT = 'edgefleet-audit-v1';
export const AUDIT_GENESIS = '0'.repeat(64);
export const AUDIT_PRUNE_ACTION = 'audit.prune';

const Hash = z.string().regex(/^[0-9a-f]{64}$/);

/** One audit row as stored, the shape of each line of an export. */
export const ChainedAuditRowSchema = z.strictObject({
  id: z.number().int().positive(),
  ts: z.number().int(),
  actor: z.string(),
  actorId: z.string().nullable(),
  role: z.string().nullable(),
  action: z.string(),
  target: z.string().nullable(),
  outcome: z.string(),
  status: z.number().int().nullable(),
  remote: z.string().nullable(),
  /** The details column exactly as stored (JSON text). */
  details: z.string(),
  /** Null only for rows written before the chain existed and not sealed yet. */
  prevHash: z.string().nullable(),
  hash: z.string().nullable(),
});
export type ChainedAuditRow = z.infer<typeof ChainedAuditRowSchema>;

/** The first line of an export. */
export const AuditExportHeaderSchema = z.strictObject({
  format: z.literal(AUDIT_CHAIN_FORMAT),
  exportedAt: z.string(),
  rows: z.number().int().nonnegative(),
  head: z.strictObject({ id: z.number().int(), hash: z.string() }).nullable(),
});
export type AuditExportHeader = z.infer<typeof AuditExportHeaderSchema>;

/** What a prune checkpoint's details hold. */
export const AuditCheckpointSchema = z.object({ through: z.number().int().nonnegative(), throughHash: Hash, rows: z.number().int().nonnegative() });
export type AuditCheckpoint = z.infer<typeof AuditCheckpointSchema>;

export function auditRowHash(r: Omit<ChainedAuditRow, 'prevHash' | 'hash'>, prevHash: string): string {
  const canonical = JSON.stringify([AUDIT_CHAIN_FORMAT, r.id, r.ts, r.actor, r.actorId, r.role, r.action, r.target, r.outcome, r.status, r.remote, r.details, prevHash]);
  return createHash('sha256').update(canonical).digest('hex');
}

export type AuditBreakReason = 'hash_mismatch' | 'prev_hash_mismatch' | 'gap' | 'unsealed' | 'bad_checkpoint' | 'head_mismatch';

export interface AuditVerifyResult {
  ok: boolean;
  /** Rows checked. */
  rows: number;
  firstId: number | null;
  /** The newest row: keep its hash elsewhere to catch a rewrite of the whole chain later. */
  head: { id: number; hash: string } | null;
  /** What vouches for the first row: the start of the log, or a prune checkpoint. */
  start: 'genesis' | 'checkpoint' | null;
  /** The first problem, in id order. */
  broken?: { id: number; reason: AuditBreakReason; message: string };
}

/**
 * Checks rows fed in id order, one at a time (so a large log is checked page by page in
 * constant memory). Stops looking at the first problem.
 */
export class AuditChainVerifier {
  #rows = 0;
  #first: ChainedAuditRow | undefined;
  #last: ChainedAuditRow | undefined;
  #checkpoint: AuditCheckpoint | undefined;
  #broken: AuditVerifyResult['broken'];

  get broken(): boolean {
    return this.#broken !== undefined;
  }

  /** A checkpoint found outside the rows pushed (the prune checks only the rows it deletes). */
  vouch(cp: AuditCheckpoint): void {
    if (!this.#checkpoint || cp.through >= this.#checkpoint.through) this.#checkpoint = cp;
  }

  push(r: ChainedAuditRow): void {
    if (this.#broken) return;
    this.#rows++;
    const fail = (reason: AuditBreakReason, message: string): void => void (this.#broken = { id: r.id, reason, message });
    const prev = this.#last;
    this.#first ??= r;
    this.#last = r;
    if (r.hash === null || r.prevHash === null) return fail('unsealed', `row ${r.id} has no hash`);
    if (prev && r.id !== prev.id + 1) {
      const missing = r.id - prev.id - 1;
      return fail('gap', missing > 0 ? `rows ${prev.id + 1}..${r.id - 1} are missing (deleted)` : `row ${r.id} is out of order after row ${prev.id}`);
    }
    if (prev && r.prevHash !== prev.hash) return fail('prev_hash_mismatch', `row ${r.id} does not link to row ${prev.id} (row ${prev.id} was replaced, or rows were inserted)`);
    if (auditRowHash(r, r.prevHash) !== r.hash) return fail('hash_mismatch', `row ${r.id} does not match its hash (edited after it was written)`);
    if (r.action === AUDIT_PRUNE_ACTION) {
      const cp = parseCheckpoint(r.details);
      if (!cp) return fail('bad_checkpoint', `prune checkpoint row ${r.id} has no valid through/throughHash`);
      this.vouch(cp);
    }
  }

  /** The verdict over every row pushed, including whether the first row is vouched for. */
  result(): AuditVerifyResult {
    const first = this.#first;
    const last = this.#last;
    const base = {
      rows: this.#rows,
      firstId: first?.id ?? null,
      head: last?.hash ? { id: last.id, hash: last.hash } : null,
    };
    if (this.#broken) return { ...base, ok: false, start: null, broken: this.#broken };
    if (!first) return { ...base, ok: true, start: null };
    const cp = this.#checkpoint;
    const brokenAt = (reason: AuditBreakReason, message: string): AuditVerifyResult => ({ ...base, ok: false, start: null, broken: { id: first.id, reason, message } });
    if (!cp) {
      if (first.id === 1 && first.prevHash === AUDIT_GENESIS) return { ...base, ok: true, start: 'genesis' };
      if (first.id > 1) return brokenAt('gap', `rows 1..${first.id - 1} are missing and no prune checkpoint accounts for them`);
      return brokenAt('prev_hash_mismatch', 'row 1 does not start the chain');
    }
    if (cp.through < first.id - 1) return brokenAt('gap', `rows ${cp.through + 1}..${first.id - 1} are missing (the last prune went through row ${cp.through})`);
    if (cp.through > first.id - 1) return brokenAt('bad_checkpoint', `the last prune checkpoint says rows through ${cp.through} were pruned, but row ${first.id} is still here`);
    if (first.prevHash !== cp.throughHash) return brokenAt('prev_hash_mismatch', `row ${first.id} does not link to the pruned row ${cp.through} the checkpoint vouches for`);
    return { ...base, ok: true, start: 'checkpoint' };
  }
}

export function parseCheckpoint(details: string): AuditCheckpoint | undefined {
  try {
    const r = AuditCheckpointSchema.safeParse(JSON.parse(details));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Checks that an earlier export's head is still part of the log: the live row with that id
 * (when not pruned since) must carry the same hash. Catches a chain rewritten end to end.
 */
export function checkAnchor(anchor: { id: number; hash: string }, live: ChainedAuditRow | undefined, liveFirstId: number | null): AuditVerifyResult['broken'] {
  if (live) return live.hash === anchor.hash ? undefined : { id: anchor.id, reason: 'head_mismatch', message: `row ${anchor.id} differs from the earlier export (the chain was rewritten)` };
  if (liveFirstId !== null && anchor.id < liveFirstId) return undefined;
  return { id: anchor.id, reason: 'gap', message: `row ${anchor.id} from the earlier export is missing from the log` };
}
