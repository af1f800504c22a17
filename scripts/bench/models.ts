/**
 * Bench section `models`: int8 vs fp32 of each demo model, batch 1 and 32, from
 * scripts/bench-models.ts (its own interleaved repeats), as figures of the one bench report.
 * A ratio below 1 means int8 is faster.
 */
import { benchModels } from '../bench-models.ts';
import type { Figure } from './measure.ts';
import type { SectionOptions } from './inference.ts';

export async function modelsSection(o: SectionOptions): Promise<Figure[]> {
  const rows = await benchModels(o.modelsDir, { repeats: o.repeats, repeatMs: o.quick ? 50 : 400 });
  return rows.map((r) => ({
    section: 'models',
    name: `${r.model} batch ${r.batch}`,
    unit: 'ms/run',
    subjectLabel: 'int8',
    baselineLabel: 'fp32',
    subject: { median: r.int8.medianMs, min: r.int8.minMs, max: r.int8.maxMs, samples: [] },
    baseline: { median: r.fp32.medianMs, min: r.fp32.minMs, max: r.fp32.maxMs, samples: [] },
    ratio: r.ratio,
    note: `${r.iterations} runs per repeat, one intra-op thread`,
  }));
}
