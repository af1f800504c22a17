/**
 * shared/health.ts: exact merging of health windows, statistics read off the histograms, and
 * compareHealth's verdicts (pass / fail / insufficient) per metric, with the guards that keep
 * noise from failing a release (minimum samples, minimum latency delta, effect size AND
 * significance).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { mulberry32 } from '../../scripts/lib/rng.ts';
import {
  classRates,
  compareHealth,
  confidenceBin,
  emptyTotals,
  errorRate,
  GateThresholdsSchema,
  latencyBucket,
  meanConfidence,
  mergeHealth,
  p95LatencyMs,
  totalVariation,
  type HealthTotals,
} from '../../shared/health.ts';
import { LATENCY_EDGES_MS, type HealthWindow } from '../../shared/updates.ts';

interface Obs {
  ok: boolean;
  ms: number;
  cls: number;
  conf: number;
}

function windowOf(obs: readonly Obs[], windowStart = 0, classes = 3): HealthWindow {
  const t = emptyTotals(classes);
  const w: HealthWindow = { model: 'm', version: '1.0.0', windowStart, windowMs: 1000, ok: 0, errors: 0, latency: t.latency, classCounts: t.classCounts, confidence: t.confidence };
  for (const o of obs) {
    if (!o.ok) {
      w.errors++;
      continue;
    }
    w.ok++;
    w.latency[latencyBucket(o.ms)]! += 1;
    w.classCounts[o.cls]! += 1;
    w.confidence[confidenceBin(o.conf)]! += 1;
  }
  return w;
}

function totals(obs: readonly Obs[]): HealthTotals {
  return mergeHealth([windowOf(obs)]);
}

/** n observations: error with probability `err`, latency uniform in [ms[0], ms[1]], class by `rates`, confidence uniform in [conf[0], conf[1]]. */
function sample(n: number, o: { seed: number; err?: number; ms?: [number, number]; rates?: number[]; conf?: [number, number] }): Obs[] {
  const r = mulberry32(o.seed);
  const rates = o.rates ?? [0.5, 0.3, 0.2];
  const [lo, hi] = o.ms ?? [1, 2];
  const [clo, chi] = o.conf ?? [0.7, 0.95];
  const out: Obs[] = [];
  for (let i = 0; i < n; i++) {
    const u = r();
    let cls = 0;
    let acc = rates[0]!;
    while (u > acc && cls < rates.length - 1) acc += rates[++cls]!;
    out.push({ ok: r() >= (o.err ?? 0), ms: lo + (hi - lo) * r(), cls, conf: clo + (chi - clo) * r() });
  }
  return out;
}

const T = GateThresholdsSchema.parse({});
const metrics = (c: ReturnType<typeof compareHealth>): string[] => c.breaches.map((b) => b.metric);

describe('health windows', () => {
  void test('merging windows gives exactly the counts of the windows of their union', () => {
    const obs = sample(5000, { seed: 7, err: 0.03, ms: [0.1, 900], conf: [0.05, 1] });
    const r = mulberry32(11);
    const windows: HealthWindow[] = [];
    let cur: Obs[] = [];
    for (const o of obs) {
      cur.push(o);
      if (r() < 0.01) {
        windows.push(windowOf(cur, windows.length * 1000));
        cur = [];
      }
    }
    windows.push(windowOf(cur, windows.length * 1000));
    assert.ok(windows.length > 20);
    const merged = mergeHealth(windows);
    const whole = totals(obs);
    assert.deepEqual({ ...merged, windows: 0 }, { ...whole, windows: 0 });
    assert.equal(merged.windows, windows.length);
    // Merging merged parts (e.g. per-device aggregates) is the same again.
    const half = Math.floor(windows.length / 2);
    const a = mergeHealth(windows.slice(0, half));
    const b = mergeHealth(windows.slice(half));
    const ab = mergeHealth([{ ...windows[0]!, ...a }, { ...windows[0]!, ...b }]);
    assert.deepEqual(ab.latency, whole.latency);
    assert.deepEqual(ab.classCounts, whole.classCounts);
    assert.equal(ab.ok + ab.errors, 5000);
  });

  void test('windows with different class counts merge, padding the shorter', () => {
    const w2 = windowOf([{ ok: true, ms: 1, cls: 1, conf: 0.9 }], 0, 2);
    const w4 = windowOf([{ ok: true, ms: 1, cls: 3, conf: 0.9 }], 1000, 4);
    assert.deepEqual(mergeHealth([w2, w4]).classCounts, [0, 1, 0, 1]);
  });

  void test('latency buckets follow (edge[i-1], edge[i]] and p95 lies in the bucket of the true p95', () => {
    assert.equal(latencyBucket(0), 0);
    assert.equal(latencyBucket(0.25), 0);
    assert.equal(latencyBucket(0.2500001), 1);
    assert.equal(latencyBucket(5000), LATENCY_EDGES_MS.length - 1);
    assert.equal(latencyBucket(5001), LATENCY_EDGES_MS.length);
    // 1..100 ms: true p95 = 95, in (75, 100].
    const obs = Array.from({ length: 100 }, (_, i) => ({ ok: true, ms: i + 1, cls: 0, conf: 0.5 }));
    const p95 = p95LatencyMs(totals(obs));
    assert.ok(p95 > 75 && p95 <= 100, `p95 ${p95}`);
    // 95 fast + 5 slow: the 95th is the last fast one.
    const mixed = [...Array.from({ length: 95 }, () => ({ ok: true, ms: 0.8, cls: 0, conf: 0.5 })), ...Array.from({ length: 5 }, () => ({ ok: true, ms: 60, cls: 0, conf: 0.5 }))];
    assert.equal(p95LatencyMs(totals(mixed)), 1);
    assert.ok(Number.isNaN(p95LatencyMs(emptyTotals())));
    // Beyond the last edge: a lower bound.
    assert.equal(p95LatencyMs(totals([{ ok: true, ms: 9000, cls: 0, conf: 0.5 }])), 5000);
  });

  void test('error rate, mean confidence and class rates', () => {
    const t = totals([
      { ok: true, ms: 1, cls: 0, conf: 0.95 },
      { ok: true, ms: 1, cls: 2, conf: 0.15 },
      { ok: false, ms: 0, cls: 0, conf: 0 },
      { ok: true, ms: 1, cls: 2, conf: 1 },
    ]);
    assert.equal(errorRate(t), 0.25);
    assert.ok(Math.abs(meanConfidence(t) - (0.95 + 0.15 + 0.95) / 3) < 1e-9);
    assert.deepEqual(classRates(t), [1 / 3, 0, 2 / 3]);
    assert.equal(errorRate(emptyTotals()), 0);
  });
});

describe('compareHealth', () => {
  const base = totals(sample(2000, { seed: 1, err: 0.005 }));

  void test('same behaviour passes; too few samples on either side is insufficient', () => {
    const same = compareHealth(totals(sample(2000, { seed: 2, err: 0.005 })), base, T);
    assert.equal(same.verdict, 'pass', JSON.stringify(same.breaches));
    assert.deepEqual(same.samples, { candidate: 2000, baseline: 2000 });
    const bad = totals(sample(150, { seed: 3, err: 0.5, ms: [40, 60], rates: [0, 0, 1], conf: [0.3, 0.4] }));
    assert.equal(compareHealth(bad, base, T).verdict, 'insufficient');
    assert.equal(compareHealth(base, bad, T).verdict, 'insufficient');
    assert.equal(compareHealth(bad, base, { ...T, minSamples: 100 }).verdict, 'fail');
  });

  void test('error rate: a large increase fails, a small one passes', () => {
    const worse = compareHealth(totals(sample(2000, { seed: 4, err: 0.1 })), base, T);
    assert.equal(worse.verdict, 'fail');
    assert.deepEqual(metrics(worse), ['error_rate']);
    assert.ok(worse.breaches[0]!.candidate > 0.08 && worse.breaches[0]!.baseline < 0.01);
    assert.equal(compareHealth(totals(sample(2000, { seed: 5, err: 0.015 })), base, T).verdict, 'pass');
    // Fewer errors than the baseline is never a breach.
    assert.equal(compareHealth(base, totals(sample(2000, { seed: 6, err: 0.2 })), T).verdict, 'pass');
  });

  void test('latency: several times slower fails; sub-millisecond noise never does', () => {
    const slow = compareHealth(totals(sample(1000, { seed: 7, ms: [8, 12] })), base, T);
    assert.deepEqual(metrics(slow), ['latency_p95']);
    assert.ok(slow.breaches[0]!.candidate > slow.breaches[0]!.limit);
    // 0.1–0.3 ms vs 0.5–0.9 ms: p95 triples, but by less than minLatencyDeltaMs.
    const fast = totals(sample(5000, { seed: 8, ms: [0.1, 0.3] }));
    const noisy = totals(sample(5000, { seed: 9, ms: [0.5, 0.9] }));
    assert.ok(p95LatencyMs(noisy) / p95LatencyMs(fast) > 2);
    assert.equal(compareHealth(noisy, fast, T).verdict, 'pass');
    // Within the ratio: 1–2 ms vs 1.2–2.4 ms.
    assert.equal(compareHealth(totals(sample(5000, { seed: 10, ms: [1.2, 2.4] })), base, T).verdict, 'pass');
  });

  void test('class shift: fails with effect size and significance, not with either alone', () => {
    const shifted = { rates: [0.2, 0.3, 0.5] }; // total variation 0.3 from [0.5, 0.3, 0.2]
    const big = compareHealth(totals(sample(1000, { seed: 11, ...shifted })), base, T);
    assert.deepEqual(metrics(big), ['class_shift']);
    assert.ok(big.breaches[0]!.candidate > 0.2);
    // The same shift on 30 vs 30 requests is within chance.
    const t30 = { ...T, minSamples: 20 };
    const c30 = totals(sample(30, { seed: 12, ...shifted }));
    const b30 = totals(sample(30, { seed: 13 }));
    assert.ok(totalVariation(c30.classCounts, b30.classCounts) > T.maxClassShift, 'the effect alone would breach');
    const small = compareHealth(c30, b30, t30);
    assert.equal(small.verdict, 'pass', JSON.stringify(small.breaches));
    // A tiny shift on huge samples is significant but too small to matter.
    const tiny = compareHealth(totals(sample(200_000, { seed: 14, rates: [0.47, 0.3, 0.23] })), totals(sample(200_000, { seed: 15 })), T);
    assert.equal(tiny.verdict, 'pass', JSON.stringify(tiny.breaches));
  });

  void test('confidence collapse fails; a slightly less confident model passes', () => {
    const collapsed = compareHealth(totals(sample(1000, { seed: 16, conf: [0.33, 0.45] })), base, T);
    assert.deepEqual(metrics(collapsed), ['confidence']);
    assert.ok(collapsed.breaches[0]!.candidate < 0.5 && collapsed.breaches[0]!.baseline > 0.75);
    assert.equal(compareHealth(totals(sample(1000, { seed: 17, conf: [0.65, 0.9] })), base, T).verdict, 'pass');
  });

  void test('thresholds have defaults and validate', () => {
    assert.equal(T.minSamples, 200);
    assert.equal(T.alpha, 0.001);
    assert.equal(T.maxLatencyRatio, 1.5);
    assert.equal(GateThresholdsSchema.parse({ minSamples: 50 }).minSamples, 50);
    assert.throws(() => GateThresholdsSchema.parse({ maxLatencyRatio: 0.5 }));
  });
});
