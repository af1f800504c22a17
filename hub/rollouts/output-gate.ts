/**
 * The output gate of a baking wave (issue #13): manifest v2 tasks other than classification have
 * no class mix or top-1 confidence to compare, so their HealthWindow records carry the moments
 * (n, sum, sum of squares) of one task output statistic (`output`, shared/updates.ts): the
 * anomaly `alarm` (a 0/1 rate), detections per frame (`count`) or the first regression target (a
 * mean). The candidate's is compared with the baseline's by the same rules as the agent's
 * probation (agent/health/probation.ts `compareOutput`) and the other gates (shared/health.ts):
 *
 * - rate: |candidate rate − baseline rate| > `maxAlarmRateShift` (absolute) AND the pooled
 *   two-proportion test p < `alpha`;
 * - mean: |candidate mean − baseline mean| > `maxOutputShiftSd` baseline SDs (the candidate's SD
 *   when the baseline never varied) AND a Welch z test p < `alpha`.
 *
 * Two-sided: without labels the hub cannot tell a better model from a broken one, only that its
 * outputs moved a lot. `insufficient` (no verdict) while either side has fewer than `minSamples`
 * values; `not_compared` when only one side reports a statistic, the two report different ones
 * (a renamed target, another task) or one side mixes statistics, or `compareOutputs` is off.
 * When neither side reports one (classifiers, agents older than the field) there is no output
 * gate at all and the gate result is what it always was.
 */
import { z } from 'zod';
import { chiSquareSf } from '../../shared/drift/stats.ts';
import { twoProportionP, type GateThresholds } from '../../shared/health.ts';
import type { HealthOutput, HealthWindow } from '../../shared/updates.ts';

/** Output gate thresholds, part of the rollout's `gates` (hub/rollouts/spec.ts). */
export const OutputGateThresholdsSchema = z.object({
  /** Compare the task output statistic of non-classification tasks at all. */
  compareOutputs: z.boolean().default(true),
  /** Absolute change of the anomaly alarm rate (0.05 = five percentage points). */
  maxAlarmRateShift: z.number().min(0).max(1).default(0.05),
  /** Change of the mean output (detections per frame, first regression target) in baseline SDs. */
  maxOutputShiftSd: z.number().min(0).default(0.5),
});
export type OutputGateThresholds = z.infer<typeof OutputGateThresholdsSchema>;

/** Summed `output` of the windows of one side. */
export interface OutputSide {
  statistic: string;
  kind: 'rate' | 'mean';
  n: number;
  sum: number;
  sumSq: number;
  /** Windows that reported it. */
  windows: number;
}

/** What one side's windows report: nothing, one statistic, or several (not comparable). */
export type OutputMerge = { kind: 'none' } | { kind: 'one'; side: OutputSide } | { kind: 'mixed'; statistics: string[] };

export interface OutputGateResult {
  verdict: 'pass' | 'fail' | 'insufficient' | 'not_compared';
  statistic: string | null;
  kind: 'rate' | 'mean' | null;
  /** Values seen and their mean (rate for `rate`); null for a side that reports none (or mixes). */
  candidate: { n: number; mean: number } | null;
  baseline: { n: number; mean: number; sd: number } | null;
  /** |rate difference| for `rate`, |mean difference| in baseline SDs for `mean`. */
  effect: number | null;
  limit: number | null;
  p: number | null;
  detail: string;
}

export type OutputMetric = 'output_rate' | 'output_mean';

const key = (o: HealthOutput): string => `${o.name}:${o.kind}`;

export function mergeOutputs(windows: readonly HealthWindow[]): OutputMerge {
  const by = new Map<string, OutputSide>();
  for (const w of windows) {
    const o = w.output;
    if (!o) continue;
    let s = by.get(key(o));
    if (!s) {
      s = { statistic: o.name, kind: o.kind, n: 0, sum: 0, sumSq: 0, windows: 0 };
      by.set(key(o), s);
    }
    s.n += o.n;
    s.sum += o.sum;
    s.sumSq += o.sumSq;
    s.windows++;
  }
  if (by.size === 0) return { kind: 'none' };
  const [only] = by.values();
  if (by.size === 1 && only) return { kind: 'one', side: only };
  return { kind: 'mixed', statistics: [...by.keys()].sort() };
}

const fmt = (x: number, d = 3): string => (Number.isFinite(x) ? x.toFixed(d) : String(x));

function describe(m: OutputMerge): string {
  return m.kind === 'none' ? 'none' : m.kind === 'one' ? `${m.side.statistic} (${m.side.kind})` : `several (${m.statistics.join(', ')})`;
}

/** Sample variance from moments (0 with fewer than two values). */
function variance(s: OutputSide, mean: number): number {
  if (s.n < 2) return 0;
  return (Math.max(0, s.sumSq / s.n - mean * mean) * s.n) / (s.n - 1);
}

/**
 * The output gate of `candidate` against `baseline` windows; undefined when neither reports a
 * task output statistic (see the module header).
 */
export function compareOutputGate(candidate: readonly HealthWindow[], baseline: readonly HealthWindow[], t: GateThresholds & OutputGateThresholds): OutputGateResult | undefined {
  const c = mergeOutputs(candidate);
  const b = mergeOutputs(baseline);
  if (c.kind === 'none' && b.kind === 'none') return undefined;
  const none = { candidate: null, baseline: null, effect: null, limit: null, p: null };
  const statOf = (m: OutputMerge): Pick<OutputGateResult, 'statistic' | 'kind'> =>
    m.kind === 'one' ? { statistic: m.side.statistic, kind: m.side.kind } : { statistic: null, kind: null };
  if (!t.compareOutputs) return { verdict: 'not_compared', ...statOf(c), ...none, detail: 'output gate turned off (gates.compareOutputs: false)' };
  if (c.kind !== 'one' || b.kind !== 'one' || c.side.statistic !== b.side.statistic || c.side.kind !== b.side.kind) {
    return { verdict: 'not_compared', ...statOf(c), ...none, detail: `output statistics differ: candidate ${describe(c)}, baseline ${describe(b)}` };
  }
  const cs = c.side;
  const bs = b.side;
  const mc = cs.n > 0 ? cs.sum / cs.n : Number.NaN;
  const mb = bs.n > 0 ? bs.sum / bs.n : Number.NaN;
  const vb = bs.n > 0 ? variance(bs, mb) : Number.NaN;
  const base = {
    statistic: cs.statistic,
    kind: cs.kind,
    candidate: { n: cs.n, mean: mc },
    baseline: { n: bs.n, mean: mb, sd: Math.sqrt(vb) },
  };
  if (cs.n < t.minSamples || bs.n < t.minSamples) {
    return { verdict: 'insufficient', ...base, effect: null, limit: null, p: null, detail: `${cs.statistic}: ${cs.n} vs ${bs.n} values (fewer than ${t.minSamples}), no verdict` };
  }
  if (cs.kind === 'rate') {
    const clamp = (s: OutputSide): number => Math.min(s.n, Math.max(0, s.sum));
    const effect = Math.abs(mc - mb);
    const p = twoProportionP(clamp(cs), cs.n, clamp(bs), bs.n);
    const fail = effect > t.maxAlarmRateShift && p < t.alpha;
    return {
      verdict: fail ? 'fail' : 'pass',
      ...base,
      effect,
      limit: t.maxAlarmRateShift,
      p,
      detail: `${cs.statistic} rate ${fmt(mc)} vs ${fmt(mb)} (${mc >= mb ? '+' : '−'}${fmt(effect)}, limit ${t.maxAlarmRateShift}, p=${p.toExponential(1)})`,
    };
  }
  const vc = variance(cs, mc);
  const d = mc - mb;
  // Effect in the baseline's SDs (the candidate's when the baseline never varied).
  const sd = Math.sqrt(vb > 0 ? vb : vc);
  const effect = sd > 0 ? Math.abs(d) / sd : d === 0 ? 0 : Number.POSITIVE_INFINITY;
  const se = Math.sqrt(vc / cs.n + vb / bs.n);
  const p = se > 0 ? chiSquareSf((d / se) ** 2, 1) : d === 0 ? 1 : 0;
  const fail = effect > t.maxOutputShiftSd && p < t.alpha;
  return {
    verdict: fail ? 'fail' : 'pass',
    ...base,
    effect,
    limit: t.maxOutputShiftSd,
    p,
    detail: `mean ${cs.statistic} ${fmt(mc)} vs ${fmt(mb)} (${d >= 0 ? '+' : '−'}${fmt(effect, 2)} SD, limit ${t.maxOutputShiftSd} SD, p=${p.toExponential(1)})`,
  };
}
