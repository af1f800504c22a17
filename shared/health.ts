/**
 * Health of a model version, from the count-only HealthWindow records (shared/updates.ts):
 * exact merging, the summary statistics read off the histograms (error rate, p95 latency, mean
 * top-1 confidence, class rates) and one comparison of a candidate against a baseline. The hub's
 * rollout gates compare canary devices with a control group; the agent's probation compares a
 * new version with the version it replaced. Both use `compareHealth`, so a device and its hub
 * judge a release by the same rules.
 *
 * Every breach needs an effect larger than its threshold AND a significance test below `alpha`
 * (PITFALLS "Drift statistics": at fleet sample sizes every tiny shift is significant; at a
 * canary's sample sizes a large-looking effect can be chance). Latency also needs a minimum
 * absolute delta, so sub-millisecond noise on a fast model never breaches whatever its ratio.
 *
 * Merging is a plain sum and is not idempotent: callers pass each window once (the hub stores
 * outbox records exactly once per (device, stream, epoch, seq)).
 */
import { z } from 'zod';
import { chiSquareSf, chiSquareTwoSample } from './drift/stats.ts';
import { CONFIDENCE_BINS, LATENCY_EDGES_MS, type HealthWindow } from './updates.ts';

/** Summed counts of any number of HealthWindows (same layout as one window, without identity). */
export interface HealthTotals {
  ok: number;
  errors: number;
  /** LATENCY_EDGES_MS.length + 1 counts. */
  latency: number[];
  /** Class counts in label order (the longest of the merged windows; shorter ones pad with 0). */
  classCounts: number[];
  /** CONFIDENCE_BINS counts. */
  confidence: number[];
  /** How many windows were merged. */
  windows: number;
}

export const LATENCY_BUCKETS = LATENCY_EDGES_MS.length + 1;

export function emptyTotals(classes = 0): HealthTotals {
  return {
    ok: 0,
    errors: 0,
    latency: new Array<number>(LATENCY_BUCKETS).fill(0),
    classCounts: new Array<number>(classes).fill(0),
    confidence: new Array<number>(CONFIDENCE_BINS).fill(0),
    windows: 0,
  };
}

function addInto(into: number[], xs: readonly number[]): void {
  for (let i = 0; i < xs.length; i++) into[i] = (into[i] ?? 0) + (xs[i] as number);
}

/** Adds `w` (a window or totals) into `into`, in place. */
export function addHealth(into: HealthTotals, w: Pick<HealthWindow, 'ok' | 'errors' | 'latency' | 'classCounts' | 'confidence'>): HealthTotals {
  into.ok += w.ok;
  into.errors += w.errors;
  addInto(into.latency, w.latency);
  addInto(into.classCounts, w.classCounts);
  addInto(into.confidence, w.confidence);
  into.windows += 'windows' in w && typeof w.windows === 'number' ? w.windows : 1;
  return into;
}

/** Exact sum of windows: merging windows gives the same totals as the windows of their union. */
export function mergeHealth(windows: readonly HealthWindow[]): HealthTotals {
  const t = emptyTotals();
  for (const w of windows) addHealth(t, w);
  return t;
}

const total = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

/** Requests seen (results and engine failures). */
export function samples(t: HealthTotals): number {
  return t.ok + t.errors;
}

/** errors / (ok + errors); 0 with no requests. */
export function errorRate(t: HealthTotals): number {
  const n = samples(t);
  return n > 0 ? t.errors / n : 0;
}

/**
 * Latency quantile from the histogram, interpolated linearly inside the bucket that holds it
 * (bucket i spans (edge[i-1], edge[i]], bucket 0 starts at 0). In the overflow bucket it returns
 * the last edge: a lower bound. NaN with no observations.
 */
export function latencyQuantileMs(t: Pick<HealthTotals, 'latency'>, q: number): number {
  const n = total(t.latency);
  if (!(n > 0)) return Number.NaN;
  const rank = q * n;
  let cum = 0;
  for (let i = 0; i < t.latency.length; i++) {
    const c = t.latency[i] as number;
    if (c > 0 && cum + c >= rank) {
      if (i >= LATENCY_EDGES_MS.length) return LATENCY_EDGES_MS[LATENCY_EDGES_MS.length - 1] as number;
      const lo = i === 0 ? 0 : (LATENCY_EDGES_MS[i - 1] as number);
      const hi = LATENCY_EDGES_MS[i] as number;
      return lo + ((hi - lo) * Math.max(0, rank - cum)) / c;
    }
    cum += c;
  }
  return LATENCY_EDGES_MS[LATENCY_EDGES_MS.length - 1] as number;
}

export function p95LatencyMs(t: Pick<HealthTotals, 'latency'>): number {
  return latencyQuantileMs(t, 0.95);
}

/** Mean top-1 confidence from the histogram (bin midpoints); NaN with no observations. */
export function meanConfidence(t: Pick<HealthTotals, 'confidence'>): number {
  const n = total(t.confidence);
  if (!(n > 0)) return Number.NaN;
  const k = t.confidence.length;
  let s = 0;
  for (let i = 0; i < k; i++) s += (t.confidence[i] as number) * ((i + 0.5) / k);
  return s / n;
}

/** Predicted-class proportions (all zero with no observations). */
export function classRates(t: Pick<HealthTotals, 'classCounts'>): number[] {
  const n = total(t.classCounts);
  return t.classCounts.map((c) => (n > 0 ? c / n : 0));
}

/** Total variation distance between two count vectors' proportions (padded to one length). */
export function totalVariation(a: readonly number[], b: readonly number[]): number {
  const k = Math.max(a.length, b.length);
  const pa = classRates({ classCounts: pad(a, k) });
  const pb = classRates({ classCounts: pad(b, k) });
  let d = 0;
  for (let i = 0; i < k; i++) d += Math.abs((pa[i] as number) - (pb[i] as number));
  return d / 2;
}

function pad(xs: readonly number[], k: number): number[] {
  const out = xs.slice();
  while (out.length < k) out.push(0);
  return out;
}

/** Two-sided p-value of the pooled two-proportion z test (exact enough from ~10 events). */
export function twoProportionP(x1: number, n1: number, x2: number, n2: number): number {
  if (!(n1 > 0) || !(n2 > 0)) return 1;
  const pooled = (x1 + x2) / (n1 + n2);
  const v = pooled * (1 - pooled) * (1 / n1 + 1 / n2);
  if (!(v > 0)) return x1 / n1 === x2 / n2 ? 1 : 0;
  const z = (x1 / n1 - x2 / n2) / Math.sqrt(v);
  return chiSquareSf(z * z, 1);
}

export const GateThresholdsSchema = z.object({
  /** Requests each side needs before any verdict other than `insufficient`. */
  minSamples: z.number().int().positive().default(200),
  /** Significance level every breach must also reach. */
  alpha: z.number().positive().max(0.5).default(0.001),
  /** Absolute increase of the error rate (0.02 = two percentage points). */
  maxErrorRateIncrease: z.number().min(0).max(1).default(0.02),
  /** candidate p95 / baseline p95 ... */
  maxLatencyRatio: z.number().min(1).default(1.5),
  /** ... and candidate p95 − baseline p95 (ms) must both be exceeded. */
  minLatencyDeltaMs: z.number().min(0).default(2),
  /** Total variation distance between predicted-class rates. */
  maxClassShift: z.number().min(0).max(1).default(0.15),
  /** Drop of the mean top-1 confidence. */
  maxConfidenceDrop: z.number().min(0).max(1).default(0.1),
});
export type GateThresholds = z.infer<typeof GateThresholdsSchema>;
export type GateThresholdsInput = z.input<typeof GateThresholdsSchema>;

export type HealthMetric = 'error_rate' | 'latency_p95' | 'class_shift' | 'confidence';

export interface HealthBreach {
  metric: HealthMetric;
  candidate: number;
  baseline: number;
  limit: number;
  detail: string;
}

export interface HealthComparison {
  verdict: 'pass' | 'fail' | 'insufficient';
  breaches: HealthBreach[];
  samples: { candidate: number; baseline: number };
}

const fmt = (x: number, d = 3): string => (Number.isFinite(x) ? x.toFixed(d) : String(x));
const fmtP = (p: number): string => p.toExponential(1);

/**
 * Is `candidate` clearly worse than `baseline`? `insufficient` while either side has fewer than
 * `minSamples` requests; otherwise `fail` with every breach, or `pass`. A metric whose own
 * observations (latencies, confidences, classes) fall short of `minSamples` on either side is
 * not judged. Class shift is two-sided (any change of the output distribution); the others only
 * count a change for the worse.
 */
export function compareHealth(candidate: HealthTotals, baseline: HealthTotals, t: GateThresholds): HealthComparison {
  const n = { candidate: samples(candidate), baseline: samples(baseline) };
  if (n.candidate < t.minSamples || n.baseline < t.minSamples) return { verdict: 'insufficient', breaches: [], samples: n };
  const breaches: HealthBreach[] = [];

  const ec = errorRate(candidate);
  const eb = errorRate(baseline);
  if (ec - eb > t.maxErrorRateIncrease) {
    const p = twoProportionP(candidate.errors, n.candidate, baseline.errors, n.baseline);
    if (p < t.alpha) {
      breaches.push({
        metric: 'error_rate',
        candidate: ec,
        baseline: eb,
        limit: eb + t.maxErrorRateIncrease,
        detail: `error rate ${fmt(ec)} vs ${fmt(eb)} (+${fmt(ec - eb)} > ${t.maxErrorRateIncrease}, p=${fmtP(p)})`,
      });
    }
  }

  if (total(candidate.latency) >= t.minSamples && total(baseline.latency) >= t.minSamples) {
    const lc = p95LatencyMs(candidate);
    const lb = p95LatencyMs(baseline);
    const limit = Math.max(lb * t.maxLatencyRatio, lb + t.minLatencyDeltaMs);
    if (lc > limit) {
      const { p } = chiSquareTwoSample(candidate.latency, baseline.latency, { ordered: true });
      if (p < t.alpha) {
        breaches.push({
          metric: 'latency_p95',
          candidate: lc,
          baseline: lb,
          limit,
          detail: `p95 latency ${fmt(lc, 2)} ms vs ${fmt(lb, 2)} ms (limit ${fmt(limit, 2)} ms, p=${fmtP(p)})`,
        });
      }
    }
  }

  const cc = total(candidate.classCounts);
  const cb = total(baseline.classCounts);
  if (cc >= t.minSamples && cb >= t.minSamples) {
    const tvd = totalVariation(candidate.classCounts, baseline.classCounts);
    if (tvd > t.maxClassShift) {
      const k = Math.max(candidate.classCounts.length, baseline.classCounts.length);
      const { p } = chiSquareTwoSample(pad(candidate.classCounts, k), pad(baseline.classCounts, k), { ordered: false });
      if (p < t.alpha) {
        breaches.push({
          metric: 'class_shift',
          candidate: tvd,
          baseline: 0,
          limit: t.maxClassShift,
          detail: `class rates moved by ${fmt(tvd)} (total variation > ${t.maxClassShift}, p=${fmtP(p)})`,
        });
      }
    }
  }

  if (total(candidate.confidence) >= t.minSamples && total(baseline.confidence) >= t.minSamples) {
    const mc = meanConfidence(candidate);
    const mb = meanConfidence(baseline);
    if (mb - mc > t.maxConfidenceDrop) {
      const { p } = chiSquareTwoSample(candidate.confidence, baseline.confidence, { ordered: true });
      if (p < t.alpha) {
        breaches.push({
          metric: 'confidence',
          candidate: mc,
          baseline: mb,
          limit: mb - t.maxConfidenceDrop,
          detail: `mean confidence ${fmt(mc)} vs ${fmt(mb)} (drop ${fmt(mb - mc)} > ${t.maxConfidenceDrop}, p=${fmtP(p)})`,
        });
      }
    }
  }

  return { verdict: breaches.length ? 'fail' : 'pass', breaches, samples: n };
}

/** Bucket index of a latency (ms) in LATENCY_EDGES_MS. */
export function latencyBucket(ms: number): number {
  if (!(ms > LATENCY_EDGES_MS[0])) return 0;
  let lo = 0;
  let hi: number = LATENCY_EDGES_MS.length;
  // First edge >= ms; LATENCY_EDGES_MS.length when beyond the last edge.
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((LATENCY_EDGES_MS[mid] as number) >= ms) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Bin index of a top-1 confidence in [0, 1] (1 falls in the last bin; NaN in the first). */
export function confidenceBin(c: number): number {
  if (!(c > 0)) return 0;
  return Math.min(CONFIDENCE_BINS - 1, Math.floor(c * CONFIDENCE_BINS));
}
