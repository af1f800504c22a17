/**
 * KPIs of the v2 tasks from ground-truth feedback (issue #13), per model version over a period
 * of PREDICTION time, next to the classification KPIs of hub/kpis/kpis.ts (unchanged):
 *
 *   detection   predictions matched to truth boxes of the same label by IoU >= 0.5, greedily by
 *               score (each truth box matched at most once, to the unmatched one of highest IoU);
 *               precision TP/(TP+FP) and recall TP/(TP+FN) at the model's score threshold, each
 *               with its n and a Wilson 95% interval, and the mean IoU of the matches
 *   regression  MAE and RMSE per target, each with its n (items may give some targets only)
 *   anomaly     precision and recall of the alarm against the truth, with Wilson intervals, and
 *               the alarm rate over every indexed prediction (labelled or not)
 *
 * Pure functions first (unit-tested in test/unit/task-kpis.test.ts), then the store query.
 */
import { wilsonInterval } from '../kpis/math.ts';
import type { HubStore } from '../store/store.ts';
import { ANOMALY, type ReleaseTask } from './task-truth.ts';

export const IOU_THRESHOLD = 0.5;

export interface XYXY {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

/** Intersection over union of two corner-form boxes (0 when both are empty). */
export function iou(a: XYXY, b: XYXY): number {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  const inter = w > 0 && h > 0 ? w * h : 0;
  const union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return union > 0 ? inter / union : 0;
}

export interface PredBox {
  label: string;
  score: number;
  box: XYXY;
}
export interface TruthBox {
  label: string;
  box: XYXY;
}

export interface MatchCounts {
  tp: number;
  fp: number;
  fn: number;
  /** Sum of the IoU of the matches (mean = iouSum / tp). */
  iouSum: number;
  byLabel: Map<string, { tp: number; fp: number; fn: number }>;
}

export const emptyCounts = (): MatchCounts => ({ tp: 0, fp: 0, fn: 0, iouSum: 0, byLabel: new Map() });

/**
 * Matches one image's predictions to its truth boxes and adds the counts to `into`. Predictions
 * are taken by descending score (ties: their order); each takes the unmatched truth box of its
 * label with the highest IoU, if that IoU >= `threshold`, else it is a false positive. Truth
 * boxes left unmatched are false negatives.
 */
export function matchDetections(preds: readonly PredBox[], truths: readonly TruthBox[], into: MatchCounts = emptyCounts(), threshold = IOU_THRESHOLD): MatchCounts {
  const per = (label: string): { tp: number; fp: number; fn: number } => {
    let c = into.byLabel.get(label);
    if (!c) into.byLabel.set(label, (c = { tp: 0, fp: 0, fn: 0 }));
    return c;
  };
  const used = new Array<boolean>(truths.length).fill(false);
  const order = preds.map((p, i) => ({ p, i })).sort((a, b) => b.p.score - a.p.score || a.i - b.i);
  for (const { p } of order) {
    let best = -1;
    let bestIou = 0;
    for (let j = 0; j < truths.length; j++) {
      const t = truths[j]!;
      if (used[j] || t.label !== p.label) continue;
      const v = iou(p.box, t.box);
      if (v > bestIou) {
        bestIou = v;
        best = j;
      }
    }
    if (best >= 0 && bestIou >= threshold) {
      used[best] = true;
      into.tp++;
      into.iouSum += bestIou;
      per(p.label).tp++;
    } else {
      into.fp++;
      per(p.label).fp++;
    }
  }
  for (let j = 0; j < truths.length; j++) {
    if (used[j]) continue;
    into.fn++;
    per(truths[j]!.label).fn++;
  }
  return into;
}

export interface Proportion {
  value: number;
  n: number;
  ci95: [number, number];
}

/** successes / n with its Wilson 95% interval; null when n = 0. */
export function proportion(successes: number, n: number): Proportion | null {
  const ci = wilsonInterval(successes, n);
  return ci ? { value: successes / n, n, ci95: [ci.lo, ci.hi] } : null;
}

export interface DetectionKpis {
  iouThreshold: number;
  scoreThreshold: number;
  /** Labelled inferences (images). */
  labelled: number;
  tp: number;
  fp: number;
  fn: number;
  /** n = predictions (TP + FP). */
  precision: Proportion | null;
  /** n = truth boxes (TP + FN). */
  recall: Proportion | null;
  meanIou: number | null;
  byLabel: { label: string; tp: number; fp: number; fn: number; precision: number | null; recall: number | null }[];
}

export function detectionKpis(c: MatchCounts, labelled: number, scoreThreshold: number, labels: readonly string[] = []): DetectionKpis {
  const names = [...new Set([...labels, ...c.byLabel.keys()])];
  return {
    iouThreshold: IOU_THRESHOLD,
    scoreThreshold,
    labelled,
    tp: c.tp,
    fp: c.fp,
    fn: c.fn,
    precision: proportion(c.tp, c.tp + c.fp),
    recall: proportion(c.tp, c.tp + c.fn),
    meanIou: c.tp > 0 ? c.iouSum / c.tp : null,
    byLabel: names
      .filter((l) => c.byLabel.has(l))
      .map((label) => {
        const x = c.byLabel.get(label)!;
        return { label, ...x, precision: x.tp + x.fp > 0 ? x.tp / (x.tp + x.fp) : null, recall: x.tp + x.fn > 0 ? x.tp / (x.tp + x.fn) : null };
      }),
  };
}

export interface TargetErrors {
  target: string;
  n: number;
  mae: number | null;
  rmse: number | null;
}

/** MAE and RMSE per target over (predicted, true) pairs; targets in `targets` order, each with its own n. */
export function regressionErrors(pairs: readonly { pred: Readonly<Record<string, number>>; truth: Readonly<Record<string, number>> }[], targets: readonly string[]): TargetErrors[] {
  return targets.map((target) => {
    let n = 0;
    let abs = 0;
    let sq = 0;
    for (const p of pairs) {
      const y = p.truth[target];
      const yhat = p.pred[target];
      if (y === undefined || yhat === undefined) continue;
      const e = yhat - y;
      n++;
      abs += Math.abs(e);
      sq += e * e;
    }
    return { target, n, mae: n ? abs / n : null, rmse: n ? Math.sqrt(sq / n) : null };
  });
}

export interface AnomalyKpis {
  labelled: number;
  tp: number;
  fp: number;
  fn: number;
  tn: number;
  /** Alarms that were anomalies; n = labelled alarms. */
  precision: Proportion | null;
  /** Anomalies that raised an alarm; n = labelled anomalies. */
  recall: Proportion | null;
  /** Alarms among every indexed prediction of the period; n = predictions. */
  alarmRate: Proportion | null;
}

export function anomalyKpis(pairs: readonly { alarm: boolean; anomaly: boolean }[], predictions: number, alarms: number): AnomalyKpis {
  let tp = 0;
  let fp = 0;
  let fn = 0;
  let tn = 0;
  for (const p of pairs) {
    if (p.alarm && p.anomaly) tp++;
    else if (p.alarm) fp++;
    else if (p.anomaly) fn++;
    else tn++;
  }
  return { labelled: pairs.length, tp, fp, fn, tn, precision: proportion(tp, tp + fp), recall: proportion(tp, tp + fn), alarmRate: proportion(alarms, predictions) };
}

export interface TaskKpis {
  kind: 'detection' | 'regression' | 'anomaly';
  /** Indexed predictions of the period and how many carry ground truth. */
  predictions: number;
  labelled: number;
  detection?: DetectionKpis;
  regression?: { targets: TargetErrors[] };
  anomaly?: AnomalyKpis;
}

// ---- from the store ----------------------------------------------------------------------------

function parse(text: string | null): unknown {
  if (text === null) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
const isNum = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);
const numRecord = (v: unknown): Record<string, number> | undefined => {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  const out: Record<string, number> = {};
  for (const [k, x] of Object.entries(v)) if (isNum(x)) out[k] = x;
  return out;
};

/** Stored detection rows (the store wrote them; damaged rows degrade to none). */
function predBoxes(v: unknown): PredBox[] {
  if (!Array.isArray(v)) return [];
  const out: PredBox[] = [];
  for (const d of v as unknown[]) {
    if (!Array.isArray(d)) continue;
    const [label, score, x1, y1, x2, y2] = d as unknown[];
    if (typeof label === 'string' && isNum(score) && isNum(x1) && isNum(y1) && isNum(x2) && isNum(y2)) out.push({ label, score, box: { x1, y1, x2, y2 } });
  }
  return out;
}
function truthBoxes(v: unknown): TruthBox[] | undefined {
  if (!Array.isArray(v)) return undefined;
  const out: TruthBox[] = [];
  for (const d of v as unknown[]) {
    if (!Array.isArray(d)) continue;
    const [label, x1, y1, x2, y2] = d as unknown[];
    if (typeof label === 'string' && isNum(x1) && isNum(y1) && isNum(x2) && isNum(y2)) out.push({ label, box: { x1, y1, x2, y2 } });
  }
  return out;
}

/** Task KPIs of one model version (null for classification, other tasks, and versions without a release). */
export async function taskKpis(store: HubStore, rt: ReleaseTask | undefined, model: string, version: string, from: number, to: number): Promise<TaskKpis | null> {
  if (!rt) return null;
  const p = rt.post;
  if (p.kind !== 'detection' && p.kind !== 'regression' && p.kind !== 'anomaly') return null;
  const [stats, rows] = await Promise.all([store.taskPredictions(model, version, from, to), store.taskFeedback(model, version, from, to)]);
  const base = { kind: p.kind, predictions: stats.predictions, labelled: rows.length };
  if (p.kind === 'detection') {
    const c = emptyCounts();
    let labelled = 0;
    for (const r of rows) {
      const truths = truthBoxes(parse(r.truth));
      if (!truths) continue;
      labelled++;
      matchDetections(
        predBoxes(parse(r.pred)).filter((d) => d.score >= p.scoreThreshold),
        truths,
        c,
      );
    }
    return { ...base, labelled, detection: detectionKpis(c, labelled, p.scoreThreshold, p.labels) };
  }
  if (p.kind === 'regression') {
    const pairs: { pred: Record<string, number>; truth: Record<string, number> }[] = [];
    for (const r of rows) {
      const pred = numRecord(parse(r.pred));
      const truth = numRecord(parse(r.truth));
      if (pred && truth) pairs.push({ pred, truth });
    }
    return { ...base, labelled: pairs.length, regression: { targets: regressionErrors(pairs, p.targets.map((t) => t.name)) } };
  }
  const pairs = rows.map((r) => ({ alarm: r.label === ANOMALY, anomaly: r.truth === ANOMALY }));
  return { ...base, anomaly: anomalyKpis(pairs, stats.predictions, stats.alarms) };
}
