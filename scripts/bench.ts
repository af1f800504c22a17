/**
 * `npm run bench`: every performance figure of issue #5, each measured next to its bare
 * baseline in one run, repeated and interleaved (scripts/bench/measure.ts), printed as median
 * (min–max) with the ratio, then one table of the targets with PASS/MISS.
 *
 *   node --import tsx scripts/bench.ts [--repeats 5] [--only pipeline,image,...] [--json] [--quick] [--dir models]
 *
 * Sections: pipeline, image (scripts/bench/inference.ts), outbox (storage.ts), telemetry and
 * broker (transport.ts), models (int8 vs fp32, scripts/bench-models.ts), detection (YOLO decode
 * + NMS vs the model's run, scripts/bench/detection.ts), engine-v2 (batch-1 engine and v2 Pipeline
 * overhead on the real UltraFace RFB-320, published result sizes, scripts/bench/engine-v2.ts).
 * `--quick` shortens
 * every window for a smoke run: its figures mean nothing. `--json` prints one JSON document
 * ({ machine, options, figures }) instead of the tables. Progress goes to stderr.
 */
import { cpus, loadavg, totalmem } from 'node:os';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { makeModels } from './make-models.ts';
import { detectionSection } from './bench/detection.ts';
import { engineV2Section } from './bench/engine-v2.ts';
import { imageSection, pipelineSection, type SectionOptions } from './bench/inference.ts';
import { formatSection, formatTargets, type Figure } from './bench/measure.ts';
import { modelsSection } from './bench/models.ts';
import { outboxSection } from './bench/storage.ts';
import { brokerSection, telemetrySection } from './bench/transport.ts';

export const SECTIONS: Record<string, (o: SectionOptions) => Promise<Figure[]>> = {
  pipeline: pipelineSection,
  image: imageSection,
  outbox: outboxSection,
  telemetry: telemetrySection,
  broker: brokerSection,
  models: modelsSection,
  detection: detectionSection,
  'engine-v2': engineV2Section,
};

export interface Machine {
  cpu: string;
  cores: number;
  memGiB: number;
  node: string;
  /** 1, 5 and 15 minute load averages at the start and at the end of the run. */
  loadStart: number[];
  loadEnd: number[];
}

export interface BenchReport {
  machine: Machine;
  options: { repeats: number; quick: boolean; sections: string[] };
  figures: Figure[];
  durationS: number;
}

export async function runBench(opts: { modelsDir: string; repeats: number; quick: boolean; sections: string[]; progress?: (s: string) => void }): Promise<BenchReport> {
  const unknown = opts.sections.filter((s) => !(s in SECTIONS));
  if (unknown.length) throw new Error(`unknown section(s) ${unknown.join(', ')}; known: ${Object.keys(SECTIONS).join(', ')}`);
  const t0 = performance.now();
  const loadStart = loadavg();
  await makeModels({ outDir: opts.modelsDir });
  const figures: Figure[] = [];
  for (const name of opts.sections) {
    const ts = performance.now();
    opts.progress?.(`bench: ${name} ...`);
    figures.push(...(await SECTIONS[name]!({ modelsDir: opts.modelsDir, repeats: opts.repeats, quick: opts.quick })));
    opts.progress?.(`bench: ${name} done in ${((performance.now() - ts) / 1000).toFixed(1)} s`);
  }
  return {
    machine: {
      cpu: cpus()[0]?.model ?? 'unknown',
      cores: cpus().length,
      memGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
      node: process.version,
      loadStart,
      loadEnd: loadavg(),
    },
    options: { repeats: opts.repeats, quick: opts.quick, sections: opts.sections },
    figures,
    durationS: Math.round((performance.now() - t0) / 100) / 10,
  };
}

export function formatReport(r: BenchReport): string {
  const m = r.machine;
  const load = (l: number[]): string => l.map((x) => x.toFixed(2)).join(' ');
  const out = [
    `machine: ${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, node ${m.node}; load average ${load(m.loadStart)} at start, ${load(m.loadEnd)} at end`,
    `repeats: ${r.options.repeats}${r.options.quick ? ' (quick: figures are not meaningful)' : ''}; ${r.durationS} s`,
  ];
  for (const s of r.options.sections) {
    out.push('', `## ${s}`, formatSection(r.figures.filter((f) => f.section === s)));
  }
  out.push('', '## targets', formatTargets(r.figures));
  return out.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dir: { type: 'string', default: 'models' },
      repeats: { type: 'string', default: '5' },
      only: { type: 'string' },
      json: { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
    },
  });
  const repeats = Number(values.repeats);
  if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`--repeats must be a positive integer, got ${values.repeats}`);
  const sections = values.only ? values.only.split(',').map((s) => s.trim()).filter(Boolean) : Object.keys(SECTIONS);
  const report = await runBench({ modelsDir: resolve(values.dir), repeats, quick: values.quick, sections, progress: (s) => console.error(s) });
  console.log(values.json ? JSON.stringify(report, null, 2) : formatReport(report));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
