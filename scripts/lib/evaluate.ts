/**
 * Measures built models with the real runtime (onnxruntime-node) and turns a build into its
 * manifest: held-out accuracy, predicted-class reference rates and test vectors are whatever
 * ORT computes on the exact bytes that get written.
 */
import { createHash } from 'node:crypto';
import * as ort from 'onnxruntime-node';
import { ManifestSchema } from '../../shared/manifest.ts';
import type { Manifest } from '../../shared/manifest.ts';
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
