/**
 * Detection postprocessing (agent/postprocess/detection.ts) on hand-built tensors: every decoder
 * and box format, the letterbox/resize geometry (checked against real sharp resizes), threshold,
 * class-aware vs class-agnostic NMS, maxDetections and ties, bad outputs refused with clear
 * errors; and a property test against a textbook O(n²) greedy NMS written here from scratch over
 * plain objects, on a few hundred random candidate sets up to 8,400 candidates × 80 classes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import sharp from 'sharp';
import { decodeDetections, letterboxGeometry, ssdAnchors, type Detection, type DetectionOutputs, type Geometry } from '../../agent/postprocess/detection.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import { DetectionSpecSchema, type DetectionSpec } from '../../shared/tasks/specs.ts';
import { createRng, type Rng } from '../../scripts/lib/rng.ts';

const LABELS3 = ['bolt', 'nut', 'washer'];

function spec(over: Record<string, unknown>): DetectionSpec {
  return DetectionSpecSchema.parse({ kind: 'detection', decoder: 'yolov8', labels: LABELS3, ...over });
}

function identity(w: number, h: number): Geometry {
  return letterboxGeometry(w, h, w, h, 'fill');
}

function throwsCode(fn: () => unknown, code: string, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof EdgefleetError, `not an EdgefleetError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, message);
    return true;
  });
}

interface Cand {
  /** Four box values in the tensor's box format. */
  box: [number, number, number, number];
  cls: number;
  score: number;
}

/** yolov8 [1, 4+C, N]: column i holds cand i; other classes get `rest` (default 0). */
function yolov8(cands: readonly Cand[], C: number, rest = 0): DetectionOutputs {
  const N = cands.length;
  const data = new Float32Array((4 + C) * N).fill(rest);
  cands.forEach((c, i) => {
    for (let k = 0; k < 4; k++) data[k * N + i] = c.box[k] as number;
    data[(4 + c.cls) * N + i] = c.score;
  });
  return { output0: { data, dims: [1, 4 + C, N] } };
}

/** yolov5 [1, N, 5+C]: row i is cand i with objectness `obj` and class score `score / obj`... set directly. */
function yolov5(rows: readonly { box: [number, number, number, number]; obj: number; classes: number[] }[]): DetectionOutputs {
  const C = rows[0]?.classes.length ?? 0;
  const data = new Float32Array(rows.length * (5 + C));
  rows.forEach((r, i) => data.set([...r.box, r.obj, ...r.classes], i * (5 + C)));
  return { out: { data, dims: [1, rows.length, 5 + C] } };
}

const near = (a: number, b: number, tol: number, what: string): void => assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b} (tolerance ${tol})`);

// -------------------------------------------------------------------------------- geometry

void describe('letterboxGeometry', () => {
  it('letterbox 1280×720 → 640×640 (Ultralytics): scale 0.5, 140 px bands top and bottom; an object maps back within 1 px', () => {
    const geo = letterboxGeometry(1280, 720, 640, 640, 'letterbox');
    assert.deepEqual(geo, { inputWidth: 640, inputHeight: 640, srcWidth: 1280, srcHeight: 720, scaleX: 0.5, scaleY: 0.5, padLeft: 0, padTop: 140 });
    // A part at (400, 200)-(600, 500) in the frame sits at (200, 240)-(300, 390) in the model input.
    const s = spec({});
    const out = decodeDetections(s, yolov8([{ box: [250, 315, 100, 150], cls: 1, score: 0.9 }], 3), geo);
    assert.equal(out.length, 1);
    const d = out[0]!;
    assert.equal(d.label, 'nut');
    assert.equal(d.classIndex, 1);
    near(d.score, 0.9, 1e-6, 'score');
    near(d.box.x1, 400, 1, 'x1');
    near(d.box.y1, 200, 1, 'y1');
    near(d.box.x2, 600, 1, 'x2');
    near(d.box.y2, 500, 1, 'y2');
  });

  it('letterbox with odd padding: 1000×333 → 640×640 resizes to 640×213 and pads 213 above (round(213.5 - 0.1))', () => {
    const geo = letterboxGeometry(1000, 333, 640, 640, 'letterbox');
    assert.equal(geo.padLeft, 0);
    assert.equal(geo.padTop, 213);
    assert.equal(geo.scaleX, 0.64);
    near(geo.scaleY, 213 / 333, 1e-12, 'scaleY');
    // Portrait frame: bands left and right.
    const p = letterboxGeometry(720, 1280, 640, 640, 'letterbox');
    assert.deepEqual([p.padLeft, p.padTop, p.scaleX], [140, 0, 0.5]);
  });

  it('fill stretches each axis; inside/outside place top-left; bad sizes are BAD_INPUT', () => {
    const f = letterboxGeometry(1280, 720, 640, 640, 'fill');
    assert.deepEqual([f.scaleX, f.scaleY, f.padLeft, f.padTop], [0.5, 640 / 720, 0, 0]);
    const i = letterboxGeometry(1280, 720, 640, 640, 'inside');
    assert.deepEqual([i.scaleX, i.scaleY, i.padLeft, i.padTop], [0.5, 0.5, 0, 0]);
    const o = letterboxGeometry(1280, 720, 640, 640, 'outside');
    assert.deepEqual([o.scaleX, o.scaleY, o.padLeft, o.padTop], [1138 / 1280, 640 / 720, 0, 0]);
    throwsCode(() => letterboxGeometry(0, 720, 640, 640, 'letterbox'), 'BAD_INPUT', /positive/);
    throwsCode(() => letterboxGeometry(1280, Number.NaN, 640, 640, 'fill'), 'BAD_INPUT', /positive/);
  });

  // The geometry must describe where sharp really puts the pixels: a white block in a black
  // frame is resized by sharp and found again in the output.
  async function whiteBlockLandsAt(fit: 'contain' | 'cover', srcW: number, srcH: number, block: [number, number, number, number], dstW: number, dstH: number): Promise<void> {
    const [bx1, by1, bx2, by2] = block;
    const px = Buffer.alloc(srcW * srcH);
    for (let y = by1; y < by2; y++) px.fill(255, y * srcW + bx1, y * srcW + bx2);
    const out = await sharp(px, { raw: { width: srcW, height: srcH, channels: 1 } })
      .resize(dstW, dstH, { fit, background: { r: 0, g: 0, b: 0, alpha: 1 } })
      .toColourspace('b-w')
      .raw()
      .toBuffer();
    let x1 = dstW;
    let y1 = dstH;
    let x2 = 0;
    let y2 = 0;
    for (let y = 0; y < dstH; y++) {
      for (let x = 0; x < dstW; x++) {
        if ((out[y * dstW + x] as number) >= 128) {
          x1 = Math.min(x1, x);
          y1 = Math.min(y1, y);
          x2 = Math.max(x2, x + 1);
          y2 = Math.max(y2, y + 1);
        }
      }
    }
    const g = letterboxGeometry(srcW, srcH, dstW, dstH, fit);
    const tol = 1.5;
    near(x1, bx1 * g.scaleX + g.padLeft, tol, `${fit} x1`);
    near(y1, by1 * g.scaleY + g.padTop, tol, `${fit} y1`);
    near(x2, bx2 * g.scaleX + g.padLeft, tol, `${fit} x2`);
    near(y2, by2 * g.scaleY + g.padTop, tol, `${fit} y2`);
  }

  it("contain and cover match where sharp's resize puts a block (within 1.5 px: resampling blur)", async () => {
    await whiteBlockLandsAt('contain', 1280, 720, [400, 200, 600, 500], 640, 640);
    await whiteBlockLandsAt('contain', 333, 1000, [20, 100, 300, 900], 320, 320);
    await whiteBlockLandsAt('cover', 1280, 720, [400, 200, 900, 500], 640, 640);
    await whiteBlockLandsAt('cover', 500, 901, [100, 300, 400, 650], 256, 256);
  });

  it('contain agrees with letterbox on the placement (only the pad colour differs)', () => {
    for (const [w, h] of [[1280, 720], [1000, 333], [640, 480], [1920, 1080], [333, 1000], [101, 57]] as const) {
      const a = letterboxGeometry(w, h, 640, 640, 'letterbox');
      const b = letterboxGeometry(w, h, 640, 640, 'contain');
      assert.deepEqual(b, a, `${w}×${h}`);
    }
  });

  it('cover 1280×720 → 640×640 crops 249 px on the left of the 1138-wide resize', () => {
    const g = letterboxGeometry(1280, 720, 640, 640, 'cover');
    assert.deepEqual([g.scaleX, g.scaleY, g.padLeft, g.padTop], [1138 / 1280, 640 / 720, -249, 0]);
    // A box half in the cropped-off band comes back clipped to the frame, in frame pixels.
    const out = decodeDetections(spec({ boxFormat: 'xyxy' }), yolov8([{ box: [-50, 100, 100, 200], cls: 0, score: 0.8 }], 3), g);
    near(out[0]!.box.x1, (-50 + 249) / g.scaleX, 1e-9, 'x1');
    near(out[0]!.box.y1, 100 / g.scaleY, 1e-9, 'y1');
  });
});

// -------------------------------------------------------------------------------- decoders

void describe('decodeDetections: yolov8 [1, 4+C, N]', () => {
  it('decodes every box format to the same pixels, and normalized boxes by the input size', () => {
    const geo = identity(640, 480);
    const want = { x1: 100, y1: 50, x2: 300, y2: 250 };
    const forms: [string, [number, number, number, number], boolean][] = [
      ['cxcywh', [200, 150, 200, 200], false],
      ['cycxhw', [150, 200, 200, 200], false],
      ['xyxy', [100, 50, 300, 250], false],
      ['yxyx', [50, 100, 250, 300], false],
      ['xyxy', [100 / 640, 50 / 480, 300 / 640, 250 / 480], true],
      ['cxcywh', [200 / 640, 150 / 480, 200 / 640, 200 / 480], true],
    ];
    for (const [boxFormat, box, normalized] of forms) {
      const out = decodeDetections(spec({ boxFormat, normalized }), yolov8([{ box, cls: 2, score: 0.7 }], 3), geo);
      assert.equal(out.length, 1, boxFormat);
      for (const k of ['x1', 'y1', 'x2', 'y2'] as const) near(out[0]!.box[k], want[k], 1e-4, `${boxFormat}${normalized ? ' normalized' : ''} ${k}`);
      assert.equal(out[0]!.label, 'washer');
    }
  });

  it('takes the best class per column (lowest index on a tie) and applies sigmoid to logits', () => {
    const N = 3;
    const C = 3;
    const data = new Float32Array((4 + C) * N);
    const set = (ch: number, i: number, v: number): void => void (data[ch * N + i] = v);
    for (let i = 0; i < N; i++) [100 + 200 * i, 100 + 200 * i, 20, 20].forEach((v, k) => set(k, i, v));
    // column 0: class 1 best; column 1: classes 0 and 2 tie; column 2: all below threshold after sigmoid.
    [0.2, 0.6, 0.1].forEach((v, c) => set(4 + c, 0, v));
    [0.5, 0.3, 0.5].forEach((v, c) => set(4 + c, 1, v));
    [-3, -2, -4].forEach((v, c) => set(4 + c, 2, v));
    const plain = decodeDetections(spec({}), { output0: { data, dims: [1, 4 + C, N] } }, identity(640, 640));
    assert.deepEqual(
      plain.map((d) => [d.classIndex, Math.round(d.score * 1e6) / 1e6]),
      [
        [1, 0.6],
        [0, 0.5],
      ],
    );
    // The same tie when only a few of many columns pass (their classes are then read per column).
    const sparse: Cand[] = Array.from({ length: 100 }, (_, i) => ({ box: [100 + i, 100, 20, 20], cls: 1, score: 0.1 }));
    const sparseOut = yolov8(sparse, C);
    for (const [c, v] of [0.5, 0.3, 0.5].entries()) sparseOut.output0!.data[(4 + c) * 100 + 42] = v;
    assert.deepEqual(decodeDetections(spec({}), sparseOut, identity(640, 640)).map((d) => [d.classIndex, d.box.x1]), [[0, 132]]);
    const sig = decodeDetections(spec({ scoreActivation: 'sigmoid', scoreThreshold: 0.1 }), { output0: { data, dims: [1, 4 + C, N] } }, identity(640, 640));
    assert.equal(sig.length, 3);
    near(sig.find((d) => d.box.x1 === 490)!.score, 1 / (1 + Math.exp(2)), 1e-7, 'sigmoid(-2)');
  });

  it('threshold keeps score >= scoreThreshold; negative-size boxes are dropped', () => {
    const cands: Cand[] = [
      { box: [10, 10, 10, 10], cls: 0, score: Math.fround(0.25) },
      { box: [100, 10, 10, 10], cls: 0, score: Math.fround(0.2499) },
      { box: [200, 10, -4, 10], cls: 0, score: 0.9 },
    ];
    const out = decodeDetections(spec({ scoreThreshold: Math.fround(0.25) }), yolov8(cands, 3), identity(640, 640));
    assert.equal(out.length, 1);
    assert.equal(out[0]!.box.x1, 5);
    // Sigmoid: the logit-space prefilter lets a hair below through; the exact check drops it.
    const logits: Cand[] = [
      { box: [10, 10, 10, 10], cls: 0, score: Math.fround(-1e-9) },
      { box: [100, 10, 10, 10], cls: 0, score: 0 },
    ];
    const sig = decodeDetections(spec({ scoreThreshold: 0.5, scoreActivation: 'sigmoid' }), yolov8(logits, 3, -20), identity(640, 640));
    assert.deepEqual(sig.map((d) => [d.box.x1, d.score]), [[95, 0.5]]);
    const sig5 = decodeDetections(spec({ decoder: 'yolov5', scoreThreshold: 0.5, scoreActivation: 'sigmoid' }), yolov5([{ box: [10, 10, 10, 10], obj: Math.fround(-1e-9), classes: [40, 0, 0] }, { box: [100, 10, 10, 10], obj: 0, classes: [40, 0, 0] }]), identity(640, 640));
    assert.deepEqual(sig5.map((d) => d.box.x1), [95]);
  });

  it('refuses wrong dims, a class count that disagrees with the labels, a missing tensor and NaN, naming the tensor', () => {
    const s = spec({});
    const geo = identity(640, 640);
    const t = (dims: number[]): DetectionOutputs => ({ output0: { data: new Float32Array(dims.reduce((a, b) => a * b, 1)), dims } });
    throwsCode(() => decodeDetections(s, t([1, 8400, 7]), geo), 'BAD_MODEL', /"output0" has dims \[1, 8400, 7\].*transposed/);
    throwsCode(() => decodeDetections(s, t([1, 84, 8400]), geo), 'BAD_MODEL', /\[1, 84, 8400\].*80 classes, the manifest 3 labels/);
    throwsCode(() => decodeDetections(s, t([7, 8400]), geo), 'BAD_MODEL', /"output0" has dims \[7, 8400\]/);
    throwsCode(() => decodeDetections(s, { output0: { data: new Float32Array(10), dims: [1, 7, 100] } }, geo), 'BAD_MODEL', /700 values\) but 10 values/);
    throwsCode(() => decodeDetections(spec({ output: 'preds' }), t([1, 7, 5]), geo), 'BAD_MODEL', /no output "preds".*"output0"/);
    throwsCode(() => decodeDetections(s, {}, geo), 'BAD_MODEL', /no outputs/);
    // A NaN in a non-first class of a column that would not pass the threshold is still found.
    const nan = yolov8([{ box: [5, 5, 5, 5], cls: 0, score: 0.01 }, { box: [9, 9, 5, 5], cls: 0, score: 0.9 }], 3);
    nan.output0!.data[(4 + 2) * 2 + 0] = Number.NaN;
    throwsCode(() => decodeDetections(s, nan, geo), 'INFERENCE', /"output0" holds NaN scores \(column 0\)/);
    // Every column position (the class sweep goes eight at a time, plus a tail), any class row.
    for (let col = 0; col < 11; col++) {
      for (const c of [0, 1, 2]) {
        const grid = yolov8(Array.from({ length: 11 }, (_, i) => ({ box: [10 + i, 10, 5, 5] as [number, number, number, number], cls: 0, score: 0.05 })), 3);
        grid.output0!.data[(4 + c) * 11 + col] = Number.NaN;
        throwsCode(() => decodeDetections(s, grid, geo), 'INFERENCE', new RegExp(`NaN scores \\(column ${col}\\)`));
      }
    }
    const nanBox = yolov8([{ box: [Number.NaN, 5, 5, 5], cls: 0, score: 0.9 }], 3);
    throwsCode(() => decodeDetections(s, nanBox, geo), 'INFERENCE', /non-finite box/);
    throwsCode(() => decodeDetections(s, yolov8([{ box: [5, 5, 5, 5], cls: 0, score: 0.9 }], 3), { ...geo, scaleX: 0 }), 'BAD_INPUT', /geometry/);
  });
});

void describe('decodeDetections: yolov5 [1, N, 5+C]', () => {
  it('score = objectness × best class score; rows under the threshold by objectness are skipped', () => {
    const out = decodeDetections(
      spec({ decoder: 'yolov5', output: 'out' }),
      yolov5([
        { box: [50, 50, 20, 20], obj: 0.8, classes: [0.1, 0.5, 0.9] },
        { box: [150, 50, 20, 20], obj: 0.2, classes: [1, 1, 1] },
        { box: [250, 50, 20, 20], obj: 0.9, classes: [0.2, 0.25, 0.1] },
      ]),
      identity(640, 640),
    );
    assert.equal(out.length, 1);
    assert.equal(out[0]!.label, 'washer');
    near(out[0]!.score, Math.fround(0.8) * Math.fround(0.9), 1e-12, 'score');
    assert.deepEqual(out[0]!.box, { x1: 40, y1: 40, x2: 60, y2: 60 });
  });

  it('sigmoid on objectness and class logits; wrong dims and NaN refused', () => {
    const rows = yolov5([{ box: [50, 50, 20, 20], obj: 2, classes: [0, 1, -1] }]);
    const out = decodeDetections(spec({ decoder: 'yolov5', scoreActivation: 'sigmoid' }), rows, identity(640, 640));
    near(out[0]!.score, (1 / (1 + Math.exp(-2))) * (1 / (1 + Math.exp(-1))), 1e-7, 'score');
    assert.equal(out[0]!.classIndex, 1);
    throwsCode(() => decodeDetections(spec({ decoder: 'yolov5' }), { out: { data: new Float32Array(7 * 4), dims: [1, 4, 7] } }, identity(640, 640)), 'BAD_MODEL', /"out" has dims \[1, 4, 7\]; expected \[1, N, 5 \+ 3 classes = 8\]/);
    const nan = yolov5([{ box: [50, 50, 20, 20], obj: 0.9, classes: [0.5, Number.NaN, 0.1] }]);
    throwsCode(() => decodeDetections(spec({ decoder: 'yolov5' }), nan, identity(640, 640)), 'INFERENCE', /NaN scores \(class scores of row 0\)/);
    const nanObj = yolov5([{ box: [50, 50, 20, 20], obj: Number.NaN, classes: [0.5, 0.1, 0.1] }]);
    throwsCode(() => decodeDetections(spec({ decoder: 'yolov5' }), nanObj, identity(640, 640)), 'INFERENCE', /objectness of row 0/);
  });
});

void describe('decodeDetections: ssd (BlazeFace-like anchors)', () => {
  const blaze = { strides: [8, 16, 16, 16], perCell: [2, 2, 2, 2], offset: 0.5 };

  it('anchors: 896 for BlazeFace front 128×128, merged per stride as MediaPipe does; cached per size', () => {
    const a = ssdAnchors(blaze, 128, 128);
    assert.equal(a.length / 2, 896);
    assert.deepEqual(Array.from(ssdAnchors({ strides: [8, 16], perCell: [2, 6], offset: 0.5 }, 128, 128)), Array.from(a));
    // 16×16 grid, 2 per cell: anchors 0 and 1 share the first cell, 2 is the next column.
    assert.deepEqual(Array.from(a.subarray(0, 6)), [0.5 / 16, 0.5 / 16, 0.5 / 16, 0.5 / 16, 1.5 / 16, 0.5 / 16]);
    // Row 1 of the 16×16 grid starts at anchor 32.
    assert.deepEqual(Array.from(a.subarray(64, 66)), [0.5 / 16, 1.5 / 16]);
    // The 8×8 grid starts at 512, six anchors per cell.
    assert.deepEqual(Array.from(a.subarray(1024, 1026)), [0.5 / 8, 0.5 / 8]);
    assert.deepEqual(Array.from(a.subarray(1024 + 12, 1024 + 14)), [1.5 / 8, 0.5 / 8]);
    assert.equal(ssdAnchors(blaze, 128, 128), a, 'same array from the cache');
    // Non-square input and a stride that does not divide it: ceil(100/16) × ceil(60/16) cells.
    assert.equal(ssdAnchors({ strides: [16], perCell: [3], offset: 0.5 }, 100, 60).length / 2, 7 * 4 * 3);
  });

  function ssdOutputs(N: number, D: number, C: number, set: (boxes: Float32Array, scores: Float32Array) => void): DetectionOutputs {
    const boxes = new Float32Array(N * D);
    const scores = new Float32Array(N * C).fill(-10);
    set(boxes, scores);
    return { regressors: { data: boxes, dims: [1, N, D] }, classificators: { data: scores, dims: [1, N, C] } };
  }

  it('decodes deltas against the anchor (delta / input size + centre), sigmoid scores, keypoint columns ignored', () => {
    const s = spec({ decoder: 'ssd', labels: ['face'], boxes: 'regressors', scores: 'classificators', anchors: blaze, scoreActivation: 'sigmoid', scoreThreshold: 0.5 });
    const out = ssdOutputs(896, 16, 1, (b, sc) => {
      // Anchor 2: centre (1.5/16, 0.5/16) → (12, 4) px on 128×128; shift by (+16, +8) px, size 32×24.
      b.set([16, 8, 32, 24, 99, 99, 99, 99], 2 * 16);
      sc[2] = 3;
    });
    const geo = letterboxGeometry(256, 256, 128, 128, 'fill');
    const dets = decodeDetections(s, out, geo);
    assert.equal(dets.length, 1);
    const d = dets[0]!;
    near(d.score, 1 / (1 + Math.exp(-3)), 1e-7, 'score');
    // Centre (28, 12), half size (16, 12) in model px; ×2 back to the 256×256 frame, clipped at 0.
    near(d.box.x1, 24, 1e-9, 'x1');
    near(d.box.y1, 0, 1e-9, 'y1');
    near(d.box.x2, 88, 1e-9, 'x2');
    near(d.box.y2, 48, 1e-9, 'y2');
    // cycxhw: the same box with y first; deltaScale overrides the input size.
    const yFirst = ssdOutputs(896, 4, 1, (b, sc) => {
      b.set([4, 8, 12, 16], 2 * 4);
      sc[2] = 3;
    });
    const d2 = decodeDetections({ ...s, boxFormat: 'cycxhw', deltaScale: 64 }, yFirst, identity(128, 128))[0]!;
    near(d2.box.x1, 12 + 16 - 16, 1e-9, 'x1 (cycxhw, deltaScale 64)');
    near(d2.box.y1, 4 + 8 - 12, 1e-9, 'y1 (cycxhw, deltaScale 64)');
  });

  it('multi-class scores [1, N, C] take the best class; misfit outputs and specs are refused', () => {
    const s = spec({ decoder: 'ssd', boxes: 'regressors', scores: 'classificators', anchors: { strides: [16], perCell: [1], offset: 0.5 } });
    const out = ssdOutputs(64, 4, 3, (b, sc) => {
      sc.set([0.1, 0.2, 0.7], 5 * 3);
    });
    const dets = decodeDetections(s, out, identity(128, 128));
    assert.deepEqual(
      dets.map((d) => d.label),
      ['washer'],
    );
    throwsCode(() => decodeDetections(s, ssdOutputs(60, 4, 3, () => {}), identity(128, 128)), 'BAD_MODEL', /"regressors" has 60 boxes \(dims \[1, 60, 4\]\) but the anchors give 64 for a 128×128 input/);
    throwsCode(() => decodeDetections(s, ssdOutputs(64, 4, 2, () => {}), identity(128, 128)), 'BAD_MODEL', /"classificators" has dims \[1, 64, 2\]; expected \[1, 64, 3\]/);
    throwsCode(() => decodeDetections(s, ssdOutputs(64, 3, 3, () => {}), identity(128, 128)), 'BAD_MODEL', /"regressors" has dims \[1, 64, 3\]/);
    throwsCode(() => decodeDetections({ ...s, anchors: undefined }, out, identity(128, 128)), 'BAD_MANIFEST', /needs boxes, scores and anchors/);
    throwsCode(() => decodeDetections({ ...s, boxFormat: 'xyxy' }, out, identity(128, 128)), 'BAD_MANIFEST', /not a delta layout/);
    const nan = ssdOutputs(64, 4, 3, (_b, sc) => void (sc[7] = Number.NaN));
    throwsCode(() => decodeDetections(s, nan, identity(128, 128)), 'INFERENCE', /"classificators" holds NaN scores \(anchor 2\)/);
  });
});

void describe('decodeDetections: nms (NMS inside the model)', () => {
  function nmsOutputs(rows: { box: [number, number, number, number]; score: number; cls: number }[], count?: number): Record<string, { data: Float32Array; dims: number[] }> {
    const K = rows.length;
    const out: Record<string, { data: Float32Array; dims: number[] }> = {
      det_boxes: { data: Float32Array.from(rows.flatMap((r) => r.box)), dims: [1, K, 4] },
      det_scores: { data: Float32Array.from(rows.map((r) => r.score)), dims: [1, K] },
      det_classes: { data: Float32Array.from(rows.map((r) => r.cls)), dims: [1, K] },
    };
    if (count !== undefined) out.num_dets = { data: Float32Array.of(count), dims: [1] };
    return out;
  }
  const base = { decoder: 'nms', boxes: 'det_boxes', scores: 'det_scores', classes: 'det_classes', count: 'num_dets', boxFormat: 'xyxy', normalized: true };
  const rows = [
    { box: [0.1, 0.1, 0.5, 0.5] as [number, number, number, number], score: 0.6, cls: 0 },
    { box: [0.12, 0.1, 0.52, 0.5] as [number, number, number, number], score: 0.9, cls: 1 },
    { box: [0.6, 0.6, 0.9, 0.9] as [number, number, number, number], score: 0.2, cls: 2 },
    { box: [0.6, 0.6, 0.9, 0.9] as [number, number, number, number], score: 0.95, cls: 2 },
  ];

  it('thresholds, sorts and maps back; rows past count ignored; no second NMS unless class-agnostic', () => {
    const geo = letterboxGeometry(1280, 720, 640, 640, 'letterbox');
    const out = decodeDetections(spec(base), nmsOutputs(rows, 3), geo);
    assert.deepEqual(
      out.map((d) => [d.label, Math.round(d.score * 100) / 100]),
      [
        ['nut', 0.9],
        ['bolt', 0.6],
      ],
    );
    // 0.1 × 640 = 64 model px → (64 - 0) / 0.5 = 128; y: (64 - 140) / 0.5 < 0 → clipped to 0.
    near(out[1]!.box.x1, 128, 1e-4, 'x1');
    assert.equal(out[1]!.box.y1, 0);
    near(out[1]!.box.y2, (0.5 * 640 - 140) / 0.5, 1e-4, 'y2');
    const agnostic = decodeDetections(spec({ ...base, classAgnostic: true }), nmsOutputs(rows, 4), geo);
    assert.deepEqual(
      agnostic.map((d) => d.label),
      ['washer', 'nut'],
    );
  });

  it('refuses a count beyond the rows, a class outside the labels, and a missing classes tensor', () => {
    const geo = identity(640, 640);
    throwsCode(() => decodeDetections(spec(base), nmsOutputs(rows, 5), geo), 'INFERENCE', /"num_dets" says 5 detections, the boxes hold 4/);
    throwsCode(() => decodeDetections(spec(base), nmsOutputs([{ box: [0, 0, 1, 1], score: 0.9, cls: 3 }], 1), geo), 'BAD_MODEL', /"det_classes" has class 3 at row 0; the manifest has 3 labels/);
    throwsCode(() => decodeDetections(spec({ ...base, classes: undefined }), nmsOutputs(rows), geo), 'BAD_MANIFEST', /3 labels need a classes tensor/);
    const bad = nmsOutputs(rows);
    bad.det_scores = { data: new Float32Array(3), dims: [1, 3] };
    throwsCode(() => decodeDetections(spec({ ...base, count: undefined }), bad, geo), 'BAD_MODEL', /"det_scores" has dims \[1, 3\]; expected \[1, 4\]/);
    // One label: classes may be left out.
    const single = decodeDetections(spec({ ...base, labels: ['part'], classes: undefined, count: undefined }), nmsOutputs(rows), geo);
    assert.deepEqual(single.map((d) => d.label), ['part', 'part', 'part']);
  });
});

void describe('decodeDetections: decoded (boxes decoded in the model, no NMS) and ignoreClasses', () => {
  /** UltraFace-like: scores [1, N, 2] softmax (background, face), boxes [1, N, 4] xyxy normalized. */
  function ultraLike(rows: { box: [number, number, number, number]; face: number }[]): Record<string, { data: Float32Array; dims: number[] }> {
    return {
      scores: { data: Float32Array.from(rows.flatMap((r) => [1 - r.face, r.face])), dims: [1, rows.length, 2] },
      boxes: { data: Float32Array.from(rows.flatMap((r) => r.box)), dims: [1, rows.length, 4] },
    };
  }
  const ultra = { decoder: 'decoded', labels: ['background', 'face'], ignoreClasses: [0], boxes: 'boxes', scores: 'scores', boxFormat: 'xyxy', normalized: true, scoreThreshold: 0.7, iouThreshold: 0.3 };
  const rows = [
    { box: [0.1, 0.1, 0.3, 0.4] as [number, number, number, number], face: 0.8 },
    { box: [0.11, 0.1, 0.31, 0.41] as [number, number, number, number], face: 0.95 },
    { box: [0.6, 0.5, 0.8, 0.9] as [number, number, number, number], face: 0.75 },
    { box: [0.4, 0.4, 0.5, 0.5] as [number, number, number, number], face: 0.1 },
  ];

  it('UltraFace layout: the background column ignored, NMS applied, boxes mapped to the original frame', () => {
    // 640×480 camera, fill-resized to the model's 320×240.
    const geo = letterboxGeometry(640, 480, 320, 240, 'fill');
    const out = decodeDetections(spec(ultra), ultraLike(rows), geo);
    assert.deepEqual(
      out.map((d) => [d.label, d.classIndex, Math.round(d.score * 100) / 100]),
      [
        ['face', 1, 0.95],
        ['face', 1, 0.75],
      ],
    );
    near(out[0]!.box.x1, 0.11 * 640, 1e-4, 'x1');
    near(out[0]!.box.y2, 0.41 * 480, 1e-4, 'y2');
    // Without ignoreClasses the background column wins on the last row (0.9) and is reported.
    const all = decodeDetections(spec({ ...ultra, ignoreClasses: undefined }), ultraLike(rows), geo);
    assert.deepEqual(all.map((d) => d.label), ['face', 'background', 'face']);
  });

  it('a NaN in a column that counts is refused; in an ignored column it is never read', () => {
    const bad = ultraLike(rows);
    bad.scores!.data[2 * 2 + 1] = Number.NaN;
    throwsCode(() => decodeDetections(spec(ultra), bad, identity(320, 240)), 'INFERENCE', /"scores" holds NaN scores \(row 2\)/);
    const bg = ultraLike(rows);
    bg.scores!.data[2 * 2] = Number.NaN;
    assert.equal(decodeDetections(spec(ultra), bg, identity(320, 240)).length, 2);
  });

  it('refuses misfit outputs and specs', () => {
    const geo = identity(320, 240);
    throwsCode(() => decodeDetections(spec({ ...ultra, boxes: undefined }), ultraLike(rows), geo), 'BAD_MANIFEST', /needs boxes and scores/);
    throwsCode(() => decodeDetections(spec({ ...ultra, ignoreClasses: [2] }), ultraLike(rows), geo), 'BAD_MANIFEST', /ignoreClasses has 2, the labels have 2 classes/);
    throwsCode(() => decodeDetections(spec({ ...ultra, labels: ['face'], ignoreClasses: undefined }), ultraLike(rows), geo), 'BAD_MODEL', /"scores" has dims \[1, 4, 2\]; expected \[1, 4, 1\]/);
    const short = ultraLike(rows);
    short.boxes = { data: new Float32Array(12), dims: [1, 4, 3] };
    throwsCode(() => decodeDetections(spec(ultra), short, geo), 'BAD_MODEL', /"boxes" has dims \[1, 4, 3\]; expected \[1, N, ≥4\]/);
  });

  it('ignoreClasses applies to yolov8 (few and many passing), yolov5 and nms too', () => {
    const geo = identity(640, 640);
    // Class 0 holds the higher score everywhere but is ignored: class 2 is reported.
    const cands: Cand[] = Array.from({ length: 20 }, (_, i) => ({ box: [20 + 30 * i, 20, 10, 10], cls: 2, score: 0.6 }));
    const out = yolov8(cands, 3);
    for (let i = 0; i < 20; i++) out.output0!.data[4 * 20 + i] = 0.9;
    for (const scoreThreshold of [0.5, 0]) {
      const dets = decodeDetections(spec({ ignoreClasses: [0], scoreThreshold }), out, geo);
      assert.equal(dets.length, 20, `threshold ${scoreThreshold}`);
      assert.ok(dets.every((d) => d.label === 'washer' && Math.abs(d.score - 0.6) < 1e-6), `threshold ${scoreThreshold}`);
    }
    // Only ignored classes above the threshold: nothing.
    assert.equal(decodeDetections(spec({ ignoreClasses: [0], scoreThreshold: 0.7 }), out, geo).length, 0);
    const v5 = decodeDetections(spec({ decoder: 'yolov5', ignoreClasses: [2] }), yolov5([{ box: [50, 50, 20, 20], obj: 0.9, classes: [0.5, 0.4, 0.99] }]), geo);
    assert.deepEqual(v5.map((d) => [d.label, Math.round(d.score * 100) / 100]), [['bolt', 0.45]]);
    const nms = {
      b: { data: Float32Array.of(0, 0, 10, 10, 20, 20, 30, 30), dims: [1, 2, 4] },
      s: { data: Float32Array.of(0.9, 0.8), dims: [1, 2] },
      c: { data: Float32Array.of(0, 1), dims: [1, 2] },
    };
    const n = decodeDetections(spec({ decoder: 'nms', boxes: 'b', scores: 's', classes: 'c', boxFormat: 'xyxy', ignoreClasses: [0] }), nms, geo);
    assert.deepEqual(n.map((d) => d.label), ['nut']);
  });
});

// ------------------------------------------------------------------------------------- NMS

void describe('NMS, maxDetections and ties', () => {
  const geo = identity(1000, 1000);

  it('class-aware keeps overlapping boxes of different classes; class-agnostic drops the lower one', () => {
    const cands: Cand[] = [
      { box: [100, 100, 50, 50], cls: 0, score: 0.8 },
      { box: [102, 100, 50, 50], cls: 1, score: 0.9 },
      { box: [104, 100, 50, 50], cls: 1, score: 0.7 },
    ];
    const aware = decodeDetections(spec({}), yolov8(cands, 3), geo);
    assert.deepEqual(aware.map((d) => [d.classIndex, d.box.x1]), [
      [1, 77],
      [0, 75],
    ]);
    const agnostic = decodeDetections(spec({ classAgnostic: true }), yolov8(cands, 3), geo);
    assert.deepEqual(agnostic.map((d) => [d.classIndex, d.box.x1]), [[1, 77]]);
  });

  it('suppresses only IoU > iouThreshold: exactly at the threshold both stay', () => {
    // [0,0]-[100,100] and [0,0]-[100,50]: IoU 0.5 exactly.
    const cands: Cand[] = [
      { box: [0, 0, 100, 100], cls: 0, score: 0.9 },
      { box: [0, 0, 100, 50], cls: 0, score: 0.8 },
    ];
    assert.equal(decodeDetections(spec({ boxFormat: 'xyxy', iouThreshold: 0.5 }), yolov8(cands, 3), geo).length, 2);
    assert.equal(decodeDetections(spec({ boxFormat: 'xyxy', iouThreshold: 0.49 }), yolov8(cands, 3), geo).length, 1);
  });

  it('keeps the best maxDetections, in score order', () => {
    const cands: Cand[] = Array.from({ length: 10 }, (_, i) => ({ box: [i * 60 + 30, 30, 40, 40], cls: 0, score: Math.fround(0.3 + i * 0.05) }));
    const out = decodeDetections(spec({ maxDetections: 3 }), yolov8(cands, 3), geo);
    assert.deepEqual(out.map((d) => d.box.x1), [550, 490, 430]);
  });

  it('equal scores: the lower candidate index comes first, and wins when they overlap', () => {
    const cands: Cand[] = [
      { box: [500, 500, 40, 40], cls: 0, score: 0.5 },
      { box: [100, 100, 40, 40], cls: 0, score: 0.5 },
      { box: [102, 100, 40, 40], cls: 0, score: 0.5 },
      { box: [300, 300, 40, 40], cls: 0, score: 0.5 },
    ];
    const out = decodeDetections(spec({}), yolov8(cands, 3), geo);
    assert.deepEqual(out.map((d) => d.box.x1), [480, 80, 280]);
    const reversed = decodeDetections(spec({}), yolov8([cands[2]!, cands[1]!], 3), geo);
    assert.deepEqual(reversed.map((d) => d.box.x1), [82]);
  });
});

// ------------------------------------------------------------------------- property test

/** One candidate as plain numbers: corners in model-input pixels, its class and score. */
interface RefCand {
  index: number;
  cls: number;
  score: number;
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

function refIou(a: RefCand, b: RefCand): number {
  const w = Math.max(0, Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1));
  const h = Math.max(0, Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1));
  const inter = w * h;
  const union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return union > 0 ? inter / union : 0;
}

/**
 * Textbook greedy NMS: sort by score (then index), take the best, drop every remaining box that
 * overlaps it by IoU > threshold (same class unless agnostic), repeat; then the first `max`
 * (`maxDetections: Infinity` for all of them).
 */
function referenceNms(cands: RefCand[], o: { scoreThreshold: number; iouThreshold: number; classAgnostic: boolean; maxDetections: number }): RefCand[] {
  let remaining = cands.filter((c) => c.score >= o.scoreThreshold).sort((a, b) => b.score - a.score || a.index - b.index);
  const kept: RefCand[] = [];
  while (remaining.length > 0) {
    const best = remaining[0]!;
    kept.push(best);
    remaining = remaining.slice(1).filter((c) => (!o.classAgnostic && c.cls !== best.cls) || !(refIou(best, c) > o.iouThreshold));
  }
  return kept.slice(0, o.maxDetections);
}

function refToPixels(c: RefCand, geo: Geometry, labels: string[]): Detection {
  const fx = (x: number): number => Math.min(geo.srcWidth, Math.max(0, (x - geo.padLeft) / geo.scaleX));
  const fy = (y: number): number => Math.min(geo.srcHeight, Math.max(0, (y - geo.padTop) / geo.scaleY));
  return { label: labels[c.cls]!, score: c.score, box: { x1: fx(c.x1), y1: fy(c.y1), x2: fx(c.x2), y2: fy(c.y2) }, classIndex: c.cls };
}

const refSigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

type PropDecoder = 'yolov8' | 'yolov5' | 'decoded';

interface Case {
  decoder: PropDecoder;
  spec: DetectionSpec;
  outputs: DetectionOutputs;
  geo: Geometry;
  truth: RefCand[];
}

/**
 * A random candidate set: objects with clusters of jittered boxes (high IoU, several classes,
 * scores sometimes from a coarse grid so ties happen) and background boxes; encoded into a
 * yolov8, yolov5 or decoded layout; the truth list holds what each candidate's score and corners
 * are. Sometimes a few classes are ignored: their columns then hold scores above the candidate's
 * own, so a decoder that read them would pick them.
 */
function randomCase(rng: Rng, N: number, C: number, decoder: PropDecoder): Case {
  const f = Math.fround;
  const W = 640;
  const H = 640;
  const sigmoidScores = rng.next() < 0.3;
  const coarse = rng.next() < 0.4;
  const ignore = C > 1 && rng.next() < 0.3 ? [...new Set(Array.from({ length: 1 + rng.int(Math.min(3, C - 1)) }, () => rng.int(C)))] : [];
  const allowed = Array.from({ length: C }, (_, k) => k).filter((k) => !ignore.includes(k));
  const objects = Array.from({ length: 1 + rng.int(20) }, () => ({ cx: rng.uniform(0, W), cy: rng.uniform(0, H), w: rng.uniform(4, 300), h: rng.uniform(4, 300), cls: rng.pick(allowed) }));
  const boxes: [number, number, number, number][] = [];
  const cls: number[] = [];
  const scores: number[] = [];
  for (let i = 0; i < N; i++) {
    let b: [number, number, number, number];
    let c: number;
    if (rng.next() < 0.7) {
      const o = rng.pick(objects);
      const j = rng.uniform(0, 0.25);
      b = [f(o.cx + rng.normal(0, j * o.w)), f(o.cy + rng.normal(0, j * o.h)), f(o.w * rng.uniform(0.7, 1.3)), f(o.h * rng.uniform(0.7, 1.3))];
      c = rng.next() < 0.8 ? o.cls : rng.pick(allowed);
    } else {
      b = [f(rng.uniform(-50, W + 50)), f(rng.uniform(-50, H + 50)), f(rng.uniform(0, 200)), f(rng.uniform(0, 200))];
      c = rng.pick(allowed);
    }
    if (rng.next() < 0.01) b[2] = 0;
    boxes.push(b);
    cls.push(c);
    // Probabilities, or logits for the sigmoid cases; coarse grids give exact ties.
    const p = coarse ? rng.int(21) / 20 : rng.next();
    scores.push(f(sigmoidScores ? (coarse ? (rng.int(21) - 10) / 2 : rng.uniform(-6, 6)) : p));
  }
  const spec = DetectionSpecSchema.parse({
    kind: 'detection',
    decoder,
    labels: Array.from({ length: C }, (_, k) => `c${k}`),
    boxes: 'boxes',
    scores: 'scores',
    ignoreClasses: ignore.length ? ignore : undefined,
    scoreActivation: sigmoidScores ? 'sigmoid' : 'none',
    scoreThreshold: rng.pick([0, 0.05, 0.25, 0.5, 0.9]),
    iouThreshold: rng.pick([0.3, 0.45, 0.5, 0.7, 0.9]),
    maxDetections: rng.pick([1, 5, 100, 300, 1000]),
    classAgnostic: rng.next() < 0.3,
  });
  const geo = rng.next() < 0.5 ? identity(W, H) : letterboxGeometry(rng.pick([1280, 1920, 800, 333]), rng.pick([720, 1080, 600, 1000]), W, H, 'letterbox');
  /** Class scores of one candidate: its own `own`, the others strictly below, ignored ones above. */
  const classRow = (own: number, c: number): number[] =>
    Array.from({ length: C }, (_, k) => (k === c ? own : ignore.includes(k) ? f(own + 0.5 + rng.next()) : f(own - 0.001 - rng.next() * 2)));
  const truth: RefCand[] = [];
  const corners = (i: number, score: number): RefCand => {
    const [cx, cy, w, h] = boxes[i]!;
    return { index: i, cls: cls[i]!, score, x1: cx - w / 2, y1: cy - h / 2, x2: cx + w / 2, y2: cy + h / 2 };
  };
  let outputs: DetectionOutputs;
  if (decoder === 'yolov8') {
    const data = new Float32Array((4 + C) * N);
    for (let i = 0; i < N; i++) {
      for (let k = 0; k < 4; k++) data[k * N + i] = boxes[i]![k]!;
      classRow(scores[i]!, cls[i]!).forEach((v, k) => (data[(4 + k) * N + i] = v));
      truth.push(corners(i, sigmoidScores ? refSigmoid(scores[i]!) : scores[i]!));
    }
    outputs = { output0: { data, dims: [1, 4 + C, N] } };
  } else if (decoder === 'decoded') {
    const b = new Float32Array(4 * N);
    const sc = new Float32Array(C * N);
    for (let i = 0; i < N; i++) {
      b.set(boxes[i]!, 4 * i);
      sc.set(classRow(scores[i]!, cls[i]!), C * i);
      truth.push(corners(i, sigmoidScores ? refSigmoid(scores[i]!) : scores[i]!));
    }
    outputs = { boxes: { data: b, dims: [1, N, 4] }, scores: { data: sc, dims: [1, N, C] } };
  } else {
    const width = 5 + C;
    const data = new Float32Array(N * width);
    for (let i = 0; i < N; i++) {
      const row = i * width;
      data.set(boxes[i]!, row);
      // Objectness carries the score; the class score is 1 (sigmoid: a large logit) or a second factor.
      const obj = scores[i]!;
      const own = sigmoidScores ? f(rng.uniform(-1, 8)) : f(rng.next() < 0.5 ? 1 : rng.uniform(0.5, 1));
      data[row + 4] = obj;
      data.set(classRow(own, cls[i]!), row + 5);
      truth.push(corners(i, sigmoidScores ? refSigmoid(obj) * refSigmoid(own) : obj * own));
    }
    outputs = { out: { data, dims: [1, N, width] } };
  }
  return { decoder, spec, outputs, geo, truth };
}

void describe('property: decodeDetections equals a textbook NMS over plain objects', () => {
  it('a few hundred random candidate sets, up to 8,400 candidates × 80 classes: same detections, same order', { timeout: 60_000 }, () => {
    const rng = createRng(20240613);
    const sizes: [number, number, PropDecoder][] = [];
    const decoders: PropDecoder[] = ['yolov8', 'yolov8', 'yolov8', 'yolov5', 'decoded'];
    for (let k = 0; k < 300; k++) sizes.push([1 + rng.int(rng.next() < 0.5 ? 40 : 600), 1 + rng.int(12), rng.pick(decoders)]);
    for (let k = 0; k < 6; k++) sizes.push([8400, 80, k % 3 === 2 ? 'yolov5' : 'yolov8']);
    let compared = 0;
    let nonEmpty = 0;
    let suppressedSome = 0;
    for (const [N, C, decoder] of sizes) {
      const c = randomCase(rng, N, C, decoder);
      const got = decodeDetections(c.spec, c.outputs, c.geo);
      const valid = c.truth.filter((t) => t.x2 >= t.x1 && t.y2 >= t.y1);
      const all = referenceNms(valid, { ...c.spec, maxDetections: Infinity });
      const want = all.slice(0, c.spec.maxDetections).map((t) => refToPixels(t, c.geo, c.spec.labels));
      assert.deepEqual(got, want, `${decoder} N=${N} C=${C} ${JSON.stringify({ thr: c.spec.scoreThreshold, iou: c.spec.iouThreshold, max: c.spec.maxDetections, agnostic: c.spec.classAgnostic, act: c.spec.scoreActivation, ignore: c.spec.ignoreClasses })}`);
      compared++;
      if (want.length > 0) nonEmpty++;
      if (all.length < valid.filter((t) => t.score >= c.spec.scoreThreshold).length) suppressedSome++;
    }
    assert.equal(compared, 306);
    // The cases must exercise the NMS, not just agree on empty lists.
    assert.ok(nonEmpty > 250, `only ${nonEmpty} cases had detections`);
    assert.ok(suppressedSome > 150, `only ${suppressedSome} cases suppressed anything`);
  });

  it('nms decoder with classAgnostic matches the reference too (sorted, capped, agnostic suppression)', () => {
    const rng = createRng(77);
    for (let k = 0; k < 100; k++) {
      const K = 1 + rng.int(300);
      const truth: RefCand[] = [];
      const b = new Float32Array(K * 4);
      const s = new Float32Array(K);
      const cl = new Float32Array(K);
      for (let i = 0; i < K; i++) {
        const x1 = Math.fround(rng.uniform(0, 600));
        const y1 = Math.fround(rng.uniform(0, 600));
        const x2 = Math.fround(x1 + rng.uniform(1, 120));
        const y2 = Math.fround(y1 + rng.uniform(1, 120));
        b.set([x1, y1, x2, y2], 4 * i);
        s[i] = Math.fround(rng.int(10) / 10);
        cl[i] = rng.int(4);
        truth.push({ index: i, cls: cl[i]!, score: s[i]!, x1, y1, x2, y2 });
      }
      const sp = DetectionSpecSchema.parse({ kind: 'detection', decoder: 'nms', labels: ['a', 'b', 'c', 'd'], boxes: 'b', scores: 's', classes: 'c', boxFormat: 'xyxy', classAgnostic: true, maxDetections: 1 + rng.int(50) });
      const geo = identity(640, 640);
      const got = decodeDetections(sp, { b: { data: b, dims: [1, K, 4] }, s: { data: s, dims: [1, K] }, c: { data: cl, dims: [1, K] } }, geo);
      assert.deepEqual(got, referenceNms(truth, sp).map((t) => refToPixels(t, geo, sp.labels)), `case ${k}`);
    }
  });
});

void describe('robustness', () => {
  it('random dims and values never crash or hang: a result or an EdgefleetError', () => {
    const rng = createRng(5);
    const decoders = ['yolov8', 'yolov5', 'ssd', 'nms'] as const;
    for (let k = 0; k < 400; k++) {
      const decoder = rng.pick(decoders);
      const dims = Array.from({ length: rng.int(5) }, () => rng.int(12));
      const n = dims.reduce((a, b) => a * b, 1);
      const data = Float32Array.from({ length: rng.next() < 0.9 ? n : rng.int(50) }, () => (rng.next() < 0.02 ? Number.NaN : rng.normal(0, 3)));
      const t = { data, dims };
      const sp = spec({ decoder, labels: ['a', 'b'].slice(0, 1 + rng.int(2)), boxes: 'x', scores: 'x', classes: rng.next() < 0.5 ? 'x' : undefined, count: rng.next() < 0.3 ? 'x' : undefined, anchors: { strides: [8], perCell: [1], offset: 0.5 }, scoreThreshold: rng.next() });
      try {
        const out = decodeDetections(sp, { x: t }, identity(16, 16));
        assert.ok(Array.isArray(out));
        for (const d of out) assert.ok(d.box.x1 >= 0 && d.box.x2 <= 16 && d.box.y1 >= 0 && d.box.y2 <= 16 && Number.isFinite(d.score));
      } catch (err) {
        assert.ok(err instanceof EdgefleetError, `${decoder} ${JSON.stringify(dims)}: ${String(err)}`);
      }
    }
  });
});
