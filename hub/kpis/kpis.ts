/**
 * KPIs per model version over a period [from, to), from what the hub already has:
 *   inferences, error rate, latency p50/p95  health windows (shared/health.ts), every inference
 *   CPU-seconds per 1,000 inferences         health windows' `cpuMs`, over the windows carrying it
 *   uptime                                   online fraction of the devices that served the
 *                                            version, from the presence log
 *   accuracy (realized)                      feedback on indexed inferences, with a Wilson 95%
 *                                            interval, by PREDICTION time
 *   accuracy (estimated)                     mean top-1 confidence of the indexed predictions:
 *                                            what the model expects of itself, an estimate that
 *                                            holds only while it is calibrated, hence reported
 *                                            next to the realized figure, never instead of it
 *   business cost                            feedback × the operator's cost matrix
 *   task KPIs (detection, regression,         feedback on v2 inferences of those tasks
 *   anomaly)                                 (hub/feedback/task-kpis.ts); null for classifiers
 *
 * Health windows count every inference; the inference index only those whose pipeline sends
 * inference telemetry, so `inferences` comes from health windows when there are any.
 */
import { emptyTotals, addHealth, errorRate, latencyQuantileMs, meanConfidence, samples } from '../../shared/health.ts';
import { taskKpis, type TaskKpis } from '../feedback/task-kpis.ts';
import { ReleaseTasks } from '../feedback/task-truth.ts';
import type { HubStore } from '../store/store.ts';
import type { KpisConfig } from './config.ts';
import { businessCost, onlineFraction, wilsonInterval, type BusinessCost } from './math.ts';

export interface KpiQuery {
  model?: string;
  version?: string;
  from: number;
  to: number;
  /** Length of the accuracy windows (prediction time). */
  windowMs: number;
}

export interface AccuracyWindow {
  start: number;
  predictions: number;
  labelled: number;
  correct: number;
  /** correct / labelled; null without labels. */
  accuracy: number | null;
  /** Mean top-1 confidence (an estimate). */
  estimated: number;
}

export interface ModelVersionKpis {
  model: string;
  version: string;
  from: number;
  to: number;
  /** Devices that reported health windows of this version in the period. */
  devices: number;
  inferences: number;
  errors: number;
  errorRate: number | null;
  latencyMs: { p50: number; p95: number } | null;
  /** Mean online fraction of `devices` over the period; null with no devices. */
  uptime: number | null;
  cpu: { secondsPer1000: number; inferences: number; cpuSeconds: number } | null;
  accuracy: {
    realized: { n: number; correct: number; value: number; ci95: [number, number] } | null;
    estimated: { value: number; n: number; basis: string } | null;
    /** Indexed predictions and how many carry a label. */
    predictions: number;
    labelled: number;
    windows: AccuracyWindow[];
  };
  /** Null when the config has no cost matrix for the model. */
  cost: (BusinessCost & { unit: 'per prediction' }) | null;
  /** Precision/recall, MAE/RMSE, alarm rate of detection, regression and anomaly versions; null otherwise. */
  task: TaskKpis | null;
}

const MAX_WINDOWS = 2000;
const ESTIMATE_BASIS = 'mean top-1 confidence of the predictions (an estimate; valid only if the model is calibrated)';

export interface KpiContext {
  store: HubStore;
  costs: KpisConfig['costs'];
  /** Uptime is measured up to now when the period has not ended yet. */
  now: number;
  /** Tasks of released versions (cached across queries); default: looked up per query. */
  releases?: ReleaseTasks;
}

export async function modelVersionKpis(ctx: KpiContext, model: string, version: string, q: KpiQuery): Promise<ModelVersionKpis> {
  const { store } = ctx;
  const { from, to } = q;
  const windows = await store.kpiHealthWindows(model, version, from, to);
  const totals = emptyTotals();
  const devices = new Set<string>();
  let cpuMs = 0;
  let cpuInferences = 0;
  for (const w of windows) {
    addHealth(totals, w);
    devices.add(w.deviceId);
    if (w.cpuMs !== undefined) {
      cpuMs += w.cpuMs;
      cpuInferences += w.ok + w.errors;
    }
  }
  const windowMs = Math.max(q.windowMs, Math.ceil((to - from) / MAX_WINDOWS));
  const buckets = await store.accuracyBuckets(model, version, from, to, windowMs);
  let predictions = 0;
  let confSum = 0;
  let labelled = 0;
  let correct = 0;
  for (const b of buckets) {
    predictions += b.predictions;
    confSum += b.confidenceSum;
    labelled += b.labelled;
    correct += b.correct;
  }
  const ci = wilsonInterval(correct, labelled);
  const healthConf = meanConfidence(totals);
  const estimated =
    predictions > 0
      ? { value: confSum / predictions, n: predictions, basis: ESTIMATE_BASIS }
      : Number.isFinite(healthConf)
        ? { value: healthConf, n: totals.confidence.reduce((a, b) => a + b, 0), basis: `${ESTIMATE_BASIS}, from histogram bin midpoints` }
        : null;

  let uptime: number | null = null;
  if (devices.size) {
    const ids = [...devices];
    const changes = await store.presenceChanges(ids, from, to);
    const end = Math.min(to, ctx.now) > from ? Math.min(to, ctx.now) : to;
    let sum = 0;
    for (const id of ids) sum += onlineFraction(changes.filter((c) => c.deviceId === id), from, end);
    uptime = sum / ids.length;
  }

  const matrix = ctx.costs[model]?.matrix;
  let cost: ModelVersionKpis['cost'] = null;
  if (matrix) {
    const [conf, predicted] = await Promise.all([store.confusion(model, version, from, to), store.predictedLabels(model, version, from, to)]);
    cost = { ...businessCost(matrix, conf, predicted), unit: 'per prediction' };
  }
  const task = await taskKpis(store, await (ctx.releases ?? new ReleaseTasks(store)).of(model, version), model, version, from, to);
  const n = samples(totals);
  return {
    model,
    version,
    from,
    to,
    devices: devices.size,
    inferences: windows.length ? n : predictions,
    errors: totals.errors,
    errorRate: n > 0 ? errorRate(totals) : null,
    latencyMs: totals.latency.some((c) => c > 0) ? { p50: latencyQuantileMs(totals, 0.5), p95: latencyQuantileMs(totals, 0.95) } : null,
    uptime,
    cpu: cpuInferences > 0 ? { secondsPer1000: (cpuMs / 1000 / cpuInferences) * 1000, inferences: cpuInferences, cpuSeconds: cpuMs / 1000 } : null,
    accuracy: {
      realized: ci ? { n: labelled, correct, value: correct / labelled, ci95: [ci.lo, ci.hi] } : null,
      estimated,
      predictions,
      labelled,
      windows: buckets.map((b) => ({
        start: b.start,
        predictions: b.predictions,
        labelled: b.labelled,
        correct: b.correct,
        accuracy: b.labelled > 0 ? b.correct / b.labelled : null,
        estimated: b.predictions > 0 ? b.confidenceSum / b.predictions : 0,
      })),
    },
    cost,
    task,
  };
}

/** KPIs of every model version matching the query that was active in the period. */
export async function queryKpis(ctx: KpiContext, q: KpiQuery): Promise<ModelVersionKpis[]> {
  let versions = await ctx.store.modelVersionsSeen(q.from, q.to, q.model);
  if (q.version !== undefined) versions = versions.filter((v) => v.version === q.version);
  const out: ModelVersionKpis[] = [];
  for (const v of versions) out.push(await modelVersionKpis(ctx, v.model, v.version, q));
  return out;
}
