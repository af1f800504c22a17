/**
 * Local probation of a freshly activated model version (issue #3): until `untilMs` the new
 * version's health (HealthMonitor windows since the swap) is compared every `checkMs` with the
 * previous version's health just before the swap, by the same rules as the hub's rollout gates
 * (shared/health.ts `compareHealth`: effect size AND significance, minimum samples). One rule
 * needs no baseline: more than `maxErrorRate` of at least `minErrorSamples` requests failing is
 * bad whatever the previous version did (and covers a first install with nothing to compare).
 *
 * A watch ends exactly once: `breach` (the updater rolls back, without the hub) or `pass` at
 * `untilMs`. A probation that saw too little traffic to judge passes at `untilMs`: nothing
 * observed was bad, and the hub's gates still compare the version across the fleet.
 *
 * Tasks other than classification (issue #13) have no class mix or top-1 confidence to compare;
 * besides error rate and latency, probation compares their task output statistic with the
 * previous version's (HealthMonitor `outputSince`): the anomaly alarm rate (change of more than
 * `maxAlarmRateShift`, absolute, AND two-proportion p < alpha), the mean detections per frame or
 * the mean of the first regression target (change of more than `maxOutputShiftSd` baseline SDs
 * AND a Welch z test p < alpha). Two-sided: without labels a device cannot tell a better model
 * from a broken one, only that its outputs changed a lot. Not judged below minSamples on either
 * side, nor when the two versions report different statistics (e.g. a renamed target).
 * `compareOutputs: false` turns it off (for a release that changes the outputs on purpose).
 */
import { z } from 'zod';
import { compareHealth, errorRate, GateThresholdsSchema, samples, twoProportionP, type HealthTotals } from '../../shared/health.ts';
import { chiSquareSf } from '../../shared/drift/stats.ts';
import type { OutputTotals } from './health-monitor.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';

/** The hub's gate thresholds with probation defaults (a single device sees less traffic). */
export const ProbationThresholdsSchema = GateThresholdsSchema.extend({
  minSamples: z.number().int().positive().default(100),
  /** Absolute error rate that fails a version without any baseline ... */
  maxErrorRate: z.number().min(0).max(1).default(0.2),
  /** ... once it served at least this many requests. */
  minErrorSamples: z.number().int().positive().default(20),
  /** Compare the task output statistic of non-classification tasks (see the module header). */
  compareOutputs: z.boolean().default(true),
  /** Absolute change of the anomaly alarm rate (0.05 = five percentage points). */
  maxAlarmRateShift: z.number().min(0).max(1).default(0.05),
  /** Change of the mean output (detections per frame, first regression target) in baseline SDs. */
  maxOutputShiftSd: z.number().min(0).default(0.5),
});
export type ProbationThresholds = z.infer<typeof ProbationThresholdsSchema>;

export interface ProbationWatch {
  name: string;
  version: string;
  /** The version it replaced (the baseline); none for a first install. */
  previousVersion?: string;
  /** Epoch ms (on the injected clock) when probation ends. */
  untilMs: number;
}

export interface ProbationBreach {
  name: string;
  version: string;
  reason: string;
}

export interface ProbationPass {
  name: string;
  version: string;
}

export interface HealthSource {
  totalsSince(model: string, version: string, fromMs: number): HealthTotals;
  /** The task output statistic (HealthMonitor); sources without it compare health only. */
  outputSince?(model: string, version: string, fromMs: number): OutputTotals | undefined;
}

export interface ProbationOptions {
  health: HealthSource;
  thresholds: ProbationThresholds;
  /** How often running watches are evaluated. */
  checkMs: number;
  log: Logger;
  now?: () => number;
}

interface Watching extends ProbationWatch {
  startedMs: number;
  baseline: HealthTotals | undefined;
  baselineOutput: OutputTotals | undefined;
}

export class Probation implements Component {
  readonly name = 'probation';
  readonly #watches = new Map<string, Watching>();
  readonly #breachListeners = new Set<(b: ProbationBreach) => void>();
  readonly #passListeners = new Set<(p: ProbationPass) => void>();
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: ProbationOptions) {
    this.#now = opts.now ?? Date.now;
  }

  start(): Promise<void> {
    this.#timer = setInterval(() => this.check(), this.opts.checkMs);
    this.#timer.unref();
    return Promise.resolve();
  }

  stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#watches.clear();
    return Promise.resolve();
  }

  /**
   * Starts (or replaces) the probation of `name`. The baseline is what the monitor holds of the
   * previous version now, i.e. its last windows before the swap.
   */
  watch(w: ProbationWatch): void {
    const now = this.#now();
    const baseline = w.previousVersion === undefined ? undefined : this.opts.health.totalsSince(w.name, w.previousVersion, 0);
    const baselineOutput = w.previousVersion === undefined ? undefined : this.opts.health.outputSince?.(w.name, w.previousVersion, 0);
    this.#watches.set(w.name, { ...w, startedMs: now, baseline, baselineOutput });
    this.opts.log.info({ model: w.name, version: w.version, previous: w.previousVersion, untilMs: w.untilMs, baselineSamples: baseline ? samples(baseline) : 0 }, 'probation started');
  }

  /** Ends the probation of `name` without a verdict (e.g. the version was replaced meanwhile). */
  cancel(name: string): void {
    this.#watches.delete(name);
  }

  /** The running probation of `name`, if any. */
  watching(name: string): ProbationWatch | undefined {
    const w = this.#watches.get(name);
    return w && { name: w.name, version: w.version, previousVersion: w.previousVersion, untilMs: w.untilMs };
  }

  /** Returns an unsubscribe function. */
  onBreach(cb: (b: ProbationBreach) => void): () => void {
    this.#breachListeners.add(cb);
    return () => this.#breachListeners.delete(cb);
  }

  onPass(cb: (p: ProbationPass) => void): () => void {
    this.#passListeners.add(cb);
    return () => this.#passListeners.delete(cb);
  }

  /** Evaluates every running watch once (the timer calls this; tests with a fake clock too). */
  check(): void {
    const now = this.#now();
    for (const w of [...this.#watches.values()]) {
      const reason = this.#breach(w);
      if (reason !== undefined) {
        this.#watches.delete(w.name);
        this.opts.log.warn({ model: w.name, version: w.version, reason }, 'probation breached');
        this.#emit(this.#breachListeners, { name: w.name, version: w.version, reason });
      } else if (now >= w.untilMs) {
        this.#watches.delete(w.name);
        this.opts.log.info({ model: w.name, version: w.version }, 'probation passed');
        this.#emit(this.#passListeners, { name: w.name, version: w.version });
      }
    }
  }

  #breach(w: Watching): string | undefined {
    const t = this.opts.thresholds;
    const cand = this.opts.health.totalsSince(w.name, w.version, w.startedMs);
    const n = samples(cand);
    const rate = errorRate(cand);
    if (n >= t.minErrorSamples && rate > t.maxErrorRate) {
      return `error_rate: ${cand.errors} of ${n} requests failed (${(rate * 100).toFixed(1)}% > ${(t.maxErrorRate * 100).toFixed(1)}%)`;
    }
    if (!w.baseline) return undefined;
    const cmp = compareHealth(cand, w.baseline, t);
    const reasons = cmp.verdict === 'fail' ? cmp.breaches.map((b) => `${b.metric}: ${b.detail}`) : [];
    if (t.compareOutputs && w.baselineOutput) {
      const out = this.opts.health.outputSince?.(w.name, w.version, w.startedMs);
      const r = out && compareOutput(out, w.baselineOutput, t);
      if (r) reasons.push(r);
    }
    return reasons.length ? reasons.join('; ') : undefined;
  }

  #emit<T>(listeners: Set<(x: T) => void>, x: T): void {
    for (const cb of listeners) {
      try {
        cb(x);
      } catch (err) {
        this.opts.log.error({ err }, 'probation listener threw');
      }
    }
  }
}

const fmt = (x: number, d = 3): string => (Number.isFinite(x) ? x.toFixed(d) : String(x));

/**
 * The breach of the task output statistic, or undefined: `candidate` against `baseline` of the
 * same statistic, each with at least minSamples values, effect AND significance (module header).
 */
export function compareOutput(candidate: OutputTotals, baseline: OutputTotals, t: ProbationThresholds): string | undefined {
  if (candidate.statistic !== baseline.statistic || candidate.kind !== baseline.kind) return undefined;
  const nc = candidate.n;
  const nb = baseline.n;
  if (nc < t.minSamples || nb < t.minSamples) return undefined;
  const mc = candidate.sum / nc;
  const mb = baseline.sum / nb;
  if (candidate.kind === 'rate') {
    if (!(Math.abs(mc - mb) > t.maxAlarmRateShift)) return undefined;
    const p = twoProportionP(candidate.sum, nc, baseline.sum, nb);
    if (!(p < t.alpha)) return undefined;
    return `output_rate: ${candidate.statistic} rate ${fmt(mc)} vs ${fmt(mb)} (${mc > mb ? '+' : '−'}${fmt(Math.abs(mc - mb))}, limit ${t.maxAlarmRateShift}, p=${p.toExponential(1)})`;
  }
  const vc = Math.max(0, candidate.sumSq / nc - mc * mc) * (nc > 1 ? nc / (nc - 1) : 1);
  const vb = Math.max(0, baseline.sumSq / nb - mb * mb) * (nb > 1 ? nb / (nb - 1) : 1);
  const d = mc - mb;
  // Effect in the baseline's SDs (the candidate's when the baseline never varied).
  const sd = Math.sqrt(vb > 0 ? vb : vc);
  const effect = sd > 0 ? Math.abs(d) / sd : d === 0 ? 0 : Infinity;
  if (!(effect > t.maxOutputShiftSd)) return undefined;
  const se = Math.sqrt(vc / nc + vb / nb);
  const p = se > 0 ? chiSquareSf((d / se) ** 2, 1) : 0;
  if (!(p < t.alpha)) return undefined;
  return `output_mean: mean ${candidate.statistic} ${fmt(mc)} vs ${fmt(mb)} (${d > 0 ? '+' : '−'}${fmt(effect, 2)} SD, limit ${t.maxOutputShiftSd} SD, p=${p.toExponential(1)})`;
}
