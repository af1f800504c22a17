/**
 * Generates the demo models (no download): machine-state and part-defect as int8 QDQ ONNX,
 * plus their fp32 twins, each with a validated manifest. Output is byte-for-byte reproducible;
 * a stamp file lets repeated runs (tests, `npm test`) skip the work when nothing changed.
 *
 *   node --import tsx scripts/make-models.ts [--out models] [--force]
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { manifestFor, sha256 } from './lib/evaluate.ts';
import { buildMachineState, buildPartDefect, GENERATOR_VERSION } from './lib/models.ts';

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

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { out: { type: 'string', default: 'models' }, force: { type: 'boolean', default: false } } });
  const t0 = performance.now();
  const made = await makeModels({ outDir: values.out, force: values.force });
  console.log(formatTable(made));
  console.log(`\n${made.length} models in ${resolve(values.out)} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
