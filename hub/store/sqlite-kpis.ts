/**
 * The feedback/KPI half of the SQLite HubStore (tables of migrations 5 and 7): the inference index with
 * ground truth, health windows in columns, and the presence log. Kept out of sqlite-store.ts for
 * size, like sqlite-rollouts.ts; same connection, every function one synchronous statement or
 * transaction, so nothing here spans an `await`.
 *
 * Why own tables instead of querying `telemetry`: a KPI query names a model version and a period,
 * and `telemetry` is keyed by (device, stream, ...) with JSON bodies. Answering from it would
 * parse every stored health and inference record of every device per query; these tables are
 * indexed by (model, version, time) and hold only the columns the KPIs use.
 */
import type Database from 'better-sqlite3';
import type { AccuracyBucket, IndexedHealthWindow, IndexedInference, PresenceChange } from './store.ts';

type Db = Database.Database;

/**
 * A count array the store wrote itself; damaged text degrades to [] (like parseStored). A plain
 * loop instead of zod: a day of one-minute windows from 100 devices is 144,000 rows per query.
 */
function counts(text: string): number[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return [];
  }
  if (!Array.isArray(v)) return [];
  for (const x of v) if (typeof x !== 'number' || !Number.isInteger(x) || x < 0) return [];
  return v as number[];
}

/** Ids looked up per statement (SQLite's default limit on bound parameters is 32766). */
const LOOKUP_CHUNK = 500;

export function indexInferences(db: Db, rows: readonly IndexedInference[]): void {
  const insert = db.prepare(
    'INSERT OR IGNORE INTO inference_index (device_id, id, model, version, label, confidence, ts, task, pred) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
  );
  db.transaction(() => {
    for (const r of rows) insert.run(r.deviceId, r.id, r.model, r.version, r.label, r.confidence, r.ts, r.task ?? null, r.pred ?? null);
  }).immediate();
}

export function indexHealthWindows(db: Db, rows: readonly IndexedHealthWindow[]): void {
  const insert = db.prepare(
    `INSERT INTO kpi_health (device_id, model, version, window_start, window_ms, ok, errors, latency, confidence, class_counts, cpu_ms)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  );
  db.transaction(() => {
    for (const w of rows) {
      insert.run(
        w.deviceId,
        w.model,
        w.version,
        w.windowStart,
        w.windowMs,
        w.ok,
        w.errors,
        JSON.stringify(w.latency),
        JSON.stringify(w.confidence),
        JSON.stringify(w.classCounts),
        w.cpuMs ?? null,
      );
    }
  }).immediate();
}

interface InferenceRow {
  device_id: string;
  id: string;
  model: string;
  version: string;
  label: string;
  confidence: number;
  ts: number;
  truth: string | null;
  feedback_at: number | null;
  task: string | null;
  pred: string | null;
}

const toInference = (r: InferenceRow): IndexedInference => ({
  deviceId: r.device_id,
  id: r.id,
  model: r.model,
  version: r.version,
  label: r.label,
  confidence: r.confidence,
  ts: r.ts,
  truth: r.truth,
  feedbackAt: r.feedback_at,
  ...(r.task === null ? {} : { task: r.task }),
  ...(r.pred === null ? {} : { pred: r.pred }),
});

/**
 * Rows of classifiers: v1 records (task NULL) and v2 classification. Accuracy, confusion and
 * predicted labels read only these, so other tasks' rows (migration 7) leave them unchanged.
 */
const CLASSIFIER = "(task IS NULL OR task = 'classification')";

export function findInferences(db: Db, keys: readonly { id: string; deviceId?: string }[]): IndexedInference[] {
  const out: IndexedInference[] = [];
  const byDevice = db.prepare('SELECT * FROM inference_index WHERE device_id = ? AND id = ?');
  const anyIds = keys.filter((k) => k.deviceId === undefined).map((k) => k.id);
  for (const k of keys) if (k.deviceId !== undefined) out.push(...(byDevice.all(k.deviceId, k.id) as InferenceRow[]).map(toInference));
  for (let i = 0; i < anyIds.length; i += LOOKUP_CHUNK) {
    const chunk = anyIds.slice(i, i + LOOKUP_CHUNK);
    const rows = db.prepare(`SELECT * FROM inference_index WHERE id IN (${chunk.map(() => '?').join(',')})`).all(...chunk) as InferenceRow[];
    out.push(...rows.map(toInference));
  }
  return out;
}

export function recordFeedback(db: Db, items: readonly { deviceId: string; id: string; truth: string; at: number }[]): number {
  const update = db.prepare('UPDATE inference_index SET truth = ?, feedback_at = ? WHERE device_id = ? AND id = ?');
  return db
    .transaction(() => {
      let n = 0;
      for (const f of items) n += update.run(f.truth, f.at, f.deviceId, f.id).changes;
      return n;
    })
    .immediate();
}

export function accuracyBuckets(db: Db, model: string, version: string, from: number, to: number, windowMs: number): AccuracyBucket[] {
  // better-sqlite3 binds JS numbers as REAL: cast, or the division is not an integer one.
  const rows = db
    .prepare(
      `SELECT (ts / CAST(? AS INTEGER)) * CAST(? AS INTEGER) AS start, COUNT(*) AS predictions, SUM(confidence) AS conf,
              COUNT(truth) AS labelled, COALESCE(SUM(truth = label), 0) AS correct
       FROM inference_index WHERE model = ? AND version = ? AND ts >= ? AND ts < ? AND ${CLASSIFIER}
       GROUP BY start ORDER BY start`,
    )
    .all(windowMs, windowMs, model, version, from, to) as { start: number; predictions: number; conf: number; labelled: number; correct: number }[];
  return rows.map((r) => ({ start: r.start, predictions: r.predictions, confidenceSum: r.conf, labelled: r.labelled, correct: r.correct }));
}

export function confusion(db: Db, model: string, version: string, from: number, to: number): { truth: string; label: string; n: number }[] {
  return db
    .prepare(
      `SELECT truth, label, COUNT(*) AS n FROM inference_index
       WHERE model = ? AND version = ? AND ts >= ? AND ts < ? AND truth IS NOT NULL AND ${CLASSIFIER} GROUP BY truth, label`,
    )
    .all(model, version, from, to) as { truth: string; label: string; n: number }[];
}

export function predictedLabels(db: Db, model: string, version: string, from: number, to: number): { label: string; n: number }[] {
  return db
    .prepare(`SELECT label, COUNT(*) AS n FROM inference_index WHERE model = ? AND version = ? AND ts >= ? AND ts < ? AND ${CLASSIFIER} GROUP BY label`)
    .all(model, version, from, to) as { label: string; n: number }[];
}

/** Indexed predictions of a non-classifier version, and how many raised an alarm (anomaly: label 'anomaly'). */
export function taskPredictions(db: Db, model: string, version: string, from: number, to: number): { predictions: number; alarms: number } {
  const r = db
    .prepare(
      `SELECT COUNT(*) AS predictions, COALESCE(SUM(task = 'anomaly' AND label = 'anomaly'), 0) AS alarms FROM inference_index
       WHERE model = ? AND version = ? AND ts >= ? AND ts < ? AND NOT ${CLASSIFIER}`,
    )
    .get(model, version, from, to) as { predictions: number; alarms: number };
  return { predictions: r.predictions, alarms: r.alarms };
}

/** Labelled predictions of a non-classifier version: predicted label, compact prediction and truth (hub/feedback/task-truth.ts). */
export function taskFeedback(db: Db, model: string, version: string, from: number, to: number): { label: string; pred: string | null; truth: string }[] {
  return db
    .prepare(
      `SELECT label, pred, truth FROM inference_index
       WHERE model = ? AND version = ? AND ts >= ? AND ts < ? AND truth IS NOT NULL AND NOT ${CLASSIFIER} ORDER BY ts, device_id, id`,
    )
    .all(model, version, from, to) as { label: string; pred: string | null; truth: string }[];
}

export function kpiHealthWindows(db: Db, model: string, version: string, from: number, to: number): IndexedHealthWindow[] {
  const rows = db
    .prepare('SELECT * FROM kpi_health WHERE model = ? AND version = ? AND window_start >= ? AND window_start < ?')
    .all(model, version, from, to) as {
    device_id: string;
    model: string;
    version: string;
    window_start: number;
    window_ms: number;
    ok: number;
    errors: number;
    latency: string;
    confidence: string;
    class_counts: string;
    cpu_ms: number | null;
  }[];
  return rows.map((r) => ({
    deviceId: r.device_id,
    model: r.model,
    version: r.version,
    windowStart: r.window_start,
    windowMs: r.window_ms,
    ok: r.ok,
    errors: r.errors,
    latency: counts(r.latency),
    confidence: counts(r.confidence),
    classCounts: counts(r.class_counts),
    ...(r.cpu_ms === null ? {} : { cpuMs: r.cpu_ms }),
  }));
}

export function modelVersionsSeen(db: Db, from: number, to: number, model?: string): { model: string; version: string }[] {
  const m = model === undefined ? '' : ' AND model = ?';
  const args = model === undefined ? [from, to, from, to] : [from, to, model, from, to, model];
  return db
    .prepare(
      `SELECT model, version FROM kpi_health WHERE window_start >= ? AND window_start < ?${m}
       UNION SELECT model, version FROM inference_index WHERE ts >= ? AND ts < ?${m}
       ORDER BY model, version`,
    )
    .all(...args) as { model: string; version: string }[];
}

export function presenceChanges(db: Db, deviceIds: readonly string[], from: number, to: number): PresenceChange[] {
  const before = db.prepare('SELECT ts, online FROM presence_log WHERE device_id = ? AND ts < ? ORDER BY ts DESC, rowid DESC LIMIT 1');
  const during = db.prepare('SELECT ts, online FROM presence_log WHERE device_id = ? AND ts >= ? AND ts < ? ORDER BY ts, rowid');
  const out: PresenceChange[] = [];
  for (const id of deviceIds) {
    const b = before.get(id, from) as { ts: number; online: number } | undefined;
    if (b) out.push({ deviceId: id, ts: b.ts, online: b.online === 1 });
    for (const r of during.all(id, from, to) as { ts: number; online: number }[]) out.push({ deviceId: id, ts: r.ts, online: r.online === 1 });
  }
  return out;
}

/** Appends a presence change when the state of a device changes (called inside setOnline's transaction). */
export function logPresence(db: Db, id: string, online: boolean, at: number): void {
  db.prepare(
    `INSERT INTO presence_log (device_id, ts, online)
     SELECT id, ?, ? FROM principals WHERE id = ? AND kind = 'device' AND online != ?`,
  ).run(at, online ? 1 : 0, id, online ? 1 : 0);
}

export function pruneKpiData(db: Db, before: number): { inferences: number; healthWindows: number; presence: number } {
  return db
    .transaction(() => {
      const inferences = db.prepare('DELETE FROM inference_index WHERE ts < ?').run(before).changes;
      const healthWindows = db.prepare('DELETE FROM kpi_health WHERE window_start < ?').run(before).changes;
      // Keep the newest change before the cutoff per device: it is the state at the cutoff.
      const presence = db
        .prepare(
          `DELETE FROM presence_log WHERE ts < ? AND rowid NOT IN (
             SELECT (SELECT p2.rowid FROM presence_log p2 WHERE p2.device_id = p.device_id AND p2.ts < ? ORDER BY p2.ts DESC, p2.rowid DESC LIMIT 1)
             FROM (SELECT DISTINCT device_id FROM presence_log WHERE ts < ?) p)`,
        )
        .run(before, before, before).changes;
      return { inferences, healthWindows, presence };
    })
    .immediate();
}
