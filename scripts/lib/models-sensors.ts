/**
 * The manifest-v2 sensor demo models (issue #13), fp32, trained or fitted here in TypeScript on
 * seeded synthetic streams (synthetic-v2.ts) and measured with ORT by evaluate.ts:
 *   bearing-anomaly: scaled accelerometer window [1,64,3] → flatten → Gemm(24) → Tanh → Gemm(192)
 *                    → reshape → reconstruction [1,64,3]; the agent's score is the window's MSE.
 *   line-state:      one scaled drive reading x [1,4] and the state h [1,6] → h_out = a ⊙ h +
 *                    (1 - a) ⊙ 2·tanh(W x / 2), score = mean((g ⊙ h_out)²) [1,1]: two leaky
 *                    integrators (a = 0.9 and 0.98) of the whitened part of the reading that load
 *                    does not explain.
 *   spindle-rul:     derived window features [1,16] → Gemm(24) → ReLU → Gemm(1) → hours [1,1].
 * No int8 twins: these graphs take microseconds in fp32, and the score of an autoencoder or an
 * integrator is a small difference that 8-bit activations would blur.
 */
import type { InputSpecV2, TensorSpecV2 } from '../../shared/manifest.ts';
import { WindowSourceSchema } from '../../shared/tasks/specs.ts';
import type { WindowSource } from '../../shared/tasks/specs.ts';
import { WindowAccumulator } from '../../agent/preprocess/window.ts';
import { buildModelV2, fp32Tolerance, gemmNode, mean, quantile } from './build-v2.ts';
import type { Feed, Measured, ModelBuildV2, RunFn, TestCase } from './build-v2.ts';
import { MODEL_VERSION, roundSig } from './models.ts';
import { GraphBuilder } from './onnx/builder.ts';
import { DataType } from './onnx/proto.ts';
import { createRng } from './rng.ts';
import type { Rng } from './rng.ts';
import {
  BEARING_FAULTS,
  LINE_FEATURES,
  lineSequence,
  SPINDLE_BURST,
  SPINDLE_CHANNELS,
  SPINDLE_RATE_HZ,
  spindleBurst,
  spindleLife,
  VIB_CHANNELS,
  VIB_RATE_HZ,
  vibrationWindow,
} from './synthetic-v2.ts';
import type { LineDrift, SpindleLife } from './synthetic-v2.ts';
import { trainAutoencoder, trainRegressor } from './train-v2.ts';

const round4 = (v: number): number => Number(v.toFixed(4));

/** Per-channel mean and population std of interleaved rows [n][channels]. */
function channelStats(rows: readonly ArrayLike<number>[], channels: number): { mean: number; std: number }[] {
  const sum = new Float64Array(channels);
  const sq = new Float64Array(channels);
  let n = 0;
  for (const r of rows) {
    for (let i = 0; i < r.length; i++) sum[i % channels] = (sum[i % channels] as number) + (r[i] as number);
    n += r.length / channels;
  }
  const mu = Array.from(sum, (s) => s / n);
  for (const r of rows) for (let i = 0; i < r.length; i++) sq[i % channels] = (sq[i % channels] as number) + ((r[i] as number) - (mu[i % channels] as number)) ** 2;
  return mu.map((m, c) => ({ mean: roundSig(m), std: roundSig(Math.sqrt((sq[c] as number) / n)) }));
}

function output(res: Awaited<ReturnType<RunFn>>, name: string): Float32Array {
  const t = res[name];
  if (!t) throw new Error(`output ${name} missing`);
  return t.data;
}

const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

// ------------------------------------------------------------------------- bearing-anomaly

const BEARING = { T: 64, hidden: 24, seeds: { train: 1101, init: 1102, calibrate: 1103, heldOut: 1104, tests: 1105 } };

export function buildBearingAnomaly(): ModelBuildV2[] {
  const { T, hidden, seeds } = BEARING;
  const F = VIB_CHANNELS.length;
  const D = T * F;
  const trainRng = createRng(seeds.train);
  const train = Array.from({ length: 2000 }, () => vibrationWindow(trainRng, T));
  const stats = channelStats(train, F);
  const scale = (w: Float64Array): Float32Array => Float32Array.from(w, (v, i) => (v - (stats[i % F]?.mean ?? 0)) / (stats[i % F]?.std ?? 1));
  const x = new Float64Array(train.length * D);
  train.forEach((w, i) => x.set(scale(w), i * D));
  const ae = trainAutoencoder(createRng(seeds.init), x, D, hidden, { epochs: 20, batch: 32, lr: 0.003, l2: 1e-5, decay: 0.95 });

  const g = new GraphBuilder();
  const flat = g.node('Reshape', ['window', g.init('flat_shape', DataType.INT64, [2], [1, D])], 'window_flat');
  const code = g.node('Tanh', [gemmNode(g, flat, 'enc', ae.enc, 'enc_out')], 'code');
  const dec = gemmNode(g, code, 'dec', ae.dec, 'dec_out');
  g.node('Reshape', [dec, g.init('window_shape', DataType.INT64, [3], [1, T, F])], 'reconstruction');
  const onnx = buildModelV2(g, {
    graphName: 'bearing_anomaly',
    docString: `edgefleet demo bearing-anomaly autoencoder (fp32): ${D}-${hidden}-${D}, tanh code, on healthy synthetic vibration`,
    inputs: [{ name: 'window', shape: [1, T, F] }],
    outputs: [{ name: 'reconstruction', shape: [1, T, F] }],
    metadata: { version: MODEL_VERSION, quantization: 'fp32', task: 'anomaly' },
  });

  const source: WindowSource = {
    kind: 'window',
    features: VIB_CHANNELS.map((name, c) => ({ name, mean: stats[c]?.mean ?? 0, std: stats[c]?.std ?? 1 })),
    size: T,
    hop: 16,
    // Readings every 2 ms: ten missed readings break the window.
    maxGapMs: 20,
    layout: 'TF',
  };
  const inputs: InputSpecV2[] = [{ name: 'window', dtype: 'float32', shape: [1, T, F], source }];
  const outputs: TensorSpecV2[] = [{ name: 'reconstruction', dtype: 'float32', shape: [1, T, F] }];
  const feed = (w: Float32Array): Record<string, Feed> => ({ window: { dims: [1, T, F], values: w } });
  const mse = async (run: RunFn, w: Float32Array): Promise<number> => {
    const y = output(await run(feed(w)), 'reconstruction');
    let s = 0;
    // float32 inputs as the agent feeds them; the error is summed in float64.
    for (let i = 0; i < D; i++) s += ((y[i] as number) - (w[i] as number)) ** 2;
    return s / D;
  };

  const evaluate = async (run: RunFn): Promise<Measured> => {
    const calRng = createRng(seeds.calibrate);
    const cal: number[] = [];
    for (let i = 0; i < 2000; i++) cal.push(await mse(run, scale(vibrationWindow(calRng, T))));
    const threshold = roundSig(quantile(cal, 0.995), 4);
    const rng = createRng(seeds.heldOut);
    const healthy: number[] = [];
    for (let i = 0; i < 1000; i++) healthy.push(await mse(run, scale(vibrationWindow(rng, T))));
    const faulty: Record<string, number[]> = {};
    for (const fault of BEARING_FAULTS) {
      const scores: number[] = [];
      for (let i = 0; i < 500; i++) scores.push(await mse(run, scale(vibrationWindow(rng, T, { fault, severity: rng.uniform(0.5, 1.5) }))));
      faulty[fault] = scores;
    }
    const rate = (s: readonly number[]): number => s.filter((v) => v > threshold).length / s.length;
    const allFaulty = Object.values(faulty).flat();
    const alarm = rate(healthy);
    const detect = rate(allFaulty);
    const accuracy = (healthy.length * (1 - alarm) + allFaulty.length * detect) / (healthy.length + allFaulty.length);
    const metrics: Record<string, number> = {
      threshold,
      healthyAlarmRate: roundSig(alarm, 4),
      faultyDetectionRate: roundSig(detect, 4),
      healthyMedianMse: roundSig(quantile(healthy, 0.5), 4),
      faultyMedianMse: roundSig(quantile(allFaulty, 0.5), 4),
    };
    for (const [fault, s] of Object.entries(faulty)) metrics[`detectionRate.${fault}`] = roundSig(rate(s), 4);
    return {
      evaluation: { dataset: `synthetic-vibration seed=${seeds.heldOut} (1000 healthy, 500 outer-race, 500 looseness windows, severity 0.5-1.5)`, samples: healthy.length + allFaulty.length, accuracy: roundSig(accuracy, 6) },
      metrics,
      postprocessing: { kind: 'anomaly', output: 'reconstruction', index: 0, reconstructs: 'window', threshold, normalize: false },
      summary:
        `Threshold: 99.5th percentile of 2000 healthy windows' MSE. Held out: alarms on ${pct(alarm)} of healthy windows, ` +
        `detects ${pct(detect)} of faulty ones (outer race ${pct(rate(faulty.outer_race ?? []))}, looseness ${pct(rate(faulty.looseness ?? []))}).`,
    };
  };

  const testCases = (): Promise<TestCase[]> => {
    const rng = createRng(seeds.tests);
    const windows = [vibrationWindow(rng, T), vibrationWindow(rng, T, { fault: 'outer_race' }), vibrationWindow(rng, T, { fault: 'looseness', severity: 0.6 })];
    return Promise.resolve(windows.map((w) => ({ inputs: { window: { dims: [1, T, F], values: Array.from(scale(w), round4) } } })));
  };

  return [
    {
      name: 'bearing-anomaly',
      quantization: 'fp32',
      task: 'anomaly',
      description: `Bearing and looseness faults from a triaxial accelerometer at ${VIB_RATE_HZ} Hz: an autoencoder of healthy ${T}-reading windows; the score is the reconstruction's mean squared error.`,
      onnx,
      inputs,
      outputs,
      postprocessing: { kind: 'anomaly', output: 'reconstruction', index: 0, reconstructs: 'window', threshold: 1, normalize: false },
      evaluate,
      testCases,
      tolerance: fp32Tolerance,
    },
  ];
}

// ----------------------------------------------------------------------------- line-state

const LINE = { rates: [0.9, 0.98], steps: 600, seeds: { fit: 1201, calibrate: 1202, heldOut: 1203, tests: 1204 } };

/** Symmetric eigen-decomposition (Jacobi rotations): eigenvalues and unit eigenvectors as columns. */
function eigenSym(a: number[][]): { values: number[]; vectors: number[][] } {
  const n = a.length;
  const m = a.map((r) => [...r]);
  const v = m.map((_, i) => m.map((__, j) => (i === j ? 1 : 0)));
  const at = (x: number[][], i: number, j: number): number => (x[i] as number[])[j] as number;
  const set = (x: number[][], i: number, j: number, val: number): void => {
    (x[i] as number[])[j] = val;
  };
  for (let sweep = 0; sweep < 64; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += at(m, p, q) ** 2;
    if (off < 1e-24) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = at(m, p, q);
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (at(m, q, q) - at(m, p, p)) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const kp = at(m, k, p);
          const kq = at(m, k, q);
          set(m, k, p, c * kp - s * kq);
          set(m, k, q, s * kp + c * kq);
        }
        for (let k = 0; k < n; k++) {
          const pk = at(m, p, k);
          const qk = at(m, q, k);
          set(m, p, k, c * pk - s * qk);
          set(m, q, k, s * pk + c * qk);
        }
        for (let k = 0; k < n; k++) {
          const kp = at(v, k, p);
          const kq = at(v, k, q);
          set(v, k, p, c * kp - s * kq);
          set(v, k, q, s * kp + c * kq);
        }
      }
    }
  }
  return { values: m.map((_, i) => at(m, i, i)), vectors: v };
}

export interface LineStateParams {
  features: { name: string; mean: number; std: number }[];
  /** [H][F]: the whitened residual rows, once per rate. */
  w: number[][];
  /** Per state element: its rate a. */
  a: number[];
  /** Per state element: 1 / (its healthy RMS). */
  g: number[];
}

/** Reference step of line-state in float64 (fitting, and the TS side of tests). */
export function lineStateStep(p: LineStateParams, h: readonly number[], x: readonly number[]): { h: number[]; score: number } {
  const out = p.w.map((row, i) => {
    const u = 2 * Math.tanh(row.reduce((s, wi, k) => s + wi * (x[k] as number), 0) / 2);
    const a = p.a[i] as number;
    return a * (h[i] as number) + (1 - a) * u;
  });
  const score = out.reduce((s, v, i) => s + (v * (p.g[i] as number)) ** 2, 0) / out.length;
  return { h: out, score };
}

/** Drifts of the held-out and calibration sets: onset 150-300 s, ramp 200-300 s, magnitude 0.7-1.5. */
function randomDrift(rng: Rng): LineDrift {
  return { onset: 150 + rng.int(151), ramp: 200 + rng.int(101), magnitude: rng.uniform(0.7, 1.5) };
}

export function fitLineState(): LineStateParams {
  const F = LINE_FEATURES.length;
  const rng = createRng(LINE.seeds.fit);
  const seqs = Array.from({ length: 40 }, () => lineSequence(rng, 900).readings);
  const rows = seqs.flat();
  const features = channelStats(rows, F).map((s, c) => ({ name: LINE_FEATURES[c] as string, ...s }));
  const scaled = rows.map((r) => r.map((v, c) => (v - (features[c]?.mean ?? 0)) / (features[c]?.std ?? 1)));
  const cov = Array.from({ length: F }, (_, i) => Array.from({ length: F }, (__, j) => mean(scaled.map((x) => (x[i] as number) * (x[j] as number)))));
  const { values, vectors } = eigenSym(cov);
  // Load moves every reading together: the first principal component. Drop it, whiten the rest.
  const order = values.map((v, i) => ({ v, i })).sort((p, q) => q.v - p.v).slice(1);
  const residual = order.map(({ v, i }) => vectors.map((r) => roundSig((r[i] as number) / Math.sqrt(v), 6)));
  const w = LINE.rates.flatMap(() => residual);
  const a = LINE.rates.flatMap((rate) => residual.map(() => rate));
  // g: each state element's healthy RMS, so the score is ~1 on a healthy line.
  const params: LineStateParams = { features, w, a, g: w.map(() => 1) };
  const sq = new Float64Array(w.length);
  let n = 0;
  for (let s = 0; s < 20; s++) {
    let h = new Array<number>(w.length).fill(0);
    for (const [t, x] of scaled.slice(s * 900, s * 900 + 900).entries()) {
      h = lineStateStep(params, h, x).h;
      if (t < 300) continue; // past the integrators' warm-up from h = 0
      h.forEach((v, i) => (sq[i] = (sq[i] as number) + v * v));
      n++;
    }
  }
  params.g = Array.from(sq, (s) => roundSig(1 / Math.sqrt(s / n), 6));
  return params;
}

export function buildLineState(): ModelBuildV2[] {
  const p = fitLineState();
  const F = LINE_FEATURES.length;
  const H = p.w.length;
  const g = new GraphBuilder();
  const z = g.node('Gemm', ['x', g.init('w_half', DataType.FLOAT, [H, F], p.w.flat().map((v) => v / 2)), g.init('w_bias', DataType.FLOAT, [H], new Array<number>(H).fill(0))], 'proj', {
    alpha: { float: 1 },
    beta: { float: 1 },
    transB: 1,
  });
  const u = g.node('Mul', [g.node('Tanh', [z], 'proj_tanh'), g.init('two', DataType.FLOAT, [1], [2])], 'u');
  const kept = g.node('Mul', ['h', g.init('rate', DataType.FLOAT, [1, H], p.a)], 'h_kept');
  const added = g.node('Mul', [u, g.init('one_minus_rate', DataType.FLOAT, [1, H], p.a.map((a) => 1 - a))], 'u_added');
  g.node('Add', [kept, added], 'h_out');
  const weighted = g.node('Mul', ['h_out', g.init('gain', DataType.FLOAT, [1, H], p.g)], 'h_weighted');
  const ss = g.node('ReduceSumSquare', [weighted], 'h_sumsq', { axes: [1], keepdims: 1 });
  g.node('Mul', [ss, g.init('inv_h', DataType.FLOAT, [1], [1 / H])], 'score');
  const onnx = buildModelV2(g, {
    graphName: 'line_state',
    docString: `edgefleet demo line-state (fp32): leaky integrators (a=${LINE.rates.join(', ')}) of the whitened load-free residual of ${F} drive readings`,
    inputs: [
      { name: 'x', shape: [1, F] },
      { name: 'h', shape: [1, H] },
    ],
    outputs: [
      { name: 'score', shape: [1, 1] },
      { name: 'h_out', shape: [1, H] },
    ],
    metadata: { version: MODEL_VERSION, quantization: 'fp32', task: 'anomaly', state: 'h<-h_out' },
  });
  const inputs: InputSpecV2[] = [
    { name: 'x', dtype: 'float32', shape: [1, F], source: { kind: 'reading', features: p.features } },
    // A line stopped for 10 minutes starts over: the integrators' memory is a few minutes.
    { name: 'h', dtype: 'float32', shape: [1, H], source: { kind: 'state', output: 'h_out', init: 0, resetAfterMs: 600_000 } },
  ];
  const outputs: TensorSpecV2[] = [
    { name: 'score', dtype: 'float32', shape: [1, 1] },
    { name: 'h_out', dtype: 'float32', shape: [1, H] },
  ];
  const scaleReading = (r: readonly number[]): Float32Array => Float32Array.from(r, (v, c) => (v - (p.features[c]?.mean ?? 0)) / (p.features[c]?.std ?? 1));
  /** A sequence's scores with ORT, h_out fed back as the agent does (stateless: h = 0 every step). */
  const runSequence = async (run: RunFn, readings: readonly number[][], stateless = false): Promise<number[]> => {
    let h: Float32Array = new Float32Array(H);
    const zero = new Float32Array(H);
    const scores: number[] = [];
    for (const r of readings) {
      const res = await run({ x: { dims: [1, F], values: scaleReading(r) }, h: { dims: [1, H], values: stateless ? zero : h } });
      scores.push(output(res, 'score')[0] as number);
      h = output(res, 'h_out');
    }
    return scores;
  };
  /** The same with the float64 reference step (lineStateStep, unrolled): far faster than a session.run per reading. */
  const wFlat = Float64Array.from(p.w.flat());
  const referenceSequence = (readings: readonly number[][], stateless = false): number[] => {
    const h = new Float64Array(H);
    const x = new Float64Array(F);
    return readings.map((r) => {
      for (let c = 0; c < F; c++) x[c] = ((r[c] as number) - (p.features[c]?.mean ?? 0)) / (p.features[c]?.std ?? 1);
      if (stateless) h.fill(0);
      let score = 0;
      for (let i = 0; i < H; i++) {
        let z = 0;
        for (let c = 0; c < F; c++) z += (wFlat[i * F + c] as number) * (x[c] as number);
        const a = p.a[i] as number;
        const v = a * (h[i] as number) + (1 - a) * 2 * Math.tanh(z / 2);
        h[i] = v;
        score += (v * (p.g[i] as number)) ** 2;
      }
      return score / H;
    });
  };

  const evaluate = async (run: RunFn): Promise<Measured> => {
    const { steps } = LINE;
    // Thousands of 1 Hz steps per run: the sets are scored with the reference step, which must
    // agree with ORT on the exact bytes (checked below on whole runs, alarm decisions included).
    // Threshold: 98th percentile of a healthy 10-minute run's highest score (~2% of healthy runs alarm).
    const calRng = createRng(LINE.seeds.calibrate);
    const maxima: number[] = [];
    const statelessMaxima: number[] = [];
    for (let s = 0; s < 200; s++) {
      const seq = lineSequence(calRng, steps).readings;
      maxima.push(Math.max(...referenceSequence(seq)));
      statelessMaxima.push(Math.max(...referenceSequence(seq, true)));
    }
    const threshold = roundSig(quantile(maxima, 0.98), 4);
    const statelessThreshold = quantile(statelessMaxima, 0.98);
    const rng = createRng(LINE.seeds.heldOut);
    const runs = 150;
    let healthyAlarmRuns = 0;
    let healthySteps = 0;
    let healthyAlarmSteps = 0;
    let statelessHealthyAlarmRuns = 0;
    const checked: { seq: number[][]; scores: number[] }[] = [];
    for (let s = 0; s < runs; s++) {
      const seq = lineSequence(rng, steps).readings;
      const scores = referenceSequence(seq);
      if (s < 4) checked.push({ seq, scores });
      healthySteps += scores.length;
      healthyAlarmSteps += scores.filter((v) => v > threshold).length;
      if (scores.some((v) => v > threshold)) healthyAlarmRuns++;
      if (referenceSequence(seq, true).some((v) => v > statelessThreshold)) statelessHealthyAlarmRuns++;
    }
    let detected = 0;
    let statelessDetected = 0;
    const delays: number[] = [];
    for (let s = 0; s < runs; s++) {
      const drift = randomDrift(rng);
      const seq = lineSequence(rng, steps, drift).readings;
      const scores = referenceSequence(seq);
      if (s < 4) checked.push({ seq, scores });
      const first = scores.findIndex((v, t) => t >= drift.onset && v > threshold);
      if (first >= 0) {
        detected++;
        delays.push(first - drift.onset);
      }
      if (referenceSequence(seq, true).some((v, t) => t >= drift.onset && v > statelessThreshold)) statelessDetected++;
    }
    let maxDiff = 0;
    for (const c of checked) {
      const ortScores = await runSequence(run, c.seq);
      ortScores.forEach((v, t) => {
        const ref = c.scores[t] as number;
        maxDiff = Math.max(maxDiff, Math.abs(v - ref) / Math.max(1, Math.abs(ref)));
        if (v > threshold !== ref > threshold && Math.abs(ref - threshold) > 1e-4 * threshold) throw new Error(`line-state: ORT and the reference step disagree on an alarm (${v} vs ${ref})`);
      });
    }
    if (maxDiff > 1e-4) throw new Error(`line-state: ORT and the reference step differ by ${maxDiff} (relative) over whole runs`);
    const falseRuns = healthyAlarmRuns / runs;
    const detect = detected / runs;
    const medianDelay = delays.length ? quantile(delays, 0.5) : NaN;
    const slDetect = statelessDetected / runs;
    return {
      evaluation: {
        dataset: `synthetic-line-drive seed=${LINE.seeds.heldOut} (${runs} healthy and ${runs} developing-drag runs of ${steps} readings at 1 Hz)`,
        samples: 2 * runs,
        accuracy: roundSig((runs - healthyAlarmRuns + detected) / (2 * runs), 6),
      },
      metrics: {
        threshold,
        healthyRunAlarmRate: roundSig(falseRuns, 4),
        healthyStepAlarmRate: roundSig(healthyAlarmSteps / healthySteps, 4),
        driftDetectionRate: roundSig(detect, 4),
        medianDetectionDelayS: medianDelay,
        statelessDriftDetectionRate: roundSig(slDetect, 4),
        statelessHealthyRunAlarmRate: roundSig(statelessHealthyAlarmRuns / runs, 4),
        ortReferenceMaxRelDiff: roundSig(maxDiff, 2),
      },
      postprocessing: { kind: 'anomaly', output: 'score', index: 0, threshold, normalize: false },
      summary:
        `Threshold: 98th percentile of 200 healthy 10-minute runs' highest score. Held out: ${pct(falseRuns)} of healthy runs alarm; ` +
        `${pct(detect)} of developing drags are caught, median ${medianDelay} s after onset; the same model fed h = 0 (one reading at a time) catches ${pct(slDetect)} at its own 2% run false-alarm threshold.`,
    };
  };

  const testCases = async (run: RunFn): Promise<TestCase[]> => {
    const rng = createRng(LINE.seeds.tests);
    const healthy = lineSequence(rng, 2).readings;
    const xs = healthy.map((r) => Array.from(scaleReading(r), round4));
    const sig7 = (a: Float32Array): number[] => Array.from(a, (v) => roundSig(v, 7));
    const case1 = { x: { dims: [1, F], values: xs[0] ?? [] }, h: { dims: [1, H], values: new Array<number>(H).fill(0) } };
    const h1 = sig7(output(await run(case1), 'h_out'));
    const case2 = { x: { dims: [1, F], values: xs[1] ?? [] }, h: { dims: [1, H], values: h1 } };
    // A drag 400 s in: the state carries what one reading cannot show.
    const drift = lineSequence(rng, 400, { onset: 100, ramp: 200, magnitude: 1.2 }).readings;
    let h: Float32Array = new Float32Array(H);
    for (const r of drift.slice(0, -1)) h = output(await run({ x: { dims: [1, F], values: scaleReading(r) }, h: { dims: [1, H], values: h } }), 'h_out');
    const case3 = { x: { dims: [1, F], values: Array.from(scaleReading(drift[drift.length - 1] ?? []), round4) }, h: { dims: [1, H], values: sig7(h) } };
    return [case1, case2, case3].map((inputs) => ({ inputs }));
  };

  return [
    {
      name: 'line-state',
      quantization: 'fp32',
      task: 'anomaly',
      description:
        'Developing drag on a conveyor drive from 1 Hz readings (belt speed, motor current and temperature, vibration): a stateful model, h fed back from h_out; the score integrates what load does not explain.',
      onnx,
      inputs,
      outputs,
      postprocessing: { kind: 'anomaly', output: 'score', index: 0, threshold: 1, normalize: false },
      evaluate,
      testCases,
      tolerance: fp32Tolerance,
    },
  ];
}

// ----------------------------------------------------------------------------- spindle-rul

export const SPINDLE = {
  /** RUL is capped: early in life wear is invisible, so the model answers "at least 150 h". */
  cap: 150,
  hidden: 24,
  stats: ['mean', 'std', 'rms', 'peak'] as const,
  fftBands: 4,
  seeds: { train: 1301, init: 1302, heldOut: 1303, tests: 1304 },
};

/**
 * The spindle's window source, parsed by the schema so its defaults (the FFT taper) are the ones
 * the agent will apply; without `scale` while that is being measured.
 */
function spindleSource(features: { name: string; mean: number; std: number }[], scale?: { mean: number; std: number }[]): WindowSource {
  return WindowSourceSchema.parse({
    kind: 'window',
    features,
    size: SPINDLE_BURST,
    hop: SPINDLE_BURST,
    // A burst arrives in one go (readings ~1 ms apart); the next one starts a new window.
    maxGapMs: 100,
    layout: 'TF',
    derive: { stats: [...SPINDLE.stats], fftBands: SPINDLE.fftBands, ...(scale ? { scale } : {}) },
  });
}

/**
 * A burst's derived features exactly as the agent computes them: its readings pushed through
 * agent/preprocess/window.ts's WindowAccumulator, the window it emits after the last one.
 */
function deriveFeatures(acc: WindowAccumulator, burst: Float64Array): Float32Array {
  const C = SPINDLE_CHANNELS.length;
  acc.clear();
  let out: Float32Array | undefined;
  for (let t = 0; t < SPINDLE_BURST; t++) {
    out = acc.push({ ts: (t * 1000) / SPINDLE_RATE_HZ, values: burst.subarray(t * C, (t + 1) * C) })?.data;
  }
  if (!out) throw new Error('the window accumulator emitted nothing for a full burst');
  return out;
}

interface SpindleSample {
  burst: Float64Array;
  rul: number;
}

function spindleSamples(rng: Rng, lives: number, perLife: number): { samples: SpindleSample[]; lives: SpindleLife[] } {
  const samples: SpindleSample[] = [];
  const all: SpindleLife[] = [];
  for (let l = 0; l < lives; l++) {
    const life = spindleLife(rng);
    all.push(life);
    for (let k = 0; k < perLife; k++) {
      const hours = rng.uniform(0, life.life);
      samples.push({ burst: spindleBurst(rng, life, hours), rul: Math.min(SPINDLE.cap, life.life - hours) });
    }
  }
  return { samples, lives: all };
}

export function buildSpindleRul(): ModelBuildV2[] {
  const { seeds, cap, hidden } = SPINDLE;
  const C = SPINDLE_CHANNELS.length;
  const train = spindleSamples(createRng(seeds.train), 120, 40);
  const features = channelStats(
    train.samples.map((s) => s.burst),
    C,
  ).map((s, c) => ({ name: SPINDLE_CHANNELS[c] as string, ...s }));
  // Derived features first unscaled, to measure their scale; then through the final source.
  const rawAcc = new WindowAccumulator(spindleSource(features));
  const rawFeats = train.samples.map((s) => deriveFeatures(rawAcc, s.burst));
  const nF = rawAcc.kernel.outLength;
  const scale = Array.from({ length: nF }, (_, i) => {
    const v = rawFeats.map((f) => f[i] as number);
    const m = mean(v);
    const sd = Math.sqrt(mean(v.map((x) => (x - m) ** 2)));
    return { mean: roundSig(m), std: roundSig(sd > 0 ? sd : 1) };
  });
  const source = spindleSource(features, scale);
  const acc = new WindowAccumulator(source);
  const x = new Float64Array(train.samples.length * nF);
  train.samples.forEach((s, i) => x.set(deriveFeatures(acc, s.burst), i * nF));
  // Target in units of the cap (0..1) for conditioning; the graph scales back to hours.
  const y = Float64Array.from(train.samples, (s) => s.rul / cap);
  const reg = trainRegressor(createRng(seeds.init), x, nF, y, hidden, { epochs: 60, batch: 32, lr: 0.003, l2: 1e-5, decay: 0.97 });
  const out = { w: reg.out.w.map((r) => r.map((v) => v * cap)), b: reg.out.b.map((v) => v * cap) };

  const g = new GraphBuilder();
  const h = g.node('Relu', [gemmNode(g, 'features', 'fc1', reg.hidden, 'fc1_out')], 'fc1_relu');
  gemmNode(g, h, 'fc2', out, 'rul');
  const onnx = buildModelV2(g, {
    graphName: 'spindle_rul',
    docString: `edgefleet demo spindle-rul regressor (fp32): MLP ${nF}-${hidden}-1 on window statistics and band energies, hours (capped at ${cap})`,
    inputs: [{ name: 'features', shape: [1, nF] }],
    outputs: [{ name: 'rul', shape: [1, 1] }],
    metadata: { version: MODEL_VERSION, quantization: 'fp32', task: 'regression', unit: 'h' },
  });
  const inputs: InputSpecV2[] = [{ name: 'features', dtype: 'float32', shape: [1, nF], source }];
  const outputs: TensorSpecV2[] = [{ name: 'rul', dtype: 'float32', shape: [1, 1] }];

  const predict = async (run: RunFn, burst: Float64Array): Promise<number> =>
    output(await run({ features: { dims: [1, nF], values: deriveFeatures(acc, burst) } }), 'rul')[0] as number;

  const evaluate = async (run: RunFn): Promise<Measured> => {
    const held = spindleSamples(createRng(seeds.heldOut), 40, 50);
    const err: number[] = [];
    const late: number[] = [];
    for (const s of held.samples) {
      const e = (await predict(run, s.burst)) - s.rul;
      err.push(e);
      if (s.rul < 50) late.push(e);
    }
    const mae = mean(err.map(Math.abs));
    const rmse = Math.sqrt(mean(err.map((e) => e * e)));
    const lateMae = mean(late.map(Math.abs));
    const within = err.filter((e) => Math.abs(e) <= 25).length / err.length;
    return {
      evaluation: {
        dataset: `synthetic-spindle-run-to-failure seed=${seeds.heldOut} (40 spindles, 50 bursts each; accuracy: fraction within ±25 h)`,
        samples: err.length,
        accuracy: roundSig(within, 6),
      },
      metrics: { maeH: roundSig(mae, 4), rmseH: roundSig(rmse, 4), lastFiftyHoursMaeH: roundSig(lateMae, 4), withinTwentyFiveH: roundSig(within, 4), p90AbsErrorH: roundSig(quantile(err.map(Math.abs), 0.9), 4) },
      summary: `Held out (40 unseen spindles): MAE ${mae.toFixed(1)} h, RMSE ${rmse.toFixed(1)} h; in the last 50 h of life MAE ${lateMae.toFixed(1)} h; ${pct(within)} within ±25 h.`,
    };
  };

  const testCases = (): Promise<TestCase[]> => {
    const rng = createRng(seeds.tests);
    const life = spindleLife(rng);
    return Promise.resolve([0.2, 0.7, 0.95].map((f) => ({
      inputs: { features: { dims: [1, nF], values: Array.from(deriveFeatures(acc, spindleBurst(rng, life, f * life.life)), (v) => roundSig(v, 7)) } },
    })));
  };

  return [
    {
      name: 'spindle-rul',
      quantization: 'fp32',
      task: 'regression',
      description: `Remaining useful life (hours, capped at ${cap}) of a machining spindle from a ${SPINDLE_BURST}-reading vibration burst at ${SPINDLE_RATE_HZ} Hz (radial, axial), reduced by the agent to per-channel mean/std/rms/peak and ${SPINDLE.fftBands} band energies.`,
      onnx,
      inputs,
      outputs,
      postprocessing: { kind: 'regression', targets: [{ name: 'rul', output: 'rul', index: 0, unit: 'h', scale: 1, offset: 0, min: 0, max: cap }] },
      evaluate,
      testCases,
      tolerance: fp32Tolerance,
    },
  ];
}

