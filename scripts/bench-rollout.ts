/**
 * Benchmark (not a test): how fast a ~5 MB model rolls out to N simulated devices on this
 * machine, as devices per minute, next to its bare baseline in the same run — the same N
 * downloads of the same artifact from the same hub with sha256 checks and nothing else, at
 * the rollout's concurrency cap.
 *
 *   node --import tsx scripts/bench-rollout.ts [--devices 200] [--max-concurrent 50] [--json]
 *
 * The hub runs as its own process (as in production); the devices are SimulatedDevice
 * (scripts/fleet/sim-device.ts): real MQTT sessions with their own credentials, real signature
 * and counter checks, real HTTP downloads with sha256, real events, commands and hellos, but
 * no ONNX Runtime (hundreds of agent processes do not fit on one machine).
 *
 * Two rollouts, each of a new release: the default plan (1 canary, 10%, 50%, 100%) with
 * bakeMs 0 (the mechanics: waves, commands, reports, gates), and one wave of 100% (the
 * throughput ceiling). Bake time is a policy choice that adds to any real rollout.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { trustedKeyFromPem, type TrustedKey } from '../shared/signing.ts';
import { hubApi, startHubProcess, type HubInfo } from './fleet/hub-process.ts';
import { SimulatedDevice } from './fleet/sim-device.ts';
import { writeReleaseVariant } from './lib/release-variants.ts';
import { makeModels } from './make-models.ts';

interface Figures {
  devices: number;
  artifactBytes: number;
  baseline: { seconds: number; devicesPerMinute: number };
  rollouts: { plan: string; seconds: number; devicesPerMinute: number; ratioToBaseline: number; failed: number }[];
}

async function pushRelease(hub: HubInfo, manifestPath: string, onnxPath: string): Promise<{ sha256: string }> {
  const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as { name: string; version: string };
  await hubApi(hub, 'POST', '/v1/models', { manifest });
  const res = await fetch(`${hub.httpUrl}/v1/models/${manifest.name}/${manifest.version}/artifact`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/octet-stream' },
    body: await readFile(onnxPath),
  });
  if (!res.ok) throw new Error(`push ${manifest.version}: HTTP ${res.status} ${await res.text()}`);
  return (await res.json()) as { sha256: string };
}

/** Runs `fn` over `items` with at most `limit` at once. */
async function pool<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { devices: { type: 'string', default: '200' }, 'max-concurrent': { type: 'string', default: '50' }, json: { type: 'boolean', default: false } },
  });
  const n = Number(values.devices);
  const maxConcurrent = Number(values['max-concurrent']);
  const log = (s: string): void => {
    if (!values.json) process.stdout.write(`${s}\n`);
  };
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-rollout-'));
  const modelsDir = join(process.cwd(), 'models');
  await makeModels({ outDir: modelsDir });
  // Every simulated device connects from 127.0.0.1: lift the per-address connection rate limit
  // (a real fleet connects from its own addresses, or a site NAT sized with this setting).
  const configFile = join(dir, 'hub-config.json');
  await writeFile(configFile, JSON.stringify({ limits: { maxConnectsPerSecondPerIp: 100_000 } }));
  const hub = await startHubProcess({ dataDir: join(dir, 'hub'), logFile: join(dir, 'hub.log'), configFile });
  const devices: SimulatedDevice[] = [];
  try {
    const shipped = JSON.parse(await readFile(join(modelsDir, 'machine-state.manifest.json'), 'utf8')) as { version: string; artifact: { sha256: string } };
    const releases = [];
    for (const version of ['2.0.0', '2.1.0']) {
      const r = await writeReleaseVariant(join(dir, 'releases'), 'large', version);
      await pushRelease(hub, r.manifestPath, r.onnxPath);
      releases.push(r);
    }
    const artifactBytes = releases[0]!.bytes.length;
    const keys = await hubApi<{ keys: { publicKeyPem: string }[] }>(hub, 'GET', '/v1/keys');
    const trustedKeys: TrustedKey[] = keys.keys.map((k) => trustedKeyFromPem(k.publicKeyPem));

    log(`registering and connecting ${n} simulated devices...`);
    const creds: { id: string; token: string }[] = [];
    await pool(
      Array.from({ length: n }, (_, i) => `sim-${String(i).padStart(4, '0')}`),
      8,
      async (id) => {
        const r = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, kind: 'device', group: 'bench' });
        creds.push({ id, token: r.token });
      },
    );
    await pool(creds, 16, async (c) => {
      const d = new SimulatedDevice({
        deviceId: c.id,
        token: c.token,
        mqttUrl: hub.mqttUrl,
        httpUrl: hub.httpUrl,
        trustedKeys,
        model: 'machine-state',
        initial: { version: shipped.version, counter: 0, sha256: shipped.artifact.sha256 },
        healthEveryMs: 1000,
        perWindow: 100,
      });
      await d.start();
      devices.push(d);
    });

    const rolloutFigures: Figures['rollouts'] = [];
    const plans: { plan: string; version: string; waves: (number | string)[] }[] = [
      { plan: 'default waves (1, 10%, 50%, 100%), bake 0', version: '2.0.0', waves: [1, '10%', '50%', '100%'] },
      { plan: 'one wave (100%)', version: '2.1.0', waves: ['100%'] },
    ];
    for (const p of plans) {
      const t1 = performance.now();
      const created = await hubApi<{ id: string }>(hub, 'POST', '/v1/rollouts', {
        model: 'machine-state',
        version: p.version,
        target: { group: 'bench' },
        waves: p.waves,
        bakeMs: 0,
        maxConcurrent,
      });
      const deadline = Date.now() + 30 * 60_000;
      let status: { state: string; counts: { succeeded: number; failed: number } };
      // Done when the hub says so (every device reported and counted), not when the devices are.
      for (;;) {
        status = await hubApi(hub, 'GET', `/v1/rollouts/${created.id}`);
        if (status.state !== 'running' && status.state !== 'paused') break;
        if (Date.now() > deadline) throw new Error(`rollout ${created.id} did not finish in 30 min`);
        await sleep(50);
      }
      const seconds = (performance.now() - t1) / 1000;
      const cmdAt = devices.map((d) => (d.lastCommandAt - t1) / 1000).sort((a, b) => a - b);
      const took = devices.map((d) => (d.lastInstalledAt - d.lastCommandAt) / 1000).sort((a, b) => a - b);
      const q = (xs: number[], f: number): string => (xs[Math.min(xs.length - 1, Math.floor(f * xs.length))] ?? 0).toFixed(2);
      log(`  commands received at s: first ${q(cmdAt, 0)} median ${q(cmdAt, 0.5)} last ${q(cmdAt, 1)}; install s: median ${q(took, 0.5)} p95 ${q(took, 0.95)} max ${q(took, 1)}`);
      const onNew = devices.filter((d) => d.slot.active?.version === p.version).length;
      if (status.state !== 'completed' || onNew !== n) throw new Error(`rollout ${created.id} ended ${status.state} with ${onNew}/${n} devices on ${p.version}`);
      const dpm = (n / seconds) * 60;
      rolloutFigures.push({ plan: p.plan, seconds, devicesPerMinute: dpm, ratioToBaseline: 0, failed: status.counts.failed });
      log(`rollout ${p.plan}: ${n} devices in ${seconds.toFixed(1)} s = ${dpm.toFixed(0)} devices/min, succeeded ${status.counts.succeeded}, failed ${status.counts.failed}`);
    }
    // Baseline: the same downloads with sha256 and nothing else, at the same concurrency. After
    // the rollouts: a device may fetch only an artifact assigned to it (issue #14), here 2.1.0.
    const sha = releases[1]!.manifest.artifact.sha256;
    const t0 = performance.now();
    await pool(creds, maxConcurrent, async (c) => {
      const res = await fetch(`${hub.httpUrl}/v1/artifacts/${sha}`, { headers: { authorization: `Bearer ${c.id}:${c.token}` } });
      const hash = createHash('sha256');
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) hash.update(chunk);
      if (hash.digest('hex') !== sha) throw new Error('baseline download corrupt');
    });
    const baseSeconds = (performance.now() - t0) / 1000;
    const figures: Figures = { devices: n, artifactBytes, baseline: { seconds: baseSeconds, devicesPerMinute: (n / baseSeconds) * 60 }, rollouts: rolloutFigures.map((r) => ({ ...r, ratioToBaseline: r.devicesPerMinute / ((n / baseSeconds) * 60) })) };
    log(`baseline: ${n} downloads of ${(artifactBytes / 1e6).toFixed(1)} MB in ${baseSeconds.toFixed(1)} s`);

    for (const r of figures.rollouts) log(`rollout ${r.plan}: ${r.ratioToBaseline.toFixed(2)}× bare downloads`);
    if (values.json) process.stdout.write(`${JSON.stringify(figures, null, 2)}\n`);
  } finally {
    await Promise.allSettled(devices.map((d) => d.stop()));
    await hub.proc.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
