/**
 * Health windows of the model versions this agent serves (issue #3). Pipelines report every
 * inference (`record`); the monitor counts them per (model, version) in UTC-aligned windows of
 * `windowMs`, and when a window closes appends one HealthWindow record per (model, version)
 * that had activity to the outbox (stream `health`), so the hub's rollout gates see them exactly
 * once even across partitions and restarts. The last `keepWindows` closed windows per version
 * stay in memory for local probation (`totalsSince`), which must work without the hub.
 *
 * Counting is a few array increments on the hot path; the outbox write happens once per window.
 * `stop()` flushes the partial window, so the same (model, version, windowStart) can appear in
 * two records after a restart: consumers sum records, they never de-duplicate by window start.
 *
 * CPU accounting (`cpuMs`, issue #4 cost per 1,000 inferences): with a `cpuTimeMs` clock (process
 * CPU, user + system, every thread: the inference workers included), the CPU used from the
 * moment a window opens while none was open (or from the previous close) until the windows
 * close is split between the windows closing together by their share of engine latency (by
 * inference count when no latency was recorded). Idle stretches with no open window are not
 * charged to any version. The figure includes the agent's own overhead (MQTT, SQLite, JSON):
 * it is what serving costs on the device, not the model's FLOPs.
 *
 * Task output statistic (issue #13): for manifest v2 tasks other than classification the
 * pipeline also passes the task's scalar outputs; the monitor keeps, per window and in memory
 * only, the count, sum and sum of squares of the one statistic probation compares
 * (shared/drift/tasks.ts `probationStatistic`: anomaly alarm, detection count, regression first
 * target). Each closed window's moments also go out in the HealthWindow record as `output`
 * (shared/updates.ts) for the hub's output gate; windows of classifiers carry no `output`.
 */
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { addHealth, confidenceBin, emptyTotals, latencyBucket, type HealthTotals } from '../../shared/health.ts';
import { HEALTH_KIND, HEALTH_STREAM, type HealthWindow } from '../../shared/updates.ts';
import type { ModelSpec } from '../../shared/model-spec.ts';
import { probationStatistic } from '../../shared/drift/tasks.ts';
import { WindowTimer } from './window-timer.ts';

/** One inference as the pipeline saw it. */
export interface HealthObservation {
  /** false: the engine failed (INFERENCE, worker death); bad input is not reported at all. */
  ok: boolean;
  /** Engine latency (queueing + run), for ok results. */
  latencyMs?: number;
  /** Top-1 class index and its confidence, for ok results. */
  classIndex?: number;
  confidence?: number;
  /** Number of classes the version has (labels). */
  classes: number;
  /** Non-classification v2 tasks, ok results: the model's spec and the task's scalar outputs (TaskOutcome.values). */
  spec?: Pick<ModelSpec, 'post'>;
  values?: Readonly<Record<string, number>>;
}

/** The task output statistic of a version over some windows (see the module header). */
export interface OutputTotals {
  /** TaskOutcome.values key, e.g. `alarm`, `count`, `rul`. */
  statistic: string;
  /** `rate`: a 0/1 value (sum = events); `mean`: any number. */
  kind: 'rate' | 'mean';
  n: number;
  sum: number;
  sumSq: number;
}

export interface HealthRecorder {
  record(model: string, version: string, obs: HealthObservation): void;
}

export interface HealthSink {
  append(stream: string, kind: string, body: Record<string, unknown>, ts?: number): Promise<unknown>;
}

export interface HealthMonitorOptions {
  windowMs: number;
  /** Closed windows kept per version for probation. */
  keepWindows?: number;
  sink: HealthSink;
  log: Logger;
  /** Injected clock (epoch ms). */
  now?: () => number;
  /**
   * Cumulative process CPU time in ms (user + system), e.g. from process.cpuUsage() in the
   * composition root. Without it windows carry no `cpuMs`.
   */
  cpuTimeMs?: () => number;
}

const DEFAULT_KEEP_WINDOWS = 30;
const MAX_CLASSES = 10_000;

interface Series {
  model: string;
  version: string;
  /** The open window (undefined until the first record in it). */
  open: HealthWindow | undefined;
  /** Engine latency summed over the open window (its weight in the CPU split). */
  busyMs: number;
  closed: HealthWindow[];
  /** The task output statistic, when the version reports one: open window and `closed` alike. */
  stat: { value: string; kind: 'rate' | 'mean' } | undefined;
  openOut: Moments;
  closedOut: Moments[];
}

interface Moments {
  n: number;
  sum: number;
  sumSq: number;
}

const noMoments = (): Moments => ({ n: 0, sum: 0, sumSq: 0 });

export class HealthMonitor implements Component, HealthRecorder {
  readonly name = 'health';
  readonly #series = new Map<string, Series>();
  readonly #now: () => number;
  readonly #keep: number;
  readonly #throttle = new LogThrottle(10_000);
  readonly #pending = new Set<Promise<unknown>>();
  readonly #timer: WindowTimer;
  #latestStart = Number.NEGATIVE_INFINITY;
  /** Process CPU (ms) when the CPU now being accumulated started to count; undefined when no window is open. */
  #cpuMark: number | undefined;

  constructor(private readonly opts: HealthMonitorOptions) {
    if (!(opts.windowMs > 0)) throw new RangeError(`windowMs must be positive, got ${opts.windowMs}`);
    this.#now = opts.now ?? Date.now;
    this.#timer = new WindowTimer({ windowMs: () => this.opts.windowMs, now: this.#now, onTick: () => this.tick() });
    this.#keep = opts.keepWindows ?? DEFAULT_KEEP_WINDOWS;
  }

  get windowMs(): number {
    return this.opts.windowMs;
  }

  start(): Promise<void> {
    this.#timer.start();
    return Promise.resolve();
  }

  /** Flushes the partial window and waits for its records to be committed (or refused). */
  async stop(): Promise<void> {
    this.#timer.stop();
    this.#closeWindows(Number.POSITIVE_INFINITY);
    await Promise.allSettled([...this.#pending]);
  }

  record(model: string, version: string, obs: HealthObservation): void {
    const now = this.#now();
    const start = now - (now % this.opts.windowMs);
    // A new window closes every older one, so records leave in window order.
    if (start > this.#latestStart) {
      this.#closeWindows(start);
      this.#latestStart = start;
    }
    const s = this.#seriesFor(model, version);
    if (s.open && s.open.windowStart !== start) this.#closeAll([s]);
    if (!s.open) {
      if (this.opts.cpuTimeMs && this.#cpuMark === undefined) this.#cpuMark = this.opts.cpuTimeMs();
      s.open = this.#emptyWindow(model, version, start, obs.classes);
      s.busyMs = 0;
      s.openOut = noMoments();
    }
    const w = s.open;
    if (!obs.ok) {
      w.errors++;
      return;
    }
    w.ok++;
    if (obs.latencyMs !== undefined) {
      if (obs.latencyMs > 0) s.busyMs += obs.latencyMs;
      const b = latencyBucket(obs.latencyMs);
      w.latency[b] = (w.latency[b] as number) + 1;
    }
    if (obs.classIndex !== undefined && obs.classIndex >= 0 && obs.classIndex < MAX_CLASSES) {
      while (w.classCounts.length <= obs.classIndex) w.classCounts.push(0);
      w.classCounts[obs.classIndex] = (w.classCounts[obs.classIndex] as number) + 1;
    }
    if (obs.confidence !== undefined) {
      const b = confidenceBin(obs.confidence);
      w.confidence[b] = (w.confidence[b] as number) + 1;
    }
    if (obs.spec !== undefined && obs.values !== undefined) {
      s.stat ??= probationStatistic(obs.spec);
      const v = s.stat ? obs.values[s.stat.value] : undefined;
      if (v !== undefined && Number.isFinite(v)) {
        const m = s.openOut;
        m.n++;
        m.sum += v;
        m.sumSq += v * v;
      }
    }
  }

  /**
   * The task output statistic of `version` of `model` over the kept windows that end after
   * `fromMs` and the open one; undefined for a version that reports none (classifiers, ...).
   */
  outputSince(model: string, version: string, fromMs: number): OutputTotals | undefined {
    const s = this.#series.get(seriesKey(model, version));
    if (!s?.stat) return undefined;
    const t: OutputTotals = { statistic: s.stat.value, kind: s.stat.kind, n: 0, sum: 0, sumSq: 0 };
    const add = (m: Moments): void => {
      t.n += m.n;
      t.sum += m.sum;
      t.sumSq += m.sumSq;
    };
    for (const [i, w] of s.closed.entries()) if (w.windowStart + w.windowMs > fromMs) add(s.closedOut[i] ?? noMoments());
    if (s.open && s.open.windowStart + s.open.windowMs > fromMs) add(s.openOut);
    return t;
  }

  /**
   * Summed counts of `version` of `model` over the kept windows that end after `fromMs`,
   * including the open window.
   */
  totalsSince(model: string, version: string, fromMs: number): HealthTotals {
    const t = emptyTotals();
    const s = this.#series.get(seriesKey(model, version));
    if (!s) return t;
    for (const w of s.closed) if (w.windowStart + w.windowMs > fromMs) addHealth(t, w);
    if (s.open && s.open.windowStart + s.open.windowMs > fromMs) addHealth(t, s.open);
    return t;
  }

  /** Closes every window that ended by now (the timer calls this; tests with a fake clock too). */
  tick(): void {
    const now = this.#now();
    this.#closeWindows(now - (now % this.opts.windowMs));
    // Versions that stopped serving long ago (replaced, rolled back) are forgotten.
    const horizon = now - this.#keep * this.opts.windowMs;
    for (const [key, s] of this.#series) {
      const last = s.closed[s.closed.length - 1];
      if (!s.open && (!last || last.windowStart + last.windowMs < horizon)) this.#series.delete(key);
    }
  }

  /** Closes open windows that start before `before`. */
  #closeWindows(before: number): void {
    const closing: Series[] = [];
    for (const s of this.#series.values()) {
      if (s.open && s.open.windowStart < before) closing.push(s);
    }
    if (closing.length) this.#closeAll(closing);
  }

  /** Closes these series' open windows, charging them the CPU used since the mark. */
  #closeAll(closing: readonly Series[]): void {
    const clock = this.opts.cpuTimeMs;
    if (clock && this.#cpuMark !== undefined) {
      const now = clock();
      const used = Math.max(0, now - this.#cpuMark);
      const weight = (s: Series): number => s.busyMs;
      const count = (s: Series): number => (s.open ? s.open.ok + s.open.errors : 0);
      const by = closing.reduce((a, s) => a + weight(s), 0) > 0 ? weight : count;
      const total = closing.reduce((a, s) => a + by(s), 0);
      for (const s of closing) {
        if (s.open) s.open.cpuMs = Math.round((total > 0 ? (used * by(s)) / total : used / closing.length) * 1000) / 1000;
      }
      // Windows still open go on accumulating from here; with none open, idle CPU is not charged.
      let stillOpen = false;
      for (const s of this.#series.values()) if (s.open && !closing.includes(s)) stillOpen = true;
      this.#cpuMark = stillOpen ? now : undefined;
    }
    for (const s of closing) this.#close(s);
  }

  #close(s: Series): void {
    const w = s.open;
    if (!w) return;
    s.open = undefined;
    s.busyMs = 0;
    s.closed.push(w);
    const out = s.openOut;
    s.closedOut.push(out);
    s.openOut = noMoments();
    if (s.closed.length > this.#keep) {
      s.closed.splice(0, s.closed.length - this.#keep);
      s.closedOut.splice(0, s.closedOut.length - this.#keep);
    }
    const body: HealthWindow = { ...w };
    // Classifiers (no statistic) send exactly what they sent before; a non-finite sum (overflow) is left out.
    if (s.stat && Number.isFinite(out.sum) && Number.isFinite(out.sumSq)) {
      body.output = { name: s.stat.value, kind: s.stat.kind, n: out.n, sum: out.sum, sumSq: out.sumSq };
    }
    const p = this.opts.sink.append(HEALTH_STREAM, HEALTH_KIND, body, w.windowStart + w.windowMs).catch((err: unknown) => {
      this.#throttle.run('append', (suppressed) => this.opts.log.warn({ err, model: w.model, version: w.version, suppressed }, 'health window not stored'));
    });
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  #seriesFor(model: string, version: string): Series {
    const key = seriesKey(model, version);
    let s = this.#series.get(key);
    if (!s) {
      s = { model, version, open: undefined, busyMs: 0, closed: [], stat: undefined, openOut: noMoments(), closedOut: [] };
      this.#series.set(key, s);
    }
    return s;
  }

  #emptyWindow(model: string, version: string, windowStart: number, classes: number): HealthWindow {
    const t = emptyTotals(Math.min(Math.max(0, classes), MAX_CLASSES));
    return { model, version, windowStart, windowMs: this.opts.windowMs, ok: 0, errors: 0, latency: t.latency, classCounts: t.classCounts, confidence: t.confidence };
  }
}

function seriesKey(model: string, version: string): string {
  return `${model}\u0000${version}`;
}
