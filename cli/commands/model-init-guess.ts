/**
 * The guesser behind `edgefleet model init` (issue #13): from a model's own input and output
 * metadata (names, dtypes, shapes, as onnxruntime reports them) it drafts the manifest v2 parts
 * a person would otherwise write by hand: each input's source, the task and its postprocessing.
 * Pure functions over plain data, so every rule is tested without a model; the command loads
 * the model (in a child process) and passes the metadata in.
 *
 * Rules, in order (each guess is reported in `guessed`, each thing a person must confirm in
 * `check`):
 *  1. State: an input and an output of equal dtype and shape whose names pair up (h/hn,
 *     state/stateN, c_in/c_out, past_x/present_x, ...) → the input is fed from that output.
 *  2. The request input: rank 4 with 1, 3 or 4 channels first or last → image (NCHW / NHWC);
 *     rank 3 → window [1, T, F] (or [1, F, T] when F ≤ 8 and T ≥ 16 F); rank 1-2 → reading,
 *     or a one-feature window [1, T] when the last axis is symbolic or beyond 4096 values; one of
 *     them takes the request (image > window > reading, or --primary). Symbolic sizes come from
 *     --dim, else image 640, window 64 (512 for a one-feature window).
 *  3. Small integer or bool inputs, and anything left → constants (zeros unless given).
 *  4. Task, from the outputs that are not state: boxes/scores(/classes) names → detection nms
 *     (decoded when per-box scores have thousands of rows), or ssd for per-class scores over
 *     anchors (anchors solved from the box count); one [1, 4+C, N] output with N ≫ C → yolov8,
 *     [1, N, 5+C] → yolov5 (the anchor-free cell count for the input size decides when it can);
 *     an output shaped like the request input → anomaly (autoencoder); [1, C, H, W] at the
 *     image's resolution → segmentation; [1, C] → classification (embedding when named so or
 *     C > 10000); [1, 1] → regression; otherwise embedding.
 *  5. After the reference run (refineWithOutputs): softmax or sigmoid already inside the model,
 *     and SSD-looking heads whose boxes come out decoded (corner form, 0..1) → decoder decoded.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { InputSpecV2, TensorDtypeV2, TensorSpecV2 } from '../../shared/manifest.ts';
import type { DetectionSpec, ImageSource, InputSource, Task, TaskSpec } from '../../shared/tasks/specs.ts';

export interface TensorMeta {
  name: string;
  /** ORT's type name: float32, float16, uint8, int8, int32, int64, bool, ... */
  type: string;
  dims: (number | string)[];
}

export interface GuessOptions {
  /** The task, when the operator knows better than the guess. */
  task?: Task;
  /** The input that takes the request, when several could. */
  primary?: string;
  /** Values for constant inputs, by input name. */
  constants?: Readonly<Record<string, readonly number[]>>;
  /** Image size assumed where the model's H/W are symbolic. Default 640. */
  defaultImageSize?: number;
  /** Sizes for symbolic dims, by name (`sequence=512`): used for image and window sizes. */
  dims?: Readonly<Record<string, number>>;
}

export interface Guess {
  task: Task;
  inputs: InputSpecV2[];
  outputs: TensorSpecV2[];
  postprocessing: TaskSpec;
  /** What was guessed from what, one line each. */
  guessed: string[];
  /** What the operator must check or fill in before releasing the model. */
  check: string[];
}

type Dim = number | string;

export const V2_DTYPES: readonly TensorDtypeV2[] = ['float32', 'float16', 'uint8', 'int8', 'int32', 'int64', 'bool'];
const FLOAT: readonly string[] = ['float32', 'float16'];
const INT: readonly string[] = ['int64', 'int32', 'int8', 'uint8'];

const fixed = (d: Dim | undefined): d is number => typeof d === 'number';
const fmt = (dims: readonly Dim[]): string => `[${dims.join(', ')}]`;
const elementsOf = (dims: readonly Dim[]): number => dims.reduce<number>((a, d) => a * (fixed(d) ? d : 1), 1);
const sameShape = (a: readonly Dim[], b: readonly Dim[]): boolean =>
  a.length === b.length && a.every((d, i) => (fixed(d) ? d === b[i] : !fixed(b[i])));

function badModel(message: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_MODEL, message);
}

/** A model tensor as manifest v2 can declare it: a supported dtype, rank ≤ 5, named dims. */
export function tensorSpecOf(m: TensorMeta, what: 'input' | 'output'): TensorSpecV2 {
  if (!(V2_DTYPES as readonly string[]).includes(m.type)) {
    throw badModel(`${what} ${m.name} is ${m.type}; manifest v2 describes ${V2_DTYPES.join(', ')} tensors only`);
  }
  if (m.dims.length > 5) throw badModel(`${what} ${m.name} has rank ${m.dims.length}; manifest v2 describes at most 5 dimensions`);
  if (m.name.length < 1 || m.name.length > 128) throw badModel(`${what} name "${m.name.slice(0, 40)}..." is longer than the manifest's 128 characters`);
  // ORT reports a dim with neither value nor name as ''; a symbolic name over 32 characters is
  // shortened: the checks only ask whether a dim is fixed or symbolic, not what it is called.
  const dims = m.dims.map((d, i) => (fixed(d) ? (d > 0 ? d : `d${i}`) : d === '' ? `d${i}` : d.slice(0, 32)));
  return { name: m.name, dtype: m.type as TensorDtypeV2, shape: dims };
}

// ------------------------------------------------------------------------------------ state

const IN_SUFFIXES = ['_in', '.in', 'in', '_0', '0', '_prev', '_init'];
const IN_PREFIXES = ['past_', 'past.', 'prev_', 'in_', 'input_'];
const OUT_SUFFIXES = ['_out', '.out', 'out', '_n', 'n', '_next', '_new', '1', '_1'];
const OUT_PREFIXES = ['present_', 'present.', 'next_', 'new_', 'out_', 'output_'];

function stems(name: string, suffixes: readonly string[], prefixes: readonly string[]): Set<string> {
  const n = name.toLowerCase();
  const out = new Set<string>();
  for (const s of suffixes) if (n.length > s.length && n.endsWith(s)) out.add(n.slice(0, -s.length));
  for (const p of prefixes) if (n.length > p.length && n.startsWith(p)) out.add(n.slice(p.length));
  return out;
}

/** Whether input `i` and output `o` are one piece of state by name: h/hn, x_in/x_out, past_k/present_k. */
export function statePair(i: string, o: string): boolean {
  if (i === o) return false;
  const si = stems(i, IN_SUFFIXES, IN_PREFIXES);
  const so = stems(o, OUT_SUFFIXES, OUT_PREFIXES);
  const li = i.toLowerCase();
  const lo = o.toLowerCase();
  if (so.has(li) || si.has(lo)) return true;
  for (const s of si) if (so.has(s)) return true;
  return false;
}

// ---------------------------------------------------------------------------- request input

type Role =
  | { kind: 'image'; layout: 'NCHW' | 'NHWC'; channels: number; height: Dim; width: Dim }
  | { kind: 'window'; layout: 'TF' | 'FT' | 'T'; size: Dim; features: number }
  | { kind: 'reading'; features: number };

const RANK: Record<Role['kind'], number> = { image: 3, window: 2, reading: 1 };

/** `t` with symbolic dims sized where the operator gave sizes; `symbolic` its original shape. */
function roleOf(t: TensorSpecV2, symbolic: readonly Dim[] = t.shape): Role | undefined {
  const s = t.shape;
  if (!(FLOAT.includes(t.dtype) || t.dtype === 'uint8')) return undefined;
  if (s.length === 4) {
    const c1 = s[1];
    const c3 = s[3];
    if (fixed(c1) && [1, 3, 4].includes(c1)) return { kind: 'image', layout: 'NCHW', channels: c1, height: s[2] as Dim, width: s[3] as Dim };
    if (fixed(c3) && [1, 3, 4].includes(c3)) return { kind: 'image', layout: 'NHWC', channels: c3, height: s[1] as Dim, width: s[2] as Dim };
    return undefined;
  }
  if (t.dtype === 'uint8') return undefined;
  if (s.length === 3) {
    const [, a, b] = s;
    // [1, F, T]: a few channels over a long time axis (audio, vibration, IMU) reads better as FT.
    if (fixed(a) && a <= 8 && (!fixed(b) || b >= 16 * a)) return { kind: 'window', layout: 'FT', size: b as Dim, features: a };
    if (fixed(b) && b <= 256) return { kind: 'window', layout: 'TF', size: a as Dim, features: b };
    return undefined;
  }
  if (s.length === 2 || s.length === 1) {
    const f = s[s.length - 1];
    // A symbolic last axis is time (audio samples), even when --dim gave it a size.
    if (fixed(f) && f <= 4096 && fixed(symbolic[s.length - 1])) return { kind: 'reading', features: f };
    if (s.length === 2) return { kind: 'window', layout: 'T', size: f as Dim, features: 1 };
  }
  return undefined;
}

const featureNames = (n: number, prefix: string): { name: string; mean: number; std: number }[] =>
  Array.from({ length: n }, (_, i) => ({ name: `${prefix}${i}`, mean: 0, std: 1 }));

/** Cells of an anchor-free head over `strides` for an h × w input. */
function cells(h: number, w: number, strides: readonly number[]): number {
  return strides.reduce((a, s) => a + Math.ceil(h / s) * Math.ceil(w / s), 0);
}

/** SSD anchor layouts (strides, anchors per cell) that give `n` boxes for an h × w input. */
export function solveAnchors(n: number, h: number, w: number): { strides: number[]; perCell: number[] } | undefined {
  const all = [8, 16, 32, 64, 128];
  for (let len = 1; len <= 4; len++) {
    for (let start = 0; start + len <= all.length; start++) {
      const strides = all.slice(start, start + len);
      const counts = strides.map((s) => Math.ceil(h / s) * Math.ceil(w / s));
      for (let p = 1; p <= 8; p++) if (counts.reduce((a, c) => a + c * p, 0) === n) return { strides, perCell: strides.map(() => p) };
      // BlazeFace-like: one count on the first stride, another on the rest (2 then 6 at 128×128).
      if (len >= 2) {
        for (let p = 1; p <= 8; p++) {
          for (let q = 1; q <= 8; q++) {
            if ((counts[0] as number) * p + counts.slice(1).reduce((a, c) => a + c * q, 0) === n) return { strides, perCell: strides.map((_, i) => (i === 0 ? p : q)) };
          }
        }
      }
    }
  }
  return undefined;
}

// --------------------------------------------------------------------------------- the guess

const DETECTION_DEFAULTS = {
  boxFormat: 'cxcywh',
  normalized: false,
  scoreActivation: 'none',
  scoreThreshold: 0.25,
  iouThreshold: 0.45,
  maxDetections: 100,
  classAgnostic: false,
} as const satisfies Partial<DetectionSpec>;

const labelsOf = (n: number): string[] => Array.from({ length: n }, (_, i) => `class_${i}`);
const targetName = (name: string): string => {
  const s = name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^[^A-Za-z0-9]+/, '');
  return (s || 'value').slice(0, 64);
};

interface Context {
  /** Outputs that are not state. */
  heads: TensorSpecV2[];
  primary: InputSpecV2 | undefined;
  image: { height: number; width: number; fixedSize: boolean } | undefined;
  guessed: string[];
  check: string[];
}

function byName(heads: readonly TensorSpecV2[], re: RegExp, not?: TensorSpecV2): TensorSpecV2 | undefined {
  return heads.find((o) => o !== not && re.test(o.name));
}

/** Detection from named outputs: nms (per-box scores) or ssd (per-class scores over anchors). */
function detectionByNames(ctx: Context): DetectionSpec | undefined {
  const scores = byName(ctx.heads, /score|conf|classif|logit/i);
  const boxes = ctx.heads.find((o) => o !== scores && /box|regress|loc|delta|coord/i.test(o.name) && fixed(o.shape.at(-1)) && (o.shape.at(-1) as number) >= 4);
  if (!scores || !boxes) return undefined;
  const classes = ctx.heads.find((o) => o !== scores && o !== boxes && /class|label|categor/i.test(o.name));
  const count = ctx.heads.find((o) => o !== scores && o !== boxes && o !== classes && /num|count|valid/i.test(o.name));
  // Per-class scores over as many anchors as there are boxes, and no classes output: an SSD head.
  if (scores.shape.length === 3 && boxes.shape.length === 3 && !classes && scores.shape[1] === boxes.shape[1]) {
    const n = scores.shape[1];
    const c = scores.shape[2];
    const h = ctx.image?.height ?? 128;
    const w = ctx.image?.width ?? 128;
    const anchors = fixed(n) ? solveAnchors(n, h, w) : undefined;
    ctx.guessed.push(`detection, decoder ssd: ${boxes.name} ${fmt(boxes.shape)} box deltas and ${scores.name} ${fmt(scores.shape)} scores over anchors`);
    if (anchors) ctx.guessed.push(`ssd anchors: strides [${anchors.strides.join(', ')}], ${anchors.perCell.join('/')} per cell give the ${n} boxes at ${w}x${h}`);
    ctx.check.push(
      anchors
        ? 'ssd anchors and deltaScale were solved from the box count: compare them with the model’s anchor configuration'
        : `ssd anchors: no stride layout gives ${String(n)} boxes at ${w}x${h}; postprocessing.anchors is a placeholder, set it from the model’s anchor configuration`,
    );
    ctx.check.push('ssd: scoreActivation sigmoid assumes logits; boxFormat and normalized depend on the export');
    return {
      kind: 'detection',
      decoder: 'ssd',
      labels: labelsOf(fixed(c) ? c : 1),
      boxes: boxes.name,
      scores: scores.name,
      ...DETECTION_DEFAULTS,
      scoreActivation: 'sigmoid',
      anchors: { strides: anchors?.strides ?? [8, 16], perCell: anchors?.perCell ?? [2, 6], offset: 0.5 },
      deltaScale: ctx.image?.width ?? 128,
    };
  }
  // Per-box scores: NMS inside the model keeps a few hundred rows at most; thousands of rows
  // (one per anchor) are boxes decoded in the model with NMS still to do.
  const rows = scores.shape.length >= 2 ? scores.shape[1] : scores.shape[0];
  const decoded = !classes && !count && fixed(rows) && rows > 1000;
  ctx.guessed.push(
    `detection, decoder ${decoded ? `decoded (${String(rows)} rows: no NMS inside)` : 'nms (NMS inside the model)'}: boxes ${boxes.name} ${fmt(boxes.shape)}, scores ${scores.name} ${fmt(scores.shape)}` +
      `${classes ? `, classes ${classes.name}` : ''}${count ? `, count ${count.name}` : ''}`,
  );
  ctx.check.push(`${decoded ? 'decoded' : 'nms'}: boxFormat xyxy and pixel (not normalized) coordinates are the common export; check yours`);
  if (!classes && !decoded) ctx.check.push('nms: no classes output found; with several labels, name it in postprocessing.classes');
  return {
    kind: 'detection',
    decoder: decoded ? 'decoded' : 'nms',
    labels: labelsOf(1),
    boxes: boxes.name,
    scores: scores.name,
    ...(classes ? { classes: classes.name } : {}),
    ...(count ? { count: count.name } : {}),
    ...DETECTION_DEFAULTS,
    boxFormat: 'xyxy',
  };
}

/** YOLO heads: one [1, 4+C, N] (v8/v11) or [1, N, 5+C] (v5) prediction tensor. */
function detectionYolo(ctx: Context, forced: boolean): DetectionSpec | undefined {
  for (const o of ctx.heads) {
    const [b, a, n] = o.shape;
    if (o.shape.length !== 3 || !fixed(a) || !fixed(n) || (fixed(b) && b !== 1) || !FLOAT.includes(o.dtype)) continue;
    const im = ctx.image?.fixedSize ? ctx.image : undefined;
    const free = im ? [cells(im.height, im.width, [8, 16, 32]), cells(im.height, im.width, [8, 16, 32, 64])] : [];
    const base = { kind: 'detection', output: o.name, ...DETECTION_DEFAULTS } as const;
    if (a >= 5 && n > a && (free.includes(n) || n >= 8 * a || (forced && !free.length))) {
      const why = free.includes(n) ? `${n} is the anchor-free cell count at ${im?.width}x${im?.height}` : `${n} ≫ ${a}`;
      ctx.guessed.push(`detection, decoder yolov8: ${o.name} ${fmt(o.shape)} is [1, 4+C, N] with C = ${a - 4} classes (${why})`);
      return { ...base, decoder: 'yolov8', labels: labelsOf(a - 4) };
    }
    if (n >= 6 && a > n && (free.some((f) => a === 3 * f) || a >= 8 * n || forced)) {
      if (free.includes(a)) {
        ctx.check.push(
          `${o.name} ${fmt(o.shape)} has one row per anchor-free cell: it looks like a YOLOv8 head transposed to [1, N, 4+C], which no decoder reads; re-export without the transpose (decoder yolov8 wants [1, 4+C, N])`,
        );
      }
      const why = free.some((f) => a === 3 * f) ? `${a} is 3 anchors per cell at ${im?.width}x${im?.height}` : `${a} ≫ ${n}`;
      ctx.guessed.push(`detection, decoder yolov5: ${o.name} ${fmt(o.shape)} is [1, N, 5+C] with C = ${n - 5} classes (${why})`);
      return { ...base, decoder: 'yolov5', labels: labelsOf(n - 5) };
    }
  }
  return undefined;
}

function segmentation(ctx: Context, forced: boolean): TaskSpec | undefined {
  const im = ctx.image;
  for (const o of ctx.heads) {
    const s = o.shape;
    const hw = s.length === 4 ? [s[2], s[3]] : s.length === 3 ? [s[1], s[2]] : undefined;
    if (!hw || !FLOAT.includes(o.dtype)) continue;
    const [h, w] = hw;
    const scaled = im && fixed(h) && fixed(w) && [1, 2, 4, 8].some((k) => h * k === im.height && w * k === im.width) && h >= 8;
    const symbolic = !fixed(h) && !fixed(w) && im && !im.fixedSize;
    if (!scaled && !symbolic && !forced) continue;
    const c = s.length === 4 && fixed(s[1]) ? s[1] : 1;
    const activation = c > 1 ? 'argmax' : /sigmoid|prob|softmax/i.test(o.name) ? 'probability' : 'sigmoid';
    ctx.guessed.push(`segmentation: ${o.name} ${fmt(s)} is a per-pixel map with ${c} class${c === 1 ? '' : 'es'}${c === 1 ? ` (${activation})` : ''}`);
    if (c === 1) ctx.check.push('segmentation: one map thresholded at 0.5; set the threshold the model was tuned for');
    return { kind: 'segmentation', output: o.name, labels: labelsOf(c), activation, threshold: 0.5, maxMaskRuns: 0 };
  }
  return undefined;
}

function autoencoder(ctx: Context): TaskSpec | undefined {
  const p = ctx.primary;
  if (!p) return undefined;
  const o = ctx.heads.find((h) => FLOAT.includes(h.dtype) && sameShape(h.shape, p.shape));
  if (!o) return undefined;
  ctx.guessed.push(`anomaly (autoencoder): ${o.name} ${fmt(o.shape)} has the shape of input ${p.name}; the score is their mean squared error`);
  ctx.check.push('anomaly threshold is a placeholder (1): set it from normal data, e.g. the 99th percentile of its reconstruction error');
  return { kind: 'anomaly', output: o.name, index: 0, reconstructs: p.name, threshold: 1, normalize: false };
}

function vectorHead(ctx: Context, task: Task | undefined): TaskSpec | undefined {
  const o = ctx.heads.find((h) => h.shape.length <= 2 && (h.shape.length === 0 || fixed(h.shape.at(-1))));
  if (!o) return undefined;
  const c = o.shape.length === 0 ? 1 : (o.shape.at(-1) as number);
  const embeddingNamed = /embed|feature|feat$|vector|descriptor|pool/i.test(o.name);
  if (task === 'embedding' || (!task && (embeddingNamed || c > 10_000))) return embedding(ctx, ctx.heads);
  if (task === 'anomaly' || (!task && c === 1 && /anomal|outlier|novel|recon/i.test(o.name))) {
    ctx.guessed.push(`anomaly: ${o.name} ${fmt(o.shape)} element 0 is the score`);
    ctx.check.push('anomaly threshold is a placeholder (1): set it from normal data');
    return { kind: 'anomaly', output: o.name, index: 0, threshold: 1, normalize: false };
  }
  if (task === 'regression' || (!task && c === 1)) {
    const n = Math.min(c, 64);
    const targets = Array.from({ length: n }, (_, i) => ({ name: n === 1 ? targetName(o.name) : `${targetName(o.name)}_${i}`, output: o.name, index: i, scale: 1, offset: 0 }));
    ctx.guessed.push(`regression: ${o.name} ${fmt(o.shape)} → ${n} target${n === 1 ? '' : 's'} (${targets.map((t) => t.name).join(', ')})`);
    ctx.check.push('regression: name each target, add its unit, scale/offset and trusted min/max');
    return { kind: 'regression', targets };
  }
  if (c >= 2 && c <= 10_000) {
    const activation = /prob|softmax/i.test(o.name) ? 'probabilities' : /sigmoid/i.test(o.name) ? 'sigmoid' : 'logits';
    ctx.guessed.push(`classification: ${o.name} ${fmt(o.shape)} scores ${c} classes (${activation}${activation === 'logits' ? ', the agent applies softmax' : ''})`);
    return { kind: 'classification', output: o.name, activation, labels: labelsOf(c) };
  }
  return undefined;
}

function embedding(ctx: Context, heads: readonly TensorSpecV2[]): TaskSpec {
  const outs = heads.slice(0, 16);
  const max = Math.max(...outs.map((o) => elementsOf(o.shape)));
  ctx.guessed.push(`embedding: ${outs.map((o) => `${o.name} ${fmt(o.shape)}`).join(', ')} passed through`);
  if (max > 65_536) ctx.check.push(`embedding: ${max} elements per output, more than the 65536 the agent publishes; maxElements caps it`);
  return { kind: 'embedding', outputs: outs.map((o) => o.name), maxElements: Math.min(Math.max(max, 1), 65_536), decimals: 6 };
}

function guessTask(ctx: Context, task: Task | undefined): TaskSpec {
  const want = (t: Task): boolean => task === undefined || task === t;
  const imageModel = ctx.primary?.source.kind === 'image';
  if (want('detection') && (imageModel || task)) {
    const d = detectionByNames(ctx) ?? detectionYolo(ctx, task === 'detection');
    if (d) return d;
  }
  if (want('anomaly')) {
    const a = autoencoder(ctx);
    if (a) return a;
  }
  if (want('segmentation') && (imageModel || task)) {
    const s = segmentation(ctx, task === 'segmentation');
    if (s) return s;
  }
  if (task === undefined || ['classification', 'regression', 'anomaly', 'embedding'].includes(task)) {
    const v = vectorHead(ctx, task);
    if (v) return v;
  }
  if (task === undefined || task === 'embedding') return embedding(ctx, ctx.heads);
  throw new EdgefleetError(ErrorCode.BAD_INPUT, `--task ${task}: no output of this model fits it (${ctx.heads.map((o) => `${o.name} ${fmt(o.shape)}`).join(', ')})`);
}

/** Drafts inputs (with sources), outputs and postprocessing from a model's metadata. */
export function guessModel(inputsMeta: readonly TensorMeta[], outputsMeta: readonly TensorMeta[], opts: GuessOptions = {}): Guess {
  if (inputsMeta.length === 0 || inputsMeta.length > 16) throw badModel(`the model has ${inputsMeta.length} inputs; manifest v2 describes 1 to 16`);
  if (outputsMeta.length === 0 || outputsMeta.length > 64) throw badModel(`the model has ${outputsMeta.length} outputs; manifest v2 describes 1 to 64`);
  const ins = inputsMeta.map((m) => tensorSpecOf(m, 'input'));
  const outputs = outputsMeta.map((m) => tensorSpecOf(m, 'output'));
  const guessed: string[] = [];
  const check: string[] = [];
  if (opts.primary !== undefined && !ins.some((i) => i.name === opts.primary)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `--primary ${opts.primary}: the model has no such input`);
  for (const name of Object.keys(opts.constants ?? {})) {
    if (!ins.some((i) => i.name === name)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `--constant ${name}: the model has no such input`);
  }

  // 1. State pairs, unless that would leave nothing to take the request.
  const state = new Map<string, string>();
  const taken = new Set<string>();
  for (const i of ins) {
    if (i.name === opts.primary || opts.constants?.[i.name]) continue;
    const o = outputs.find((o) => !taken.has(o.name) && o.dtype === i.dtype && sameShape(o.shape, i.shape) && statePair(i.name, o.name));
    if (o) {
      state.set(i.name, o.name);
      taken.add(o.name);
    }
  }
  if (state.size === ins.length) {
    const first = ins[0] as TensorSpecV2;
    taken.delete(state.get(first.name) as string);
    state.delete(first.name);
  }

  // 2. The request input.
  const roles = new Map<string, Role>();
  const sized = (i: TensorSpecV2): TensorSpecV2 => ({ ...i, shape: i.shape.map((d) => (fixed(d) ? d : (opts.dims?.[d] ?? d))) });
  for (const i of ins) {
    if (state.has(i.name) || opts.constants?.[i.name]) continue;
    const r = roleOf(sized(i), i.shape);
    if (r) roles.set(i.name, r);
  }
  let primaryName = opts.primary;
  if (primaryName !== undefined && !roles.has(primaryName)) {
    throw new EdgefleetError(ErrorCode.BAD_INPUT, `--primary ${primaryName}: cannot feed an image, reading or window into ${fmt(ins.find((i) => i.name === primaryName)?.shape ?? [])}`);
  }
  if (primaryName === undefined) {
    let best = -1;
    for (const [name, r] of roles) {
      if (RANK[r.kind] > best) {
        best = RANK[r.kind];
        primaryName = name;
      }
    }
  }
  const size = opts.defaultImageSize ?? 640;
  let image: Context['image'];
  const inputs: InputSpecV2[] = ins.map((i) => {
    const out = state.get(i.name);
    if (out !== undefined) {
      guessed.push(`input ${i.name} ${fmt(i.shape)}: state, fed back from output ${out} (starts at 0)`);
      return { ...i, source: { kind: 'state', output: out, init: 0 } };
    }
    const role = i.name === primaryName ? roles.get(i.name) : undefined;
    let source: InputSource;
    if (role?.kind === 'image') {
      const h = fixed(role.height) ? role.height : size;
      const w = fixed(role.width) ? role.width : size;
      const fixedSize = fixed(role.height) && fixed(role.width);
      image = { height: h, width: w, fixedSize };
      const colour = role.channels === 1 ? 'gray' : role.channels === 4 ? 'rgba' : 'rgb';
      const img: ImageSource = {
        kind: 'image',
        width: w,
        height: h,
        fit: 'fill',
        pad: 114,
        colour,
        layout: role.layout,
        scale: i.dtype === 'uint8' ? 1 : 1 / 255,
        mean: [0],
        std: [1],
        ...(fixedSize ? {} : { dynamic: { multiple: 32, maxSide: Math.max(w, h) } }),
      };
      source = img;
      guessed.push(`input ${i.name} ${fmt(i.shape)}: image ${w}x${h} ${colour} ${role.layout}${fixedSize ? '' : ` (symbolic size: dynamic, up to ${Math.max(w, h)}; --dim sets it)`}`);
      check.push(
        `image ${i.name}: ${i.dtype === 'uint8' ? 'raw 0..255 pixels (scale 1, no mean/std)' : 'pixels scaled to 0..1 with no mean/std'}` +
          (colour === 'gray'
            ? '; set mean/std if the model was trained on normalized pixels'
            : `${i.dtype === 'uint8' ? '' : '; ImageNet-trained models usually want mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]'}; check the colour order (rgb or bgr)`),
      );
    } else if (role?.kind === 'window') {
      // A symbolic time axis: an audio frame for one-channel [1, T] input, else 64 readings.
      const n = fixed(role.size) ? role.size : role.layout === 'T' ? 512 : 64;
      source = { kind: 'window', features: featureNames(role.features, 'channel_'), size: n, hop: n, maxGapMs: 5000, layout: role.layout };
      guessed.push(`input ${i.name} ${fmt(i.shape)}: window of ${n} readings × ${role.features} channel(s), layout ${role.layout}`);
      check.push(`window ${i.name}: name the channels (channel_0...), their mean/std, the hop (${n}: no overlap) and maxGapMs${fixed(role.size) ? '' : `; the size ${n} is a guess for the symbolic time axis (--dim ${String(role.size)}=<n> sets it)`}`);
    } else if (role?.kind === 'reading') {
      source = { kind: 'reading', features: featureNames(role.features, 'feature_') };
      guessed.push(`input ${i.name} ${fmt(i.shape)}: reading of ${role.features} feature(s)`);
      check.push(`reading ${i.name}: name the features (feature_0...) in the model's order and set each one's mean/std (now 0/1: no scaling)`);
    } else {
      const n = elementsOf(i.shape);
      const given = opts.constants?.[i.name];
      if (given && given.length !== n) throw new EdgefleetError(ErrorCode.BAD_INPUT, `--constant ${i.name}: ${given.length} values, the input ${fmt(i.shape)} takes ${n}`);
      if (n > 65_536) throw badModel(`input ${i.name} ${fmt(i.shape)} is neither the request input nor state, and too large (${n} values) for a constant; write its source by hand`);
      source = { kind: 'constant', values: given ? [...given] : new Array<number>(n).fill(0) };
      guessed.push(`input ${i.name} ${fmt(i.shape)} ${i.dtype}: constant${given ? ` [${given.join(', ')}]` : ', zeros'}`);
      if (!given) {
        check.push(
          INT.includes(i.dtype) || i.dtype === 'bool'
            ? `constant ${i.name} is zeros: set its value (a sample rate, a mask, a flag?) with --constant ${i.name}=... or in the manifest`
            : `input ${i.name} ${fmt(i.shape)} is fed zeros as a constant: give it its real source (another request input is not possible: one per model)`,
        );
      }
    }
    return { ...i, source };
  });
  if (primaryName === undefined) check.push('no input looks like an image, reading or window: this model is fed only by constants and state');

  const heads = outputs.filter((o) => !taken.has(o.name));
  const ctx: Context = { heads: heads.length ? heads : outputs, primary: inputs.find((i) => i.name === primaryName), image, guessed, check };
  const post = guessTask(ctx, opts.task);
  if (post.kind === 'detection' || post.kind === 'segmentation' || post.kind === 'classification') {
    check.push(`labels are placeholders (${post.labels.slice(0, 2).join(', ')}${post.labels.length > 2 ? ', ...' : ''}): list the class names in the model's index order`);
  }
  if (post.kind === 'detection') {
    check.push('detection: scoreThreshold 0.25, iouThreshold 0.45 and maxDetections 100 are defaults; tune them on your data');
    const img = inputs.find((i) => i.name === primaryName)?.source;
    if (img?.kind === 'image') {
      img.fit = 'letterbox';
      guessed.push(`image ${primaryName}: letterboxed (aspect ratio kept, pad 114) as detection models are usually trained`);
    }
  }
  return { task: post.kind, inputs, outputs, postprocessing: post, guessed, check };
}

type Runs = ReadonlyMap<string, { dims: readonly number[]; values: ArrayLike<number> }[]>;

const allWithin = (runs: Runs, name: string | undefined, lo: number, hi: number): boolean => {
  const r = name === undefined ? undefined : runs.get(name);
  if (!r?.length) return false;
  return r.every(({ values }) => {
    for (let i = 0; i < values.length; i++) if (!((values[i] as number) >= lo && (values[i] as number) <= hi)) return false;
    return values.length > 0;
  });
};

/** Whether every row of `c` values sums to 1 within 1e-3, all in 0..1: a softmax's output. */
function rowsAreDistributions(runs: Runs, name: string | undefined, c: number): boolean {
  const r = name === undefined ? undefined : runs.get(name);
  if (!r?.length || c < 2) return false;
  return r.every(({ values }) => {
    if (values.length < c || values.length % c !== 0) return false;
    for (let row = 0; row < values.length; row += c) {
      let sum = 0;
      for (let k = row; k < row + c; k++) {
        const v = values[k] as number;
        if (!(v >= 0 && v <= 1)) return false;
        sum += v;
      }
      if (Math.abs(sum - 1) > 1e-3) return false;
    }
    return true;
  });
}

/** Whether every [.., 4] row reads as corner-form boxes (x2 ≥ x1, y2 ≥ y1) within about 0..1. */
function decodedCornerBoxes(runs: Runs, name: string | undefined): boolean {
  const r = name === undefined ? undefined : runs.get(name);
  if (!r?.length) return false;
  return r.every(({ dims, values }) => {
    if (dims.at(-1) !== 4 || values.length === 0) return false;
    for (let i = 0; i < values.length; i += 4) {
      const [x1, y1, x2, y2] = [values[i], values[i + 1], values[i + 2], values[i + 3]] as number[];
      if (!(x2! >= x1! && y2! >= y1! && x1! >= -0.5 && y1! >= -0.5 && x2! <= 1.5 && y2! <= 1.5)) return false;
    }
    return true;
  });
}

/**
 * Refines a guess with what the reference run produced (values the metadata cannot show):
 *  - a classifier whose every row already sums to 1 is `probabilities`, not `logits` (softmax
 *    twice would flatten its scores), unless its output's name says logits;
 *  - a one-map segmentation already within 0..1 is `probability` (a sigmoid inside the graph);
 *  - an ssd guess whose "deltas" are corner-form boxes within 0..1 on every row is a model that
 *    decodes its own anchors (UltraFace): decoder decoded, xyxy, normalized; softmax scores get
 *    a background column 0 (ignoreClasses);
 *  - a single value within 0..1 is probably a score: the check list says how to threshold it.
 */
export function refineWithOutputs(g: Guess, runs: Runs): void {
  const p = g.postprocessing;
  if (p.kind === 'classification' && p.activation === 'logits' && !/logit/i.test(p.output ?? '')) {
    if (rowsAreDistributions(runs, p.output ?? g.outputs[0]?.name, p.labels.length)) {
      p.activation = 'probabilities';
      g.guessed.push(`classification: every reference row of ${p.output} sums to 1, so the model already outputs probabilities (softmax inside)`);
    }
  }
  if (p.kind === 'segmentation' && p.activation === 'sigmoid' && allWithin(runs, p.output, 0, 1)) {
    p.activation = 'probability';
    g.guessed.push(`segmentation: ${p.output} stayed within 0..1 on the reference inputs, so the sigmoid is inside the model (activation probability)`);
  }
  if (p.kind === 'detection' && p.decoder === 'ssd' && decodedCornerBoxes(runs, p.boxes)) {
    const softmax = rowsAreDistributions(runs, p.scores, p.labels.length);
    const { anchors: _a, deltaScale: _d, ...rest } = p;
    // A softmax over the classes needs a "nothing" column: SSD heads put the background at 0.
    const background = softmax ? { labels: ['background', ...p.labels.slice(1)], ignoreClasses: [0] } : {};
    g.postprocessing = { ...rest, ...background, decoder: 'decoded', boxFormat: 'xyxy', normalized: true, scoreActivation: softmax ? 'none' : p.scoreActivation };
    g.guessed.push(`detection: ${p.boxes} holds corner-form boxes within 0..1 on every reference row, so the model decodes its own anchors: decoder decoded, xyxy, normalized`);
    g.check = g.check.filter((c) => !c.startsWith('ssd'));
    if (softmax) g.check.push(`detection: ${p.scores} rows sum to 1 (softmax over ${p.labels.length} columns): column 0 is taken as the background (ignoreClasses [0]); check`);
  }
  if (p.kind === 'regression' && p.targets.length === 1 && allWithin(runs, p.targets[0]?.output, 0, 1)) {
    g.check.push(`${p.targets[0]?.output} stayed within 0..1: if it is a probability or score, use task anomaly with a threshold (the schema's one-score-against-a-threshold task)`);
  }
}
