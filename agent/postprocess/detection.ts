/**
 * Object-detection postprocessing (issue #13): turns a detector's raw outputs into labelled boxes
 * in the original image's pixels, per manifest v2's DetectionSpec (shared/tasks/specs.ts). Owns
 * the five decoders, the score threshold, greedy NMS, `maxDetections` and the inverse of the
 * resize/letterbox that preprocessing applied (`Geometry`). Pure TypeScript, no ORT: it runs on
 * the agent's main thread once per frame, so it is written for speed and is synchronous.
 * agent/preprocess/image.ts places letterboxed pixels with `letterboxGeometry`, so the pixels
 * and the inverse mapping agree by construction.
 *
 * Behaviour matched upstream, and why the odd choices:
 *  - yolov8/v11 `[1, 4+C, N]` and yolov5 `[1, N, 5+C]` follow Ultralytics' non_max_suppression:
 *    one label per candidate (its best class; multi_label is not supported), yolov5's score is
 *    objectness × class score and candidates under the threshold by objectness alone are skipped
 *    first (so class scores above 1 are assumed away), class-aware NMS, boxes mapped back then
 *    clipped to [0, width] × [0, height] (scale_boxes + clip_boxes). NMS runs on the unclipped
 *    model-space boxes, as there. Differences: the threshold keeps score >= scoreThreshold
 *    (Ultralytics: >), and the inverse mapping uses the letterbox's actual resize factor and
 *    integer pad, not scale_boxes' unrounded gain (they differ by under a pixel).
 *  - The yolov8 tensor is channel-major: one sweep with classes in the outer loop and candidates
 *    in the inner one (sequential reads, nothing transposed or copied) only compares each class
 *    score with the threshold, which also catches a NaN anywhere; then the best class (lowest
 *    index on a tie) and the box are read for the columns that passed. When more than an eighth
 *    pass (a validation-style threshold), one classes-outer argmax sweep replaces the walks.
 *    Survivors go into typed arrays; only they are ordered (a heap, popped as NMS needs them).
 *  - With `scoreActivation: 'sigmoid'` the threshold is compared in logit space first, so exp()
 *    runs only for candidates that pass, then checked exactly on the sigmoid.
 *  - ssd follows MediaPipe: anchors as ssd_anchors_calculator makes them with fixed_anchor_size
 *    (w = h = 1, centres (cell + offset) / grid, consecutive equal strides merged into one grid),
 *    boxes decoded as tensors_to_detections_calculator's DecodeBoxes (centre = delta / scale ×
 *    anchor size + anchor centre, size = delta / scale × anchor size, no exp), score = best class
 *    (sigmoid if asked). Boxes of negative width or height are dropped, by every decoder, as
 *    MediaPipe drops them (b/171391719); zero-size boxes stay (IoU 0 with everything). Unlike the
 *    BlazeFace graphs, NMS here is plain greedy NMS, not MediaPipe's weighted (blending) NMS, and
 *    keypoints are not returned. Anchors are cached per spec object and input size.
 *  - decoded (boxes decoded inside the model, no NMS: UltraFace, SSD exports with their box
 *    decoding built in): `boxes` [1, N, ≥4] in boxFormat, `scores` [1, N, C]; best class per row,
 *    threshold and NMS as for the others.
 *  - ignoreClasses (MediaPipe's ignore_classes): those score columns are never read, in every
 *    decoder, so a background column (UltraFace, TF Object Detection API SSDs) never wins.
 *  - nms (NMS inside the model): rows are thresholded, sorted and capped, but NMS is not run again,
 *    since the model's own NMS already did it and a second pass at another IoU would second-guess
 *    it. The exception is `classAgnostic: true`: in-model NMS is usually per class, and agnostic
 *    suppression across classes is then something the agent must add.
 *  - NMS: greedy, candidates by score descending, ties by lower candidate index (anchor/row
 *    order), so results are deterministic; a candidate is dropped when its IoU with a kept box
 *    of the same class (any class if classAgnostic) is > iouThreshold (torchvision.ops.nms);
 *    stops as soon as maxDetections are kept, which gives the same result as NMS over all then
 *    truncation because kept boxes come out in score order.
 *
 * Errors: a missing tensor, wrong dims for the decoder, or a class count that disagrees with the
 * labels is BAD_MODEL (naming the tensor and its dims); a NaN in a score that is read, a
 * NaN/Infinite box of a candidate that passes, or an impossible `count` is INFERENCE; a spec
 * missing what its decoder needs (or an ignoreClasses index past the labels) is BAD_MANIFEST; a
 * geometry that is not positive and finite is BAD_INPUT.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { DetectionSpec, ImageSource } from '../../shared/tasks/specs.ts';

/** One output as the engine returns it (agent/runtime/engine.ts OutputTensor: non-float outputs come as float32). */
export interface TensorView {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

export type DetectionOutputs = Readonly<Record<string, TensorView>>;

export interface Box {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

export interface Detection {
  label: string;
  score: number;
  /** Original-image pixels, clipped to the image. */
  box: Box;
  classIndex: number;
}

/**
 * How the original image was placed in the model input: a source point (x, y) lands at
 * (x · scaleX + padLeft, y · scaleY + padTop) in model-input pixels. A negative pad is a crop
 * (`cover`).
 */
export interface Geometry {
  inputWidth: number;
  inputHeight: number;
  srcWidth: number;
  srcHeight: number;
  scaleX: number;
  scaleY: number;
  padLeft: number;
  padTop: number;
}

export type Fit = ImageSource['fit'];

function badInput(message: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_INPUT, message);
}

function positiveFinite(x: number): boolean {
  return Number.isFinite(x) && x > 0;
}

/** Python's round(): half to even (Ultralytics computes its letterbox sizes with it). */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // + 0 turns Math.round's -0 (for -0.5 < x < 0) into 0.
  return (r - x === 0.5 && r % 2 !== 0 ? r - 1 : r) + 0;
}

/**
 * The placement of a srcW×srcH image in a dstW×dstH model input for each fit:
 *  - `fill`: stretched, each axis on its own.
 *  - `letterbox`: Ultralytics LetterBox (auto=False, scaleup=True, center=True): r = min of the
 *    axis ratios, resized to round(w·r)×round(h·r), padded centred with left = round(dw/2 − 0.1).
 *  - `contain`: sharp's contain (position centre): shrink = max of src/dst, resized to
 *    rint(src/shrink), pad left = floor((dst − resized) / 2). Same placement as `letterbox`
 *    except where the two roundings part on a .5.
 *  - `cover`: sharp's cover (position centre): shrink = min of src/dst, resized to
 *    rint(src/shrink), cropped centred, crop left = floor((resized − dst + 1) / 2).
 *  - `inside` / `outside`: sharp's, the resized image placed top-left (padded or cropped), as
 *    agent/preprocess/image.ts places them.
 * The scale per axis is the resize's actual factor (resized / src), so boxes map back exactly.
 */
export function letterboxGeometry(srcW: number, srcH: number, dstW: number, dstH: number, fit: Fit): Geometry {
  if (![srcW, srcH, dstW, dstH].every(positiveFinite)) throw badInput(`detection geometry: sizes must be positive, got ${srcW}×${srcH} → ${dstW}×${dstH}`);
  const base = { inputWidth: dstW, inputHeight: dstH, srcWidth: srcW, srcHeight: srcH };
  switch (fit) {
    case 'fill':
      return { ...base, scaleX: dstW / srcW, scaleY: dstH / srcH, padLeft: 0, padTop: 0 };
    case 'letterbox': {
      const r = Math.min(dstH / srcH, dstW / srcW);
      const w = roundHalfEven(srcW * r);
      const h = roundHalfEven(srcH * r);
      const padLeft = roundHalfEven((dstW - w) / 2 - 0.1);
      const padTop = roundHalfEven((dstH - h) / 2 - 0.1);
      return { ...base, scaleX: w / srcW, scaleY: h / srcH, padLeft, padTop };
    }
    case 'contain':
    case 'inside': {
      const shrink = Math.max(srcW / dstW, srcH / dstH);
      const w = Math.max(1, roundHalfEven(srcW / shrink));
      const h = Math.max(1, roundHalfEven(srcH / shrink));
      const centred = fit === 'contain';
      return { ...base, scaleX: w / srcW, scaleY: h / srcH, padLeft: centred ? Math.floor((dstW - w) / 2) : 0, padTop: centred ? Math.floor((dstH - h) / 2) : 0 };
    }
    case 'cover':
    case 'outside': {
      const shrink = Math.min(srcW / dstW, srcH / dstH);
      const w = Math.max(1, roundHalfEven(srcW / shrink));
      const h = Math.max(1, roundHalfEven(srcH / shrink));
      const centred = fit === 'cover';
      return { ...base, scaleX: w / srcW, scaleY: h / srcH, padLeft: centred ? 0 - Math.floor((w - dstW + 1) / 2) : 0, padTop: centred ? 0 - Math.floor((h - dstH + 1) / 2) : 0 };
    }
  }
}

// ------------------------------------------------------------------------------- candidates

/**
 * Candidates that passed the threshold, boxes as model-input pixel corners; grows by doubling.
 * Decoders push in tensor order (anchor, row or column), so a lower slot is a lower candidate
 * index: NMS breaks score ties on the slot.
 */
class Candidates {
  n = 0;
  x1: Float64Array;
  y1: Float64Array;
  x2: Float64Array;
  y2: Float64Array;
  score: Float64Array;
  cls: Int32Array;

  constructor(capacity: number) {
    const c = Math.max(16, capacity);
    this.x1 = new Float64Array(c);
    this.y1 = new Float64Array(c);
    this.x2 = new Float64Array(c);
    this.y2 = new Float64Array(c);
    this.score = new Float64Array(c);
    this.cls = new Int32Array(c);
  }

  private grow(): void {
    const c = this.x1.length * 2;
    const f = (a: Float64Array): Float64Array => {
      const b = new Float64Array(c);
      b.set(a);
      return b;
    };
    const cls = new Int32Array(c);
    cls.set(this.cls);
    this.x1 = f(this.x1);
    this.y1 = f(this.y1);
    this.x2 = f(this.x2);
    this.y2 = f(this.y2);
    this.score = f(this.score);
    this.cls = cls;
  }

  push(x1: number, y1: number, x2: number, y2: number, score: number, cls: number): void {
    if (this.n === this.x1.length) this.grow();
    const k = this.n++;
    this.x1[k] = x1;
    this.y1[k] = y1;
    this.x2[k] = x2;
    this.y2[k] = y2;
    this.score[k] = score;
    this.cls[k] = cls;
  }
}

type BoxFormat = DetectionSpec['boxFormat'];

/**
 * Converts four box values in `format` to corners (times sx, sy: the input size for normalized
 * boxes) and pushes the candidate. Boxes of negative width or height are dropped; non-finite
 * ones are an inference failure.
 */
function pushBox(out: Candidates, format: BoxFormat, a: number, b: number, c: number, d: number, sx: number, sy: number, score: number, cls: number, index: number, tensor: string): void {
  let x1: number;
  let y1: number;
  let x2: number;
  let y2: number;
  switch (format) {
    case 'cxcywh':
      x1 = a - c / 2;
      y1 = b - d / 2;
      x2 = a + c / 2;
      y2 = b + d / 2;
      break;
    case 'cycxhw':
      x1 = b - d / 2;
      y1 = a - c / 2;
      x2 = b + d / 2;
      y2 = a + c / 2;
      break;
    case 'xyxy':
      x1 = a;
      y1 = b;
      x2 = c;
      y2 = d;
      break;
    case 'yxyx':
      x1 = b;
      y1 = a;
      x2 = d;
      y2 = c;
      break;
  }
  if (sx !== 1) {
    x1 *= sx;
    x2 *= sx;
  }
  if (sy !== 1) {
    y1 *= sy;
    y2 *= sy;
  }
  if (!Number.isFinite(x1) || !Number.isFinite(y1) || !Number.isFinite(x2) || !Number.isFinite(y2)) {
    throw new EdgefleetError(ErrorCode.INFERENCE, `detection: output "${tensor}" has a non-finite box (${a}, ${b}, ${c}, ${d}) at candidate ${index}`, { details: { tensor, candidate: index } });
  }
  if (x2 < x1 || y2 < y1) return;
  out.push(x1, y1, x2, y2, score, cls);
}

// ----------------------------------------------------------------------------- validation

function fmtDims(dims: readonly number[]): string {
  return `[${dims.join(', ')}]`;
}

function badModel(message: string, tensor: string, dims: readonly number[] | undefined): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_MODEL, message, { details: dims ? { tensor, dims: [...dims] } : { tensor } });
}

function nanScore(decoder: string, tensor: string, at: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.INFERENCE, `detection (${decoder}): output "${tensor}" holds NaN scores (${at})`, { details: { tensor } });
}

/** The tensor named `name` (or the first output), checked for rank and a consistent length. */
function tensorOf(outputs: DetectionOutputs, name: string | undefined, role: string, decoder: string): { name: string; t: TensorView } {
  const key = name ?? Object.keys(outputs)[0];
  if (key === undefined) throw badModel(`detection (${decoder}): the model returned no outputs`, role, undefined);
  const t = outputs[key];
  if (!t) throw badModel(`detection (${decoder}): no output "${key}" (the ${role} tensor); the model returned ${Object.keys(outputs).map((k) => `"${k}"`).join(', ')}`, key, undefined);
  let n = 1;
  for (const d of t.dims) {
    if (!Number.isInteger(d) || d < 0) throw badModel(`detection (${decoder}): output "${key}" has invalid dims ${fmtDims(t.dims)}`, key, t.dims);
    n *= d;
  }
  if (n !== t.data.length) throw badModel(`detection (${decoder}): output "${key}" has dims ${fmtDims(t.dims)} (${n} values) but ${t.data.length} values`, key, t.dims);
  return { name: key, t };
}

function expectRank(decoder: string, name: string, t: TensorView, rank: number, expected: string): void {
  if (t.dims.length !== rank || t.dims[0] !== 1) throw badModel(`detection (${decoder}): output "${name}" has dims ${fmtDims(t.dims)}; expected ${expected}`, name, t.dims);
}

// ------------------------------------------------------------------------------ activation

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

/**
 * The lowest raw value that can pass `threshold` after the activation: candidates below it are
 * skipped without computing the activation; the exact check follows on the activated score.
 */
function rawFloor(spec: DetectionSpec): number {
  const t = spec.scoreThreshold;
  if (spec.scoreActivation === 'none') return t;
  if (t <= 0) return -Infinity;
  // sigmoid(x) rounds to 1 only above ~36.7; a margin covers log's rounding.
  if (t >= 1) return 36;
  const l = Math.log(t / (1 - t));
  return l - 1e-9 * (1 + Math.abs(l));
}

/**
 * The ignored class columns as a mask (undefined when none), checked against the label count.
 * The ignore list is small and fixed per manifest, so it is rebuilt per call.
 */
function ignoredMask(spec: DetectionSpec, C: number): Uint8Array | undefined {
  const list = spec.ignoreClasses;
  if (!list || list.length === 0) return undefined;
  const mask = new Uint8Array(C);
  for (const k of list) {
    if (k >= C) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `detection (${spec.decoder}): ignoreClasses has ${k}, the labels have ${C} classes`);
    mask[k] = 1;
  }
  return mask;
}

/**
 * The best score column of the row s[off .. off + C) that is not ignored, the first on a tie;
 * -1 when every column is ignored, -2 when one of them is NaN.
 */
function bestColumn(s: Float32Array, off: number, C: number, ignored: Uint8Array | undefined): number {
  let best = -1;
  let b = -Infinity;
  for (let c = 0; c < C; c++) {
    if (ignored && ignored[c] === 1) continue;
    const v = s[off + c] as number;
    if (v !== v) return -2;
    if (best < 0 || v > b) {
      best = c;
      b = v;
    }
  }
  return best;
}

// -------------------------------------------------------------------------------- decoders

function decodeYolov8(spec: DetectionSpec, outputs: DetectionOutputs, geo: Geometry): Candidates {
  const { name, t } = tensorOf(outputs, spec.output, 'prediction', 'yolov8');
  const C = spec.labels.length;
  const expected = `[1, 4 + ${C} classes = ${4 + C}, N]`;
  expectRank('yolov8', name, t, 3, expected);
  const rows = t.dims[1] as number;
  const N = t.dims[2] as number;
  if (rows !== 4 + C) {
    const hint = t.dims[2] === 4 + C ? ' (this looks like [1, N, 4 + C] rows: transposed; export the model untransposed)' : rows > 4 ? ` (the model has ${rows - 4} classes, the manifest ${C} labels)` : '';
    throw badModel(`detection (yolov8): output "${name}" has dims ${fmtDims(t.dims)}; expected ${expected}${hint}`, name, t.dims);
  }
  const d = t.data;
  const floor = rawFloor(spec);
  const ignored = ignoredMask(spec, C);
  const hit = new Uint8Array(N);
  const best = new Float32Array(N);
  const bestCls = new Int32Array(N);
  let hits = 0;
  let nanAt = -1;
  // Pass 1, classes outer and columns inner (sequential reads, no transposed copy): which
  // columns hold any class score at or above the floor. Eight compares per step (20% faster than
  // four here); a NaN fails `< floor` like a passing score does, so it is caught on the slow path
  // at no extra cost. Given up once an eighth of the columns pass (a low threshold): the sweep
  // below is then cheaper.
  for (let c = 0; c < C && hits * 8 < N; c++) {
    if (ignored && ignored[c] === 1) continue;
    const row = (4 + c) * N;
    let i = 0;
    for (; i + 7 < N; i += 8) {
      const r = row + i;
      if (
        (d[r] as number) < floor &&
        (d[r + 1] as number) < floor &&
        (d[r + 2] as number) < floor &&
        (d[r + 3] as number) < floor &&
        (d[r + 4] as number) < floor &&
        (d[r + 5] as number) < floor &&
        (d[r + 6] as number) < floor &&
        (d[r + 7] as number) < floor
      ) {
        continue;
      }
      for (let j = i; j < i + 8; j++) {
        const v = d[row + j] as number;
        if (!(v < floor)) {
          if (v !== v) nanAt = j;
          else if (hit[j] === 0) {
            hit[j] = 1;
            hits++;
          }
        }
      }
    }
    for (; i < N; i++) {
      const v = d[row + i] as number;
      if (!(v < floor)) {
        if (v !== v) nanAt = i;
        else if (hit[i] === 0) {
          hit[i] = 1;
          hits++;
        }
      }
    }
  }
  if (nanAt >= 0) throw nanScore('yolov8', name, `column ${nanAt}`);
  if (hits * 8 < N) {
    // Pass 2, few passed (the usual case): walk down each passing column for its best class,
    // the lowest index on a tie.
    for (let i = 0; i < N; i++) {
      if (hit[i] === 0) continue;
      let b = -Infinity;
      let k = -1;
      for (let c = 0; c < C; c++) {
        if (ignored && ignored[c] === 1) continue;
        const v = d[(4 + c) * N + i] as number;
        if (k < 0 || v > b) {
          b = v;
          k = c;
        }
      }
      best[i] = b;
      bestCls[i] = k;
    }
  } else {
    // Many pass: one classes-outer sweep for every column's best class (lowest index on a tie),
    // one compare on the common path; a NaN fails `v <= best` and is caught there.
    best.fill(-Infinity);
    for (let c = 0; c < C; c++) {
      if (ignored && ignored[c] === 1) continue;
      const row = (4 + c) * N;
      for (let i = 0; i < N; i++) {
        const v = d[row + i] as number;
        if (!(v <= (best[i] as number))) {
          if (v !== v) nanAt = i;
          else {
            best[i] = v;
            bestCls[i] = c;
          }
        }
      }
    }
    if (nanAt >= 0) throw nanScore('yolov8', name, `column ${nanAt}`);
    hits = 0;
    for (let i = 0; i < N; i++) {
      const pass = (best[i] as number) >= floor ? 1 : 0;
      hit[i] = pass;
      hits += pass;
    }
  }
  const sigmoidScores = spec.scoreActivation === 'sigmoid';
  const thr = spec.scoreThreshold;
  const sx = spec.normalized ? geo.inputWidth : 1;
  const sy = spec.normalized ? geo.inputHeight : 1;
  const out = new Candidates(hits);
  for (let i = 0; i < N; i++) {
    if (hit[i] === 0) continue;
    const b = best[i] as number;
    const score = sigmoidScores ? sigmoid(b) : b;
    if (!(score >= thr)) continue;
    pushBox(out, spec.boxFormat, d[i] as number, d[N + i] as number, d[2 * N + i] as number, d[3 * N + i] as number, sx, sy, score, bestCls[i] as number, i, name);
  }
  return out;
}

function decodeYolov5(spec: DetectionSpec, outputs: DetectionOutputs, geo: Geometry): Candidates {
  const { name, t } = tensorOf(outputs, spec.output, 'prediction', 'yolov5');
  const C = spec.labels.length;
  const expected = `[1, N, 5 + ${C} classes = ${5 + C}]`;
  expectRank('yolov5', name, t, 3, expected);
  const N = t.dims[1] as number;
  const width = t.dims[2] as number;
  if (width !== 5 + C) {
    const hint = width > 5 ? ` (the model has ${width - 5} classes, the manifest ${C} labels)` : '';
    throw badModel(`detection (yolov5): output "${name}" has dims ${fmtDims(t.dims)}; expected ${expected}${hint}`, name, t.dims);
  }
  const d = t.data;
  const floor = rawFloor(spec);
  const ignored = ignoredMask(spec, C);
  const sigmoidScores = spec.scoreActivation === 'sigmoid';
  const thr = spec.scoreThreshold;
  const sx = spec.normalized ? geo.inputWidth : 1;
  const sy = spec.normalized ? geo.inputHeight : 1;
  const out = new Candidates(64);
  for (let i = 0; i < N; i++) {
    const row = i * width;
    const rawObj = d[row + 4] as number;
    // Class scores are at most 1, so objectness alone below the threshold settles it (Ultralytics' xc).
    if (!(rawObj >= floor)) {
      if (rawObj !== rawObj) throw nanScore('yolov5', name, `objectness of row ${i}`);
      continue;
    }
    const obj = sigmoidScores ? sigmoid(rawObj) : rawObj;
    if (!(obj >= thr)) continue;
    const cls = bestColumn(d, row + 5, C, ignored);
    if (cls === -2) throw nanScore('yolov5', name, `class scores of row ${i}`);
    if (cls < 0) continue;
    const rawCls = d[row + 5 + cls] as number;
    const score = obj * (sigmoidScores ? sigmoid(rawCls) : rawCls);
    if (!(score >= thr)) continue;
    pushBox(out, spec.boxFormat, d[row] as number, d[row + 1] as number, d[row + 2] as number, d[row + 3] as number, sx, sy, score, cls, i, name);
  }
  return out;
}

type AnchorSpec = NonNullable<DetectionSpec['anchors']>;

/** Cache: spec.anchors object → "WxH" → centres. Dies with the manifest that owns the spec. */
const anchorCache = new WeakMap<AnchorSpec, Map<string, Float64Array>>();
const ANCHOR_SIZES_PER_SPEC = 4;

/**
 * SSD anchor centres (normalized, [cx0, cy0, cx1, cy1, ...]) for an input of width × height, as
 * MediaPipe's SsdAnchorsCalculator generates them with fixed_anchor_size (every anchor 1 × 1, so
 * only centres are kept): per run of equal consecutive strides one ceil(H/s) × ceil(W/s) grid,
 * rows then columns, with the run's anchors (sum of perCell) at each cell's centre.
 */
export function ssdAnchors(anchors: AnchorSpec, width: number, height: number): Float64Array {
  const key = `${width}x${height}`;
  let bySize = anchorCache.get(anchors);
  const hit = bySize?.get(key);
  if (hit) return hit;
  if (anchors.perCell.length !== anchors.strides.length) {
    throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `detection (ssd): anchors have ${anchors.strides.length} strides but ${anchors.perCell.length} perCell entries`);
  }
  const runs: { stride: number; perCell: number }[] = [];
  for (let i = 0; i < anchors.strides.length; ) {
    const stride = anchors.strides[i] as number;
    let perCell = 0;
    while (i < anchors.strides.length && anchors.strides[i] === stride) perCell += anchors.perCell[i++] as number;
    runs.push({ stride, perCell });
  }
  let total = 0;
  for (const r of runs) total += Math.ceil(height / r.stride) * Math.ceil(width / r.stride) * r.perCell;
  const out = new Float64Array(2 * total);
  let k = 0;
  for (const r of runs) {
    const fh = Math.ceil(height / r.stride);
    const fw = Math.ceil(width / r.stride);
    for (let y = 0; y < fh; y++) {
      const cy = (y + anchors.offset) / fh;
      for (let x = 0; x < fw; x++) {
        const cx = (x + anchors.offset) / fw;
        for (let a = 0; a < r.perCell; a++) {
          out[k++] = cx;
          out[k++] = cy;
        }
      }
    }
  }
  if (!bySize) {
    bySize = new Map();
    anchorCache.set(anchors, bySize);
  }
  // A dynamic-size model could bring a new size per frame: keep only the most recent few.
  if (bySize.size >= ANCHOR_SIZES_PER_SPEC) bySize.delete(bySize.keys().next().value as string);
  bySize.set(key, out);
  return out;
}

/** `boxes` [1, N, ≥4] and `scores` [1, N, C] (or [1, N] for one label) of the ssd and decoded layouts. */
function boxesAndScores(spec: DetectionSpec, outputs: DetectionOutputs, decoder: string): { boxes: { name: string; t: TensorView }; scores: { name: string; t: TensorView }; N: number; D: number } {
  const boxes = tensorOf(outputs, spec.boxes, 'boxes', decoder);
  const scores = tensorOf(outputs, spec.scores, 'scores', decoder);
  const C = spec.labels.length;
  const bt = boxes.t;
  const st = scores.t;
  if (bt.dims.length !== 3 || bt.dims[0] !== 1 || (bt.dims[2] as number) < 4) {
    throw badModel(`detection (${decoder}): output "${boxes.name}" has dims ${fmtDims(bt.dims)}; expected [1, N, ≥4]`, boxes.name, bt.dims);
  }
  const N = bt.dims[1] as number;
  const scoresOk = st.dims[0] === 1 && st.dims[1] === N && (st.dims.length === 3 ? st.dims[2] === C : st.dims.length === 2 && C === 1);
  if (!scoresOk) throw badModel(`detection (${decoder}): output "${scores.name}" has dims ${fmtDims(st.dims)}; expected [1, ${N}, ${C}] (N from "${boxes.name}", C from the labels)`, scores.name, st.dims);
  return { boxes, scores, N, D: bt.dims[2] as number };
}

/**
 * The best class of each box row whose score passes: calls `take(i, cls, score)` in row order.
 * Shared by ssd and decoded, whose scores are [1, N, C] rows.
 */
function passingRows(spec: DetectionSpec, s: Float32Array, N: number, tensor: string, decoder: 'ssd' | 'decoded', take: (i: number, cls: number, score: number) => void): void {
  const C = spec.labels.length;
  const ignored = ignoredMask(spec, C);
  const floor = rawFloor(spec);
  const sigmoidScores = spec.scoreActivation === 'sigmoid';
  const thr = spec.scoreThreshold;
  for (let i = 0; i < N; i++) {
    const cls = bestColumn(s, i * C, C, ignored);
    if (cls === -2) throw nanScore(decoder, tensor, `${decoder === 'ssd' ? 'anchor' : 'row'} ${i}`);
    if (cls < 0) continue;
    const raw = s[i * C + cls] as number;
    if (!(raw >= floor)) continue;
    const score = sigmoidScores ? sigmoid(raw) : raw;
    if (score >= thr) take(i, cls, score);
  }
}

function decodeSsd(spec: DetectionSpec, outputs: DetectionOutputs, geo: Geometry): Candidates {
  if (!spec.anchors || !spec.boxes || !spec.scores) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, 'detection (ssd): the spec needs boxes, scores and anchors');
  if (spec.boxFormat !== 'cxcywh' && spec.boxFormat !== 'cycxhw') {
    throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `detection (ssd): boxFormat ${spec.boxFormat} is not a delta layout; use cxcywh (BlazeFace) or cycxhw (TF/MediaPipe default)`);
  }
  const { boxes, scores, N, D } = boxesAndScores(spec, outputs, 'ssd');
  const W = geo.inputWidth;
  const H = geo.inputHeight;
  const anchors = ssdAnchors(spec.anchors, W, H);
  if (anchors.length !== 2 * N) {
    throw badModel(`detection (ssd): output "${boxes.name}" has ${N} boxes (dims ${fmtDims(boxes.t.dims)}) but the anchors give ${anchors.length / 2} for a ${W}×${H} input`, boxes.name, boxes.t.dims);
  }
  const xs = spec.deltaScale ?? W;
  const ys = spec.deltaScale ?? H;
  const yFirst = spec.boxFormat === 'cycxhw';
  const b = boxes.t.data;
  const out = new Candidates(64);
  passingRows(spec, scores.t.data, N, scores.name, 'ssd', (i, cls, score) => {
    const o = i * D;
    const dx = b[o + (yFirst ? 1 : 0)] as number;
    const dy = b[o + (yFirst ? 0 : 1)] as number;
    const dw = b[o + (yFirst ? 3 : 2)] as number;
    const dh = b[o + (yFirst ? 2 : 3)] as number;
    // Fixed anchor size 1: the anchor's w and h factors drop out (MediaPipe DecodeBoxes).
    const cx = dx / xs + (anchors[2 * i] as number);
    const cy = dy / ys + (anchors[2 * i + 1] as number);
    pushBox(out, 'cxcywh', cx, cy, dw / xs, dh / ys, W, H, score, cls, i, boxes.name);
  });
  return out;
}

function decodeDecoded(spec: DetectionSpec, outputs: DetectionOutputs, geo: Geometry): Candidates {
  if (!spec.boxes || !spec.scores) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, 'detection (decoded): the spec needs boxes and scores');
  const { boxes, scores, N, D } = boxesAndScores(spec, outputs, 'decoded');
  const sx = spec.normalized ? geo.inputWidth : 1;
  const sy = spec.normalized ? geo.inputHeight : 1;
  const b = boxes.t.data;
  const out = new Candidates(64);
  passingRows(spec, scores.t.data, N, scores.name, 'decoded', (i, cls, score) => {
    const o = i * D;
    pushBox(out, spec.boxFormat, b[o] as number, b[o + 1] as number, b[o + 2] as number, b[o + 3] as number, sx, sy, score, cls, i, boxes.name);
  });
  return out;
}

function decodeNms(spec: DetectionSpec, outputs: DetectionOutputs, geo: Geometry): Candidates {
  if (!spec.boxes || !spec.scores) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, 'detection (nms): the spec needs boxes and scores');
  const C = spec.labels.length;
  if (!spec.classes && C > 1) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `detection (nms): ${C} labels need a classes tensor`);
  const boxes = tensorOf(outputs, spec.boxes, 'boxes', 'nms');
  const scores = tensorOf(outputs, spec.scores, 'scores', 'nms');
  expectRank('nms', boxes.name, boxes.t, 3, '[1, K, 4]');
  const K = boxes.t.dims[1] as number;
  if (boxes.t.dims[2] !== 4) throw badModel(`detection (nms): output "${boxes.name}" has dims ${fmtDims(boxes.t.dims)}; expected [1, K, 4]`, boxes.name, boxes.t.dims);
  const perRow = (v: { name: string; t: TensorView }): void => {
    if (v.t.dims.length !== 2 || v.t.dims[0] !== 1 || v.t.dims[1] !== K) throw badModel(`detection (nms): output "${v.name}" has dims ${fmtDims(v.t.dims)}; expected [1, ${K}] (K from "${boxes.name}")`, v.name, v.t.dims);
  };
  perRow(scores);
  const classes = spec.classes ? tensorOf(outputs, spec.classes, 'classes', 'nms') : undefined;
  if (classes) perRow(classes);
  let rows = K;
  if (spec.count) {
    const count = tensorOf(outputs, spec.count, 'count', 'nms');
    if (count.t.data.length !== 1) throw badModel(`detection (nms): output "${count.name}" has dims ${fmtDims(count.t.dims)}; expected one value`, count.name, count.t.dims);
    const n = count.t.data[0] as number;
    if (!Number.isInteger(n) || n < 0 || n > K) throw new EdgefleetError(ErrorCode.INFERENCE, `detection (nms): output "${count.name}" says ${n} detections, the boxes hold ${K}`, { details: { tensor: count.name } });
    rows = n;
  }
  const floor = rawFloor(spec);
  const ignored = ignoredMask(spec, C);
  const sigmoidScores = spec.scoreActivation === 'sigmoid';
  const thr = spec.scoreThreshold;
  const sx = spec.normalized ? geo.inputWidth : 1;
  const sy = spec.normalized ? geo.inputHeight : 1;
  const b = boxes.t.data;
  const s = scores.t.data;
  const out = new Candidates(Math.min(rows, 1024));
  for (let i = 0; i < rows; i++) {
    const raw = s[i] as number;
    if (!(raw >= floor)) {
      if (raw !== raw) throw nanScore('nms', scores.name, `row ${i}`);
      continue;
    }
    const score = sigmoidScores ? sigmoid(raw) : raw;
    if (!(score >= thr)) continue;
    const cls = classes ? (classes.t.data[i] as number) : 0;
    if (!Number.isInteger(cls) || cls < 0 || cls >= C) {
      throw badModel(`detection (nms): output "${classes?.name ?? ''}" has class ${cls} at row ${i}; the manifest has ${C} labels`, classes?.name ?? '', classes?.t.dims);
    }
    if (ignored && ignored[cls] === 1) continue;
    pushBox(out, spec.boxFormat, b[4 * i] as number, b[4 * i + 1] as number, b[4 * i + 2] as number, b[4 * i + 3] as number, sx, sy, score, cls, i, boxes.name);
  }
  return out;
}

// ------------------------------------------------------------------------------------- NMS

/**
 * Greedy NMS over the candidates: slots of the kept ones, best first, at most `max`. With
 * `suppress` false only ordering and the cap apply. Candidates come off a binary heap, so with
 * thousands passing a low threshold only as many are ordered as NMS visits before `max` are
 * kept. Class-aware NMS compares a candidate only with the kept boxes of its class (a chain per
 * class), class-agnostic with every kept box.
 */
function selectKept(c: Candidates, numClasses: number, iouThreshold: number, classAgnostic: boolean, max: number, suppress: boolean): Int32Array {
  const n = c.n;
  const { x1, y1, x2, y2, cls, score } = c;
  // a goes before b: higher score, then the lower slot (slots are in tensor order, so the lower
  // candidate index).
  const before = (a: number, b: number): boolean => {
    const sa = score[a] as number;
    const sb = score[b] as number;
    return sa > sb || (sa === sb && a < b);
  };
  const heap = new Int32Array(n);
  for (let k = 0; k < n; k++) heap[k] = k;
  const siftDown = (start: number, size: number): void => {
    const v = heap[start] as number;
    let i = start;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= size) break;
      if (child + 1 < size && before(heap[child + 1] as number, heap[child] as number)) child++;
      if (!before(heap[child] as number, v)) break;
      heap[i] = heap[child] as number;
      i = child;
    }
    heap[i] = v;
  };
  for (let i = (n >> 1) - 1; i >= 0; i--) siftDown(i, n);

  const cap = Math.min(n, max);
  const kept = new Int32Array(cap);
  // The kept boxes again, packed [x1, y1, x2, y2, area] in keep order: the IoU loop reads them
  // sequentially instead of gathering from the candidate arrays.
  const kb = new Float64Array(5 * cap);
  // Per class: the position in `kept` of its newest kept box, and from each the previous one.
  const newestOf = new Int32Array(classAgnostic ? 0 : numClasses).fill(-1);
  const previous = new Int32Array(cap);
  let m = 0;
  let size = n;
  while (size > 0 && m < cap) {
    const k = heap[0] as number;
    size--;
    heap[0] = heap[size] as number;
    if (size > 0) siftDown(0, size);
    const ck = cls[k] as number;
    const ax1 = x1[k] as number;
    const ay1 = y1[k] as number;
    const ax2 = x2[k] as number;
    const ay2 = y2[k] as number;
    const area = (ax2 - ax1) * (ay2 - ay1);
    if (suppress) {
      let dropped = false;
      // Class-agnostic: every kept box, newest first; class-aware: the chain of this class.
      for (let j = classAgnostic ? m - 1 : (newestOf[ck] as number); j >= 0; j = classAgnostic ? j - 1 : (previous[j] as number)) {
        const o = 5 * j;
        const iw = Math.min(ax2, kb[o + 2] as number) - Math.max(ax1, kb[o] as number);
        if (iw <= 0) continue;
        const ih = Math.min(ay2, kb[o + 3] as number) - Math.max(ay1, kb[o + 1] as number);
        if (ih <= 0) continue;
        const inter = iw * ih;
        if (inter / (area + (kb[o + 4] as number) - inter) > iouThreshold) {
          dropped = true;
          break;
        }
      }
      if (dropped) continue;
    }
    if (!classAgnostic) {
      previous[m] = newestOf[ck] as number;
      newestOf[ck] = m;
    }
    const o = 5 * m;
    kb[o] = ax1;
    kb[o + 1] = ay1;
    kb[o + 2] = ax2;
    kb[o + 3] = ay2;
    kb[o + 4] = area;
    kept[m++] = k;
  }
  return kept.subarray(0, m);
}

function checkGeometry(geo: Geometry): void {
  const ok = [geo.inputWidth, geo.inputHeight, geo.srcWidth, geo.srcHeight, geo.scaleX, geo.scaleY].every(positiveFinite) && Number.isFinite(geo.padLeft) && Number.isFinite(geo.padTop);
  if (!ok) throw badInput(`detection geometry must be positive and finite: ${JSON.stringify(geo)}`);
}

/**
 * Decodes a detector's outputs into at most `spec.maxDetections` detections, best first, with
 * boxes in the original image's pixels (clipped to it). See the header for each decoder's layout.
 */
export function decodeDetections(spec: DetectionSpec, outputs: DetectionOutputs, geo: Geometry): Detection[] {
  checkGeometry(geo);
  let cands: Candidates;
  switch (spec.decoder) {
    case 'yolov8':
      cands = decodeYolov8(spec, outputs, geo);
      break;
    case 'yolov5':
      cands = decodeYolov5(spec, outputs, geo);
      break;
    case 'ssd':
      cands = decodeSsd(spec, outputs, geo);
      break;
    case 'nms':
      cands = decodeNms(spec, outputs, geo);
      break;
    case 'decoded':
      cands = decodeDecoded(spec, outputs, geo);
      break;
  }
  const suppress = spec.decoder !== 'nms' || spec.classAgnostic;
  const kept = selectKept(cands, spec.labels.length, spec.iouThreshold, spec.classAgnostic, spec.maxDetections, suppress);
  const W = geo.srcWidth;
  const H = geo.srcHeight;
  const clip = (v: number, hi: number): number => (v < 0 ? 0 : v > hi ? hi : v);
  const out: Detection[] = new Array<Detection>(kept.length);
  for (let j = 0; j < kept.length; j++) {
    const k = kept[j] as number;
    const classIndex = cands.cls[k] as number;
    out[j] = {
      label: spec.labels[classIndex] ?? String(classIndex),
      score: cands.score[k] as number,
      box: {
        x1: clip(((cands.x1[k] as number) - geo.padLeft) / geo.scaleX, W),
        y1: clip(((cands.y1[k] as number) - geo.padTop) / geo.scaleY, H),
        x2: clip(((cands.x2[k] as number) - geo.padLeft) / geo.scaleX, W),
        y2: clip(((cands.y2[k] as number) - geo.padTop) / geo.scaleY, H),
      },
      classIndex,
    };
  }
  return out;
}
