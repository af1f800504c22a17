/**
 * The generated demo models: manifests valid and true to their files, ORT metadata matching
 * the manifests, test vectors reproducible, int8 models really quantized (parsed back from
 * their bytes), accuracy on a fresh synthetic held-out set, and byte-identical regeneration.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { ManifestSchema } from '../../shared/manifest.ts';
import type { Manifest, ManifestV1 } from '../../shared/manifest.ts';
import { cachedModels, makeModels, STAMP_FILE } from '../../scripts/make-models.ts';
import type { MadeModel } from '../../scripts/make-models.ts';
import { decodeModel, DataType } from '../../scripts/lib/onnx/proto.ts';
import { referenceBins } from '../../scripts/lib/models.ts';
import { createRng, mulberry32 } from '../../scripts/lib/rng.ts';
import {
  encodePartPng,
  MACHINE_STATES,
  PART_SIZE,
  partDataset,
  partImage,
  SENSOR_FEATURES,
  sensorDataset,
  sensorSample,
} from '../../scripts/lib/synthetic.ts';
import { v1 } from '../helpers/manifest-v1.ts';

const NAMES = ['machine-state', 'machine-state-fp32', 'part-defect', 'part-defect-fp32'];

let dir: string;
let made: MadeModel[];
const manifests = new Map<string, ManifestV1>();
const sessions = new Map<string, ort.InferenceSession>();

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-models-'));
  made = await makeModels({ outDir: dir, force: true });
  for (const m of made) {
    manifests.set(m.name, v1(ManifestSchema.parse(JSON.parse(await readFile(m.manifestPath, 'utf8')))));
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

/** Argmax predictions of `session` on `rows` concatenated model inputs. */
async function predict(session: ort.InferenceSession, manifest: Manifest, data: Float32Array, rows: number): Promise<number[]> {
  const spec = manifest.inputs[0];
  assert.ok(spec);
  const dims = spec.shape.map((d) => (typeof d === 'number' ? d : rows));
  const res = await session.run({ [spec.name]: new ort.Tensor('float32', data, dims) });
  const out = res[manifest.outputs[0]?.name ?? '']?.data;
  assert.ok(out instanceof Float32Array);
  const k = out.length / rows;
  return Array.from({ length: rows }, (_, i) => {
    const row = out.subarray(i * k, (i + 1) * k);
    return row.indexOf(Math.max(...row));
  });
}

void describe('synthetic generators', () => {
  void test('are deterministic per seed and accept a bare mulberry32 source', () => {
    assert.deepEqual(sensorDataset(createRng(9), 5), sensorDataset(createRng(9), 5));
    assert.notDeepEqual(sensorDataset(createRng(9), 5).x, sensorDataset(createRng(10), 5).x);
    assert.deepEqual(sensorSample(mulberry32(3), 'worn'), sensorSample(mulberry32(3), 'worn'));
    assert.deepEqual(partImage(mulberry32(4), { defective: true }), partImage(mulberry32(4), { defective: true }));
    assert.equal(SENSOR_FEATURES.length, 8);
    for (const s of MACHINE_STATES) {
      const v = sensorSample(createRng(1), s);
      assert.equal(v.length, SENSOR_FEATURES.length);
      assert.ok(v.every((x) => Number.isFinite(x) && x > 0));
    }
  });

  void test('sensor classes differ in the physically expected direction', () => {
    const d = sensorDataset(createRng(11), 300);
    const meanOf = (cls: number, f: number): number => {
      const rows = d.x.filter((_, i) => d.y[i] === cls);
      return rows.reduce((s, r) => s + (r[f] ?? 0), 0) / rows.length;
    };
    // vib_rms, vib_kurtosis and temp_c rise with wear.
    for (const f of [0, 2, 7]) {
      assert.ok(meanOf(0, f) < meanOf(1, f) && meanOf(1, f) < meanOf(2, f), `feature ${SENSOR_FEATURES[f]}`);
    }
  });

  void test('part images: a bright disc on a dark background; brightness scales them; 1-channel PNG', async () => {
    const img = partImage(createRng(5), { defective: false });
    assert.equal(img.length, PART_SIZE * PART_SIZE);
    const centre = img[32 * PART_SIZE + 32] ?? 0;
    const corner = img[2 * PART_SIZE + 2] ?? 0;
    assert.ok(centre > 130 && corner < 90, `centre ${centre}, corner ${corner}`);
    const dim = partImage(createRng(5), { defective: false, brightness: 0.5, noise: 0 });
    const lit = partImage(createRng(5), { defective: false, brightness: 1, noise: 0 });
    const mean = (a: Uint8Array): number => a.reduce((s, v) => s + v, 0) / a.length;
    assert.ok(Math.abs(mean(dim) / mean(lit) - 0.5) < 0.02);
    const png = await encodePartPng(img);
    assert.equal((await sharp(png).metadata()).channels, 1);
    const { data, info } = await sharp(png).toColourspace('b-w').raw().toBuffer({ resolveWithObject: true });
    assert.equal(info.width, PART_SIZE);
    assert.equal(info.channels, 1);
    assert.deepEqual(new Uint8Array(data), img);
  });

  void test('reference bins: deciles as edges, counts cover every value', () => {
    const values = Array.from({ length: 1000 }, (_, i) => i / 10);
    const bins = referenceBins('x', values);
    assert.equal(bins.edges.length, 9);
    assert.equal(bins.counts.length, 10);
    assert.equal(bins.counts.reduce((a, b) => a + b, 0), 1000);
    assert.ok(bins.counts.every((c) => c === 100));
  });
});

void describe('generated demo models', () => {
  void test('four models with valid manifests whose sha256 and size match the files', async () => {
    assert.deepEqual(made.map((m) => m.name).sort(), [...NAMES].sort());
    for (const m of made) {
      const manifest = get(manifests, m.name);
      const bytes = await readFile(m.onnxPath);
      assert.equal(manifest.artifact.file, `${m.name}.onnx`);
      assert.equal(manifest.artifact.size, bytes.length);
      assert.equal(manifest.artifact.sha256, createHash('sha256').update(bytes).digest('hex'));
      assert.equal(manifest.name, m.name);
      assert.equal(manifest.version, '1.0.0');
      assert.equal(manifest.quantization, m.name.endsWith('-fp32') ? 'fp32' : 'int8-qdq');
      assert.ok(manifest.testVectors.length >= 3 && manifest.testVectors.length <= 8);
      assert.equal(manifest.evaluation?.accuracy, Number(m.accuracy.toPrecision(6)));
    }
    const ms = get(manifests, 'machine-state');
    assert.equal(ms.preprocessing.kind, 'tabular');
    if (ms.preprocessing.kind === 'tabular') assert.deepEqual(ms.preprocessing.features.map((f) => f.name), [...SENSOR_FEATURES]);
    assert.deepEqual(ms.drift?.features.map((f) => f.name), [...SENSOR_FEATURES]);
    for (const f of ms.drift?.features ?? []) assert.equal(f.counts.reduce((a, b) => a + b, 0), 3000);
    assert.deepEqual(ms.postprocessing, { output: 'logits', labels: ['normal', 'worn', 'failing'] });
    const pd = get(manifests, 'part-defect');
    assert.equal(pd.preprocessing.kind, 'image');
    if (pd.preprocessing.kind === 'image') {
      assert.equal(pd.preprocessing.width, 64);
      assert.equal(pd.preprocessing.colour, 'gray');
      assert.equal(pd.preprocessing.layout, 'NCHW');
    }
    assert.deepEqual(pd.postprocessing.labels, ['good', 'defective']);
  });

  void test('ORT input/output names, shapes and types match the manifests', () => {
    for (const name of NAMES) {
      const s = get(sessions, name);
      const m = get(manifests, name);
      assert.deepEqual(s.inputNames, m.inputs.map((i) => i.name));
      assert.deepEqual(s.outputNames, m.outputs.map((o) => o.name));
      const meta = [...s.inputMetadata, ...s.outputMetadata];
      const specs = [...m.inputs, ...m.outputs];
      for (const [i, md] of meta.entries()) {
        assert.ok(md.isTensor);
        assert.equal(md.type, specs[i]?.dtype);
        assert.deepEqual(md.shape, specs[i]?.shape);
      }
    }
  });

  void test('every test vector reproduces within its tolerance', async () => {
    for (const name of NAMES) {
      const s = get(sessions, name);
      const m = get(manifests, name);
      for (const [i, tv] of m.testVectors.entries()) {
        const res = await s.run({ [m.inputs[0]?.name ?? '']: new ort.Tensor('float32', Float32Array.from(tv.input), tv.shape) });
        const got = res[m.outputs[0]?.name ?? '']?.data;
        assert.ok(got instanceof Float32Array);
        assert.equal(got.length, tv.expected.length);
        tv.expected.forEach((e, k) => assert.ok(Math.abs((got[k] ?? NaN) - e) <= tv.tolerance, `${name} vector ${i}[${k}]: ${got[k]} vs ${e}`));
      }
      // Tolerances are meaningful: fp32 tight, int8 well below the logit margins.
      const tol = Math.max(...m.testVectors.map((tv) => tv.tolerance));
      assert.ok(m.quantization === 'fp32' ? tol <= 1e-2 : tol <= 0.25, `${name} tolerance ${tol}`);
    }
  });

  void test('int8 models carry int8 weights and QDQ nodes; fp32 twins carry neither', async () => {
    for (const name of NAMES) {
      const model = decodeModel(await readFile(join(dir, `${name}.onnx`)));
      assert.equal(model.irVersion, 8);
      assert.deepEqual(model.opsetImport.map((o) => [o.domain, o.version]), [['', 17]]);
      const ops = model.graph.node.map((n) => n.opType);
      const int8 = model.graph.initializer.filter((t) => t.dataType === DataType.INT8);
      assert.equal(model.graph.input[0]?.type.tensorType.shape.dim[0]?.dimParam, 'N');
      assert.equal(model.graph.output[0]?.type.tensorType.shape.dim[0]?.dimParam, 'N');
      if (name.endsWith('-fp32')) {
        assert.equal(int8.length, 0);
        assert.ok(!ops.includes('QuantizeLinear') && !ops.includes('DequantizeLinear'));
        assert.ok(model.graph.initializer.every((t) => t.dataType === DataType.FLOAT));
      } else {
        assert.ok(int8.length >= 2, `${name}: ${int8.length} int8 initializers`);
        for (const t of int8) {
          const count = t.dims.reduce((a, b) => a * b, 1);
          assert.equal(t.rawData.length, count);
          // 7-bit weights (reduce range) are part of the design, see scripts/lib/quant.ts.
          assert.ok(Array.from(new Int8Array(t.rawData.buffer, t.rawData.byteOffset, t.rawData.length)).every((v) => Math.abs(v) <= 63));
        }
        assert.ok(ops.filter((o) => o === 'QuantizeLinear').length >= 2);
        assert.ok(ops.filter((o) => o === 'DequantizeLinear').length >= 4);
        // Every weight-bearing op reads all its inputs through DequantizeLinear.
        const dqOut = new Set(model.graph.node.filter((n) => n.opType === 'DequantizeLinear').flatMap((n) => n.output));
        for (const n of model.graph.node.filter((x) => x.opType === 'Conv' || x.opType === 'Gemm')) {
          assert.ok(n.input.every((i) => dqOut.has(i)), `${name}: ${n.opType} inputs ${n.input.join(',')}`);
        }
      }
    }
  });

  void test('fresh held-out data: int8 accuracy >= 0.90 and within 2 points of fp32', async () => {
    const accuracy = async (name: string, data: Float32Array, labels: readonly number[]): Promise<number> => {
      const pred = await predict(get(sessions, name), get(manifests, name), data, labels.length);
      return pred.filter((p, i) => p === labels[i]).length / labels.length;
    };
    // Inputs are built with the manifests' own preprocessing, so that is checked too.
    const sensors = sensorDataset(createRng(987_654), 400);
    const ms = get(manifests, 'machine-state');
    assert.ok(ms.preprocessing.kind === 'tabular');
    const feats = ms.preprocessing.features;
    const sData = Float32Array.from(sensors.x.flatMap((r) => r.map((v, i) => (v - (feats[i]?.mean ?? 0)) / (feats[i]?.std ?? 1))));
    const parts = partDataset(createRng(876_543), 400);
    const pd = get(manifests, 'part-defect');
    assert.ok(pd.preprocessing.kind === 'image');
    const { scale, mean, std } = pd.preprocessing;
    const pData = Float32Array.from(parts.images.flatMap((im) => Array.from(im, (p) => (p * scale - (mean[0] ?? 0)) / (std[0] ?? 1))));
    for (const [base, data, labels] of [
      ['machine-state', sData, sensors.y],
      ['part-defect', pData, parts.y],
    ] as const) {
      const q = await accuracy(base, data, labels);
      const f = await accuracy(`${base}-fp32`, data, labels);
      assert.ok(q >= 0.9, `${base} int8 accuracy ${q}`);
      assert.ok(Math.abs(q - f) <= 0.02, `${base} int8 ${q} vs fp32 ${f}`);
    }
  });

  void test('regeneration is cached by the stamp, and --force rewrites identical bytes', async () => {
    const saved = new Map<string, Buffer>();
    for (const name of NAMES) {
      saved.set(`${name}.onnx`, await readFile(join(dir, `${name}.onnx`)));
      saved.set(`${name}.manifest.json`, await readFile(join(dir, `${name}.manifest.json`)));
    }
    const t0 = performance.now();
    assert.deepEqual(await makeModels({ outDir: dir }), made);
    assert.ok(performance.now() - t0 < 1000, 'cached run should not regenerate');
    assert.deepEqual(await makeModels({ outDir: dir, force: true }), made);
    for (const [file, bytes] of saved) assert.ok(bytes.equals(await readFile(join(dir, file))), `${file} changed`);

    // A stamp from another generator version, or a damaged artifact, means regenerate.
    const stampPath = join(dir, STAMP_FILE);
    const stampText = await readFile(stampPath, 'utf8');
    const stamp = JSON.parse(stampText) as { generator: string };
    await writeFile(stampPath, JSON.stringify({ ...stamp, generator: 'edgefleet-demo-models/0' }));
    assert.equal(cachedModels(dir), undefined);
    await writeFile(stampPath, stampText);
    assert.deepEqual(cachedModels(dir), made);
    const onnx = join(dir, 'machine-state.onnx');
    await writeFile(onnx, 'not a model');
    assert.equal(cachedModels(dir), undefined);
    await makeModels({ outDir: dir });
    assert.ok(saved.get('machine-state.onnx')?.equals(await readFile(onnx)));
    assert.deepEqual(cachedModels(dir), made);
  });
});
