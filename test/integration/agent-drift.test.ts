/**
 * Agent drift on real parts (issue #4): a real Pipeline and WorkerPoolEngine with the demo
 * models (models/), a real Outbox in a temp dir and the DriftMonitor. N readings give one
 * summary whose counts add up to N and whose bins are the manifest's reference bins; camera
 * images give brightness/contrast/sharpness features equal to make-models' image statistics.
 * And `edgefleet model baseline` on the data make-models used reproduces the demo manifests'
 * reference bins (tabular and image) and class rates.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { PipelineSchema } from '../../agent/config.ts';
import { DriftConfigSchema, DriftMonitor } from '../../agent/drift/drift-monitor.ts';
import { createPipelineMetrics } from '../../agent/metrics.ts';
import { openLocalModel, type LocalModel } from '../../agent/models/local-models.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { Pipeline, type ClassifierResult } from '../../agent/pipeline.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { run as baseline } from '../../cli/commands/model-baseline.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { createRng, encodePartPng, imageDriftStats, partDataset, SENSOR_FEATURES, sensorDataset } from '../../scripts/lib/synthetic.ts';
import { binIndex, DRIFT_STREAM, DriftSummarySchema, type DriftSummary } from '../../shared/drift/summary.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema } from '../../shared/manifest.ts';
import { v1 } from '../helpers/manifest-v1.ts';

const log = silentLogger();
let dir: string;
let engine: WorkerPoolEngine;
const models: Record<string, LocalModel> = {};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-agent-drift-'));
  engine = new WorkerPoolEngine({ workers: 1, intraOpThreads: 1, log });
  await engine.start(new AbortController().signal);
  for (const name of ['machine-state', 'part-defect']) {
    const m = await openLocalModel(join(REPO_ROOT, 'models', `${name}.manifest.json`));
    await engine.load(m.key, m.onnxPath);
    models[name] = m;
  }
});

after(async () => {
  await engine?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** A pipeline of `model` with its own outbox and drift monitor; `finish` stops them and returns the summaries. */
async function rig(name: string, model: LocalModel) {
  const registry = new Registry();
  const outbox = new Outbox({ path: join(dir, `${name}.db`), log, registry });
  await outbox.start(new AbortController().signal);
  const drift = new DriftMonitor({
    deviceId: 'dev-1',
    config: DriftConfigSchema.parse({ windowMs: 3_600_000 }),
    sink: outbox,
    instance: () => String(outbox.epoch),
    upload: { hubHttpUrl: undefined, deviceId: 'dev-1', token: 'secret-token' },
    log,
    registry,
  });
  await drift.start();
  const pipeline = new Pipeline({
    deviceId: 'dev-1',
    config: PipelineSchema.parse({ name, model: model.manifest.name, input: { type: 'mqtt' }, output: { telemetry: false } }),
    model: () => model,
    drift,
    engine,
    publisher: { publish: () => true },
    sink: outbox,
    metrics: createPipelineMetrics(registry),
    log,
  });
  await pipeline.start();
  return {
    pipeline,
    drift,
    registry,
    finish: async (): Promise<DriftSummary[]> => {
      await pipeline.stop();
      await drift.stop();
      const records = outbox.readBatch(0, 1000).filter((r) => r.stream === DRIFT_STREAM);
      await outbox.stop();
      return records.map((r) => {
        assert.equal(r.kind, 'drift');
        return DriftSummarySchema.parse(r.body);
      });
    },
  };
}

void describe('drift summaries from a real pipeline', () => {
  it('machine-state: N readings → summaries whose counts add up to N over the reference bins', async () => {
    const m = models['machine-state']!;
    const r = await rig('machine', m);
    const data = sensorDataset(createRng(4242), 40); // 120 readings
    const results = await Promise.all(data.x.map((values, i) => r.pipeline.infer({ kind: 'json', body: i % 2 ? { values } : Buffer.from(JSON.stringify({ values })) })));
    const summaries = await r.finish();
    // One hour window: normally one summary; two if the run straddled an hour boundary.
    assert.ok(summaries.length >= 1 && summaries.length <= 2, `${summaries.length} summaries`);
    const n = data.x.length;
    assert.equal(summaries.reduce((a, s) => a + s.count, 0), n);
    const refs = m.manifest.drift!.features;
    const manifest = v1(m.manifest);
    const names = manifest.preprocessing.kind === 'tabular' ? manifest.preprocessing.features.map((f) => f.name) : [];
    for (const [k, ref] of refs.entries()) {
      const want = new Array<number>(ref.edges.length + 1).fill(0);
      for (const row of data.x) want[binIndex(ref.edges, row[names.indexOf(ref.name)]!)]!++;
      const got = new Array<number>(ref.edges.length + 1).fill(0);
      for (const s of summaries) {
        const f = s.numeric[k]!;
        assert.equal(f.name, ref.name);
        assert.equal(f.counts.length, ref.edges.length + 1);
        f.counts.forEach((c, i) => (got[i]! += c));
      }
      assert.deepEqual(got, want, ref.name);
    }
    const classCounts = [0, 0, 0];
    // A v1 classifier: every result is a ClassifierResult.
    for (const res of results) classCounts[manifest.postprocessing.labels.indexOf((res as ClassifierResult).label)]!++;
    assert.deepEqual(summaries.reduce((acc, s) => acc.map((v, i) => v + s.outputs.classCounts[i]!), [0, 0, 0]), classCounts);
    // Every reading's id and raw input are in the sample ring (size 200 > 120).
    assert.deepEqual(r.drift.ring('machine')?.recent().map((x) => x.id).sort(), results.map((x) => x.id).sort());
    const bytes = await r.registry.getSingleMetric('edgefleet_agent_drift_summary_bytes')!.get();
    assert.equal(bytes.values.find((v) => (v as { metricName?: string }).metricName?.endsWith('_count'))?.value, summaries.length);
  });

  it('part-defect: image statistics become the brightness, contrast and sharpness features', async () => {
    const m = models['part-defect']!;
    const r = await rig('camera', m);
    const data = partDataset(createRng(31337), 40);
    for (const px of data.images) await r.pipeline.infer({ kind: 'image', bytes: await encodePartPng(px) });
    const summaries = await r.finish();
    assert.equal(summaries.reduce((a, s) => a + s.count, 0), data.images.length);
    const stats = data.images.map((px) => imageDriftStats(px));
    for (const [k, name] of ['brightness', 'contrast', 'sharpness'].entries()) {
      const sum = summaries.reduce((a, s) => a + s.numeric.find((f) => f.name === name)!.sum, 0);
      const want = stats.reduce((a, s) => a + s[k]!, 0);
      assert.ok(Math.abs(sum - want) < 1e-9, `${name}: ${sum} vs ${want}`);
      const ref = m.manifest.drift!.features.find((f) => f.name === name)!;
      const counts = summaries[0]!.numeric.find((f) => f.name === name)!.counts;
      assert.equal(counts.length, ref.edges.length + 1);
    }
  });
});

void describe('edgefleet model baseline', () => {
  const io = () => {
    const out: string[] = [];
    const err: string[] = [];
    return { out, err, io: { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s), env: {} } };
  };

  async function copyModel(name: string): Promise<string> {
    const sub = await mkdtemp(join(dir, `${name}-`));
    const src = ManifestSchema.parse(JSON.parse(await readFile(join(REPO_ROOT, 'models', `${name}.manifest.json`), 'utf8')));
    await copyFile(join(REPO_ROOT, 'models', src.artifact.file), join(sub, src.artifact.file));
    // Start from a manifest without any drift reference, so nothing is left over from the demo one.
    const { drift: _drift, ...rest } = src;
    await writeFile(join(sub, 'manifest.json'), JSON.stringify(rest));
    return sub;
  }

  it('machine-state: the training data reproduces the demo bins; the held-out data its class rates', async () => {
    const demo = ManifestSchema.parse(JSON.parse(await readFile(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8')));
    const sub = await copyModel('machine-state');
    // make-models: training set seed 101 (1000 per class) for the bins, held-out seed 202 for the rates.
    const train = sensorDataset(createRng(101), 1000);
    await writeFile(join(sub, 'train.jsonl'), train.x.map((values, i) => JSON.stringify(i % 2 ? { values } : { features: Object.fromEntries(values.map((v, k) => [SENSOR_FEATURES[k], v])) })).join('\n'));
    const heldOut = sensorDataset(createRng(202), 1000);
    await writeFile(join(sub, 'held-out.jsonl'), heldOut.x.map((values) => JSON.stringify({ values })).join('\n'));

    const a = io();
    assert.equal(await baseline(['--manifest', join(sub, 'manifest.json'), '--data', join(sub, 'train.jsonl'), '--out', join(sub, 'bins.json')], a.io), 0, a.err.join(''));
    const bins = ManifestSchema.parse(JSON.parse(await readFile(join(sub, 'bins.json'), 'utf8')));
    assert.deepEqual(bins.drift?.features, demo.drift?.features);

    const b = io();
    assert.equal(await baseline(['--manifest', join(sub, 'manifest.json'), '--data', join(sub, 'held-out.jsonl'), '--class-rates', '--json'], b.io), 0, b.err.join(''));
    const rates = ManifestSchema.parse(JSON.parse(await readFile(join(sub, 'manifest.json'), 'utf8')));
    assert.deepEqual(rates.drift?.classRates, demo.drift?.classRates);
    assert.equal((JSON.parse(b.out.join('')) as { rows: number }).rows, 3000);
  });

  it('part-defect: image files through the agent preprocessing reproduce the demo bins', async () => {
    const demo = ManifestSchema.parse(JSON.parse(await readFile(join(REPO_ROOT, 'models', 'part-defect.manifest.json'), 'utf8')));
    const sub = await copyModel('part-defect');
    const train = partDataset(createRng(111), 1200); // make-models' training set
    const lines: string[] = [];
    for (const [i, px] of train.images.entries()) {
      await writeFile(join(sub, `${i}.png`), await encodePartPng(px));
      lines.push(i % 2 ? `${i}.png` : JSON.stringify({ path: `${i}.png` }));
    }
    await writeFile(join(sub, 'images.txt'), lines.join('\n'));
    const a = io();
    assert.equal(await baseline(['--manifest', join(sub, 'manifest.json'), '--data', join(sub, 'images.txt')], a.io), 0, a.err.join(''));
    const got = ManifestSchema.parse(JSON.parse(await readFile(join(sub, 'manifest.json'), 'utf8')));
    assert.deepEqual(got.drift?.features, demo.drift?.features);
  });

  it('refuses bad arguments and features the agent cannot compute', async () => {
    const sub = await copyModel('part-defect');
    await writeFile(join(sub, 'none.txt'), '');
    const a = io();
    assert.equal(await baseline(['--manifest', join(sub, 'manifest.json')], a.io), 2);
    const b = io();
    assert.equal(await baseline(['--manifest', join(sub, 'manifest.json'), '--data', join(sub, 'none.txt'), '--features', 'blur'], b.io), 2);
    assert.match(b.err.join(''), /blur/);
  });
});
