// Hub drift pieces without a hub: findings folded into alerts and told in words, the stored
// aggregate codec, the alert topic in the broker ACL, and the CLI parsing of drift/alerts.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Registry } from 'prom-client';
import { foldFindings, effectInWords } from '../../hub/alerts/words.ts';
import { HUB_ALERTS_TOPIC, mayReceive, publishRefusal, subscribeRefusal, type Identity } from '../../hub/broker/acl.ts';
import { DriftAggregator, decodeAggregate, encodeAggregate } from '../../hub/drift/aggregator.ts';
import { SqliteHubStore } from '../../hub/store/sqlite-store.ts';
import { silentLogger } from '../../shared/log.ts';
import type { TelemetryRecord } from '../../shared/protocol.ts';
import type { DriftFinding } from '../../shared/drift/detector.ts';
import { mergeSummaries } from '../../shared/drift/merge.ts';
import { DriftAccumulator } from '../../shared/drift/summary.ts';
import { alertsPath } from '../../cli/commands/alerts.ts';
import { driftPath } from '../../cli/commands/drift.ts';

const model = { name: 'part-defect', version: '1.0.0' };

function finding(over: Partial<DriftFinding>): DriftFinding {
  return {
    kind: 'window',
    scope: 'device',
    id: 'cam-1',
    model,
    windowStart: 0,
    windowMs: 900_000,
    feature: 'brightness',
    against: 'peers',
    n: 900,
    effect: { psi: 0.6, js: 0.3, shiftSd: -0.8 },
    p: 1e-12,
    q: 1e-10,
    direction: 'down',
    message: '',
    ...over,
  };
}

describe('alerts in words', () => {
  const groups: Record<string, string> = { 'cam-1': 'line-1', 'cam-2': 'line-1', 'cam-3': 'line-1', 'cam-9': 'line-2' };
  const ctx = { model: model.name, version: model.version, devices: 40, groupOf: (id: string) => groups[id], groupSizes: new Map([['line-1', 40], ['line-2', 12]]) };

  test('device findings of one group and feature fold into one alert naming the devices', () => {
    const hits = foldFindings(
      [finding({ id: 'cam-3', effect: { psi: 0.7, js: 0.3, shiftSd: -0.9 } }), finding({ id: 'cam-1', effect: { psi: 0.5, js: 0.3, shiftSd: -0.7 } }), finding({ id: 'cam-2' })],
      ctx,
    );
    assert.equal(hits.length, 1);
    assert.equal(hits[0]?.message, 'brightness down 0.80 SD on 3 of 40 devices in line-1 (part-defect@1.0.0): cam-1, cam-2, cam-3');
    assert.deepEqual(hits[0]?.devices, ['cam-1', 'cam-2', 'cam-3']);
    assert.equal(hits[0]?.scopeId, 'line-1');
  });

  test('groups, fleet and features stay apart; no common direction reads as "changed"', () => {
    const hits = foldFindings(
      [
        finding({ id: 'cam-1' }),
        finding({ id: 'cam-9', feature: 'sharpness', direction: 'changed', effect: { psi: 0.42, js: 0.2, shiftSd: null } }),
        finding({ scope: 'fleet', id: 'fleet', against: 'reference', effect: { psi: 0.2, js: 0.1, shiftSd: -0.5 } }),
        finding({ scope: 'group', id: 'line-2', against: 'reference', kind: 'trend', effect: { psi: 0.05, js: 0.1, shiftSd: 0.3 }, direction: 'up' }),
      ],
      ctx,
    );
    assert.deepEqual(
      hits.map((h) => h.message),
      [
        'brightness down 0.80 SD on 1 of 40 devices in line-1 (part-defect@1.0.0): cam-1',
        'sharpness changed (PSI 0.42) on 1 of 12 devices in line-2 (part-defect@1.0.0): cam-9',
        'brightness down 0.50 SD fleet-wide on 40 devices (part-defect@1.0.0)',
        'brightness up 0.30 SD (trend over windows) in line-2 as a whole (12 devices) (part-defect@1.0.0)',
      ],
    );
    assert.equal(effectInWords('x', [finding({ direction: 'up', effect: { psi: 0.3, js: 0.1, shiftSd: 0.5 } }), finding({})]), 'x changed (PSI 0.45)');
  });
});

describe('stored drift aggregates', () => {
  test('encode → decode keeps counts, moments and devices; damage is a STORAGE error', () => {
    const acc = new DriftAccumulator({ deviceId: 'd1', model, windowMs: 60_000, features: [{ name: 'a', edges: [0, 1, 2] }], classes: 2, instance: 'x' });
    for (let i = 0; i < 50; i++) acc.add([i / 20], { index: i % 2, confidence: 0.7, margin: 0.4, scores: [0.7, 0.3] });
    const agg = mergeSummaries([acc.flush(0)], { scope: 'device', id: 'd1', windowMs: 900_000 });
    const back = decodeAggregate(encodeAggregate(agg));
    assert.deepEqual({ ...back, summaryIds: [...back.summaryIds], devices: [...back.devices] }, { ...agg, summaryIds: [], devices: ['d1'] });
    assert.throws(() => decodeAggregate('{"count": -1}'), { code: 'STORAGE' });
    assert.throws(() => decodeAggregate('nope'), { code: 'STORAGE' });
  });
});

describe('drift aggregator on a real SQLite store', () => {
  test('one transaction per burst: duplicates merge once, a refused summary rolls back alone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ef-hub-drift-unit-'));
    const store = new SqliteHubStore({ dataDir: dir, synchronous: 'FULL', busyTimeoutMs: 1000, walLimitBytes: 1 << 20, log: silentLogger() });
    await store.start(new AbortController().signal);
    try {
      const registry = new Registry();
      const agg = new DriftAggregator({ store, log: silentLogger(), registry, windowMs: 900_000, graceMs: 0, retentionMs: 86_400_000, now: () => 60_000 });
      const summary = (instance: string, edges: number[]): Record<string, unknown> => {
        const acc = new DriftAccumulator({ deviceId: 'd1', model, windowMs: 60_000, features: [{ name: 'a', edges }], classes: 2, instance });
        for (let i = 0; i < 10; i++) acc.add([i], { index: 0, confidence: 0.9, margin: 0.8, scores: [0.9, 0.1] });
        return acc.flush(0);
      };
      const rec = (seq: number, body: Record<string, unknown>): TelemetryRecord => ({ stream: 'drift', epoch: 1, seq, ts: 0, kind: 'drift', body });
      const a = summary('a', [1, 2]);
      // Same burst: a, a again, one with another bin layout (refused), b, and one not a summary.
      agg.onRecords('d1', [rec(0, a), rec(1, a), rec(2, summary('c', [1, 2, 3])), rec(3, summary('b', [1, 2])), rec(4, { nope: 1 })]);
      agg.onRecords('d2', [rec(0, a)]); // names d1: refused
      await agg.idle();
      const rows = await store.driftDeviceWindows(model.name, model.version, 0);
      assert.deepEqual(rows.map((r) => [r.deviceId, r.summaries, r.count]), [['d1', 2, 20]]);
      const text = await registry.getSingleMetricAsString('edgefleet_hub_drift_summaries_total');
      for (const [result, n] of [['merged', 2], ['duplicate', 1], ['refused', 2], ['invalid', 1]] as const) assert.match(text, new RegExp(`result="${result}"\\} ${n}\\b`), result);
      // The refused summary's id was rolled back with it: fixed, it can still be merged.
      const c = summary('c', [1, 2]);
      agg.onRecords('d1', [rec(5, { ...c, summaryId: (summary('c', [1, 2, 3]) as { summaryId: string }).summaryId })]);
      await agg.idle();
      assert.equal((await store.driftDeviceWindows(model.name, model.version, 0))[0]?.summaries, 3);

      // A summary stored as telemetry but never handed to the aggregator (hub killed in between)
      // is merged by recover() at start, once; recovering again changes nothing.
      await store.ingestTelemetry('d1', [rec(6, summary('lost', [1, 2]))], 60_000);
      assert.equal(await agg.recover(0), 1, 'the drift records stored as telemetry are looked at');
      assert.equal((await store.driftDeviceWindows(model.name, model.version, 0))[0]?.summaries, 4);
      await agg.recover(0);
      assert.deepEqual((await store.driftDeviceWindows(model.name, model.version, 0)).map((r) => [r.summaries, r.count]), [[4, 40]]);
      assert.match(await registry.getSingleMetricAsString('edgefleet_hub_drift_summaries_total'), /result="recovered"\} 1\b/);
      assert.doesNotMatch(await registry.getSingleMetricAsString('edgefleet_hub_drift_summaries_total'), /result="duplicate"\} [^1]/);
    } finally {
      await store.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('broker ACL: the alerts topic', () => {
  const consumer: Identity = { id: 'mes', kind: 'consumer', deviceId: null };
  const device: Identity = { id: 'd1', kind: 'device', deviceId: null };
  const sensor: Identity = { id: 's1', kind: 'sensor', deviceId: 'd1' };

  test('consumers may subscribe and receive; nobody else, and nobody may publish there', () => {
    assert.equal(HUB_ALERTS_TOPIC, 'edgefleet/v1/$hub/alerts');
    assert.equal(subscribeRefusal(consumer, HUB_ALERTS_TOPIC), undefined);
    assert.equal(mayReceive(consumer, HUB_ALERTS_TOPIC), true);
    assert.notEqual(subscribeRefusal(consumer, 'edgefleet/v1/$hub/#'), undefined);
    assert.notEqual(subscribeRefusal(device, HUB_ALERTS_TOPIC), undefined);
    assert.equal(mayReceive(device, HUB_ALERTS_TOPIC), false);
    assert.notEqual(subscribeRefusal(sensor, HUB_ALERTS_TOPIC), undefined);
    for (const who of [consumer, device, sensor]) assert.notEqual(publishRefusal(who, HUB_ALERTS_TOPIC), undefined, who.kind);
  });
});

describe('CLI: drift and alerts paths', () => {
  test('--model m@v and filters become the query; a malformed model is a usage error', () => {
    assert.equal(driftPath({ model: 'part-defect@1.0.0', scope: 'device', feature: 'brightness', since: '2h' }, 7_200_000 + 5), '/v1/drift?model=part-defect&version=1.0.0&scope=device&feature=brightness&from=5');
    assert.equal(driftPath({}, 0), '/v1/drift');
    assert.throws(() => driftPath({ model: '@1' }, 0), { name: 'UsageError' });
    assert.equal(alertsPath({ state: 'open' }), '/v1/alerts?state=open');
    assert.throws(() => alertsPath({ state: 'closed' }), { name: 'UsageError' });
  });
});
