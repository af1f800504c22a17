/**
 * The operator audit log: every operator action (allowed, denied or failed), every enrollment
 * and every revocation, appended to the hub store's hash chain (`audit_log`, shared/audit-chain.ts)
 * and counted. Writing the entry never fails the request it describes: a store error is logged and
 * counted (`edgefleet_hub_audit_write_failures_total`), because refusing to pause a bad
 * rollout since the audit table is locked would be the worse outcome. Entries never hold
 * secrets: callers pass ids and names, and `details` is filtered for secret-looking keys.
 *
 * Nothing anonymous costs a row each (issue #14): refusals of requests without valid credentials
 * (401, or 429 from the failed-login budget, no operator token) are counted and folded into one
 * row per address per window (`audit.anonymousWindowMs`), at most `audit.anonymousMaxAddresses`
 * addresses a window (the rest share one row). Retention: a periodic prune deletes rows older
 * than `audit.maxAgeDays` or beyond the newest `audit.maxRows`, behind a checkpoint row that keeps
 * the chain verifiable; details are capped at `audit.maxDetailsBytes`, so the table has a size
 * bound.
 */
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { AUDIT_CHAIN_FORMAT, AuditChainVerifier, checkAnchor, type AuditExportHeader, type AuditVerifyResult, type ChainedAuditRow } from '../../shared/audit-chain.ts';
import { toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import type { AuditEntry, AuditQuery, AuditRecord, HubStore } from '../store/store.ts';

const SECRET_KEY = /token|secret|password|key/i;
/** Rows read per store call when verifying or exporting: short synchronous reads, constant memory. */
const PAGE_ROWS = 1000;
/** Action of the aggregated row of anonymous refusals. */
export const ANONYMOUS_REFUSED_ACTION = 'auth.refused';
/** The shared bucket once a window has seen anonymousMaxAddresses addresses. */
const OTHER_ADDRESSES = '*';

/** Config `audit` (issue #14): retention, its prune, and the folding of anonymous refusals. */
export const AuditConfigSchema = z.object({
  /** Rows older than this are pruned. */
  maxAgeDays: z.number().min(1).max(36_500).default(365),
  /** At most this many rows are kept (the newest); with maxDetailsBytes this bounds the table's size. */
  maxRows: z.number().int().min(1000).max(100_000_000).default(1_000_000),
  pruneIntervalMs: z.number().int().min(1000).max(86_400_000).default(3_600_000),
  /** Rows deleted per transaction; the prune goes on batch by batch, yielding in between. */
  pruneBatch: z.number().int().min(100).max(1_000_000).default(10_000),
  /** Anonymous refusals are folded into one row per address per window this long. */
  anonymousWindowMs: z.number().int().min(100).max(3_600_000).default(60_000),
  /** Distinct addresses with a row of their own per window; the rest share one row ("*"). */
  anonymousMaxAddresses: z.number().int().min(1).max(100_000).default(100),
  /** Larger details are replaced by a note of their size and keys. */
  maxDetailsBytes: z.number().int().min(1024).max(1024 * 1024).default(4096),
});
export type AuditConfig = z.infer<typeof AuditConfigSchema>;

/** Drops values under secret-looking keys (recursively), so a careless caller cannot log one. */
export function scrubDetails(details: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(details)) {
    if (SECRET_KEY.test(k) && k !== 'tokenId' && k !== 'keyId') out[k] = '[redacted]';
    else if (v && typeof v === 'object' && !Array.isArray(v)) out[k] = scrubDetails(v as Record<string, unknown>);
    else out[k] = v;
  }
  return out;
}

/** A refusal of a request that carried no valid credentials: aggregated, never a row of its own. */
export function isAnonymousRefusal(e: AuditEntry): boolean {
  return e.actorId === null && e.outcome === 'denied' && (e.status === 401 || e.status === 429);
}

interface Bucket {
  count: number;
  from: number;
  to: number;
  actions: Record<string, number>;
  statuses: Record<string, number>;
}

type AuditStore = Pick<HubStore, 'appendAudit' | 'queryAudit' | 'readAuditChain' | 'getAuditRow' | 'sealAudit' | 'pruneAudit'>;

export class AuditLog implements Component {
  readonly name = 'audit';
  readonly #config: AuditConfig;
  readonly #now: () => number;
  readonly #entries: Counter<'action' | 'outcome'>;
  readonly #failures: Counter;
  readonly #anonymous: Counter<'action'>;
  readonly #overflow: Counter;
  readonly #pruned: Counter;
  readonly #pruneFailures: Counter;
  readonly #truncated: Counter;
  #buckets = new Map<string, Bucket>();
  #flushTimer: NodeJS.Timeout | undefined;
  #pruneTimer: NodeJS.Timeout | undefined;
  /** Prune, verify and export run one at a time: a prune between two pages would look like a gap. */
  #exclusive: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: AuditStore,
    private readonly log: Logger,
    registry: Registry,
    opts: { config?: Partial<AuditConfig>; now?: () => number } = {},
  ) {
    this.#config = AuditConfigSchema.parse(opts.config ?? {});
    this.#now = opts.now ?? Date.now;
    this.#entries = new Counter({
      name: 'edgefleet_hub_audit_events_total',
      help: 'Operator actions written to the audit log, by action and outcome (ok, denied, failed).',
      labelNames: ['action', 'outcome'],
      registers: [registry],
    });
    this.#failures = new Counter({
      name: 'edgefleet_hub_audit_write_failures_total',
      help: 'Audit entries that could not be written to the store (the action itself went ahead).',
      registers: [registry],
    });
    this.#anonymous = new Counter({
      name: 'edgefleet_hub_audit_anonymous_refusals_total',
      help: 'Refused requests without valid credentials, by action: counted and folded into one audit row per address per window, never a row each.',
      labelNames: ['action'],
      registers: [registry],
    });
    this.#overflow = new Counter({
      name: 'edgefleet_hub_audit_anonymous_overflow_total',
      help: 'Anonymous refusals from addresses past audit.anonymousMaxAddresses in their window: folded into the shared "*" row.',
      registers: [registry],
    });
    this.#pruned = new Counter({
      name: 'edgefleet_hub_audit_pruned_rows_total',
      help: 'Audit rows deleted by the retention prune (audit.maxAgeDays, audit.maxRows), each time behind a checkpoint row.',
      registers: [registry],
    });
    this.#pruneFailures = new Counter({
      name: 'edgefleet_hub_audit_prune_failures_total',
      help: 'Retention prunes that failed or were refused (a broken chain is kept as evidence, not pruned).',
      registers: [registry],
    });
    this.#truncated = new Counter({
      name: 'edgefleet_hub_audit_details_truncated_total',
      help: 'Audit entries whose details exceeded audit.maxDetailsBytes and were replaced by a truncation note.',
      registers: [registry],
    });
  }

  async start(_signal: AbortSignal): Promise<void> {
    const sealed = await this.store.sealAudit();
    if (sealed) this.log.info({ sealed }, 'audit rows from before the hash chain sealed');
    this.#flushTimer = setInterval(() => void this.flush(), this.#config.anonymousWindowMs);
    this.#pruneTimer = setInterval(() => void this.prune(), this.#config.pruneIntervalMs);
    this.#flushTimer.unref();
    this.#pruneTimer.unref();
    void this.prune();
  }

  async stop(): Promise<void> {
    clearInterval(this.#flushTimer);
    clearInterval(this.#pruneTimer);
    this.#flushTimer = this.#pruneTimer = undefined;
    await this.flush();
    await this.#exclusive;
  }

  async record(e: AuditEntry): Promise<void> {
    this.#entries.inc({ action: e.action, outcome: e.outcome });
    if (isAnonymousRefusal(e)) {
      this.#fold(e);
      return;
    }
    const entry = { ...e, details: this.#bounded(scrubDetails(e.details)) };
    this.log.info({ audit: { actor: entry.actor, action: entry.action, target: entry.target, outcome: entry.outcome, status: entry.status } }, 'audit');
    await this.#append(entry);
  }

  query(q: AuditQuery): Promise<AuditRecord[]> {
    return this.store.queryAudit(q);
  }

  /** Writes one row per address for the anonymous refusals folded since the last flush. */
  async flush(): Promise<void> {
    const buckets = this.#buckets;
    if (!buckets.size) return;
    this.#buckets = new Map();
    for (const [remote, b] of buckets) {
      this.log.info({ audit: { action: ANONYMOUS_REFUSED_ACTION, remote, count: b.count } }, 'audit: anonymous refusals');
      await this.#append({
        ts: b.to,
        actor: 'anonymous',
        actorId: null,
        role: null,
        action: ANONYMOUS_REFUSED_ACTION,
        target: null,
        outcome: 'denied',
        status: null,
        remote: remote === OTHER_ADDRESSES ? null : remote,
        details: { count: b.count, from: b.from, to: b.to, actions: b.actions, statuses: b.statuses, ...(remote === OTHER_ADDRESSES ? { otherAddresses: true } : {}) },
      });
    }
  }

  /** Deletes what retention says is due, batch by batch; resolves with the rows deleted. */
  prune(): Promise<number> {
    return this.#serially(async () => {
      let total = 0;
      try {
        for (;;) {
          const now = this.#now();
          const r = await this.store.pruneAudit({ olderThan: now - this.#config.maxAgeDays * 86_400_000, maxRows: this.#config.maxRows, batch: this.#config.pruneBatch, at: now });
          if (!r) break;
          total += r.pruned;
          this.#pruned.inc(r.pruned);
          this.log.info({ pruned: r.pruned, through: r.through, checkpoint: r.checkpointId }, 'audit log pruned');
          if (r.pruned < this.#config.pruneBatch) break;
          await new Promise((resolve) => setImmediate(resolve));
        }
      } catch (err) {
        this.#pruneFailures.inc();
        this.log.error({ err: toEdgefleetError(err) }, 'audit prune failed; nothing more deleted');
      }
      return total;
    });
  }

  /**
   * Checks the whole chain page by page; with `anchor` (an earlier export's head) also that the
   * row it names still carries the same hash.
   */
  verify(anchor?: { id: number; hash: string }): Promise<AuditVerifyResult> {
    return this.#serially(async () => {
      const v = new AuditChainVerifier();
      for await (const r of this.#rows()) {
        v.push(r);
        if (v.broken) break;
      }
      const result = v.result();
      if (!anchor || result.broken) return result;
      const broken = checkAnchor(anchor, await this.store.getAuditRow(anchor.id), result.firstId);
      return broken ? { ...result, ok: false, broken } : result;
    });
  }

  /**
   * The whole log as JSON lines: a header (format, row count, head), then every row as stored,
   * hashes included, so it verifies offline (`edgefleet audit verify --file`).
   */
  async export(write: (line: string) => Promise<void>): Promise<void> {
    await this.#serially(async () => {
      const rows: ChainedAuditRow[] = [];
      // The header needs the count and head; one pass to count keeps memory constant.
      let n = 0;
      let head: AuditExportHeader['head'] = null;
      for await (const r of this.#rows()) {
        n++;
        head = r.hash ? { id: r.id, hash: r.hash } : head;
      }
      const header: AuditExportHeader = { format: AUDIT_CHAIN_FORMAT, exportedAt: new Date(this.#now()).toISOString(), rows: n, head };
      await write(`${JSON.stringify(header)}\n`);
      const last = head?.id ?? 0;
      for await (const r of this.#rows()) {
        if (r.id > last) break;
        rows.push(r);
        if (rows.length >= PAGE_ROWS) await write(rows.splice(0).map((x) => `${JSON.stringify(x)}\n`).join(''));
      }
      if (rows.length) await write(rows.map((x) => `${JSON.stringify(x)}\n`).join(''));
    });
  }

  async *#rows(): AsyncGenerator<ChainedAuditRow> {
    let after = 0;
    for (;;) {
      const page = await this.store.readAuditChain(after, PAGE_ROWS);
      yield* page;
      const last = page[page.length - 1];
      if (!last || page.length < PAGE_ROWS) return;
      after = last.id;
    }
  }

  #serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#exclusive.then(fn, fn);
    this.#exclusive = run.catch(() => undefined);
    return run;
  }

  #fold(e: AuditEntry): void {
    this.#anonymous.inc({ action: e.action });
    this.log.debug({ audit: { actor: e.actor, action: e.action, outcome: e.outcome, status: e.status, remote: e.remote } }, 'audit: anonymous refusal (aggregated)');
    let key = e.remote ?? OTHER_ADDRESSES;
    if (!this.#buckets.has(key) && this.#buckets.size >= this.#config.anonymousMaxAddresses) {
      this.#overflow.inc();
      key = OTHER_ADDRESSES;
    }
    let b = this.#buckets.get(key);
    if (!b) this.#buckets.set(key, (b = { count: 0, from: e.ts, to: e.ts, actions: {}, statuses: {} }));
    b.count++;
    b.from = Math.min(b.from, e.ts);
    b.to = Math.max(b.to, e.ts);
    // Action names come from the route table and statuses are 401/429: both small sets.
    b.actions[e.action] = (b.actions[e.action] ?? 0) + 1;
    const status = String(e.status);
    b.statuses[status] = (b.statuses[status] ?? 0) + 1;
  }

  #bounded(details: Record<string, unknown>): Record<string, unknown> {
    const bytes = Buffer.byteLength(JSON.stringify(details));
    if (bytes <= this.#config.maxDetailsBytes) return details;
    this.#truncated.inc();
    return { truncated: true, bytes, keys: Object.keys(details).slice(0, 32).map((k) => k.slice(0, 64)) };
  }

  async #append(entry: AuditEntry): Promise<void> {
    try {
      await this.store.appendAudit(entry);
    } catch (err) {
      this.#failures.inc();
      this.log.error({ err: toEdgefleetError(err), action: entry.action }, 'cannot write audit entry');
    }
  }
}
