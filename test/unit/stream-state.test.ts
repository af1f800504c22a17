import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { WindowSet } from '../../agent/preprocess/window.ts';
import { StreamStateStore, type StateResetReason, type StreamStateOptions } from '../../agent/runtime/stream-state.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import type { InputSpecV2 } from '../../shared/manifest.ts';
import { WindowSourceSchema } from '../../shared/tasks/specs.ts';

/** An RNN-like model: h [1, N, 4] float32 (N symbolic) and a step counter [1] int64. */
const inputs: InputSpecV2[] = [
  { name: 'h_in', dtype: 'float32', shape: [1, 'N', 4], source: { kind: 'state', output: 'h_out', init: 0.5 } },
  { name: 'step_in', dtype: 'int64', shape: [1], source: { kind: 'state', output: 'step_out', init: 0, resetAfterMs: 1000 } },
];

function store(opts: Partial<StreamStateOptions> = {}): { s: StreamStateStore; resets: string[]; evicted: string[]; clock: { t: number } } {
  const resets: string[] = [];
  const evicted: string[] = [];
  const clock = { t: 0 };
  const s = new StreamStateStore(inputs, {
    maxStreams: 16,
    now: () => clock.t,
    onReset: (k, r: StateResetReason) => resets.push(`${k ?? '*'}:${r}`),
    onEvict: (k) => evicted.push(k),
    ...opts,
  });
  return { s, resets, evicted, clock };
}

const outputs = (h: number, step: number, dims = [1, 1, 4]) => ({
  h_out: { data: new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(h), dims },
  step_out: { data: BigInt64Array.of(BigInt(step)), dims: [1] },
  logits: { data: new Float32Array(2), dims: [1, 2] },
});

const hOf = (st: ReturnType<StreamStateStore['take']>): number[] => Array.from(st.h_in!.data as Float32Array);
const stepOf = (st: ReturnType<StreamStateStore['take']>): bigint => (st.step_in!.data as BigInt64Array)[0]!;

describe('stream state: init and feed-back', () => {
  it('feeds the init tensor first, symbolic dims as 1, in the input dtype', () => {
    const { s } = store();
    const st = s.take('a');
    assert.deepEqual(st.h_in!.dims, [1, 1, 4]);
    assert.ok(st.h_in!.data instanceof Float32Array);
    assert.deepEqual(hOf(st), [0.5, 0.5, 0.5, 0.5]);
    assert.ok(st.step_in!.data instanceof BigInt64Array);
    assert.equal(stepOf(st), 0n);
  });

  it('feeds the outputs of the previous call back, copied both ways, per stream', () => {
    const { s } = store();
    s.take('a');
    const out = outputs(2, 1);
    assert.deepEqual(s.put('a', out), { ok: true });
    out.h_out.data.fill(99); // the caller's buffer is not the store's
    const st = s.take('a');
    assert.deepEqual(hOf(st), [2, 2, 2, 2]);
    assert.equal(stepOf(st), 1n);
    (st.h_in!.data as Float32Array).fill(-1); // nor is what it fed
    assert.deepEqual(hOf(s.take('a')), [2, 2, 2, 2]);
    assert.deepEqual(hOf(s.take('b')), [0.5, 0.5, 0.5, 0.5], 'another stream has its own state');
  });

  it('a symbolic dim may change size; fixed dims, rank, dtype, count and NaN are refused with a reset', () => {
    const { s, resets } = store();
    assert.deepEqual(s.put('a', outputs(1, 1, [1, 3, 4])), { ok: true });
    assert.deepEqual(s.take('a').h_in!.dims, [1, 3, 4]);
    const bad: [string, Record<string, unknown>][] = [
      ['fixed dim', { ...outputs(1, 1), h_out: { data: new Float32Array(5), dims: [1, 1, 5] } }],
      ['rank', { ...outputs(1, 1), h_out: { data: new Float32Array(4), dims: [1, 4] } }],
      ['dtype', { ...outputs(1, 1), h_out: { data: new Float64Array(4), dims: [1, 1, 4] } }],
      ['count', { ...outputs(1, 1), h_out: { data: new Float32Array(3), dims: [1, 1, 4] } }],
      ['NaN', { ...outputs(1, 1), h_out: { data: Float32Array.of(0, NaN, 0, 0), dims: [1, 1, 4] } }],
      ['missing', { step_out: outputs(1, 1).step_out }],
    ];
    for (const [what, o] of bad) {
      s.put('a', outputs(3, 3));
      const r = s.put('a', o as never);
      assert.equal(r.ok, false, what);
      assert.equal(!r.ok && r.reason, 'invalid_output', what);
      assert.deepEqual(hOf(s.take('a')), [0.5, 0.5, 0.5, 0.5], `${what}: back to init`);
      assert.equal(stepOf(s.take('a')), 0n, `${what}: every state input reset, not only the bad one`);
    }
    assert.deepEqual(resets, bad.map(() => 'a:invalid_output'));
  });

  it('refuses manifests it cannot honour', () => {
    const bad = (inp: InputSpecV2): void => assert.throws(() => new StreamStateStore([inp], { maxStreams: 1 }), (e: unknown) => e instanceof EdgefleetError && e.code === 'BAD_MANIFEST');
    bad({ name: 'x', dtype: 'int8', shape: [1], source: { kind: 'state', output: 'y', init: 0.5 } });
    bad({ name: 'x', dtype: 'uint8', shape: [1], source: { kind: 'state', output: 'y', init: -1 } });
    bad({ name: 'x', dtype: 'float32', shape: [1], source: { kind: 'constant', values: [1] } });
    bad({ name: 'x', dtype: 'float32', shape: [2048, 1024], source: { kind: 'state', output: 'y', init: 0 } });
  });

  it('float16 state is initialised as half bits and non-finite halves are refused', () => {
    const s = new StreamStateStore([{ name: 'h', dtype: 'float16', shape: [2], source: { kind: 'state', output: 'o', init: 1 } }], { maxStreams: 1 });
    assert.deepEqual(Array.from(s.take('a').h!.data as Uint16Array), [0x3c00, 0x3c00]);
    assert.equal(s.put('a', { o: { data: Uint16Array.of(0x4000, 0x7c00), dims: [2] } }).ok, false);
    assert.equal(s.put('a', { o: { data: Uint16Array.of(0x4000, 0xc000), dims: [2] } }).ok, true);
    assert.deepEqual(Array.from(s.take('a').h!.data as Uint16Array), [0x4000, 0xc000]);
  });
});

describe('stream state: resets', () => {
  it('a window gap resets the stream (wired from the real WindowSet)', () => {
    const { s, resets } = store();
    const windows = new WindowSet(WindowSourceSchema.parse({ kind: 'window', features: [{ name: 'x' }], size: 1, hop: 1, maxGapMs: 100 }), {
      maxStreams: 4,
      onReset: (k, r) => s.reset(k, r === 'gap' ? 'window_gap' : 'window_out_of_order'),
    });
    windows.push('a', { ts: 0, values: [1] });
    s.put('a', outputs(2, 1));
    s.put('b', outputs(2, 1));
    windows.push('a', { ts: 50, values: [1] });
    assert.deepEqual(hOf(s.take('a')), [2, 2, 2, 2], 'no gap, state kept');
    windows.push('a', { ts: 500, values: [1] });
    assert.deepEqual(hOf(s.take('a')), [0.5, 0.5, 0.5, 0.5]);
    assert.deepEqual(hOf(s.take('b')), [2, 2, 2, 2], 'only the stream with the gap');
    assert.deepEqual(resets, ['a:window_gap']);
  });

  it('a model swap resets every stream, reported once', () => {
    const { s, resets } = store();
    for (const k of ['a', 'b', 'c']) s.put(k, outputs(2, 1));
    s.reset(undefined, 'model_swap');
    for (const k of ['a', 'b', 'c']) assert.deepEqual(hOf(s.take(k)), [0.5, 0.5, 0.5, 0.5], k);
    assert.deepEqual(resets, ['*:model_swap']);
  });

  it('resetAfterMs: an input older than that is fed init again (fake clock), per input', () => {
    const { s, resets, clock } = store();
    clock.t = 10_000;
    s.put('a', outputs(2, 7));
    clock.t = 11_000; // exactly resetAfterMs: kept
    assert.equal(stepOf(s.take('a')), 7n);
    assert.deepEqual(resets, []);
    clock.t = 11_001;
    const st = s.take('a');
    assert.equal(stepOf(st), 0n, 'step_in has resetAfterMs 1000');
    assert.deepEqual(hOf(st), [2, 2, 2, 2], 'h_in has none');
    assert.deepEqual(resets, ['a:idle']);
    s.put('a', outputs(3, 8));
    clock.t = 11_900;
    assert.equal(stepOf(s.take('a')), 8n, 'the age restarts at every put');
  });

  it('a reset during a call makes its put stale: pre-gap state never reaches the next call', async () => {
    const { s } = store();
    s.put('a', outputs(2, 1));
    const first = await s.acquire('a');
    assert.deepEqual(hOf(first.take()), [2, 2, 2, 2]);
    const second = s.acquire('a');
    s.reset('a', 'window_gap');
    const r = first.put(outputs(3, 2));
    assert.equal(!r.ok && r.reason, 'stale');
    first.release();
    const lease = await second;
    assert.deepEqual(hOf(lease.take()), [0.5, 0.5, 0.5, 0.5]);
    assert.deepEqual(lease.put(outputs(4, 1)), { ok: true }, 'a lease that took after the reset is not stale');
    lease.release();
    assert.deepEqual(hOf(s.take('a')), [4, 4, 4, 4]);
  });

  it('a model swap during a call drops that call’s state', async () => {
    const { s } = store();
    const lease = await s.acquire('a');
    lease.take();
    s.reset(undefined, 'model_swap');
    assert.equal(lease.put(outputs(3, 2)).ok, false);
    lease.release();
    assert.deepEqual(hOf(s.take('a')), [0.5, 0.5, 0.5, 0.5]);
  });
});

describe('stream state: bounds and ordering', () => {
  it('is bounded by LRU; a busy stream is never evicted', async () => {
    const { s, evicted } = store({ maxStreams: 2 });
    s.put('a', outputs(1, 1));
    s.put('b', outputs(2, 2));
    s.take('a'); // a is now the most recent
    s.put('c', outputs(3, 3));
    assert.deepEqual(evicted, ['b']);
    assert.equal(s.size, 2);
    const lease = await s.acquire('a');
    s.take('c');
    s.take('d'); // a is the oldest but leased: c goes instead
    assert.deepEqual(evicted, ['b', 'c']);
    assert.deepEqual(hOf(lease.take()), [1, 1, 1, 1]);
    lease.release();
    for (let i = 0; i < 100; i++) s.take(`hostile-${i}`);
    assert.equal(s.size, 2);
    assert.equal(s.evictions, 102);
  });

  it('serialises the calls of one stream in acquire order; streams run concurrently', async () => {
    const { s } = store();
    const seen: Record<string, number[]> = { a: [], b: [] };
    let inFlight = 0;
    let maxInFlight = 0;
    // A model that adds 1 to its state; random delays would interleave unserialised calls.
    const call = async (stream: 'a' | 'b', i: number): Promise<void> => {
      const lease = await s.acquire(stream);
      try {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        const h = hOf(lease.take())[0]!;
        seen[stream]!.push(i);
        await sleep(Math.floor(Math.random() * 4));
        lease.put(outputs(h + 1, i));
      } finally {
        inFlight--;
        lease.release();
      }
    };
    const calls: Promise<void>[] = [];
    for (let i = 0; i < 20; i++) calls.push(call('a', i), call('b', i));
    await Promise.all(calls);
    assert.deepEqual(hOf(s.take('a')), [20.5, 20.5, 20.5, 20.5], 'no call read a state another call of its stream also read');
    assert.deepEqual(hOf(s.take('b')), [20.5, 20.5, 20.5, 20.5]);
    assert.deepEqual(seen.a, [...Array(20).keys()]);
    assert.deepEqual(seen.b, [...Array(20).keys()]);
    assert.equal(maxInFlight, 2, 'one call per stream at a time, both streams at once');
  });

  it('take/put without a lease are refused while one is held; a released lease is dead', async () => {
    const { s } = store();
    const lease = await s.acquire('a');
    assert.throws(() => s.take('a'), /leased/);
    assert.throws(() => s.put('a', outputs(1, 1)), /leased/);
    lease.release();
    lease.release(); // idempotent
    assert.throws(() => lease.take(), /released/);
    s.take('a');
  });

  it('an aborted wait leaves the queue; the next waiter still gets the stream', async () => {
    const { s } = store();
    const first = await s.acquire('a');
    const ac = new AbortController();
    const aborted = s.acquire('a', ac.signal);
    const third = s.acquire('a');
    ac.abort();
    await assert.rejects(aborted, (e: unknown) => e instanceof EdgefleetError && e.code === 'ABORTED');
    first.release();
    const lease = await third;
    assert.equal(lease.stream, 'a');
    lease.release();
    await assert.rejects(s.acquire('a', AbortSignal.abort()), /aborted/);
  });
});
