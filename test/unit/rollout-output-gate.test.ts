/**
 * The output gate (issue #13, hub/rollouts/output-gate.ts): the task output statistic of
 * HealthWindow records (`output`) compared canary vs baseline with effect AND significance —
 * anomaly alarm rate (two-proportion), mean detections per frame / regression target (Welch) —
 * no verdict below minSamples, not compared when the sides report different statistics, absent
 * for windows without it (classifiers, old agents); through evaluateGate on a real SQLite store;
 * and the agent's HealthMonitor emitting `output` for v2 non-classification models only.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HealthMonitor } from '../../agent/health/health-monitor.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { evaluateGate } from '../../hub/rollouts/gates.ts';
import { compareOutputGate, mergeOutputs } from '../../hub/rollouts/output-gate.ts';
import { RolloutGatesSchema, RolloutSpecSchema } from '../../hub/rollouts/spec.ts';
import { SqliteHubStore } from '../../hub/store/sqlite-store.ts';
import type { RolloutDeviceRecord, RolloutRecord } from '../../hub/store/store.ts';
import { silentLogger } from '../../shared/log.ts';
import type { ModelSpec } from '../../shared/model-spec.ts';
import { CONFIDENCE_BINS, HEALTH_STREAM, HealthWindowSchema, LATENCY_EDGES_MS, type HealthOutput, type HealthWindow } from '../../shared/updates.ts';

const T = Date.UTC(2026, 0, 5, 12, 0, 0);
const gates = RolloutGatesSchema.parse({ minSamples: 100 });

/** A window of `ok` inferences (latency ~2 ms, one class) with an optional output statistic. */
function win(version: string, ok: number, output?: HealthOutput, windowStart = T): HealthWindow {
  const latency = new Array<number>(LATENCY_EDGES_MS.length + 1).fill(0);
  latency[3] = ok;
  const confidence = new Array<number>(CONFIDENCE_BINS).fill(0);
  confidence[8] = ok;
  return { model: 'm', version, windowStart, windowMs: 60_000, ok, errors: 0, latency, classCounts: [ok], confidence, ...(output ? { output } : {}) };
}
const alarms = (n: number, alarmsSeen: number): HealthOutput => ({ name: 'alarm', kind: 'rate', n, sum: alarmsSeen, sumSq: alarmsSeen });
/** `n` values with this mean and (population) SD. */
const meanOf = (name: string, n: number, mean: number, sd: number): HealthOutput => ({ name, kind: 'mean', n, sum: n * mean, sumSq: n * (sd * sd + mean * mean) });

describe('output gate (compareOutputGate)', () => {
  test('anomaly alarm rate: a jump of 0.02 → 0.20 fails; an unchanged rate passes', () => {
    const base = [win('1', 400, alarms(400, 8)), win('1', 400, alarms(400, 8))];
    const bad = compareOutputGate([win('2', 500, alarms(500, 100))], base, gates);
    assert.equal(bad?.verdict, 'fail', JSON.stringify(bad));
    assert.equal(bad.statistic, 'alarm');
    assert.equal(bad.kind, 'rate');
    assert.ok(Math.abs((bad.effect ?? 0) - 0.18) < 1e-9);
    assert.ok((bad.p ?? 1) < gates.alpha);
    assert.match(bad.detail, /alarm rate 0\.200 vs 0\.020/);
    const same = compareOutputGate([win('2', 500, alarms(500, 11))], base, gates);
    assert.equal(same?.verdict, 'pass', JSON.stringify(same));
  });

  test('effect AND significance: a large shift on few values, or a significant tiny one, passes', () => {
    // 0.08 vs 0.02 on 100 values each: effect > 0.05 but p > 0.001.
    const small = compareOutputGate([win('2', 100, alarms(100, 8))], [win('1', 100, alarms(100, 2))], gates);
    assert.equal(small?.verdict, 'pass', JSON.stringify(small));
    assert.ok((small.effect ?? 0) > gates.maxAlarmRateShift, String(small.effect));
    assert.ok((small.p ?? 0) > gates.alpha, String(small.p));
    // 0.03 vs 0.02 on a million values each: p tiny, effect under the limit.
    const big = compareOutputGate([win('2', 1e6, alarms(1e6, 30_000))], [win('1', 1e6, alarms(1e6, 20_000))], gates);
    assert.equal(big?.verdict, 'pass', JSON.stringify(big));
    assert.ok((big.p ?? 1) < 1e-10);
    // Thresholds come from the rollout's gates.
    const strict = compareOutputGate([win('2', 1e6, alarms(1e6, 30_000))], [win('1', 1e6, alarms(1e6, 20_000))], { ...gates, maxAlarmRateShift: 0.005 });
    assert.equal(strict?.verdict, 'fail');
  });

  test('detections per frame and a regression target: Welch on the means, in baseline SDs', () => {
    const base = [win('1', 300, meanOf('count', 300, 3, 1))];
    const shifted = compareOutputGate([win('2', 300, meanOf('count', 300, 4, 1))], base, gates); // +1 SD
    assert.equal(shifted?.verdict, 'fail', JSON.stringify(shifted));
    assert.equal(shifted.kind, 'mean');
    assert.ok(Math.abs((shifted.effect ?? 0) - 1) < 0.01, String(shifted.effect));
    assert.match(shifted.detail, /mean count 4\.000 vs 3\.000/);
    const close = compareOutputGate([win('2', 300, meanOf('count', 300, 3.2, 1))], base, gates); // 0.2 SD
    assert.equal(close?.verdict, 'pass', JSON.stringify(close));
    const rul = compareOutputGate([win('2', 200, meanOf('rul', 200, 80, 20))], [win('1', 200, meanOf('rul', 200, 120, 20))], gates);
    assert.equal(rul?.verdict, 'fail');
    assert.equal(rul.statistic, 'rul');
    // The limit is the rollout's.
    assert.equal(compareOutputGate([win('2', 300, meanOf('count', 300, 4, 1))], base, { ...gates, maxOutputShiftSd: 1.5 })?.verdict, 'pass');
  });

  test('too few values on either side: no verdict', () => {
    const r = compareOutputGate([win('2', 60, alarms(60, 50))], [win('1', 400, alarms(400, 4))], gates);
    assert.equal(r?.verdict, 'insufficient');
    assert.deepEqual(r.candidate, { n: 60, mean: 50 / 60 });
    assert.equal(r.p, null);
    assert.match(r.detail, /60 vs 400 values \(fewer than 100\), no verdict/);
  });

  test('different or mixed statistics are not compared', () => {
    const renamed = compareOutputGate([win('2', 300, meanOf('rul', 300, 10, 1))], [win('1', 300, meanOf('remaining', 300, 50, 1))], gates);
    assert.equal(renamed?.verdict, 'not_compared');
    assert.match(renamed.detail, /candidate rul \(mean\), baseline remaining \(mean\)/);
    // Same name, other kind (another task).
    assert.equal(compareOutputGate([win('2', 300, alarms(300, 200))], [win('1', 300, meanOf('alarm', 300, 0.1, 0.3))], gates)?.verdict, 'not_compared');
    // One side mixes statistics (devices serving differently built releases of one version).
    const mixed = compareOutputGate([win('2', 300, alarms(300, 200)), win('2', 300, meanOf('count', 300, 2, 1))], [win('1', 300, alarms(300, 6))], gates);
    assert.equal(mixed?.verdict, 'not_compared');
    assert.match(mixed.detail, /several \(alarm:rate, count:mean\)/);
    assert.deepEqual(mergeOutputs([win('1', 5), win('1', 5)]), { kind: 'none' });
    // Turned off in the rollout's gates.
    assert.equal(compareOutputGate([win('2', 500, alarms(500, 100))], [win('1', 500, alarms(500, 5))], { ...gates, compareOutputs: false })?.verdict, 'not_compared');
  });

  test('old records without the field: no output gate when neither side has it; not compared when only one side has it', () => {
    assert.equal(compareOutputGate([win('2', 500)], [win('1', 500)], gates), undefined);
    const oneSided = compareOutputGate([win('2', 500, alarms(500, 100))], [win('1', 500)], gates);
    assert.equal(oneSided?.verdict, 'not_compared');
    assert.match(oneSided.detail, /baseline none/);
    // Old agents' windows among new ones on a side are simply not counted in it.
    const partial = compareOutputGate([win('2', 500, alarms(500, 100)), win('2', 500)], [win('1', 500, alarms(500, 10)), win('1', 500)], gates);
    assert.equal(partial?.verdict, 'fail');
    assert.equal(partial.candidate?.n, 500);
  });

  test('defaults: max alarm-rate shift 0.05, max mean shift 0.5 SD, on; old specs parse to them', () => {
    const spec = RolloutSpecSchema.parse({ model: 'm', version: '2', target: { group: 'g' } });
    assert.equal(spec.gates.maxAlarmRateShift, 0.05);
    assert.equal(spec.gates.maxOutputShiftSd, 0.5);
    assert.equal(spec.gates.compareOutputs, true);
    assert.equal(spec.gates.minSamples, 200);
    assert.throws(() => RolloutSpecSchema.parse({ model: 'm', version: '2', target: { group: 'g' }, gates: { maxAlarmRateShift: 2 } }));
  });

  test('wire schema: a malformed output is dropped, not the window', () => {
    const w = HealthWindowSchema.parse({ ...win('1', 10), output: { name: 'alarm', kind: 'rate', n: -1, sum: 0, sumSq: 0 } });
    assert.equal(w.output, undefined);
    assert.equal(w.ok, 10);
    assert.deepEqual(HealthWindowSchema.parse(win('1', 10, alarms(10, 1))).output, alarms(10, 1));
  });
});

describe('evaluateGate with task outputs (SQLite store)', () => {
  let dir: string;
  let store: SqliteHubStore;
  let seq = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-output-gate-'));
    store = new SqliteHubStore({ dataDir: dir, synchronous: 'NORMAL', busyTimeoutMs: 1000, walLimitBytes: 1024 * 1024, log: silentLogger() });
    await store.start(new AbortController().signal);
  });
  after(async () => {
    await store.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const put = async (deviceId: string, model: string, w: HealthWindow): Promise<void> => {
    await store.ingestTelemetry(deviceId, [{ stream: 'health', epoch: 1, seq: seq++, ts: w.windowStart, kind: 'health', body: { ...w, model } }], w.windowStart);
  };
  const rollout = (model: string): { r: RolloutRecord; spec: ReturnType<typeof RolloutSpecSchema.parse> } => {
    const spec = RolloutSpecSchema.parse({ model, version: '2', target: { group: 'g' }, gates: { minSamples: 100 } });
    const r: RolloutRecord = {
      id: 'ro-out',
      model,
      version: '2',
      counter: 2,
      sha256: '0'.repeat(64),
      spec: JSON.stringify(spec),
      plan: [1, 2],
      state: 'running',
      reason: null,
      currentWave: 0,
      waveStartedAt: T - 5000,
      bakeStartedAt: T,
      bakeUntil: T + 600_000,
      bakeExtensions: 0,
      approvedWave: 0,
      gateResults: '[]',
      createdAt: T - 10_000,
      updatedAt: T,
      endedAt: null,
    };
    return { r, spec };
  };
  const device = (deviceId: string, wave: number, state: RolloutDeviceRecord['state']): RolloutDeviceRecord => ({
    rolloutId: 'ro-out',
    deviceId,
    wave,
    state,
    assignedAt: T - 5000,
    fromVersion: '1',
    fromCounter: 1,
    attempts: state === 'pending' ? 0 : 1,
    dispatchedAt: state === 'pending' ? null : T - 3000,
    finishedAt: null,
    detail: null,
  });

  test('an alarm-rate jump fails the gate (output_rate breach) although health alone passes', async () => {
    await put('a', 'an1', win('2', 400, alarms(400, 120)));
    await put('b', 'an1', win('1', 400, alarms(400, 8)));
    const { r, spec } = rollout('an1');
    const g = await evaluateGate(store, r, spec, [device('a', 0, 'succeeded'), device('b', 1, 'pending')], T + 60_000);
    assert.equal(g.verdict, 'fail', JSON.stringify(g));
    assert.deepEqual(
      g.breaches.map((b) => b.metric),
      ['output_rate'],
    );
    assert.equal(g.output?.verdict, 'fail');
    assert.equal(g.output.candidate?.n, 400);
  });

  test('classifier windows (no output field): the result has no output key and is what it was', async () => {
    await put('c', 'cl1', win('2', 400));
    await put('d', 'cl1', win('1', 400));
    const { r, spec } = rollout('cl1');
    const g = await evaluateGate(store, r, spec, [device('c', 0, 'succeeded'), device('d', 1, 'pending')], T + 60_000);
    assert.equal(g.verdict, 'pass');
    assert.equal('output' in g, false);
    assert.deepEqual(g.breaches, []);
  });
});

describe('HealthMonitor emits the output statistic', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-health-output-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('v2 anomaly windows carry output; classifier windows are unchanged (no output key)', async () => {
    const outbox = new Outbox({ path: join(dir, 'outbox.db'), log: silentLogger(), flushMs: 1 });
    await outbox.start(new AbortController().signal);
    let t = 1_700_000_000_250;
    const m = new HealthMonitor({ windowMs: 1000, sink: outbox, log: silentLogger(), now: () => t });
    await m.start();
    const anomaly = { post: { kind: 'anomaly', output: 'out', index: 0, threshold: 0.5 } } as unknown as Pick<ModelSpec, 'post'>;
    try {
      for (const alarm of [1, 0, 0, 1, 0]) m.record('an', '1.0.0', { ok: true, latencyMs: 1, classes: 0, spec: anomaly, values: { alarm, score: alarm ? 0.9 : 0.1 } });
      m.record('an', '1.0.0', { ok: false, classes: 0 });
      m.record('cls', '1.0.0', { ok: true, latencyMs: 1, classIndex: 1, confidence: 0.8, classes: 2 });
      t += 1000;
      m.tick();
    } finally {
      await m.stop();
    }
    const bodies = outbox.readBatch(0, 100).filter((r) => r.stream === HEALTH_STREAM).map((r) => r.body);
    await outbox.stop();
    const an = bodies.find((b) => b.model === 'an');
    const cls = bodies.find((b) => b.model === 'cls');
    assert.deepEqual(an?.output, { name: 'alarm', kind: 'rate', n: 5, sum: 2, sumSq: 2 });
    assert.equal(HealthWindowSchema.parse(an).output?.n, 5);
    assert.ok(cls);
    assert.deepEqual(Object.keys(cls).sort(), ['classCounts', 'confidence', 'errors', 'latency', 'model', 'ok', 'version', 'windowMs', 'windowStart']);
    // Probation's in-memory moments are the same numbers.
    assert.deepEqual(m.outputSince('an', '1.0.0', 0), { statistic: 'alarm', kind: 'rate', n: 5, sum: 2, sumSq: 2 });
  });
});
