/**
 * Manifest v2 at the hub's registry (issue #13): a real hub (port 0, temp dir) probes each
 * pushed model in its guarded child against the manifest — every input and output by name,
 * dtype, rank and fixed dims, the sources against the tensors, the decoder against the output
 * layout, multi-input test vectors — and refuses a manifest that lies, saying what differs.
 * Models: the v2 demo models (scripts/make-models.ts makeModelsV2), generated, never downloaded.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createHub, type Hub } from '../../hub/main.ts';
import { loadHubConfig } from '../../hub/config.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { makeModelsV2 } from '../../scripts/make-models.ts';
import { silentLogger } from '../../shared/log.ts';
import { MODELS_DIR } from '../helpers/fleet-in-process.ts';

void describe('hub registry: manifest v2', () => {
  let dir: string;
  let hub: Hub;
  const models: Record<string, { manifest: ManifestV2; bytes: Buffer; sidecar?: Buffer }> = {};

  const api = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${hub.httpUrl}${path}`, { ...init, headers: { ...(init.headers as Record<string, string> | undefined), authorization: `Bearer ${hub.adminToken}` } });
  /** POST the manifest, PUT its test-vector sidecar when it names one (the demo model's), PUT the artifact; the last PUT's answer. */
  async function push(manifest: ManifestV2, bytes: Buffer): Promise<{ status: number; body: { error?: { code: string; message: string; details?: { problems?: string[] } } } }> {
    const a = await api('/v1/models', { method: 'POST', body: JSON.stringify({ manifest }), headers: { 'content-type': 'application/json' } });
    if (a.status !== 202) return { status: a.status, body: (await a.json()) as never };
    const announced = (await a.json()) as { vectors?: { path: string } };
    const sidecar = models[manifest.name]?.sidecar;
    if (announced.vectors && sidecar) {
      const v = await api(announced.vectors.path, { method: 'PUT', body: sidecar, headers: { 'content-type': 'application/octet-stream' } });
      if (v.status !== 201) return { status: v.status, body: (await v.json()) as never };
    }
    const put = await api(`/v1/models/${manifest.name}/${manifest.version}/artifact`, { method: 'PUT', body: bytes, headers: { 'content-type': 'application/octet-stream' } });
    return { status: put.status, body: (await put.json()) as never };
  }
  const edit = (m: ManifestV2, version: string, f: (x: ManifestV2) => unknown): ManifestV2 => ManifestV2Schema.parse(f(structuredClone({ ...m, version })));

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-hub-v2-'));
    // The repo's models/ (cached by stamp): generating the v2 set costs ~20 s of CPU.
    for (const m of await makeModelsV2({ outDir: MODELS_DIR })) {
      const manifest = ManifestV2Schema.parse(JSON.parse(await readFile(m.manifestPath, 'utf8')));
      const tf = manifest.testVectorsFile;
      models[m.name] = { manifest, bytes: await readFile(m.onnxPath), ...(tf ? { sidecar: await readFile(join(dirname(m.manifestPath), tf.file)) } : {}) };
    }
    const config = loadHubConfig({ env: {}, overrides: { dataDir: join(dir, 'hub'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } } });
    hub = await createHub(config, { log: silentLogger() });
    await hub.start(new AbortController().signal);
  });

  after(async () => {
    if (hub) assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('the v2 demo models are probed and released: window, derived-feature, stateful and detector models', async () => {
    for (const name of ['bearing-anomaly', 'spindle-rul', 'line-state', 'conveyor-parts']) {
      const m = models[name]!;
      const res = await push(m.manifest, m.bytes);
      assert.equal(res.status, 201, `${name}: ${JSON.stringify(res.body)}`);
    }
    const shown = (await (await api('/v1/models/line-state/1.0.0')).json()) as { manifest: ManifestV2 };
    assert.equal(shown.manifest.manifestVersion, 2);
    assert.deepEqual(shown.manifest.inputs.map((i) => i.source.kind), ['reading', 'state']);
  });

  test('a manifest that does not describe its model is refused with 422 naming every difference', async () => {
    const cases: [string, ManifestV2, string, RegExp][] = [
      ['renamed input', edit(models['line-state']!.manifest, '9.0.1', (m) => {
        const x = m;
        x.inputs[1]!.name = 'hidden';
        for (const tv of x.testVectors) {
          tv.inputs['hidden'] = tv.inputs['h']!;
          delete tv.inputs['h'];
        }
        return x;
      }), 'line-state', /input hidden: not in the model \(it has x, h\).*input h: in the model but not in the manifest/],
      ['wrong dtype', edit(models['bearing-anomaly']!.manifest, '9.0.2', (m) => ({ ...(m), inputs: (m).inputs.map((i) => ({ ...i, dtype: 'float16' })) })), 'bearing-anomaly', /input window: dtype is float32 in the model, float16 in the manifest/],
      ['wrong window size', edit(models['bearing-anomaly']!.manifest, '9.0.3', (m) => {
        const x = m;
        const src = x.inputs[0]!.source;
        if (src.kind === 'window') src.size = 32;
        return x;
      }), 'bearing-anomaly', /layout TF gives \[32, 3\]/],
      ['labels that do not fit the yolov8 output', edit(models['conveyor-parts']!.manifest, '9.0.4', (m) => {
        const x = m;
        if (x.postprocessing.kind === 'detection') x.postprocessing.labels = ['part', 'defect'];
        return x;
      }), 'conveyor-parts', /yolov8 with 2 labels needs 6 values per candidate, output output0 has 7/],
      ['a state fed from the wrong output', edit(models['line-state']!.manifest, '9.0.5', (m) => {
        const x = m;
        const src = x.inputs[1]!.source;
        if (src.kind === 'state') src.output = 'score';
        return x;
      }), 'line-state', /input h \(state\): output score has 1 values, the input takes 6/],
    ];
    for (const [what, manifest, model, problem] of cases) {
      const res = await push(manifest, models[model]!.bytes);
      assert.equal(res.status, 422, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error?.code, 'BAD_MODEL', what);
      assert.match(res.body.error?.message ?? '', problem, what);
      const listed = await api(`/v1/models/${manifest.name}/${manifest.version}`);
      assert.equal(listed.status, 404, `${what}: nothing released`);
      await listed.body?.cancel();
    }
  });

  test('test vectors that the model does not reproduce are refused, by output name', async () => {
    const m = edit(models['line-state']!.manifest, '9.1.0', (x) => {
      const tv = (x).testVectors[0]!;
      tv.expected['score']!.values = tv.expected['score']!.values.map((v) => v + 1);
      return x;
    });
    const res = await push(m, models['line-state']!.bytes);
    assert.equal(res.status, 422, JSON.stringify(res.body));
    assert.match(res.body.error?.message ?? '', /test vector 0 output score: value 0 is .*, expected .* ± /);
  });

  test('a manifest over the cap is refused with 413 naming the setting and the sidecar', async () => {
    const config = loadHubConfig({ env: {}, overrides: { dataDir: join(dir, 'hub-small'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, models: { maxManifestBytes: 1024 } } });
    const small = await createHub(config, { log: silentLogger() });
    await small.start(new AbortController().signal);
    try {
      const res = await fetch(`${small.httpUrl}/v1/models`, {
        method: 'POST',
        body: JSON.stringify({ manifest: models['line-state']!.manifest }),
        headers: { 'content-type': 'application/json', authorization: `Bearer ${small.adminToken}` },
      });
      assert.equal(res.status, 413);
      const err = ((await res.json()) as { error: { code: string; message: string } }).error;
      assert.equal(err.code, 'PAYLOAD_TOO_LARGE');
      assert.match(err.message, /models\.maxManifestBytes/);
      assert.match(err.message, /testVectorsFile/);
    } finally {
      assert.deepEqual(await small.stop(), []);
    }
  });
});
