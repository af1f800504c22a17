/**
 * Measures built models with the real runtime (onnxruntime-node) and turns a build into its
 * manifest: held-out accuracy, predicted-class reference rates and test vectors are whatever
 * ORT computes on the exact bytes that get written. manifestFor writes v1 manifests,
 * manifestV2For the v2 ones of issue #13 (several inputs and outputs, any task, npz sidecars).
 */
import { createHash } from 'node:crypto';
import * as ort from 'onnxruntime-node';
import { ManifestSchema, ManifestV2Schema } from '../../shared/manifest.ts';
import type { Manifest, ManifestV2 } from '../../shared/manifest.ts';
import { writeNpz } from '../../shared/npz.ts';
import type { NpyArray } from '../../shared/npz.ts';
import type { Measured, ModelBuildV2, RunFn } from './build-v2.ts';
import type { ModelBuild } from './models.ts';
import { MODEL_VERSION, roundSig } from './models.ts';
import { argmax } from './train.ts';

export interface Evaluation {
  accuracy: number;
  /** Fraction of held-out rows predicted as each label. */
  classRates: number[];
}

export function sessionOptions(): ort.InferenceSession.SessionOptions {
  // One intra-op thread: deterministic, and what an agent on a 2-core device should use.
  return { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' };
}

function rowSize(build: ModelBuild): number {
  return build.input.shape.slice(1).reduce<number>((a, d) => a * (typeof d === 'number' ? d : 1), 1);
}

/** Runs `rows` inputs (concatenated) through the session in batches, returns logits rows. */
export async function runRows(session: ort.InferenceSession, build: ModelBuild, inputs: Float32Array, rows: number, batch = 250): Promise<Float32Array[]> {
  const size = rowSize(build);
  const dims = build.input.shape.slice(1).map((d) => (typeof d === 'number' ? d : 1));
  const out: Float32Array[] = [];
  for (let start = 0; start < rows; start += batch) {
    const b = Math.min(batch, rows - start);
    const data = inputs.subarray(start * size, (start + b) * size);
    const res = await session.run({ [build.input.name]: new ort.Tensor('float32', data, [b, ...dims]) });
    const y = res[build.output.name];
    if (!y || !(y.data instanceof Float32Array)) throw new Error(`${build.name}: output ${build.output.name} missing or not float32`);
    const k = y.data.length / b;
    for (let i = 0; i < b; i++) out.push(y.data.slice(i * k, (i + 1) * k));
  }
  return out;
}

export async function evaluate(session: ort.InferenceSession, build: ModelBuild, inputs = build.heldOut.inputs, labels = build.heldOut.labels): Promise<Evaluation> {
  const logits = await runRows(session, build, inputs, labels.length);
  const counts = new Array<number>(build.labels.length).fill(0);
  let correct = 0;
  logits.forEach((l, i) => {
    const p = argmax(l);
    counts[p] = (counts[p] as number) + 1;
    if (p === labels[i]) correct++;
  });
  return { accuracy: correct / labels.length, classRates: counts.map((c) => roundSig(c / labels.length, 6)) };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Builds and validates the manifest of `build`; test vectors and evaluation come from ORT. */
export async function manifestFor(build: ModelBuild): Promise<{ manifest: Manifest; evaluation: Evaluation }> {
  const session = await ort.InferenceSession.create(build.onnx, sessionOptions());
  try {
    const evaluation = await evaluate(session, build);
    const testVectors = [];
    const shape = build.input.shape.map((d) => (typeof d === 'number' ? d : 1));
    for (const input of build.testInputs) {
      const [y] = await runRows(session, build, Float32Array.from(input), 1);
      const expected = Array.from(y ?? [], (v) => roundSig(v, 7));
      testVectors.push({ input, shape, expected, tolerance: build.tolerance(expected) });
    }
    const manifest = ManifestSchema.parse({
      manifestVersion: 1,
      name: build.name,
      version: MODEL_VERSION,
      description: build.description,
      task: 'classification',
      quantization: build.quantization,
      artifact: { file: `${build.name}.onnx`, sha256: sha256(build.onnx), size: build.onnx.length },
      inputs: [build.input],
      outputs: [build.output],
      preprocessing: build.preprocessing,
      postprocessing: { output: 'logits', labels: build.labels },
      drift: { features: build.driftFeatures, classRates: evaluation.classRates },
      testVectors,
      evaluation: { dataset: build.heldOut.dataset, samples: build.heldOut.count, accuracy: roundSig(evaluation.accuracy, 6) },
    });
    return { manifest, evaluation };
  } finally {
    await session.release();
  }
}

// ------------------------------------------------------------------------------ manifest v2

/** A v2 model's manifest and what else make-models writes beside it. */
export interface ManifestV2Result {
  manifest: ManifestV2;
  measured: Measured;
  /** The npz sidecar of large test vectors, when the build has any. */
  sidecar?: { file: string; bytes: Buffer };
}

/** A RunFn over one session: float32 feeds in, every output back as float32. */
export function sessionRunner(session: ort.InferenceSession): RunFn {
  return async (feeds) => {
    const tensors: Record<string, ort.Tensor> = {};
    for (const [name, f] of Object.entries(feeds)) {
      const data = f.values instanceof Float32Array ? f.values : Float32Array.from(f.values);
      tensors[name] = new ort.Tensor('float32', data, f.dims);
    }
    const res = await session.run(tensors);
    const out: Record<string, { dims: number[]; data: Float32Array }> = {};
    for (const [name, t] of Object.entries(res)) {
      if (!(t.data instanceof Float32Array)) throw new Error(`output ${name} is ${t.type}, not float32`);
      out[name] = { dims: [...t.dims], data: t.data };
    }
    return out;
  };
}

/**
 * Builds and validates the v2 manifest of `build`: evaluation (and any calibrated threshold) and
 * test vectors are what ORT computes on the exact bytes that get written. Large test cases go to
 * an npz sidecar (`<name>.vectors.npz`, as `edgefleet model init` names it, arrays `<case>.in.<input>` / `<case>.out.<output>`).
 */
export async function manifestV2For(build: ModelBuildV2): Promise<ManifestV2Result> {
  const session = await ort.InferenceSession.create(build.onnx, sessionOptions());
  try {
    const run = sessionRunner(session);
    const measured = await build.evaluate(run);
    const testVectors = [];
    for (const c of await build.testCases(run)) {
      const res = await run(c.inputs);
      const expected: Record<string, { dims: number[]; values: number[] }> = {};
      for (const name of c.outputs ?? build.outputs.map((o) => o.name)) {
        const y = res[name];
        if (!y) throw new Error(`${build.name}: output ${name} missing`);
        expected[name] = { dims: y.dims, values: Array.from(y.data, (v) => roundSig(v, 7)) };
      }
      testVectors.push({ inputs: c.inputs, expected, tolerance: build.tolerance(Object.values(expected).flatMap((e) => e.values)) });
    }
    let sidecar: ManifestV2Result['sidecar'];
    let testVectorsFile: ManifestV2['testVectorsFile'];
    const large = build.largeTestCases ? await build.largeTestCases(run) : [];
    if (large.length > 0) {
      const arrays: Record<string, NpyArray> = {};
      let tolerance = 0;
      for (const c of large) {
        const res = await run(c.inputs);
        for (const [name, t] of Object.entries(c.inputs)) arrays[`${c.name}.in.${name}`] = { dtype: 'float32', dims: t.dims, data: Float32Array.from(t.values) };
        for (const name of c.outputs ?? build.outputs.map((o) => o.name)) {
          const y = res[name];
          if (!y) throw new Error(`${build.name}: output ${name} missing`);
          arrays[`${c.name}.out.${name}`] = { dtype: 'float32', dims: y.dims, data: Float32Array.from(y.data) };
          tolerance = Math.max(tolerance, build.tolerance(Array.from(y.data)));
        }
      }
      const bytes = writeNpz(arrays);
      const file = `${build.name}.vectors.npz`;
      sidecar = { file, bytes };
      testVectorsFile = { file, sha256: sha256(bytes), size: bytes.length, tolerance };
    }
    const manifest = ManifestV2Schema.parse({
      manifestVersion: 2,
      name: build.name,
      version: MODEL_VERSION,
      description: `${build.description} ${measured.summary}`,
      task: build.task,
      quantization: build.quantization,
      artifact: { file: `${build.name}.onnx`, sha256: sha256(build.onnx), size: build.onnx.length },
      inputs: build.inputs,
      outputs: build.outputs,
      postprocessing: measured.postprocessing ?? build.postprocessing,
      testVectors,
      ...(testVectorsFile ? { testVectorsFile } : {}),
      evaluation: measured.evaluation,
    });
    return { manifest, measured, ...(sidecar ? { sidecar } : {}) };
  } finally {
    await session.release();
  }
}
