/**
 * Trainers for the manifest-v2 demo models, in the style of train.ts (plain TypeScript, float64,
 * Adam on seeded mini-batches) but on flat typed arrays, since these models see a few hundred
 * inputs per row: a one-hidden-layer autoencoder (tanh bottleneck, linear decoder, mean squared
 * error) and a one-hidden-layer ReLU regressor (mean squared error on a scaled target).
 */
import type { Rng } from './rng.ts';
import type { Dense } from './train.ts';

export interface AdamOptions {
  epochs: number;
  batch: number;
  lr: number;
  /** L2 penalty on weights (not biases). */
  l2: number;
  /** lr is multiplied by this after every epoch (1: constant). */
  decay?: number;
}

/** Adam over one flat parameter vector. */
class Adam {
  readonly #m: Float64Array;
  readonly #v: Float64Array;
  #t = 0;
  lr: number;
  constructor(size: number, lr: number) {
    this.#m = new Float64Array(size);
    this.#v = new Float64Array(size);
    this.lr = lr;
  }
  step(p: Float64Array, g: Float64Array): void {
    this.#t++;
    const c1 = 1 - 0.9 ** this.#t;
    const c2 = 1 - 0.999 ** this.#t;
    const m = this.#m;
    const v = this.#v;
    for (let i = 0; i < p.length; i++) {
      const gi = g[i] as number;
      const mi = 0.9 * (m[i] as number) + 0.1 * gi;
      const vi = 0.999 * (v[i] as number) + 0.001 * gi * gi;
      m[i] = mi;
      v[i] = vi;
      p[i] = (p[i] as number) - (this.lr * (mi / c1)) / (Math.sqrt(vi / c2) + 1e-8);
    }
  }
}

function shuffled(rng: Rng, n: number): Uint32Array {
  const idx = Uint32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = idx[i] as number;
    idx[i] = idx[j] as number;
    idx[j] = t;
  }
  return idx;
}

/** A layer as a flat [out × in] weight block followed by [out] biases, in one parameter vector. */
interface Layer {
  nIn: number;
  nOut: number;
  /** Offset of the weights in the parameter vector; biases follow them. */
  off: number;
}

function toDense(p: Float64Array, l: Layer): Dense {
  const w = Array.from({ length: l.nOut }, (_, j) => Array.from(p.subarray(l.off + j * l.nIn, l.off + (j + 1) * l.nIn)));
  const b = Array.from(p.subarray(l.off + l.nOut * l.nIn, l.off + l.nOut * l.nIn + l.nOut));
  return { w, b };
}

function forward(p: Float64Array, l: Layer, x: Float64Array, xOff: number, y: Float64Array): void {
  const bOff = l.off + l.nOut * l.nIn;
  for (let j = 0; j < l.nOut; j++) {
    let acc = p[bOff + j] as number;
    const wOff = l.off + j * l.nIn;
    for (let i = 0; i < l.nIn; i++) acc += (p[wOff + i] as number) * (x[xOff + i] as number);
    y[j] = acc;
  }
}

/** Accumulates dW += dy·xᵀ, db += dy and (if dx given) dx = Wᵀ·dy. */
function backward(p: Float64Array, g: Float64Array, l: Layer, x: Float64Array, xOff: number, dy: Float64Array, dx?: Float64Array): void {
  const bOff = l.off + l.nOut * l.nIn;
  const nIn = l.nIn;
  if (dx) dx.fill(0);
  for (let j = 0; j < l.nOut; j++) {
    const d = dy[j] as number;
    if (d === 0) continue;
    const wOff = l.off + j * nIn;
    if (dx) {
      for (let i = 0; i < nIn; i++) {
        g[wOff + i] = (g[wOff + i] as number) + d * (x[xOff + i] as number);
        dx[i] = (dx[i] as number) + d * (p[wOff + i] as number);
      }
    } else {
      for (let i = 0; i < nIn; i++) g[wOff + i] = (g[wOff + i] as number) + d * (x[xOff + i] as number);
    }
    g[bOff + j] = (g[bOff + j] as number) + d;
  }
}

function addL2(p: Float64Array, g: Float64Array, l: Layer, l2: number, scale: number): void {
  for (let i = l.off; i < l.off + l.nOut * l.nIn; i++) g[i] = (g[i] as number) * scale + l2 * (p[i] as number);
  for (let i = l.off + l.nOut * l.nIn; i < l.off + l.nOut * l.nIn + l.nOut; i++) g[i] = (g[i] as number) * scale;
}

export interface Autoencoder {
  enc: Dense;
  dec: Dense;
}

/**
 * x (rows of `dim` values, concatenated) → tanh(enc) → dec → x̂, minimizing mean (x̂ - x)².
 * Glorot-initialized; returns the layers in Gemm (w[out][in]) form.
 */
export function trainAutoencoder(rng: Rng, x: Float64Array, dim: number, hidden: number, opts: AdamOptions): Autoencoder {
  const rows = x.length / dim;
  const enc: Layer = { nIn: dim, nOut: hidden, off: 0 };
  const dec: Layer = { nIn: hidden, nOut: dim, off: dim * hidden + hidden };
  const p = new Float64Array(2 * (dim * hidden) + hidden + dim);
  const glorot = Math.sqrt(2 / (dim + hidden));
  for (let i = 0; i < dim * hidden; i++) p[i] = rng.normal(0, glorot);
  for (let i = 0; i < dim * hidden; i++) p[dec.off + i] = rng.normal(0, glorot);
  const g = new Float64Array(p.length);
  const adam = new Adam(p.length, opts.lr);
  const z = new Float64Array(hidden);
  const h = new Float64Array(hidden);
  const y = new Float64Array(dim);
  const dy = new Float64Array(dim);
  const dh = new Float64Array(hidden);
  for (let epoch = 0; epoch < opts.epochs; epoch++) {
    const order = shuffled(rng, rows);
    for (let start = 0; start < rows; start += opts.batch) {
      const end = Math.min(rows, start + opts.batch);
      g.fill(0);
      for (let k = start; k < end; k++) {
        const off = (order[k] as number) * dim;
        forward(p, enc, x, off, z);
        for (let j = 0; j < hidden; j++) h[j] = Math.tanh(z[j] as number);
        forward(p, dec, h, 0, y);
        for (let i = 0; i < dim; i++) dy[i] = (2 * ((y[i] as number) - (x[off + i] as number))) / dim;
        backward(p, g, dec, h, 0, dy, dh);
        for (let j = 0; j < hidden; j++) dh[j] = (dh[j] as number) * (1 - (h[j] as number) ** 2);
        backward(p, g, enc, x, off, dh);
      }
      const scale = 1 / (end - start);
      addL2(p, g, enc, opts.l2, scale);
      addL2(p, g, dec, opts.l2, scale);
      adam.step(p, g);
    }
    adam.lr *= opts.decay ?? 1;
  }
  return { enc: toDense(p, enc), dec: toDense(p, dec) };
}

export interface Regressor {
  hidden: Dense;
  out: Dense;
}

/** x rows (dim values each) → ReLU(hidden) → one linear output, minimizing mean (ŷ - y)². */
export function trainRegressor(rng: Rng, x: Float64Array, dim: number, y: Float64Array, hidden: number, opts: AdamOptions): Regressor {
  const rows = x.length / dim;
  const l1: Layer = { nIn: dim, nOut: hidden, off: 0 };
  const l2: Layer = { nIn: hidden, nOut: 1, off: dim * hidden + hidden };
  const p = new Float64Array(dim * hidden + hidden + hidden + 1);
  for (let i = 0; i < dim * hidden; i++) p[i] = rng.normal(0, Math.sqrt(2 / dim));
  for (let j = 0; j < hidden; j++) p[dim * hidden + j] = 0.01;
  for (let i = 0; i < hidden; i++) p[l2.off + i] = rng.normal(0, Math.sqrt(1 / hidden));
  const g = new Float64Array(p.length);
  const adam = new Adam(p.length, opts.lr);
  const z = new Float64Array(hidden);
  const out = new Float64Array(1);
  const dOut = new Float64Array(1);
  const dz = new Float64Array(hidden);
  for (let epoch = 0; epoch < opts.epochs; epoch++) {
    const order = shuffled(rng, rows);
    for (let start = 0; start < rows; start += opts.batch) {
      const end = Math.min(rows, start + opts.batch);
      g.fill(0);
      for (let k = start; k < end; k++) {
        const n = order[k] as number;
        const off = n * dim;
        forward(p, l1, x, off, z);
        for (let j = 0; j < hidden; j++) if ((z[j] as number) < 0) z[j] = 0;
        forward(p, l2, z, 0, out);
        dOut[0] = 2 * ((out[0] as number) - (y[n] as number));
        backward(p, g, l2, z, 0, dOut, dz);
        for (let j = 0; j < hidden; j++) if ((z[j] as number) <= 0) dz[j] = 0;
        backward(p, g, l1, x, off, dz);
      }
      const scale = 1 / (end - start);
      addL2(p, g, l1, opts.l2, scale);
      addL2(p, g, l2, opts.l2, scale);
      adam.step(p, g);
    }
    adam.lr *= opts.decay ?? 1;
  }
  return { hidden: toDense(p, l1), out: toDense(p, l2) };
}

/** Reference forward passes (float64), for calibration without ORT. */
export function autoencoderForward(ae: Autoencoder, x: ArrayLike<number>): Float64Array {
  const h = ae.enc.w.map((row, j) => Math.tanh(row.reduce((s, w, i) => s + w * (x[i] as number), ae.enc.b[j] as number)));
  return Float64Array.from(ae.dec.w, (row, k) => row.reduce((s, w, j) => s + w * (h[j] as number), ae.dec.b[k] as number));
}

export function regressorForward(r: Regressor, x: ArrayLike<number>): number {
  const h = r.hidden.w.map((row, j) => Math.max(0, row.reduce((s, w, i) => s + w * (x[i] as number), r.hidden.b[j] as number)));
  const row = r.out.w[0] ?? [];
  return row.reduce((s, w, j) => s + w * (h[j] as number), r.out.b[0] as number);
}
