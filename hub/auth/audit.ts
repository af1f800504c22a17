/**
 * The operator audit log: every operator action (allowed, denied or failed), every enrollment
 * and every revocation, appended to the hub store (`audit_log`, append-only by trigger) and
 * counted. Writing the entry never fails the request it describes: a store error is logged and
 * counted (`edgefleet_hub_audit_write_failures_total`), because refusing to pause a bad
 * rollout since the audit table is locked would be the worse outcome. Entries never hold
 * secrets: callers pass ids and names, and `details` is filtered for secret-looking keys.
 */
import { Counter, type Registry } from 'prom-client';
import { toEdgefleetError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import type { AuditEntry, AuditQuery, AuditRecord, HubStore } from '../store/store.ts';

const SECRET_KEY = /token|secret|password|key/i;

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

export class AuditLog {
  readonly #entries: Counter<'action' | 'outcome'>;
  readonly #failures: Counter;

  constructor(
    private readonly store: Pick<HubStore, 'appendAudit' | 'queryAudit'>,
    private readonly log: Logger,
    registry: Registry,
  ) {
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
  }

  async record(e: AuditEntry): Promise<void> {
    const entry = { ...e, details: scrubDetails(e.details) };
    this.#entries.inc({ action: e.action, outcome: e.outcome });
    this.log.info({ audit: { actor: entry.actor, action: entry.action, target: entry.target, outcome: entry.outcome, status: entry.status } }, 'audit');
    try {
      await this.store.appendAudit(entry);
    } catch (err) {
      this.#failures.inc();
      this.log.error({ err: toEdgefleetError(err), action: e.action }, 'cannot write audit entry');
    }
  }

  query(q: AuditQuery): Promise<AuditRecord[]> {
    return this.store.queryAudit(q);
  }
}
