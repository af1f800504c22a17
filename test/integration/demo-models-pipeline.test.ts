/**
 * The v2 demo models (scripts/make-models.ts makeModelsV2) served the way an agent serves them
 * (issue #13): a real ModelSet activates each one on a real WorkerPoolEngine — metadata check,
 * test vectors, for the detector from its .npz sidecar — and a real Pipeline answers images and
 * readings by task. A sidecar that does not match its manifest stops the activation.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import sharp from 'sharp';
import { PipelineSchema } from '../../agent/config.ts';
import { createPipelineMetrics } from '../../agent/metrics.ts';
import { ModelSet } from '../../agent/models/model-set.ts';
import { Pipeline, type TaskResult } from '../../agent/pipeline.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { silentLogger } from '../../shared/log.ts';
import { makeModelsV2 } from '../../scripts/make-models.ts';
import { conveyorScene } from '../../scripts/lib/synthetic-conveyor.ts';
import { vibrationWindow, VIB_CHANNELS } from '../../scripts/lib/synthetic-v2.ts';
import { createRng } from '../../scripts/lib/rng.ts';
import { MODELS_DIR } from '../helpers/fleet-in-process.ts';

const log = silentLogger();

void describe('v2 demo models through ModelSet and Pipeline', () => {
  const engine = new WorkerPoolEngine({ log, workers: 1, maxBatch: 1, maxWaitMs: 0 });
  let models: ModelSet;
  let dir: string;
  const paths: Record<string, string> = {};

  before(async () => {
    for (const m of await makeModelsV2({ outDir: MODELS_DIR })) paths[m.name] = m.manifestPath;
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-demo-v2-'));
    await engine.start(new AbortController().signal);
    models = new ModelSet({ manifests: Object.values(paths), engine, log });
    await models.start(new AbortController().signal);
  });

  after(async () => {
    await models.stop();
    await engine.stop();
    await rm(dir, { recursive: true, force: true });
  });

  function pipeline(name: string, model: string): { p: Pipeline; published: TaskResult[] } {
    const published: TaskResult[] = [];
    const p = new Pipeline({
      deviceId: 'dev-1',
      config: PipelineSchema.parse({ name, model, input: { type: 'mqtt' } }),
      model: () => models.byName(model),
      acquire: () => models.acquire(model),
      engine,
      publisher: { publish: (_t, payload) => (published.push(JSON.parse(String(payload)) as TaskResult), true) },
      sink: { append: () => Promise.resolve({ epoch: 1, seq: 1 }), appendNow: () => ({ epoch: 1, seq: 1 }) },
      metrics: createPipelineMetrics(new Registry()),
      log,
    });
    return { p, published };
  }

  test('every v2 demo model activates (metadata, test vectors; the detector\'s from its sidecar)', () => {
    assert.deepEqual(models.active().map((m) => m.manifest.name).sort(), ['bearing-anomaly', 'conveyor-parts', 'line-state', 'spindle-rul']);
  });

  test('the conveyor detector finds the parts of a fresh scene, boxes in the frame\'s own pixels', async () => {
    const { p } = pipeline('conveyor', 'conveyor-parts');
    await p.start();
    const scene = conveyorScene(createRng(4242), { count: 4 });
    const png = await sharp(Buffer.from(scene.rgb), { raw: { width: scene.width, height: scene.height, channels: 3 } }).png().toBuffer();
    const r = (await p.infer({ kind: 'image', bytes: png, id: 'frame-1' })) as TaskResult;
    assert.equal(r.task, 'detection');
    const dets = r['detections'] as { label: string; score: number; box: { x1: number; y1: number; x2: number; y2: number } }[];
    assert.equal(dets.length, scene.parts.length, JSON.stringify(dets));
    const iou = (a: { x1: number; y1: number; x2: number; y2: number }, b: typeof a): number => {
      const w = Math.min(a.x2, b.x2) - Math.max(a.x1, b.x1);
      const h = Math.min(a.y2, b.y2) - Math.max(a.y1, b.y1);
      if (w <= 0 || h <= 0) return 0;
      return (w * h) / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - w * h);
    };
    for (const part of scene.parts) {
      const best = Math.max(...dets.filter((d) => d.label === part.cls).map((d) => iou(d.box, part)));
      assert.ok(best >= 0.5, `${part.cls} at ${JSON.stringify(part)}: best IoU ${best}`);
    }
    assert.ok(!('scores' in r), 'no raw score arrays in the result');
    await p.stop();
  });

  test('the bearing autoencoder: windows of sensor samples, alarm on a faulty bearing, not on a healthy one', async () => {
    const { p } = pipeline('bearing', 'bearing-anomaly');
    await p.start();
    const rng = createRng(99);
    const send = async (stream: string, w: Float64Array, ts: number): Promise<TaskResult> => {
      const samples: number[][] = [];
      for (let i = 0; i < w.length / VIB_CHANNELS.length; i++) samples.push(Array.from(w.subarray(i * 3, i * 3 + 3)));
      return (await p.infer({ kind: 'json', body: { stream, ts, samples } })) as TaskResult;
    };
    let healthyAlarms = 0;
    let faultyAlarms = 0;
    for (let k = 0; k < 10; k++) {
      // A fresh window per stream each time: 64 samples fill it exactly (a new stream, no carry-over).
      const h = await send(`healthy-${k}`, vibrationWindow(rng, 64), 1000);
      const f = await send(`faulty-${k}`, vibrationWindow(rng, 64, { fault: 'looseness', severity: 1.5 }), 1000);
      assert.equal(h.task, 'anomaly');
      if (h['alarm'] === true) healthyAlarms++;
      if (f['alarm'] === true) faultyAlarms++;
    }
    assert.ok(healthyAlarms <= 1, `healthy windows alarmed ${healthyAlarms}/10`);
    assert.ok(faultyAlarms >= 8, `faulty windows alarmed ${faultyAlarms}/10`);
    await p.stop();
  });

  test('a sidecar that does not match its manifest stops the activation (BAD_MANIFEST), the model is not served', async () => {
    const src = paths['conveyor-parts']!;
    // Another version: the engine already holds conveyor-parts@1.0.0 from the real files.
    const manifest = { ...(JSON.parse(await readFile(src, 'utf8')) as { artifact: { file: string }; testVectorsFile: { file: string } }), version: '1.0.1-tampered' };
    await copyFile(join(MODELS_DIR, manifest.artifact.file), join(dir, manifest.artifact.file));
    const npz = await readFile(join(MODELS_DIR, manifest.testVectorsFile.file));
    npz[npz.length - 100] = npz[npz.length - 100]! ^ 0xff;
    await writeFile(join(dir, manifest.testVectorsFile.file), npz);
    await writeFile(join(dir, 'conveyor-parts.manifest.json'), JSON.stringify(manifest));
    const other = new ModelSet({ manifests: [join(dir, 'conveyor-parts.manifest.json')], engine, log });
    await assert.rejects(other.start(new AbortController().signal), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'BAD_MANIFEST', err.message);
      assert.match(err.message, /sha256|size/);
      return true;
    });
    assert.equal(other.byName('conveyor-parts'), undefined);
  });

  test('an installed version without its sidecar (releases carry manifest and model only) activates on its inline vectors', async () => {
    const src = paths['conveyor-parts']!;
    const manifest = { ...(JSON.parse(await readFile(src, 'utf8')) as { artifact: { file: string } }), version: '1.0.2-installed' };
    const d = join(dir, 'installed');
    await mkdir(d, { recursive: true });
    await copyFile(join(MODELS_DIR, manifest.artifact.file), join(d, manifest.artifact.file));
    await writeFile(join(d, 'manifest.json'), JSON.stringify(manifest));
    const other = new ModelSet({ manifests: [join(d, 'manifest.json')], engine, log });
    await other.start(new AbortController().signal);
    assert.equal(other.byName('conveyor-parts')?.key, 'conveyor-parts@1.0.2-installed');
    await other.stop();
  });
});
