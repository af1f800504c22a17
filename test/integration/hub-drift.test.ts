// Hub drift monitoring end to end on a real hub (aedes on port 0, SQLite in a temp dir, fake
// clock): scripted devices publish telemetry batches carrying drift summaries built by the
// shared DriftAccumulator from the synthetic sensor generator; the hub merges, tests each closed
// window against the release manifest's reference, and alerts.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import mqtt from 'mqtt';
import { run as alertsCli } from '../../cli/commands/alerts.ts';
import { run as driftCli } from '../../cli/commands/drift.ts';
import { ALERTS_TOPIC } from '../../hub/alerts/delivery.ts';
import { DRIFT_KIND, DRIFT_STREAM } from '../../shared/drift/summary.ts';
import type { ScriptedDevice } from './hub-rollouts-fixture.ts';
import { DriftFixture, MODEL, T0, WINDOW_MS, until, type Shift } from './hub-drift-fixture.ts';

const DEVICES = 20;
const READINGS = 300;
const SHIFTED = ['m03', 'm08', 'm15'];
const AUTO_RESOLVE = 2;

interface AlertBody {
  id: string;
  state: string;
  scope: string;
  scopeId: string;
  feature: string;
  message: string;
  devices: string[];
  resolvedBy: string | null;
  evidence: { findings: { id: string; q: number | null; effect: { shiftSd: number | null } }[] };
}

describe('hub drift: aggregation, detection, alerts', { timeout: 180_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-hub-drift-'));
  const fx = new DriftFixture(dir);
  const devices: ScriptedDevice[] = [];
  const consumerMessages: { event: string; alert: AlertBody }[] = [];
  let consumer: mqtt.MqttClient | undefined;
  let consumerToken = '';
  let w = T0; // next window to send

  before(async () => {
    await fx.start({ alerts: { autoResolveWindows: AUTO_RESOLVE } });
    await fx.release(MODEL.name, MODEL.version);
    for (let i = 0; i < DEVICES; i++) {
      const d = await fx.register(`m${String(i).padStart(2, '0')}`, 'line-1');
      await d.connect();
      devices.push(d);
    }
    ({ token: consumerToken } = await fx.ok<{ token: string }>('POST', '/v1/devices', { id: 'mes-1', kind: 'consumer', group: 'line-1' }));
    await connectConsumer();
  });

  async function connectConsumer(): Promise<void> {
    await consumer?.endAsync(true);
    consumer = await mqtt.connectAsync(fx.hub.mqttUrl, { clientId: 'mes-1', username: 'mes-1', password: consumerToken, protocolVersion: 4, reconnectPeriod: 0 });
    consumer.on('message', (_t, p) => consumerMessages.push(JSON.parse(p.toString('utf8')) as { event: string; alert: AlertBody }));
    const granted = await consumer.subscribeAsync(ALERTS_TOPIC, { qos: 1 });
    assert.equal(granted[0]?.qos, 1, 'a consumer may subscribe to the alerts topic');
  }

  after(async () => {
    await consumer?.endAsync(true);
    await fx.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function window(shifted: ReadonlyMap<string, Shift> = new Map()): Promise<number> {
    const ws = w;
    await fx.sendWindow(devices, ws, READINGS, shifted);
    await fx.closeWindow(ws);
    w += WINDOW_MS;
    return ws;
  }

  const alerts = async (state?: string): Promise<AlertBody[]> => (await fx.ok<{ alerts: AlertBody[] }>('GET', `/v1/alerts${state ? `?state=${state}` : ''}`)).alerts;

  test('no drift: no finding and no alert over 8 windows, every window tested', async () => {
    for (let i = 0; i < 8; i++) await window();
    const drift = await fx.ok<{ windows: { devices: number; tests: number; headlines: string[]; skipped?: string }[]; findings: unknown[] }>('GET', `/v1/drift?model=${MODEL.name}&version=${MODEL.version}`);
    assert.equal(drift.windows.length, 8);
    for (const win of drift.windows) {
      assert.equal(win.skipped, undefined);
      assert.equal(win.devices, DEVICES);
      assert.ok(win.tests > DEVICES, `fleet, group and per-device tests ran (${win.tests})`);
    }
    assert.deepEqual(drift.findings, []);
    assert.deepEqual(await alerts(), []);
  });

  test('a 1 SD shift on 3 of 20 devices: one alert naming exactly those devices and the feature, in words', async () => {
    const shift = new Map(SHIFTED.map((id) => [id, { feature: 'temp_c', sd: 1 }]));
    const ws = await window(shift);
    const open = await alerts('open');
    assert.equal(open.length, 1, JSON.stringify(open.map((a) => a.message)));
    const a = open[0] as AlertBody;
    assert.equal(a.scope, 'device');
    assert.equal(a.scopeId, 'line-1');
    assert.equal(a.feature, 'temp_c');
    assert.deepEqual(a.devices, SHIFTED);
    assert.match(a.message, /^temp_c up (0\.[89]\d|1\.\d\d) SD on 3 of 20 devices in line-1 \(machine-state@1\.0\.0\): m03, m08, m15$/);
    assert.deepEqual(a.evidence.findings.map((f) => f.id).sort(), SHIFTED);
    for (const f of a.evidence.findings) assert.ok(f.q !== null && f.q < 1e-4);
    // The API tells it per device and feature too.
    const drift = await fx.ok<{ findings: { id: string; feature: string; scope: string; message: string }[] }>('GET', `/v1/drift?model=${MODEL.name}&scope=device&feature=temp_c&from=${ws}`);
    assert.deepEqual(drift.findings.map((f) => f.id).sort(), SHIFTED);
    // Delivered to the MQTT consumer.
    await until(() => consumerMessages.some((m) => m.event === 'opened' && m.alert.id === a.id), 10_000, 'alert on the MQTT topic');
    // Prometheus.
    const metrics = await (await fetch(`${fx.hub.httpUrl}/metrics`, { headers: { authorization: `Bearer ${fx.hub.adminToken}` } })).text();
    assert.match(metrics, /edgefleet_hub_alerts_open\{model="machine-state@1\.0\.0",scope="device",feature="temp_c"\} 1/);
    assert.match(metrics, /edgefleet_hub_drift_findings_total\{model="machine-state@1\.0\.0",scope="device",kind="window"\} 3/);
  });

  test('the drift persisting refreshes the same alert (de-duplicated while open)', async () => {
    const shift = new Map(SHIFTED.map((id) => [id, { feature: 'temp_c', sd: 1 }]));
    await window(shift);
    const all = await alerts();
    assert.equal(all.length, 1);
    assert.equal((all[0] as AlertBody & { windows: number }).windows, 2);
  });

  test('a duplicated or late re-sent summary does not change merged counts', async () => {
    const ws = w - WINDOW_MS; // the last window, already tested
    const rowsBefore = await fx.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, ws);
    const d = devices[3] as ScriptedDevice;
    const original = fx.summary(d.id, ws, READINGS, undefined, 'resend');
    // The same summary twice, in new telemetry records (new seq), after the window was tested.
    await d.telemetry([{ stream: DRIFT_STREAM, kind: DRIFT_KIND, body: original }]);
    await until(async () => (await fx.mergedSummaries(ws)) === DEVICES + 1, 10_000, 'the late summary merged once');
    const afterFirst = await fx.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, ws);
    await d.telemetry([{ stream: DRIFT_STREAM, kind: DRIFT_KIND, body: original }]);
    await d.telemetry([{ stream: DRIFT_STREAM, kind: DRIFT_KIND, body: original }]);
    await until(async () => {
      const text = await fx.hub.registry.getSingleMetricAsString('edgefleet_hub_drift_summaries_total');
      return /result="duplicate"\} 2/.test(text);
    }, 10_000, 'two duplicates counted');
    assert.deepEqual(await fx.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, ws), afterFirst, 'duplicates change nothing');
    // The genuinely new (late) summary was merged into its device's row only, exactly once.
    const changed = afterFirst.filter((r, i) => r.aggregate !== rowsBefore[i]?.aggregate);
    assert.deepEqual(changed.map((r) => [r.deviceId, r.summaries, r.count]), [[d.id, 2, READINGS * 2]]);
    assert.match(await fx.hub.registry.getSingleMetricAsString('edgefleet_hub_drift_summaries_total'), /result="late"\} 1/);
    // The tested window is not tested again.
    await fx.hub.drift.tick();
    const drift = await fx.ok<{ windows: unknown[] }>('GET', `/v1/drift?model=${MODEL.name}&from=${ws}&to=${ws + 1}`);
    assert.equal(drift.windows.length, 1);
  });

  test('a hub restart neither tests a window again nor repeats an alert; the CLI tells the alert in words', async () => {
    const before = await alerts();
    const windows = (await fx.ok<{ windows: unknown[] }>('GET', '/v1/drift')).windows.length;
    await fx.stop();
    await fx.start({ alerts: { autoResolveWindows: AUTO_RESOLVE } });
    for (const d of devices) await d.connect();
    await connectConsumer();
    await fx.hub.drift.tick();
    assert.equal((await fx.ok<{ windows: unknown[] }>('GET', '/v1/drift')).windows.length, windows);
    assert.deepEqual(await alerts(), before);
    const out: string[] = [];
    const io = { out: (s: string) => out.push(s), err: (s: string) => out.push(s), env: {} };
    const hub = ['--hub', fx.hub.httpUrl, '--token', fx.hub.adminToken];
    assert.equal(await alertsCli([...hub, '--state', 'open'], io), 0);
    assert.match(out.join(''), /al-[0-9a-f]{12}\s+open\s+\S+\s+temp_c up \d\.\d\d SD on 3 of 20 devices in line-1/);
    out.length = 0;
    assert.equal(await driftCli([...hub, '--model', `${MODEL.name}@${MODEL.version}`, '--scope', 'device'], io), 0);
    assert.match(out.join(''), /device\/m03 {2}temp_c up \d\.\d\d SD on device m03 vs its 17 peers/);
    assert.equal(await driftCli([...hub, '--model', '@x'], io), 2);
  });

  test('lifecycle: acknowledge, then auto-resolve after clean windows; a closed alert cannot be acknowledged', async () => {
    const [a] = await alerts('open');
    assert.ok(a);
    const acked = await fx.ok<AlertBody>('POST', `/v1/alerts/${a.id}/ack`);
    assert.equal(acked.state, 'acknowledged');
    assert.equal((await fx.api('POST', `/v1/alerts/${a.id}/ack`)).status, 409);
    for (let i = 0; i < AUTO_RESOLVE - 1; i++) await window();
    assert.equal((await fx.ok<AlertBody>('GET', `/v1/alerts/${a.id}`)).state, 'acknowledged');
    await window();
    const resolved = await fx.ok<AlertBody>('GET', `/v1/alerts/${a.id}`);
    assert.equal(resolved.state, 'resolved');
    assert.equal(resolved.resolvedBy, 'auto');
    assert.equal((await fx.api('POST', `/v1/alerts/${a.id}/resolve`)).status, 409);
    await until(() => consumerMessages.some((m) => m.event === 'resolved' && m.alert.id === a.id), 10_000, 'resolution on the MQTT topic');
    assert.deepEqual(consumerMessages.map((m) => m.event), ['opened', 'acknowledged', 'resolved']);
    assert.match(await fx.hub.registry.getSingleMetricAsString('edgefleet_hub_alerts_open'), /^(?![\s\S]*\} 1)/);
    assert.deepEqual(await alerts('open'), []);
  });

  test('retention: a fake clock past drift.retentionDays prunes merged counts, reports and resolved alerts', async () => {
    const first = T0;
    assert.ok((await fx.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, first)).length > 0);
    fx.clock.t = w + 31 * 86_400_000;
    const pruned = await fx.hub.drift.prune();
    assert.ok(pruned.windows >= DEVICES * 8 && pruned.summaries > 0 && pruned.reports > 0 && pruned.alerts === 1, JSON.stringify(pruned));
    assert.deepEqual(await fx.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, first), []);
    assert.deepEqual((await fx.ok<{ windows: unknown[] }>('GET', '/v1/drift')).windows, []);
    assert.deepEqual(await alerts(), []);
    // A summary of a pruned window is refused as expired, not merged again.
    const d = devices[0] as ScriptedDevice;
    await d.telemetry([{ stream: DRIFT_STREAM, kind: DRIFT_KIND, body: fx.summary(d.id, first, 150, undefined, 'old') }]);
    await until(async () => /result="expired"\} 1/.test(await fx.hub.registry.getSingleMetricAsString('edgefleet_hub_drift_summaries_total')), 10_000, 'expired summary counted');
    assert.deepEqual(await fx.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, first), []);
  });
});
