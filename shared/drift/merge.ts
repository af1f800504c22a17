/**
 * Exact merging of drift summaries into (model version × device | group | fleet) × window
 * aggregates. Counts and moments add, min/max combine, so a fleet window is the same whether
 * built from 12,000 one-minute summaries or from per-device aggregates. Merging is not
 * idempotent by itself (PITFALLS "Drift statistics"): every aggregate remembers the summary
 * ids it holds and ignores one it has already counted, so re-delivered or replayed summaries
 * never change merged counts.
 */
import { EdgefleetError, ErrorCode } from '../errors.ts';
import type { ModelRef } from '../protocol.ts';
import { alignWindow } from './summary.ts';
import type { CategoricalSummary, DriftSummary, NumericFeatureSummary, OutputSummary } from './summary.ts';

export type DriftScope = 'device' | 'group' | 'fleet';

export interface DriftAggregate {
  model: ModelRef;
  scope: DriftScope;
  /** Device id, group name, or `fleet`. */
  id: string;
  windowStart: number;
  windowMs: number;
  /** Summaries merged in, for de-duplication. */
  summaryIds: Set<string>;
  /** Distinct devices that contributed. */
  devices: Set<string>;
  count: number;
  numeric: NumericFeatureSummary[];
  categorical: CategoricalSummary[];
  outputs: OutputSummary;
}

export const modelKey = (m: ModelRef): string => `${m.name}@${m.version}`;

function zeroLike(xs: readonly number[]): number[] {
  return new Array<number>(xs.length).fill(0);
}

/** An empty aggregate with the same layout (features, bins, classes) as `like`. */
export function emptyAggregate(
  like: Pick<DriftSummary, 'model' | 'numeric' | 'categorical' | 'outputs'>,
  at: { scope: DriftScope; id: string; windowStart: number; windowMs: number },
): DriftAggregate {
  if (alignWindow(at.windowStart, at.windowMs) !== at.windowStart) {
    throw new EdgefleetError(ErrorCode.BAD_INPUT, `aggregate windowStart ${at.windowStart} is not aligned to ${at.windowMs} ms`);
  }
  return {
    model: { name: like.model.name, version: like.model.version },
    scope: at.scope,
    id: at.id,
    windowStart: at.windowStart,
    windowMs: at.windowMs,
    summaryIds: new Set(),
    devices: new Set(),
    count: 0,
    numeric: like.numeric.map((f) => ({ name: f.name, counts: zeroLike(f.counts), nan: 0, sum: 0, sumSq: 0, min: null, max: null })),
    categorical: like.categorical.map((c) => ({ name: c.name, counts: {} })),
    outputs: {
      classCounts: zeroLike(like.outputs.classCounts),
      confidence: zeroLike(like.outputs.confidence),
      margin: zeroLike(like.outputs.margin),
      entropy: zeroLike(like.outputs.entropy),
    },
  };
}

const minOf = (a: number | null, b: number | null): number | null => (a === null ? b : b === null ? a : Math.min(a, b));
const maxOf = (a: number | null, b: number | null): number | null => (a === null ? b : b === null ? a : Math.max(a, b));

function addInto(dst: number[], src: readonly number[]): void {
  for (let i = 0; i < dst.length; i++) dst[i] = (dst[i] as number) + (src[i] as number);
}

/** Throws CONFLICT unless `s` has the same model and layout as `agg`. */
function checkLayout(agg: DriftAggregate, s: Pick<DriftSummary, 'model' | 'numeric' | 'categorical' | 'outputs'>, what: string): void {
  const bad = (why: string): never => {
    throw new EdgefleetError(ErrorCode.CONFLICT, `cannot merge ${what} into ${modelKey(agg.model)} ${agg.scope}/${agg.id}: ${why}`);
  };
  if (s.model.name !== agg.model.name || s.model.version !== agg.model.version) bad(`model ${modelKey(s.model)}`);
  if (s.numeric.length !== agg.numeric.length) bad('different numeric features');
  for (const [i, f] of s.numeric.entries()) {
    const a = agg.numeric[i] as NumericFeatureSummary;
    if (f.name !== a.name || f.counts.length !== a.counts.length) bad(`numeric feature ${i} (${f.name}) has a different name or bin count`);
  }
  if (s.categorical.length !== agg.categorical.length || s.categorical.some((c, i) => c.name !== agg.categorical[i]?.name)) bad('different categorical features');
  const o = s.outputs;
  const ao = agg.outputs;
  if (o.classCounts.length !== ao.classCounts.length || o.confidence.length !== ao.confidence.length || o.margin.length !== ao.margin.length || o.entropy.length !== ao.entropy.length) {
    bad('different output layout');
  }
}

function addContent(agg: DriftAggregate, s: Pick<DriftSummary, 'count' | 'numeric' | 'categorical' | 'outputs'>): void {
  agg.count += s.count;
  for (const [i, f] of s.numeric.entries()) {
    const a = agg.numeric[i] as NumericFeatureSummary;
    addInto(a.counts, f.counts);
    a.nan += f.nan;
    a.sum += f.sum;
    a.sumSq += f.sumSq;
    a.min = minOf(a.min, f.min);
    a.max = maxOf(a.max, f.max);
  }
  for (const [i, c] of s.categorical.entries()) {
    const a = (agg.categorical[i] as CategoricalSummary).counts;
    for (const [k, n] of Object.entries(c.counts)) a[k] = (a[k] ?? 0) + n;
  }
  addInto(agg.outputs.classCounts, s.outputs.classCounts);
  addInto(agg.outputs.confidence, s.outputs.confidence);
  addInto(agg.outputs.margin, s.outputs.margin);
  addInto(agg.outputs.entropy, s.outputs.entropy);
}

/**
 * Adds one summary. Returns false (and changes nothing) when its id was already merged.
 * Throws BAD_INPUT when the summary's window is not inside the aggregate's window, CONFLICT
 * when the model or layout differs.
 */
export function addSummary(agg: DriftAggregate, s: DriftSummary): boolean {
  if (agg.summaryIds.has(s.summaryId)) return false;
  if (s.windowMs > agg.windowMs || agg.windowMs % s.windowMs !== 0 || alignWindow(s.windowStart, agg.windowMs) !== agg.windowStart) {
    throw new EdgefleetError(ErrorCode.BAD_INPUT, `summary ${s.summaryId} (window ${s.windowStart}+${s.windowMs}) is not inside window ${agg.windowStart}+${agg.windowMs}`);
  }
  checkLayout(agg, s, `summary ${s.summaryId}`);
  addContent(agg, s);
  agg.summaryIds.add(s.summaryId);
  agg.devices.add(s.deviceId);
  return true;
}

/**
 * Combines aggregates of disjoint summary sets (e.g. per-device aggregates into a group or the
 * fleet) under a new scope. Summary ids already in the result are skipped only when a whole
 * part is already contained; a partial overlap cannot be merged exactly and throws CONFLICT.
 */
export function combineAggregates(parts: readonly DriftAggregate[], at: { scope: DriftScope; id: string; windowStart?: number; windowMs?: number }): DriftAggregate {
  const first = parts[0];
  if (!first) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'combineAggregates needs at least one part');
  const windowMs = at.windowMs ?? first.windowMs;
  const out = emptyAggregate(first, { scope: at.scope, id: at.id, windowStart: at.windowStart ?? alignWindow(first.windowStart, windowMs), windowMs });
  for (const p of parts) {
    if (p.windowMs > out.windowMs || out.windowMs % p.windowMs !== 0 || alignWindow(p.windowStart, out.windowMs) !== out.windowStart) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `aggregate ${p.scope}/${p.id} window ${p.windowStart}+${p.windowMs} is not inside ${out.windowStart}+${out.windowMs}`);
    }
    checkLayout(out, p, `aggregate ${p.scope}/${p.id}`);
    let seen = 0;
    for (const id of p.summaryIds) if (out.summaryIds.has(id)) seen++;
    if (seen === p.summaryIds.size && seen > 0) continue;
    if (seen > 0) throw new EdgefleetError(ErrorCode.CONFLICT, `aggregate ${p.scope}/${p.id} overlaps the others in ${seen} summaries`);
    addContent(out, p);
    for (const id of p.summaryIds) out.summaryIds.add(id);
    for (const d of p.devices) out.devices.add(d);
  }
  return out;
}

/**
 * `total` minus `part` (which must be contained in it): the pooled peers of one device. Counts
 * and moments subtract exactly; min/max cannot be recovered and are null.
 */
export function subtractAggregate(total: DriftAggregate, part: DriftAggregate, id = `${total.id}-${part.id}`): DriftAggregate {
  checkLayout(total, part, `aggregate ${part.scope}/${part.id}`);
  for (const s of part.summaryIds) {
    if (!total.summaryIds.has(s)) throw new EdgefleetError(ErrorCode.CONFLICT, `aggregate ${part.scope}/${part.id} is not contained in ${total.scope}/${total.id}`);
  }
  const sub = (a: readonly number[], b: readonly number[]): number[] => a.map((x, i) => x - (b[i] as number));
  const devices = new Set(total.devices);
  for (const d of part.devices) devices.delete(d);
  const ids = new Set(total.summaryIds);
  for (const s of part.summaryIds) ids.delete(s);
  return {
    model: total.model,
    scope: total.scope,
    id,
    windowStart: total.windowStart,
    windowMs: total.windowMs,
    summaryIds: ids,
    devices,
    count: total.count - part.count,
    numeric: total.numeric.map((f, i) => {
      const p = part.numeric[i] as NumericFeatureSummary;
      return { name: f.name, counts: sub(f.counts, p.counts), nan: f.nan - p.nan, sum: f.sum - p.sum, sumSq: Math.max(0, f.sumSq - p.sumSq), min: null, max: null };
    }),
    categorical: total.categorical.map((c, i) => {
      const p = (part.categorical[i] as CategoricalSummary).counts;
      return { name: c.name, counts: Object.fromEntries(Object.entries(c.counts).map(([k, n]) => [k, n - (p[k] ?? 0)])) };
    }),
    outputs: {
      classCounts: sub(total.outputs.classCounts, part.outputs.classCounts),
      confidence: sub(total.outputs.confidence, part.outputs.confidence),
      margin: sub(total.outputs.margin, part.outputs.margin),
      entropy: sub(total.outputs.entropy, part.outputs.entropy),
    },
  };
}

export interface GroupOptions {
  /** Aggregate window; a multiple of every summary's windowMs (e.g. 900_000 for 15 min). */
  windowMs: number;
  by: DriftScope;
  /** Group of a device, for `by: 'group'`; devices without a group are left out. */
  groupOf?: (deviceId: string) => string | undefined;
}

/**
 * Groups summaries into aggregates keyed by model version × scope id × window, de-duplicating
 * by summary id. Result order: by model key, then window, then scope id.
 */
export function groupSummaries(summaries: Iterable<DriftSummary>, opts: GroupOptions): DriftAggregate[] {
  const out = new Map<string, DriftAggregate>();
  for (const s of summaries) {
    let id: string;
    if (opts.by === 'device') id = s.deviceId;
    else if (opts.by === 'fleet') id = 'fleet';
    else {
      const g = opts.groupOf?.(s.deviceId);
      if (g === undefined) continue;
      id = g;
    }
    const windowStart = alignWindow(s.windowStart, opts.windowMs);
    const key = `${modelKey(s.model)}\u0000${windowStart}\u0000${id}`;
    let agg = out.get(key);
    if (!agg) {
      agg = emptyAggregate(s, { scope: opts.by, id, windowStart, windowMs: opts.windowMs });
      out.set(key, agg);
    }
    addSummary(agg, s);
  }
  return [...out.values()].sort(
    (a, b) => modelKey(a.model).localeCompare(modelKey(b.model)) || a.windowStart - b.windowStart || a.id.localeCompare(b.id),
  );
}

/** Merges summaries of one model version into one aggregate (scope fleet unless given). */
export function mergeSummaries(summaries: readonly DriftSummary[], at?: { scope?: DriftScope; id?: string; windowStart?: number; windowMs?: number }): DriftAggregate {
  const first = summaries[0];
  if (!first) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'mergeSummaries needs at least one summary');
  const windowMs = at?.windowMs ?? first.windowMs;
  const agg = emptyAggregate(first, {
    scope: at?.scope ?? 'fleet',
    id: at?.id ?? 'fleet',
    windowStart: at?.windowStart ?? alignWindow(first.windowStart, windowMs),
    windowMs,
  });
  for (const s of summaries) addSummary(agg, s);
  return agg;
}
