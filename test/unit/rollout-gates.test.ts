/**
 * The behaviour gate on a real SQLite store: health windows stored as telemetry, the canary
 * compared with the control group over the bake only (earlier windows do not count), the
 * last wave compared with the same devices' windows from before their dispatch, and too little
 * data reported as `insufficient`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { evaluateGate } from '../../hub/rollouts/gates.ts';
import { RolloutSpecSchema } from '../../hub/rollouts/spec.ts';
import { SqliteHubStore } from '../../hub/store/sqlite-store.ts';
import type { RolloutDeviceRecord, RolloutRecord } from '../../hub/store/store.ts';
import { silentLogger } from '../../shared/log.ts';
import { CONFIDENCE_BINS, LATENCY_EDGES_MS, type HealthWindow } from '../../shared/updates.ts';

const T = Date.UTC(2026, 0, 5, 12, 0, 0);

describe('behaviour gate', () => {
  let dir: string;
  let store: SqliteHubStore;
  let seq = 0;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-gates-'));
    store = new SqliteHubStore({ dataDir: dir, synchronous: 'NORMAL', busyTimeoutMs: 1000, walLimitBytes: 1024 * 1024, log: silentLogger() });
    await store.start(new AbortController().signal);
  });
  after(async () => {
    await store.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const health = async (deviceId: string, model: string, version: string, windowStart: number, classCounts: number[]): Promise<void> => {
    const ok = classCounts.reduce((a, b) => a + b, 0);
    const latency = new Array<number>(LATENCY_EDGES_MS.length + 1).fill(0);
    latency[3] = ok;
    const confidence = new Array<number>(CONFIDENCE_BINS).fill(0);
    confidence[8] = ok;
    const w: HealthWindow = { model, version, windowStart, windowMs: 60_000, ok, errors: 0, latency, classCounts, confidence };
    await store.ingestTelemetry(deviceId, [{ stream: 'health', epoch: 1, seq: seq++, ts: windowStart, kind: 'health', body: w }], windowStart);
  };
  const rollout = (model: string, currentWave: number, bakeMs = 600_000): { r: RolloutRecord; spec: ReturnType<typeof RolloutSpecSchema.parse> } => {
    const spec = RolloutSpecSchema.parse({ model, version: '2.0.0', target: { group: 'g' }, bakeMs, gates: { minSamples: 100 } });
    const r: RolloutRecord = {
      id: 'ro-test',
      model,
      version: '2.0.0',
      counter: 2,
      sha256: '0'.repeat(64),
      spec: JSON.stringify(spec),
      plan: [1, 2],
      state: 'running',
      reason: null,
      currentWave,
      waveStartedAt: T - 5000,
      bakeStartedAt: T,
      bakeUntil: T + bakeMs,
      bakeExtensions: 0,
      approvedWave: 0,
      gateResults: '[]',
      createdAt: T - 10_000,
      updatedAt: T,
      endedAt: null,
    };
    return { r, spec };
  };
  const device = (deviceId: string, wave: number, state: RolloutDeviceRecord['state'], dispatchedAt: number | null = null): RolloutDeviceRecord => ({
    rolloutId: 'ro-test',
    deviceId,
    wave,
    state,
    assignedAt: T - 5000,
    fromVersion: '1.0.0',
    fromCounter: 1,
    attempts: dispatchedAt === null ? 0 : 1,
    dispatchedAt,
    finishedAt: null,
    detail: null,
  });

  test('canary vs control over the bake: a shifted class mix fails; windows before the bake do not count', async () => {
    await health('a', 'm1', '2.0.0', T - 60_000, [5000, 500, 100]); // before the bake: would hide the shift
    await health('a', 'm1', '2.0.0', T, [40, 40, 320]);
    await health('b', 'm1', '1.0.0', T, [320, 60, 20]);
    await health('c', 'm1', '2.0.0', T, [320, 60, 20]); // a control device's windows of another version do not count
    const { r, spec } = rollout('m1', 0);
    const g = await evaluateGate(store, r, spec, [device('a', 0, 'succeeded', T - 3000), device('b', 1, 'pending'), device('c', 1, 'pending')], T + 120_000);
    assert.equal(g.verdict, 'fail');
    assert.equal(g.baseline, 'control');
    assert.deepEqual(g.windows, { candidate: 1, baseline: 1 });
    assert.deepEqual(g.samples, { candidate: 400, baseline: 400 });
    assert.ok(g.breaches.some((b) => b.metric === 'class_shift'));
  });

  test('last wave: the baseline is the same devices before their dispatch', async () => {
    for (const id of ['p', 'q']) {
      await health(id, 'm2', '1.0.0', T - 120_000, [150, 40, 10]);
      await health(id, 'm2', '2.0.0', T, [148, 42, 10]);
    }
    const { r, spec } = rollout('m2', 1);
    const g = await evaluateGate(store, r, spec, [device('p', 0, 'succeeded', T - 60_000), device('q', 1, 'succeeded', T - 30_000)], T + 60_000);
    assert.equal(g.baseline, 'pre_dispatch');
    assert.equal(g.verdict, 'pass', JSON.stringify(g.breaches));
    assert.deepEqual(g.windows, { candidate: 2, baseline: 2 });
  });

  test('too few inferences on either side is insufficient', async () => {
    await health('x', 'm3', '2.0.0', T, [10, 10, 10]);
    await health('y', 'm3', '1.0.0', T, [300, 10, 10]);
    const { r, spec } = rollout('m3', 0);
    const g = await evaluateGate(store, r, spec, [device('x', 0, 'succeeded', T - 1000), device('y', 1, 'pending')], T + 60_000);
    assert.equal(g.verdict, 'insufficient');
    assert.deepEqual(g.samples, { candidate: 30, baseline: 320 });
  });
});
