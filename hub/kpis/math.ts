/**
 * The arithmetic of the KPIs, as pure functions so the unit tests can check each number:
 * Wilson score interval for realized accuracy, business cost from a confusion count and the
 * operator's cost matrix, and a device's online fraction from its presence changes.
 *
 * Why Wilson and not the normal approximation: feedback is sparse (a few labelled items per
 * window is common) and accuracy sits near 1, where p ± z·sqrt(p(1-p)/n) collapses to a zero
 * width interval at p = 1 or spills past 1. Wilson stays inside [0, 1] and keeps a sensible
 * width at small n.
 */
import type { CostMatrix } from './config.ts';

/** z for a two-sided 95% interval. */
export const Z95 = 1.959963984540054;

/** Wilson score interval of `successes` out of `n`; undefined when n = 0. */
export function wilsonInterval(successes: number, n: number, z = Z95): { lo: number; hi: number } | undefined {
  if (!(n > 0)) return undefined;
  const p = successes / n;
  const z2 = z * z;
  const denom = 1 + z2 / n;
  const centre = (p + z2 / (2 * n)) / denom;
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n))) / denom;
  // At 0 or n successes the bound is exactly 0 or 1; rounding must not put p outside it.
  return { lo: successes <= 0 ? 0 : Math.max(0, centre - half), hi: successes >= n ? 1 : Math.min(1, centre + half) };
}

/** Cost of predicting `label` when the truth is `truth` (pairs the matrix does not list cost 0). */
export function pairCost(matrix: CostMatrix, truth: string, label: string): number {
  return matrix[truth]?.[label] ?? 0;
}

export interface BusinessCost {
  /** Labelled predictions the realized cost is measured on. */
  labelled: number;
  /** Sum of the cost of every labelled prediction. */
  total: number;
  /** total / labelled × 1000: the realized cost per 1,000 inferences, if the labelled ones are representative. */
  per1000: number | null;
  /**
   * Per 1,000 predictions of the whole period, with each predicted class weighted by how often
   * it was predicted overall and costed by its labelled predictions: corrects for feedback that
   * samples some predicted classes more than others (operators often check every reject and a
   * few passes). Null without labels.
   */
  expectedPer1000: number | null;
  /** Fraction of all predictions whose predicted class had labelled examples (what `expectedPer1000` covers). */
  coverage: number;
}

/**
 * Business cost from labelled (truth, predicted) counts and all predictions by predicted class.
 * `predicted` may be empty, then `expectedPer1000` weighs classes by their labelled counts.
 */
export function businessCost(
  matrix: CostMatrix,
  confusion: readonly { truth: string; label: string; n: number }[],
  predicted: readonly { label: string; n: number }[],
): BusinessCost {
  let labelled = 0;
  let total = 0;
  const byPred = new Map<string, { n: number; cost: number }>();
  for (const c of confusion) {
    const cost = c.n * pairCost(matrix, c.truth, c.label);
    labelled += c.n;
    total += cost;
    const p = byPred.get(c.label) ?? { n: 0, cost: 0 };
    p.n += c.n;
    p.cost += cost;
    byPred.set(c.label, p);
  }
  const weights = predicted.length ? predicted : [...byPred].map(([label, p]) => ({ label, n: p.n }));
  const all = weights.reduce((s, w) => s + w.n, 0);
  let covered = 0;
  let expected = 0;
  for (const w of weights) {
    const p = byPred.get(w.label);
    if (!p || p.n === 0) continue;
    covered += w.n;
    expected += w.n * (p.cost / p.n);
  }
  return {
    labelled,
    total,
    per1000: labelled > 0 ? (total / labelled) * 1000 : null,
    expectedPer1000: covered > 0 ? (expected / covered) * 1000 : null,
    coverage: all > 0 ? covered / all : 0,
  };
}

/**
 * Fraction of [from, to) a device was online, from its presence changes sorted by time: the
 * last change before `from` gives the state at `from` (none: offline, the hub never saw it
 * online before), then each change switches the state. 0 for an empty period.
 */
export function onlineFraction(changes: readonly { ts: number; online: boolean }[], from: number, to: number): number {
  if (!(to > from)) return 0;
  let online = false;
  let t = from;
  let up = 0;
  for (const c of changes) {
    if (c.ts <= from) {
      online = c.online;
      continue;
    }
    if (c.ts >= to) break;
    if (online) up += c.ts - t;
    t = c.ts;
    online = c.online;
  }
  if (online) up += to - t;
  return up / (to - from);
}
