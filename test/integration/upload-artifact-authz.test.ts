/**
 * Issue #14, device uploads and artifact authorization, against a real hub (aedes on port 0,
 * SQLite in a temp dir, releases pushed and probed through the API, a fake clock), with real
 * device credentials over fetch and scripted MQTT devices (test/integration/hub-rollouts-fixture.ts).
 *
 * Uploads: only against an open request the hub issued to that device (the drift.sample command
 * carries it), single-use, expiring, within a per-request and a rolling-day byte quota; the
 * agent's own uploader (agent/drift) answers a real drift.sample command end to end.
 * Artifacts: a device gets only the files of releases assigned to it (its rollout wave, its
 * installed versions); anything else is the 404 of an unknown artifact; decisions are cached.
 * Each test prints a `security: <class> ...` line with what it measured.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DriftConfigSchema, DriftMonitor } from '../../agent/drift/drift-monitor.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema } from '../../shared/manifest.ts';
import { SampleCommandArgsSchema } from '../../shared/protocol.ts';
import { v1 } from '../helpers/manifest-v1.ts';
import { DriftFixture } from './hub-drift-fixture.ts';
import { until, type Release, type ScriptedDevice } from './hub-rollouts-fixture.ts';

const row = (name: string, outcome: string): void => console.log(`security: ${name} ${outcome}`);
const KiB = 1024;
const LIMITS = { maxBytes: 64 * KiB, maxBytesPerDay: 200 * KiB, requestTtlMs: 60_000, maxItems: 1000 };

/** Hub settings: small sample quotas and a retraining hook that asks the devices an alert names for samples. */
const OVERRIDES = {
  drift: { samples: LIMITS },
  alerts: { retraining: { sampleDevices: true, maxSamples: 1000, pipelines: { 'machine-state': 'vibration' } } },
};

/** The drift fixture's hub (real hub, fake clock, scripted devices), with demo releases by file. */
class Fixture extends DriftFixture {
  /** Pushes a demo model file under its own manifest name and version through the API. */
  async releaseFile(model: string, version: string): Promise<Release> {
    const manifest = JSON.parse(await readFile(join(REPO_ROOT, 'models', `${model}.manifest.json`), 'utf8')) as Record<string, unknown>;
    await this.ok('POST', '/v1/models', { manifest: { ...manifest, version } });
    const res = await fetch(`${this.hub.httpUrl}/v1/models/${model}/${version}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${this.hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: await readFile(join(REPO_ROOT, 'models', `${model}.onnx`)),
    });
    const body = (await res.json()) as Release;
    assert.equal(res.status, 201, JSON.stringify(body));
    return { name: model, version, counter: body.counter, sha256: body.sha256 };
  }
}

interface Reply {
  status: number;
  code?: string;
  message?: string;
  reason?: string;
}

async function reply(res: Response): Promise<Reply> {
  const text = await res.text();
  const err = (text.startsWith('{') ? (JSON.parse(text) as { error?: { code: string; message: string } }) : {}).error;
  return { status: res.status, ...(err ? { code: err.code, message: err.message } : {}) };
}

describe('device uploads and artifact authorization (issue #14)', { timeout: 60_000 }, () => {
  let dir: string;
  let fx: Fixture;
  const devices: Record<string, ScriptedDevice> = {};

  const metric = async (name: string, labels: string): Promise<number> => {
    const line = (await fx.hub.registry.metrics()).split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  const refused = (reason: string): Promise<number> => metric('edgefleet_hub_sample_uploads_refused_total', `reason="${reason}"`);
  /** As the agent does: the request id in the body and (unless `inUrl` is false) in the URL. */
  const upload = async (deviceId: string, body: Record<string, unknown> | string, inUrl = true): Promise<Reply> => {
    const request = typeof body === 'string' ? undefined : (body.request as string | undefined);
    const query = request !== undefined && inUrl ? `?request=${request}` : '';
    const token = devices[deviceId]!.token;
    return reply(
      await fetch(`${fx.hub.httpUrl}/v1/samples/${deviceId}${query}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${deviceId}:${token}`, 'content-type': 'application/json' },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      }),
    );
  };
  const sample = (request: string | undefined, bytes = 100): Record<string, unknown> => ({
    pipeline: 'vibration',
    model: 'machine-state',
    version: '1.0.0',
    items: [{ id: 'r1', ts: fx.clock.now(), kind: 'json', data: { pad: 'x'.repeat(bytes) } }],
    ...(request ? { request } : {}),
  });
  const storedBytes = (deviceId: string): number => {
    const d = join(dir, 'hub', 'samples', deviceId);
    try {
      return readdirSync(d)
        .filter((f) => f.endsWith('.json'))
        .reduce((n, f) => n + readFileSync(join(d, f)).length, 0);
    } catch {
      return 0;
    }
  };
  const download = (deviceId: string, sha: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Response> =>
    fetch(`${fx.hub.httpUrl}/v1/artifacts/${sha}`, { method, headers: { authorization: `Bearer ${deviceId}:${devices[deviceId]!.token}`, ...headers } });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-upload-authz-'));
    fx = new Fixture(join(dir, 'hub'));
    await fx.start(OVERRIDES);
    for (const id of ['dev-a', 'dev-b', 'dev-c', 'w-1', 'w-2', 'w-3', 'dev-s']) devices[id] = await fx.register(id, id.startsWith('w-') ? 'wave' : 'solo');
  });

  after(async () => {
    await fx.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('uploads: unrequested refused (403, nothing stored), requested accepted once, another device cannot use the request', async () => {
    // The attack: a device streams uploads nobody asked for (it wrote 177 MiB before the fix).
    const big = JSON.stringify(sample(undefined, 2 * 1024 * KiB));
    const t0 = performance.now();
    const attempts = 20;
    for (let i = 0; i < attempts; i++) assert.equal((await upload('dev-a', big)).status, 403);
    const ms = performance.now() - t0;
    const first = await upload('dev-a', sample(undefined));
    assert.equal(first.status, 403);
    assert.equal(first.code, 'FORBIDDEN');
    assert.match(first.message ?? '', /no open sample request/);
    assert.equal(storedBytes('dev-a'), 0);
    assert.equal(await refused('no_request'), attempts + 1);

    const { request, maxBytes, expiresAt } = await fx.hub.sampleRequests.open('dev-a', { pipeline: 'vibration' });
    assert.equal(maxBytes, LIMITS.maxBytes);
    assert.equal(expiresAt, fx.clock.now() + LIMITS.requestTtlMs);
    // Another device naming dev-a's request, and dev-a naming no request or a made-up one.
    await fx.hub.sampleRequests.open('dev-b', { pipeline: 'vibration' });
    assert.equal((await upload('dev-b', sample(request))).status, 403, "dev-a's request id from dev-b");
    assert.equal((await upload('dev-a', sample(undefined))).status, 403, 'no request id');
    assert.equal((await upload('dev-a', sample('sr-000000000000000000000000'))).status, 403, 'an id the hub never issued');
    assert.equal((await upload('dev-b', sample(request), false)).status, 403, "dev-a's request id from dev-b, in the body only");
    const ok = await fetch(`${fx.hub.httpUrl}/v1/samples/dev-a`, {
      method: 'POST',
      headers: { authorization: `Bearer dev-a:${devices['dev-a']!.token}`, 'content-type': 'application/json' },
      body: JSON.stringify(sample(request)),
    });
    assert.equal(ok.status, 201, await ok.clone().text());
    const stored = { ...((await ok.json()) as { file: string }), bytes: storedBytes('dev-a') };
    assert.match(stored.file, /^dev-a\/\d+\.json$/);
    const again = await upload('dev-a', sample(request));
    assert.equal(again.status, 403, 'a request is answered once');
    assert.match(again.message ?? '', /already answered/);
    assert.equal(await refused('used'), 1);
    const history = await fx.history('dev-a');
    assert.deepEqual(
      history.filter((h) => h.event.startsWith('sample_')).map((h) => [h.event, h.details.request]),
      [
        ['sample_requested', request],
        ['sample_stored', request],
      ],
    );
    row('uploads', `unrequested: ${attempts} x 2 MiB bodies -> 403 each in ${(ms / attempts).toFixed(0)} ms, 0 bytes stored; requested: 201 once (${stored.bytes} B), replay 403, other device 403`);
  });

  test('uploads: over the request quota 413 (request stays open), rolling-day quota 413, expired request 403, state survives a hub restart', async () => {
    const { request } = await fx.hub.sampleRequests.open('dev-c', { pipeline: 'vibration' });
    const over = await upload('dev-c', sample(request, LIMITS.maxBytes));
    assert.equal(over.status, 413);
    assert.equal(over.code, 'PAYLOAD_TOO_LARGE');
    assert.equal(await refused('request_quota'), 1);
    assert.equal(storedBytes('dev-c'), 0);
    assert.equal((await upload('dev-c', sample(request, 60 * KiB))).status, 201, 'the request is still open after a 413');

    // The day: 200 KiB. 60 KiB files fit three times; the fourth request gets only what is left.
    for (let i = 0; i < 2; i++) {
      const r = await fx.hub.sampleRequests.open('dev-c', { pipeline: 'vibration' });
      assert.equal((await upload('dev-c', sample(r.request, 60 * KiB))).status, 201);
    }
    const fourth = await fx.hub.sampleRequests.open('dev-c', { pipeline: 'vibration' });
    const dayOver = await upload('dev-c', sample(fourth.request, 60 * KiB));
    assert.equal(dayOver.status, 413);
    assert.equal(await refused('day_quota'), 1);
    const used = storedBytes('dev-c');
    assert.ok(used <= LIMITS.maxBytesPerDay, `${used} bytes stored`);

    // Restart: open requests (history) and the day's bytes (the files) are still known.
    await fx.hub.stop();
    await fx.start(OVERRIDES);
    assert.equal((await upload('dev-c', sample(fourth.request, 60 * KiB))).status, 413, 'the day quota survives a restart');
    assert.equal((await upload('dev-c', sample(fourth.request, 1 * KiB))).status, 201, 'a request opened before the restart still works');

    // A day later the quota is free again; a request left open past its expiry is refused.
    fx.clock.advance(86_400_000);
    const late = await fx.hub.sampleRequests.open('dev-c', { pipeline: 'vibration' });
    fx.clock.advance(LIMITS.requestTtlMs + 1);
    const expired = await upload('dev-c', sample(late.request, 60 * KiB));
    assert.equal(expired.status, 403);
    assert.match(expired.message ?? '', /expired/);
    assert.equal(await refused('expired'), 1);
    const fresh = await fx.hub.sampleRequests.open('dev-c', { pipeline: 'vibration' });
    assert.equal((await upload('dev-c', sample(fresh.request, 60 * KiB))).status, 201, 'quota free again after 24 h');
    row('uploads', `quota: request ${LIMITS.maxBytes / KiB} KiB -> 413 above, day ${LIMITS.maxBytesPerDay / KiB} KiB -> ${(used / KiB).toFixed(0)} KiB stored then 413 (also after a restart), expired request 403, next day 201`);
  });

  test('uploads: the drift.sample command of a drift alert carries a request; the agent uploader answers it (trimmed to its budget)', async () => {
    const dev = devices['dev-b']!;
    await dev.connect();
    await fx.hub.alertDelivery.retraining('al-test', 'machine-state', ['dev-b'], {});
    await until(() => dev.commands.some((c) => c.name === 'drift.sample'), 10_000, 'drift.sample command');
    const args = SampleCommandArgsSchema.parse(dev.commands.find((c) => c.name === 'drift.sample')?.args);
    assert.match(args.request ?? '', /^sr-[0-9a-f]{24}$/);
    assert.equal(args.maxBytes, LIMITS.maxBytes);

    // The agent's DriftMonitor with a ring holding more than the request's budget (~200 KiB).
    const machine = v1(ManifestSchema.parse(JSON.parse(await readFile(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8'))));
    const monitor = new DriftMonitor({
      deviceId: 'dev-b',
      config: DriftConfigSchema.parse({ sample: { size: 100 } }),
      sink: { append: () => Promise.resolve() },
      instance: () => '1',
      upload: { hubHttpUrl: fx.hub.httpUrl, deviceId: 'dev-b', token: dev.token },
      log: silentLogger(),
    });
    await monitor.start();
    const scores = [0.9, 0.05, 0.05];
    for (let i = 0; i < 100; i++) {
      monitor.record('vibration', machine, undefined, { index: 0, confidence: 0.9, margin: 0.85, scores }, { kind: 'json', body: { values: Array.from({ length: 256 }, (_, k) => k + i) } }, `in-${i}`, fx.clock.now());
    }
    await assert.rejects(monitor.uploadSample({ pipeline: 'vibration', maxBytes: args.maxBytes }), (e: Error & { code?: string }) => e.code === 'FORBIDDEN', 'without the request: 403');
    const r = await monitor.uploadSample(args);
    assert.equal(r.status, 201);
    assert.ok(r.items > 0 && r.items < 100, `${r.items} items fit`);
    assert.ok(r.bytes <= LIMITS.maxBytes, `${r.bytes} bytes`);
    await monitor.stop();
    row('uploads', `flow: alert -> drift.sample{request, maxBytes ${LIMITS.maxBytes / KiB} KiB} -> agent uploader sent the newest ${r.items}/100 inputs (${(r.bytes / KiB).toFixed(1)} KiB) -> 201; without the request 403`);
  });

  test('artifacts: A cannot fetch B\'s assigned artifact (404 as unknown) while B can; a device in a started wave can, one in a later wave cannot; installed versions can', async () => {
    const ms = await fx.releaseFile('machine-state', '1.0.0');
    const pd = await fx.releaseFile('part-defect', '1.0.0');
    await fx.ok('POST', '/v1/rollouts', { model: ms.name, version: ms.version, target: { devices: ['dev-b'] }, waves: [1], bakeMs: 0 });
    await fx.ok('POST', '/v1/rollouts', { model: pd.name, version: pd.version, target: { group: 'wave' }, waves: [1, '100%'], bakeMs: 3_600_000 });
    await fx.hub.rollouts.tick();
    await until(async () => (await fx.hub.store.desiredModels('dev-b')).length > 0, 10_000, 'dev-b assigned');
    const waveDevices = ['w-1', 'w-2', 'w-3'];
    let assigned: string[] = [];
    await until(
      async () => {
        assigned = [];
        for (const w of waveDevices) if ((await fx.hub.store.desiredModels(w)).length > 0) assigned.push(w);
        return assigned.length > 0;
      },
      10_000,
      'first wave started',
    );
    assert.equal(assigned.length, 1, 'wave 0 has one device');
    const inWave = assigned[0]!;
    const later = waveDevices.filter((w) => w !== inWave);
    // dev-c runs machine-state 1.0.0 (reported in its hello) without a rollout.
    devices['dev-c']!.runs(ms);
    await devices['dev-c']!.connect();
    await until(async () => ((await fx.hub.store.getRolloutCandidate('dev-c'))?.modelState.length ?? 0) > 0, 10_000, 'dev-c hello stored');

    const unknownSha = 'e'.repeat(64);
    const unknown = await reply(await download('dev-a', unknownSha));
    const refusedBefore = await metric('edgefleet_hub_artifact_requests_refused_total', 'reason="not_assigned"');
    const cases: [string, string, number][] = [
      ['dev-a', ms.sha256, 404],
      ['dev-a', pd.sha256, 404],
      ['dev-b', ms.sha256, 200],
      ['dev-b', pd.sha256, 404],
      [inWave, pd.sha256, 200],
      [inWave, ms.sha256, 404],
      ...later.map((w): [string, string, number] => [w, pd.sha256, 404]),
      ['dev-c', ms.sha256, 200],
      ['dev-c', pd.sha256, 404],
    ];
    for (const [id, sha, want] of cases) {
      const res = await download(id, sha);
      const r = await reply(res);
      assert.equal(r.status, want, `${id} ${sha === ms.sha256 ? 'machine-state' : 'part-defect'}`);
      if (want === 404) {
        // Same answer as for an artifact that does not exist: nothing confirms it is there.
        assert.equal(r.code, unknown.code);
        assert.equal(r.message?.replace(sha, '<sha>'), unknown.message?.replace(unknownSha, '<sha>'));
      }
    }
    const head = await download('dev-a', ms.sha256, {}, 'HEAD');
    assert.equal(head.status, 404, 'HEAD too');
    const notAssigned = (await metric('edgefleet_hub_artifact_requests_refused_total', 'reason="not_assigned"')) - refusedBefore;
    assert.equal(notAssigned, cases.filter((c) => c[2] === 404).length + 1);
    const audit = await fx.ok<{ entries: unknown[] }>('GET', '/v1/audit?limit=1000');
    assert.ok(!JSON.stringify(audit.entries).includes('/v1/artifacts'), 'refusals are counted, not audited');

    // The sidecar of a release (manifest testVectorsFile) goes with it; registered straight in
    // the store, as the vectors upload route is another change.
    const sidecarSha = 'f'.repeat(64);
    const manifest = { ...(JSON.parse(await readFile(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8')) as Record<string, unknown>), name: 'with-sidecar', version: '1.0.0' };
    await fx.hub.store.createModelRelease(
      { name: 'with-sidecar', version: '1.0.0', sha256: ms.sha256, size: 1, manifest: JSON.stringify({ ...manifest, testVectorsFile: { file: 'v.npz', sha256: sidecarSha, size: 1, tolerance: 0 } }), createdAt: fx.clock.now() },
      () => ({ release: JSON.stringify({ release: { manifest } }), keyId: 'test' }),
    );
    await fx.ok('POST', '/v1/rollouts', { model: 'with-sidecar', version: '1.0.0', target: { devices: ['dev-s'] }, waves: [1], bakeMs: 0 });
    await fx.hub.rollouts.tick();
    await until(async () => (await fx.hub.store.desiredModels('dev-s')).length > 0, 10_000, 'dev-s assigned');
    fx.hub.artifactAccess.forget();
    assert.equal(await fx.hub.artifactAccess.allows('dev-s', sidecarSha), true, 'the sidecar of an assigned release');
    assert.equal(await fx.hub.artifactAccess.allows('dev-s', ms.sha256), true, 'its model file');
    assert.equal(await fx.hub.artifactAccess.allows('dev-a', sidecarSha), false, 'not for another device');
    row('artifact-authz', `${cases.length} device/artifact pairs: unassigned -> 404 identical to an unknown sha (${cases.filter((c) => c[2] === 404).length}), assigned by rollout wave / installed -> 200 (${cases.filter((c) => c[2] === 200).length}); later-wave devices 404; sidecar sha of an assigned release allowed; 0 audit rows`);
  });

  test('artifacts: range requests of a wave are served from the cached decision, not one store read each', async () => {
    const ms = (await fx.ok<{ models: { name: string; sha256: string; size: number }[] }>('GET', '/v1/models')).models.find((m) => m.name === 'machine-state');
    assert.ok(ms);
    fx.hub.artifactAccess.forget();
    const lookups = (): Promise<number> => metric('edgefleet_hub_artifact_access_lookups_total', 'result="lookup"');
    const cached = (): Promise<number> => metric('edgefleet_hub_artifact_access_lookups_total', 'result="cached"');
    const [l0, c0] = [await lookups(), await cached()];
    const chunk = Math.ceil(ms.size / 50);
    const ranges = Array.from({ length: 50 }, (_, i) => `bytes=${i * chunk}-${Math.min(ms.size, (i + 1) * chunk) - 1}`);
    const t0 = performance.now();
    const got = await Promise.all(
      ['dev-b', 'dev-c'].flatMap((id) =>
        ranges.map(async (range) => {
          const res = await download(id, ms.sha256, { range });
          await res.arrayBuffer();
          return res.status;
        }),
      ),
    );
    const ms_ = performance.now() - t0;
    assert.ok(got.every((s) => s === 206), JSON.stringify(got.filter((s) => s !== 206)));
    const [l1, c1] = [await lookups(), await cached()];
    assert.ok(l1 - l0 <= 2 * 2, `store lookups ${l1 - l0}`);
    row('artifact-authz', `cache: ${got.length} range requests by 2 devices -> ${l1 - l0} store lookups, ${c1 - c0} cached decisions, ${ms_.toFixed(0)} ms`);
  });
});
