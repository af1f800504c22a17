/**
 * One drift summary per (device, model version, UTC-aligned window) (ARCHITECTURE §8): binned
 * counts over the model version's reference edges plus moments for numeric inputs, category
 * counts, and predicted-class counts with top-1 confidence / margin / entropy histograms for
 * outputs. Tasks other than classification (manifest v2) use the same format: their scalar
 * outputs as `out.*` numeric features and their own class layout (shared/drift/tasks.ts). Only counts and sums, so the hub merges them exactly (shared/drift/merge.ts).
 * Owns the wire schema and the agent-side accumulator; pure, no I/O.
 *
 * Bin convention (same as scripts/lib/models.ts `referenceBins`): with interior edges e[0..K-1],
 * a value v goes to counts[k] where k = number of edges <= v, so counts[0] is the underflow bin
 * (v < e[0]) and counts[K] the overflow bin (v >= e[K-1]). Non-finite values (NaN, ±Infinity)
 * go to `nan` and not into the moments, so one broken reading cannot poison a window's mean.
 */
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../errors.ts';
import { DeviceIdSchema, ModelRefSchema } from '../protocol.ts';
import type { ModelRef } from '../protocol.ts';

export const DRIFT_SUMMARY_VERSION = 1 as const;
export const DEFAULT_WINDOW_MS = 60_000;
/** Agents send each summary as one outbox record: stream `drift`, kind `drift`, body = the summary. */
export const DRIFT_STREAM = 'drift';
export const DRIFT_KIND = 'drift';
export const MAX_WINDOW_MS = 86_400_000;

/**
 * Fixed interior edges for the output histograms (top-1 confidence, margin to the runner-up,
 * entropy normalised by ln(classes)), all in [0, 1]. Fixed rather than per model so that
 * summaries of different model versions stay comparable.
 */
export const OUTPUT_EDGES: readonly number[] = Object.freeze([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]);
export const OUTPUT_BINS = OUTPUT_EDGES.length + 1;

/** Categories kept per categorical feature and window; the rest are counted under OTHER. */
export const DEFAULT_MAX_CATEGORIES = 32;
export const OTHER_CATEGORY = '__other__';

const Count = z.number().int().nonnegative();

export const NumericFeatureSummarySchema = z.object({
  name: z.string().min(1).max(64),
  /** edges.length + 1 bins; see the bin convention above. */
  counts: z.array(Count).min(2).max(257),
  /** Non-finite values. */
  nan: Count,
  sum: z.number(),
  sumSq: z.number().nonnegative(),
  /** null when the window holds no finite value (JSON has no Infinity). */
  min: z.number().nullable(),
  max: z.number().nullable(),
});
export type NumericFeatureSummary = z.infer<typeof NumericFeatureSummarySchema>;

export const CategoricalSummarySchema = z.object({
  name: z.string().min(1).max(64),
  counts: z.record(z.string().max(64), Count),
});
export type CategoricalSummary = z.infer<typeof CategoricalSummarySchema>;

export const OutputSummarySchema = z.object({
  /** Predicted (top-1) class counts, in label order. */
  classCounts: z.array(Count).min(1).max(10_000),
  confidence: z.array(Count).length(OUTPUT_BINS),
  margin: z.array(Count).length(OUTPUT_BINS),
  entropy: z.array(Count).length(OUTPUT_BINS),
});
export type OutputSummary = z.infer<typeof OutputSummarySchema>;

const sumOf = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

export const DriftSummarySchema = z
  .object({
    v: z.literal(DRIFT_SUMMARY_VERSION),
    /** Unique per flush; the hub de-duplicates on it (merging is not idempotent otherwise). */
    summaryId: z.string().min(1).max(200),
    deviceId: DeviceIdSchema,
    model: ModelRefSchema,
    /** UTC epoch ms, a multiple of windowMs. */
    windowStart: z.number().int().nonnegative(),
    windowMs: z.number().int().positive().max(MAX_WINDOW_MS),
    /** Readings added in the window. */
    count: Count,
    numeric: z.array(NumericFeatureSummarySchema).max(256),
    categorical: z.array(CategoricalSummarySchema).max(64),
    outputs: OutputSummarySchema,
  })
  .superRefine((s, ctx) => {
    if (s.windowStart % s.windowMs !== 0) {
      ctx.addIssue({ code: 'custom', path: ['windowStart'], message: 'windowStart must be a multiple of windowMs' });
    }
    for (const [i, f] of s.numeric.entries()) {
      if (sumOf(f.counts) + f.nan !== s.count) {
        ctx.addIssue({ code: 'custom', path: ['numeric', i, 'counts'], message: 'counts + nan must equal count' });
      }
    }
    for (const [i, c] of s.categorical.entries()) {
      if (sumOf(Object.values(c.counts)) > s.count) {
        ctx.addIssue({ code: 'custom', path: ['categorical', i, 'counts'], message: 'more category counts than readings' });
      }
    }
    if (sumOf(s.outputs.classCounts) !== s.count) {
      ctx.addIssue({ code: 'custom', path: ['outputs', 'classCounts'], message: 'classCounts must sum to count' });
    }
    for (const h of ['confidence', 'margin', 'entropy'] as const) {
      if (sumOf(s.outputs[h]) > s.count) {
        ctx.addIssue({ code: 'custom', path: ['outputs', h], message: `${h} histogram holds more than count` });
      }
    }
  });
export type DriftSummary = z.infer<typeof DriftSummarySchema>;

/** Start of the UTC-aligned window holding `ts` (epoch ms). */
export function alignWindow(ts: number, windowMs: number): number {
  if (!Number.isInteger(windowMs) || windowMs <= 0) throw new EdgefleetError(ErrorCode.BAD_INPUT, `windowMs must be a positive integer, got ${windowMs}`);
  return Math.floor(ts / windowMs) * windowMs;
}

/** Bin of `v` over strictly increasing `edges`: the number of edges <= v (binary search). */
export function binIndex(edges: readonly number[], v: number): number {
  let lo = 0;
  let hi = edges.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((edges[mid] as number) <= v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The output fields the accumulator needs; agent/preprocess/postprocess.ts Classification fits. */
export interface ClassificationLike {
  index: number;
  confidence: number;
  margin: number;
  scores: ArrayLike<number>;
}

/** Shannon entropy of `scores` divided by ln(K), so 0 = certain and 1 = uniform for any K. */
export function normalizedEntropy(scores: ArrayLike<number>): number {
  const k = scores.length;
  if (k < 2) return 0;
  let total = 0;
  for (let i = 0; i < k; i++) total += Math.max(0, scores[i] as number);
  if (!(total > 0)) return Number.NaN;
  let h = 0;
  for (let i = 0; i < k; i++) {
    const p = Math.max(0, scores[i] as number) / total;
    if (p > 0) h -= p * Math.log(p);
  }
  return Math.min(1, h / Math.log(k));
}

export interface DriftAccumulatorOptions {
  deviceId: string;
  model: ModelRef;
  windowMs?: number;
  /** Numeric inputs in the order `add` receives them; the manifest's `drift.features` fit. */
  features: readonly { name: string; edges: readonly number[] }[];
  /** Names of categorical inputs, in the order `add` receives them. */
  categorical?: readonly string[];
  /** Number of output classes: labels; for other tasks see shared/drift/tasks.ts driftClassLabels. */
  classes: number;
  /**
   * Distinguishes this accumulator's lifetime (e.g. the agent's boot epoch) in summary ids, so
   * a partial window flushed before a restart and the rest flushed after it are both kept.
   */
  instance?: string;
  maxCategories?: number;
}

interface NumericState {
  name: string;
  edges: readonly number[];
  counts: number[];
  nan: number;
  sum: number;
  sumSq: number;
  min: number;
  max: number;
}

/**
 * Accumulates one window of readings for one (device, model version). The agent calls `add`
 * per inference and `flush(windowStart)` when the window closes; flush returns the summary
 * and starts an empty window. (Check `count` first if empty windows should not be sent.)
 */
export class DriftAccumulator {
  readonly windowMs: number;
  readonly #o: DriftAccumulatorOptions;
  readonly #instance: string;
  readonly #maxCategories: number;
  #seq = 0;
  #count = 0;
  #numeric: NumericState[] = [];
  #categorical: Map<string, number>[] = [];
  #classCounts: number[] = [];
  #confidence: number[] = [];
  #margin: number[] = [];
  #entropy: number[] = [];

  constructor(options: DriftAccumulatorOptions) {
    this.windowMs = options.windowMs ?? DEFAULT_WINDOW_MS;
    if (!Number.isInteger(this.windowMs) || this.windowMs <= 0 || this.windowMs > MAX_WINDOW_MS) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `drift windowMs must be an integer in 1..${MAX_WINDOW_MS}`);
    }
    if (!Number.isInteger(options.classes) || options.classes < 1) throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'drift classes must be a positive integer');
    for (const f of options.features) {
      for (let k = 1; k < f.edges.length; k++) {
        if (!((f.edges[k] as number) > (f.edges[k - 1] as number))) {
          throw new EdgefleetError(ErrorCode.BAD_CONFIG, `drift feature ${f.name}: edges must be strictly increasing`);
        }
      }
    }
    DeviceIdSchema.parse(options.deviceId);
    this.#o = options;
    this.#instance = options.instance ?? Math.random().toString(36).slice(2, 10);
    this.#maxCategories = options.maxCategories ?? DEFAULT_MAX_CATEGORIES;
    this.#reset();
  }

  /** Readings in the current window. */
  get count(): number {
    return this.#count;
  }

  #reset(): void {
    this.#count = 0;
    this.#numeric = this.#o.features.map((f) => ({
      name: f.name,
      edges: f.edges,
      counts: new Array<number>(f.edges.length + 1).fill(0),
      nan: 0,
      sum: 0,
      sumSq: 0,
      min: Infinity,
      max: -Infinity,
    }));
    this.#categorical = (this.#o.categorical ?? []).map(() => new Map<string, number>());
    this.#classCounts = new Array<number>(this.#o.classes).fill(0);
    this.#confidence = new Array<number>(OUTPUT_BINS).fill(0);
    this.#margin = new Array<number>(OUTPUT_BINS).fill(0);
    this.#entropy = new Array<number>(OUTPUT_BINS).fill(0);
  }

  /**
   * One reading: numeric inputs in feature order (raw, unscaled), the model's top-1 output,
   * and categorical inputs in `categorical` order. Throws BAD_INPUT, leaving the window
   * unchanged, when the shapes do not match.
   */
  add(features: Float64Array | Float32Array | readonly number[], classification: ClassificationLike, categories?: readonly string[]): void {
    this.#check(features, classification.index, categories);
    this.#addInputs(features, categories);
    this.#classCounts[classification.index] = (this.#classCounts[classification.index] as number) + 1;
    histAdd(this.#confidence, classification.confidence);
    histAdd(this.#margin, classification.margin);
    histAdd(this.#entropy, normalizedEntropy(classification.scores));
    this.#count++;
  }

  /**
   * One reading of a task without top-1 scores (detection, segmentation, regression, anomaly,
   * embedding; shared/drift/tasks.ts): the numeric features (inputs and `out.*` task outputs,
   * in feature order) and categorical inputs as in `add`, the reading counted under class
   * `classIndex`; the confidence / margin / entropy histograms are left alone. Throws BAD_INPUT,
   * leaving the window unchanged, when the shapes do not match.
   */
  addOutcome(features: Float64Array | Float32Array | readonly number[], classIndex: number, categories?: readonly string[]): void {
    this.#check(features, classIndex, categories);
    this.#addInputs(features, categories);
    this.#classCounts[classIndex] = (this.#classCounts[classIndex] as number) + 1;
    this.#count++;
  }

  #check(features: ArrayLike<number>, ci: number, categories: readonly string[] | undefined): void {
    const nf = this.#numeric.length;
    if (features.length !== nf) throw new EdgefleetError(ErrorCode.BAD_INPUT, `drift: expected ${nf} numeric values, got ${features.length}`);
    if (!Number.isInteger(ci) || ci < 0 || ci >= this.#classCounts.length) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `drift: class index ${ci} outside 0..${this.#classCounts.length - 1}`);
    }
    const nc = this.#categorical.length;
    if ((categories?.length ?? 0) !== nc) throw new EdgefleetError(ErrorCode.BAD_INPUT, `drift: expected ${nc} categorical values`);
  }

  #addInputs(features: ArrayLike<number>, categories: readonly string[] | undefined): void {
    const nf = this.#numeric.length;
    for (let i = 0; i < nf; i++) {
      const s = this.#numeric[i] as NumericState;
      const v = features[i] as number;
      if (!Number.isFinite(v)) {
        s.nan++;
        continue;
      }
      const k = binIndex(s.edges, v);
      s.counts[k] = (s.counts[k] as number) + 1;
      s.sum += v;
      s.sumSq += v * v;
      if (v < s.min) s.min = v;
      if (v > s.max) s.max = v;
    }
    const nc = this.#categorical.length;
    for (let i = 0; i < nc; i++) {
      const m = this.#categorical[i] as Map<string, number>;
      let key = String((categories as readonly string[])[i]).slice(0, 64);
      if (!m.has(key) && m.size >= this.#maxCategories) key = OTHER_CATEGORY;
      m.set(key, (m.get(key) ?? 0) + 1);
    }
  }

  /** The summary of the current window (which must start at the aligned `windowStart`), then reset. */
  flush(windowStart: number): DriftSummary {
    if (alignWindow(windowStart, this.windowMs) !== windowStart) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `drift: windowStart ${windowStart} is not aligned to ${this.windowMs} ms`);
    }
    const { deviceId, model } = this.#o;
    const summary: DriftSummary = {
      v: DRIFT_SUMMARY_VERSION,
      summaryId: `${deviceId}/${model.name}@${model.version}/${windowStart}/${this.#instance}.${this.#seq++}`,
      deviceId,
      model: { name: model.name, version: model.version },
      windowStart,
      windowMs: this.windowMs,
      count: this.#count,
      numeric: this.#numeric.map((s) => ({
        name: s.name,
        counts: s.counts,
        nan: s.nan,
        sum: s.sum,
        sumSq: s.sumSq,
        min: Number.isFinite(s.min) ? s.min : null,
        max: Number.isFinite(s.max) ? s.max : null,
      })),
      categorical: (this.#o.categorical ?? []).map((name, i) => ({
        name,
        counts: Object.fromEntries(this.#categorical[i] as Map<string, number>),
      })),
      outputs: { classCounts: this.#classCounts, confidence: this.#confidence, margin: this.#margin, entropy: this.#entropy },
    };
    this.#reset();
    return summary;
  }
}

function histAdd(counts: number[], v: number): void {
  if (!Number.isFinite(v)) return;
  const k = binIndex(OUTPUT_EDGES, v);
  counts[k] = (counts[k] as number) + 1;
}
