/**
 * A tiny real ONNX classifier (test/helpers/tiny-model.ts) written with a complete manifest, as
 * a LocalModel the agent's ModelSet can activate or swap in: tabular preprocessing over
 * `inputDim` features, logits output, labels, and test vectors computed by ORT on the written
 * file itself (so the model passes its own check). Versions of one name share their I/O.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import type { LocalModel } from '../../agent/models/local-models.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { writeTinyModel, type TinyModelSpec } from './tiny-model.ts';

export interface TinyLocalModelSpec extends Omit<TinyModelSpec, 'inputDim' | 'outputDim'> {
  name: string;
  version: string;
  inputDim?: number;
  labels?: string[];
  /** The manifest's feature std: a huge one scales every input to ~0 (near-uniform outputs). */
  featureStd?: number;
}

export async function writeTinyLocalModel(dir: string, spec: TinyLocalModelSpec): Promise<LocalModel> {
  const inputDim = spec.inputDim ?? 4;
  const labels = spec.labels ?? ['idle', 'running', 'failing'];
  const file = `${spec.name}-${spec.version}.onnx`;
  const onnxPath = await writeTinyModel(join(dir, file), { ...spec, inputDim, outputDim: labels.length });
  const bytes = await readFile(onnxPath);
  const session = await ort.InferenceSession.create(onnxPath, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const inputs = [
    Array.from({ length: inputDim }, (_, i) => (i % 2 ? -1 : 1) * (i + 1) * 0.5),
    Array.from({ length: inputDim }, () => 0),
  ];
  const testVectors = [];
  try {
    for (const input of inputs) {
      const out = await session.run({ input: new ort.Tensor('float32', Float32Array.from(input), [1, inputDim]) });
      testVectors.push({ input, shape: [1, inputDim], expected: Array.from(out['logits']!.data as Float32Array), tolerance: 1e-3 });
    }
  } finally {
    await session.release();
  }
  const manifest: Manifest = ManifestSchema.parse({
    manifestVersion: 1,
    name: spec.name,
    version: spec.version,
    task: 'classification',
    quantization: 'fp32',
    artifact: { file, sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length },
    inputs: [{ name: 'input', dtype: 'float32', shape: ['N', inputDim] }],
    outputs: [{ name: 'logits', dtype: 'float32', shape: ['N', labels.length] }],
    preprocessing: { kind: 'tabular', features: Array.from({ length: inputDim }, (_, i) => ({ name: `f${i}`, mean: 0, std: spec.featureStd ?? 1 })) },
    postprocessing: { output: 'logits', labels },
    testVectors,
  });
  const manifestPath = join(dir, `${spec.name}-${spec.version}.manifest.json`);
  await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
  return { manifest, manifestPath, onnxPath, key: `${spec.name}@${spec.version}` };
}
