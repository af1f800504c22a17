// Drift summaries: window alignment, the bin convention shared with make-models' reference
// bins, NaN / under- / overflow handling, output histograms, schema validity and size.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EdgefleetError } from '../../shared/errors.ts';
import {
  alignWindow,
  binIndex,
  DriftAccumulator,
  DriftSummarySchema,
  normalizedEntropy,
  OTHER_CATEGORY,
  OUTPUT_BINS,
} from '../../shared/drift/summary.ts';
import { referenceBins } from '../../scripts/lib/models.ts';
import { createRng } from '../../scripts/lib/rng.ts';

const model = { name: 'machine-state', version: '1.0.0' };
const cls = (index: number, scores: number[]) => {
  const sorted = [...scores].sort((a, b) => b - a);
  return { index, confidence: sorted[0] as number, margin: (sorted[0] as number) - (sorted[1] as number), scores };
};

describe('window alignment', () => {
  it('floors to UTC multiples of the window', () => {
    assert.equal(alignWindow(Date.UTC(2025, 0, 1, 12, 34, 56, 789), 60_000), Date.UTC(2025, 0, 1, 12, 34));
    assert.equal(alignWindow(Date.UTC(2025, 0, 1, 12, 34, 56), 900_000), Date.UTC(2025, 0, 1, 12, 30));
    assert.equal(alignWindow(120_000, 60_000), 120_000);
    assert.throws(() => alignWindow(1, 0), EdgefleetError);
  });
});

describe('bin convention', () => {
  it('k = number of edges <= v, identical to make-models referenceBins', () => {
    const edges = [1, 2, 3];
    assert.deepEqual([0.5, 1, 1.5, 2, 2.999, 3, 99, -Infinity].map((v) => binIndex(edges, v)), [0, 1, 1, 2, 2, 3, 3, 0]);
    const rng = createRng(7);
    const values = Array.from({ length: 2000 }, () => Math.round(rng.normal(5, 2) * 10) / 10); // ties on edges
    const ref = referenceBins('x', values);
    const counts = new Array<number>(ref.edges.length + 1).fill(0);
    for (const v of values) counts[binIndex(ref.edges, v)]! += 1;
    assert.deepEqual(counts, ref.counts);
  });
});

describe('DriftAccumulator', () => {
  const features = [
    { name: 'a', edges: [0, 10] },
    { name: 'b', edges: [-1, 0, 1] },
  ];

  it('bins values with under/overflow, counts non-finite values apart, and keeps moments', () => {
    const acc = new DriftAccumulator({ deviceId: 'dev-1', model, features, classes: 3, instance: 'boot1' });
    acc.add([-5, 0], cls(0, [0.7, 0.2, 0.1]));
    acc.add(new Float64Array([0, 1]), cls(1, [0.3, 0.6, 0.1]));
    acc.add([10, Number.NaN], cls(1, [0.2, 0.75, 0.05]));
    acc.add([Infinity, -2], cls(2, [1 / 3, 1 / 3, 1 / 3]));
    assert.equal(acc.count, 4);
    const s = acc.flush(120_000);
    assert.equal(acc.count, 0, 'flush starts an empty window');
    DriftSummarySchema.parse(s);
    const [a, b] = s.numeric;
    assert.deepEqual(a?.counts, [1, 1, 1]);
    assert.equal(a?.nan, 1, 'Infinity is not a reading');
    assert.equal(a?.sum, 5);
    assert.equal(a?.sumSq, 125);
    assert.deepEqual([a?.min, a?.max], [-5, 10]);
    assert.deepEqual(b?.counts, [1, 0, 1, 1]);
    assert.equal(b?.nan, 1);
    assert.deepEqual(s.outputs.classCounts, [1, 2, 1]);
    assert.equal(s.outputs.confidence.length, OUTPUT_BINS);
    assert.equal(s.outputs.confidence.reduce((x, y) => x + y), 4);
    assert.equal(s.outputs.entropy[OUTPUT_BINS - 1], 1, 'uniform scores → normalised entropy 1 → top bin');
    assert.equal(s.outputs.margin[0], 1, 'the tie has margin 0');
    assert.equal(s.summaryId, 'dev-1/machine-state@1.0.0/120000/boot1.0');
    assert.equal(s.windowMs, 60_000);
  });

  it('gives every flush its own summary id, and empty windows still validate', () => {
    const acc = new DriftAccumulator({ deviceId: 'dev-1', model, features, classes: 3 });
    const s1 = acc.flush(0);
    const s2 = acc.flush(0);
    assert.notEqual(s1.summaryId, s2.summaryId);
    DriftSummarySchema.parse(s1);
    assert.deepEqual(s1.numeric[0], { name: 'a', counts: [0, 0, 0], nan: 0, sum: 0, sumSq: 0, min: null, max: null });
  });

  it('rejects bad shapes without touching the window, and unaligned windows', () => {
    const acc = new DriftAccumulator({ deviceId: 'dev-1', model, features, classes: 3, categorical: ['shift'] });
    assert.throws(() => acc.add([1], cls(0, [1, 0, 0]), ['a']), /expected 2 numeric values/);
    assert.throws(() => acc.add([1, 2], cls(3, [1, 0, 0]), ['a']), /class index 3/);
    assert.throws(() => acc.add([1, 2], cls(0, [1, 0, 0])), /categorical/);
    assert.equal(acc.count, 0);
    assert.throws(() => acc.flush(61_000), /not aligned/);
    assert.throws(() => new DriftAccumulator({ deviceId: 'dev-1', model, features: [{ name: 'x', edges: [1, 1] }], classes: 2 }), /strictly increasing/);
    assert.throws(() => new DriftAccumulator({ deviceId: 'bad/id', model, features, classes: 2 }));
  });

  it('counts categories, folding the ones past the cap into __other__', () => {
    const acc = new DriftAccumulator({ deviceId: 'dev-1', model, features, classes: 2, categorical: ['line'], maxCategories: 2 });
    for (const c of ['x', 'y', 'x', 'z', 'w']) acc.add([1, 1], cls(0, [0.9, 0.1]), [c]);
    const s = acc.flush(0);
    assert.deepEqual(s.categorical, [{ name: 'line', counts: { x: 2, y: 1, [OTHER_CATEGORY]: 2 } }]);
    DriftSummarySchema.parse(s);
  });

  it('normalised entropy is 0 for a certain output and 1 for a uniform one', () => {
    assert.equal(normalizedEntropy([1, 0, 0]), 0);
    assert.ok(Math.abs(normalizedEntropy([0.25, 0.25, 0.25, 0.25]) - 1) < 1e-12);
    assert.ok(Number.isNaN(normalizedEntropy([0, 0])));
  });

  it('schema rejects inconsistent summaries', () => {
    const acc = new DriftAccumulator({ deviceId: 'dev-1', model, features, classes: 2 });
    acc.add([1, 1], cls(0, [0.9, 0.1]));
    const s = acc.flush(0);
    assert.equal(DriftSummarySchema.safeParse({ ...s, count: 2 }).success, false, 'counts must add up to count');
    assert.equal(DriftSummarySchema.safeParse({ ...s, windowStart: 5 }).success, false, 'unaligned');
    assert.equal(DriftSummarySchema.safeParse({ ...s, numeric: [{ ...s.numeric[0], counts: [1.5, 0, 0] }] }).success, false);
  });

  it('a summary for 8 features and 3 classes stays around a kilobyte of JSON', () => {
    const rng = createRng(1);
    const eight = Array.from({ length: 8 }, (_, i) => ({ name: `feature_${i}`, edges: [-1.28, -0.84, -0.52, -0.25, 0, 0.25, 0.52, 0.84, 1.28] }));
    const acc = new DriftAccumulator({ deviceId: 'device-0001', model, features: eight, classes: 3 });
    for (let i = 0; i < 60; i++) {
      const p = [rng.next(), rng.next(), rng.next()];
      const t = p[0]! + p[1]! + p[2]!;
      const scores = p.map((x) => x / t);
      const best = scores.indexOf(Math.max(...scores));
      acc.add(Array.from({ length: 8 }, () => rng.normal()), cls(best, scores));
    }
    const bytes = Buffer.byteLength(JSON.stringify(acc.flush(0)));
    assert.ok(bytes < 2000, `${bytes} bytes`);
  });
});
