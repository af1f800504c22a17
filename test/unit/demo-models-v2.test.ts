/**
 * The manifest-v2 demo models (issue #13): conveyor-parts (detection, YOLOv8 layout),
 * bearing-anomaly (autoencoder), spindle-rul (regression on derived window features) and
 * line-state (stateful). Each manifest parses and is true to its files, ORT's metadata matches
 * it, its test vectors (inline, and the detector's npz sidecar) reproduce, and each model does
 * its job on fresh synthetic data, fed the way its manifest says. The models come from models/
 * (generated once, ~30 s, then cached by their stamp like the v1 demo models the e2e tests use);
 * the cache test works on a copy.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { ManifestV2Schema } from '../../shared/manifest.ts';
import type { ManifestV2 } from '../../shared/manifest.ts';
import { readNpz } from '../../shared/npz.ts';
import { WindowAccumulator } from '../../agent/preprocess/window.ts';
import { cachedModelsV2, makeModelsV2, STAMP_FILE_V2 } from '../../scripts/make-models.ts';
import type { MadeModelV2 } from '../../scripts/make-models.ts';
import { buildLineState } from '../../scripts/lib/models-sensors.ts';
import { createRng } from '../../scripts/lib/rng.ts';
import { conveyorScene, letterboxTensor } from '../../scripts/lib/synthetic-conveyor.ts';
import { lineSequence, SPINDLE_BURST, SPINDLE_CHANNELS, spindleBurst, spindleLife, vibrationWindow } from '../../scripts/lib/synthetic-v2.ts';

const NAMES = ['conveyor-parts', 'bearing-anomaly', 'spindle-rul', 'line-state'];
const MODELS_DIR = fileURLToPath(new URL('../../models/', import.meta.url));

let dir: string;
let made: MadeModelV2[];
const manifests = new Map<string, ManifestV2>();
const sessions = new Map<string, ort.InferenceSession>();

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-models-v2-'));
  made = await makeModelsV2({ outDir: MODELS_DIR });
  for (const m of made) {
    manifests.set(m.name, ManifestV2Schema.parse(JSON.parse(await readFile(m.manifestPath, 'utf8'))));
    sessions.set(m.name, await ort.InferenceSession.create(m.onnxPath, { intraOpNumThreads: 1 }));
  }
});

after(async () => {
  for (const s of sessions.values()) await s.release();
  await rm(dir, { recursive: true, force: true });
});

function get<T>(map: Map<string, T>, name: string): T {
  const v = map.get(name);
  assert.ok(v !== undefined, `${name} missing`);
  return v;
}

async function run(name: string, feeds: Record<string, { dims: number[]; values: ArrayLike<number> }>): Promise<Record<string, Float32Array>> {
  const tensors: Record<string, ort.Tensor> = {};
  for (const [k, f] of Object.entries(feeds)) tensors[k] = new ort.Tensor('float32', Float32Array.from(f.values), f.dims);
  const res = await get(sessions, name).run(tensors);
  const out: Record<string, Float32Array> = {};
  for (const [k, t] of Object.entries(res)) {
    assert.ok(t.data instanceof Float32Array);
    out[k] = t.data;
  }
  return out;
}

function source<K extends ManifestV2['inputs'][number]['source']['kind']>(m: ManifestV2, input: string, kind: K): Extract<ManifestV2['inputs'][number]['source'], { kind: K }> {
  const spec = m.inputs.find((i) => i.name === input);
  assert.ok(spec, `input ${input}`);
  assert.equal(spec.source.kind, kind);
  return spec.source as Extract<ManifestV2['inputs'][number]['source'], { kind: K }>;
}

void describe('manifest-v2 demo models', () => {
  void test('four models whose manifests parse and match their files', async () => {
    assert.deepEqual(made.map((m) => m.name), NAMES);
    for (const m of made) {
      const manifest = get(manifests, m.name);
      const bytes = await readFile(m.onnxPath);
      assert.equal(manifest.manifestVersion, 2);
      assert.equal(manifest.name, m.name);
      assert.equal(manifest.task, m.task);
      assert.equal(manifest.postprocessing.kind, m.task);
      assert.equal(manifest.quantization, 'fp32');
      assert.equal(manifest.artifact.file, `${m.name}.onnx`);
      assert.equal(manifest.artifact.size, bytes.length);
      assert.equal(manifest.artifact.sha256, createHash('sha256').update(bytes).digest('hex'));
      assert.ok(manifest.evaluation && manifest.evaluation.samples > 0, `${m.name} evaluation`);
      assert.ok((manifest.description ?? '').includes('Held out'), `${m.name}: figures in the description`);
    }
    const det = get(manifests, 'conveyor-parts');
    assert.deepEqual(source(det, 'images', 'image'), { kind: 'image', width: 640, height: 640, fit: 'letterbox', pad: 114, colour: 'rgb', layout: 'NCHW', scale: 1 / 255, mean: [0], std: [1] });
    assert.ok(det.postprocessing.kind === 'detection');
    assert.equal(det.postprocessing.decoder, 'yolov8');
    assert.deepEqual(det.postprocessing.labels, ['bolt', 'nut', 'washer']);
    assert.equal(det.testVectors.length, 0);
    assert.ok(det.testVectorsFile);
    const ae = get(manifests, 'bearing-anomaly');
    assert.deepEqual(ae.postprocessing, { kind: 'anomaly', output: 'reconstruction', index: 0, reconstructs: 'window', threshold: made[1]?.metrics.threshold, normalize: false });
    assert.deepEqual(source(ae, 'window', 'window').features.map((f) => f.name), ['vib_x', 'vib_y', 'vib_z']);
    const rul = get(manifests, 'spindle-rul');
    assert.ok(rul.postprocessing.kind === 'regression');
    assert.deepEqual(rul.postprocessing.targets.map((t) => [t.name, t.unit, t.min, t.max]), [['rul', 'h', 0, 150]]);
    const derive = source(rul, 'features', 'window').derive;
    assert.deepEqual(derive?.stats, ['mean', 'std', 'rms', 'peak']);
    assert.equal(derive?.fftBands, 4);
    assert.equal(derive?.scale?.length, 16);
    const ls = get(manifests, 'line-state');
    assert.deepEqual(source(ls, 'h', 'state'), { kind: 'state', output: 'h_out', init: 0, resetAfterMs: 600_000 });
    assert.equal(source(ls, 'x', 'reading').features.length, 4);
  });

  void test('ORT input/output names, types and shapes match the manifests', () => {
    for (const name of NAMES) {
      const s = get(sessions, name);
      const m = get(manifests, name);
      assert.deepEqual(s.inputNames, m.inputs.map((i) => i.name), name);
      assert.deepEqual(s.outputNames, m.outputs.map((o) => o.name), name);
      const meta = [...s.inputMetadata, ...s.outputMetadata];
      const specs = [...m.inputs, ...m.outputs];
      for (const [i, md] of meta.entries()) {
        assert.ok(md.isTensor);
        assert.equal(md.type, specs[i]?.dtype);
        assert.deepEqual(md.shape, specs[i]?.shape);
      }
    }
  });

  void test('inline test vectors reproduce, including a state fed back from h_out', async () => {
    for (const name of NAMES) {
      const m = get(manifests, name);
      for (const [i, tv] of m.testVectors.entries()) {
        const got = await run(name, tv.inputs);
        for (const [out, exp] of Object.entries(tv.expected)) {
          const y = got[out];
          assert.ok(y, `${name} vector ${i}: output ${out}`);
          assert.equal(y.length, exp.values.length);
          exp.values.forEach((e, k) => assert.ok(Math.abs((y[k] ?? NaN) - e) <= tv.tolerance, `${name} vector ${i} ${out}[${k}]: ${y[k]} vs ${e}`));
        }
        // fp32: 1e-4 relative to the largest expected magnitude (two significant digits).
        const largest = Math.max(1, ...Object.values(tv.expected).flatMap((e) => e.values.map(Math.abs)));
        assert.ok(tv.tolerance <= 1.06e-4 * largest, `${name} tolerance ${tv.tolerance}`);
      }
    }
    // line-state: the second vector's h is the first vector's h_out, and it is not zero.
    const [v1, v2] = get(manifests, 'line-state').testVectors;
    assert.deepEqual(v2?.inputs.h?.values, v1?.expected.h_out?.values);
    assert.ok(v2?.inputs.h?.values.some((v) => v !== 0));
  });

  void test('the detector sidecar: size and sha256 as declared, its vector reproduces', async () => {
    const m = get(manifests, 'conveyor-parts');
    const tvf = m.testVectorsFile;
    assert.ok(tvf);
    const bytes = await readFile(join(MODELS_DIR, tvf.file));
    assert.equal(bytes.length, tvf.size);
    assert.equal(createHash('sha256').update(bytes).digest('hex'), tvf.sha256);
    const arrays = readNpz(bytes, { maxBytes: 64 * 1024 * 1024, maxEntries: 16 });
    assert.deepEqual(Object.keys(arrays).sort(), ['scene0.in.images', 'scene0.out.output0']);
    const input = arrays['scene0.in.images'];
    const expected = arrays['scene0.out.output0'];
    assert.ok(input && expected && input.data instanceof Float32Array && expected.data instanceof Float32Array);
    assert.deepEqual(input.dims, [1, 3, 640, 640]);
    assert.deepEqual(expected.dims, [1, 7, 8400]);
    const got = (await run('conveyor-parts', { images: { dims: input.dims, values: input.data } })).output0;
    assert.ok(got);
    let worst = 0;
    expected.data.forEach((e, k) => (worst = Math.max(worst, Math.abs((got[k] ?? NaN) - e))));
    assert.ok(worst <= tvf.tolerance, `max difference ${worst} > ${tvf.tolerance}`);
  });

  void test('the detector finds the parts of a fresh scene (simple YOLOv8 decode and NMS)', async () => {
    const m = get(manifests, 'conveyor-parts');
    assert.ok(m.postprocessing.kind === 'detection');
    const { scoreThreshold, iouThreshold, labels } = m.postprocessing;
    for (const seed of [31_337, 4242]) {
      const scene = conveyorScene(createRng(seed), { count: 5 });
      const { data, box } = letterboxTensor(scene);
      const t0 = performance.now();
      const out = (await run('conveyor-parts', { images: { dims: [1, 3, 640, 640], values: data } })).output0;
      const ms = performance.now() - t0;
      assert.ok(out);
      const n = 8400;
      const C = labels.length;
      const cand: { b: [number, number, number, number]; score: number; label: number }[] = [];
      for (let i = 0; i < n; i++) {
        let label = 0;
        for (let k = 1; k < C; k++) if ((out[(4 + k) * n + i] ?? 0) > (out[(4 + label) * n + i] ?? 0)) label = k;
        const score = out[(4 + label) * n + i] ?? 0;
        if (score < scoreThreshold) continue;
        const [cx, cy, w, h] = [0, 1, 2, 3].map((r) => out[r * n + i] ?? 0) as [number, number, number, number];
        // Back to frame pixels: undo the letterbox (scale 1, rows padded by 80).
        cand.push({ b: [cx - w / 2 - box.padX, cy - h / 2 - box.padY, cx + w / 2 - box.padX, cy + h / 2 - box.padY], score, label });
      }
      const area = (b: readonly number[]): number => ((b[2] ?? 0) - (b[0] ?? 0)) * ((b[3] ?? 0) - (b[1] ?? 0));
      const overlap = (a: readonly number[], b: readonly number[]): number => {
        const w = Math.min(a[2] ?? 0, b[2] ?? 0) - Math.max(a[0] ?? 0, b[0] ?? 0);
        const h = Math.min(a[3] ?? 0, b[3] ?? 0) - Math.max(a[1] ?? 0, b[1] ?? 0);
        return w > 0 && h > 0 ? (w * h) / (area(a) + area(b) - w * h) : 0;
      };
      cand.sort((p, q) => q.score - p.score);
      const kept: typeof cand = [];
      for (const c of cand) if (kept.every((k) => k.label !== c.label || overlap(k.b, c.b) <= iouThreshold)) kept.push(c);
      assert.equal(kept.length, scene.parts.length, `seed ${seed}: ${kept.length} detections for ${scene.parts.length} parts (${ms.toFixed(1)} ms)`);
      for (const p of scene.parts) {
        const hit = kept.find((k) => labels[k.label] === p.cls && overlap(k.b, [p.x1, p.y1, p.x2, p.y2]) >= 0.5);
        assert.ok(hit, `seed ${seed}: ${p.cls} at ${p.x1.toFixed(0)},${p.y1.toFixed(0)} not found`);
      }
    }
  });

  void test('bearing-anomaly: faulty windows score above the threshold, healthy ones below', async () => {
    const m = get(manifests, 'bearing-anomaly');
    assert.ok(m.postprocessing.kind === 'anomaly');
    const { threshold } = m.postprocessing;
    const src = source(m, 'window', 'window');
    const score = async (w: Float64Array): Promise<number> => {
      const x = Float32Array.from(w, (v, i) => (v - (src.features[i % 3]?.mean ?? 0)) / (src.features[i % 3]?.std ?? 1));
      const y = (await run('bearing-anomaly', { window: { dims: [1, 64, 3], values: x } })).reconstruction;
      assert.ok(y);
      return x.reduce((s, v, i) => s + (v - (y[i] ?? 0)) ** 2, 0) / x.length;
    };
    const rng = createRng(55_555);
    const healthy: number[] = [];
    const faulty: number[] = [];
    for (let i = 0; i < 100; i++) healthy.push(await score(vibrationWindow(rng, 64)));
    for (let i = 0; i < 10; i++) faulty.push(await score(vibrationWindow(rng, 64, { fault: 'outer_race', severity: 1.3 })));
    for (let i = 0; i < 10; i++) faulty.push(await score(vibrationWindow(rng, 64, { fault: 'looseness', severity: 1 })));
    const median = [...healthy].sort((a, b) => a - b)[50] ?? NaN;
    // Every faulty window scores above a typical healthy one; the threshold separates the sets
    // up to the calibrated ~0.5% false-alarm rate.
    assert.ok(Math.min(...faulty) > 1.5 * median, `faulty min ${Math.min(...faulty)} vs healthy median ${median}`);
    assert.ok(healthy.filter((v) => v > threshold).length <= 3, `healthy above ${threshold}: ${healthy.filter((v) => v > threshold).length} of 100`);
    assert.ok(faulty.filter((v) => v > threshold).length >= 18, `faulty above ${threshold}: ${faulty.filter((v) => v > threshold).length} of 20`);
  });

  void test('spindle-rul: error on fresh spindles within the reported MAE band, features from the agent window code', async () => {
    const m = get(manifests, 'spindle-rul');
    const mae = made.find((x) => x.name === 'spindle-rul')?.metrics.maeH ?? NaN;
    const acc = new WindowAccumulator(source(m, 'features', 'window'));
    const rng = createRng(24_680);
    const errors: number[] = [];
    const byStage: { early: number[]; late: number[] } = { early: [], late: [] };
    for (let l = 0; l < 20; l++) {
      const life = spindleLife(rng);
      for (let k = 0; k < 10; k++) {
        const hours = rng.uniform(0, life.life);
        const burst = spindleBurst(rng, life, hours);
        acc.clear();
        let feats: Float32Array | undefined;
        for (let t = 0; t < SPINDLE_BURST; t++) feats = acc.push({ ts: t, values: burst.subarray(t * SPINDLE_CHANNELS.length, (t + 1) * SPINDLE_CHANNELS.length) })?.data;
        assert.ok(feats);
        const pred = (await run('spindle-rul', { features: { dims: [1, feats.length], values: feats } })).rul?.[0] ?? NaN;
        const truth = Math.min(150, life.life - hours);
        errors.push(Math.abs(pred - truth));
        (truth < 40 ? byStage.late : truth >= 150 ? byStage.early : []).push(pred);
      }
    }
    const fresh = errors.reduce((a, b) => a + b, 0) / errors.length;
    assert.ok(fresh <= mae * 1.35 && fresh >= mae * 0.65, `fresh MAE ${fresh.toFixed(1)} h vs reported ${mae} h`);
    const avg = (v: number[]): number => v.reduce((a, b) => a + b, 0) / v.length;
    assert.ok(avg(byStage.late) < 60 && avg(byStage.early) > 110, `late ${avg(byStage.late)}, early ${avg(byStage.early)}`);
  });

  void test('line-state: the score depends on the fed-back state; a drag shows only through it', async () => {
    const m = get(manifests, 'line-state');
    assert.ok(m.postprocessing.kind === 'anomaly');
    const { threshold } = m.postprocessing;
    const feats = source(m, 'x', 'reading').features;
    const scale = (r: readonly number[]): Float32Array => Float32Array.from(r, (v, c) => (v - (feats[c]?.mean ?? 0)) / (feats[c]?.std ?? 1));
    const seq = lineSequence(createRng(97_531), 500, { onset: 100, ramp: 250, magnitude: 1.2 }).readings;
    let h: Float32Array = new Float32Array(6);
    let withState = 0;
    let withoutState = 0;
    for (const r of seq) {
      const x = { dims: [1, 4], values: scale(r) };
      const res = await run('line-state', { x, h: { dims: [1, 6], values: h } });
      withState = Math.max(withState, res.score?.[0] ?? 0);
      withoutState = Math.max(withoutState, (await run('line-state', { x, h: { dims: [1, 6], values: new Float32Array(6) } })).score?.[0] ?? 0);
      assert.ok(res.h_out);
      h = res.h_out;
    }
    assert.ok(withState > threshold, `with state: max score ${withState} vs threshold ${threshold}`);
    assert.ok(withoutState < threshold, `one reading at a time: max score ${withoutState}`);
    // Same reading, two states: different outputs.
    const x = { dims: [1, 4], values: scale(seq[seq.length - 1] ?? []) };
    const a = await run('line-state', { x, h: { dims: [1, 6], values: h } });
    const b = await run('line-state', { x, h: { dims: [1, 6], values: new Float32Array(6) } });
    assert.notDeepEqual(Array.from(a.h_out ?? []), Array.from(b.h_out ?? []));
    assert.ok((a.score?.[0] ?? 0) > (b.score?.[0] ?? 0) * 5);
  });

  void test('regeneration: cached by its own stamp; the same bytes again', async () => {
    const t0 = performance.now();
    assert.deepEqual(await makeModelsV2({ outDir: MODELS_DIR }), made);
    assert.ok(performance.now() - t0 < 1000, 'cached run should not regenerate');
    assert.ok(!made.some((m) => m.name.startsWith('machine-state')), 'the v1 set has its own stamp');
    const rebuilt = buildLineState()[0];
    assert.ok(rebuilt);
    assert.ok(Buffer.from(rebuilt.onnx).equals(await readFile(join(MODELS_DIR, 'line-state.onnx'))), 'line-state bytes differ when rebuilt');
    // On a copy: the stamp accepts intact files and refuses a missing sidecar.
    const files = [STAMP_FILE_V2, ...made.flatMap((m) => [m.onnxPath, m.manifestPath, ...(m.testVectorsPath ? [m.testVectorsPath] : [])]).map((p) => basename(p))];
    for (const f of files) await copyFile(join(MODELS_DIR, f), join(dir, f));
    assert.deepEqual(cachedModelsV2(dir)?.map((m) => m.name), NAMES);
    await rm(join(dir, 'conveyor-parts.vectors.npz'));
    assert.equal(cachedModelsV2(dir), undefined, 'a missing sidecar means regenerate');
  });
});
