/**
 * Issue #4 KPIs, the parts that are arithmetic or pure rules: the Wilson interval, the cost
 * matrix (realized and reweighted expected cost per 1,000), uptime from presence changes, the
 * telemetry → index row split, the MQTT ACL rule for feedback, the CLI's query building, and the
 * agent HealthMonitor's CPU accounting (`cpuMs`) on a fake clock and fake CPU clock with a real
 * outbox.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HealthMonitor } from '../../agent/health/health-monitor.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { parsePairs } from '../../cli/commands/feedback.ts';
import { kpiQuery } from '../../cli/commands/kpis.ts';
import { publishRefusal } from '../../hub/broker/acl.ts';
import { KpisConfigSchema } from '../../hub/kpis/config.ts';
import { indexRows } from '../../hub/kpis/indexer.ts';
import { businessCost, onlineFraction, pairCost, wilsonInterval } from '../../hub/kpis/math.ts';
import { silentLogger } from '../../shared/log.ts';
import type { TelemetryRecord } from '../../shared/protocol.ts';
import { HEALTH_STREAM, HealthWindowSchema, type HealthWindow } from '../../shared/updates.ts';

const close = (a: number, b: number, eps = 1e-9): void => assert.ok(Math.abs(a - b) <= eps, `${a} ≉ ${b}`);

describe('wilsonInterval', () => {
  void test('matches the closed form (reference values) and stays inside [0, 1]', () => {
    // 8/10: the textbook Wilson 95% interval is 0.4902–0.9433.
    const a = wilsonInterval(8, 10);
    assert.ok(a);
    close(a.lo, 0.490162, 1e-6);
    close(a.hi, 0.943318, 1e-6);
    // All correct: the upper bound is 1, the lower bound well below it at small n.
    const b = wilsonInterval(5, 5);
    assert.ok(b);
    close(b.hi, 1, 1e-12);
    close(b.lo, 0.565518, 1e-6);
    const c = wilsonInterval(0, 20);
    assert.ok(c);
    assert.equal(c.lo, 0);
    assert.ok(c.hi > 0.15 && c.hi < 0.17);
    assert.equal(wilsonInterval(0, 0), undefined);
  });

  void test('narrows as n grows', () => {
    const w = (n: number): number => {
      const i = wilsonInterval(0.9 * n, n);
      assert.ok(i);
      return i.hi - i.lo;
    };
    assert.ok(w(100) < w(10) && w(10_000) < w(100));
  });
});

describe('cost matrix', () => {
  // A missed defect costs 50, a false reject 2, everything else 0.
  const matrix = { defect: { ok: 50 }, ok: { defect: 2 } };

  void test('pairs not listed cost 0', () => {
    assert.equal(pairCost(matrix, 'defect', 'ok'), 50);
    assert.equal(pairCost(matrix, 'ok', 'defect'), 2);
    assert.equal(pairCost(matrix, 'ok', 'ok'), 0);
    assert.equal(pairCost(matrix, 'scratch', 'ok'), 0);
  });

  void test('realized cost: sum over labelled predictions, per 1,000', () => {
    const confusion = [
      { truth: 'ok', label: 'ok', n: 900 },
      { truth: 'defect', label: 'ok', n: 3 }, // 3 × 50 = 150
      { truth: 'ok', label: 'defect', n: 20 }, // 20 × 2 = 40
      { truth: 'defect', label: 'defect', n: 77 },
    ];
    const c = businessCost(matrix, confusion, []);
    assert.equal(c.labelled, 1000);
    assert.equal(c.total, 190);
    assert.equal(c.per1000, 190);
    // With no overall counts the expected cost weighs classes by their labelled counts: same figure.
    assert.ok(c.expectedPer1000 !== null);
    close(c.expectedPer1000, 190);
    assert.equal(c.coverage, 1);
  });

  void test('expected cost reweights by how often each class was predicted overall', () => {
    // Operators checked every reject (100) but only 100 of 9,900 passes.
    const confusion = [
      { truth: 'ok', label: 'ok', n: 98 },
      { truth: 'defect', label: 'ok', n: 2 }, // passes: 2 × 50 over 100 → 1.0 per pass
      { truth: 'ok', label: 'defect', n: 40 }, // rejects: 40 × 2 over 100 → 0.8 per reject
      { truth: 'defect', label: 'defect', n: 60 },
    ];
    const predicted = [
      { label: 'ok', n: 9900 },
      { label: 'defect', n: 100 },
    ];
    const c = businessCost(matrix, confusion, predicted);
    assert.equal(c.labelled, 200);
    assert.equal(c.total, 180);
    assert.equal(c.per1000, 900); // biased towards rejects
    close(c.expectedPer1000 ?? NaN, ((9900 * 1.0 + 100 * 0.8) / 10_000) * 1000); // 998
    assert.equal(c.coverage, 1);
  });

  void test('no labels: no realized cost, coverage 0; a class without labels is left out of the expectation', () => {
    const none = businessCost(matrix, [], [{ label: 'ok', n: 10 }]);
    assert.equal(none.per1000, null);
    assert.equal(none.expectedPer1000, null);
    assert.equal(none.coverage, 0);
    const part = businessCost(matrix, [{ truth: 'defect', label: 'ok', n: 1 }], [
      { label: 'ok', n: 75 },
      { label: 'defect', n: 25 },
    ]);
    assert.equal(part.expectedPer1000, 50_000);
    assert.equal(part.coverage, 0.75);
  });

  void test('config: matrices parse, negative costs and bad labels are refused', () => {
    const c = KpisConfigSchema.parse({ costs: { 'part-defect': { matrix } } });
    assert.deepEqual(c.costs['part-defect']?.matrix, matrix);
    assert.equal(c.retentionDays, 30);
    assert.equal(KpisConfigSchema.safeParse({ costs: { m: { matrix: { a: { b: -1 } } } } }).success, false);
    assert.equal(KpisConfigSchema.safeParse({ costs: { 'bad/name': { matrix } } }).success, false);
  });
});

describe('onlineFraction', () => {
  void test('state at `from` from the last change before it, then each change', () => {
    const changes = [
      { ts: 0, online: true },
      { ts: 150, online: false },
      { ts: 175, online: true },
    ];
    close(onlineFraction(changes, 100, 200), 0.75);
    close(onlineFraction(changes, 200, 300), 1);
    close(onlineFraction(changes, 150, 175), 0);
    // Never seen online before the period: offline until the first change.
    close(onlineFraction([{ ts: 50, online: true }], 0, 100), 0.5);
    assert.equal(onlineFraction([], 0, 100), 0);
    assert.equal(onlineFraction(changes, 100, 100), 0);
  });
});

describe('indexRows', () => {
  const rec = (seq: number, kind: string, body: Record<string, unknown>, ts = 1000 + seq): TelemetryRecord => ({ stream: kind, epoch: 1, seq, ts, kind, body });
  void test('inference records and health windows become index rows; malformed ones are skipped', () => {
    const health: HealthWindow = { model: 'm', version: '1', windowStart: 0, windowMs: 1000, ok: 3, errors: 1, latency: [3], classCounts: [2, 1], confidence: [0, 3], cpuMs: 12.5 };
    const r = indexRows('d1', [
      rec(1, 'inference', { id: 'a', model: 'm', version: '1', label: 'ok', confidence: 0.9, latencyMs: 1 }, 5000),
      rec(2, 'inference', { id: 'b', model: 'm', version: '1', label: 'ok', confidence: 1.5 }),
      rec(3, 'health', { ...health }),
      rec(4, 'health', { model: 'm' }),
      rec(5, 'event', { anything: true }),
    ]);
    assert.deepEqual(r.inferences, [{ deviceId: 'd1', id: 'a', model: 'm', version: '1', label: 'ok', confidence: 0.9, ts: 5000 }]);
    assert.equal(r.health.length, 1);
    assert.equal(r.health[0]?.cpuMs, 12.5);
    assert.equal(r.health[0]?.deviceId, 'd1');
    assert.equal(r.skipped, 2);
  });
});

describe('feedback ACL', () => {
  const dev = { id: 'd1', kind: 'device' as const, deviceId: null };
  const sen = { id: 's1', kind: 'sensor' as const, deviceId: 'd1' };
  const con = { id: 'mes', kind: 'consumer' as const, deviceId: null };
  void test('device, its sensors and consumers may publish feedback; nobody else and nothing more', () => {
    assert.equal(publishRefusal(dev, 'edgefleet/v1/d1/feedback'), undefined);
    assert.ok(publishRefusal(dev, 'edgefleet/v1/d2/feedback'));
    assert.equal(publishRefusal(sen, 'edgefleet/v1/d1/feedback'), undefined);
    assert.ok(publishRefusal(sen, 'edgefleet/v1/d2/feedback'));
    assert.equal(publishRefusal(con, 'edgefleet/v1/d1/feedback'), undefined);
    assert.equal(publishRefusal(con, 'edgefleet/v1/d2/feedback'), undefined);
    // Consumers still publish nothing else, and never with wildcards or deeper levels.
    assert.ok(publishRefusal(con, 'edgefleet/v1/d1/telemetry'));
    assert.ok(publishRefusal(con, 'edgefleet/v1/d1/feedback/x'));
    assert.ok(publishRefusal(con, 'edgefleet/v1/+/feedback'));
    assert.ok(publishRefusal(con, 'edgefleet/v1//feedback'));
    assert.ok(publishRefusal(con, 'edgefleet/v1/$hub/feedback'));
    assert.ok(publishRefusal(con, 'edgefleet/v1/$hub/alerts'));
    assert.ok(publishRefusal(sen, 'edgefleet/v1/d1/telemetry'));
  });
});

describe('CLI', () => {
  void test('kpis: flags → query string', () => {
    assert.equal(kpiQuery({}, 0), '');
    assert.equal(kpiQuery({ model: 'm', version: '1', since: '1h' }, 7_200_000), '?model=m&version=1&from=3600000&to=7200000');
    assert.equal(kpiQuery({ from: '2026-01-01T00:00:00Z', window: '10m' }, 0), '?from=2026-01-01T00%3A00%3A00Z&window=600000');
    assert.throws(() => kpiQuery({ version: '1' }, 0), /--version needs --model/);
    assert.throws(() => kpiQuery({ since: '1h', from: '0' }, 0), /excludes/);
  });
  void test('feedback: id=label pairs (the id may contain =)', () => {
    assert.deepEqual(parsePairs(['a=ok', 'x=y=defect'], 'd1'), [
      { id: 'a', label: 'ok', device: 'd1' },
      { id: 'x=y', label: 'defect', device: 'd1' },
    ]);
    assert.throws(() => parsePairs(['=ok'], undefined));
    assert.throws(() => parsePairs(['a='], undefined));
  });
});

describe('HealthMonitor CPU accounting', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-kpis-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  void test('CPU while windows are open is split by engine latency; idle CPU between windows is not charged', async () => {
    const outbox = new Outbox({ path: join(dir, 'outbox.db'), log: silentLogger(), flushMs: 1 });
    await outbox.start(new AbortController().signal);
    let t = 1_700_000_000_000;
    let cpu = 5000;
    const m = new HealthMonitor({ windowMs: 1000, sink: outbox, log: silentLogger(), now: () => t, cpuTimeMs: () => cpu });
    await m.start();
    try {
      const ok = (latencyMs: number) => ({ ok: true, latencyMs, classIndex: 0, confidence: 0.9, classes: 2 });
      t += 100;
      m.record('a', '1', ok(3)); // mark at cpu 5000
      m.record('b', '1', ok(2));
      cpu += 40;
      m.record('a', '1', ok(3)); // a: 6 ms busy, b: 2 ms
      cpu += 40; // 80 ms used while open
      t += 1000; // the window ended
      m.tick();
      cpu += 1000; // idle: no window open
      t += 5000;
      m.record('a', '1', { ok: false, classes: 2 }); // opens a window with only an error: mark again
      cpu += 10;
      t += 1000;
      m.tick();
    } finally {
      await m.stop();
    }
    const windows = outbox
      .readBatch(0, 100)
      .filter((r) => r.stream === HEALTH_STREAM)
      .map((r) => HealthWindowSchema.parse(r.body));
    await outbox.stop();
    assert.equal(windows.length, 3);
    const [a1, b1, a2] = [windows[0], windows[1], windows[2]];
    assert.equal(a1?.model, 'a');
    assert.equal(b1?.model, 'b');
    close(a1?.cpuMs ?? NaN, 60, 1e-6); // 80 × 6/8
    close(b1?.cpuMs ?? NaN, 20, 1e-6); // 80 × 2/8
    close(a2?.cpuMs ?? NaN, 10, 1e-6); // by count (no latency), idle 1000 ms not charged
  });

  void test('without a CPU clock windows carry no cpuMs', async () => {
    const outbox = new Outbox({ path: join(dir, 'outbox2.db'), log: silentLogger(), flushMs: 1 });
    await outbox.start(new AbortController().signal);
    const m = new HealthMonitor({ windowMs: 1000, sink: outbox, log: silentLogger() });
    await m.start();
    m.record('a', '1', { ok: true, latencyMs: 1, classIndex: 0, confidence: 0.5, classes: 2 });
    await m.stop();
    const w = outbox.readBatch(0, 10).filter((r) => r.stream === HEALTH_STREAM);
    await outbox.stop();
    assert.equal(w.length, 1);
    assert.equal('cpuMs' in (w[0]?.body ?? {}), false);
  });
});
