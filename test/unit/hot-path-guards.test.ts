/**
 * The hand-written guards on the inference hot path (issue #5) must accept exactly what the zod
 * schemas they stand in for accept: isRunMessage / isResultMessage (agent/runtime/messages.ts)
 * vs ToWorkerSchema / FromWorkerSchema, and fastReading (agent/pipeline.ts) vs ReadingSchema.
 * A guard may decline what zod accepts only where the caller falls back to zod (fastReading),
 * never accept what zod refuses. Checked on hand-picked edge cases and on seeded random
 * mutations of valid messages.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fastReading } from '../../agent/pipeline.ts';
import { ReadingSchema } from '../../agent/preprocess/tabular.ts';
import { FromWorkerSchema, isResultMessage, isRunMessage, ToWorkerSchema } from '../../agent/runtime/messages.ts';
import { mulberry32 } from '../../scripts/lib/rng.ts';

const WEIRD: unknown[] = [
  undefined, null, 0, -1, 1.5, -0, NaN, Infinity, -Infinity, 2 ** 53, '', 'x', true, [], {}, [1], new ArrayBuffer(4), new Float32Array(2), { a: 1 },
];

/** Valid run and result messages, and seeded mutations of them (one field replaced or dropped). */
function variants(base: Record<string, unknown>, seed: number, count: number): unknown[] {
  const rng = mulberry32(seed);
  const out: unknown[] = [base];
  const keys = Object.keys(base);
  for (let i = 0; i < count; i++) {
    const m: Record<string, unknown> = { ...base };
    const k = keys[Math.floor(rng() * keys.length)]!;
    if (rng() < 0.15) delete m[k];
    else m[k] = WEIRD[Math.floor(rng() * WEIRD.length)];
    out.push(m);
  }
  return out;
}

const run = { t: 'run', id: 7, key: 'm@1', dtype: 'float32', dims: [1, 8], data: new ArrayBuffer(32) };
const result = { t: 'result', id: 7, runMs: 0.02, outputs: [{ name: 'probs', dims: [1, 3], data: new ArrayBuffer(12) }] };

void describe('hot-path guards agree with their zod schemas', () => {
  void test('isRunMessage ⇔ ToWorkerSchema run', () => {
    const cases = [
      ...variants(run, 1, 400),
      { ...run, dims: [] },
      { ...run, dims: [1, 2, 3, 4, 5, 6, 7, 8, 9] },
      { ...run, dims: [1, 0] },
      { ...run, dims: [1, 2.5] },
      { ...run, dims: [1, '8'] },
      { ...run, dtype: 'int64' },
      { ...run, key: '' },
      { ...run, id: -1 },
      { ...run, id: 2 ** 53 },
      { ...run, data: new Float32Array(8) },
      { ...run, extra: 'ignored' },
      { ...run, back: true },
      { ...run, back: false },
      { ...run, back: 1 },
      { t: 'load', id: 1, key: 'k', path: '/x' },
    ];
    for (const c of cases) {
      const zod = ToWorkerSchema.safeParse(c);
      const want = zod.success && zod.data.t === 'run';
      assert.equal(isRunMessage(c), want, `isRunMessage(${describeCase(c)})`);
    }
  });

  void test('isResultMessage ⇔ FromWorkerSchema result', () => {
    const cases = [
      ...variants(result, 2, 400),
      ...variants(result.outputs[0]!, 3, 200).map((o) => ({ ...result, outputs: [o] })),
      { ...result, outputs: [] },
      { ...result, runMs: -0.1 },
      { ...result, runMs: Infinity },
      { ...result, outputs: [{ name: 'p', dims: [], data: new ArrayBuffer(4) }] },
      { ...result, outputs: [{ name: 'p', dims: [0, 3], data: new ArrayBuffer(0) }] },
      { ...result, outputs: [{ name: 'p', dims: [-1], data: new ArrayBuffer(4) }] },
      { ...result, outputs: [null] },
      { ...result, input: new ArrayBuffer(32) },
      { ...result, input: new Float32Array(8) },
      { ...result, input: null },
      { t: 'error', id: 1, message: 'x' },
    ];
    for (const c of cases) {
      const zod = FromWorkerSchema.safeParse(c);
      const want = zod.success && zod.data.t === 'result';
      assert.equal(isResultMessage(c), want, `isResultMessage(${describeCase(c)})`);
    }
  });

  void test('fastReading never accepts what ReadingSchema refuses, and returns the same reading', () => {
    const base = { id: 'r-1', ts: 1_760_000_000_000, values: [0.5, -1, 3] };
    const cases = [
      ...variants(base, 4, 400),
      ...variants({ values: [1, 2] }, 5, 100),
      { values: [1, NaN] },
      { values: [1, Infinity] },
      { values: new Array(4096).fill(0) },
      { values: new Array(4097).fill(0) },
      { values: [1, , 2] }, // eslint-disable-line no-sparse-arrays
      { values: [1], id: 'x'.repeat(128) },
      { values: [1], id: 'x'.repeat(129) },
      { values: [1], ts: 1.5 },
      { values: [1], ts: -1 },
      { values: [1], features: { a: 1 } },
      { features: { a: 1 } },
      { values: [1], extra: true },
      Object.create({ values: [1] }) as unknown,
      Object.assign(Object.create(null) as object, { values: [2] }),
    ];
    let fastHits = 0;
    for (const c of cases) {
      const zod = ReadingSchema.safeParse(c);
      const fast = fastReading(c);
      if (!fast) continue;
      fastHits++;
      assert.ok(zod.success, `fastReading accepted what zod refuses: ${describeCase(c)}`);
      assert.deepEqual(defined(fast), defined(zod.data), `same reading for ${describeCase(c)}`);
    }
    assert.ok(fastHits > 50, `the fast path takes the common shape (${fastHits} hits)`);
    assert.ok(fastReading(base), 'the usual reading takes the fast path');
  });
});

/** The reading without keys whose value is undefined (zod keeps an explicit `ts: undefined`). */
function defined(r: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined));
}

function describeCase(c: unknown): string {
  try {
    return JSON.stringify(c, (_k, v: unknown) => (v instanceof ArrayBuffer ? `ArrayBuffer(${v.byteLength})` : typeof v === 'number' && !Number.isFinite(v) ? String(v) : v))?.slice(0, 160) ?? String(c);
  } catch {
    return String(c);
  }
}
