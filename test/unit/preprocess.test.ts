import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { classify, softmax } from '../../agent/preprocess/postprocess.ts';
import { preprocessTabular, ReadingSchema } from '../../agent/preprocess/tabular.ts';
import type { TabularPreprocess } from '../../shared/manifest.ts';

const spec: TabularPreprocess = {
  kind: 'tabular',
  features: [
    { name: 'a', mean: 1, std: 2 },
    { name: 'b', mean: -1, std: 0.5 },
  ],
};

describe('tabular preprocessing', () => {
  it('orders named features as the model expects and scales them', () => {
    const t = preprocessTabular(spec, { features: { b: 0, a: 5 } });
    assert.deepEqual(Array.from(t.data), [2, 2]);
    assert.deepEqual(t.dims, [1, 2]);
    assert.deepEqual(Array.from(preprocessTabular(spec, { values: [1, -1] }).data), [0, 0]);
  });

  it('rejects wrong counts, missing, unknown and non-finite features', () => {
    assert.throws(() => preprocessTabular(spec, { values: [1] }), /expected 2 values, got 1/);
    assert.throws(() => preprocessTabular(spec, { features: { a: 1 } }), /missing features: b/);
    assert.throws(() => preprocessTabular(spec, { features: { a: 1, b: 2, c: 3 } }), /unknown features: c/);
    assert.throws(() => preprocessTabular(spec, { values: [1, Infinity] }), /not a finite number/);
  });

  it('reading schema takes exactly one of values or features', () => {
    assert.equal(ReadingSchema.safeParse({ values: [1] }).success, true);
    assert.equal(ReadingSchema.safeParse({}).success, false);
    assert.equal(ReadingSchema.safeParse({ values: [1], features: { a: 1 } }).success, false);
    assert.equal(ReadingSchema.safeParse({ values: ['1'] }).success, false);
    assert.equal(ReadingSchema.safeParse({ values: [null] }).success, false);
  });
});

describe('postprocessing', () => {
  it('softmax is stable for large logits and sums to 1', () => {
    const p = softmax([1000, 1001, 999]);
    assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-12);
    assert.ok((p[1] as number) > (p[0] as number));
  });

  it('classify gives label, confidence and margin', () => {
    const c = classify({ output: 'probabilities', labels: ['x', 'y', 'z'] }, [0.2, 0.7, 0.1]);
    assert.equal(c.label, 'y');
    assert.equal(c.index, 1);
    assert.ok(Math.abs(c.confidence - 0.7) < 1e-9);
    assert.ok(Math.abs(c.margin - 0.5) < 1e-9);
  });
});
