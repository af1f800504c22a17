/**
 * Generates the demo models (no download): machine-state and part-defect as int8 QDQ ONNX,
 * plus their fp32 twins, each with a validated manifest (v1); and the manifest-v2 models of
 * issue #13 — conveyor-parts (detection), bearing-anomaly and line-state (anomaly, line-state
 * stateful), spindle-rul (regression) — with v2 manifests and, for the detector, an npz sidecar
 * of test vectors. Output is byte-for-byte reproducible; a stamp file per set lets repeated runs
 * (tests, `npm test`) skip the work when nothing changed.
 *
 * makeModels() makes the v1 set only, as every existing caller expects; makeModelsV2() the v2
 * set (its own stamp, .make-models-v2.json, keyed on V2_GENERATOR_VERSION: the v1 stamp's
 * GENERATOR_VERSION is also the v1 models' producer_version, so bumping it would change their
 * bytes). The command line makes both.
 *
 *   node --import tsx scripts/make-models.ts [--out models] [--force] [--only v1|v2]
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { V2_GENERATOR_VERSION } from './lib/build-v2.ts';
import type { ModelBuildV2 } from './lib/build-v2.ts';
import { manifestFor, manifestV2For, sha256 } from './lib/evaluate.ts';
import { buildMachineState, buildPartDefect, GENERATOR_VERSION } from './lib/models.ts';
import { buildConveyorParts } from './lib/models-detector.ts';
import { buildBearingAnomaly, buildLineState, buildSpindleRul } from './lib/models-sensors.ts';

export interface MadeModel {
  name: string;
  quantization: 'fp32' | 'int8-qdq';
  onnxPath: string;
  manifestPath: string;
  /** Held-out accuracy measured with onnxruntime-node. */
  accuracy: number;
  size: number;
}

export const STAMP_FILE = '.make-models.json';

const StampSchema = z.object({
  generator: z.string(),
  models: z.array(
    z.object({
      name: z.string(),
      quantization: z.enum(['fp32', 'int8-qdq']),
      accuracy: z.number(),
      size: z.number(),
      onnxSha256: z.string(),
      manifestSha256: z.string(),
    }),
  ),
});
type Stamp = z.infer<typeof StampSchema>;

/** Pretty JSON, but arrays of numbers on one line: test vectors hold thousands of them. */
export function formatManifest(manifest: unknown): string {
  const text = JSON.stringify(manifest, null, 2).replace(/\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]/g, (_, body: string) =>
    `[${body.replace(/,\s*/g, ', ')}]`,
  );
  return `${text}\n`;
}

function writeAtomic(path: string, data: Uint8Array | string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

function fileSha(path: string): string | undefined {
  return existsSync(path) ? sha256(readFileSync(path)) : undefined;
}

/** The previous run's results if its stamp matches this generator and every file is intact. */
export function cachedModels(outDir: string): MadeModel[] | undefined {
  const stampPath = join(outDir, STAMP_FILE);
  if (!existsSync(stampPath)) return undefined;
  let stamp: Stamp;
  try {
    stamp = StampSchema.parse(JSON.parse(readFileSync(stampPath, 'utf8')));
  } catch {
    return undefined;
  }
  if (stamp.generator !== GENERATOR_VERSION) return undefined;
  const made: MadeModel[] = [];
  for (const m of stamp.models) {
    const onnxPath = join(outDir, `${m.name}.onnx`);
    const manifestPath = join(outDir, `${m.name}.manifest.json`);
    if (fileSha(onnxPath) !== m.onnxSha256 || fileSha(manifestPath) !== m.manifestSha256) return undefined;
    made.push({ name: m.name, quantization: m.quantization, onnxPath, manifestPath, accuracy: m.accuracy, size: m.size });
  }
  return made;
}

export async function makeModels(opts: { outDir: string; force?: boolean }): Promise<MadeModel[]> {
  const outDir = resolve(opts.outDir);
  if (!opts.force) {
    const cached = cachedModels(outDir);
    if (cached) return cached;
  }
  mkdirSync(outDir, { recursive: true });
  const builds = [...buildMachineState(), ...buildPartDefect()];
  const stamp: Stamp = { generator: GENERATOR_VERSION, models: [] };
  const made: MadeModel[] = [];
  for (const build of builds) {
    const { manifest, evaluation } = await manifestFor(build);
    const onnxPath = join(outDir, `${build.name}.onnx`);
    const manifestPath = join(outDir, `${build.name}.manifest.json`);
    const manifestText = formatManifest(manifest);
    writeAtomic(onnxPath, build.onnx);
    writeAtomic(manifestPath, manifestText);
    made.push({ name: build.name, quantization: build.quantization, onnxPath, manifestPath, accuracy: evaluation.accuracy, size: build.onnx.length });
    stamp.models.push({
      name: build.name,
      quantization: build.quantization,
      accuracy: evaluation.accuracy,
      size: build.onnx.length,
      onnxSha256: sha256(build.onnx),
      manifestSha256: sha256(Buffer.from(manifestText)),
    });
  }
  // The stamp goes last: a run interrupted half-way is regenerated next time.
  writeAtomic(join(outDir, STAMP_FILE), `${JSON.stringify(stamp, null, 2)}\n`);
  return made;
}

/** Text table: one row per int8 model with its fp32 twin's accuracy next to it. */
export function formatTable(made: readonly MadeModel[]): string {
  const rows = [['model', 'quantization', 'accuracy', 'fp32 twin accuracy', 'gap (pts)', 'size']];
  for (const m of made) {
    const twin = made.find((t) => t.name === `${m.name}-fp32`);
    const pct = (a: number): string => `${(a * 100).toFixed(2)}%`;
    rows.push([
      m.name,
      m.quantization,
      pct(m.accuracy),
      twin ? pct(twin.accuracy) : '',
      twin ? ((m.accuracy - twin.accuracy) * 100).toFixed(2) : '',
      `${(m.size / 1024).toFixed(1)} KiB`,
    ]);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

// ------------------------------------------------------------------------------ manifest v2

export const STAMP_FILE_V2 = '.make-models-v2.json';

/** The v2 builders, in the order they are made. */
export const V2_BUILDERS: readonly (() => ModelBuildV2[])[] = [buildConveyorParts, buildBearingAnomaly, buildSpindleRul, buildLineState];

export interface MadeModelV2 {
  name: string;
  task: string;
  quantization: 'fp32' | 'int8-qdq';
  onnxPath: string;
  manifestPath: string;
  /** The npz of large test vectors, when the model has one. */
  testVectorsPath?: string;
  size: number;
  /** Held-out figures measured with onnxruntime-node (see the manifest's evaluation). */
  metrics: Record<string, number>;
}

const StampV2Schema = z.object({
  generator: z.string(),
  models: z.array(
    z.object({
      name: z.string(),
      task: z.string(),
      quantization: z.enum(['fp32', 'int8-qdq']),
      size: z.number(),
      metrics: z.record(z.string(), z.number()),
      onnxSha256: z.string(),
      manifestSha256: z.string(),
      testVectors: z.object({ file: z.string(), sha256: z.string() }).optional(),
    }),
  ),
});
type StampV2 = z.infer<typeof StampV2Schema>;

/** The previous v2 run's results if its stamp matches this generator and every file is intact. */
export function cachedModelsV2(outDir: string): MadeModelV2[] | undefined {
  const stampPath = join(outDir, STAMP_FILE_V2);
  if (!existsSync(stampPath)) return undefined;
  let stamp: StampV2;
  try {
    stamp = StampV2Schema.parse(JSON.parse(readFileSync(stampPath, 'utf8')));
  } catch {
    return undefined;
  }
  if (stamp.generator !== V2_GENERATOR_VERSION) return undefined;
  const made: MadeModelV2[] = [];
  for (const m of stamp.models) {
    const onnxPath = join(outDir, `${m.name}.onnx`);
    const manifestPath = join(outDir, `${m.name}.manifest.json`);
    if (fileSha(onnxPath) !== m.onnxSha256 || fileSha(manifestPath) !== m.manifestSha256) return undefined;
    const entry: MadeModelV2 = { name: m.name, task: m.task, quantization: m.quantization, onnxPath, manifestPath, size: m.size, metrics: m.metrics };
    if (m.testVectors) {
      const path = join(outDir, m.testVectors.file);
      if (fileSha(path) !== m.testVectors.sha256) return undefined;
      entry.testVectorsPath = path;
    }
    made.push(entry);
  }
  return made;
}

export async function makeModelsV2(opts: { outDir: string; force?: boolean }): Promise<MadeModelV2[]> {
  const outDir = resolve(opts.outDir);
  if (!opts.force) {
    const cached = cachedModelsV2(outDir);
    if (cached) return cached;
  }
  mkdirSync(outDir, { recursive: true });
  const stamp: StampV2 = { generator: V2_GENERATOR_VERSION, models: [] };
  const made: MadeModelV2[] = [];
  // One builder at a time: each holds its training data only while it runs.
  for (const builder of V2_BUILDERS) {
    for (const build of builder()) {
      const { manifest, measured, sidecar } = await manifestV2For(build);
      const onnxPath = join(outDir, `${build.name}.onnx`);
      const manifestPath = join(outDir, `${build.name}.manifest.json`);
      const manifestText = formatManifest(manifest);
      writeAtomic(onnxPath, build.onnx);
      if (sidecar) writeAtomic(join(outDir, sidecar.file), sidecar.bytes);
      writeAtomic(manifestPath, manifestText);
      const entry: MadeModelV2 = { name: build.name, task: build.task, quantization: build.quantization, onnxPath, manifestPath, size: build.onnx.length, metrics: measured.metrics };
      if (sidecar) entry.testVectorsPath = join(outDir, sidecar.file);
      made.push(entry);
      stamp.models.push({
        name: build.name,
        task: build.task,
        quantization: build.quantization,
        size: build.onnx.length,
        metrics: measured.metrics,
        onnxSha256: sha256(build.onnx),
        manifestSha256: sha256(Buffer.from(manifestText)),
        ...(sidecar ? { testVectors: { file: sidecar.file, sha256: sha256(sidecar.bytes) } } : {}),
      });
    }
  }
  writeAtomic(join(outDir, STAMP_FILE_V2), `${JSON.stringify(stamp, null, 2)}\n`);
  return made;
}

/** Text table of the v2 models: task, size and the headline held-out figures. */
export function formatTableV2(made: readonly MadeModelV2[]): string {
  const headline: Record<string, string[]> = {
    detection: ['precision', 'recall', 'meanMatchedIou'],
    anomaly: ['threshold', 'healthyAlarmRate', 'faultyDetectionRate', 'healthyRunAlarmRate', 'driftDetectionRate', 'medianDetectionDelayS'],
    regression: ['maeH', 'rmseH', 'lastFiftyHoursMaeH'],
  };
  const rows = [['model', 'task', 'size', 'held-out figures']];
  for (const m of made) {
    const figures = (headline[m.task] ?? []).filter((k) => k in m.metrics).map((k) => `${k} ${m.metrics[k]}`);
    rows.push([m.name, m.task, `${(m.size / 1024).toFixed(1)} KiB`, figures.join(', ')]);
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { out: { type: 'string', default: 'models' }, force: { type: 'boolean', default: false }, only: { type: 'string' } },
  });
  if (values.only !== undefined && values.only !== 'v1' && values.only !== 'v2') throw new Error(`--only takes v1 or v2, not ${values.only}`);
  const t0 = performance.now();
  let count = 0;
  if (values.only !== 'v2') {
    const made = await makeModels({ outDir: values.out, force: values.force });
    console.log(formatTable(made));
    count += made.length;
  }
  if (values.only !== 'v1') {
    const made = await makeModelsV2({ outDir: values.out, force: values.force });
    console.log(`${count > 0 ? '\n' : ''}${formatTableV2(made)}`);
    count += made.length;
  }
  console.log(`\n${count} models in ${resolve(values.out)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
