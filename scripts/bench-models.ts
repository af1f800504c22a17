/**
 * int8 vs fp32 inference latency of the demo models with real onnxruntime-node sessions
 * (one intra-op thread, as an agent worker on a 2-core device runs them). Each repeat times a
 * burst of back-to-back runs; int8 and fp32 repeats are interleaved so a noisy neighbour on a
 * shared machine hits both alike. Reports the median and the min–max across repeats.
 *
 *   node --import tsx scripts/bench-models.ts [--dir models] [--repeats 3] [--json] [--profile]
 *
 * --profile adds ORT's per-operator kernel times (batch 32), which is where the int8/fp32
 * difference comes from.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { z } from 'zod';
import { ManifestSchema } from '../shared/manifest.ts';
import type { Manifest } from '../shared/manifest.ts';
import { sessionOptions } from './lib/evaluate.ts';
import { createRng } from './lib/rng.ts';
import { makeModels } from './make-models.ts';

export interface LatencyStats {
  /** Milliseconds per run (one batch), median over repeats. */
  medianMs: number;
  minMs: number;
  maxMs: number;
}

export interface BenchRow {
  model: string;
  batch: number;
  repeats: number;
  /** Runs timed per repeat. */
  iterations: number;
  int8: LatencyStats;
  fp32: LatencyStats;
  /** int8 median / fp32 median: below 1 means int8 is faster. */
  ratio: number;
}

export interface BenchOptions {
  repeats?: number;
  batches?: number[];
  /** Target duration of one repeat, ms. */
  repeatMs?: number;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function loadManifest(dir: string, name: string): Manifest {
  return ManifestSchema.parse(JSON.parse(readFileSync(join(dir, `${name}.manifest.json`), 'utf8')));
}

interface Subject {
  session: ort.InferenceSession;
  feeds: Record<string, ort.Tensor>;
}

async function subject(dir: string, manifest: Manifest, batch: number, existing?: ort.InferenceSession): Promise<Subject> {
  const session = existing ?? (await ort.InferenceSession.create(join(dir, manifest.artifact.file), sessionOptions()));
  const spec = manifest.inputs[0];
  if (!spec) throw new Error(`${manifest.name}: no input`);
  const dims = spec.shape.map((d) => (typeof d === 'number' ? d : batch));
  const size = dims.reduce((a, b) => a * b, 1);
  const rng = createRng(7);
  const data = Float32Array.from({ length: size }, () => rng.normal(0, 1));
  return { session, feeds: { [spec.name]: new ort.Tensor('float32', data, dims) } };
}

async function timeRuns(s: Subject, iterations: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < iterations; i++) await s.session.run(s.feeds);
  return (performance.now() - t0) / iterations;
}

/** Benchmarks every int8 model in `dir` that has an fp32 twin (`<name>-fp32`). */
export async function benchModels(dir: string, opts: BenchOptions = {}): Promise<BenchRow[]> {
  const repeats = opts.repeats ?? 5;
  const batches = opts.batches ?? [1, 32];
  const repeatMs = opts.repeatMs ?? 400;
  const names = ['machine-state', 'part-defect'];
  const rows: BenchRow[] = [];
  for (const name of names) {
    const int8M = loadManifest(dir, name);
    const fp32M = loadManifest(dir, `${name}-fp32`);
    for (const batch of batches) {
      const q = await subject(dir, int8M, batch);
      const f = await subject(dir, fp32M, batch);
      try {
        // Warm up (first runs allocate), then size the burst from the slower of the two.
        await timeRuns(q, 5);
        await timeRuns(f, 5);
        const probe = Math.max(await timeRuns(q, 20), await timeRuns(f, 20));
        const iterations = Math.max(10, Math.ceil(repeatMs / Math.max(probe, 1e-3)));
        const qs: number[] = [];
        const fs: number[] = [];
        for (let r = 0; r < repeats; r++) {
          qs.push(await timeRuns(q, iterations));
          fs.push(await timeRuns(f, iterations));
        }
        const stats = (xs: number[]): LatencyStats => ({ medianMs: median(xs), minMs: Math.min(...xs), maxMs: Math.max(...xs) });
        const int8 = stats(qs);
        const fp32 = stats(fs);
        rows.push({ model: name, batch, repeats, iterations, int8, fp32, ratio: int8.medianMs / fp32.medianMs });
      } finally {
        await q.session.release();
        await f.session.release();
      }
    }
  }
  return rows;
}

export interface OpTime {
  /** Operator type after ORT's graph optimizations (e.g. QLinearConv, FusedConv). */
  op: string;
  node: string;
  /** Mean kernel time per run, microseconds. */
  meanUs: number;
}

const ProfileEventsSchema = z.array(
  z.object({ cat: z.string().optional(), name: z.string(), dur: z.number().optional(), args: z.object({ op_name: z.string().optional() }).passthrough().optional() }).passthrough(),
);

/** Per-node kernel times of one model from ORT's profiler, slowest first. */
export async function profileModel(dir: string, name: string, batch = 32, runs = 50): Promise<OpTime[]> {
  const manifest = loadManifest(dir, name);
  const prefix = join(mkdtempSync(join(tmpdir(), 'edgefleet-prof-')), 'profile');
  const session = await ort.InferenceSession.create(join(dir, manifest.artifact.file), {
    ...sessionOptions(),
    enableProfiling: true,
    profileFilePrefix: prefix,
  });
  const s = await subject(dir, manifest, batch, session);
  try {
    await timeRuns(s, runs);
  } finally {
    session.endProfiling();
    await session.release();
  }
  const profDir = dirname(prefix);
  const file = readdirSync(profDir).find((f) => f.endsWith('.json'));
  if (!file) throw new Error('ORT wrote no profile');
  const events = ProfileEventsSchema.parse(JSON.parse(readFileSync(join(profDir, file), 'utf8')));
  rmSync(profDir, { recursive: true, force: true });
  const acc = new Map<string, { op: string; total: number; n: number }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const node = e.name.slice(0, -'_kernel_time'.length);
    const a = acc.get(node) ?? { op: e.args?.op_name ?? '?', total: 0, n: 0 };
    a.total += e.dur ?? 0;
    a.n++;
    acc.set(node, a);
  }
  return [...acc.entries()].map(([node, a]) => ({ op: a.op, node, meanUs: a.total / a.n })).sort((x, y) => y.meanUs - x.meanUs);
}

export function formatBench(rows: readonly BenchRow[]): string {
  const ms = (s: LatencyStats): string => `${s.medianMs.toFixed(4)} (${s.minMs.toFixed(4)}–${s.maxMs.toFixed(4)})`;
  const table = [['model', 'batch', 'int8 ms/run median (min–max)', 'fp32 ms/run median (min–max)', 'int8/fp32', 'runs/repeat']];
  for (const r of rows) table.push([r.model, String(r.batch), ms(r.int8), ms(r.fp32), r.ratio.toFixed(2), String(r.iterations)]);
  const widths = table[0]?.map((_, i) => Math.max(...table.map((row) => (row[i] ?? '').length))) ?? [];
  return table.map((row) => `| ${row.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`).join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: 'models' },
      repeats: { type: 'string', default: '5' },
      json: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
    },
  });
  const dir = resolve(values.dir);
  await makeModels({ outDir: dir });
  const rows = await benchModels(dir, { repeats: Number(values.repeats) });
  console.log(values.json ? JSON.stringify(rows, null, 2) : formatBench(rows));
  if (values.profile) {
    for (const name of ['machine-state', 'machine-state-fp32', 'part-defect', 'part-defect-fp32']) {
      const ops = await profileModel(dir, name);
      console.log(`\n${name} (batch 32, µs per run): ${ops.map((o) => `${o.op} ${o.meanUs.toFixed(1)}`).join(', ')}`);
    }
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
