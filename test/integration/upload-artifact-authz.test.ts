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
import { until, type ScriptedDevice } from './hub-rollouts-fixture.ts';

const row = (name: string, outcome: string): void => console.log(`security: ${name} ${outcome}`);
const KiB = 1024;
const LIMITS = { maxBytes: 64 * KiB, maxBytesPerDay: 200 * KiB, requestTtlMs: 60_000, maxItems: 1000 };

/** Hub settings: small sample quotas and a retraining hook that asks the devices an alert names for samples. */
const OVERRIDES = {
  drift: { samples: LIMITS },
  alerts: { retraining: { sampleDevices: true, maxSamples: 1000, pipelines: { 'machine-state': 'vibration' } } },
};

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
  let fx: DriftFixture;
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

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-upload-authz-'));
    fx = new DriftFixture(join(dir, 'hub'));
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
});
