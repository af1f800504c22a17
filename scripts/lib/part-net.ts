/**
 * The part-defect network's hand-designed feature extractor, as numbers shared by the ONNX
 * graph builder and a plain TypeScript reference forward pass (used to calibrate quantization
 * and to train the classifier head without running ORT).
 *
 * Idea: a scratch, crack or pit is a thin dark structure on a bright, smooth, convex part. For
 * four orientations, conv1 compares a 3-pixel line segment `c` with the parallel segments `a`
 * and `b` three pixels to either side; a dark line has min(a - c, b - c) large. With ReLUs only:
 *   X = relu(a - c), D = relu(a - b)            (conv1, 8 channels)
 *   R = relu(X - D - tau) = relu(min(a-c, b-c) - tau) whenever it is positive   (conv2, 1x1)
 * The part rim (convex) and smooth shading give min(...) <= 0, noise stays below tau. A global
 * max per orientation then feeds a 4 -> 2 linear classifier.
 */

export const KERNEL = 7;
export const ORIENTATIONS = 4;
/** Detection threshold in gray levels: well above the noise of 3-pixel means, below defects. */
export const TAU = 16;

type Tap = [dx: number, dy: number];

function taps(o: number): { a: Tap[]; b: Tap[]; c: Tap[] } {
  const ts = [-1, 0, 1];
  switch (o) {
    case 0: // horizontal line
      return { c: ts.map((t) => [t, 0]), a: ts.map((t) => [t, -3]), b: ts.map((t) => [t, 3]) };
    case 1: // vertical line
      return { c: ts.map((t) => [0, t]), a: ts.map((t) => [-3, t]), b: ts.map((t) => [3, t]) };
    case 2: // diagonal, direction (1, 1)
      return { c: ts.map((t) => [t, t]), a: ts.map((t) => [t + 2, t - 2]), b: ts.map((t) => [t - 2, t + 2]) };
    default: // anti-diagonal, direction (1, -1)
      return { c: ts.map((t) => [t, -t]), a: ts.map((t) => [t + 2, -t + 2]), b: ts.map((t) => [t - 2, -t - 2]) };
  }
}

/**
 * conv1 weights in gray-level units, shape [2*ORIENTATIONS, 1, 7, 7] flattened: channel 2o is
 * mean(a) - mean(c), channel 2o+1 is mean(a) - mean(b).
 */
export function conv1Weights(): number[] {
  const w = new Array<number>(2 * ORIENTATIONS * KERNEL * KERNEL).fill(0);
  const h = (KERNEL - 1) / 2;
  const add = (ch: number, [dx, dy]: Tap, v: number): void => {
    const i = ch * KERNEL * KERNEL + (dy + h) * KERNEL + (dx + h);
    w[i] = (w[i] as number) + v;
  };
  for (let o = 0; o < ORIENTATIONS; o++) {
    const { a, b, c } = taps(o);
    for (const t of a) add(2 * o, t, 1 / 3);
    for (const t of c) add(2 * o, t, -1 / 3);
    for (const t of a) add(2 * o + 1, t, 1 / 3);
    for (const t of b) add(2 * o + 1, t, -1 / 3);
  }
  return w;
}

/** conv2 (1x1) weights [ORIENTATIONS, 2*ORIENTATIONS, 1, 1] flattened, and its bias. */
export function conv2Weights(): { w: number[]; b: number[] } {
  const w = new Array<number>(ORIENTATIONS * 2 * ORIENTATIONS).fill(0);
  for (let o = 0; o < ORIENTATIONS; o++) {
    w[o * 2 * ORIENTATIONS + 2 * o] = 1;
    w[o * 2 * ORIENTATIONS + 2 * o + 1] = -1;
  }
  return { w, b: new Array<number>(ORIENTATIONS).fill(-TAU) };
}

export interface PartFeatures {
  /** Max over pixels of each orientation's response (the classifier head's input), gray levels. */
  features: number[];
  /** Largest conv1 output (after ReLU) and conv2 output, for activation calibration. */
  maxConv1: number;
  maxConv2: number;
}

/**
 * Reference forward pass of the extractor on 8-bit pixels. conv1 has no padding ("valid"):
 * zero padding in normalized space is a mid-gray frame, and at the image corners both side
 * segments of the diagonal detectors would fall into it and fire. Parts never reach the border.
 */
export function partFeatures(pixels: Uint8Array, size: number): PartFeatures {
  const h = (KERNEL - 1) / 2;
  // Tap lists as flat pixel offsets: this runs on thousands of images per generation.
  const offsets = Array.from({ length: ORIENTATIONS }, (_, o) => {
    const t = taps(o);
    const off = (list: Tap[]): Int32Array => Int32Array.from(list, ([dx, dy]) => dy * size + dx);
    return { a: off(t.a), b: off(t.b), c: off(t.c) };
  });
  const sum3 = (i: number, off: Int32Array): number =>
    (pixels[i + (off[0] as number)] as number) + (pixels[i + (off[1] as number)] as number) + (pixels[i + (off[2] as number)] as number);
  const features = new Array<number>(ORIENTATIONS).fill(0);
  let maxConv1 = 0;
  let maxConv2 = 0;
  for (let o = 0; o < ORIENTATIONS; o++) {
    const { a, b, c } = offsets[o] as { a: Int32Array; b: Int32Array; c: Int32Array };
    let best = 0;
    for (let y = h; y < size - h; y++) {
      for (let x = h; x < size - h; x++) {
        const i = y * size + x;
        const sa = sum3(i, a);
        const xv = Math.max(0, (sa - sum3(i, c)) / 3);
        const dv = Math.max(0, (sa - sum3(i, b)) / 3);
        if (xv > maxConv1) maxConv1 = xv;
        if (dv > maxConv1) maxConv1 = dv;
        const r = xv - dv - TAU;
        if (r > best) best = r;
      }
    }
    features[o] = best;
    if (best > maxConv2) maxConv2 = best;
  }
  return { features, maxConv1, maxConv2 };
}
