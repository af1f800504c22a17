/**
 * Bare-ORT latency of the manifest-v2 demo models: one session per model (intra-op threads 1,
 * as make-models and a 2-core agent use), each model fed its first test vector (the detector its
 * npz case), warm-up runs, then the median and p90 of `runs` timed session.run calls, and the
 * process CPU time per run (ORT with one intra-op thread computes on the calling thread, so on
 * a shared, loaded machine this is the figure wall-clock medians inflate least). No agent code
 * in the loop: this is the model's own cost.
 *
 *   node --import tsx scripts/lib/bench-v2.ts [--models models] [--runs 200] [--threads 1]
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { ManifestV2Schema } from '../../shared/manifest.ts';
import { readNpz } from '../../shared/npz.ts';
import { quantile } from './build-v2.ts';

export const V2_MODELS = ['conveyor-parts', 'bearing-anomaly', 'spindle-rul', 'line-state'] as const;

export interface BenchRow {
  name: string;
  runs: number;
  medianMs: number;
  p90Ms: number;
  minMs: number;
  /** Process CPU time (user + system) per run. */
  cpuMs: number;
}

function feedsOf(dir: string, name: string): Record<string, ort.Tensor> {
  const m = ManifestV2Schema.parse(JSON.parse(readFileSync(join(dir, `${name}.manifest.json`), 'utf8')));
  const feeds: Record<string, ort.Tensor> = {};
  const tv = m.testVectors[0];
  if (tv) {
    for (const [k, t] of Object.entries(tv.inputs)) feeds[k] = new ort.Tensor('float32', Float32Array.from(t.values), t.dims);
    return feeds;
  }
  if (!m.testVectorsFile) throw new Error(`${name}: no test vector to feed`);
  const arrays = readNpz(readFileSync(join(dir, m.testVectorsFile.file)), { maxBytes: 256 * 1024 * 1024, maxEntries: 64 });
  // The first case's inputs: arrays named <case>.in.<input>.
  const first = Object.keys(arrays)[0]?.split('.')[0];
  for (const [key, a] of Object.entries(arrays)) {
    const [c, dir2, input] = key.split('.');
    if (c === first && dir2 === 'in' && input && a.data instanceof Float32Array) feeds[input] = new ort.Tensor('float32', a.data, a.dims);
  }
  return feeds;
}

export async function benchV2(dir: string, runs: number, threads = 1): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  for (const name of V2_MODELS) {
    const session = await ort.InferenceSession.create(join(dir, `${name}.onnx`), { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
    try {
      const feeds = feedsOf(dir, name);
      for (let i = 0; i < Math.min(50, runs); i++) await session.run(feeds);
      const times: number[] = [];
      const cpu0 = process.cpuUsage();
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        await session.run(feeds);
        times.push(performance.now() - t0);
      }
      const cpu = process.cpuUsage(cpu0);
      rows.push({ name, runs, medianMs: quantile(times, 0.5), p90Ms: quantile(times, 0.9), minMs: Math.min(...times), cpuMs: (cpu.user + cpu.system) / 1000 / runs });
    } finally {
      await session.release();
    }
  }
  return rows;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { models: { type: 'string', default: 'models' }, runs: { type: 'string', default: '200' }, threads: { type: 'string', default: '1' } } });
  const rows = await benchV2(resolve(values.models), Number(values.runs), Number(values.threads));
  const fmt = (ms: number): string => (ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(2)} ms`);
  for (const r of rows) {
    console.log(`${r.name.padEnd(16)} median ${fmt(r.medianMs).padStart(9)}  p90 ${fmt(r.p90Ms).padStart(9)}  min ${fmt(r.minMs).padStart(9)}  cpu/run ${fmt(r.cpuMs).padStart(9)}  (${r.runs} runs)`);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
