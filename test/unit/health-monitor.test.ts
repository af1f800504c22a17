/**
 * agent/health: the monitor's UTC-aligned windows land in a real outbox (one HealthWindow record
 * per version with activity, partial window flushed on stop), totalsSince for probation, and
 * Probation's verdicts on a fake clock: absolute error rule without a baseline, comparison with
 * the replaced version, pass at untilMs, once per watch, cancel.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HealthMonitor } from '../../agent/health/health-monitor.ts';
import { Probation, ProbationThresholdsSchema, type ProbationBreach, type ProbationPass } from '../../agent/health/probation.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { silentLogger } from '../../shared/log.ts';
import { HEALTH_STREAM, HealthWindowSchema, LATENCY_EDGES_MS, type HealthWindow } from '../../shared/updates.ts';

let dir: string;
let n = 0;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-health-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function openOutbox(): Promise<Outbox> {
  const o = new Outbox({ path: join(dir, `outbox-${n++}.db`), log: silentLogger(), flushMs: 1 });
  await o.start(new AbortController().signal);
  return o;
}

function healthRecords(o: Outbox): HealthWindow[] {
  return o
    .readBatch(0, 10_000)
    .filter((r) => r.stream === HEALTH_STREAM)
    .map((r) => HealthWindowSchema.parse(r.body));
}

/** A fake clock starting inside a window (UTC-aligned to 1000 ms). */
function clock(start = 1_700_000_000_250): { now: () => number; set: (t: number) => void; add: (ms: number) => void } {
  let t = start;
  return { now: () => t, set: (x) => (t = x), add: (ms) => (t += ms) };
}

const ok = (latencyMs: number, classIndex: number, confidence: number) => ({ ok: true, latencyMs, classIndex, confidence, classes: 3 });

describe('HealthMonitor', () => {
  void test('one record per (model, version) per UTC-aligned window with activity; partial window on stop', async () => {
    const outbox = await openOutbox();
    const c = clock();
    const m = new HealthMonitor({ windowMs: 1000, sink: outbox, log: silentLogger(), now: c.now });
    await m.start();
    try {
      m.record('ms', '1.0.0', ok(0.8, 0, 0.93));
      m.record('ms', '1.0.0', ok(12, 2, 0.41));
      m.record('ms', '1.0.0', { ok: false, classes: 3 });
      m.record('ms', '2.0.0', ok(0.3, 1, 0.55));
      c.add(1000); // next window: the first closes at the first record in it, or at tick()
      m.record('ms', '2.0.0', ok(0.3, 1, 0.55));
      m.tick();
      c.add(5000); // idle windows produce no records
      m.tick();
      m.record('ms', '2.0.0', ok(6000, 1, 1));
    } finally {
      await m.stop();
    }
    try {
      const recs = healthRecords(outbox);
      const start = 1_700_000_000_000;
      assert.deepEqual(
        recs.map((w) => [w.version, w.windowStart - start, w.ok, w.errors]),
        [
          ['1.0.0', 0, 2, 1],
          ['2.0.0', 0, 1, 0],
          ['2.0.0', 1000, 1, 0],
          ['2.0.0', 6000, 1, 0],
        ],
      );
      const first = recs[0]!;
      assert.equal(first.windowMs, 1000);
      assert.deepEqual(first.classCounts, [1, 0, 1]);
      assert.equal(first.latency.length, LATENCY_EDGES_MS.length + 1);
      assert.equal(first.latency[2], 1); // 0.8 ms in (0.5, 1]
      assert.equal(first.latency[8], 1); // 12 ms in (10, 15]
      assert.equal(first.confidence[9], 1);
      assert.equal(first.confidence[4], 1);
      assert.equal(recs[3]!.latency[LATENCY_EDGES_MS.length], 1); // overflow bucket
    } finally {
      await outbox.stop();
    }
  });

  void test('totalsSince sums kept windows ending after fromMs plus the open one', async () => {
    const outbox = await openOutbox();
    const c = clock(1_700_000_000_000);
    const m = new HealthMonitor({ windowMs: 1000, keepWindows: 3, sink: outbox, log: silentLogger(), now: c.now });
    try {
      for (let w = 0; w < 6; w++) {
        for (let i = 0; i <= w; i++) m.record('ms', '1.0.0', ok(1, 0, 0.9));
        c.add(1000);
        m.tick();
      }
      m.record('ms', '1.0.0', ok(1, 0, 0.9));
      // Kept: windows 3, 4, 5 (4 + 5 + 6 requests) and the open one (1).
      assert.equal(m.totalsSince('ms', '1.0.0', 0).ok, 16);
      assert.equal(m.totalsSince('ms', '1.0.0', 1_700_000_004_500).ok, 5 + 6 + 1);
      assert.equal(m.totalsSince('ms', '1.0.0', 1_700_000_006_000).ok, 1);
      assert.equal(m.totalsSince('ms', '9.9.9', 0).ok, 0);
    } finally {
      await m.stop();
      await outbox.stop();
    }
  });
});

describe('Probation', () => {
  const thresholds = ProbationThresholdsSchema.parse({ minSamples: 100 });

  async function setup(): Promise<{ m: HealthMonitor; p: Probation; c: ReturnType<typeof clock>; breaches: ProbationBreach[]; passes: ProbationPass[]; close: () => Promise<void> }> {
    const outbox = await openOutbox();
    const c = clock(1_700_000_000_000);
    const m = new HealthMonitor({ windowMs: 1000, sink: outbox, log: silentLogger(), now: c.now });
    const p = new Probation({ health: m, thresholds, checkMs: 60_000, log: silentLogger(), now: c.now });
    await m.start();
    await p.start();
    const breaches: ProbationBreach[] = [];
    const passes: ProbationPass[] = [];
    p.onBreach((b) => breaches.push(b));
    p.onPass((x) => passes.push(x));
    return {
      m,
      p,
      c,
      breaches,
      passes,
      close: async () => {
        await p.stop();
        await m.stop();
        await outbox.stop();
      },
    };
  }

  function serve(m: HealthMonitor, c: ReturnType<typeof clock>, version: string, count: number, obs: (i: number) => Parameters<HealthMonitor['record']>[2]): void {
    for (let i = 0; i < count; i++) {
      m.record('ms', version, obs(i));
      c.add(5);
    }
  }

  void test('a good version passes at untilMs, once', async () => {
    const { m, p, c, breaches, passes, close } = await setup();
    try {
      serve(m, c, '1.0.0', 500, (i) => ok(1 + (i % 3) * 0.3, i % 3, 0.8 + (i % 5) * 0.03));
      p.watch({ name: 'ms', version: '2.0.0', previousVersion: '1.0.0', untilMs: c.now() + 10_000 });
      assert.equal(p.watching('ms')?.version, '2.0.0');
      serve(m, c, '2.0.0', 500, (i) => ok(1.1 + (i % 3) * 0.3, i % 3, 0.8 + (i % 5) * 0.03));
      p.check();
      assert.equal(passes.length, 0);
      c.add(10_000);
      p.check();
      p.check();
      assert.deepEqual(passes, [{ name: 'ms', version: '2.0.0' }]);
      assert.equal(breaches.length, 0);
      assert.equal(p.watching('ms'), undefined);
    } finally {
      await close();
    }
  });

  void test('slower, collapsed or failing versions breach with the metric named, once', async () => {
    const cases: { name: string; obs: (i: number) => Parameters<HealthMonitor['record']>[2]; metric: string }[] = [
      { name: 'slow', obs: (i) => ok(20 + (i % 7), i % 3, 0.8 + (i % 5) * 0.03), metric: 'latency_p95' },
      { name: 'collapse', obs: (i) => ok(1, i % 3, 0.34 + (i % 4) * 0.01), metric: 'confidence' },
      { name: 'shift', obs: () => ok(1, 2, 0.85), metric: 'class_shift' },
      { name: 'errors', obs: (i) => (i % 10 < 3 ? { ok: false, classes: 3 } : ok(1, i % 3, 0.85)), metric: 'error_rate' },
    ];
    for (const k of cases) {
      const { m, p, c, breaches, passes, close } = await setup();
      try {
        serve(m, c, '1.0.0', 500, (i) => ok(1 + (i % 3) * 0.3, i % 3, 0.8 + (i % 5) * 0.03));
        p.watch({ name: 'ms', version: '2.0.0', previousVersion: '1.0.0', untilMs: c.now() + 60_000 });
        serve(m, c, '2.0.0', 50, k.obs);
        p.check();
        // error_rate fires on the absolute rule before minSamples; the others wait for samples.
        if (k.metric !== 'error_rate') assert.equal(breaches.length, 0, `${k.name}: breached on too few samples`);
        serve(m, c, '2.0.0', 250, k.obs);
        p.check();
        p.check();
        assert.equal(breaches.length, 1, `${k.name}: ${JSON.stringify(breaches)}`);
        assert.equal(breaches[0]!.version, '2.0.0');
        assert.match(breaches[0]!.reason, new RegExp(k.metric), k.name);
        c.add(60_000);
        p.check();
        assert.equal(passes.length, 0);
      } finally {
        await close();
      }
    }
  });

  void test('without a previous version only the absolute error rule applies; cancel ends a watch silently', async () => {
    const { m, p, c, breaches, passes, close } = await setup();
    try {
      p.watch({ name: 'ms', version: '1.0.0', untilMs: c.now() + 10_000 });
      serve(m, c, '1.0.0', 19, () => ({ ok: false, classes: 3 }));
      p.check();
      assert.equal(breaches.length, 0, 'fewer than minErrorSamples');
      serve(m, c, '1.0.0', 1, () => ({ ok: false, classes: 3 }));
      p.check();
      assert.equal(breaches.length, 1);
      assert.match(breaches[0]!.reason, /error_rate: 20 of 20/);

      p.watch({ name: 'ms', version: '3.0.0', previousVersion: '1.0.0', untilMs: c.now() + 1000 });
      p.cancel('ms');
      c.add(2000);
      p.check();
      assert.equal(passes.length, 0);
      assert.equal(breaches.length, 1);
    } finally {
      await close();
    }
  });
});
