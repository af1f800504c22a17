/**
 * Fleet drift detection for one model version: takes the per-device aggregates of one window,
 * tests the fleet and each group against the reference counts shipped in the manifest, tests
 * each device against its pooled peers (fleet-relative outliers), controls false discoveries
 * across all of those tests with Benjamini-Hochberg, requires effect size AND significance,
 * and runs a CUSUM per (scope, feature) over windows for slow, persistent shifts.
 * Pure and synchronous; the hub's drift component owns storage, scheduling and alerting.
 */
import { EdgefleetError, ErrorCode } from '../errors.ts';
import type { Manifest, ReferenceBins } from '../manifest.ts';
import type { ModelRef } from '../protocol.ts';
import { combineAggregates, modelKey } from './merge.ts';
import type { DriftAggregate, DriftScope } from './merge.ts';
import { benjaminiHochberg, chiSquareTwoSample, Cusum, DRIFT_THRESHOLDS, jsDistance, moments, psi, shiftInSd } from './stats.ts';
import type { ChiSquareResult, DriftThresholds } from './stats.ts';
import type { OutputSummary } from './summary.ts';

export interface DriftReference {
  /** When set, evaluate() refuses windows of another model version. */
  model?: ModelRef;
  features: readonly ReferenceBins[];
  /** Reference predicted-class counts in label order (counts, not rates: see PITFALLS). */
  classCounts?: readonly number[];
}

/**
 * The reference of a manifest. The manifest stores class *rates* of its evaluation set;
 * make-models writes them as count / samples to 6 significant digits, so rounding
 * rate × evaluation.samples recovers the counts exactly.
 */
export function referenceFromManifest(m: Manifest): DriftReference {
  const rates = m.drift?.classRates;
  const samples = m.evaluation?.samples;
  return {
    model: { name: m.name, version: m.version },
    features: m.drift?.features ?? [],
    ...(rates && samples ? { classCounts: rates.map((r) => Math.round(r * samples)) } : {}),
  };
}

export interface FleetWindow {
  /** Per-device aggregates of one model version and one window (groupSummaries by 'device'). */
  devices: readonly DriftAggregate[];
  /** Group of a device (e.g. production line), for group-scope tests. */
  groupOf?: (deviceId: string) => string | undefined;
}

export type DriftDirection = 'up' | 'down' | 'changed';

export interface DriftFinding {
  /** `window`: this window's test passed both gates. `trend`: the CUSUM over windows alarmed. */
  kind: 'window' | 'trend';
  scope: DriftScope;
  /** Device id, group name or `fleet`. */
  id: string;
  model: ModelRef;
  windowStart: number;
  windowMs: number;
  /** Input feature name, or `output:class|confidence|margin|entropy`. */
  feature: string;
  against: 'reference' | 'peers';
  /** Observations in the tested window (scope side). */
  n: number;
  effect: { psi: number; js: number; shiftSd: number | null };
  /** Chi-square p and BH q of the window test (null for trend findings). */
  p: number | null;
  q: number | null;
  direction: DriftDirection;
  message: string;
}

export interface DriftReport {
  model: ModelRef;
  windowStart: number;
  windowMs: number;
  devices: number;
  count: number;
  /** Tests in the BH family of this window. */
  tests: number;
  /** q threshold used for this window (see DRIFT_THRESHOLDS.alphaPerDay). */
  alpha: number;
  /** Tests with q ≤ alpha, whether or not the effect was large enough to report. */
  significant: number;
  findings: DriftFinding[];
  /** One line per (scope kind, feature, direction), e.g. "vib_rms up 0.31 SD on 10 of 200 devices". */
  headlines: string[];
}

interface TestCase {
  scope: DriftScope;
  id: string;
  feature: string;
  against: 'reference' | 'peers';
  obs: readonly number[];
  ref: readonly number[];
  n: number;
  /**
   * Two-sample chi-square on the bins. No extra test on means: a Welch test from the device's
   * own moments is anti-conservative on skewed features at small n (measured 4× too many
   * rejections at p < 1e-3, n = 60, log-normal); the binned test does not depend on the shape.
   */
  chi: ChiSquareResult;
  /** PSI and JS, computed only for cases that are significant (they cost logs per bin). */
  effect?: { psi: number; js: number };
  shiftSd: number | null;
  /** Readings behind shiftSd, for the CUSUM's minimum. */
  nFinite: number;
  peers: number;
}

const OUTPUT_HISTS = ['confidence', 'margin', 'entropy'] as const;

/** z of a device's window mean against the reference mean beyond which it no longer counts as a clean peer (p ≈ 6e-5). */
const MOVED_Z = 4;

/** Summed counts and moments of one numeric feature over some devices. */
interface PeerPool {
  counts: number[];
  nan: number;
  sum: number;
  sumSq: number;
  devices: number;
}

function sub(a: readonly number[], b: readonly number[]): number[] {
  return a.map((x, i) => x - (b[i] as number));
}

function withNan(counts: readonly number[], nan: number, refNan: number): readonly number[] {
  return nan > 0 || refNan > 0 ? [...counts, nan] : counts;
}

const fmt = (x: number, d = 2): string => (Math.abs(x) >= 0.005 || x === 0 ? x.toFixed(d) : x.toExponential(0));
const fmtQ = (q: number): string => (q >= 0.001 ? q.toFixed(3) : q.toExponential(0));

export class FleetDriftDetector {
  readonly thresholds: DriftThresholds;
  readonly #ref: DriftReference;
  readonly #refByName: Map<string, ReferenceBins>;
  readonly #cusums = new Map<string, Cusum>();

  constructor(reference: DriftReference, thresholds: Partial<DriftThresholds> = {}) {
    this.#ref = reference;
    this.#refByName = new Map(reference.features.map((f) => [f.name, f]));
    this.thresholds = { ...DRIFT_THRESHOLDS, ...thresholds };
  }

  /** Forgets the CUSUM state (e.g. after the reference changed). */
  reset(): void {
    this.#cusums.clear();
  }

  /** Tests one window; call in window order per model version (the CUSUMs carry state). */
  evaluate(window: FleetWindow): DriftReport {
    const t = this.thresholds;
    const devices = window.devices.filter((d) => d.count > 0);
    const first = window.devices[0];
    if (!first) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'evaluate needs at least one device aggregate');
    const model = first.model;
    if (this.#ref.model && modelKey(this.#ref.model) !== modelKey(model)) {
      throw new EdgefleetError(ErrorCode.CONFLICT, `reference is for ${modelKey(this.#ref.model)}, window is ${modelKey(model)}`);
    }
    for (const d of window.devices) {
      if (d.windowStart !== first.windowStart || d.windowMs !== first.windowMs || modelKey(d.model) !== modelKey(model)) {
        throw new EdgefleetError(ErrorCode.BAD_INPUT, `device ${d.id} aggregate is not of the same model version and window`);
      }
    }
    const at = { windowStart: first.windowStart, windowMs: first.windowMs };
    const alpha = Number.isNaN(t.alpha) ? Math.min(t.alphaPerDay, (t.alphaPerDay * at.windowMs) / 86_400_000) : t.alpha;
    const report: DriftReport = { model, ...at, devices: devices.length, count: 0, tests: 0, alpha, significant: 0, findings: [], headlines: [] };
    if (devices.length === 0) return report;

    const fleet = combineAggregates(devices, { scope: 'fleet', id: 'fleet', ...at });
    report.count = fleet.count;
    const cases: TestCase[] = [];
    this.#referenceTests(fleet, cases);
    if (window.groupOf) {
      const groups = new Map<string, DriftAggregate[]>();
      for (const d of devices) {
        const g = window.groupOf(d.id);
        if (g !== undefined) groups.set(g, [...(groups.get(g) ?? []), d]);
      }
      for (const [g, members] of [...groups].sort(([a], [b]) => a.localeCompare(b))) {
        this.#referenceTests(combineAggregates(members, { scope: 'group', id: g, ...at }), cases);
      }
    }
    const clean = this.#cleanPools(devices);
    for (const d of devices) {
      if (devices.length - 1 >= t.minPeers) this.#peerTests(d, fleet, devices.length - 1, clean, cases);
      else this.#referenceTests(d, cases);
    }

    const q = benjaminiHochberg(cases.map((c) => c.chi.p));
    report.tests = cases.length;
    const flagged = new Set<string>();
    for (const [i, c] of cases.entries()) {
      const qi = q[i] as number;
      if (qi > alpha) continue;
      report.significant++;
      const e = this.#effect(c);
      if (e.psi >= t.psiMin || (c.shiftSd !== null && Math.abs(c.shiftSd) >= t.shiftMinSd)) {
        const key = `${c.scope}\u0000${c.id}\u0000${c.feature}`;
        flagged.add(key);
        report.findings.push(this.#finding('window', c, model, at, c.chi.p, qi));
      }
    }
    // CUSUM after the window tests, so a stream flagged this window is not reported twice.
    for (const c of cases) {
      if (c.shiftSd === null || c.nFinite < t.cusumMinCount) continue;
      const key = `${c.scope}\u0000${c.id}\u0000${c.feature}`;
      let cu = this.#cusums.get(key);
      if (!cu) {
        cu = new Cusum(t.cusumK, t.cusumH);
        this.#cusums.set(key, cu);
      }
      const step = cu.update(c.shiftSd);
      if (step.alarm && !flagged.has(key)) {
        const f = this.#finding('trend', c, model, at, null, null);
        f.direction = step.direction;
        f.message = `${c.feature} drifting ${step.direction} over recent windows (CUSUM; this window ${signed(c.shiftSd)} SD) ${where(c)}`;
        report.findings.push(f);
      }
    }
    report.findings.sort((a, b) => (a.q ?? 2) - (b.q ?? 2) || a.id.localeCompare(b.id) || a.feature.localeCompare(b.feature));
    report.headlines = headlines(report.findings, devices.length);
    return report;
  }

  #effect(c: TestCase): { psi: number; js: number } {
    c.effect ??= { psi: psi(c.obs, c.ref, this.thresholds.psiEpsilon), js: jsDistance(c.obs, c.ref) };
    return c.effect;
  }

  #case(base: Omit<TestCase, 'obs' | 'ref' | 'n' | 'chi'>, obs: readonly number[], ref: readonly number[], ordered: boolean): TestCase {
    const t = this.thresholds;
    return { ...base, obs, ref, n: obs.reduce((a, b) => a + b, 0), chi: chiSquareTwoSample(obs, ref, { minExpected: t.minExpected, ordered }) };
  }

  #finding(kind: 'window' | 'trend', c: TestCase, model: ModelRef, at: { windowStart: number; windowMs: number }, p: number | null, q: number | null): DriftFinding {
    const direction: DriftDirection = c.shiftSd !== null && Math.abs(c.shiftSd) >= this.thresholds.shiftMinSd / 2 ? (c.shiftSd > 0 ? 'up' : 'down') : 'changed';
    const what = direction === 'changed' ? `${c.feature} changed` : `${c.feature} ${direction} ${fmt(Math.abs(c.shiftSd as number))} SD`;
    const e = this.#effect(c);
    const stats = `PSI ${fmt(e.psi, 3)}${q === null ? '' : `, q ${fmtQ(q)}`}, n ${c.n}`;
    return {
      kind,
      scope: c.scope,
      id: c.id,
      model,
      ...at,
      feature: c.feature,
      against: c.against,
      n: c.n,
      effect: { psi: e.psi, js: e.js, shiftSd: c.shiftSd },
      p,
      q,
      direction,
      message: `${what} ${where(c)} (${stats})`,
    };
  }

  /** Fleet, group, or a device without enough peers: against the manifest's reference counts. */
  #referenceTests(agg: DriftAggregate, out: TestCase[]): void {
    const t = this.thresholds;
    for (const f of agg.numeric) this.#referenceTest(agg, f, out);
    const rc = this.#ref.classCounts;
    if (rc && rc.length === agg.outputs.classCounts.length && agg.count >= t.minCount) {
      const base = { scope: agg.scope, id: agg.id, feature: 'output:class', against: 'reference' as const, shiftSd: null, nFinite: 0, peers: 0 };
      out.push(this.#case(base, agg.outputs.classCounts, rc, false));
    }
  }

  /** One numeric feature of an aggregate against the manifest's reference counts. */
  #referenceTest(agg: DriftAggregate, f: DriftAggregate['numeric'][number], out: TestCase[]): void {
    const t = this.thresholds;
    const ref = this.#refByName.get(f.name);
    if (!ref) return;
    if (ref.counts.length !== f.counts.length) {
      throw new EdgefleetError(ErrorCode.CONFLICT, `feature ${f.name}: summaries have ${f.counts.length} bins, reference ${ref.counts.length}`);
    }
    const finite = f.counts.reduce((a, b) => a + b, 0);
    if (finite + f.nan < t.minCount) return;
    const shiftSd = shiftInSd(moments(finite, f.sum, f.sumSq).mean, ref.mean, ref.std);
    const base = { scope: agg.scope, id: agg.id, feature: f.name, against: 'reference' as const, shiftSd, nFinite: finite, peers: 0 };
    out.push(this.#case(base, withNan(f.counts, f.nan, 0), withNan(ref.counts, f.nan, 0), true));
  }

  /**
   * Per numeric feature, the pooled counts of the devices that have NOT moved off the reference
   * (moved: mean at least `shiftMinSd` reference SDs off AND |z| >= MOVED_Z, so a device whose
   * window mean is off by chance stays a peer). Peers that drifted themselves are left out of a
   * device's peer pool: otherwise one drifting line makes every healthy device look like an
   * outlier against a contaminated baseline (seen with half a fleet's lighting changed).
   */
  #cleanPools(devices: readonly DriftAggregate[]): { pool: PeerPool | undefined; moved: Set<string> }[] {
    const t = this.thresholds;
    const first = devices[0];
    if (!first) return [];
    return first.numeric.map((f0, i) => {
      const ref = this.#refByName.get(f0.name);
      const moved = new Set<string>();
      let pool: PeerPool | undefined;
      for (const d of devices) {
        const f = d.numeric[i];
        if (!f) continue;
        const n = f.counts.reduce((a, b) => a + b, 0);
        const shift = ref && n > 0 ? shiftInSd(f.sum / n, ref.mean, ref.std) : null;
        // Moved: an effect past the gate that sampling noise cannot explain (z of the mean).
        if (shift !== null && Math.abs(shift) >= t.shiftMinSd && Math.abs(shift) * Math.sqrt(n) >= MOVED_Z) {
          moved.add(d.id);
          continue;
        }
        pool ??= { counts: new Array<number>(f.counts.length).fill(0), nan: 0, sum: 0, sumSq: 0, devices: 0 };
        for (let k = 0; k < f.counts.length; k++) pool.counts[k] = (pool.counts[k] as number) + (f.counts[k] as number);
        pool.nan += f.nan;
        pool.sum += f.sum;
        pool.sumSq += f.sumSq;
        pool.devices++;
      }
      return { pool, moved };
    });
  }

  /**
   * One device against its peers. Numeric features: against the devices still on the reference
   * (#cleanPools) when there are `minPeers` of them; otherwise a device that moved is compared
   * with every other device (in a fleet-wide shift it is not unusual, and the fleet-scope test
   * reports the shift), and a device still on the reference is not tested. Categorical and
   * output features: every other device in the window.
   */
  #peerTests(d: DriftAggregate, fleet: DriftAggregate, peers: number, clean: readonly { pool: PeerPool | undefined; moved: Set<string> }[], out: TestCase[]): void {
    const t = this.thresholds;
    if (d.count < t.minCount || fleet.count - d.count < t.minCount) return;
    const base = { scope: 'device' as const, id: d.id, against: 'peers' as const, peers };
    for (const [i, f] of d.numeric.entries()) {
      const c = clean[i];
      const whole = fleet.numeric[i];
      if (!c || !whole) continue;
      // In the pool: the device is on the reference itself and counted in the clean pool.
      const inPool = !c.moved.has(d.id);
      const cleanOthers = (c.pool?.devices ?? 0) - (inPool ? 1 : 0);
      let all: PeerPool;
      let others: number;
      let subtractSelf: boolean;
      if (c.pool && cleanOthers >= t.minPeers) {
        all = c.pool;
        others = cleanOthers;
        subtractSelf = inPool;
      } else if (!inPool) {
        // Most devices moved with this one (a fleet-wide shift, caught at fleet scope): is it
        // unusual among all of them?
        all = { counts: whole.counts, nan: whole.nan, sum: whole.sum, sumSq: whole.sumSq, devices: peers + 1 };
        others = peers;
        subtractSelf = true;
      } else {
        continue; // on the reference, and too few healthy peers to tell anything more
      }
      const peerCounts = subtractSelf ? sub(all.counts, f.counts) : all.counts;
      const peerNan = all.nan - (subtractSelf ? f.nan : 0);
      const peerSum = all.sum - (subtractSelf ? f.sum : 0);
      const peerSumSq = all.sumSq - (subtractSelf ? f.sumSq : 0);
      const n = f.counts.reduce((a, b) => a + b, 0);
      const pn = peerCounts.reduce((a, b) => a + b, 0);
      if (n + f.nan < t.minCount || pn + peerNan < t.minCount) continue;
      const ref = this.#refByName.get(f.name);
      // Shift in reference SDs so "0.3 SD" means the same at every scope; peers' SD without one.
      const sd = ref && ref.std > 0 ? ref.std : moments(pn, peerSum, peerSumSq).sd;
      const shiftSd = n > 0 && pn > 0 ? shiftInSd(f.sum / n, peerSum / pn, sd) : null;
      out.push(this.#case({ ...base, peers: others, feature: f.name, shiftSd, nFinite: n }, withNan(f.counts, f.nan, peerNan), withNan(peerCounts, peerNan, f.nan), true));
    }
    for (const [i, c] of d.categorical.entries()) {
      const all = fleet.categorical[i];
      if (!all) continue;
      const keys = Object.keys(all.counts).sort();
      const dc = keys.map((k) => c.counts[k] ?? 0);
      const pc = keys.map((k) => (all.counts[k] ?? 0) - (c.counts[k] ?? 0));
      const n = dc.reduce((a, b) => a + b, 0);
      const pn = pc.reduce((a, b) => a + b, 0);
      if (n < t.minCount || pn < t.minCount) continue;
      out.push(this.#case({ ...base, feature: c.name, shiftSd: null, nFinite: 0 }, dc, pc, false));
    }
    const outputs: [string, keyof OutputSummary, boolean][] = [['output:class', 'classCounts', false], ...OUTPUT_HISTS.map((h) => [`output:${h}`, h, true] as [string, keyof OutputSummary, boolean])];
    for (const [feature, key, ordered] of outputs) {
      const dc = d.outputs[key];
      const pc = sub(fleet.outputs[key], dc);
      const n = dc.reduce((a, b) => a + b, 0);
      const pn = pc.reduce((a, b) => a + b, 0);
      if (n < t.minCount || pn < t.minCount) continue;
      out.push(this.#case({ ...base, feature, shiftSd: null, nFinite: 0 }, dc, pc, ordered));
    }
  }
}

function signed(x: number): string {
  return `${x >= 0 ? '+' : '−'}${fmt(Math.abs(x))}`;
}

function where(c: TestCase): string {
  if (c.scope === 'fleet') return 'fleet-wide vs reference';
  if (c.scope === 'group') return `in group ${c.id} vs reference`;
  return c.against === 'peers' ? `on device ${c.id} vs its ${c.peers} peers` : `on device ${c.id} vs reference`;
}

/** Device findings folded per (kind, feature, direction); fleet and group findings as they are. */
function headlines(findings: readonly DriftFinding[], deviceCount: number): string[] {
  const lines: string[] = [];
  for (const f of findings) if (f.scope !== 'device') lines.push(f.message);
  const byKey = new Map<string, DriftFinding[]>();
  for (const f of findings) {
    if (f.scope !== 'device') continue;
    const k = `${f.kind}\u0000${f.feature}\u0000${f.direction}`;
    byKey.set(k, [...(byKey.get(k) ?? []), f]);
  }
  for (const fs of byKey.values()) {
    const f = fs[0] as DriftFinding;
    const shifts = fs.map((x) => x.effect.shiftSd).filter((x): x is number => x !== null);
    const meanShift = shifts.length ? Math.abs(shifts.reduce((a, b) => a + b, 0) / shifts.length) : 0;
    const meanPsi = fs.reduce((a, x) => a + x.effect.psi, 0) / fs.length;
    const what = f.direction === 'changed' ? `${f.feature} changed (mean PSI ${fmt(meanPsi, 3)})` : `${f.feature} ${f.direction} ${fmt(meanShift)} SD`;
    const trend = f.kind === 'trend' ? ' (trend over windows)' : '';
    lines.push(`${what} on ${fs.length} of ${deviceCount} devices${trend}: ${fs.map((x) => x.id).sort().slice(0, 10).join(', ')}${fs.length > 10 ? ', …' : ''}`);
  }
  return lines;
}
