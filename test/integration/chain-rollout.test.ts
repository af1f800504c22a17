/**
 * A chain rolled out as one unit (issue #13): rollout spec `with`, InstallArgs.bundle, the
 * updater installing a bundle. Real parts: the hub in-process (registry, probe child, rollout
 * engine, artifact access), a real agent (updater, validator child, worker-thread ORT) running a
 * pipeline `fe → head`. The two stages are tiny MLPs built in code (test/helpers/tiny-model.ts):
 * v1 passes 4 values from fe to head, v2 passes 6, so neither v2 fits the other's v1.
 *   - fe@2 alone: refused on the device before download (NOT_SERVED, the chain problem named);
 *   - fe@2 `with` head@2: both installed, inference through the chain gives v2's score;
 *   - `model.rollback` of head@2 alone: fe goes back to v1 with it;
 *   - a bundle whose second release fails the validator: neither activated, v1 of both serve.
 * The bad bundle is signed by a second key the agent trusts (the hub would refuse wrong test
 * vectors at push) and reuses the v2 artifacts, which the hub serves this device; it goes to the
 * updater directly, as HubLink hands it a verified command.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import ort from 'onnxruntime-node';
import type { Agent } from '../../agent/main.ts';
import { openLocalModel, type LocalModel } from '../../agent/models/local-models.ts';
import { ModelUpdater, type ModelSwapper } from '../../agent/updater/updater.ts';
import { createBody, formatStatus } from '../../cli/commands/rollout.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { silentLogger } from '../../shared/log.ts';
import { generateSigningKey, signRelease, trustedKeyFromPem, type SignedRelease } from '../../shared/signing.ts';
import { InProcessFleet, until } from '../helpers/fleet-in-process.ts';
import { tinyModelBytes } from '../helpers/tiny-model.ts';

interface Stage {
  manifest: ManifestV2;
  bytes: Buffer;
  path: string;
  run: (input: number[]) => Promise<number[]>;
}

const X = [0.7, -1.3];

describe('a chain rolled out as one unit', () => {
  const fleet = new InProcessFleet();
  const sessions: ort.InferenceSession[] = [];
  const stages: Record<string, Stage> = {};
  let agent: Agent;
  const figures: string[] = [];
  const testKey = generateSigningKey();

  /** A stage: [1, inputDim] → [1, outputDim] `logits`; fe takes readings a, b, head takes fe's output. */
  async function stage(name: 'fe' | 'head', version: string, inputDim: number, outputDim: number, seed: number): Promise<Stage> {
    const bytes = Buffer.from(tinyModelBytes({ inputDim, outputDim, batch: 1, inputName: name === 'fe' ? 'x' : 'e', seed }));
    const dir = join(fleet.root, 'models', `${name}-${version}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'model.onnx'), bytes);
    const session = await ort.InferenceSession.create(join(dir, 'model.onnx'), { intraOpNumThreads: 1 });
    sessions.push(session);
    const input = name === 'fe' ? 'x' : 'e';
    const run = async (v: number[]): Promise<number[]> =>
      Array.from((await session.run({ [input]: new ort.Tensor('float32', Float32Array.from(v), [1, inputDim]) }))['logits']!.data as Float32Array);
    const probe = Array.from({ length: inputDim }, (_, i) => (i % 2 ? -0.5 : 0.25) * (i + 1));
    const manifest = ManifestV2Schema.parse({
      manifestVersion: 2,
      name,
      version,
      task: name === 'fe' ? 'embedding' : 'anomaly',
      quantization: 'fp32',
      artifact: { file: 'model.onnx', sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length },
      inputs: [
        name === 'fe'
          ? { name: 'x', dtype: 'float32', shape: [1, 2], source: { kind: 'reading', features: [{ name: 'a' }, { name: 'b' }] } }
          : { name: 'e', dtype: 'float32', shape: [1, inputDim], source: { kind: 'upstream', output: 'logits' } },
      ],
      outputs: [{ name: 'logits', dtype: 'float32', shape: [1, outputDim] }],
      postprocessing: name === 'fe' ? { kind: 'embedding', outputs: ['logits'], maxElements: outputDim } : { kind: 'anomaly', output: 'logits', index: 0, threshold: 1000 },
      testVectors: [{ inputs: { [input]: { dims: [1, inputDim], values: probe } }, expected: { logits: { dims: [1, outputDim], values: await run(probe) } }, tolerance: 1e-4 }],
    });
    const path = join(dir, 'manifest.json');
    writeFileSync(path, JSON.stringify(manifest));
    return { manifest, bytes, path, run };
  }

  async function release(s: Stage): Promise<void> {
    await fleet.api('POST', '/v1/models', { manifest: s.manifest });
    const res = await fetch(`${fleet.hub.httpUrl}/v1/models/${s.manifest.name}/${s.manifest.version}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${fleet.hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: s.bytes,
    });
    assert.equal(res.status, 201, await res.text());
  }

  const served = async (): Promise<string[]> => ((await (await fetch(`http://127.0.0.1:${agent.httpPort}/healthz`)).json()) as { models: string[] }).models;
  const infer = async (): Promise<{ score: number; chain: { name: string; version: string }[] }> => {
    const res = await fetch(`http://127.0.0.1:${agent.httpPort}/v1/infer/emb`, { method: 'POST', body: JSON.stringify({ values: X }), headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 200, await res.clone().text());
    return (await res.json()) as { score: number; chain: { name: string; version: string }[] };
  };
  const expected = async (fe: Stage, head: Stage): Promise<number> => (await head.run(await fe.run(X)))[0]!;
  /** `s`'s artifact as `version`, signed by the test's key; `skew` is added to its expected outputs. */
  const sign = (s: Stage, version: string, counter: number, skew = 0): SignedRelease => {
    const m = s.manifest;
    const tv = m.testVectors.map((v) => ({ ...v, expected: Object.fromEntries(Object.entries(v.expected).map(([k, t]) => [k, { ...t, values: t.values.map((x) => x + skew) }])) }));
    return signRelease({ counter, manifest: { ...m, version, testVectors: tv }, createdAt: new Date().toISOString() }, testKey);
  };
  const path = (s: Stage): string => `/v1/artifacts/${s.manifest.artifact.sha256}`;

  type Status = { state: string; with: { model: string; version: string }[]; devices: { id: string; state: string; detail: string | null }[] };
  const rollout = async (body: Record<string, unknown>, settled: (s: Status) => boolean): Promise<Status> => {
    const created = await fleet.api<{ id: string }>('POST', '/v1/rollouts', { target: { devices: ['chain-1'] }, waves: ['100%'], bakeMs: 0, ...body });
    let last: Status | undefined;
    await until(
      async () => {
        last = await fleet.api<Status>('GET', `/v1/rollouts/${created.id}`);
        return settled(last);
      },
      20_000,
      `rollout ${JSON.stringify(body)} to settle`,
    );
    return last!;
  };

  before(async () => {
    await fleet.startHub();
    stages['fe1'] = await stage('fe', '1.0.0', 2, 4, 1);
    stages['head1'] = await stage('head', '1.0.0', 4, 1, 2);
    stages['fe2'] = await stage('fe', '2.0.0', 2, 6, 3);
    stages['head2'] = await stage('head', '2.0.0', 6, 1, 4);
    for (const s of Object.values(stages)) await release(s);
    const keys = (await fleet.api<{ keys: { publicKeyPem: string }[] }>('GET', '/v1/keys')).keys;
    mkdirSync(join(fleet.root, 'keys'), { recursive: true });
    writeFileSync(join(fleet.root, 'keys', 'hub.pem'), keys[0]!.publicKeyPem);
    writeFileSync(join(fleet.root, 'keys', 'test.pem'), testKey.publicKeyPem);
    agent = await fleet.startAgent('chain-1', {
      hub: { httpUrl: fleet.hub.httpUrl },
      models: [{ manifest: stages['fe1'].path }, { manifest: stages['head1'].path }],
      pipelines: [{ name: 'emb', model: 'fe', chain: ['head'], input: { type: 'mqtt', format: 'json' } }],
      updates: { trustedKeys: [join(fleet.root, 'keys', 'hub.pem'), join(fleet.root, 'keys', 'test.pem')], probationMs: 0 },
    });
    await until(() => agent.link.connected, 20_000, 'agent connected');
  });

  after(async () => {
    await fleet.stop();
    for (const s of sessions) await s.release();
    console.log(`chain-rollout: ${figures.join('; ')}`);
  });

  test('a rollout names its other releases with `with` (API and CLI): each must exist, a model only once', async () => {
    const post = async (body: Record<string, unknown>): Promise<{ status: number; message: string }> => {
      const res = await fetch(`${fleet.hub.httpUrl}/v1/rollouts`, {
        method: 'POST',
        headers: { authorization: `Bearer ${fleet.hub.adminToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'fe', version: '2.0.0', target: { devices: ['chain-1'] }, ...body }),
      });
      return { status: res.status, message: ((await res.json()) as { error?: { message: string } }).error?.message ?? '' };
    };
    assert.deepEqual(await post({ with: [{ model: 'head', version: '9.9.9' }] }), { status: 404, message: 'with: no release head@9.9.9' });
    const twice = await post({ with: [{ model: 'fe', version: '1.0.0' }] });
    assert.equal(twice.status, 400);
    assert.match(twice.message, /model fe is named twice/);
    assert.equal((await post({ with: Array.from({ length: 9 }, (_, i) => ({ model: `m${i}`, version: '1' })) })).status, 400, 'at most 8');
    const body = createBody('fe@2.0.0', { target: ['devices=chain-1'], with: ['head@2.0.0'] });
    assert.deepEqual(body['with'], [{ model: 'head', version: '2.0.0' }]);
  });

  test('v1 of both serve through the chain', async () => {
    const r = await infer();
    assert.deepEqual(r.chain, [
      { name: 'fe', version: '1.0.0' },
      { name: 'head', version: '1.0.0' },
    ]);
    assert.ok(Math.abs(r.score - (await expected(stages['fe1']!, stages['head1']!))) < 1e-4, `score ${r.score}`);
  });

  test('fe@2 alone is refused on the device (NOT_SERVED: it breaks the chain); v1 of both keep serving', async () => {
    const t0 = performance.now();
    const s = await rollout({ model: 'fe', version: '2.0.0' }, (x) => x.devices[0]?.state === 'failed');
    assert.match(s.devices[0]?.detail ?? '', /pipeline emb: fe@2\.0\.0 output logits gives 6 values, not whole rows of 4 for head input e/);
    assert.deepEqual((await served()).sort(), ['fe@1.0.0', 'head@1.0.0']);
    const rejected = (await fleet.telemetry('chain-1', 'events')).map((r) => r.body).filter((b) => b['event'] === 'rejected');
    assert.equal(rejected[0]?.['code'], 'NOT_SERVED');
    figures.push(`fe@2 alone refused (NOT_SERVED) in ${Math.round(performance.now() - t0)} ms`);
  });

  test('fe@2 with head@2 installs both as one unit; inference through the chain gives v2\'s score', async () => {
    const t0 = performance.now();
    const s = await rollout({ model: 'fe', version: '2.0.0', with: [{ model: 'head', version: '2.0.0' }] }, (x) => x.devices[0]?.state === 'succeeded' || x.devices[0]?.state === 'failed');
    assert.equal(s.devices[0]?.state, 'succeeded', s.devices[0]?.detail ?? '');
    assert.deepEqual(s.with, [{ model: 'head', version: '2.0.0' }]);
    assert.match(formatStatus(s as unknown as Parameters<typeof formatStatus>[0]), /^ {2}with {6}head@2\.0\.0 \(installed as one unit\)$/m);
    const ms = Math.round(performance.now() - t0);
    assert.deepEqual((await served()).sort(), ['fe@2.0.0', 'head@2.0.0']);
    const r = await infer();
    assert.deepEqual(r.chain, [
      { name: 'fe', version: '2.0.0' },
      { name: 'head', version: '2.0.0' },
    ]);
    const want = await expected(stages['fe2']!, stages['head2']!);
    assert.ok(Math.abs(r.score - want) < 1e-4, `score ${r.score}, v2 gives ${want}`);
    // One committed state names the unit; each release's event names the whole bundle.
    const slots = agent.updater!.modelState();
    assert.deepEqual(slots.map((x) => `${x.name}@${x.active?.version}`), ['fe@2.0.0', 'head@2.0.0']);
    await until(
      async () => (await fleet.telemetry('chain-1', 'events')).filter((e) => e.body['event'] === 'installed').length === 2,
      10_000,
      'both installed events at the hub',
    );
    for (const e of (await fleet.telemetry('chain-1', 'events')).filter((x) => x.body['event'] === 'installed')) {
      assert.deepEqual((e.body['bundle'] as { name: string }[]).map((b) => b.name), ['fe', 'head']);
    }
    const history = (await fleet.api<{ history: { event: string; name?: string }[] }>('GET', '/v1/devices/chain-1/history')).history;
    assert.ok(history.some((h) => h.event === 'installed' && h.name === 'head'), 'the device history shows the bundled release installed');
    figures.push(`fe@2 with head@2 installed as one unit in ${ms} ms, score ${(await expected(stages['fe1']!, stages['head1']!)).toFixed(4)} (v1) → ${r.score.toFixed(4)} (v2)`);
  });

  test('a model.rollback of head@2 alone rolls back fe@2 with it', async () => {
    const t0 = performance.now();
    const out = await agent.updater!.rollback({ name: 'head', version: '2.0.0', reason: 'test: the head misbehaves' });
    assert.equal(out.state, 'rolled_back');
    assert.deepEqual(out.bundle?.map((b) => `${b.name}@${b.version}:${b.state}`).sort(), ['fe@2.0.0:rolled_back', 'head@2.0.0:rolled_back']);
    assert.deepEqual((await served()).sort(), ['fe@1.0.0', 'head@1.0.0']);
    const r = await infer();
    assert.ok(Math.abs(r.score - (await expected(stages['fe1']!, stages['head1']!))) < 1e-4);
    figures.push(`rollback of head@2 restored both v1 in ${Math.round(performance.now() - t0)} ms`);
  });

  test('a bundle whose second release fails validation activates neither; v1 of both keep serving', async () => {
    // Same artifacts as v2 (the hub serves them to this device), new versions; head's expected output is off by 1.
    const fe = sign(stages['fe2']!, '2.0.1', 1_000_000);
    const head = sign(stages['head2']!, '2.0.1', 1_000_001, 1);
    const t0 = performance.now();
    await assert.rejects(agent.updater!.install({ release: fe, artifactPath: path(stages['fe2']!), bundle: [{ release: head, artifactPath: path(stages['head2']!) }] }), (err: Error & { details?: { phase?: string } }) => {
      assert.equal(err.details?.phase, 'validate', err.message);
      assert.match(err.message, /validation failed/);
      return true;
    });
    const ms = Math.round(performance.now() - t0);
    assert.deepEqual((await served()).sort(), ['fe@1.0.0', 'head@1.0.0']);
    assert.deepEqual(agent.updater!.modelState().map((x) => `${x.name}@${x.active?.version}`), ['fe@1.0.0', 'head@1.0.0']);
    const r = await infer();
    assert.ok(Math.abs(r.score - (await expected(stages['fe1']!, stages['head1']!))) < 1e-4);
    // Both releases are named as refused; only head's is recorded as failed (fe itself was fine).
    await until(
      async () => (await fleet.telemetry('chain-1', 'events')).filter((e) => e.body['event'] === 'rejected' && e.body['version'] === '2.0.1').length === 2,
      10_000,
      'both rejected events at the hub',
    );
    const slots = agent.updater!.modelState();
    assert.ok(slots.find((x) => x.name === 'head')?.failed.some((f) => f.version === '2.0.1' && f.phase === 'validate'));
    assert.ok(!slots.find((x) => x.name === 'fe')?.failed.some((f) => f.version === '2.0.1'));
    figures.push(`bundle with a bad second release refused at validate in ${ms} ms, v1 of both kept`);
  });

  /** A second updater for this device's identity (own dir), its model set a fake that can refuse a swap. */
  async function updater(dir: string, refuse?: string): Promise<{ u: ModelUpdater; swaps: string[] }> {
    const serving = new Map<string, LocalModel>();
    for (const s of [stages['fe1']!, stages['head1']!]) serving.set(s.manifest.name, await openLocalModel(s.path));
    const swaps: string[] = [];
    const models: ModelSwapper = {
      swap: (m) => {
        swaps.push(m.key);
        if (m.key === refuse) return Promise.reject(new Error(`test: ${m.key} does not load`));
        const old = serving.get(m.manifest.name);
        serving.set(m.manifest.name, m);
        return Promise.resolve(old);
      },
    };
    const u = new ModelUpdater({
      identity: { deviceId: 'chain-1' },
      hubHttpUrl: fleet.hub.httpUrl,
      hubToken: agent.config.hub.token!,
      dir,
      trustedKeys: [trustedKeyFromPem(testKey.publicKeyPem)],
      probationMs: 0,
      download: { stallTimeoutMs: 10_000, maxBytes: 1 << 20, attempts: 1, backoff: { initialMs: 100, maxMs: 100, factor: 2, jitter: 0 } },
      validator: { timeoutMs: 30_000, maxRssBytes: 1 << 30, addressSpaceBudgetBytes: 2 ** 31 },
      keepVersions: 2,
      configManifests: [stages['fe1']!.path, stages['head1']!.path],
      models,
      events: { append: () => Promise.resolve() },
      log: silentLogger(),
    });
    await u.start(new AbortController().signal);
    return { u, swaps };
  }

  test('an activation that fails on the second release swaps the first back; a restart where one release cannot start takes both back', async () => {
    const dir = join(fleet.root, 'updater-2');
    const bundle = (version: string, counter: number): Parameters<ModelUpdater['install']>[0] => ({
      release: sign(stages['fe2']!, version, counter),
      artifactPath: path(stages['fe2']!),
      bundle: [{ release: sign(stages['head2']!, version, counter + 1), artifactPath: path(stages['head2']!) }],
    });
    const a = await updater(dir, 'head@2.0.2');
    await assert.rejects(a.u.install(bundle('2.0.2', 2_000_000)), (err: Error & { details?: { phase?: string } }) => err.details?.phase === 'activate');
    assert.deepEqual(a.swaps, ['fe@2.0.2', 'head@2.0.2', 'fe@1.0.0'], 'fe@2.0.2 was swapped in, then back');
    assert.deepEqual(a.u.modelState().map((x) => `${x.name}@${x.active?.version}`), ['fe@1.0.0', 'head@1.0.0']);
    await a.u.stop();

    const b = await updater(dir);
    const out = await b.u.install(bundle('2.0.3', 2_000_010));
    assert.deepEqual(out.bundle?.map((x) => `${x.name}@${x.version}:${x.state}`), ['fe@2.0.3:active', 'head@2.0.3:active']);
    const state = JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')) as { models: Record<string, { bundle?: { name: string }[] }> };
    assert.deepEqual(state.models['fe']?.bundle?.map((x) => x.name), ['fe', 'head'], 'state.json records the unit');
    await b.u.stop();
    // head's installed files go bad while the agent is down: at start-up it falls back, and fe with it.
    const onnx = join(dir, 'head', '2.0.3-2000011', 'model.onnx');
    const bytes = readFileSync(onnx);
    bytes[bytes.length - 1]! ^= 0xff;
    writeFileSync(onnx, bytes);
    const c = await updater(dir);
    assert.deepEqual(c.u.startupManifests(), [stages['fe1']!.path, stages['head1']!.path]);
    const fe = c.u.modelState().find((x) => x.name === 'fe');
    assert.equal(fe?.active?.version, '1.0.0');
    assert.match(fe?.failed.at(-1)?.message ?? '', /head@2\.0\.3, installed with it, could not start/);
    await c.u.stop();
    figures.push('a failed second activation swapped the first back; a restart with one release unusable started v1 of both');
  });
});
