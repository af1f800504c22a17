/**
 * Feedback and KPIs per task (issue #13) on a real hub (aedes on port 0, SQLite in a temp dir):
 * releases of the repo's v2 demo manifests (conveyor-parts detection, spindle-rul regression,
 * bearing-anomaly) and the v1 part-defect classifier, put in the registry's table directly (the
 * upload/probe path is tested in hub-models-v2.test.ts); raw MQTT telemetry of inference records
 * shaped like agent/pipeline.ts writes them; feedback of each task's shape over HTTP and MQTT,
 * refusals per item with the reason; exact KPI numbers in GET /v1/kpis, the gauges and the CLI
 * table; the classifier's KPIs as before.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { formatKpis } from '../../cli/commands/kpis.ts';
import type { FeedbackResult } from '../../hub/feedback/feedback.ts';
import { feedbackTopic } from '../../hub/feedback/mqtt-feedback.ts';
import type { ModelVersionKpis } from '../../hub/kpis/kpis.ts';
import { wilsonInterval } from '../../hub/kpis/math.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { silentLogger } from '../../shared/log.ts';
import { PROTOCOL_VERSION, topics, type TelemetryRecord } from '../../shared/protocol.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';

const HOUR = 3_600_000;
const close = (a: number | null | undefined, b: number, what: string): void => assert.ok(a !== null && a !== undefined && Math.abs(a - b) < 1e-9, `${what}: ${a} != ${b}`);
const ci = (k: number, n: number): [number, number] => {
  const w = wilsonInterval(k, n)!;
  return [w.lo, w.hi];
};

async function api<T>(hub: Hub, method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const res = await fetch(`${hub.httpUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${hub.adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as T };
}

let seq = 0;
const rec = (model: string, id: string, ts: number, fields: Record<string, unknown>): TelemetryRecord => ({
  stream: 'inference',
  epoch: 1,
  seq: seq++,
  ts,
  kind: 'inference',
  body: { id, pipeline: 'p', model, version: '1.0.0', ...fields, latencyMs: 3, inputTs: null, source: null },
});
const box = (x1: number, y1: number, x2: number, y2: number) => ({ x1, y1, x2, y2 });
const det = (label: string, score: number, b: ReturnType<typeof box>) => ({ label, score, box: b });
const detection = (id: string, ts: number, dets: ReturnType<typeof det>[]): TelemetryRecord => {
  const counts: Record<string, number> = {};
  for (const d of dets) counts[d.label] = (counts[d.label] ?? 0) + 1;
  return rec('conveyor-parts', id, ts, { task: 'detection', count: dets.length, counts, detections: dets, topScore: dets[0]?.score ?? null });
};

describe('feedback and KPIs per task on a real hub', () => {
  const root = mkdtempSync(join(tmpdir(), 'ef-feedback-tasks-'));
  const T0 = Math.floor(Date.now() / HOUR) * HOUR - 10 * HOUR;
  const clock = { t: T0 };
  const clients: MqttClient[] = [];
  let hub: Hub | undefined;
  after(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
    if (hub) await hub.stop();
    rmSync(root, { recursive: true, force: true });
  });

  void test('detection, regression, anomaly and classification feedback give exact KPIs, gauges and table', async () => {
    const config = loadHubConfig({ env: {}, overrides: { dataDir: join(root, 'hub'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } } });
    hub = await createHub(config, { log: silentLogger(), now: () => clock.t });
    await hub.start(new AbortController().signal);
    const h = hub;
    for (const name of ['conveyor-parts', 'spindle-rul', 'bearing-anomaly', 'part-defect']) {
      const manifest = readFileSync(join(REPO_ROOT, 'models', `${name}.manifest.json`), 'utf8');
      const m = JSON.parse(manifest) as { version: string; artifact?: { sha256: string; size: number }; sha256?: string; size?: number };
      await h.store.createModelRelease(
        { name, version: m.version, sha256: m.artifact?.sha256 ?? m.sha256 ?? '0'.repeat(64), size: m.artifact?.size ?? m.size ?? 1, manifest, createdAt: clock.t },
        () => ({ release: '{}', keyId: 'test' }),
      );
    }
    const token = (await api<{ token: string }>(h, 'POST', '/v1/devices', { group: 'g', id: 'd1' })).body.token;
    const d1 = await mqtt.connectAsync(h.mqttUrl, { clientId: 'd1', username: 'd1', password: token, protocolVersion: 4, reconnectPeriod: 0 });
    clients.push(d1);
    await d1.subscribeAsync(topics.of('d1', 'ack'), { qos: 1 });

    const t = T0 + 60_000;
    const records: TelemetryRecord[] = [
      // Detection (conveyor-parts: labels bolt, nut, washer; score threshold 0.3).
      detection('i1', t, [det('bolt', 0.9, box(0, 0, 10, 10)), det('nut', 0.8, box(20, 20, 30, 30)), det('bolt', 0.2, box(50, 50, 60, 60))]),
      detection('i2', t + 1, [det('washer', 0.7, box(0, 0, 10, 10)), det('washer', 0.6, box(0, 0, 10, 10))]),
      detection('i3', t + 2, [det('nut', 0.5, box(0, 0, 10, 10))]),
      detection('i4', t + 3, [det('bolt', 0.9, box(0, 0, 10, 10))]),
      // Regression (spindle-rul: target rul).
      rec('spindle-rul', 'r1', t, { task: 'regression', values: { rul: 100 } }),
      rec('spindle-rul', 'r2', t + 1, { task: 'regression', values: { rul: 50 } }),
      rec('spindle-rul', 'r3', t + 2, { task: 'regression', values: { rul: 20 } }),
      rec('spindle-rul', 'r4', t + 3, { task: 'regression', values: { rul: 70 } }),
      // Anomaly (bearing-anomaly).
      ...[true, true, false, false, true, false].map((alarm, i) => rec('bearing-anomaly', `a${i + 1}`, t + i, { task: 'anomaly', score: alarm ? 0.3 : 0.05, alarm })),
      // v1 classifier (part-defect: good, defective), no task field.
      rec('part-defect', 'c1', t, { label: 'good', confidence: 0.9, margin: 0.8 }),
      rec('part-defect', 'c2', t + 1, { label: 'defective', confidence: 0.7, margin: 0.4 }),
      rec('part-defect', 'c3', t + 2, { label: 'good', confidence: 0.6, margin: 0.2 }),
    ];
    const acked = new Promise<void>((resolve) => d1.on('message', (topic) => topic === topics.of('d1', 'ack') && resolve()));
    await d1.publishAsync(topics.of('d1', 'telemetry'), JSON.stringify({ v: PROTOCOL_VERSION, type: 'telemetry', deviceId: 'd1', batchId: 'b1', records }), { qos: 1 });
    await acked;
    await h.kpiIndex.idle();

    clock.t = T0 + 30 * 60_000;
    const fb = await api<FeedbackResult>(h, 'POST', '/v1/feedback', {
      feedback: [
        // i1: bolt IoU 90/110 ✓, nut IoU 100/150 ✓, washer missed (FN); the 0.2 bolt is under the threshold.
        { id: 'i1', boxes: [{ label: 'bolt', box: box(1, 0, 11, 10) }, { label: 'nut', box: box(20, 20, 30, 35) }, { label: 'washer', box: box(70, 70, 80, 80) }] },
        // i2: one washer, two predictions on it: TP (IoU 1) + FP.
        { id: 'i2', boxes: [{ label: 'washer', box: box(0, 0, 10, 10) }] },
        // i3: nothing there: FP.
        { id: 'i3', boxes: [] },
        { id: 'i4', boxes: [{ label: 'screw', box: box(0, 0, 10, 10) }] }, // not a label
        { id: 'i4', label: 'bolt' }, // wrong shape for a detector
        { id: 'r1', values: { rul: 90 } },
        { id: 'r2', values: { rul: 53 } },
        { id: 'r3', values: { rul: 20 } },
        { id: 'r4', values: { temp: 1 } }, // not a target
        { id: 'a1', label: 'anomaly' }, // TP
        { id: 'a2', alarm: false }, // FP
        { id: 'a3', alarm: true }, // FN
        { id: 'a5', label: 'broken' }, // neither anomaly nor normal
        { id: 'c1', label: 'good' },
        { id: 'c2', label: 'good' },
      ],
    });
    assert.equal(fb.status, 200);
    assert.deepEqual([fb.body.received, fb.body.matched, fb.body.invalidLabel, fb.body.unknown], [15, 11, 4, 0]);
    assert.deepEqual(
      fb.body.refused.map((r) => [r.id, r.label, r.reason]),
      [
        ['i4', '1 box', 'invalid_label'],
        ['i4', 'bolt', 'invalid_label'],
        ['r4', 'temp=1', 'invalid_label'],
        ['a5', 'broken', 'invalid_label'],
      ],
    );
    assert.match(fb.body.refused[0]!.detail ?? '', /box label screw is not a label of conveyor-parts@1\.0\.0 \(bolt, nut, washer\)/);
    assert.match(fb.body.refused[1]!.detail ?? '', /conveyor-parts@1\.0\.0 is a detection model: give boxes, not label/);
    assert.match(fb.body.refused[2]!.detail ?? '', /temp is not a target of spindle-rul@1\.0\.0 \(rul\)/);
    // A malformed item (no truth, two truths) refuses the whole body, as before.
    assert.equal((await api(h, 'POST', '/v1/feedback', { feedback: [{ id: 'a4' }] })).status, 400);
    assert.equal((await api(h, 'POST', '/v1/feedback', { feedback: [{ id: 'a4', label: 'normal', alarm: false }] })).status, 400);

    // a4 (TN) over MQTT from the device itself.
    await d1.publishAsync(feedbackTopic('d1'), JSON.stringify({ feedback: [{ id: 'a4', alarm: false }] }), { qos: 1 });
    const deadline = Date.now() + 10_000;
    while ((await h.store.findInferences([{ id: 'a4', deviceId: 'd1' }]))[0]?.truth !== 'normal') {
      assert.ok(Date.now() < deadline, 'MQTT feedback stored');
      await new Promise((r) => setTimeout(r, 20));
    }

    const r = await api<{ kpis: ModelVersionKpis[] }>(h, 'GET', `/v1/kpis?from=${T0}&to=${T0 + HOUR}`);
    assert.equal(r.status, 200);
    const by = Object.fromEntries(r.body.kpis.map((k) => [k.model, k]));
    assert.deepEqual(Object.keys(by).sort(), ['bearing-anomaly', 'conveyor-parts', 'part-defect', 'spindle-rul']);

    const d = by['conveyor-parts']!.task!;
    assert.equal(d.kind, 'detection');
    assert.deepEqual([d.predictions, d.labelled], [4, 3]);
    assert.ok(d.detection);
    assert.deepEqual([d.detection.tp, d.detection.fp, d.detection.fn, d.detection.scoreThreshold, d.detection.iouThreshold], [3, 2, 1, 0.3, 0.5]);
    assert.deepEqual(d.detection.precision, { value: 3 / 5, n: 5, ci95: ci(3, 5) });
    assert.deepEqual(d.detection.recall, { value: 3 / 4, n: 4, ci95: ci(3, 4) });
    close(d.detection.meanIou, (90 / 110 + 100 / 150 + 1) / 3, 'mean IoU');
    assert.deepEqual(
      d.detection.byLabel.map((x) => [x.label, x.tp, x.fp, x.fn]),
      [
        ['bolt', 1, 0, 0],
        ['nut', 1, 1, 0],
        ['washer', 1, 1, 1],
      ],
    );
    // Non-classifier rows stay out of accuracy and cost.
    assert.equal(by['conveyor-parts']!.accuracy.realized, null);
    assert.equal(by['conveyor-parts']!.accuracy.predictions, 0);

    const g = by['spindle-rul']!.task!;
    assert.deepEqual([g.kind, g.predictions, g.labelled], ['regression', 4, 3]);
    assert.deepEqual(g.regression?.targets.map((e) => [e.target, e.n]), [['rul', 3]]);
    close(g.regression?.targets[0]?.mae, 13 / 3, 'MAE');
    close(g.regression?.targets[0]?.rmse, Math.sqrt(109 / 3), 'RMSE');

    const a = by['bearing-anomaly']!.task!;
    assert.deepEqual([a.kind, a.predictions, a.labelled], ['anomaly', 6, 4]);
    assert.ok(a.anomaly);
    assert.deepEqual([a.anomaly.tp, a.anomaly.fp, a.anomaly.fn, a.anomaly.tn], [1, 1, 1, 1]);
    assert.deepEqual(a.anomaly.precision, { value: 0.5, n: 2, ci95: ci(1, 2) });
    assert.deepEqual(a.anomaly.recall, { value: 0.5, n: 2, ci95: ci(1, 2) });
    assert.deepEqual(a.anomaly.alarmRate, { value: 0.5, n: 6, ci95: ci(3, 6) });

    const c = by['part-defect']!;
    assert.equal(c.task, null);
    assert.deepEqual([c.accuracy.predictions, c.accuracy.labelled, c.accuracy.realized?.correct], [3, 2, 1]);
    assert.deepEqual(c.accuracy.realized?.ci95, ci(1, 2));

    // Gauges over the last hour of the hub's clock.
    await h.kpis.refreshGauges();
    const metrics = await h.registry.metrics();
    const gauge = (name: string, model: string, extra = ''): number => {
      const m = new RegExp(`^edgefleet_hub_kpi_${name}\\{model="${model}",version="1.0.0"${extra}\\} (\\S+)$`, 'm').exec(metrics);
      assert.ok(m, `gauge ${name} of ${model} missing`);
      return Number(m[1]);
    };
    close(gauge('precision_ratio', 'conveyor-parts'), 0.6, 'precision gauge');
    close(gauge('recall_ratio', 'conveyor-parts'), 0.75, 'recall gauge');
    close(gauge('mean_iou_ratio', 'conveyor-parts'), (90 / 110 + 100 / 150 + 1) / 3, 'IoU gauge');
    close(gauge('mae', 'spindle-rul', ',target="rul"'), 13 / 3, 'MAE gauge');
    close(gauge('rmse', 'spindle-rul', ',target="rul"'), Math.sqrt(109 / 3), 'RMSE gauge');
    close(gauge('alarm_rate_ratio', 'bearing-anomaly'), 0.5, 'alarm rate gauge');
    close(gauge('precision_ratio', 'bearing-anomaly'), 0.5, 'anomaly precision gauge');
    close(gauge('accuracy_ratio', 'part-defect'), 0.5, 'classifier accuracy gauge');
    assert.doesNotMatch(metrics, /edgefleet_hub_kpi_precision_ratio\{model="part-defect"/);

    const table = formatKpis(r.body.kpis as never);
    assert.match(table, /conveyor-parts@1\.0\.0 .*P 0\.600 \(n=5\) R 0\.750 \(n=4\) IoU 0\.83/);
    assert.match(table, /spindle-rul@1\.0\.0 .*rul MAE 4\.333 RMSE 6\.028 \(n=3\)/);
    assert.match(table, /bearing-anomaly@1\.0\.0 .*P 0\.500 \(n=2\) R 0\.500 \(n=2\) alarms 50\.0%/);
  });
});
