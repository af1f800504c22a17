// Merging drift summaries: exact (fifteen 1-min summaries = one 15-min accumulator), idempotent
// (a re-delivered summary changes nothing), order-independent, and refusing what cannot merge.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdgefleetError } from '../../shared/errors.ts';
import { addSummary, combineAggregates, groupSummaries, mergeSummaries, subtractAggregate } from '../../shared/drift/merge.ts';
import type { DriftAggregate } from '../../shared/drift/merge.ts';
import { DriftAccumulator } from '../../shared/drift/summary.ts';
import type { DriftSummary } from '../../shared/drift/summary.ts';
import { createRng } from '../../scripts/lib/rng.ts';

const model = { name: 'machine-state', version: '1.0.0' };
const features = [
  { name: 'x', edges: [-1, 0, 1] },
  { name: 'y', edges: [10, 20] },
];
const T0 = Date.UTC(2025, 5, 1, 8, 0);

/** Readings of one device for `minutes` minutes, both as 1-min summaries and as one 15-min summary. */
function simulate(deviceId: string, seed: number, minutes = 15): { perMinute: DriftSummary[]; whole: DriftSummary } {
  const rng = createRng(seed);
  const mk = (windowMs: number) => new DriftAccumulator({ deviceId, model, features, classes: 3, categorical: ['line'], windowMs, instance: `i${windowMs}` });
  const minute = mk(60_000);
  const whole = mk(900_000);
  const perMinute: DriftSummary[] = [];
  for (let m = 0; m < minutes; m++) {
    for (let i = 0; i < 20; i++) {
      const v = [rng.normal(), rng.next() < 0.05 ? Number.NaN : rng.normal(15, 5)];
      const scores = [rng.next(), rng.next(), rng.next()];
      const t = scores[0]! + scores[1]! + scores[2]!;
      const s = scores.map((x) => x / t);
      const best = s.indexOf(Math.max(...s));
      const c = { index: best, confidence: s[best]!, margin: 0.1, scores: s };
      const cat = [rng.pick(['a', 'b', 'c'])];
      minute.add(v, c, cat);
      whole.add(v, c, cat);
    }
    perMinute.push(minute.flush(T0 + m * 60_000));
  }
  return { perMinute, whole: whole.flush(T0) };
}

/** Everything but ids and float sums, which may differ in the last bits with addition order. */
function content(a: DriftAggregate | DriftSummary) {
  return {
    count: a.count,
    numeric: a.numeric.map((f) => ({ counts: f.counts, nan: f.nan, min: f.min, max: f.max })),
    categorical: a.categorical,
    outputs: a.outputs,
  };
}

function sumsClose(a: DriftAggregate | DriftSummary, b: DriftAggregate | DriftSummary): void {
  for (const [i, f] of a.numeric.entries()) {
    const g = b.numeric[i]!;
    assert.ok(Math.abs(f.sum - g.sum) <= 1e-9 * (1 + Math.abs(g.sum)), `sum ${f.sum} vs ${g.sum}`);
    assert.ok(Math.abs(f.sumSq - g.sumSq) <= 1e-9 * (1 + g.sumSq), `sumSq ${f.sumSq} vs ${g.sumSq}`);
  }
}

describe('merging drift summaries', () => {
  it('is exact: fifteen 1-min summaries merge to the 15-min accumulator', () => {
    const { perMinute, whole } = simulate('dev-1', 1);
    const agg = mergeSummaries(perMinute, { scope: 'device', id: 'dev-1', windowMs: 900_000 });
    assert.equal(agg.windowStart, T0);
    assert.deepEqual(content(agg), content(whole));
    sumsClose(agg, whole);
    assert.equal(agg.summaryIds.size, 15);
    assert.deepEqual([...agg.devices], ['dev-1']);
  });

  it('is idempotent: duplicates and replays change nothing', () => {
    const { perMinute } = simulate('dev-1', 2);
    const once = mergeSummaries(perMinute, { windowMs: 900_000 });
    const twice = mergeSummaries([...perMinute, ...perMinute, perMinute[3]!], { windowMs: 900_000 });
    assert.deepEqual(content(twice), content(once));
    assert.deepEqual(twice.numeric.map((f) => [f.sum, f.sumSq]), once.numeric.map((f) => [f.sum, f.sumSq]), 'same summaries, same order: same sums');
    assert.equal(addSummary(twice, perMinute[0]!), false);
    // A re-delivered copy (same id, parsed from JSON) is recognised by its id, not by identity.
    assert.equal(addSummary(twice, JSON.parse(JSON.stringify(perMinute[5])) as DriftSummary), false);
    assert.deepEqual(content(twice), content(once));
  });

  it('is order-independent in counts', () => {
    const { perMinute } = simulate('dev-1', 3);
    const shuffled = [...perMinute].reverse();
    assert.deepEqual(content(mergeSummaries(shuffled, { windowMs: 900_000 })), content(mergeSummaries(perMinute, { windowMs: 900_000 })));
  });

  it('groups by device, group and fleet, and combining device aggregates equals merging all summaries', () => {
    const all = [...simulate('dev-1', 4).perMinute, ...simulate('dev-2', 5).perMinute, ...simulate('dev-3', 6, 20).perMinute];
    const byDevice = groupSummaries([...all, ...all.slice(0, 7)], { windowMs: 900_000, by: 'device' });
    assert.deepEqual(byDevice.map((a) => [a.id, a.windowStart, a.summaryIds.size]), [
      ['dev-1', T0, 15],
      ['dev-2', T0, 15],
      ['dev-3', T0, 15],
      ['dev-3', T0 + 900_000, 5],
    ]);
    const fleet = groupSummaries(all, { windowMs: 900_000, by: 'fleet' });
    assert.equal(fleet.length, 2);
    const combined = combineAggregates(byDevice.filter((a) => a.windowStart === T0), { scope: 'fleet', id: 'fleet' });
    assert.deepEqual(content(combined), content(fleet[0]!));
    sumsClose(combined, fleet[0]!);
    assert.equal(combined.devices.size, 3);
    const groups = groupSummaries(all, { windowMs: 900_000, by: 'group', groupOf: (d) => (d === 'dev-1' ? undefined : 'line-1') });
    assert.deepEqual(groups.map((g) => [g.id, [...g.devices].sort()]), [
      ['line-1', ['dev-2', 'dev-3']],
      ['line-1', ['dev-3']],
    ]);
  });

  it('combining the same part twice is a no-op; a partial overlap is refused', () => {
    const a = mergeSummaries(simulate('dev-1', 7).perMinute, { scope: 'device', id: 'dev-1', windowMs: 900_000 });
    const b = mergeSummaries(simulate('dev-2', 8).perMinute, { scope: 'device', id: 'dev-2', windowMs: 900_000 });
    assert.deepEqual(content(combineAggregates([a, b, a], { scope: 'fleet', id: 'fleet' })), content(combineAggregates([a, b], { scope: 'fleet', id: 'fleet' })));
    const ab = combineAggregates([a, b], { scope: 'fleet', id: 'fleet' });
    const contained = mergeSummaries(simulate('dev-1', 7).perMinute.slice(0, 3), { scope: 'device', id: 'x', windowMs: 900_000 });
    assert.deepEqual(content(combineAggregates([ab, contained], { scope: 'fleet', id: 'f' })), content(ab), 'already contained: skipped');
    const overlapping = mergeSummaries([...simulate('dev-1', 7).perMinute.slice(0, 3), ...simulate('dev-3', 12).perMinute], { scope: 'group', id: 'x', windowMs: 900_000 });
    assert.throws(() => combineAggregates([ab, overlapping], { scope: 'fleet', id: 'f' }), (e: unknown) => e instanceof EdgefleetError && e.code === 'CONFLICT');
  });

  it('subtracting a device from the fleet gives exactly its peers', () => {
    const a = mergeSummaries(simulate('dev-1', 9).perMinute, { scope: 'device', id: 'dev-1', windowMs: 900_000 });
    const b = mergeSummaries(simulate('dev-2', 10).perMinute, { scope: 'device', id: 'dev-2', windowMs: 900_000 });
    const peers = subtractAggregate(combineAggregates([a, b], { scope: 'fleet', id: 'fleet' }), a);
    assert.deepEqual(
      content(peers).numeric.map((f) => [f.counts, f.nan]),
      content(b).numeric.map((f) => [f.counts, f.nan]),
    );
    assert.deepEqual(content(peers).outputs, content(b).outputs);
    assert.deepEqual(content(peers).categorical, content(b).categorical);
    assert.deepEqual([...peers.devices], ['dev-2']);
    assert.throws(() => subtractAggregate(a, b), /not contained/);
  });

  it('refuses summaries of another model, layout or window', () => {
    const { perMinute } = simulate('dev-1', 11);
    const agg = mergeSummaries(perMinute.slice(0, 2), { windowMs: 900_000 });
    const s = perMinute[2]!;
    const code = (c: string) => (e: unknown) => e instanceof EdgefleetError && e.code === c;
    assert.throws(() => addSummary(agg, { ...s, summaryId: 'v2', model: { ...model, version: '2.0.0' } }), code('CONFLICT'));
    assert.throws(() => addSummary(agg, { ...s, summaryId: 'bins', numeric: [{ ...s.numeric[0]!, counts: [1, 2] }, s.numeric[1]!] }), code('CONFLICT'));
    assert.throws(() => addSummary(agg, { ...s, summaryId: 'late', windowStart: T0 + 900_000 }), code('BAD_INPUT'));
    assert.equal(agg.summaryIds.size, 2, 'refused summaries leave no trace');
  });
});
