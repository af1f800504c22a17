/**
 * The drift and alerts half of the SQLite HubStore (tables of migration 4): merged drift counts
 * per (model version, device, hub window) with the summary ids already merged, the detector's
 * window reports and findings, alerts with their lifecycle, and persisted webhook deliveries.
 * Same connection and rules as sqlite-rollouts.ts: every function is one synchronous
 * transaction, so the summary-id check and the merge it guards cannot be separated (a summary
 * delivered twice, even concurrently, is merged once), and an alert key has at most one
 * unresolved alert (also enforced by a partial unique index).
 */
import type Database from 'better-sqlite3';
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { TelemetryRecord } from '../../shared/protocol.ts';
import { parseStored } from './sqlite-rollouts.ts';
import type {
  AlertRecord,
  AlertState,
  AlertWindowResult,
  AlertWindowUpdate,
  DeliveryRecord,
  DeliveryState,
  DriftDeviceWindow,
  DriftFindingQuery,
  DriftMergeItem,
  DriftFindingRow,
  DriftReportRow,
  MergeOutcome,
  NewDelivery,
} from './store.ts';

type Db = Database.Database;

interface AlertRow {
  id: string;
  model: string;
  version: string;
  scope: string;
  scope_id: string;
  feature: string;
  state: AlertState;
  message: string;
  devices: string;
  evidence: string;
  first_window: number;
  last_window: number;
  windows: number;
  clean_windows: number;
  opened_at: number;
  updated_at: number;
  acked_at: number | null;
  acked_by: string | null;
  resolved_at: number | null;
  resolved_by: string | null;
}

interface DeliveryRow {
  id: number;
  alert_id: string;
  target: string;
  url: string;
  event: string;
  payload: string;
  state: DeliveryState;
  attempts: number;
  next_at: number;
  last_error: string | null;
  log: string;
  created_at: number;
  delivered_at: number | null;
}

const DevicesSchema = z.array(z.string());
const BodySchema = z.record(z.string(), z.unknown());
const AttemptLogSchema = z.array(z.object({ at: z.number(), ok: z.boolean(), status: z.number().optional(), error: z.string().optional() }));
/** Attempts kept in a delivery's log (the newest). */
const MAX_LOG = 50;

const toAlert = (r: AlertRow): AlertRecord => ({
  id: r.id,
  model: r.model,
  version: r.version,
  scope: r.scope,
  scopeId: r.scope_id,
  feature: r.feature,
  state: r.state,
  message: r.message,
  devices: parseStored(DevicesSchema, r.devices, []),
  evidence: r.evidence,
  firstWindow: r.first_window,
  lastWindow: r.last_window,
  windows: r.windows,
  cleanWindows: r.clean_windows,
  openedAt: r.opened_at,
  updatedAt: r.updated_at,
  ackedAt: r.acked_at,
  ackedBy: r.acked_by,
  resolvedAt: r.resolved_at,
  resolvedBy: r.resolved_by,
});

const toDelivery = (r: DeliveryRow): DeliveryRecord => ({
  id: r.id,
  alertId: r.alert_id,
  target: r.target,
  url: r.url,
  event: r.event,
  payload: r.payload,
  state: r.state,
  attempts: r.attempts,
  nextAt: r.next_at,
  lastError: r.last_error,
  log: parseStored(AttemptLogSchema, r.log, []),
  createdAt: r.created_at,
  deliveredAt: r.delivered_at,
});

// --- drift ------------------------------------------------------------------------------------

export function mergeDriftSummaries(db: Db, items: readonly DriftMergeItem[]): (MergeOutcome | EdgefleetError)[] {
  // Each summary in its own savepoint inside one transaction: a refused one rolls back alone.
  const one = db.transaction((s: DriftMergeItem): MergeOutcome => mergeOne(db, s));
  return db
    .transaction(() =>
      items.map((s): MergeOutcome | EdgefleetError => {
        try {
          return one(s);
        } catch (err) {
          // SQLite errors (SQLITE_FULL, SQLITE_BUSY) end the whole transaction: rethrow them.
          if (err instanceof EdgefleetError) return err;
          throw err;
        }
      }),
    )
    .immediate();
}

function mergeOne(db: Db, s: DriftMergeItem): MergeOutcome {
  const fresh = db
    .prepare('INSERT OR IGNORE INTO drift_summaries (summary_id, device_id, model, version, window_start, received_at) VALUES (?, ?, ?, ?, ?, ?)')
    .run(s.summaryId, s.deviceId, s.model, s.version, s.windowStart, s.receivedAt).changes;
  if (fresh !== 1) return 'duplicate';
  const row = db
    .prepare('SELECT aggregate FROM drift_device_windows WHERE model = ? AND version = ? AND window_start = ? AND device_id = ?')
    .get(s.model, s.version, s.windowStart, s.deviceId) as { aggregate: string } | undefined;
  // A throw here rolls back the savepoint, the summary id too: a refused summary is not remembered as merged.
  const next = s.merge(row?.aggregate);
  db.prepare(
    `INSERT INTO drift_device_windows (model, version, window_start, device_id, window_ms, summaries, count, aggregate, updated_at)
     VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
     ON CONFLICT (model, version, window_start, device_id) DO UPDATE SET summaries = summaries + 1, count = excluded.count,
       aggregate = excluded.aggregate, updated_at = excluded.updated_at`,
  ).run(s.model, s.version, s.windowStart, s.deviceId, s.windowMs, next.count, next.aggregate, s.receivedAt);
  return 'merged';
}

export function driftDeviceWindows(db: Db, model: string, version: string, windowStart: number): DriftDeviceWindow[] {
  const rows = db
    .prepare('SELECT * FROM drift_device_windows WHERE model = ? AND version = ? AND window_start = ? ORDER BY device_id')
    .all(model, version, windowStart) as { model: string; version: string; window_start: number; device_id: string; window_ms: number; summaries: number; count: number; aggregate: string }[];
  return rows.map((r) => ({
    model: r.model,
    version: r.version,
    deviceId: r.device_id,
    windowStart: r.window_start,
    windowMs: r.window_ms,
    summaries: r.summaries,
    count: r.count,
    aggregate: r.aggregate,
  }));
}

/**
 * The unary `+` keeps SQLite off the rowid range (which, without ANALYZE statistics, it prefers
 * and which scans the whole telemetry table): the partial index telemetry_drift_by_received
 * finds the few recent drift rows, sorted in a small temp b-tree.
 */
export function driftRecordsSince(db: Db, receivedAt: number, after: number, limit: number): { cursor: number; deviceId: string; record: TelemetryRecord }[] {
  const rows = db
    .prepare(
      `SELECT rowid AS cursor, device_id, stream, epoch, seq, ts, kind, body FROM telemetry
       WHERE kind = 'drift' AND received_at >= ? AND +rowid > ? ORDER BY +rowid LIMIT ?`,
    )
    .all(receivedAt, after, limit) as { cursor: number; device_id: string; stream: string; epoch: number; seq: number; ts: number; kind: string; body: string }[];
  return rows.map((r) => ({
    cursor: r.cursor,
    deviceId: r.device_id,
    record: { stream: r.stream, epoch: r.epoch, seq: r.seq, ts: r.ts, kind: r.kind, body: parseStored(BodySchema, r.body, {}) },
  }));
}

export function pendingDriftWindows(db: Db, windowEndBefore: number): { model: string; version: string; windowStart: number; windowMs: number }[] {
  const rows = db
    .prepare(
      `SELECT w.model, w.version, w.window_start, MAX(w.window_ms) AS window_ms FROM drift_device_windows w
       WHERE w.window_start + w.window_ms <= ?
         AND NOT EXISTS (SELECT 1 FROM drift_reports r WHERE r.model = w.model AND r.version = w.version AND r.window_start = w.window_start)
       GROUP BY w.model, w.version, w.window_start ORDER BY w.window_start, w.model, w.version`,
    )
    .all(windowEndBefore) as { model: string; version: string; window_start: number; window_ms: number }[];
  return rows.map((r) => ({ model: r.model, version: r.version, windowStart: r.window_start, windowMs: r.window_ms }));
}

export function putDriftReport(db: Db, r: DriftReportRow, findings: readonly DriftFindingRow[]): boolean {
  return db
    .transaction((): boolean => {
      const changed = db
        .prepare('INSERT OR IGNORE INTO drift_reports (model, version, window_start, window_ms, evaluated_at, skipped, report) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(r.model, r.version, r.windowStart, r.windowMs, r.evaluatedAt, r.skipped, r.report).changes;
      if (changed !== 1) return false;
      const ins = db.prepare('INSERT INTO drift_findings (model, version, window_start, scope, scope_id, feature, finding) VALUES (?, ?, ?, ?, ?, ?, ?)');
      for (const f of findings) ins.run(f.model, f.version, f.windowStart, f.scope, f.scopeId, f.feature, f.finding);
      return true;
    })
    .immediate();
}

interface ReportRowDb {
  model: string;
  version: string;
  window_start: number;
  window_ms: number;
  evaluated_at: number;
  skipped: string | null;
  report: string;
}

export function driftReports(db: Db, q: { model?: string; version?: string; from?: number; to?: number; limit: number }): DriftReportRow[] {
  const rows = db
    .prepare(
      `SELECT * FROM drift_reports WHERE (? IS NULL OR model = ?) AND (? IS NULL OR version = ?) AND window_start >= ? AND window_start < ?
       ORDER BY window_start DESC, model, version LIMIT ?`,
    )
    .all(q.model ?? null, q.model ?? null, q.version ?? null, q.version ?? null, q.from ?? 0, q.to ?? Number.MAX_SAFE_INTEGER, q.limit) as ReportRowDb[];
  return rows.map((r) => ({ model: r.model, version: r.version, windowStart: r.window_start, windowMs: r.window_ms, evaluatedAt: r.evaluated_at, skipped: r.skipped, report: r.report }));
}

export function driftFindings(db: Db, q: DriftFindingQuery): DriftFindingRow[] {
  const where: string[] = ['window_start >= ?', 'window_start < ?'];
  const args: (string | number)[] = [q.from ?? 0, q.to ?? Number.MAX_SAFE_INTEGER];
  const eq: [string, string | undefined][] = [
    ['model', q.model],
    ['version', q.version],
    ['scope', q.scope],
    ['scope_id', q.scopeId],
    ['feature', q.feature],
  ];
  for (const [col, v] of eq) {
    if (v === undefined) continue;
    where.push(`${col} = ?`);
    args.push(v);
  }
  args.push(q.limit);
  const rows = db.prepare(`SELECT * FROM drift_findings WHERE ${where.join(' AND ')} ORDER BY window_start DESC, id LIMIT ?`).all(...args) as {
    model: string;
    version: string;
    window_start: number;
    scope: string;
    scope_id: string;
    feature: string;
    finding: string;
  }[];
  return rows.map((r) => ({ model: r.model, version: r.version, windowStart: r.window_start, scope: r.scope, scopeId: r.scope_id, feature: r.feature, finding: r.finding }));
}

export function pruneDrift(db: Db, before: number): { summaries: number; windows: number; reports: number; findings: number; alerts: number } {
  return db
    .transaction(() => {
      const summaries = db.prepare('DELETE FROM drift_summaries WHERE window_start < ?').run(before).changes;
      const windows = db.prepare('DELETE FROM drift_device_windows WHERE window_start < ?').run(before).changes;
      const reports = db.prepare('DELETE FROM drift_reports WHERE window_start < ?').run(before).changes;
      const findings = db.prepare('DELETE FROM drift_findings WHERE window_start < ?').run(before).changes;
      db.prepare(`DELETE FROM alert_deliveries WHERE alert_id IN (SELECT id FROM alerts WHERE state = 'resolved' AND resolved_at < ?) AND state <> 'pending'`).run(before);
      const alerts = db
        .prepare(`DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < ? AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = alerts.id)`)
        .run(before).changes;
      return { summaries, windows, reports, findings, alerts };
    })
    .immediate();
}

// --- alerts -----------------------------------------------------------------------------------

function alertRow(db: Db, id: string): AlertRow | undefined {
  return db.prepare('SELECT * FROM alerts WHERE id = ?').get(id) as AlertRow | undefined;
}

export function applyAlertWindow(db: Db, u: AlertWindowUpdate): AlertWindowResult {
  return db
    .transaction((): AlertWindowResult => {
      const out: AlertWindowResult = { opened: [], updated: [], resolved: [] };
      const find = db.prepare(
        `SELECT * FROM alerts WHERE model = ? AND version = ? AND scope = ? AND scope_id = ? AND feature = ? AND state <> 'resolved'`,
      );
      const hitIds = new Set<string>();
      for (const h of u.hits) {
        const cur = find.get(u.model, u.version, h.scope, h.scopeId, h.feature) as AlertRow | undefined;
        if (cur) {
          // Windows are evaluated in order; an older window seen late does not move last_window back.
          const devices = [...new Set([...parseStored(DevicesSchema, cur.devices, []), ...h.devices])].sort();
          db.prepare(
            `UPDATE alerts SET message = ?, devices = ?, evidence = ?, last_window = MAX(last_window, ?), windows = windows + 1, clean_windows = 0, updated_at = ?
             WHERE id = ?`,
          ).run(h.message, JSON.stringify(devices), h.evidence, u.windowStart, u.at, cur.id);
          hitIds.add(cur.id);
          out.updated.push(toAlert(alertRow(db, cur.id) as AlertRow));
        } else {
          db.prepare(
            `INSERT INTO alerts (id, model, version, scope, scope_id, feature, state, message, devices, evidence, first_window, last_window, opened_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?)`,
          ).run(h.newId, u.model, u.version, h.scope, h.scopeId, h.feature, h.message, JSON.stringify([...new Set(h.devices)].sort()), h.evidence, u.windowStart, u.windowStart, u.at, u.at);
          hitIds.add(h.newId);
          out.opened.push(toAlert(alertRow(db, h.newId) as AlertRow));
        }
      }
      const unresolved = db
        .prepare(`SELECT * FROM alerts WHERE model = ? AND version = ? AND state <> 'resolved' AND last_window < ?`)
        .all(u.model, u.version, u.windowStart) as AlertRow[];
      for (const a of unresolved) {
        if (hitIds.has(a.id)) continue;
        const clean = a.clean_windows + 1;
        if (clean >= u.autoResolveAfter) {
          db.prepare(`UPDATE alerts SET clean_windows = ?, state = 'resolved', resolved_at = ?, resolved_by = 'auto', updated_at = ? WHERE id = ?`).run(clean, u.at, u.at, a.id);
          out.resolved.push(toAlert(alertRow(db, a.id) as AlertRow));
        } else {
          db.prepare('UPDATE alerts SET clean_windows = ?, updated_at = ? WHERE id = ?').run(clean, u.at, a.id);
        }
      }
      return out;
    })
    .immediate();
}

export function getAlert(db: Db, id: string): AlertRecord | undefined {
  const r = alertRow(db, id);
  return r && toAlert(r);
}

export function listAlerts(db: Db, q: { state?: AlertState; model?: string; version?: string; limit: number }): AlertRecord[] {
  const rows = db
    .prepare(
      `SELECT * FROM alerts WHERE (? IS NULL OR state = ?) AND (? IS NULL OR model = ?) AND (? IS NULL OR version = ?)
       ORDER BY opened_at DESC, rowid DESC LIMIT ?`,
    )
    .all(q.state ?? null, q.state ?? null, q.model ?? null, q.model ?? null, q.version ?? null, q.version ?? null, q.limit) as AlertRow[];
  return rows.map(toAlert);
}

export function transitionAlert(db: Db, id: string, from: readonly AlertState[], to: AlertState, at: number, by: string): AlertRecord | undefined {
  return db
    .transaction((): AlertRecord | undefined => {
      const cur = alertRow(db, id);
      if (!cur) return undefined;
      if (!from.includes(cur.state)) throw new EdgefleetError(ErrorCode.CONFLICT, `alert ${id} is ${cur.state}; cannot move it to ${to}`, { details: { state: cur.state } });
      if (to === 'acknowledged') db.prepare(`UPDATE alerts SET state = 'acknowledged', acked_at = ?, acked_by = ?, updated_at = ? WHERE id = ?`).run(at, by, at, id);
      else if (to === 'resolved') db.prepare(`UPDATE alerts SET state = 'resolved', resolved_at = ?, resolved_by = ?, updated_at = ? WHERE id = ?`).run(at, by, at, id);
      else throw new EdgefleetError(ErrorCode.BAD_INPUT, `an alert cannot move back to ${to}`);
      return toAlert(alertRow(db, id) as AlertRow);
    })
    .immediate();
}

// --- deliveries -------------------------------------------------------------------------------

export function addDeliveries(db: Db, ds: readonly NewDelivery[]): void {
  db.transaction(() => {
    const ins = db.prepare(
      `INSERT INTO alert_deliveries (alert_id, target, url, event, payload, state, next_at, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)`,
    );
    for (const d of ds) ins.run(d.alertId, d.target, d.url, d.event, d.payload, d.at, d.at);
  }).immediate();
}

export function dueDeliveries(db: Db, at: number, limit: number): DeliveryRecord[] {
  return (db.prepare(`SELECT * FROM alert_deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?`).all(at, limit) as DeliveryRow[]).map(toDelivery);
}

export function recordDeliveryAttempt(db: Db, id: number, a: { at: number; ok: boolean; status?: number; error?: string; nextAt?: number; giveUp?: boolean }): void {
  db.transaction(() => {
    const row = db.prepare('SELECT * FROM alert_deliveries WHERE id = ?').get(id) as DeliveryRow | undefined;
    if (!row || row.state !== 'pending') return;
    const entry = { at: a.at, ok: a.ok, ...(a.status === undefined ? {} : { status: a.status }), ...(a.error === undefined ? {} : { error: a.error.slice(0, 300) }) };
    const log = [...parseStored(AttemptLogSchema, row.log, []), entry].slice(-MAX_LOG);
    const state: DeliveryState = a.ok ? 'delivered' : a.giveUp ? 'failed' : 'pending';
    db.prepare(
      `UPDATE alert_deliveries SET state = ?, attempts = attempts + 1, next_at = ?, last_error = ?, log = ?, delivered_at = ? WHERE id = ?`,
    ).run(state, a.nextAt ?? row.next_at, a.ok ? null : (entry.error ?? `HTTP ${a.status ?? '?'}`), JSON.stringify(log), a.ok ? a.at : null, id);
  }).immediate();
}

export function deliveries(db: Db, alertId: string): DeliveryRecord[] {
  return (db.prepare('SELECT * FROM alert_deliveries WHERE alert_id = ? ORDER BY id').all(alertId) as DeliveryRow[]).map(toDelivery);
}
