/**
 * Fleet drift monitoring end to end, every part real: the hub and six inspection-camera agents as
 * child processes (`edgefleet hub`, `edgefleet agent`), the part-defect model registered at the
 * hub (its manifest carries the reference bins), simulated cameras publishing PNG frames over
 * MQTT (scripts/fleet/cameras.ts, the demo's cameras). Agents summarize each window on the
 * device (agent/drift), the summaries travel through the outbox, the hub merges and tests them
 * (hub/drift) and raises alerts (hub/alerts).
 *
 *   1. Nominal scenes: no alert.
 *   2. The lighting of line 1 drops (three cameras) and one camera of line 2 gets a dirty lens
 *      (blur): an alert names the dimmed devices and `brightness` (and no line-2 camera); the
 *      blurred camera is named for `sharpness`, its healthy neighbours on line 2 are not.
 *
 * Hub windows are 4 s instead of 15 min (agent windows 1 s), and `minCount` is lowered to what a
 * camera sends in one window here, so the whole run takes about a minute.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { SimulatedCamera } from '../../scripts/fleet/cameras.ts';
import { hubApi, startHubProcess, type HubInfo } from '../../scripts/fleet/hub-process.ts';
import { REPO_ROOT, ServiceProcess } from '../../scripts/fleet/processes.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { until } from '../helpers/fleet-in-process.ts';

const root = mkdtempSync(join(tmpdir(), 'ef-drift-e2e-'));
const FPS = 30;
const HUB_WINDOW_MS = 4000;
const LINE1 = ['cam-1', 'cam-2', 'cam-3'];
const LINE2 = ['cam-4', 'cam-5', 'cam-6'];
const DIRTY = 'cam-6';

interface Alert {
  id: string;
  state: string;
  feature: string;
  scope: string;
  scopeId: string;
  devices: string[];
  message: string;
}

describe('fleet drift, hub and six camera agents as processes', () => {
  let hub: HubInfo;
  const procs: ServiceProcess[] = [];
  const cameras = new Map<string, SimulatedCamera>();
  const alerts = async (): Promise<Alert[]> => (await hubApi<{ alerts: Alert[] }>(hub, 'GET', '/v1/alerts')).alerts;

  before(async () => {
    await makeModels({ outDir: join(REPO_ROOT, 'models') });
    const hubConfig = join(root, 'hub.json');
    writeFileSync(hubConfig, JSON.stringify({ drift: { windowMs: HUB_WINDOW_MS, graceMs: 1500, tickMs: 250, thresholds: { minCount: 60 } } }));
    hub = await startHubProcess({ dataDir: join(root, 'hub'), logFile: join(root, 'hub.log'), configFile: hubConfig });
    procs.push(hub.proc);
    // The operator registers the model the cameras run: its manifest is the drift reference.
    const manifest = JSON.parse(await readFile(join(REPO_ROOT, 'models', 'part-defect.manifest.json'), 'utf8')) as { name: string; version: string };
    await hubApi(hub, 'POST', '/v1/models', { manifest });
    const put = await fetch(`${hub.httpUrl}/v1/models/${manifest.name}/${manifest.version}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: await readFile(join(REPO_ROOT, 'models', 'part-defect.onnx')),
    });
    assert.equal(put.status, 201, await put.text());

    for (const [i, id] of [...LINE1, ...LINE2].entries()) {
      const group = LINE1.includes(id) ? 'line-1' : 'line-2';
      const dev = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, group });
      const lens = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id: `${id}-lens`, kind: 'sensor', device: id, group });
      const config = writeAgentConfig({
        dir: join(root, id),
        deviceId: id,
        token: dev.token,
        mqttUrl: hub.mqttUrl,
        modelsDir: join(REPO_ROOT, 'models'),
        extra: {
          models: [{ manifest: join(REPO_ROOT, 'models', 'part-defect.manifest.json') }],
          pipelines: [{ name: 'camera', model: 'part-defect', input: { type: 'mqtt', format: 'image' } }],
          drift: { windowMs: 1000 },
          health: { windowMs: 1000 },
        },
      });
      const proc = new ServiceProcess(id, ['agent', '--config', config], { logFile: join(root, `${id}.log`) });
      procs.push(proc);
      await proc.waitForMsg('agent running', 60_000);
      cameras.set(id, new SimulatedCamera({ sensorId: `${id}-lens`, token: lens.token, deviceId: id, mqttUrl: hub.mqttUrl, input: 'camera', framesPerSecond: FPS, seed: 500 + i }));
    }
    for (const c of cameras.values()) await c.start();
  });

  after(async () => {
    for (const c of cameras.values()) await c.stop().catch(() => undefined);
    for (const p of [...procs].reverse()) await p.stop(10_000).catch(() => undefined);
    rmSync(root, { recursive: true, force: true });
  });

  it('nominal scenes raise no alert; dimmed lighting and a dirty lens are named, by device and feature', async () => {
    // Nominal: wait until the hub has tested a few windows with every camera in them.
    await until(
      async () => {
        const r = await hubApi<{ windows?: { devices?: number }[] }>(hub, 'GET', '/v1/drift?model=part-defect&scope=fleet');
        return (r.windows ?? []).filter((w) => (w.devices ?? 0) >= 6).length >= 3;
      },
      90_000,
      'three tested hub windows with all six cameras',
    );
    assert.deepEqual(await alerts(), [], 'no alert while every scene is nominal');

    for (const id of LINE1) cameras.get(id)!.setScene({ brightness: 0.7 });
    cameras.get(DIRTY)!.setScene({ blur: 1.6 });
    const changedAt = Date.now();

    let found: Alert[] = [];
    await until(
      async () => {
        found = await alerts();
        const lighting = found.some((a) => a.feature === 'brightness' && LINE1.every((d) => a.devices.includes(d)));
        const lens = found.some((a) => a.feature === 'sharpness' && a.devices.includes(DIRTY));
        return lighting && lens;
      },
      90_000,
      'alerts for the lighting of line 1 and the dirty lens',
    );
    const seconds = (Date.now() - changedAt) / 1000;
    const lighting = found.filter((a) => a.feature === 'brightness');
    for (const a of lighting) for (const d of a.devices) assert.ok(LINE1.includes(d), `brightness alert names only line-1 cameras: ${a.message}`);
    // Dimming lowers sharpness too (it is a gradient measure), so line 1 may be named for it
    // as well; the healthy cameras of line 2 never are.
    const lens = found.filter((a) => a.feature === 'sharpness');
    for (const a of lens) for (const d of LINE2.filter((x) => x !== DIRTY)) assert.ok(!a.devices.includes(d), `sharpness alert does not name ${d}: ${a.message}`);
    for (const a of found) assert.match(a.message, /\w+ (up|down|changed)/, 'the effect is told in words');
    process.stdout.write(
      `drift-e2e: alerts=${found.length} after=${seconds.toFixed(1)}s hub_window=${HUB_WINDOW_MS / 1000}s\n${found.map((a) => `  [${a.scope} ${a.scopeId}] ${a.message}`).join('\n')}\n`,
    );
  });
});
