/**
 * The statistics behind drift alerts, on exact binned counts (PITFALLS "Drift statistics"):
 * a two-sample chi-square test of observed vs reference *counts* (the reference is a sample
 * too, so treating its proportions as exact gives false alarms at fleet sample sizes), the
 * chi-square survival function via the regularised incomplete gamma function, effect sizes
 * (PSI, Jensen-Shannon distance, mean shift in reference SDs), Benjamini-Hochberg, a two-sided
 * CUSUM over windows, and the fleet-relative (device vs pooled peers) comparison.
 * Pure functions; the default thresholds and the reasons for them are in DRIFT_THRESHOLDS.
 */

/**
 * Default alerting thresholds. A window finding needs significance AND effect: at fleet sample
 * sizes every tiny shift is significant, and at small samples effect sizes are mostly noise.
 */
export const DRIFT_THRESHOLDS = Object.freeze({
  /**
   * False-alarm budget per model version and day, from which the q threshold of each window is
   * derived: alpha = alphaPerDay × windowMs / 1 day (2.1e-5 for 15-min windows). BH at q ≤ α
   * bounds the chance that a window with no drift has any significant test by α (under the
   * chi-square approximation), so a day of windows stays within the budget even where the
   * effect gate cannot help: at ~300 readings a significant result is already ≥ 0.1 PSI. A fixed
   * 0.01 per window would give a significant test on ~60% of drift-free days at 96 windows per
   * day (1 − 0.99⁹⁶). The budget is 0.2%, 25× below the 5% target, because the approximation's
   * far tail is optimistic where BH decides (p ≈ 1e-8 among 2,000 tests): test/stats saw a
   * drift-free p of 2.2e-8 whose exact single-bin binomial tail alone is 1.0e-8.
   */
  alphaPerDay: 0.002,
  /** A fixed q threshold per window instead of the derived one (NaN: derive from alphaPerDay). */
  alpha: Number.NaN,
  /**
   * PSI at or above which a distribution change matters. 0.1 is the conventional "moderate
   * shift" line (credit scoring: < 0.1 none, 0.1–0.25 moderate, > 0.25 major). A pure location
   * shift of d SD gives PSI ≈ d² over decile bins, so 0.1 ≈ a 0.3 SD shift; shape changes
   * (spread, a stuck sensor) show in PSI but not in the mean.
   */
  psiMin: 0.1,
  /**
   * |mean shift| in reference SDs at or above which a location change matters: Cohen's "small"
   * effect. It sits 6 standard errors above the noise of a 15-min window of a 1 Hz device
   * (SE ≈ 1/√900 = 0.033) and below the 0.3 SD device shift the suite must find.
   */
  shiftMinSd: 0.2,
  /**
   * Cells are merged (adjacent bins; rarest categories) until every expected count is at least
   * this. Cochran's 5 is enough at p ≈ 0.05, but BH over thousands of tests decides at p ≈ 1e-6,
   * where sparse cells inflate the tail. Measured (n = 300 vs a large sample, 11 cells with
   * probabilities 0.002 … 0.3 like a confidence histogram, 3·10⁵ trials): rejections / nominal
   * at p < 1e-4 were 1.70 with 5 or 10, 0.97 with 20.
   */
  minExpected: 20,
  /** Probability floor for PSI (zero bins would make it infinite); 1e-4 is the usual choice. */
  psiEpsilon: 1e-4,
  /**
   * Tests with fewer observations are not run. The chi-square approximation is fine at
   * p ≈ 0.05 with 5 per cell, but BH over thousands of tests works in the far tail (the first
   * rejection needs p ≈ 4e-6 among 2,500 tests), where small samples reject too often. Measured
   * (10 equiprobable bins vs a large sample, 10⁶ trials): rejections / nominal at p < 1e-4 and
   * 1e-5 are 1.6 and 2.0 at n = 60, 1.3 and 1.5 at n = 100, ≈ 1 at n = 300. Devices with
   * fewer readings per window belong in a longer window (e.g. hourly), not in this one.
   */
  minCount: 100,
  /** A device is compared with its peers only when at least this many other devices report. */
  minPeers: 5,
  /**
   * CUSUM allowance k and threshold h, in reference SDs (window statistic: mean shift). A
   * persistent shift s > k alarms after about h / (s − k) windows: 0.15 SD after 10 windows,
   * 0.2 after 5, 0.35 after 2. In SD units (not z-scores) on purpose: the reference sample's
   * own error is the same in every window, so z-scores against it drift at fleet sample sizes
   * and a z-CUSUM would alarm on no change; k = 0.1 also stays above that error (SE 0.018 SD for
   * a 3,000-sample reference).
   */
  cusumK: 0.1,
  cusumH: 0.5,
  /** Windows with fewer readings do not update the CUSUM (SE > 0.07 SD would eat the allowance). */
  cusumMinCount: 200,
});
export type DriftThresholds = { -readonly [K in keyof typeof DRIFT_THRESHOLDS]: number };

// ---------------------------------------------------------------------------------------------
// Chi-square distribution

const LANCZOS = [
  0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905,
  -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
];

/** ln Γ(x) for x > 0 (Lanczos, g = 7; ~15 significant digits). */
export function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  const z = x - 1;
  let a = LANCZOS[0] as number;
  const t = z + 7.5;
  for (let i = 1; i < 9; i++) a += (LANCZOS[i] as number) / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

// ln Γ(df/2) for the degrees of freedom the detector meets, computed once (pure memo).
const HALF_LG = Array.from({ length: 1025 }, (_, k) => (k === 0 ? Number.NaN : logGamma(k / 2)));
const lnGamma = (a: number): number => {
  const k = 2 * a;
  return Number.isInteger(k) && k > 0 && k < HALF_LG.length ? (HALF_LG[k] as number) : logGamma(a);
};

const EPS = 1e-15;
const TINY = 1e-300;
const MAX_ITER = 10_000;

/** Series for P(a, x); converges fast for x < a + 1. */
function gammaPSeries(a: number, x: number): number {
  let ap = a;
  let term = 1 / a;
  let sum = term;
  for (let i = 0; i < MAX_ITER; i++) {
    ap += 1;
    term *= x / ap;
    sum += term;
    if (Math.abs(term) < Math.abs(sum) * EPS) break;
  }
  return sum * Math.exp(-x + a * Math.log(x) - lnGamma(a));
}

/** Continued fraction (modified Lentz) for Q(a, x); converges fast for x >= a + 1. */
function gammaQFraction(a: number, x: number): number {
  let b = x + 1 - a;
  let c = 1 / TINY;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < MAX_ITER; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < TINY) d = TINY;
    c = b + an / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < EPS) break;
  }
  return Math.exp(-x + a * Math.log(x) - lnGamma(a)) * h;
}

/** Regularised lower incomplete gamma P(a, x) = γ(a, x) / Γ(a). */
export function regularizedGammaP(a: number, x: number): number {
  if (!(a > 0) || Number.isNaN(x)) return Number.NaN;
  if (x <= 0) return 0;
  if (x === Infinity) return 1;
  return x < a + 1 ? gammaPSeries(a, x) : 1 - gammaQFraction(a, x);
}

/**
 * Regularised upper incomplete gamma Q(a, x) = 1 − P(a, x), computed directly in the upper
 * tail so that tiny p-values keep their precision instead of rounding 1 − P to 0.
 */
export function regularizedGammaQ(a: number, x: number): number {
  if (!(a > 0) || Number.isNaN(x)) return Number.NaN;
  if (x <= 0) return 1;
  if (x === Infinity) return 0;
  return x < a + 1 ? 1 - gammaPSeries(a, x) : gammaQFraction(a, x);
}

export function chiSquareCdf(stat: number, df: number): number {
  return regularizedGammaP(df / 2, stat / 2);
}

/** P(X ≥ stat) for X ~ χ²(df): the p-value of a chi-square statistic. */
export function chiSquareSf(stat: number, df: number): number {
  if (df <= 0) return 1;
  return regularizedGammaQ(df / 2, stat / 2);
}

// ---------------------------------------------------------------------------------------------
// Two-sample test on binned counts

export interface ChiSquareResult {
  stat: number;
  /** Degrees of freedom after merging sparse cells; 0 when nothing could be tested. */
  df: number;
  p: number;
  /** Cells actually tested (after merging). */
  cells: number;
}

export interface CountTestOptions {
  minExpected?: number;
  /**
   * true (default) for bins along an axis: sparse cells merge with their neighbours.
   * false for categories: cells are sorted by total first, so rare categories merge together.
   */
  ordered?: boolean;
}

/** Merged 2×K cells: sparse cells joined until every expected count reaches minExpected. */
function mergeCells(a: readonly number[], b: readonly number[], na: number, nb: number, minExpected: number, ordered: boolean): [number[], number[]] {
  let idx: number[] = [];
  for (let i = 0; i < a.length; i++) if ((a[i] as number) + (b[i] as number) > 0) idx.push(i);
  if (!ordered) idx = idx.sort((i, j) => (a[j] as number) + (b[j] as number) - ((a[i] as number) + (b[i] as number)));
  // Smallest expected count of a cell with column total C is min(na, nb) * C / N.
  const need = (minExpected * (na + nb)) / Math.min(na, nb);
  const ma: number[] = [];
  const mb: number[] = [];
  let ca = 0;
  let cb = 0;
  for (const i of idx) {
    ca += a[i] as number;
    cb += b[i] as number;
    if (ca + cb >= need) {
      ma.push(ca);
      mb.push(cb);
      ca = 0;
      cb = 0;
    }
  }
  if (ca + cb > 0) {
    if (ma.length > 0) {
      ma[ma.length - 1] = (ma[ma.length - 1] as number) + ca;
      mb[mb.length - 1] = (mb[mb.length - 1] as number) + cb;
    } else {
      ma.push(ca);
      mb.push(cb);
    }
  }
  return [ma, mb];
}

/**
 * Pearson chi-square test of homogeneity on the 2×K table [observed; reference]: are both
 * samples drawn from the same distribution? Both rows are counts, so the reference's own
 * sampling error is part of the test.
 */
export function chiSquareTwoSample(observed: readonly number[], reference: readonly number[], opts: CountTestOptions = {}): ChiSquareResult {
  if (observed.length !== reference.length) throw new RangeError(`count vectors differ in length: ${observed.length} vs ${reference.length}`);
  const na = sum(observed);
  const nb = sum(reference);
  if (!(na > 0) || !(nb > 0)) return { stat: 0, df: 0, p: 1, cells: 0 };
  const [a, b] = mergeCells(observed, reference, na, nb, opts.minExpected ?? DRIFT_THRESHOLDS.minExpected, opts.ordered ?? true);
  const n = na + nb;
  let stat = 0;
  for (let i = 0; i < a.length; i++) {
    const c = (a[i] as number) + (b[i] as number);
    const ea = (na * c) / n;
    const eb = (nb * c) / n;
    stat += ((a[i] as number) - ea) ** 2 / ea + ((b[i] as number) - eb) ** 2 / eb;
  }
  const df = a.length - 1;
  return { stat, df, p: df > 0 ? chiSquareSf(stat, df) : 1, cells: a.length };
}

// ---------------------------------------------------------------------------------------------
// Effect sizes

function sum(xs: readonly number[]): number {
  let s = 0;
  for (const x of xs) s += x;
  return s;
}

function normalise(counts: readonly number[], eps: number): number[] {
  const n = sum(counts);
  const k = counts.length;
  if (!(n > 0)) return counts.map(() => 1 / k);
  return counts.map((c) => (c / n + eps) / (1 + k * eps));
}

/**
 * Population stability index Σ (p − q) ln(p / q) between two binned distributions given as
 * counts. Each proportion gets `eps` added (then renormalised) so empty bins stay finite.
 */
export function psi(observed: readonly number[], reference: readonly number[], eps: number = DRIFT_THRESHOLDS.psiEpsilon): number {
  const p = normalise(observed, eps);
  const q = normalise(reference, eps);
  let s = 0;
  for (let i = 0; i < p.length; i++) s += ((p[i] as number) - (q[i] as number)) * Math.log((p[i] as number) / (q[i] as number));
  return s;
}

/**
 * Jensen-Shannon distance (square root of the divergence, log base 2) between two binned
 * distributions given as counts: 0 for identical, 1 for disjoint support. Needs no smoothing:
 * the mixture is positive wherever either distribution is.
 */
export function jsDistance(observed: readonly number[], reference: readonly number[]): number {
  const p = normalise(observed, 0);
  const q = normalise(reference, 0);
  let d = 0;
  for (let i = 0; i < p.length; i++) {
    const pi = p[i] as number;
    const qi = q[i] as number;
    const m = (pi + qi) / 2;
    if (pi > 0) d += 0.5 * pi * Math.log2(pi / m);
    if (qi > 0) d += 0.5 * qi * Math.log2(qi / m);
  }
  return Math.sqrt(Math.max(0, Math.min(1, d)));
}

/** Mean and (population) SD from count, sum and sum of squares. */
export function moments(n: number, s: number, sumSq: number): { mean: number; sd: number } {
  if (!(n > 0)) return { mean: Number.NaN, sd: Number.NaN };
  const mean = s / n;
  return { mean, sd: Math.sqrt(Math.max(0, sumSq / n - mean * mean)) };
}

/** (mean − baseline) in units of `sd` (the reference SD); null when sd is not positive. */
export function shiftInSd(mean: number, baseline: number, sd: number): number | null {
  if (!(sd > 0) || !Number.isFinite(mean) || !Number.isFinite(baseline)) return null;
  return (mean - baseline) / sd;
}

export interface CountComparison extends ChiSquareResult {
  psi: number;
  js: number;
  n: number;
  nRef: number;
}

/** Two-sample test plus effect sizes of observed vs reference counts. */
export function compareCounts(observed: readonly number[], reference: readonly number[], opts: CountTestOptions & { eps?: number } = {}): CountComparison {
  return {
    ...chiSquareTwoSample(observed, reference, opts),
    psi: psi(observed, reference, opts.eps),
    js: jsDistance(observed, reference),
    n: sum(observed),
    nRef: sum(reference),
  };
}

// ---------------------------------------------------------------------------------------------
// Multiple testing and monitoring over time

/**
 * Benjamini-Hochberg adjusted p-values (q-values), in input order: q(i) = min over j ≥ i of
 * p(j) · m / j on the sorted p-values, capped at 1. Rejecting q ≤ α controls the false
 * discovery rate at α (independent or positively dependent tests). NaN counts as 1.
 */
export function benjaminiHochberg(pValues: readonly number[]): number[] {
  const m = pValues.length;
  const order = pValues.map((p, i) => ({ p: Number.isNaN(p) ? 1 : p, i })).sort((x, y) => x.p - y.p);
  const q = new Array<number>(m).fill(1);
  let running = 1;
  for (let r = m - 1; r >= 0; r--) {
    const e = order[r] as { p: number; i: number };
    running = Math.min(running, (e.p * m) / (r + 1));
    q[e.i] = Math.min(1, running);
  }
  return q;
}

export interface CusumStep {
  alarm: boolean;
  /** Side that alarmed (or the larger side when none did). */
  direction: 'up' | 'down';
  up: number;
  down: number;
}

/**
 * Two-sided tabular CUSUM on a per-window statistic x (here: mean shift in reference SDs):
 * S⁺ = max(0, S⁺ + x − k), S⁻ = max(0, S⁻ − x − k), alarm when either exceeds h. After an
 * alarm both sides restart at 0, so a persisting shift alarms again after another run.
 */
export class Cusum {
  up = 0;
  down = 0;
  constructor(
    readonly k: number = DRIFT_THRESHOLDS.cusumK,
    readonly h: number = DRIFT_THRESHOLDS.cusumH,
  ) {}

  update(x: number): CusumStep {
    this.up = Math.max(0, this.up + x - this.k);
    this.down = Math.max(0, this.down - x - this.k);
    const direction = this.up >= this.down ? 'up' : 'down';
    const step = { alarm: this.up > this.h || this.down > this.h, direction, up: this.up, down: this.down } as const;
    if (step.alarm) this.reset();
    return step;
  }

  reset(): void {
    this.up = 0;
    this.down = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Fleet-relative outliers

export interface PeerInput {
  id: string;
  /** Binned counts, same layout for every device. */
  counts: readonly number[];
  /** Optional moments for the mean shift: number of finite values and their sum. */
  n?: number;
  sum?: number;
}

export interface PeerResult extends CountComparison {
  id: string;
  /** Device mean minus pooled peer mean, in units of `sd`; null without moments or sd. */
  shiftSd: number | null;
}

/**
 * Each device against the pooled counts of all *other* devices (total minus itself, exact
 * because counts add): a device whose distribution differs from its peers on the same model
 * version is found even when the fleet as a whole matches the reference.
 */
export function peerComparison(devices: readonly PeerInput[], opts: CountTestOptions & { eps?: number; sd?: number } = {}): PeerResult[] {
  const first = devices[0];
  if (!first) return [];
  const total = new Array<number>(first.counts.length).fill(0);
  let tn = 0;
  let ts = 0;
  for (const d of devices) {
    if (d.counts.length !== total.length) throw new RangeError(`device ${d.id}: ${d.counts.length} bins, expected ${total.length}`);
    for (let i = 0; i < total.length; i++) total[i] = (total[i] as number) + (d.counts[i] as number);
    tn += d.n ?? 0;
    ts += d.sum ?? 0;
  }
  return devices.map((d) => {
    const peers = total.map((t, i) => t - (d.counts[i] as number));
    const cmp = compareCounts(d.counts, peers, opts);
    let shiftSd: number | null = null;
    if (d.n !== undefined && d.sum !== undefined && d.n > 0 && tn - d.n > 0 && opts.sd !== undefined) {
      shiftSd = shiftInSd(d.sum / d.n, (ts - d.sum) / (tn - d.n), opts.sd);
    }
    return { id: d.id, ...cmp, shiftSd };
  });
}
