/**
 * Tiny deterministic trainers in plain TypeScript (float64): a one-hidden-layer ReLU MLP and a
 * softmax regression, both with Adam on mini-batches in a seeded order. Enough for the demo
 * models, which are small by design; no native ML dependency is needed to build them.
 */
import type { Rng } from './rng.ts';

/** Dense layer stored like ONNX Gemm with transB=1: w[out][in], y = x·wᵀ + b. */
export interface Dense {
  w: number[][];
  b: number[];
}

export interface Mlp {
  hidden: Dense;
  out: Dense;
}

function zeros(rows: number, cols: number): number[][] {
  return Array.from({ length: rows }, () => new Array<number>(cols).fill(0));
}

function affine(layer: Dense, x: readonly number[]): number[] {
  return layer.w.map((row, j) => {
    let acc = layer.b[j] as number;
    for (let i = 0; i < row.length; i++) acc += (row[i] as number) * (x[i] as number);
    return acc;
  });
}

export function mlpForward(m: Mlp, x: readonly number[]): { h: number[]; logits: number[] } {
  const h = affine(m.hidden, x).map((v) => (v > 0 ? v : 0));
  return { h, logits: affine(m.out, h) };
}

export function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if ((v[i] as number) > (v[best] as number)) best = i;
  return best;
}

function softmax(z: readonly number[]): number[] {
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Adam state for one parameter tensor, flattened. */
class Adam {
  private readonly m: Float64Array;
  private readonly v: Float64Array;
  private t = 0;
  constructor(
    size: number,
    private readonly lr: number,
  ) {
    this.m = new Float64Array(size);
    this.v = new Float64Array(size);
  }
  step(params: number[], grads: Float64Array): void {
    this.t++;
    const b1 = 0.9;
    const b2 = 0.999;
    const c1 = 1 - b1 ** this.t;
    const c2 = 1 - b2 ** this.t;
    for (let i = 0; i < params.length; i++) {
      const g = grads[i] as number;
      const m = b1 * (this.m[i] as number) + (1 - b1) * g;
      const v = b2 * (this.v[i] as number) + (1 - b2) * g * g;
      this.m[i] = m;
      this.v[i] = v;
      params[i] = (params[i] as number) - (this.lr * (m / c1)) / (Math.sqrt(v / c2) + 1e-8);
    }
  }
}

function shuffled(rng: Rng, n: number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = idx[i] as number;
    idx[i] = idx[j] as number;
    idx[j] = t;
  }
  return idx;
}

export interface TrainOptions {
  epochs: number;
  batch: number;
  lr: number;
  /** L2 penalty on weights (not biases). */
  l2: number;
}

/** Trains an MLP (inputs → hidden ReLU → classes) with softmax cross-entropy. */
export function trainMlp(rng: Rng, x: number[][], y: number[], hidden: number, classes: number, opts: TrainOptions): Mlp {
  const nIn = x[0]?.length ?? 0;
  const he = (fanIn: number): number => rng.normal(0, Math.sqrt(2 / fanIn));
  const m: Mlp = {
    hidden: { w: zeros(hidden, nIn).map((r) => r.map(() => he(nIn))), b: new Array<number>(hidden).fill(0.01) },
    out: { w: zeros(classes, hidden).map((r) => r.map(() => he(hidden))), b: new Array<number>(classes).fill(0) },
  };
  // Flat views so Adam can update in place; rows are copied back after each step.
  const flat = (d: Dense): number[] => [...d.w.flat(), ...d.b];
  const unflat = (d: Dense, p: number[]): void => {
    const cols = d.w[0]?.length ?? 0;
    d.w.forEach((row, j) => row.forEach((_, i) => (row[i] = p[j * cols + i] as number)));
    d.b.forEach((_, j) => (d.b[j] = p[d.w.length * cols + j] as number));
  };
  const p1 = flat(m.hidden);
  const p2 = flat(m.out);
  const a1 = new Adam(p1.length, opts.lr);
  const a2 = new Adam(p2.length, opts.lr);
  for (let epoch = 0; epoch < opts.epochs; epoch++) {
    const order = shuffled(rng, x.length);
    for (let start = 0; start < order.length; start += opts.batch) {
      const batch = order.slice(start, start + opts.batch);
      const g1 = new Float64Array(p1.length);
      const g2 = new Float64Array(p2.length);
      for (const n of batch) {
        const xi = x[n] as number[];
        const { h, logits } = mlpForward(m, xi);
        const p = softmax(logits);
        const dz = p.map((v, k) => (v - (k === y[n] ? 1 : 0)) / batch.length);
        const dh = new Array<number>(hidden).fill(0);
        for (let k = 0; k < classes; k++) {
          const dk = dz[k] as number;
          const row = m.out.w[k] as number[];
          for (let j = 0; j < hidden; j++) {
            g2[k * hidden + j] = (g2[k * hidden + j] as number) + dk * (h[j] as number);
            dh[j] = (dh[j] as number) + dk * (row[j] as number);
          }
          g2[classes * hidden + k] = (g2[classes * hidden + k] as number) + dk;
        }
        for (let j = 0; j < hidden; j++) {
          if ((h[j] as number) <= 0) continue;
          const dj = dh[j] as number;
          for (let i = 0; i < nIn; i++) g1[j * nIn + i] = (g1[j * nIn + i] as number) + dj * (xi[i] as number);
          g1[hidden * nIn + j] = (g1[hidden * nIn + j] as number) + dj;
        }
      }
      for (let i = 0; i < hidden * nIn; i++) g1[i] = (g1[i] as number) + opts.l2 * (p1[i] as number);
      for (let i = 0; i < classes * hidden; i++) g2[i] = (g2[i] as number) + opts.l2 * (p2[i] as number);
      a1.step(p1, g1);
      a2.step(p2, g2);
      unflat(m.hidden, p1);
      unflat(m.out, p2);
    }
  }
  return m;
}

/** Softmax regression (a single Gemm layer) on feature vectors. */
export function trainSoftmax(rng: Rng, x: number[][], y: number[], classes: number, opts: TrainOptions): Dense {
  const nIn = x[0]?.length ?? 0;
  const params = new Array<number>(classes * nIn + classes).fill(0);
  const adam = new Adam(params.length, opts.lr);
  for (let epoch = 0; epoch < opts.epochs; epoch++) {
    const order = shuffled(rng, x.length);
    for (let start = 0; start < order.length; start += opts.batch) {
      const batch = order.slice(start, start + opts.batch);
      const g = new Float64Array(params.length);
      for (const n of batch) {
        const xi = x[n] as number[];
        const logits = Array.from({ length: classes }, (_, k) => {
          let acc = params[classes * nIn + k] as number;
          for (let i = 0; i < nIn; i++) acc += (params[k * nIn + i] as number) * (xi[i] as number);
          return acc;
        });
        const p = softmax(logits);
        for (let k = 0; k < classes; k++) {
          const dk = ((p[k] as number) - (k === y[n] ? 1 : 0)) / batch.length;
          for (let i = 0; i < nIn; i++) g[k * nIn + i] = (g[k * nIn + i] as number) + dk * (xi[i] as number);
          g[classes * nIn + k] = (g[classes * nIn + k] as number) + dk;
        }
      }
      for (let i = 0; i < classes * nIn; i++) g[i] = (g[i] as number) + opts.l2 * (params[i] as number);
      adam.step(params, g);
    }
  }
  return {
    w: Array.from({ length: classes }, (_, k) => params.slice(k * nIn, (k + 1) * nIn)),
    b: params.slice(classes * nIn),
  };
}

export function denseForward(d: Dense, x: readonly number[]): number[] {
  return affine(d, x);
}
