/**
 * Staged rollouts end to end, every part real: the hub and ten agents as child processes
 * (`edgefleet hub`, `edgefleet agent --config`), simulated sensors feeding every agent over MQTT
 * so health windows carry real inferences, and releases pushed through the hub's registry API.
 *
 *   1. A good release rolls out in waves while one device is offline; the offline device
 *      catches up when it returns; every device's history holds one `installed` for it.
 *   2. A bad release (shifted output distribution; then a much slower one) stops at the canary:
 *      no other device ever gets a command for it, and the canary serves the old version again.
 *   3. The hub is SIGKILLed mid-rollout and restarted on the same ports: the rollout resumes
 *      and completes, no device is counted twice.
 *   4. A much slower release that the hub's gate is told to ignore is rolled back by the
 *      device itself during probation, without the hub.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { hubApi, startHubProcess, type HubInfo } from '../../scripts/fleet/hub-process.ts';
import { REPO_ROOT, ServiceProcess } from '../../scripts/fleet/processes.ts';
import { SimulatedSensor } from '../../scripts/fleet/sensors.ts';
import { writeReleaseVariant, type ReleaseVariant } from '../../scripts/lib/release-variants.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { until } from '../helpers/fleet-in-process.ts';

const DEVICES = 10;
const OFFLINE = 'line-09';
const root = mkdtempSync(join(tmpdir(), 'ef-rollout-e2e-'));

interface Agent {
  id: string;
  config: string;
  proc: ServiceProcess | undefined;
  httpPort: number;
}

interface RolloutStatus {
  id: string;
  state: string;
  reason: string | null;
  currentWave: number;
  counts: { pending: number; dispatched: number; succeeded: number; failed: number; rolled_back: number; total: number };
  waves: { index: number; devices: number; status: string }[];
  gates: { verdict?: string; breaches?: { metric: string }[] }[];
}

interface HistoryEntry {
  event: string;
  version?: string;
  rolloutId?: string;
}

describe('staged rollouts, hub and ten agents as processes', () => {
  let hub: HubInfo;
  let ports: { mqtt: string; http: string };
  const agents: Agent[] = [];
  const sensors: SimulatedSensor[] = [];
  const tokens = new Map<string, string>();

  const startAgent = async (a: Agent): Promise<void> => {
    const proc = new ServiceProcess(a.id, ['agent', '--config', a.config], { logFile: join(root, `${a.id}.log`) });
    a.proc = proc;
    const listening = await proc.waitForMsg('http listening', 60_000);
    a.httpPort = listening['port'] as number;
    await proc.waitForMsg('agent running', 60_000);
  };
  /** `name@version` keys the agent serves, from its /healthz. */
  const served = async (a: Agent): Promise<string[]> => {
    const res = await fetch(`http://127.0.0.1:${a.httpPort}/healthz`);
    return ((await res.json()) as { models: string[] }).models;
  };
  const status = (id: string): Promise<RolloutStatus> => hubApi<RolloutStatus>(hub, 'GET', `/v1/rollouts/${id}`);
  const history = async (device: string): Promise<HistoryEntry[]> => (await hubApi<{ history: HistoryEntry[] }>(hub, 'GET', `/v1/devices/${device}/history`)).history;
  const push = async (variant: ReleaseVariant, version: string): Promise<void> => {
    const r = await writeReleaseVariant(join(root, 'releases'), variant, version);
    await hubApi(hub, 'POST', '/v1/models', { manifest: r.manifest });
    const res = await fetch(`${hub.httpUrl}/v1/models/machine-state/${version}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: await readFile(r.onnxPath),
    });
    assert.equal(res.status, 201, await res.text());
  };
  const waitEnded = async (id: string, timeoutMs: number): Promise<RolloutStatus> => {
    let s: RolloutStatus | undefined;
    await until(
      async () => {
        s = await status(id);
        return s.state !== 'running' && s.state !== 'paused';
      },
      timeoutMs,
      `rollout ${id} to end`,
    );
    return s!;
  };
  const online = (): Agent[] => agents.filter((a) => a.proc !== undefined);

  before(async () => {
    await makeModels({ outDir: join(REPO_ROOT, 'models') });
    hub = await startHubProcess({ dataDir: join(root, 'hub'), logFile: join(root, 'hub.log') });
    ports = { mqtt: new URL(hub.mqttUrl).port, http: new URL(hub.httpUrl).port };
    const keys = await hubApi<{ keys: { publicKeyPem: string }[] }>(hub, 'GET', '/v1/keys');
    const keyFiles = keys.keys.map((k, i) => {
      const path = join(root, `hub-key-${i}.pem`);
      writeFileSync(path, k.publicKeyPem);
      return path;
    });
    for (let i = 0; i < DEVICES; i++) {
      const id = `line-${String(i).padStart(2, '0')}`;
      const dev = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, kind: 'device', group: 'line' });
      tokens.set(id, dev.token);
      const sensor = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id: `${id}-vib`, kind: 'sensor', group: 'line', device: id });
      const config = writeAgentConfig({
        dir: join(root, id),
        deviceId: id,
        token: dev.token,
        mqttUrl: hub.mqttUrl,
        modelsDir: join(REPO_ROOT, 'models'),
        extra: {
          hub: { httpUrl: hub.httpUrl },
          updates: { trustedKeys: keyFiles, probationMs: 0 },
          health: { windowMs: 1000 },
          runtime: { maxWaitMs: 0 },
          log: { level: 'info' },
        },
      });
      agents.push({ id, config, proc: undefined, httpPort: 0 });
      sensors.push(new SimulatedSensor({ sensorId: `${id}-vib`, token: sensor.token, deviceId: id, mqttUrl: hub.mqttUrl, input: 'vibration', ratePerSecond: 40, seed: 100 + i }));
    }
    // Start agents two at a time: each loads ORT; ten at once on two cores only slows all.
    for (let i = 0; i < agents.length; i += 2) await Promise.all(agents.slice(i, i + 2).map((a) => startAgent(a)));
    for (const s of sensors) await s.start();
  });

  after(async () => {
    for (const s of sensors) await s.stop().catch(() => undefined);
    await Promise.allSettled(agents.map((a) => a.proc?.stop(10_000) ?? Promise.resolve()));
    await hub?.proc.stop(10_000);
    rmSync(root, { recursive: true, force: true });
  });

  it('a good release rolls out in waves; the offline device catches up when it returns', async () => {
    const offline = agents.find((a) => a.id === OFFLINE)!;
    await offline.proc!.stop(10_000);
    offline.proc = undefined;
    await push('retrained', '1.1.0');
    const created = await hubApi<RolloutStatus>(hub, 'POST', '/v1/rollouts', {
      model: 'machine-state',
      version: '1.1.0',
      target: { group: 'line' },
      waves: [1, '50%', '100%'],
      bakeMs: 3000,
      // Not a gate test: ten agents on two cores make p95 latency noisy (2× between devices seen).
      gates: { minSamples: 50, maxLatencyRatio: 4 },
    });
    const ended = await waitEnded(created.id, 120_000);
    assert.equal(ended.state, 'completed', `rollout ended ${ended.state}: ${ended.reason}`);
    assert.ok(ended.waves.every((w) => w.status === 'done'), JSON.stringify(ended.waves));
    for (const a of online()) assert.deepEqual(await served(a), ['machine-state@1.1.0'], a.id);
    assert.equal((await history(OFFLINE)).filter((h) => h.event === 'installed').length, 0, 'the offline device has not installed yet');

    await startAgent(offline);
    await until(async () => (await served(offline)).includes('machine-state@1.1.0'), 60_000, 'the returning device to install 1.1.0');
    await until(async () => (await status(created.id)).counts.succeeded === DEVICES, 30_000, 'the hub to count the returning device');
    for (const a of agents) {
      const installed = (await history(a.id)).filter((h) => h.event === 'installed' && h.version === '1.1.0');
      assert.equal(installed.length, 1, `${a.id}: one installed entry for 1.1.0, got ${JSON.stringify(installed)}`);
    }
  });

  for (const [variant, version] of [
    ['shifted', '1.2.0'],
    ['slow', '1.3.0'],
  ] as const) {
    it(`a bad release (${variant}) stops at the canary; the canary serves 1.1.0 again`, async () => {
      await push(variant, version);
      const created = await hubApi<RolloutStatus>(hub, 'POST', '/v1/rollouts', {
        model: 'machine-state',
        version,
        target: { group: 'line' },
        waves: [1, '100%'],
        bakeMs: 8000,
        gates: { minSamples: 100 },
        onBreach: 'rollback',
      });
      const ended = await waitEnded(created.id, 120_000);
      assert.notEqual(ended.state, 'completed', 'a bad release must not complete');
      const touched: string[] = [];
      for (const a of agents) {
        const h = (await history(a.id)).filter((e) => e.version === version);
        if (h.some((e) => e.event !== 'assigned')) touched.push(a.id);
      }
      assert.equal(touched.length, 1, `only the canary received ${version}: ${touched.join(', ')}`);
      const canary = agents.find((a) => a.id === touched[0])!;
      await until(async () => (await served(canary)).includes('machine-state@1.1.0'), 30_000, 'the canary to serve 1.1.0 again');
      for (const a of agents) assert.deepEqual(await served(a), ['machine-state@1.1.0'], a.id);
      process.stdout.write(`rollout-e2e ${variant}: state=${ended.state} reason=${JSON.stringify(ended.reason)} canary=${canary.id}\n`);
    });
  }

  it('the hub killed mid-rollout resumes it after a restart; no device counted twice', async () => {
    await push('retrained', '1.4.0');
    const created = await hubApi<RolloutStatus>(hub, 'POST', '/v1/rollouts', {
      model: 'machine-state',
      version: '1.4.0',
      target: { group: 'line' },
      waves: [1, 3, '100%'],
      bakeMs: 2500,
      // Not a gate test: ten agents on two cores make p95 latency noisy (2× between devices seen).
      gates: { minSamples: 50, maxLatencyRatio: 4 },
    });
    await until(async () => (await status(created.id)).counts.succeeded >= 1, 60_000, 'the canary to install');
    await hub.proc.kill();
    const dataDir = hub.dataDir;
    hub = await startHubProcess({ dataDir, mqttPort: Number(ports.mqtt), httpPort: Number(ports.http), logFile: join(root, 'hub.log') });
    const ended = await waitEnded(created.id, 120_000);
    assert.equal(ended.state, 'completed', `rollout ended ${ended.state}: ${ended.reason}`);
    assert.equal(ended.counts.succeeded, DEVICES);
    for (const a of agents) {
      assert.deepEqual(await served(a), ['machine-state@1.4.0'], a.id);
      const installed = (await history(a.id)).filter((h) => h.event === 'installed' && h.version === '1.4.0');
      assert.equal(installed.length, 1, `${a.id}: one installed entry for 1.4.0, got ${installed.length}`);
    }
  });

  it('probation: a slow release the hub gate would let through is rolled back by the agent on its own', async () => {
    const target = agents.find((a) => a.id === 'line-01')!;
    // Probation compares with the replaced version's last windows (health.keepWindows, 30 × 1 s
    // here). Right after the previous test those hold the fleet-wide install storm (ten validator
    // children on two cores: p95 ~26 ms instead of ~5 ms), so let the device serve 1.4.0 in a
    // steady state for that long first.
    const steadyFrom = Date.now();
    await until(
      async () => {
        const page = await hubApi<{ records: { body: { version?: string; windowStart?: number } }[] }>(hub, 'GET', `/v1/telemetry?device=${target.id}&stream=health&limit=1000`);
        return page.records.filter((r) => r.body.version === '1.4.0' && (r.body.windowStart ?? 0) >= steadyFrom).length >= 30;
      },
      90_000,
      '30 steady health windows of 1.4.0',
    );
    await push('slow', '1.5.0');
    const created = await hubApi<RolloutStatus>(hub, 'POST', '/v1/rollouts', {
      model: 'machine-state',
      version: '1.5.0',
      target: { devices: [target.id] },
      waves: ['100%'],
      bakeMs: 30_000,
      // The hub's latency gate is switched off: only the device's own probation can stop this.
      gates: { minSamples: 50, maxLatencyRatio: 1000 },
      probationMs: 20_000,
    });
    await until(async () => (await history(target.id)).some((h) => h.event === 'installed' && h.version === '1.5.0'), 60_000, 'the device to install 1.5.0');
    await until(async () => (await history(target.id)).some((h) => h.event === 'rolled_back' && h.version === '1.5.0'), 60_000, 'the device to roll back 1.5.0');
    assert.deepEqual(await served(target), ['machine-state@1.4.0']);
    const ended = await waitEnded(created.id, 60_000);
    assert.notEqual(ended.state, 'completed');
    const rolledBack = (await history(target.id)).find((h) => h.event === 'rolled_back' && h.version === '1.5.0');
    process.stdout.write(`rollout-e2e probation: state=${ended.state} entry=${JSON.stringify(rolledBack)}\n`);
  });
});
