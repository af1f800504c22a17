/**
 * Postprocessing of manifest v2 models, one function per task (issue #13): model outputs →
 * the task's result fields (published live), the compact record fields (outbox telemetry), the
 * health observation and the numeric outputs drift summaries count. Results never carry raw
 * per-element score arrays: classification gives top-k, detection a bounded list of boxes,
 * segmentation per-class coverage (a run-length mask only when asked and small), embeddings are
 * capped by `maxElements`. Detection decoding and NMS live in ./detection.ts.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { AnomalySpec, ClassificationSpec, EmbeddingSpec, RegressionSpec, SegmentationSpec, TaskSpec } from '../../shared/tasks/specs.ts';
import type { ModelSpec } from '../../shared/model-spec.ts';
import { softmax } from '../preprocess/postprocess.ts';
import { decodeDetections, type Detection } from './detection.ts';
import type { ImageGeometry } from '../preprocess/image.ts';

export interface Tensor {
  data: Float32Array;
  dims: number[];
}

export interface TaskOutcome {
  /** Task fields of the published result. */
  fields: Record<string, unknown>;
  /** Task fields of the outbox record (compact). */
  record: Record<string, unknown>;
  /** For health windows and probation: classification's top-1; others report only ok/latency. */
  classIndex?: number;
  confidence?: number;
  /** Scalar outputs by name (score, count, rul, ...): what drift and KPIs count per task. */
  values: Record<string, number>;
  /** Classification: every class probability, for the drift entropy histogram (never published). */
  scores?: number[];
}

export interface PostprocessContext {
  spec: ModelSpec;
  outputs: Record<string, Tensor>;
  /** The tensors as fed, by input name (autoencoders compare their reconstruction to them). */
  inputs: Record<string, ArrayLike<number>>;
  /** How the original image maps onto the model input (image models). */
  geometry?: ImageGeometry;
  topK: number;
  thresholds?: Readonly<Record<string, number>>;
}

const r6 = (x: number): number => (Number.isFinite(x) ? Math.round(x * 1e6) / 1e6 : x);

function output(ctx: PostprocessContext, name: string | undefined): Tensor {
  const key = name ?? ctx.spec.outputs[0]!.name;
  const t = ctx.outputs[key];
  if (!t) throw new EdgefleetError(ErrorCode.INFERENCE, `the model returned no output ${key} (it returned ${Object.keys(ctx.outputs).join(', ')})`);
  return t;
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

export function classification(p: ClassificationSpec, ctx: PostprocessContext): TaskOutcome {
  const t = output(ctx, p.output);
  if (t.data.length !== p.labels.length) {
    throw new EdgefleetError(ErrorCode.INFERENCE, `output ${p.output ?? ctx.spec.outputs[0]!.name} has ${t.data.length} scores for ${p.labels.length} labels`);
  }
  const scores = p.activation === 'logits' ? softmax(t.data) : p.activation === 'sigmoid' ? Array.from(t.data, sigmoid) : Array.from(t.data);
  const order = scores.map((_, i) => i).sort((a, b) => (scores[b] as number) - (scores[a] as number) || a - b);
  const best = order[0]!;
  const second = order[1];
  const confidence = scores[best] as number;
  let decision: string | null = null;
  for (const i of order) {
    const min = ctx.thresholds?.[p.labels[i]!];
    if (min === undefined || (scores[i] as number) > min) {
      decision = p.labels[i]!;
      break;
    }
  }
  const topK = order.slice(0, Math.max(1, ctx.topK)).map((i) => ({ label: p.labels[i]!, score: r6(scores[i] as number) }));
  const margin = second === undefined ? confidence : confidence - (scores[second] as number);
  return {
    fields: { label: p.labels[best], confidence: r6(confidence), decision, topK },
    record: { label: p.labels[best], confidence: r6(confidence), margin: r6(margin), decision },
    classIndex: best,
    confidence,
    values: { confidence, margin },
    scores,
  };
}

function detection(p: Extract<TaskSpec, { kind: 'detection' }>, ctx: PostprocessContext): TaskOutcome {
  const geo = ctx.geometry;
  const g = geo ?? identityGeometry(ctx);
  const dets: Detection[] = decodeDetections(p, ctx.outputs, {
    inputWidth: g.width,
    inputHeight: g.height,
    srcWidth: g.srcWidth,
    srcHeight: g.srcHeight,
    scaleX: g.scaleX,
    scaleY: g.scaleY,
    padLeft: g.padX,
    padTop: g.padY,
  });
  const out = dets.map((d) => ({
    label: d.label,
    score: r6(d.score),
    box: { x1: round1(d.box.x1), y1: round1(d.box.y1), x2: round1(d.box.x2), y2: round1(d.box.y2) },
  }));
  const counts: Record<string, number> = {};
  for (const d of dets) counts[d.label] = (counts[d.label] ?? 0) + 1;
  const top = dets[0];
  const area = geo ? geo.srcWidth * geo.srcHeight : 0;
  const meanScore = dets.length ? dets.reduce((a, d) => a + d.score, 0) / dets.length : 0;
  const meanBoxArea = dets.length && area > 0 ? dets.reduce((a, d) => a + (d.box.x2 - d.box.x1) * (d.box.y2 - d.box.y1), 0) / dets.length / area : 0;
  return {
    fields: { count: dets.length, counts, detections: out },
    record: { count: dets.length, counts, detections: out, topScore: top ? r6(top.score) : null },
    values: { count: dets.length, meanScore, topScore: top?.score ?? 0, meanBoxArea },
  };
}

const round1 = (x: number): number => Math.round(x * 10) / 10;

function identityGeometry(ctx: PostprocessContext): ImageGeometry {
  const img = ctx.spec.primary?.source.kind === 'image' ? ctx.spec.primary.source : undefined;
  const w = img?.width ?? 1;
  const h = img?.height ?? 1;
  return { srcWidth: w, srcHeight: h, width: w, height: h, scaleX: 1, scaleY: 1, padX: 0, padY: 0 };
}

function segmentation(p: SegmentationSpec, ctx: PostprocessContext): TaskOutcome {
  const t = output(ctx, p.output);
  const dims = t.dims;
  // [1, C, H, W], [1, H, W] or [1, 1, H, W]
  const c = dims.length === 4 ? dims[1]! : 1;
  const hw = dims.length === 4 ? dims[2]! * dims[3]! : dims.length === 3 ? dims[1]! * dims[2]! : t.data.length;
  if (c * hw !== t.data.length || hw === 0) throw new EdgefleetError(ErrorCode.INFERENCE, `segmentation output has dims [${dims.join(', ')}] and ${t.data.length} values`);
  const mask = new Uint16Array(hw);
  const counts = new Array<number>(Math.max(c, p.labels.length)).fill(0);
  if (p.activation === 'argmax' && c > 1) {
    for (let i = 0; i < hw; i++) {
      let best = 0;
      let bv = t.data[i] as number;
      for (let k = 1; k < c; k++) {
        const v = t.data[k * hw + i] as number;
        if (v > bv) {
          bv = v;
          best = k;
        }
      }
      mask[i] = best;
      counts[best] = (counts[best] as number) + 1;
    }
  } else {
    const th = p.threshold;
    for (let i = 0; i < hw; i++) {
      const raw = t.data[i] as number;
      const v = p.activation === 'sigmoid' ? sigmoid(raw) : raw;
      const k = v > th ? 1 : 0;
      mask[i] = k;
      counts[k] = (counts[k] as number) + 1;
    }
  }
  const labels = p.labels.length >= 2 || c > 1 ? p.labels : ['background', p.labels[0]!];
  const coverage: Record<string, number> = {};
  for (const [k, n] of counts.entries()) if (labels[k] !== undefined) coverage[labels[k]] = r6(n / hw);
  const fg = 1 - (counts[0] ?? 0) / hw;
  const fields: Record<string, unknown> = { coverage, foreground: r6(fg), size: dims.length >= 2 ? dims.slice(-2) : [hw] };
  if (p.maxMaskRuns > 0) {
    const runs = rle(mask, p.maxMaskRuns);
    if (runs) fields.mask = { encoding: 'rle', runs };
    else fields.maskOmitted = `more than ${p.maxMaskRuns} runs`;
  }
  return { fields, record: { coverage, foreground: r6(fg) }, values: { foreground: fg } };
}

/** Run-length encoding [value, length, value, length, ...], or undefined past `max` runs. */
export function rle(mask: Uint16Array, max: number): number[] | undefined {
  const out: number[] = [];
  let i = 0;
  while (i < mask.length) {
    const v = mask[i] as number;
    let j = i + 1;
    while (j < mask.length && mask[j] === v) j++;
    if (out.length / 2 >= max) return undefined;
    out.push(v, j - i);
    i = j;
  }
  return out;
}

function regression(p: RegressionSpec, ctx: PostprocessContext): TaskOutcome {
  const values: Record<string, number> = {};
  const fields: Record<string, { value: number; unit?: string; outOfRange?: true }> = {};
  for (const target of p.targets) {
    const t = output(ctx, target.output);
    const raw = t.data[target.index];
    if (raw === undefined) throw new EdgefleetError(ErrorCode.INFERENCE, `regression target ${target.name}: output has ${t.data.length} values, index ${target.index}`);
    const v = raw * target.scale + target.offset;
    values[target.name] = v;
    const f: { value: number; unit?: string; outOfRange?: true } = { value: r6(v) };
    if (target.unit) f.unit = target.unit;
    if ((target.min !== undefined && v < target.min) || (target.max !== undefined && v > target.max)) f.outOfRange = true;
    fields[target.name] = f;
  }
  const compact = Object.fromEntries(Object.entries(values).map(([k, v]) => [k, r6(v)]));
  return { fields: { values: fields }, record: { values: compact }, values };
}

function anomaly(p: AnomalySpec, ctx: PostprocessContext): TaskOutcome {
  let score: number;
  if (p.reconstructs !== undefined) {
    const fed = ctx.inputs[p.reconstructs];
    const t = output(ctx, p.output);
    if (!fed || fed.length !== t.data.length) {
      throw new EdgefleetError(ErrorCode.INFERENCE, `anomaly: output ${p.output ?? ctx.spec.outputs[0]!.name} has ${t.data.length} values, input ${p.reconstructs} ${fed?.length ?? 0}`);
    }
    let se = 0;
    for (let i = 0; i < fed.length; i++) {
      const d = (t.data[i] as number) - (fed[i] as number);
      se += d * d;
    }
    score = se / fed.length;
  } else {
    const t = output(ctx, p.output);
    const v = t.data[p.index];
    if (v === undefined) throw new EdgefleetError(ErrorCode.INFERENCE, `anomaly: output has ${t.data.length} values, index ${p.index}`);
    score = v;
  }
  if (!Number.isFinite(score)) throw new EdgefleetError(ErrorCode.INFERENCE, `anomaly score is ${score}`);
  const alarm = score > p.threshold;
  const published = p.normalize ? score / p.threshold : score;
  return {
    fields: { score: r6(published), threshold: p.normalize ? 1 : p.threshold, alarm },
    record: { score: r6(published), alarm },
    values: { score: published, alarm: alarm ? 1 : 0 },
  };
}

function embedding(p: EmbeddingSpec, ctx: PostprocessContext): TaskOutcome {
  const fields: Record<string, { dims: number[]; values: number[] }> = {};
  const k = 10 ** p.decimals;
  let total = 0;
  for (const name of p.outputs) {
    const t = output(ctx, name);
    total += t.data.length;
    if (total > p.maxElements) {
      throw new EdgefleetError(ErrorCode.INFERENCE, `embedding outputs have more than maxElements ${p.maxElements} values (${name}: [${t.dims.join(', ')}]); raise postprocessing.maxElements or pass fewer outputs`);
    }
    fields[name] = { dims: t.dims, values: Array.from(t.data, (v) => Math.round(v * k) / k) };
  }
  const first = ctx.outputs[p.outputs[0]!]!;
  let norm = 0;
  for (const v of first.data) norm += v * v;
  return { fields: { tensors: fields }, record: { elements: total, norm: r6(Math.sqrt(norm)) }, values: { norm: Math.sqrt(norm) } };
}

/** Runs the model's task postprocessing. Throws INFERENCE for outputs that do not fit the spec. */
export function postprocess(ctx: PostprocessContext): TaskOutcome {
  const p = ctx.spec.post;
  switch (p.kind) {
    case 'classification':
      return classification(p, ctx);
    case 'detection':
      return detection(p, ctx);
    case 'segmentation':
      return segmentation(p, ctx);
    case 'regression':
      return regression(p, ctx);
    case 'anomaly':
      return anomaly(p, ctx);
    case 'embedding':
      return embedding(p, ctx);
  }
}
