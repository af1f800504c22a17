/**
 * Release candidates of the demo `machine-state` model, for rollout tests, the rollout benchmark
 * and demos: same name, inputs, outputs and preprocessing as the shipped model, so an agent can
 * swap them in, each with its own version and a manifest whose test vectors come from ORT on the
 * candidate itself (so each one passes the hub's probe and the agent's validator):
 *   retrained  the fp32 twin: behaves like the shipped model (a good release)
 *   shifted    logits shifted towards `failing`: passes its own test vectors but predicts another
 *              class mix in the field (a bad retrain; the behaviour gate must stop it)
 *   slow       identical outputs, ~100× more compute per row (milliseconds instead of tens of µs) (the latency gate must stop it)
 *   large      identical outputs, a ~5 MB artifact (the rollout benchmark)
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Manifest } from '../../shared/manifest.ts';
import { manifestFor, sha256 } from './evaluate.ts';
import { buildMachineState, type MachineStateVariant } from './models.ts';

export type ReleaseVariant = 'retrained' | 'shifted' | 'slow' | 'large';

const VARIANTS: Record<ReleaseVariant, { spec: MachineStateVariant; description: string }> = {
  retrained: { spec: {}, description: 'machine-state retrained (fp32): a good release candidate' },
  shifted: { spec: { logitShift: [-6, 0, 9] }, description: 'machine-state with logits shifted towards failing: a bad release candidate' },
  slow: { spec: { heavyBranch: { convLayers: 24, size: 64 } }, description: 'machine-state with a heavy no-op branch: same outputs, much slower' },
  large: { spec: { heavyBranch: { convLayers: 0, padBytes: 4_600_000 } }, description: 'machine-state padded to ~5 MB: same outputs, a large artifact' },
};

export interface WrittenRelease {
  manifest: Manifest;
  manifestPath: string;
  onnxPath: string;
  bytes: Uint8Array;
}

/** Builds the variant as `machine-state@<version>` and writes `<dir>/<file>.onnx` + manifest. */
export async function writeReleaseVariant(dir: string, variant: ReleaseVariant, version: string): Promise<WrittenRelease> {
  const { spec, description } = VARIANTS[variant];
  const fp32 = buildMachineState(spec).find((b) => b.quantization === 'fp32');
  if (!fp32) throw new Error('buildMachineState returned no fp32 build');
  // The first 300 held-out rows are enough for the manifest's accuracy figure and keep the slow
  // variant's build at seconds, not tens of seconds.
  const rows = 300;
  const width = fp32.heldOut.inputs.length / fp32.heldOut.count;
  const heldOut = { ...fp32.heldOut, count: rows, inputs: fp32.heldOut.inputs.subarray(0, rows * width), labels: fp32.heldOut.labels.slice(0, rows) };
  const build = { ...fp32, name: 'machine-state', description, heldOut };
  const { manifest: base } = await manifestFor(build);
  const file = `machine-state-${version}-${variant}.onnx`;
  const manifest: Manifest = { ...base, version, artifact: { file, sha256: sha256(build.onnx), size: build.onnx.length } };
  await mkdir(dir, { recursive: true });
  const onnxPath = join(dir, file);
  const manifestPath = join(dir, `machine-state-${version}-${variant}.manifest.json`);
  await writeFile(onnxPath, build.onnx);
  await writeFile(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
  return { manifest, manifestPath, onnxPath, bytes: build.onnx };
}
