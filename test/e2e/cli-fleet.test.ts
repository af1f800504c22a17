/**
 * The product as a user runs it: `edgefleet hub`, `edgefleet device add`, `edgefleet sensor add`,
 * `edgefleet agent --config`, `edgefleet devices --json`, each a real child process.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import mqtt from 'mqtt';
import { topics } from '../../shared/protocol.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { hubApi, startHubProcess, type HubInfo } from '../../scripts/fleet/hub-process.ts';
import { CLI, REPO_ROOT, ServiceProcess } from '../../scripts/fleet/processes.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { mulberry32, sensorSample } from '../../scripts/lib/synthetic.ts';
import { until } from '../helpers/fleet-in-process.ts';

const root = mkdtempSync(join(tmpdir(), 'ef-e2e-'));
const procs: ServiceProcess[] = [];

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface DeviceJson {
  id: string;
  kind: string;
  online: boolean;
  group: string;
  labels: Record<string, string>;
  models: { name: string; version: string }[];
  counters: { stored: number; duplicates: number; gaps: number };
}

describe('edgefleet CLI, processes end to end', () => {
  let hub: HubInfo;
  after(async () => {
    for (const p of procs) await p.stop(5000);
    rmSync(root, { recursive: true, force: true });
  });

  it('hub, device add, agent, devices: readings stored, clean shutdowns', async () => {
    await makeModels({ outDir: join(REPO_ROOT, 'models') });
    hub = await startHubProcess({ dataDir: join(root, 'hub') });
    procs.push(hub.proc);
    assert.equal(statSync(join(root, 'hub', 'admin.token')).mode & 0o777, 0o600, 'admin token readable by its owner only');
    assert.ok(!hub.proc.lines.some((l) => JSON.stringify(l).includes(hub.adminToken)), 'admin token never logged');

    const dataArgs = ['--data', join(root, 'hub')];
    const added = cli(['device', 'add', 'cam-1', '--group', 'line-1', '--label', 'site=plant-a', '--json', ...dataArgs]);
    assert.equal(added.status, 0, added.stderr);
    const device = JSON.parse(added.stdout) as { id: string; token: string };
    assert.equal(device.id, 'cam-1');
    assert.ok(device.token.length >= 32);
    const again = cli(['device', 'add', 'cam-1', '--group', 'line-1', ...dataArgs]);
    assert.equal(again.status, 1, 'adding an existing device fails');
    assert.match(again.stderr, /exists/);
    const usage = cli(['device', 'add', ...dataArgs]);
    assert.equal(usage.status, 2, 'usage error exit code');
    const sensorOut = cli(['sensor', 'add', 'vib-1', '--device', 'cam-1', '--json', ...dataArgs]);
    assert.equal(sensorOut.status, 0, sensorOut.stderr);
    const sensor = JSON.parse(sensorOut.stdout) as { token: string };

    const config = writeAgentConfig({ dir: join(root, 'cam-1'), deviceId: 'cam-1', token: device.token, mqttUrl: hub.mqttUrl, modelsDir: join(REPO_ROOT, 'models') });
    const agent = new ServiceProcess('agent', ['agent', '--config', config]);
    procs.push(agent);
    await agent.waitForMsg('agent running', 60_000);

    const client = await mqtt.connectAsync(hub.mqttUrl, { clientId: 'vib-1', username: 'vib-1', password: sensor.token, protocolVersion: 4, reconnectPeriod: 0 });
    const rng = mulberry32(3);
    for (let i = 0; i < 50; i++) {
      await client.publishAsync(topics.input('cam-1', 'vibration'), JSON.stringify({ id: `r${i}`, values: sensorSample(rng, 'worn') }), { qos: 1 });
    }
    await client.endAsync();

    const list = (): DeviceJson[] => {
      const r = cli(['devices', '--json', ...dataArgs]);
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as DeviceJson[];
    };
    // All records count (a health window may close meanwhile); the readings are the inference stream's.
    await until(() => (list().find((d) => d.id === 'cam-1')?.counters.stored ?? 0) >= 50, 30_000, 'stored 50');
    const inference = async (): Promise<number> =>
      (await hubApi<{ streamStats: { stream: string; count: number }[] }>(hub, 'GET', '/v1/devices/cam-1')).streamStats.filter((s) => s.stream === 'inference').reduce((a, s) => a + s.count, 0);
    assert.equal(await inference(), 50, 'each reading stored once');
    const cam = list().find((d) => d.id === 'cam-1')!;
    assert.equal(cam.online, true);
    assert.equal(cam.group, 'line-1');
    assert.deepEqual(cam.labels, { site: 'plant-a' });
    assert.deepEqual(cam.models, [{ name: 'machine-state', version: '1.0.0' }]);
    assert.equal(cam.counters.gaps, 0);
    const table = cli(['devices', ...dataArgs]);
    assert.match(table.stdout, /cam-1/);

    const exit = await agent.stop();
    assert.equal(exit.code, 0, `agent exit ${exit.code ?? exit.signal}: ${agent.stderr}`);
    await until(() => list().find((d) => d.id === 'cam-1')?.online === false, 10_000, 'device shown offline');
    const hubExit = await hub.proc.stop();
    assert.equal(hubExit.code, 0, hub.proc.stderr);
  });

  it('a bad agent config exits 2 and names every problem', () => {
    const bad = join(root, 'bad.json');
    writeFileSync(bad, JSON.stringify({ deviceId: 'x/y', hub: { url: 'ftp://nope', token: 'short' }, models: [], pipelines: [] }));
    const r = cli(['agent', '--config', bad]);
    assert.equal(r.status, 2);
    for (const field of ['deviceId', 'dataDir', 'hub.url', 'hub.token', 'models', 'pipelines']) assert.match(r.stderr, new RegExp(field.replace('.', '\\.')));
  });

  it('unknown commands exit 2 with help', () => {
    const r = cli(['frobnicate']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command/);
    assert.equal(cli(['--help']).status, 0);
  });
});
