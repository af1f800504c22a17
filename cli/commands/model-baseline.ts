/**
 * `edgefleet model baseline`: builds a manifest's drift reference (issue #4) from a reference
 * data set: `drift.features` (quantile bin edges and counts, shared/drift/reference.ts
 * `referenceBins`, which scripts/make-models uses too, so both stay one convention) and,
 * with --class-rates, `drift.classRates` from running the model itself (onnxruntime-node).
 *
 * Inputs go through the agent's own preprocessing (agent/preprocess/), so the statistics are
 * exactly what the agent will compute on the device: raw tabular values in the manifest's
 * feature order, or the image statistics of the model-sized image (brightness, contrast,
 * sharpness, channel_mean_<k>). Data: JSON lines of `{"features": {...}}` or `{"values": [...]}`
 * for tabular models; for image models one image path per line (or `{"path": ...}`), relative to
 * the data file.
 *
 * The hub turns classRates back into reference counts with `evaluation.samples`
 * (shared/drift/detector.ts referenceFromManifest), so the command warns when the rates come
 * from a different number of rows than the manifest's evaluation names.
 */
import type { TensorData } from '../../shared/tensor.ts';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import ort from 'onnxruntime-node';
import { formatIssues } from '../../shared/codec.ts';
import { referenceBins, roundSig } from '../../shared/drift/reference.ts';
import { ManifestSchema, ManifestV1Schema, type ManifestV1 as Manifest, type ReferenceBins } from '../../shared/manifest.ts';
import { imageFeatureCode, imageFeatureValue } from '../../agent/drift/drift-monitor.ts';
import { preprocessImage } from '../../agent/preprocess/image.ts';
import { classify } from '../../agent/preprocess/postprocess.ts';
import { preprocessTabular, ReadingSchema } from '../../agent/preprocess/tabular.ts';
import { EXIT, failure, UsageError, type CliIo } from '../command.ts';

const USAGE = `usage: edgefleet model baseline --manifest <m.json> --data <file.jsonl> [--out <m2.json>]
                                [--bins 10] [--features a,b,...] [--class-rates] [--json]

Builds the manifest's drift reference from a reference data set and writes the manifest
(in place unless --out is given).

  --data <file>       JSON lines: {"features": {...}} or {"values": [...]} (tabular models),
                      or one image path per line / {"path": "..."} (image models, relative to the file)
  --bins <n>          quantile bins per feature (default 10)
  --features <list>   features to keep; default: the manifest's current drift features, else every
                      tabular feature / brightness, contrast, sharpness (+ channel_mean_<k> for colour)
  --class-rates       also run the model (the .onnx next to the manifest) for drift.classRates
  --json              print a summary as JSON
`;

export interface BaselineResult {
  manifest: Manifest;
  rows: number;
  warnings: string[];
}

type ModelInput = TensorData;

/** The rows of the data set: model input tensors and the drift feature values. */
async function readRows(m: Manifest, dataPath: string, names: readonly string[]): Promise<{ inputs: ModelInput[]; values: number[][] }> {
  const lines = (await readFile(dataPath, 'utf8')).split(/\r?\n/).filter((l) => l.trim() !== '');
  const inputs: ModelInput[] = [];
  const values: number[][] = names.map(() => []);
  const pre = m.preprocessing;
  for (const [i, line] of lines.entries()) {
    const where = `${dataPath}:${i + 1}`;
    if (pre.kind === 'tabular') {
      let parsed: unknown;
      try {
        parsed = JSON.parse(line);
      } catch (err) {
        throw new UsageError(`${where}: not JSON (${(err as Error).message})`);
      }
      const r = ReadingSchema.safeParse(parsed);
      if (!r.success) throw new UsageError(`${where}: ${formatIssues(r.error)}`);
      const t = preprocessTabular(pre, r.data);
      inputs.push(t.data);
      names.forEach((n, k) => values[k]!.push(t.raw[pre.features.findIndex((f) => f.name === n)] as number));
    } else {
      const trimmed = line.trim();
      const path = trimmed.startsWith('{') ? (JSON.parse(trimmed) as { path?: unknown }).path : trimmed.startsWith('"') ? (JSON.parse(trimmed) as unknown) : trimmed;
      if (typeof path !== 'string') throw new UsageError(`${where}: expected an image path`);
      const t = await preprocessImage(pre, await readFile(resolve(dirname(dataPath), path)));
      inputs.push(t.data);
      names.forEach((n, k) => values[k]!.push(imageFeatureValue(t.stats, imageFeatureCode(n))));
    }
  }
  if (inputs.length === 0) throw new UsageError(`${dataPath}: no rows`);
  return { inputs, values };
}

function defaultFeatures(m: Manifest): string[] {
  const current = m.drift?.features.map((f) => f.name);
  if (current?.length) return current;
  if (m.preprocessing.kind === 'tabular') return m.preprocessing.features.map((f) => f.name);
  const colour = m.preprocessing.colour === 'gray' ? [] : ['channel_mean_0', 'channel_mean_1', 'channel_mean_2'];
  return ['brightness', 'contrast', 'sharpness', ...colour];
}

async function classRates(m: Manifest, onnxPath: string, inputs: readonly ModelInput[]): Promise<number[]> {
  if (!inputs.every((x) => x instanceof Float32Array)) throw new UsageError(`--class-rates supports float32 model inputs only`);
  const session = await ort.InferenceSession.create(onnxPath, { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  try {
    const spec = m.inputs[0]!;
    const rowDims = spec.shape.slice(1).map((d) => (typeof d === 'number' ? d : 1));
    const fixedBatch = typeof spec.shape[0] === 'number' ? spec.shape[0] : undefined;
    const batch = fixedBatch ?? 64;
    const counts = new Array<number>(m.postprocessing.labels.length).fill(0);
    const size = inputs[0]!.length;
    for (let start = 0; start < inputs.length; start += batch) {
      const b = Math.min(batch, inputs.length - start);
      const data = new Float32Array((fixedBatch ?? b) * size);
      for (let i = 0; i < b; i++) data.set(inputs[start + i] as Float32Array, i * size);
      const res = await session.run({ [spec.name]: new ort.Tensor('float32', data, [fixedBatch ?? b, ...rowDims]) });
      const out = res[m.outputs[0]!.name] ?? Object.values(res)[0];
      if (!out || !(out.data instanceof Float32Array)) throw new Error('model returned no float32 output');
      const k = out.data.length / (fixedBatch ?? b);
      for (let i = 0; i < b; i++) {
        const c = classify(m.postprocessing, out.data.subarray(i * k, (i + 1) * k));
        counts[c.index] = (counts[c.index] as number) + 1;
      }
    }
    return counts.map((c) => roundSig(c / inputs.length, 6));
  } finally {
    await session.release();
  }
}

/** Builds the reference; exported for tests and scripts. */
export async function buildBaseline(opts: { manifestPath: string; dataPath: string; bins?: number; features?: string[]; classRates?: boolean }): Promise<BaselineResult> {
  const parsed = ManifestSchema.safeParse(JSON.parse(await readFile(opts.manifestPath, 'utf8')));
  if (!parsed.success) throw new UsageError(`${opts.manifestPath}: ${formatIssues(parsed.error)}`);
  if (parsed.data.manifestVersion !== 1) {
    throw new UsageError(`${opts.manifestPath}: model baseline builds drift references for v1 classifier manifests; for a v2 manifest write drift.features yourself (issue #13 follow-up)`);
  }
  const m = parsed.data;
  const names = opts.features ?? defaultFeatures(m);
  for (const n of names) {
    const ok = m.preprocessing.kind === 'tabular' ? m.preprocessing.features.some((f) => f.name === n) : imageFeatureCode(n) >= 0;
    if (!ok) throw new UsageError(`feature ${n} is not something the agent computes for ${m.name} (${m.preprocessing.kind})`);
  }
  const rows = await readRows(m, opts.dataPath, names);
  const features: ReferenceBins[] = names.map((n, k) => referenceBins(n, rows.values[k]!, opts.bins ?? 10));
  const warnings: string[] = [];
  for (const f of features) if (f.edges.length + 1 < (opts.bins ?? 10)) warnings.push(`${f.name}: only ${f.edges.length + 1} distinct bins (many equal values)`);
  let rates = m.drift?.classRates;
  if (opts.classRates) {
    rates = await classRates(m, resolve(dirname(opts.manifestPath), m.artifact.file), rows.inputs);
    if (m.evaluation?.samples !== rows.inputs.length) {
      warnings.push(
        `classRates come from ${rows.inputs.length} rows but evaluation.samples is ${m.evaluation?.samples ?? 'absent'}: the hub recovers reference class counts as rate × evaluation.samples`,
      );
    }
  }
  const manifest = ManifestV1Schema.parse({ ...m, drift: { features, ...(rates ? { classRates: rates } : {}) } });
  return { manifest, rows: rows.inputs.length, warnings };
}

export async function run(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values } = parseArgs({
      args: argv,
      options: {
        manifest: { type: 'string' },
        data: { type: 'string' },
        out: { type: 'string' },
        bins: { type: 'string' },
        features: { type: 'string' },
        'class-rates': { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (!values.manifest || !values.data) throw new UsageError('--manifest and --data are required');
    const bins = values.bins === undefined ? 10 : Number(values.bins);
    if (!Number.isInteger(bins) || bins < 2 || bins > 256) throw new UsageError(`--bins must be an integer in 2..256, got ${values.bins}`);
    const features = values.features?.split(',').map((s) => s.trim()).filter(Boolean);
    const r = await buildBaseline({ manifestPath: values.manifest, dataPath: values.data, bins, features, classRates: values['class-rates'] });
    const out = values.out ?? values.manifest;
    await writeFile(out, `${JSON.stringify(r.manifest, null, 2)}\n`);
    for (const w of r.warnings) io.err(`warning: ${w}`);
    const summary = {
      manifest: out,
      rows: r.rows,
      features: r.manifest.drift!.features.map((f) => ({ name: f.name, bins: f.counts.length, mean: f.mean, std: f.std })),
      classRates: r.manifest.drift!.classRates ?? null,
    };
    if (values.json) io.out(`${JSON.stringify(summary)}\n`);
    else {
      io.out(`${out}: drift reference from ${r.rows} rows\n`);
      for (const f of summary.features) io.out(`  ${f.name.padEnd(16)} ${f.bins} bins  mean ${f.mean}  sd ${f.std}\n`);
      if (summary.classRates) io.out(`  classRates ${summary.classRates.join(', ')}\n`);
    }
    return EXIT.OK;
  } catch (err) {
    return failure(io, 'model baseline', err, USAGE);
  }
}
