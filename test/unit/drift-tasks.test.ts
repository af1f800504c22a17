/**
 * Drift summaries and probation of manifest v2 tasks other than classification (issue #13):
 * the accumulator's addOutcome (exact counts of out.* features, missing values, class layout,
 * no confidence histograms, exact merge), the DriftMonitor on a fake clock with a v2 anomaly
 * model (reading input + out.score/out.alarm, [normal, alarm] classes) and a v2 detection model
 * (image stats + out.count/out.meanScore/out.meanBoxArea, empty frames counted as missing), and
 * probation comparing the task output statistic (alarm rate, detections per frame).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { DriftConfigSchema, DriftMonitor } from '../../agent/drift/drift-monitor.ts';
import { HealthMonitor } from '../../agent/health/health-monitor.ts';
import { compareOutput, Probation, ProbationThresholdsSchema, type ProbationBreach } from '../../agent/health/probation.ts';
import type { ImageStats } from '../../agent/preprocess/image.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { createRng } from '../../scripts/lib/rng.ts';
import { mergeSummaries } from '../../shared/drift/merge.ts';
import { DRIFT_STREAM, DriftAccumulator, DriftSummarySchema, type DriftSummary } from '../../shared/drift/summary.ts';
import { driftClassLabels, driftOutputValue, probationStatistic, taskValueNames } from '../../shared/drift/tasks.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { modelSpec } from '../../shared/model-spec.ts';

const WINDOW = 60_000;
const T0 = 1_700_000_040_000;

function withDrift(file: string, drift: Record<string, unknown>, version = '1.0.0'): Manifest {
  const raw = JSON.parse(readFileSync(join(REPO_ROOT, 'models', file), 'utf8')) as Record<string, unknown>;
  return ManifestSchema.parse({ ...raw, version, drift });
}

const bins = (name: string, edges: number[]) => ({ name, edges, counts: new Array<number>(edges.length + 1).fill(10), mean: 0, std: 1 });

/** line-state: anomaly on a reading (belt_speed, motor_current, motor_temp, vib_rms). */
const anomaly = withDrift('line-state.manifest.json', {
  features: [bins('vib_rms', [1, 2]), bins('out.score', [1, 3, 6.428]), bins('out.alarm', [0.5]), bins('out.nothing', [0])],
  classRates: [0.99, 0.01],
});
/** conveyor-parts: detection on an image. */
const detection = withDrift('conveyor-parts.manifest.json', {
  features: [bins('brightness', [0.5]), bins('out.count', [0.5, 1.5, 2.5]), bins('out.meanScore', [0.5, 0.8]), bins('out.meanBoxArea', [0.01, 0.05])],
});

function rig() {
  const appended: { stream: string; body: Record<string, unknown> }[] = [];
  let now = T0 + 1000;
  const registry = new Registry();
  const monitor = new DriftMonitor({
    deviceId: 'dev-1',
    config: DriftConfigSchema.parse({ windowMs: WINDOW, pageHinkley: { minCount: 1 } }),
    sink: {
      append: (stream, _kind, body) => {
        appended.push({ stream, body: JSON.parse(JSON.stringify(body)) as Record<string, unknown> });
        return Promise.resolve();
      },
    },
    instance: () => '3',
    upload: { hubHttpUrl: undefined, deviceId: 'dev-1', token: 't' },
    log: silentLogger(),
    registry,
    now: () => now,
  });
  const summaries = (): DriftSummary[] => appended.filter((a) => a.stream === DRIFT_STREAM).map((a) => DriftSummarySchema.parse(a.body));
  return { monitor, appended, summaries, registry, setNow: (t: number) => (now = t) };
}

const feature = (s: DriftSummary, name: string) => {
  const f = s.numeric.find((x) => x.name === name);
  assert.ok(f, `feature ${name} in the summary`);
  return f;
};

void describe('task output names and rules (shared/drift/tasks.ts)', () => {
  it('value names, class layout and probation statistic per task', () => {
    assert.deepEqual(taskValueNames(modelSpec(anomaly)), ['score', 'alarm']);
    assert.deepEqual(taskValueNames(modelSpec(detection)), ['count', 'meanScore', 'topScore', 'meanBoxArea']);
    assert.deepEqual(driftClassLabels(modelSpec(anomaly)), ['normal', 'alarm']);
    assert.deepEqual(driftClassLabels(modelSpec(detection)), ['all']);
    assert.deepEqual(probationStatistic(modelSpec(anomaly)), { value: 'alarm', kind: 'rate' });
    assert.deepEqual(probationStatistic(modelSpec(detection)), { value: 'count', kind: 'mean' });
    const rul = ManifestSchema.parse(JSON.parse(readFileSync(join(REPO_ROOT, 'models', 'spindle-rul.manifest.json'), 'utf8')));
    assert.deepEqual(taskValueNames(modelSpec(rul)), ['rul']);
    assert.deepEqual(probationStatistic(modelSpec(rul)), { value: 'rul', kind: 'mean' });
    assert.ok(Number.isNaN(driftOutputValue('detection', 'meanScore', { count: 0, meanScore: 0 })), 'no detection: no score');
    assert.equal(driftOutputValue('detection', 'count', { count: 0, meanScore: 0 }), 0);
    assert.equal(driftOutputValue('detection', 'meanScore', { count: 2, meanScore: 0.7 }), 0.7);
  });
});

void describe('DriftAccumulator.addOutcome', () => {
  const opts = { deviceId: 'dev-1', model: { name: 'm', version: '1' }, windowMs: WINDOW, features: [{ name: 'x', edges: [0, 1] }, { name: 'out.score', edges: [0.5, 1, 2] }], classes: 2 };

  it('counts out.* values exactly, missing as nan, classes as given, no confidence histograms', () => {
    const acc = new DriftAccumulator({ ...opts, instance: 'a' });
    const rows: [number, number, number][] = [
      [-1, 0.25, 0],
      [0.5, 0.75, 0],
      [0.5, 1.5, 1],
      [2, 4, 1],
      [0, Number.NaN, 0],
    ];
    for (const [x, score, alarm] of rows) acc.addOutcome([x, score], alarm);
    const s = DriftSummarySchema.parse(acc.flush(T0));
    assert.equal(s.count, 5);
    assert.deepEqual(s.numeric[0]!.counts, [1, 3, 1]);
    assert.deepEqual(s.numeric[1]!.counts, [1, 1, 1, 1]);
    assert.equal(s.numeric[1]!.nan, 1);
    assert.equal(s.numeric[1]!.sum, 0.25 + 0.75 + 1.5 + 4);
    assert.equal(s.numeric[1]!.sumSq, 0.0625 + 0.5625 + 2.25 + 16);
    assert.deepEqual([s.numeric[1]!.min, s.numeric[1]!.max], [0.25, 4]);
    assert.deepEqual(s.outputs.classCounts, [3, 2]);
    for (const h of [s.outputs.confidence, s.outputs.margin, s.outputs.entropy]) assert.equal(h.reduce((a, b) => a + b, 0), 0);
    assert.throws(() => acc.addOutcome([0, 0], 2), /class index 2/);
    assert.throws(() => acc.addOutcome([0], 0), /expected 2 numeric values/);
    assert.equal(acc.count, 0, 'refused readings leave the window unchanged');
  });

  it('merging two devices equals one accumulator over both (exact)', () => {
    const rng = createRng(7);
    const a = new DriftAccumulator({ ...opts, deviceId: 'dev-a', instance: 'a' });
    const b = new DriftAccumulator({ ...opts, deviceId: 'dev-b', instance: 'b' });
    const all = new DriftAccumulator({ ...opts, deviceId: 'dev-all', instance: 'c' });
    for (let i = 0; i < 500; i++) {
      // Quarter steps: sums are exact in binary floating point, whatever the order.
      const row = [Math.round(rng.normal() * 4) / 4, Math.round(Math.abs(rng.normal()) * 8) / 4];
      const alarm = row[1]! > 1.5 ? 1 : 0;
      (i % 3 ? a : b).addOutcome(row, alarm);
      all.addOutcome(row, alarm);
    }
    const merged = mergeSummaries([a.flush(T0), b.flush(T0)]);
    const one = all.flush(T0);
    assert.equal(merged.count, one.count);
    assert.deepEqual(merged.numeric.map(({ name, counts, nan, sum, sumSq, min, max }) => ({ name, counts, nan, sum, sumSq, min, max })), one.numeric);
    assert.deepEqual(merged.outputs, one.outputs);
  });
});

void describe('DriftMonitor.recordTask (fake clock)', () => {
  it('anomaly: input and out.* features, [normal, alarm] classes, unknown out.* left out', async () => {
    const r = rig();
    await r.monitor.start();
    // Readings in manifest order: belt_speed, motor_current, motor_temp, vib_rms.
    const rows: [number, number, number][] = [
      // vib_rms, score, alarm
      [0.5, 0.5, 0],
      [1.5, 2, 0],
      [1.5, 4, 0],
      [2.5, 7, 1],
      [3, 9, 1],
      [0.1, 0.2, 0],
    ];
    for (const [i, [vib, score, alarm]] of rows.entries()) {
      r.monitor.recordTask('line', anomaly, Float64Array.from([1, 2, 3, vib]), { values: { score, alarm } }, { kind: 'json', body: {} }, `id-${i}`, T0);
    }
    r.setNow(T0 + WINDOW + 1);
    r.monitor.tick();
    await r.monitor.stop();
    const [s, ...more] = r.summaries();
    assert.ok(s);
    assert.equal(more.length, 0);
    assert.equal(s.count, 6);
    assert.deepEqual(s.numeric.map((f) => f.name), ['vib_rms', 'out.score', 'out.alarm']);
    assert.deepEqual(feature(s, 'vib_rms').counts, [2, 2, 2]);
    assert.deepEqual(feature(s, 'out.score').counts, [2, 1, 1, 2]);
    assert.equal(feature(s, 'out.score').sum, 0.5 + 2 + 4 + 7 + 9 + 0.2);
    assert.deepEqual(feature(s, 'out.alarm').counts, [4, 2]);
    assert.deepEqual(s.outputs.classCounts, [4, 2], 'alarm rate as a two-class count');
    assert.equal(s.outputs.confidence.reduce((a, b) => a + b, 0), 0);
    // No mean-confidence warning for a task without confidence (minCount 1 would allow one).
    assert.equal(r.appended.filter((a) => a.stream === 'events' && a.body['feature'] === 'confidence').length, 0);
  });

  it('detection: image stats and out.* features; per-detection values missing on empty frames', async () => {
    const r = rig();
    const stats = (brightness: number): ImageStats => ({ brightness, contrast: 0.2, sharpness: 0.1, channelMeans: [brightness] });
    const frames = [
      { b: 0.4, v: { count: 0, meanScore: 0, topScore: 0, meanBoxArea: 0 } },
      { b: 0.6, v: { count: 1, meanScore: 0.9, topScore: 0.9, meanBoxArea: 0.02 } },
      { b: 0.6, v: { count: 3, meanScore: 0.6, topScore: 0.95, meanBoxArea: 0.1 } },
      { b: 0.7, v: { count: 2, meanScore: 0.4, topScore: 0.5, meanBoxArea: 0.005 } },
      { b: 0.3, v: { count: 0, meanScore: 0, topScore: 0, meanBoxArea: 0 } },
    ];
    for (const [i, f] of frames.entries()) r.monitor.recordTask('cam', detection, stats(f.b), { values: f.v }, { kind: 'image', bytes: Buffer.alloc(1) }, `f-${i}`, T0);
    await r.monitor.stop();
    const [s] = r.summaries();
    assert.ok(s);
    assert.equal(s.count, 5);
    assert.deepEqual(feature(s, 'brightness').counts, [2, 3]);
    assert.deepEqual(feature(s, 'out.count').counts, [2, 1, 1, 1], 'detections per frame: 0, 0, 1, 2, 3');
    assert.equal(feature(s, 'out.count').sum, 6);
    assert.deepEqual(feature(s, 'out.meanScore').counts, [1, 1, 1]);
    assert.equal(feature(s, 'out.meanScore').nan, 2, 'the two empty frames have no score');
    assert.deepEqual(feature(s, 'out.meanBoxArea').counts, [1, 1, 1]);
    assert.equal(feature(s, 'out.meanBoxArea').nan, 2);
    assert.deepEqual(s.outputs.classCounts, [5]);
  });

  it('a classifier through recordTask is refused and counted, not mis-counted', async () => {
    const r = rig();
    const cls = ManifestSchema.parse(JSON.parse(readFileSync(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8')));
    r.monitor.recordTask('p', cls, new Float64Array(8), { values: { confidence: 0.9, margin: 0.5 } }, { kind: 'json', body: {} }, 'x', T0);
    await r.monitor.stop();
    assert.equal(r.summaries().length, 0);
    assert.match(await r.registry.metrics(), /edgefleet_agent_drift_record_errors_total 1/);
  });
});

void describe('probation on the task output statistic', () => {
  const thresholds = ProbationThresholdsSchema.parse({ minSamples: 100 });

  function clock() {
    let t = T0;
    return { now: () => t, advance: (ms: number) => (t += ms) };
  }

  /** Baseline `prev` served with `rate(i)`, then `next` on probation; returns the breach, if any. */
  function run(m: Manifest, baseline: (i: number) => Record<string, number>, candidate: (i: number) => Record<string, number>, t = thresholds): ProbationBreach | undefined {
    const c = clock();
    const health = new HealthMonitor({ windowMs: 1000, sink: { append: () => Promise.resolve() }, log: silentLogger(), now: c.now });
    const probation = new Probation({ health, thresholds: t, checkMs: 60_000, log: silentLogger(), now: c.now });
    const spec = modelSpec(m);
    const breaches: ProbationBreach[] = [];
    probation.onBreach((b) => breaches.push(b));
    for (let i = 0; i < 400; i++) {
      health.record(m.name, '1.0.0', { ok: true, latencyMs: 5, classes: spec.labels.length, spec, values: baseline(i) });
      if (i % 50 === 49) c.advance(1000);
    }
    probation.watch({ name: m.name, version: '2.0.0', previousVersion: '1.0.0', untilMs: c.now() + 3_600_000 });
    c.advance(1);
    for (let i = 0; i < 400; i++) {
      health.record(m.name, '2.0.0', { ok: true, latencyMs: 5, classes: spec.labels.length, spec, values: candidate(i) });
      if (i % 50 === 49) c.advance(1000);
    }
    probation.check();
    return breaches[0];
  }

  it('anomaly: alarm rate 1% → 30% breaches; 1% → 2% does not', () => {
    const alarms = (per100: number) => (i: number) => ({ score: 1, alarm: i % 100 < per100 ? 1 : 0 });
    const b = run(anomaly, alarms(1), alarms(30));
    assert.ok(b, 'breach');
    assert.match(b.reason, /^output_rate: alarm rate 0\.300 vs 0\.010 \(\+0\.290, limit 0\.05, p=/);
    assert.equal(run(anomaly, alarms(1), alarms(2)), undefined);
  });

  it('detection: mean detections per frame 2 → 0.5 breaches; a small change does not', () => {
    const counts = (xs: number[]) => (i: number) => ({ count: xs[i % xs.length]!, meanScore: 0.8, topScore: 0.9, meanBoxArea: 0.01 });
    const b = run(detection, counts([1, 2, 3]), counts([0, 0, 1, 1]));
    assert.ok(b, 'breach');
    assert.match(b.reason, /^output_mean: mean count 0\.500 vs 1\.99\d \(−1\.\d\d SD, limit 0\.5 SD, p=/);
    assert.equal(run(detection, counts([1, 2, 3]), counts([1, 2, 3, 2, 1, 3, 2, 2])), undefined);
  });

  it('compareOutput: needs minSamples each side and the same statistic; compareOutputs false turns it off', () => {
    const base = { statistic: 'alarm', kind: 'rate' as const, n: 1000, sum: 10, sumSq: 10 };
    assert.match(compareOutput({ ...base, sum: 300, sumSq: 300 }, base, thresholds) ?? '', /output_rate/);
    assert.equal(compareOutput({ ...base, n: 99, sum: 50, sumSq: 50 }, base, thresholds), undefined);
    assert.equal(compareOutput({ ...base, statistic: 'other', sum: 300, sumSq: 300 }, base, thresholds), undefined);
    const off = ProbationThresholdsSchema.parse({ minSamples: 100, compareOutputs: false });
    const alarms = (per100: number) => (i: number) => ({ score: 1, alarm: i % 100 < per100 ? 1 : 0 });
    assert.equal(run(anomaly, alarms(1), alarms(30), off), undefined);
  });
});
