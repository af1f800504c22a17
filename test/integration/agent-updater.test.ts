/**
 * The agent's model updater against a real hub in-process (broker, device auth, registry,
 * artifact store) and a real agent (worker-thread ORT, SQLite outbox, validator child):
 * a hub-signed release installs and hot-swaps; tampered, replayed, mis-targeted and hostile
 * releases are each refused before activation, the old model keeps serving, and a load loop
 * running through all of it sees zero failed inferences.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Agent } from '../../agent/main.ts';
import { PARTIAL_DIR, QUARANTINE_DIR } from '../../agent/updater/updater.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { generateSigningKey, type SignedRelease } from '../../shared/signing.ts';
import { ModelEventSchema, type InstallOutcome } from '../../shared/updates.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';
import { memoryBombModelBytes, segfaultModelBytes } from '../helpers/hostile-models.ts';
import { v1 } from '../helpers/manifest-v1.ts';
import { installArgs, ReleaseServer, signedRelease } from '../helpers/release-server.ts';

const DEVICE = 'upd-1';

function post(port: number, path: string, body: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', () => resolve(0));
    req.end(body);
  });
}

async function healthz(port: number): Promise<{ models: string[] }> {
  return (await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()) as { models: string[] };
}

describe('agent model updater', () => {
  const fleet = new InProcessFleet();
  let server: ReleaseServer;
  let agent: Agent;
  let fp32: Manifest;
  let fp32Bytes: Buffer;
  let updatesDir: string;
  let hubCounter = 0;
  const load = { ok: 0, failed: [] as number[], stop: false, done: Promise.resolve() };

  /** Expects the install to be refused in `phase` with `code`; the active model must not change. */
  async function expectRejected(release: unknown, phase: string, code: RegExp, extra?: { artifactPath?: string }): Promise<void> {
    const before = (await healthz(agent.httpPort)).models;
    const args = { ...installArgs(release as SignedRelease), ...extra };
    await assert.rejects(agent.updater!.install(args), (err: Error & { details?: { phase?: string; code?: string } }) => {
      assert.equal(err.details?.phase, phase, err.message);
      assert.match(String(err.details?.code), code, err.message);
      return true;
    });
    assert.deepEqual((await healthz(agent.httpPort)).models, before, 'the old model keeps serving');
  }

  before(async () => {
    await fleet.startHub();
    fp32 = ManifestSchema.parse(JSON.parse(await readFile(join(MODELS_DIR, 'machine-state-fp32.manifest.json'), 'utf8')));
    fp32 = { ...fp32, name: 'machine-state' };
    fp32Bytes = await readFile(join(MODELS_DIR, 'machine-state-fp32.onnx'));
    server = new ReleaseServer(fleet.hub.httpUrl);
    await server.start();
    const keys = (await fleet.api<{ keys: { keyId: string; publicKeyPem: string }[] }>('GET', '/v1/keys')).keys;
    const { writeFileSync, mkdirSync } = await import('node:fs');
    mkdirSync(join(fleet.root, 'keys'), { recursive: true });
    writeFileSync(join(fleet.root, 'keys', 'hub.pem'), keys[0]!.publicKeyPem);
    server.writePublicKey(join(fleet.root, 'keys', 'test.pem'));
    agent = await fleet.startAgent(DEVICE, {
      hub: { httpUrl: server.url },
      identity: { group: 'line-1', labels: { site: 'a' } },
      updates: {
        trustedKeys: [join(fleet.root, 'keys', 'hub.pem'), join(fleet.root, 'keys', 'test.pem')],
        probationMs: 0,
        download: { stallTimeoutMs: 1000, attempts: 3, backoff: { initialMs: 50, maxMs: 200 } },
        validator: { timeoutMs: 30_000, maxRssBytes: 512 * 2 ** 20, addressSpaceBudgetBytes: 1024 * 2 ** 20 },
      },
    });
    updatesDir = join(agent.config.dataDir, 'models');
    await until(() => agent.link.connected, 20_000, 'agent connected');
    // The load loop: real HTTP inference requests for the whole suite.
    load.done = (async () => {
      let i = 0;
      while (!load.stop) {
        const status = await post(agent.httpPort, '/v1/infer/vibration', JSON.stringify({ id: `l-${i++}`, values: [1, 2, 3, 4, 0.5, 0.3, 0.2, 40] }));
        if (status === 200) load.ok++;
        else load.failed.push(status);
      }
    })();
  });

  after(async () => {
    load.stop = true;
    await load.done;
    await server?.stop();
    await fleet.stop();
  });

  test('a hub-signed release installs, hot-swaps, commits state, reports an event and a hello', async () => {
    // Pushed through the hub's registry API: probed there, signed with the hub's key.
    const manifest = { ...fp32, version: '1.1.0' };
    await fleet.api('POST', '/v1/models', { manifest });
    const put = await fetch(`${fleet.hub.httpUrl}/v1/models/machine-state/1.1.0/artifact`, {
      method: 'PUT',
      body: fp32Bytes,
      headers: { authorization: `Bearer ${fleet.hub.adminToken}`, 'content-type': 'application/octet-stream' },
    });
    assert.equal(put.status, 201, await put.clone().text());
    const shown = await fleet.api<{ release: SignedRelease; counter: number }>('GET', '/v1/models/machine-state/1.1.0');
    hubCounter = shown.counter;
    // This drives the updater by hand, without a rollout: the hub serves an artifact only to the
    // devices it is assigned to (issue #14), so the test's server serves these bytes itself.
    server.add(fp32Bytes);
    const okBefore = load.ok;
    const outcome: InstallOutcome = await agent.updater!.install(installArgs(shown.release, { rolloutId: 'r-1' }));
    assert.deepEqual(outcome, { name: 'machine-state', version: '1.1.0', counter: hubCounter, state: 'active' });
    assert.deepEqual((await healthz(agent.httpPort)).models, ['machine-state@1.1.0']);
    // Same command again (the hub re-sends on reconnect): already active, nothing reinstalled.
    assert.equal((await agent.updater!.install(installArgs(shown.release))).state, 'already_active');

    const state = JSON.parse(readFileSync(join(updatesDir, 'state.json'), 'utf8')) as { models: Record<string, { active: { version: string; counter: number }; previous: { counter: number }; highestCounter: number }> };
    assert.equal(state.models['machine-state']?.active.version, '1.1.0');
    assert.equal(state.models['machine-state']?.previous.counter, 0, 'the config model is the previous version');
    assert.equal(state.models['machine-state']?.highestCounter, hubCounter);
    const dir = join(updatesDir, 'machine-state', `1.1.0-${hubCounter}`);
    assert.deepEqual(readdirSync(dir).sort(), ['manifest.json', 'model.onnx', 'release.json']);
    assert.deepEqual(readFileSync(join(dir, 'model.onnx')), fp32Bytes);
    assert.deepEqual(readdirSync(join(updatesDir, PARTIAL_DIR)), []);

    const slot = agent.updater!.modelState().find((s) => s.name === 'machine-state');
    assert.equal(slot?.active?.version, '1.1.0');
    assert.equal(slot?.installing, undefined);
    // The event reached the hub through the outbox.
    await until(async () => (await fleet.telemetry(DEVICE)).some((r) => r.stream === 'events'), 20_000, 'model event at the hub');
    const ev = (await fleet.telemetry(DEVICE)).filter((r) => r.stream === 'events').map((r) => ModelEventSchema.parse(r.body));
    assert.equal(ev[0]?.event, 'installed');
    assert.equal(ev[0]?.rolloutId, 'r-1');
    assert.equal(ev[0]?.previous?.counter, 0);
    await until(() => load.ok > okBefore + 20, 20_000, 'inferences after the swap');
    const metrics = await agent.registry.metrics();
    assert.match(metrics, /edgefleet_agent_model_active\{[^}]*name="machine-state",version="1\.1\.0"/);
    assert.match(metrics, /edgefleet_agent_model_installs_total\{[^}]*result="installed"/);
  });

  test('tampering: wrong signature, unknown key, replay, other device, flipped byte, wrong size, truncated — each refused before activation', async () => {
    const k = server.key;
    // Wrong signature: the body changed after signing.
    const forged = signedRelease(k, fp32, fp32Bytes, { counter: 200, version: '2.0.0' });
    (forged.release.manifest as { description?: string }).description = 'changed after signing';
    server.add(fp32Bytes);
    await expectRejected(forged, 'verify', /BAD_SIGNATURE/);
    // Unknown key.
    await expectRejected(signedRelease(generateSigningKey(), fp32, fp32Bytes, { counter: 201, version: '2.0.1' }), 'verify', /UNKNOWN_KEY/);
    // Replayed older release: validly signed, counter not above the one accepted.
    await expectRejected(signedRelease(k, fp32, fp32Bytes, { counter: hubCounter, version: '0.9.0' }), 'verify', /REPLAY/);
    // Meant for another device, another group.
    await expectRejected(signedRelease(k, fp32, fp32Bytes, { counter: 202, version: '2.0.2', target: { devices: ['someone-else'] } }), 'verify', /NOT_TARGETED/);
    await expectRejected(signedRelease(k, fp32, fp32Bytes, { counter: 203, version: '2.0.3', target: { group: 'line-2' } }), 'verify', /NOT_TARGETED/);
    // One flipped byte in the served artifact.
    const flipped = Buffer.concat([fp32Bytes, Buffer.from('flip')]);
    server.add(flipped, 'flip');
    await expectRejected(signedRelease(k, fp32, flipped, { counter: 204, version: '2.0.4' }), 'download', /BAD_MODEL/);
    // Signed size smaller than what the server sends: aborted the moment it exceeds it.
    const big = Buffer.concat([fp32Bytes, Buffer.from('big!')]);
    const bigSha = server.add(big);
    await expectRejected(signedRelease(k, fp32, big, { counter: 205, version: '2.0.5', size: big.length - 2 }), 'download', /BAD_MODEL/);
    // Signed size larger than the artifact: the download can never complete.
    await expectRejected(signedRelease(k, fp32, big, { counter: 206, version: '2.0.6', size: big.length + 10, sha256: bigSha }), 'download', /UNAVAILABLE/);
    // Truncated on every attempt: the server closes early.
    const cut = Buffer.concat([fp32Bytes, Buffer.from('cut!')]);
    server.add(cut, 'truncate');
    await expectRejected(signedRelease(k, fp32, cut, { counter: 207, version: '2.0.7' }), 'download', /UNAVAILABLE/);
    // artifactPath naming another artifact than the signed one.
    await expectRejected(signedRelease(k, fp32, fp32Bytes, { counter: 208, version: '2.0.8' }), 'verify', /BAD_RELEASE/, { artifactPath: `/v1/artifacts/${bigSha}` });

    assert.deepEqual((await healthz(agent.httpPort)).models, ['machine-state@1.1.0']);
    const slot = agent.updater!.modelState().find((s) => s.name === 'machine-state')!;
    assert.equal(slot.highestCounter, hubCounter, 'no refused release raised the counter');
    assert.ok(slot.failed.some((f) => f.counter === 204 && f.phase === 'download'), JSON.stringify(slot.failed));
    assert.ok(slot.failed.some((f) => f.counter === 202 && f.phase === 'verify'));
    // A release that failed is not retried when the hub re-sends it.
    await expectRejected(signedRelease(k, fp32, flipped, { counter: 204, version: '2.0.4' }), 'verify', /FAILED_BEFORE/);
    assert.equal(load.failed.length, 0, `failed inferences: ${load.failed.join(',')}`);
  });

  test('a stalled download is aborted by the stall timer and resumed with Range + If-Range', async () => {
    // Larger, still the same model: a 4 KiB ModelProto.doc_string (field 6) appended.
    const bytes = Buffer.concat([fp32Bytes, Buffer.from([0x32, 0x80, 0x20]), Buffer.alloc(4096, 0x61)]);
    const sha = server.add(bytes, 'stall-once');
    const outcome = await agent.updater!.install(installArgs(signedRelease(server.key, fp32, bytes, { counter: 300, version: '3.0.0' })));
    assert.equal(outcome.state, 'active');
    const reqs = server.requests.filter((r) => r.sha === sha);
    assert.equal(reqs.length, 2, JSON.stringify(reqs));
    assert.equal(reqs[0]?.range, undefined);
    assert.equal(reqs[1]?.range, `bytes=${Math.floor(bytes.length / 2)}-`);
    assert.equal(reqs[1]?.ifRange, `"${sha}"`);
    assert.deepEqual((await healthz(agent.httpPort)).models, ['machine-state@3.0.0']);
  });

  test('hostile models: a segfaulting loader and a memory bomb die in the validator, are quarantined, the agent keeps serving', async () => {
    const shape = { inputDim: 8, outputDim: 3, inputName: fp32.inputs[0]!.name };
    for (const [i, bytes] of [segfaultModelBytes(shape), memoryBombModelBytes(shape, 4 * 2 ** 30)].entries()) {
      server.add(bytes);
      const rel = signedRelease(server.key, fp32, bytes, { counter: 400 + i, version: `4.0.${i}` });
      await expectRejected(rel, 'validate', /BAD_MODEL/);
    }
    const quarantined = readdirSync(join(updatesDir, QUARANTINE_DIR));
    assert.equal(quarantined.length, 2, quarantined.join(','));
    const failed = agent.updater!.modelState().find((s) => s.name === 'machine-state')!.failed.filter((f) => f.phase === 'validate');
    assert.equal(failed.length, 2);
    assert.match(failed[0]!.message, /SIGSEGV|could not be loaded safely/);
    assert.deepEqual((await healthz(agent.httpPort)).models, ['machine-state@3.0.0']);
    assert.equal(load.failed.length, 0, `failed inferences: ${load.failed.join(',')}`);
  });

  test('a release whose model fails its manifest test vectors on this device is refused in the validator; the old model keeps serving', async () => {
    // What a canary sees when a model passed at the hub but computes differently here (e.g. int8
    // kernels on another CPU): the signed manifest's expected outputs do not match.
    const fp32v1 = v1(fp32);
    const wrong = { ...fp32v1, testVectors: fp32v1.testVectors.map((tv) => ({ ...tv, expected: tv.expected.map((v) => v + 1) })) };
    const rel = signedRelease(server.key, wrong, fp32Bytes, { counter: 450, version: '4.5.0' });
    server.add(fp32Bytes);
    await expectRejected(rel, 'validate', /BAD_MODEL/);
    const failed = agent.updater!.modelState().find((s) => s.name === 'machine-state')!.failed.find((f) => f.version === '4.5.0');
    assert.equal(failed?.phase, 'validate');
    assert.match(failed?.message ?? '', /test vector/);
    assert.equal(load.failed.length, 0, `failed inferences: ${load.failed.join(',')}`);
  });

  test('model.rollback swaps back to the previous version and refuses the rolled-back one', async () => {
    const notActive = await agent.updater!.rollback({ name: 'machine-state', version: '9.9.9', reason: 'x' });
    assert.equal(notActive.state, 'not_active');
    const r = await agent.updater!.rollback({ name: 'machine-state', version: '3.0.0', reason: 'canary worse than control', rolloutId: 'r-3' });
    assert.equal(r.state, 'rolled_back');
    assert.deepEqual((await healthz(agent.httpPort)).models, ['machine-state@1.1.0']);
    const slot = agent.updater!.modelState().find((s) => s.name === 'machine-state')!;
    assert.equal(slot.active?.version, '1.1.0');
    assert.equal(slot.previous, undefined);
    assert.ok(slot.failed.some((f) => f.version === '3.0.0' && f.phase === 'rollback'));
    await until(async () => (await fleet.telemetry(DEVICE)).some((r) => r.stream === 'events' && (r.body as { event?: string }).event === 'rolled_back'), 20_000, 'rolled_back event');
    assert.ok(load.ok > 0);
    assert.equal(load.failed.length, 0, `failed inferences: ${load.failed.join(',')}`);
    assert.equal(existsSync(join(updatesDir, 'machine-state', '3.0.0-300')), true, 'kept on disk (keepVersions)');
  });
});
