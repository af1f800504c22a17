/**
 * conveyor-parts (issue #13): a small hand-designed object detector in the Ultralytics YOLOv8
 * output layout, fp32. Input `images` [1,3,640,640] (letterboxed RGB / 255), output `output0`
 * [1, 4+3, 8400]: cx, cy, w, h in input pixels, then the scores of bolt, nut and washer, for the
 * 80² + 40² + 20² candidates of strides 8, 16 and 32.
 *
 * How it finds parts (a classical pipeline written as ONNX ops):
 *  1. Per pixel, a soft metal mask m = clip((luma - 120) / 25, 0, 1) (the belt is dark, parts
 *     bright, the 114-gray letterbox pad below the ramp).
 *  2. The mask and the image average-pooled to 8×8 cells (80×80 maps); chroma q = R - B per cell.
 *  3. At every cell and for three window sizes (7, 11, 15 cells, i.e. 56/88/120 px), convolutions
 *     give the window's mass moments: M, Σm·dx, Σm·dy, Σm·dx², Σm·dy², Σm·dx·dy, the mass of a
 *     2-cell ring around it, Σm² and Σm·q. When the window holds one whole part these are
 *     that part's area, centroid and second moments exactly (to the 8-px cell grid).
 *  4. Objectness = enough mass × nothing in the ring (the part is whole in the window) × the
 *     centroid within about half a cell of this anchor. Box = centroid ± k·σ per axis. Class =
 *     softmax of a 3×3 linear head, trained here on synthetic scenes, over elongation (bolts),
 *     compactness and chroma (copper washers vs steel nuts).
 *  5. The 56-px windows fill the stride-8 columns; the 88- and 120-px windows are computed at
 *     every cell too and reduced to the stride-16 / stride-32 grids by taking, in each 2×2 / 4×4
 *     block, the candidate with the best score (MaxPool indices + GatherElements).
 * Limits, by design: parts must be singulated (PART_GAP apart, as the scenes are); touching parts
 * merge or vanish; parts longer than ~110 px are not boxed. No int8 twin: most of the time is the
 * per-pixel front end and small elementwise maps, and the moments need float precision.
 */
import type { InputSpecV2, TensorSpecV2 } from '../../shared/manifest.ts';
import type { DetectionSpec } from '../../shared/tasks/specs.ts';
import { buildModelV2 } from './build-v2.ts';
import type { Feed, LargeTestCase, Measured, ModelBuildV2, RunFn } from './build-v2.ts';
import { MODEL_VERSION, roundSig } from './models.ts';
import { GraphBuilder } from './onnx/builder.ts';
import { AttrType, DataType } from './onnx/proto.ts';
import { createRng } from './rng.ts';
import { conveyorScene, letterboxTensor, PART_CLASSES } from './synthetic-conveyor.ts';
import type { ConveyorScene, PartBox } from './synthetic-conveyor.ts';
import { trainSoftmax } from './train.ts';

export const INPUT_SIZE = 640;
const CELL = 8;
const GRID = INPUT_SIZE / CELL;
/** Luma ramp of the metal mask, gray levels. */
const LUMA_LO = 120;
const LUMA_HI = 145;
/** Window sizes in cells (odd: centred on the anchor cell) for strides 8, 16, 32. */
export const WINDOWS = [
  { cells: 7, stride: 8 },
  { cells: 11, stride: 16 },
  { cells: 15, stride: 32 },
] as const;
const RING = 2;
/** Mass gate, in cells (64 px² each): below 2 nothing, above 5 fully a part. */
const MASS_LO = 2;
const MASS_HI = 5;
/** Ring gate: the candidate dies when 10% of its mass lies in the ring. */
const RING_GAIN = 10;
/** Centroid gate: 1 within 3 px of the anchor, 0 beyond 9 px. */
const CENTRE_FLAT = 3;
const CENTRE_SPAN = 6;
/** Variance of pixel positions within one cell (cells²), lost by pooling. */
const CELL_VAR = (CELL * CELL - 1) / 12 / (CELL * CELL);
const EPS = 1e-3;
const C = PART_CLASSES.length;
export const CANDIDATES = WINDOWS.reduce((n, w) => n + (INPUT_SIZE / w.stride) ** 2, 0);

const SEEDS = { train: 1401, head: 1402, heldOut: 1403, tests: 1404 };
const SCORE_THRESHOLD = 0.3;
const IOU_THRESHOLD = 0.45;

// ----------------------------------------------------------------------- reference (float64)

/**
 * The pooled maps (GRID×GRID, row-major) of a model input as the graph computes them: m, the
 * mean metal mask of each cell, and q, the cell's mean chroma R - B (all its pixels).
 */
export function cellMaps(input: Float32Array): { m: Float64Array; q: Float64Array } {
  const plane = INPUT_SIZE * INPUT_SIZE;
  const m = new Float64Array(GRID * GRID);
  const q = new Float64Array(GRID * GRID);
  const gain = 255 / (LUMA_HI - LUMA_LO);
  const bias = -LUMA_LO / (LUMA_HI - LUMA_LO);
  for (let y = 0; y < INPUT_SIZE; y++) {
    const row = ((y / CELL) | 0) * GRID;
    for (let x = 0; x < INPUT_SIZE; x++) {
      const i = y * INPUT_SIZE + x;
      const r = input[i] as number;
      const b = input[2 * plane + i] as number;
      const cell = row + ((x / CELL) | 0);
      q[cell] = (q[cell] as number) + (r - b);
      const v = (0.299 * r + 0.587 * (input[plane + i] as number) + 0.114 * b) * gain + bias;
      if (v > 0) m[cell] = (m[cell] as number) + (v >= 1 ? 1 : v);
    }
  }
  const n = CELL * CELL;
  for (let i = 0; i < m.length; i++) {
    m[i] = (m[i] as number) / n;
    q[i] = (q[i] as number) / n;
  }
  return { m, q };
}

export interface Candidate {
  cx: number;
  cy: number;
  /** Window moments and derived features. */
  sxx: number;
  syy: number;
  features: [elongation: number, compactness: number, chroma: number];
  objectness: number;
}

/** The candidate of window `cells` at anchor cell (row, col). */
export function candidateAt(maps: { m: Float64Array; q: Float64Array }, cells: number, row: number, col: number): Candidate {
  const k = (cells - 1) / 2;
  let M = 0;
  let Mx = 0;
  let My = 0;
  let Mxx = 0;
  let Myy = 0;
  let Mxy = 0;
  let Mo = 0;
  let M2 = 0;
  let Q = 0;
  for (let di = -k - RING; di <= k + RING; di++) {
    const r = row + di;
    if (r < 0 || r >= GRID) continue;
    for (let dj = -k - RING; dj <= k + RING; dj++) {
      const c = col + dj;
      if (c < 0 || c >= GRID) continue;
      const v = maps.m[r * GRID + c] as number;
      Mo += v;
      if (Math.abs(di) > k || Math.abs(dj) > k) continue;
      M += v;
      Mx += v * dj;
      My += v * di;
      Mxx += v * dj * dj;
      Myy += v * di * di;
      Mxy += v * di * dj;
      M2 += v * v;
      Q += v * (maps.q[r * GRID + c] as number);
    }
  }
  const Me = M + EPS;
  const ox = Mx / Me;
  const oy = My / Me;
  const sxx = Mxx / Me - ox * ox + CELL_VAR;
  const syy = Myy / Me - oy * oy + CELL_VAR;
  const sxy = Mxy / Me - ox * oy;
  const tr = sxx + syy;
  const e = ((sxx - syy) ** 2 + 4 * sxy * sxy) / (tr * tr + EPS);
  const compact = M / (2 * Math.PI * tr);
  // Σm·q / Σm²: the parts' chroma, wholly in covered cells, mostly in edge cells (the belt's is ~0).
  const chroma = Q / (M2 + EPS);
  const clip01 = (v: number): number => (v < 0 ? 0 : v > 1 ? 1 : v);
  const gateMass = clip01((M - MASS_LO) / (MASS_HI - MASS_LO));
  const gateRing = clip01(1 - (RING_GAIN * (Mo - M)) / Me);
  const centre = (o: number): number => clip01(1 + CENTRE_FLAT / CENTRE_SPAN - (Math.abs(o) * CELL) / CENTRE_SPAN);
  return {
    cx: col * CELL + CELL / 2 + ox * CELL,
    cy: row * CELL + CELL / 2 + oy * CELL,
    sxx,
    syy,
    features: [e, compact, chroma],
    objectness: gateMass * gateRing * centre(ox) * centre(oy),
  };
}

/** The best candidate (highest objectness, any window) for a part whose box is `b` (input pixels). */
function bestCandidate(maps: { m: Float64Array; q: Float64Array }, b: { x1: number; y1: number; x2: number; y2: number }): Candidate | undefined {
  let best: Candidate | undefined;
  const r0 = Math.max(0, Math.floor(b.y1 / CELL));
  const r1 = Math.min(GRID - 1, Math.floor(b.y2 / CELL));
  const c0 = Math.max(0, Math.floor(b.x1 / CELL));
  const c1 = Math.min(GRID - 1, Math.floor(b.x2 / CELL));
  for (const w of WINDOWS) {
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const cand = candidateAt(maps, w.cells, r, c);
        if (!best || cand.objectness > best.objectness) best = cand;
      }
    }
  }
  return best;
}

// --------------------------------------------------------------------------------- decoding

export interface Detection {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  score: number;
  label: number;
}

export function iou(a: { x1: number; y1: number; x2: number; y2: number }, b: { x1: number; y1: number; x2: number; y2: number }): number {
  const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
  const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  return inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter);
}

/** YOLOv8 decoding as the manifest says: best class per column, threshold, class-aware NMS. */
export function decodeYolov8(out: Float32Array, classes: number, n: number, scoreThreshold: number, iouThreshold: number, maxDetections: number): Detection[] {
  const cands: Detection[] = [];
  for (let i = 0; i < n; i++) {
    let label = 0;
    let score = out[4 * n + i] as number;
    for (let k = 1; k < classes; k++) {
      const s = out[(4 + k) * n + i] as number;
      if (s > score) {
        score = s;
        label = k;
      }
    }
    if (score < scoreThreshold) continue;
    const cx = out[i] as number;
    const cy = out[n + i] as number;
    const w = out[2 * n + i] as number;
    const h = out[3 * n + i] as number;
    cands.push({ x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2, score, label });
  }
  cands.sort((a, b) => b.score - a.score);
  const kept: Detection[] = [];
  for (const d of cands) {
    if (kept.length >= maxDetections) break;
    if (kept.every((k) => k.label !== d.label || iou(k, d) <= iouThreshold)) kept.push(d);
  }
  return kept;
}

export interface MatchCounts {
  tp: number;
  fp: number;
  fn: number;
  /** Per class: true positives, false positives, false negatives. */
  perClass: { tp: number; fp: number; fn: number }[];
}

/** Greedy matching by score at IoU ≥ `at`, same class; each part matches once. */
export function matchDetections(dets: readonly Detection[], parts: readonly PartBox[], at = 0.5): MatchCounts {
  const perClass = PART_CLASSES.map(() => ({ tp: 0, fp: 0, fn: 0 }));
  const used = new Set<number>();
  for (const d of [...dets].sort((a, b) => b.score - a.score)) {
    let best = -1;
    let bestIou = at;
    parts.forEach((p, j) => {
      if (used.has(j) || p.label !== d.label) return;
      const v = iou(d, p);
      if (v >= bestIou) {
        bestIou = v;
        best = j;
      }
    });
    const pc = perClass[d.label] as { tp: number; fp: number; fn: number };
    if (best >= 0) {
      used.add(best);
      pc.tp++;
    } else pc.fp++;
  }
  parts.forEach((p, j) => {
    if (!used.has(j)) (perClass[p.label] as { fn: number }).fn++;
  });
  const sum = (k: 'tp' | 'fp' | 'fn'): number => perClass.reduce((s, c) => s + c[k], 0);
  return { tp: sum('tp'), fp: sum('fp'), fn: sum('fn'), perClass };
}

/** Parts of a scene in model-input pixels (after the letterbox). */
export function partsInInput(scene: ConveyorScene, box: { padX: number; padY: number; scale: number }): PartBox[] {
  return scene.parts.map((p) => ({ ...p, x1: p.x1 * box.scale + box.padX, x2: p.x2 * box.scale + box.padX, y1: p.y1 * box.scale + box.padY, y2: p.y2 * box.scale + box.padY }));
}

// ------------------------------------------------------------------------------------ graph

interface Head {
  /** [C][3] weights over (elongation, compactness, chroma) and [C] biases. */
  w: number[][];
  b: number[];
  /** Box extent per class: full width = k·σx, height = k·σy. */
  k: number[];
}

/** A node with several outputs (the builder's node() makes one). */
function multiNode(g: GraphBuilder, opType: string, inputs: string[], outputs: string[], ints: Record<string, number[]>): void {
  g.nodes.push({
    name: `${opType}_${g.nodes.length}`,
    opType,
    input: inputs,
    output: outputs,
    attribute: Object.entries(ints).map(([name, v]) => ({ name, type: AttrType.INTS, ints: v })),
  });
}

function buildGraph(head: Head): GraphBuilder {
  const g = new GraphBuilder();
  const scalar = (name: string, v: number): string => g.init(name, DataType.FLOAT, [], [v]);
  const zero = scalar('zero', 0);
  const one = scalar('one', 1);
  const eps = scalar('eps', EPS);
  const cellPx = scalar('cell_px', CELL);
  const indices = [0, 1, 2, 3, 4, 5].map((c) => g.init(`index_${c}`, DataType.INT64, [1], [c]));
  const idx = (c: number): string => indices[c] as string;
  const gain = 255 / (LUMA_HI - LUMA_LO);

  // 1-2. Metal mask per pixel, pooled to cells; the chroma of each cell from its pooled RGB.
  // The luma is a Gemm over the flattened image, not a 1×1 Conv: ORT's NCHWc Conv kernel pads
  // one output channel to a block of 8 at full resolution (measured: 3× slower front end).
  const plane = INPUT_SIZE * INPUT_SIZE;
  const pixels = g.node('Reshape', ['images', g.init('pixels_shape', DataType.INT64, [2], [3, plane])], 'pixels');
  const luma = g.node('Gemm', [g.init('luma_weight', DataType.FLOAT, [1, 3], [0.299 * gain, 0.587 * gain, 0.114 * gain]), pixels, g.init('luma_bias', DataType.FLOAT, [1, 1], [-LUMA_LO / (LUMA_HI - LUMA_LO)])], 'luma');
  const mask = g.node('Reshape', [g.node('Clip', [luma, zero, one], 'mask_flat'), g.init('mask_shape', DataType.INT64, [4], [1, 1, INPUT_SIZE, INPUT_SIZE])], 'mask');
  const m8 = g.node('AveragePool', [mask], 'cells_mask', { kernel_shape: [CELL, CELL], strides: [CELL, CELL] });
  const rgb8 = g.node('AveragePool', ['images'], 'cells_rgb', { kernel_shape: [CELL, CELL], strides: [CELL, CELL] });
  const c8 = g.node('Conv', [rgb8, g.init('chroma_weight', DataType.FLOAT, [1, 3, 1, 1], [1, 0, -1])], 'cells_chroma', { kernel_shape: [1, 1] });
  // Per window: Σm² and Σm·q by one grouped convolution over [m², m·q].
  const pair = g.node('Concat', [g.node('Mul', [m8, m8], 'cells_mask2'), g.node('Mul', [m8, c8], 'cells_mask_chroma')], 'cells_pair', { axis: 1 });

  const anchorX = g.init('anchor_x', DataType.FLOAT, [1, 1, GRID, GRID], Array.from({ length: GRID * GRID }, (_, i) => (i % GRID) * CELL + CELL / 2));
  const anchorY = g.init('anchor_y', DataType.FLOAT, [1, 1, GRID, GRID], Array.from({ length: GRID * GRID }, (_, i) => Math.floor(i / GRID) * CELL + CELL / 2));
  const cellVar = scalar('cell_var', CELL_VAR);
  const four = scalar('four', 4);
  const twoPi = scalar('two_pi', 2 * Math.PI);
  const massLo = scalar('mass_lo', MASS_LO);
  const massGain = scalar('mass_gain', 1 / (MASS_HI - MASS_LO));
  const ringGain = scalar('ring_gain', RING_GAIN);
  const centreOffset = scalar('centre_offset', 1 + CENTRE_FLAT / CENTRE_SPAN);
  const centreGain = scalar('centre_gain', CELL / CENTRE_SPAN);
  const headW = g.init('head_weight', DataType.FLOAT, [C, 3, 1, 1], head.w.flat());
  const headB = g.init('head_bias', DataType.FLOAT, [C], head.b);
  const boxK = g.init('box_k', DataType.FLOAT, [1, C, 1, 1], head.k);

  const columns: string[] = [];
  for (const win of WINDOWS) {
    const K = win.cells;
    const k = (K - 1) / 2;
    const p = `w${K}`;
    const n = (s: string): string => `${p}_${s}`;
    const taps = (f: (di: number, dj: number) => number): number[] => {
      const out: number[] = [];
      for (let di = -k; di <= k; di++) for (let dj = -k; dj <= k; dj++) out.push(f(di, dj));
      return out;
    };
    const momW = g.init(n('moments_weight'), DataType.FLOAT, [6, 1, K, K], [
      ...taps(() => 1),
      ...taps((_, dj) => dj),
      ...taps((di) => di),
      ...taps((_, dj) => dj * dj),
      ...taps((di) => di * di),
      ...taps((di, dj) => di * dj),
    ]);
    const moments = g.node('Conv', [m8, momW], n('moments'), { kernel_shape: [K, K], pads: [k, k, k, k] });
    const outerK = K + 2 * RING;
    const outerMean = g.node('AveragePool', [m8], n('outer_mean'), {
      kernel_shape: [outerK, outerK],
      pads: [k + RING, k + RING, k + RING, k + RING],
      strides: [1, 1],
      count_include_pad: 1,
    });
    const outer = g.node('Mul', [outerMean, scalar(n('outer_area'), outerK * outerK)], n('outer'));
    // Box sums as average pools (count_include_pad: every window divides by K², so ratios of
    // them are ratios of sums): cheaper in ORT than a grouped or single-channel Conv.
    const pairMeans = g.node('AveragePool', [pair], n('pair_means'), { kernel_shape: [K, K], pads: [k, k, k, k], strides: [1, 1], count_include_pad: 1 });
    const M2 = g.node('Gather', [pairMeans, idx(0)], n('mass2_mean'), { axis: 1 });
    const Q = g.node('Gather', [pairMeans, idx(1)], n('chroma_mass_mean'), { axis: 1 });
    const [M, Mx, My, Mxx, Myy, Mxy] = [0, 1, 2, 3, 4, 5].map((c) => g.node('Gather', [moments, idx(c)], n(`m${c}`), { axis: 1 })) as [string, string, string, string, string, string];
    const op = (type: string, ins: string[], name: string): string => g.node(type, ins, n(name));
    const Me = op('Add', [M, eps], 'mass_eps');
    const ox = op('Div', [Mx, Me], 'ox');
    const oy = op('Div', [My, Me], 'oy');
    const sxx = op('Add', [op('Sub', [op('Div', [Mxx, Me], 'exx'), op('Mul', [ox, ox], 'ox2')], 'vxx'), cellVar], 'sxx');
    const syy = op('Add', [op('Sub', [op('Div', [Myy, Me], 'eyy'), op('Mul', [oy, oy], 'oy2')], 'vyy'), cellVar], 'syy');
    const sxy = op('Sub', [op('Div', [Mxy, Me], 'exy'), op('Mul', [ox, oy], 'oxy')], 'sxy');
    const tr = op('Add', [sxx, syy], 'trace');
    const dxy = op('Sub', [sxx, syy], 'diff');
    const num = op('Add', [op('Mul', [dxy, dxy], 'diff2'), op('Mul', [four, op('Mul', [sxy, sxy], 'sxy2')], 'sxy2x4')], 'e_num');
    const elong = op('Div', [num, op('Add', [op('Mul', [tr, tr], 'trace2'), eps], 'e_den')], 'elongation');
    const compact = op('Div', [M, op('Mul', [twoPi, tr], 'c_den')], 'compactness');
    const chromaMean = op('Div', [Q, op('Add', [M2, scalar(n('eps_mean'), EPS / (K * K))], 'mass2_eps')], 'chroma_mean');
    const feats = g.node('Concat', [elong, compact, chromaMean], n('features'), { axis: 1 });
    const logits = g.node('Conv', [feats, headW, headB], n('logits'), { kernel_shape: [1, 1] });
    const probs = g.node('Softmax', [logits], n('probs'), { axis: 1 });
    const gateMass = g.node('Clip', [op('Mul', [op('Sub', [M, massLo], 'mass_off'), massGain], 'mass_ramp'), zero, one], n('gate_mass'));
    const ringFrac = op('Div', [op('Sub', [outer, M], 'ring'), Me], 'ring_frac');
    const gateRing = g.node('Clip', [op('Sub', [one, op('Mul', [ringGain, ringFrac], 'ring_scaled')], 'ring_ramp'), zero, one], n('gate_ring'));
    const centre = (o: string, axis: string): string =>
      g.node('Clip', [op('Sub', [centreOffset, op('Mul', [op('Abs', [o], `abs_${axis}`), centreGain], `centre_${axis}_scaled`)], `centre_${axis}_ramp`), zero, one], n(`gate_${axis}`));
    const obj = op('Mul', [op('Mul', [gateMass, gateRing], 'gate_mr'), op('Mul', [centre(ox, 'x'), centre(oy, 'y')], 'gate_xy')], 'objectness');
    const scores = op('Mul', [probs, obj], 'scores');
    const kMix = g.node('ReduceSum', [op('Mul', [probs, boxK], 'k_weighted'), g.init(n('k_axes'), DataType.INT64, [1], [1])], n('k'), { keepdims: 1 });
    const width = op('Mul', [op('Mul', [op('Sqrt', [op('Relu', [sxx], 'sxx_pos')], 'sigma_x'), kMix], 'width_cells'), cellPx], 'width');
    const height = op('Mul', [op('Mul', [op('Sqrt', [op('Relu', [syy], 'syy_pos')], 'sigma_y'), kMix], 'height_cells'), cellPx], 'height');
    const cx = op('Add', [anchorX, op('Mul', [ox, cellPx], 'ox_px')], 'cx');
    const cy = op('Add', [anchorY, op('Mul', [oy, cellPx], 'oy_px')], 'cy');
    const rows = g.node('Concat', [cx, cy, width, height, scores], n('rows'), { axis: 1 });
    const flat = g.node('Reshape', [rows, g.init(n('flat_shape'), DataType.INT64, [3], [1, 4 + C, GRID * GRID])], n('flat'));
    const f = win.stride / CELL;
    if (f === 1) {
      columns.push(flat);
      continue;
    }
    // Best candidate per f×f block of cells: its flat index, then its column.
    const best = g.node('ReduceMax', [scores], n('best_score'), { axes: [1], keepdims: 1 });
    const side = GRID / f;
    multiNode(g, 'MaxPool', [best], [n('pool'), n('pool_indices')], { kernel_shape: [f, f], strides: [f, f] });
    const ind = g.node('Reshape', [n('pool_indices'), g.init(n('ind_shape'), DataType.INT64, [3], [1, 1, side * side])], n('ind_flat'));
    const indAll = g.node('Expand', [ind, g.init(n('ind_expand'), DataType.INT64, [3], [1, 4 + C, side * side])], n('ind_all'));
    columns.push(g.node('GatherElements', [flat, indAll], n('columns'), { axis: 2 }));
  }
  g.node('Concat', columns, 'output0', { axis: 2 });
  return g;
}

// ------------------------------------------------------------------------------------ build

interface Example {
  features: number[];
  label: number;
  sx: number;
  sy: number;
  w: number;
  h: number;
}

function examples(scenes: readonly ConveyorScene[]): Example[] {
  const out: Example[] = [];
  for (const scene of scenes) {
    const { data, box } = letterboxTensor(scene, INPUT_SIZE);
    const maps = cellMaps(data);
    for (const p of partsInInput(scene, box)) {
      const c = bestCandidate(maps, p);
      if (!c || c.objectness < 0.5) continue;
      out.push({ features: [...c.features], label: p.label, sx: Math.sqrt(c.sxx) * CELL, sy: Math.sqrt(c.syy) * CELL, w: p.x2 - p.x1, h: p.y2 - p.y1 });
    }
  }
  return out;
}

function fitHead(ex: readonly Example[]): Head {
  // Chroma is ~0-0.45: scaled ×3 for the trainer's conditioning, folded back into the weights.
  const fs = [1, 1, 3];
  const soft = trainSoftmax(
    createRng(SEEDS.head),
    ex.map((e) => e.features.map((v, i) => v * (fs[i] as number))),
    ex.map((e) => e.label),
    C,
    { epochs: 300, batch: 64, lr: 0.05, l2: 1e-4 },
  );
  // Box extent per class: least squares of the true width/height on σ (both axes pooled).
  const k = PART_CLASSES.map((_, c) => {
    let num = 0;
    let den = 0;
    for (const e of ex) {
      if (e.label !== c) continue;
      num += e.w * e.sx + e.h * e.sy;
      den += e.sx * e.sx + e.sy * e.sy;
    }
    return roundSig(den > 0 ? num / den : 3.5, 5);
  });
  return { w: soft.w.map((r) => r.map((v, i) => roundSig(v * (fs[i] as number), 6))), b: soft.b.map((v) => roundSig(v, 6)), k };
}

export function detectorSource(): InputSpecV2['source'] {
  return { kind: 'image', width: INPUT_SIZE, height: INPUT_SIZE, fit: 'letterbox', pad: 114, colour: 'rgb', layout: 'NCHW', scale: 1 / 255, mean: [0], std: [1] };
}

export function buildConveyorParts(): ModelBuildV2[] {
  const trainRng = createRng(SEEDS.train);
  const train = Array.from({ length: 60 }, () => conveyorScene(trainRng));
  const ex = examples(train);
  const head = fitHead(ex);
  const g = buildGraph(head);
  const onnx = buildModelV2(g, {
    graphName: 'conveyor_parts',
    docString: `edgefleet demo conveyor-parts detector (fp32): metal mask, windowed mass moments at ${WINDOWS.map((w) => w.cells * CELL).join('/')} px, linear class head; YOLOv8 output layout`,
    inputs: [{ name: 'images', shape: [1, 3, INPUT_SIZE, INPUT_SIZE] }],
    outputs: [{ name: 'output0', shape: [1, 4 + C, CANDIDATES] }],
    metadata: { version: MODEL_VERSION, quantization: 'fp32', task: 'detection', names: PART_CLASSES.join(','), stride: WINDOWS.map((w) => w.stride).join(','), imgsz: `${INPUT_SIZE},${INPUT_SIZE}` },
  });
  const postprocessing: DetectionSpec = {
    kind: 'detection',
    decoder: 'yolov8',
    labels: [...PART_CLASSES],
    output: 'output0',
    boxFormat: 'cxcywh',
    normalized: false,
    scoreActivation: 'none',
    scoreThreshold: SCORE_THRESHOLD,
    iouThreshold: IOU_THRESHOLD,
    maxDetections: 100,
    classAgnostic: false,
  };
  const inputs: InputSpecV2[] = [{ name: 'images', dtype: 'float32', shape: [1, 3, INPUT_SIZE, INPUT_SIZE], source: detectorSource() }];
  const outputs: TensorSpecV2[] = [{ name: 'output0', dtype: 'float32', shape: [1, 4 + C, CANDIDATES] }];
  const feed = (data: Float32Array): Record<string, Feed> => ({ images: { dims: [1, 3, INPUT_SIZE, INPUT_SIZE], values: data } });

  /** Detections matched to parts over `scenes` fresh scenes. */
  const measure = async (run: RunFn, seed: number, scenes: number, opts: { illumination?: number } = {}) => {
    const rng = createRng(seed);
    const total = { tp: 0, fp: 0, fn: 0, perfect: 0 };
    const perClass = PART_CLASSES.map(() => ({ tp: 0, fp: 0, fn: 0 }));
    const ious: number[] = [];
    for (let s = 0; s < scenes; s++) {
      const scene = conveyorScene(rng, opts.illumination === undefined ? {} : { illumination: opts.illumination });
      const { data, box } = letterboxTensor(scene, INPUT_SIZE);
      const out = (await run(feed(data))).output0?.data;
      if (!out) throw new Error('conveyor-parts: output0 missing');
      const dets = decodeYolov8(out, C, CANDIDATES, SCORE_THRESHOLD, IOU_THRESHOLD, 100);
      const parts = partsInInput(scene, box);
      const m = matchDetections(dets, parts);
      total.tp += m.tp;
      total.fp += m.fp;
      total.fn += m.fn;
      if (m.fp === 0 && m.fn === 0) total.perfect++;
      m.perClass.forEach((c, i) => {
        const t = perClass[i] as { tp: number; fp: number; fn: number };
        t.tp += c.tp;
        t.fp += c.fp;
        t.fn += c.fn;
      });
      for (const p of parts) {
        const best = Math.max(0, ...dets.filter((d) => d.label === p.label).map((d) => iou(d, p)));
        if (best >= 0.5) ious.push(best);
      }
    }
    return {
      ...total,
      scenes,
      perClass,
      precision: total.tp / Math.max(1, total.tp + total.fp),
      recall: total.tp / Math.max(1, total.tp + total.fn),
      meanIou: ious.reduce((a, b) => a + b, 0) / Math.max(1, ious.length),
    };
  };

  const evaluate = async (run: RunFn): Promise<Measured> => {
    const main = await measure(run, SEEDS.heldOut, 100);
    const metrics: Record<string, number> = {
      precision: roundSig(main.precision, 4),
      recall: roundSig(main.recall, 4),
      parts: main.tp + main.fn,
      meanMatchedIou: roundSig(main.meanIou, 4),
      perfectScenes: roundSig(main.perfect / main.scenes, 4),
    };
    PART_CLASSES.forEach((name, i) => {
      const c = main.perClass[i] as { tp: number; fp: number; fn: number };
      metrics[`precision.${name}`] = roundSig(c.tp / Math.max(1, c.tp + c.fp), 4);
      metrics[`recall.${name}`] = roundSig(c.tp / Math.max(1, c.tp + c.fn), 4);
    });
    // Outside the training conditions (illumination 0.9-1.1): how fast it degrades in dim light.
    const dim: string[] = [];
    for (const illumination of [0.8, 0.7, 0.6]) {
      const r = await measure(run, SEEDS.heldOut + Math.round(illumination * 100), 20, { illumination });
      metrics[`precision.light${illumination}`] = roundSig(r.precision, 4);
      metrics[`recall.light${illumination}`] = roundSig(r.recall, 4);
      dim.push(`${illumination}: ${r.precision.toFixed(2)}/${r.recall.toFixed(2)}`);
    }
    return {
      evaluation: {
        dataset: `synthetic-conveyor seed=${SEEDS.heldOut} (${main.scenes} scenes, ${main.tp + main.fn} parts; accuracy: scenes with every part found and no false detection, IoU 0.5)`,
        samples: main.scenes,
        accuracy: roundSig(main.perfect / main.scenes, 6),
      },
      metrics,
      summary:
        `Held out (${main.scenes} scenes, ${main.tp + main.fn} parts), IoU 0.5, score ${SCORE_THRESHOLD}: precision ${main.precision.toFixed(3)}, recall ${main.recall.toFixed(3)}, mean matched IoU ${main.meanIou.toFixed(2)}; ` +
        `in dimmer light (precision/recall at illumination ${dim.join(', ')}).`,
    };
  };

  const largeTestCases = (): Promise<LargeTestCase[]> => {
    const rng = createRng(SEEDS.tests);
    const scene = conveyorScene(rng, { count: 4 });
    const { data } = letterboxTensor(scene, INPUT_SIZE);
    return Promise.resolve([{ name: 'scene0', inputs: { images: { dims: [1, 3, INPUT_SIZE, INPUT_SIZE], values: Array.from(data) } } }]);
  };

  return [
    {
      name: 'conveyor-parts',
      quantization: 'fp32',
      task: 'detection',
      description:
        'Bolts, nuts and copper washers on a conveyor, from a 640x480 camera letterboxed to 640x640: a hand-designed detector (metal mask, windowed mass moments, a trained 3-feature class head) with YOLOv8 output; parts must be singulated.',
      onnx,
      inputs,
      outputs,
      postprocessing,
      evaluate,
      testCases: () => Promise.resolve([]),
      largeTestCases,
      tolerance: (expected) => {
        // Coordinates reach 640: 1e-4 relative to that; scores need no more.
        let m = 1;
        for (const v of expected) m = Math.max(m, Math.abs(v));
        return Number((1e-4 * m).toPrecision(2));
      },
    },
  ];
}
