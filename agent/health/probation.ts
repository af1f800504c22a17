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
 */
import { z } from 'zod';
import { compareHealth, errorRate, GateThresholdsSchema, samples, type HealthTotals } from '../../shared/health.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';

/** The hub's gate thresholds with probation defaults (a single device sees less traffic). */
export const ProbationThresholdsSchema = GateThresholdsSchema.extend({
  minSamples: z.number().int().positive().default(100),
  /** Absolute error rate that fails a version without any baseline ... */
  maxErrorRate: z.number().min(0).max(1).default(0.2),
  /** ... once it served at least this many requests. */
  minErrorSamples: z.number().int().positive().default(20),
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
    this.#watches.set(w.name, { ...w, startedMs: now, baseline });
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
    if (cmp.verdict !== 'fail') return undefined;
    return cmp.breaches.map((b) => `${b.metric}: ${b.detail}`).join('; ');
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
