/**
 * Issue #4 feedback loop and KPIs, end to end on a real hub (aedes on port 0, SQLite in a temp
 * dir):
 *  - raw MQTT devices publish telemetry batches with chosen prediction times; feedback over
 *    HTTP is matched (known ids), counted and refused (unknown ids, wrong labels, an id two
 *    devices share), and realized accuracy lands in the window of the PREDICTION, not of the
 *    feedback; KPIs (latency, error rate, cpuMs, cost matrix, uptime on the hub's fake clock)
 *    come out of the indexed health windows and presence log; Prometheus gauges follow;
 *  - MQTT feedback from a sensor of the device and from a consumer is stored, the ACL refuses a
 *    sensor and a device writing another device's feedback;
 *  - a real agent (HealthMonitor → outbox → hub ingest) serving machine-state: its health
 *    windows (with cpuMs) and inference ids show up in the KPIs, and HTTP feedback on its real
 *    inference ids gives realized accuracy.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import type { FeedbackResult } from '../../hub/feedback/feedback.ts';
import type { ModelVersionKpis } from '../../hub/kpis/kpis.ts';
import { wilsonInterval } from '../../hub/kpis/math.ts';
import { silentLogger } from '../../shared/log.ts';
import { PROTOCOL_VERSION, topics, type TelemetryRecord } from '../../shared/protocol.ts';
import { LATENCY_EDGES_MS, type HealthWindow } from '../../shared/updates.ts';
import { MACHINE_STATES, mulberry32, sensorSample, SENSOR_FEATURES } from '../../scripts/lib/synthetic.ts';
import { InProcessFleet, until } from '../helpers/fleet-in-process.ts';

const HOUR = 3_600_000;
const MATRIX = { defect: { ok: 50 }, ok: { defect: 2 } };

interface Ctx {
  hub: Hub;
  clock: { t: number };
  root: string;
  clients: MqttClient[];
}

async function startHub(root: string, clock: { t: number } | undefined, kpis: Record<string, unknown>): Promise<Hub> {
  const config = loadHubConfig({
    env: {},
    overrides: { dataDir: join(root, 'hub'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, kpis },
  });
  const hub = await createHub(config, { log: silentLogger(), ...(clock ? { now: () => clock.t } : {}) });
  await hub.start(new AbortController().signal);
  return hub;
}

async function api<T>(hub: Hub, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const res = await fetch(`${hub.httpUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${hub.adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as T };
}

async function principal(hub: Hub, body: Record<string, unknown>): Promise<string> {
  const r = await api<{ token: string }>(hub, 'POST', '/v1/devices', { group: 'g', ...body });
  assert.equal(r.status, 201);
  return r.body.token;
}

async function connect(ctx: Ctx, id: string, token: string): Promise<MqttClient> {
  const c = await mqtt.connectAsync(ctx.hub.mqttUrl, { clientId: id, username: id, password: token, protocolVersion: 4, reconnectPeriod: 0 });
  ctx.clients.push(c);
  return c;
}

/** Publishes one telemetry batch and waits for the hub's ack and for the KPI index to catch up. */
async function sendTelemetry(ctx: Ctx, client: MqttClient, deviceId: string, records: TelemetryRecord[]): Promise<void> {
  const batchId = `b-${deviceId}-${records[0]?.seq ?? 0}`;
  const acked = new Promise<void>((resolve) => {
    client.on('message', (topic, payload) => {
      if (topic === topics.of(deviceId, 'ack') && (JSON.parse(payload.toString()) as { batchId: string }).batchId === batchId) resolve();
    });
  });
  await client.subscribeAsync(topics.of(deviceId, 'ack'), { qos: 1 });
  await client.publishAsync(topics.of(deviceId, 'telemetry'), JSON.stringify({ v: PROTOCOL_VERSION, type: 'telemetry', deviceId, batchId, records }), { qos: 1 });
  await acked;
  await ctx.hub.kpiIndex.idle();
}

let seq = 0;
const inference = (id: string, label: string, confidence: number, ts: number): TelemetryRecord => ({
  stream: 'inference',
  epoch: 1,
  seq: seq++,
  ts,
  kind: 'inference',
  body: { id, pipeline: 'p', model: 'parts', version: '1.0.0', label, confidence, margin: 0.1, latencyMs: 2 },
});
const latencyAt = (ms: number, n: number): number[] => {
  const a = new Array<number>(LATENCY_EDGES_MS.length + 1).fill(0);
  a[LATENCY_EDGES_MS.findIndex((e) => e >= ms)] = n;
  return a;
};
const health = (windowStart: number, ok: number, errors: number, latencyMs: number, cpuMs?: number): TelemetryRecord => {
  const w: HealthWindow = {
    model: 'parts',
    version: '1.0.0',
    windowStart,
    windowMs: 60_000,
    ok,
    errors,
    latency: latencyAt(latencyMs, ok),
    classCounts: [ok, 0],
    confidence: [0, 0, 0, 0, 0, 0, 0, 0, 0, ok],
    ...(cpuMs === undefined ? {} : { cpuMs }),
  };
  return { stream: 'health', epoch: 1, seq: seq++, ts: windowStart + 60_000, kind: 'health', body: { ...w } };
};

describe('feedback and KPIs on a hub with raw MQTT devices', () => {
  const root = mkdtempSync(join(tmpdir(), 'ef-feedback-'));
  const T0 = Math.floor(Date.now() / HOUR) * HOUR - 10 * HOUR;
  const ctx = { clock: { t: T0 - HOUR }, root, clients: [] as MqttClient[] } as Ctx;
  after(async () => {
    for (const c of ctx.clients) await c.endAsync(true).catch(() => undefined);
    if (ctx.hub) await ctx.hub.stop();
    rmSync(root, { recursive: true, force: true });
  });

  void test('HTTP feedback: known, unknown, ambiguous ids and wrong labels; accuracy by prediction time; KPIs and gauges', async () => {
    ctx.hub = await startHub(root, ctx.clock, { labels: { parts: ['ok', 'defect'] }, costs: { parts: { matrix: MATRIX } } });
    const hub = ctx.hub;
    const tokens = { d1: await principal(hub, { id: 'd1' }), d2: await principal(hub, { id: 'd2' }) };
    ctx.clock.t = T0 + 10 * 60_000; // d1 comes online 10 min into the period
    const d1 = await connect(ctx, 'd1', tokens.d1);
    const d2 = await connect(ctx, 'd2', tokens.d2);

    // Hour 0: a1..a4, hour 1: b1..b4 (prediction times), and an id `dup` both devices used.
    await sendTelemetry(ctx, d1, 'd1', [
      inference('a1', 'ok', 0.9, T0 + 1000),
      inference('a2', 'ok', 0.8, T0 + 2000),
      inference('a3', 'defect', 0.7, T0 + 3000),
      inference('a4', 'ok', 0.6, T0 + 4000),
      inference('b1', 'ok', 0.9, T0 + HOUR + 1000),
      inference('b2', 'defect', 0.9, T0 + HOUR + 2000),
      inference('b3', 'ok', 0.9, T0 + HOUR + 3000),
      inference('b4', 'ok', 0.9, T0 + HOUR + 4000),
      inference('dup', 'ok', 0.5, T0 + HOUR + 5000),
      health(T0, 400, 0, 3, 800), // 400 requests at ~3 ms, 0.8 CPU-s
      health(T0 + HOUR, 590, 10, 20, 1200), // 600 requests at ~20 ms, 1.2 CPU-s
      health(T0 + 2 * HOUR, 5, 0, 3), // an older agent's window without cpuMs, outside the query period
    ]);
    await sendTelemetry(ctx, d2, 'd2', [inference('dup', 'defect', 0.5, T0 + HOUR + 6000)]);
    // A resent batch changes nothing (records are stored and indexed once).
    await sendTelemetry(ctx, d2, 'd2', [{ ...inference('dup', 'defect', 0.5, T0 + HOUR + 6000), seq: seq - 1 }]);

    // Feedback arrives much later (feedback time is not prediction time).
    ctx.clock.t = T0 + 2 * HOUR;
    const fb = await api<FeedbackResult>(hub, 'POST', '/v1/feedback', {
      feedback: [
        { id: 'a1', label: 'ok' }, // correct
        { id: 'a2', label: 'defect' }, // wrong: missed defect, costs 50
        { id: 'a3', label: 'defect', ts: T0 + 5 * HOUR }, // correct
        { id: 'b1', label: 'ok' }, // correct
        { id: 'b2', label: 'ok' }, // wrong: false reject, costs 2
        { id: 'nope', label: 'ok' }, // unknown
        { id: 'b3', label: 'scratch' }, // not a label of parts
        { id: 'dup', label: 'ok' }, // on two devices, no device named
        { id: 'dup', label: 'defect', device: 'd2' }, // correct, on d2
      ],
    });
    assert.equal(fb.status, 200);
    assert.equal(fb.body.received, 9);
    assert.equal(fb.body.matched, 6);
    assert.equal(fb.body.unknown, 1);
    assert.equal(fb.body.invalidLabel, 1);
    assert.equal(fb.body.ambiguous, 1);
    assert.deepEqual(
      fb.body.refused.map((r) => [r.id, r.reason]),
      [
        ['nope', 'unknown'],
        ['b3', 'invalid_label'],
        ['dup', 'ambiguous'],
      ],
    );
    // Unknown ids are not stored as matches; malformed bodies are refused whole.
    assert.equal((await hub.store.findInferences([{ id: 'nope' }])).length, 0);
    assert.equal((await api(hub, 'POST', '/v1/feedback', { feedback: [{ id: 'x' }] })).status, 400);
    assert.equal((await api(hub, 'POST', '/v1/feedback', { feedback: [] })).status, 400);

    const q = `/v1/kpis?model=parts&from=${T0}&to=${T0 + 2 * HOUR}&window=${HOUR}`;
    const r = await api<{ kpis: ModelVersionKpis[] }>(hub, 'GET', q);
    assert.equal(r.status, 200);
    assert.equal(r.body.kpis.length, 1);
    const k = r.body.kpis[0]!;
    assert.equal(k.version, '1.0.0');

    // Accuracy windows keyed by prediction time: hour 0 has a1 ✓, a2 ✗, a3 ✓; hour 1 b1 ✓, b2 ✗, dup@d2 ✓.
    assert.deepEqual(
      k.accuracy.windows.map((w) => [w.start, w.predictions, w.labelled, w.correct]),
      [
        [T0, 4, 3, 2],
        [T0 + HOUR, 6, 3, 2],
      ],
    );
    assert.ok(Math.abs((k.accuracy.windows[0]?.estimated ?? 0) - (0.9 + 0.8 + 0.7 + 0.6) / 4) < 1e-9);
    const realized = k.accuracy.realized;
    assert.ok(realized);
    assert.equal(realized.n, 6);
    assert.equal(realized.correct, 4);
    const ci = wilsonInterval(4, 6)!;
    assert.deepEqual(realized.ci95, [ci.lo, ci.hi]);
    assert.equal(k.accuracy.predictions, 10);
    assert.ok(k.accuracy.estimated && k.accuracy.estimated.n === 10);

    // Cost: one missed defect (50) and one false reject (2) over 6 labelled → 52/6 per prediction.
    assert.ok(k.cost);
    assert.equal(k.cost.labelled, 6);
    assert.equal(k.cost.total, 52);
    assert.ok(Math.abs((k.cost.per1000 ?? 0) - (52 / 6) * 1000) < 1e-9);

    // Health windows: 1000 requests, 10 errors, CPU 2.0 s over 1000 → 2 CPU-s per 1000.
    assert.equal(k.inferences, 1000);
    assert.equal(k.errors, 10);
    assert.ok(Math.abs((k.errorRate ?? 0) - 0.01) < 1e-12);
    assert.ok(k.cpu);
    assert.ok(Math.abs(k.cpu.secondsPer1000 - 2) < 1e-9);
    // 990 latencies (errors have none): p50 = rank 495, 95/590 into the (15, 20] ms bucket.
    assert.ok(k.latencyMs && Math.abs(k.latencyMs.p50 - (15 + (5 * 95) / 590)) < 1e-9 && k.latencyMs.p95 > 19 && k.latencyMs.p95 <= 20, JSON.stringify(k.latencyMs));
    assert.equal(k.devices, 1);
    // d1 came online 10 minutes into the 2 h period and is still online at its end.
    assert.ok(k.uptime !== null && Math.abs(k.uptime - 110 / 120) < 1e-9, `uptime ${k.uptime}`);

    // A later label for the same inference replaces the first (a correction), never adds.
    const again = await api<FeedbackResult>(hub, 'POST', '/v1/feedback', { feedback: [{ id: 'a2', label: 'ok', device: 'd1' }] });
    assert.equal(again.body.matched, 1);
    const k2 = (await api<{ kpis: ModelVersionKpis[] }>(hub, 'GET', q)).body.kpis[0]!;
    assert.equal(k2.accuracy.realized?.n, 6);
    assert.equal(k2.accuracy.realized?.correct, 5);
    assert.equal(k2.cost?.total, 2);

    // Bad queries.
    assert.equal((await api(hub, 'GET', `/v1/kpis?from=${T0}&to=${T0}`)).status, 400);
    assert.equal((await api(hub, 'GET', '/v1/kpis?bogus=1')).status, 400);

    // Gauges over the last hour of the hub's clock: [T0 + 1 h, T0 + 2 h).
    await hub.kpis.refreshGauges();
    const metrics = await hub.registry.metrics();
    const gauge = (name: string): number => {
      const m = new RegExp(`^edgefleet_hub_kpi_${name}\\{model="parts",version="1.0.0"\\} (\\S+)$`, 'm').exec(metrics);
      assert.ok(m, `gauge ${name} missing`);
      return Number(m[1]);
    };
    assert.equal(gauge('inferences'), 600);
    assert.ok(Math.abs(gauge('accuracy_ratio') - 2 / 3) < 1e-9);
    assert.equal(gauge('cpu_seconds_per_1000_inferences'), 2);
    assert.ok(Math.abs(gauge('cost_per_1000_inferences') - 2000 / 3) < 1e-6);
    assert.ok(gauge('uptime_ratio') === 1);
    assert.ok(gauge('latency_p95_seconds') > 0.019 && gauge('latency_p95_seconds') <= 0.02, 'p95 in seconds, not ms');
    assert.match(metrics, /edgefleet_hub_feedback_items_total\{result="unknown",source="http"\} 1/);
  });

  void test('MQTT feedback: a sensor of the device and a consumer may label; the ACL refuses other devices', async () => {
    const hub = ctx.hub;
    const sensor = await connect(ctx, 's1', await principal(hub, { id: 's1', kind: 'sensor', device: 'd1' }));
    const mes = await connect(ctx, 'mes', await principal(hub, { id: 'mes', kind: 'consumer' }));
    // QoS 1: the broker acknowledges after the hub's handler has stored the feedback.
    await sensor.publishAsync('edgefleet/v1/d1/feedback', JSON.stringify({ feedback: [{ id: 'a4', label: 'ok' }] }), { qos: 1 });
    await mes.publishAsync('edgefleet/v1/d1/feedback', JSON.stringify({ v: 1, feedback: [{ id: 'b3', label: 'ok' }, { id: 'nope', label: 'ok' }] }), { qos: 1 });
    // The device itself may label its own inferences.
    await ctx.clients[0]!.publishAsync('edgefleet/v1/d1/feedback', JSON.stringify({ feedback: [{ id: 'b4', label: 'defect' }] }), { qos: 1 });
    // The topic's device scopes the ids: `dup` is unambiguous on d2's topic.
    await mes.publishAsync('edgefleet/v1/d2/feedback', JSON.stringify({ feedback: [{ id: 'dup', label: 'ok' }] }), { qos: 1 });
    const rows = await hub.store.findInferences([
      { id: 'a4', deviceId: 'd1' },
      { id: 'b3', deviceId: 'd1' },
      { id: 'b4', deviceId: 'd1' },
      { id: 'dup', deviceId: 'd2' },
      { id: 'dup', deviceId: 'd1' },
    ]);
    assert.deepEqual(
      rows.map((r) => [r.deviceId, r.id, r.truth]),
      [
        ['d1', 'a4', 'ok'],
        ['d1', 'b3', 'ok'],
        ['d1', 'b4', 'defect'],
        ['d2', 'dup', 'ok'],
        ['d1', 'dup', null],
      ],
    );
    assert.match(await hub.registry.metrics(), /edgefleet_hub_feedback_items_total\{result="unknown",source="mqtt"\} 1/);

    // A sensor writing another device's feedback, and a device writing another's, are refused:
    // the broker closes their connection and nothing is stored.
    const d2 = ctx.clients[1]!;
    for (const [client, topic] of [
      [sensor, 'edgefleet/v1/d2/feedback'],
      [d2, 'edgefleet/v1/d1/feedback'],
    ] as const) {
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
      client.publish(topic, JSON.stringify({ feedback: [{ id: 'dup', label: 'defect' }, { id: 'a1', label: 'defect' }] }), { qos: 1 });
      await closed;
    }
    const after2 = await hub.store.findInferences([{ id: 'dup' }, { id: 'a1' }]);
    assert.deepEqual(after2.map((r) => [r.deviceId, r.id, r.truth]).sort(), [
      ['d1', 'a1', 'ok'],
      ['d1', 'dup', null],
      ['d2', 'dup', 'ok'],
    ]);
    // A malformed MQTT feedback message is counted, not fatal.
    await mes.publishAsync('edgefleet/v1/d1/feedback', '{"feedback": "no"}', { qos: 1 });
    assert.match(await hub.registry.metrics(), /edgefleet_hub_feedback_bad_messages_total 1/);
  });
});

describe('KPIs from a real agent', () => {
  const fleet = new InProcessFleet();
  after(() => fleet.stop());

  void test('HealthMonitor windows (with cpuMs) and inference ids reach the KPIs; feedback on real ids', async () => {
    fleet.hub = await startHub(fleet.root, undefined, { labels: { 'machine-state': [...MACHINE_STATES] } });
    const hub = fleet.hub;
    const t0 = Date.now();
    const d = 'agent-1';
    await fleet.startAgent(d, { health: { windowMs: 500 } });
    const sensor = await fleet.connect('agent-1-vib', await fleet.addPrincipal({ id: 'agent-1-vib', kind: 'sensor', device: d }));
    const rng = mulberry32(7);
    const N = 60;
    const truth = new Map<string, string>();
    for (let i = 0; i < N; i++) {
      const cls = MACHINE_STATES[i % 3]!;
      const values = sensorSample(rng, cls);
      truth.set(`r-${i}`, cls);
      await sensor.publishAsync(topics.input(d, 'vibration'), JSON.stringify({ id: `r-${i}`, ts: Date.now(), features: Object.fromEntries(SENSOR_FEATURES.map((f, k) => [f, values[k]])) }), { qos: 1 });
    }
    const kpis = async (): Promise<ModelVersionKpis | undefined> =>
      (await api<{ kpis: ModelVersionKpis[] }>(hub, 'GET', `/v1/kpis?model=machine-state&from=${t0 - 60_000}&to=${Date.now() + 60_000}`)).body.kpis[0];
    // Health windows close every 500 ms; the outbox ships them with the inference records.
    // Inference records and health windows travel separately: wait for both (under load the
    // last health window can land after the last inference record; a CI-style run saw devices 0).
    await until(
      async () => {
        const x = await kpis();
        return x?.inferences === N && x.accuracy.predictions === N && x.devices === 1 && x.cpu?.inferences === N;
      },
      30_000,
      'all inferences and their health windows in the KPIs',
    );
    const k = (await kpis())!;
    assert.equal(k.devices, 1);
    assert.equal(k.errors, 0);
    assert.ok(k.latencyMs && k.latencyMs.p95 > 0);
    assert.ok(k.cpu, 'health windows carry cpuMs');
    assert.equal(k.cpu.inferences, N);
    assert.ok(k.cpu.cpuSeconds > 0 && k.cpu.secondsPer1000 > 0, JSON.stringify(k.cpu));
    assert.ok(k.uptime !== null && k.uptime > 0 && k.uptime <= 1);
    assert.equal(k.accuracy.realized, null);
    assert.ok(k.accuracy.estimated && k.accuracy.estimated.value > 0.5);

    // Ground truth for every real inference id, and one wrong label.
    const items = [...truth].map(([id, label]) => ({ id, label }));
    const fb = await api<FeedbackResult>(hub, 'POST', '/v1/feedback', { feedback: [...items, { id: 'r-0', label: 'broken' }] });
    assert.equal(fb.body.matched, N);
    assert.equal(fb.body.invalidLabel, 1);
    const k2 = (await kpis())!;
    assert.ok(k2.accuracy.realized);
    assert.equal(k2.accuracy.realized.n, N);
    // The demo model is ~97% accurate on held-out data.
    assert.ok(k2.accuracy.realized.value > 0.85, `accuracy ${k2.accuracy.realized.value}`);
    assert.ok(k2.accuracy.realized.ci95[0] < k2.accuracy.realized.value && k2.accuracy.realized.value <= k2.accuracy.realized.ci95[1]);
  });
});
