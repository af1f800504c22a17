/**
 * A release whose test vectors live in an .npz sidecar (issue #13: `testVectorsFile`, so a
 * 640×640 model does not need a 22 MB JSON manifest) is a release of two artifacts. Real hub
 * in-process (registry, probe child, artifact store), the real CLI for the push, a real agent
 * (updater, validator child, worker-thread ORT) for the install:
 *  - the hub asks for the sidecar at announce, refuses the model before it, checks its bytes,
 *    and its probe runs the sidecar's cases (a sidecar whose expected outputs are wrong is a 422
 *    naming the case, not a release);
 *  - `edgefleet model push` uploads the sidecar found beside the manifest;
 *  - rolled out to a device, the agent downloads it with the model, validates with it, and keeps it beside the
 *    installed manifest, where activation runs it again.
 * Model: spindle-rul from the v2 demo set (scripts/make-models.ts), its inline vectors moved
 * into the sidecar.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Agent } from '../../agent/main.ts';
import { makeModelsV2 } from '../../scripts/make-models.ts';
import { CLI, REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { toTensorData } from '../../shared/tensor.ts';
import { encodeTestVectorsNpz, testVectorsFileEntry, type RecordedCase } from '../../shared/test-vectors.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';

const SIDECAR = 'spindle-rul.vectors.npz';

/** The manifest's inline cases as sidecar cases; `skew` is added to every expected output. */
function sidecarOf(m: ManifestV2, skew = 0): Buffer {
  const dtypeOf = (name: string, specs: readonly { name: string; dtype: string }[]): RecordedCase['inputs'][string]['dtype'] =>
    (specs.find((s) => s.name === name)?.dtype ?? 'float32') as RecordedCase['inputs'][string]['dtype'];
  const cases: RecordedCase[] = m.testVectors.map((tv) => ({
    inputs: Object.fromEntries(Object.entries(tv.inputs).map(([n, t]) => [n, { dtype: dtypeOf(n, m.inputs), dims: t.dims, data: toTensorData(dtypeOf(n, m.inputs), t.values) }])),
    outputs: Object.fromEntries(
      Object.entries(tv.expected).map(([n, t]) => [n, { dtype: 'float32' as const, dims: t.dims, data: Float32Array.from(t.values, (v) => v + skew) }]),
    ),
  }));
  return encodeTestVectorsNpz(cases);
}

describe('a release with a test-vector sidecar', () => {
  const fleet = new InProcessFleet();
  let base: ManifestV2;
  let onnx: Buffer;
  let onnxPath: string;
  let agent: Agent;

  const api = (path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${fleet.hub.httpUrl}${path}`, { ...init, headers: { ...(init.headers as Record<string, string> | undefined), authorization: `Bearer ${fleet.hub.adminToken}` } });
  const put = (path: string, body: Buffer): Promise<Response> => api(path, { method: 'PUT', body, headers: { 'content-type': 'application/octet-stream' } });
  /** The manifest of `version` with its vectors in a sidecar of `bytes`. */
  const withSidecar = (version: string, bytes: Buffer): ManifestV2 =>
    ManifestV2Schema.parse({ ...base, version, testVectors: [], testVectorsFile: testVectorsFileEntry(bytes, SIDECAR, base.testVectors[0]!.tolerance) });
  const announce = async (m: ManifestV2): Promise<{ upload: { path: string }; vectors?: { path: string; file: string; sha256: string; size: number } }> => {
    const res = await api('/v1/models', { method: 'POST', body: JSON.stringify({ manifest: m }), headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 202, await res.clone().text());
    return (await res.json()) as never;
  };

  before(async () => {
    const spindle = (await makeModelsV2({ outDir: MODELS_DIR })).find((m) => m.name === 'spindle-rul');
    assert.ok(spindle, 'the v2 demo set has spindle-rul');
    base = ManifestV2Schema.parse(JSON.parse(await readFile(spindle.manifestPath, 'utf8')));
    assert.ok(base.testVectors.length > 0);
    onnxPath = spindle.onnxPath;
    onnx = await readFile(onnxPath);
    await fleet.startHub();
  });

  after(() => fleet.stop());

  test('the hub asks for the sidecar, refuses the model before it and bytes that differ, and probes with it', async () => {
    const good = sidecarOf(base);
    const m = withSidecar('2.0.0', good);
    const a = await announce(m);
    assert.deepEqual(a.vectors && { path: a.vectors.path, file: a.vectors.file, size: a.vectors.size }, { path: '/v1/models/spindle-rul/2.0.0/vectors', file: SIDECAR, size: good.length });

    const early = await put(a.upload.path, onnx);
    assert.equal(early.status, 409);
    assert.match(((await early.json()) as { error: { message: string } }).error.message, /PUT its test vectors file spindle-rul\.vectors\.npz to \/v1\/models\/spindle-rul\/2\.0\.0\/vectors before the model/);

    const tampered = Buffer.from(good);
    tampered[tampered.length - 30]! ^= 0xff;
    assert.equal((await put(a.vectors!.path, tampered)).status, 400, 'bytes with another sha256 are refused');
    assert.equal((await put(a.vectors!.path, good.subarray(0, good.length - 1))).status, 400, 'a short sidecar is refused');
    assert.equal((await put(a.vectors!.path, good)).status, 201);
    const released = await put(a.upload.path, onnx);
    assert.equal(released.status, 201, await released.clone().text());

    // The probe runs the sidecar's cases: expected outputs off by 1 are a refusal naming the case.
    const skewed = sidecarOf(base, 1);
    const bad = withSidecar('2.0.1', skewed);
    const b = await announce(bad);
    assert.equal((await put(b.vectors!.path, skewed)).status, 201);
    const refused = await put(b.upload.path, onnx);
    assert.equal(refused.status, 422);
    const err = ((await refused.json()) as { error: { code: string; message: string } }).error;
    assert.equal(err.code, 'BAD_MODEL');
    assert.match(err.message, new RegExp(`${SIDECAR.replaceAll('.', '\\.')} case 0 output \\w+: value 0 is`));
  });

  /** The real CLI, run asynchronously: the hub answering it lives in this process. */
  const cli = (args: string[]): Promise<{ status: number; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const env = { ...process.env, EDGEFLEET_HUB: fleet.hub.httpUrl, EDGEFLEET_TOKEN: fleet.hub.adminToken };
      execFile(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO_ROOT, env, encoding: 'utf8', timeout: 120_000 }, (err, stdout, stderr) =>
        resolve({ status: err ? Number((err as { code?: unknown }).code ?? 1) : 0, stdout, stderr }),
      );
    });

  test('`edgefleet model push` uploads the sidecar beside the manifest', async () => {
    const dir = join(fleet.root, 'push');
    mkdirSync(dir, { recursive: true });
    const bytes = sidecarOf(base);
    writeFileSync(join(dir, SIDECAR), bytes);
    writeFileSync(join(dir, 'm.json'), JSON.stringify(withSidecar('2.1.0', bytes)));
    const r = await cli(['model', 'push', onnxPath, '--manifest', join(dir, 'm.json'), '--json']);
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.equal((JSON.parse(r.stdout) as { version: string }).version, '2.1.0');
    // A sidecar that is not the manifest's is refused locally, before anything is sent.
    writeFileSync(join(dir, SIDECAR), sidecarOf(base, 1));
    writeFileSync(join(dir, 'm.json'), JSON.stringify(withSidecar('2.2.0', bytes)));
    const bad = await cli(['model', 'push', onnxPath, '--manifest', join(dir, 'm.json')]);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /spindle-rul\.vectors\.npz has sha256 [0-9a-f]{64}, the manifest says/);
  });

  test('the agent downloads the sidecar with the model, validates with it and keeps it beside the installed manifest', async () => {
    const keys = (await fleet.api<{ keys: { publicKeyPem: string }[] }>('GET', '/v1/keys')).keys;
    mkdirSync(join(fleet.root, 'keys'), { recursive: true });
    writeFileSync(join(fleet.root, 'keys', 'hub.pem'), keys[0]!.publicKeyPem);
    agent = await fleet.startAgent('sidecar-1', {
      hub: { httpUrl: fleet.hub.httpUrl },
      models: [{ manifest: join(MODELS_DIR, 'spindle-rul.manifest.json') }],
      pipelines: [{ name: 'rul', model: 'spindle-rul', input: { type: 'mqtt' } }],
      updates: { trustedKeys: [join(fleet.root, 'keys', 'hub.pem')], probationMs: 0 },
    });
    await until(() => agent.link.connected, 20_000, 'agent connected');
    // The operator's path: a rollout to this device; the hub sends the install command and
    // serves both artifacts to the device it assigned them to.
    await fleet.api('POST', '/v1/rollouts', { model: 'spindle-rul', version: '2.0.0', target: { devices: ['sidecar-1'] }, waves: ['100%'], bakeMs: 0 });
    const healthz = async (): Promise<string[]> => ((await (await fetch(`http://127.0.0.1:${agent.httpPort}/healthz`)).json()) as { models: string[] }).models;
    await until(async () => (await healthz()).includes('spindle-rul@2.0.0'), 60_000, 'spindle-rul@2.0.0 serving');
    const versionDir = readdirSync(join(agent.config.dataDir, 'models', 'spindle-rul')).find((d) => d.startsWith('2.0.0-'));
    assert.ok(versionDir, 'version dir');
    const kept = join(agent.config.dataDir, 'models', 'spindle-rul', versionDir, SIDECAR);
    assert.ok(existsSync(kept), 'the sidecar is kept beside the installed manifest');
    assert.deepEqual(readFileSync(kept), sidecarOf(base));
  });
});
