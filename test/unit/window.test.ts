import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RealFft, WindowAccumulator, WindowSet, type WindowEmit } from '../../agent/preprocess/window.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import { WindowSourceSchema, type WindowSource } from '../../shared/tasks/specs.ts';

const spec = (w: Record<string, unknown>): WindowSource => WindowSourceSchema.parse({ kind: 'window', ...w });

/** Seeded PRNG (mulberry32), so a failure reproduces. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Naive O(n²) DFT, bins 0..n/2, written independently of the FFT under test. */
function naiveDft(x: readonly number[]): { re: number[]; im: number[] } {
  const n = x.length;
  const re: number[] = [];
  const im: number[] = [];
  for (let k = 0; k <= Math.floor(n / 2); k++) {
    let r = 0;
    let i = 0;
    for (let t = 0; t < n; t++) {
      const a = (-2 * Math.PI * ((k * t) % n)) / n;
      r += (x[t] as number) * Math.cos(a);
      i += (x[t] as number) * Math.sin(a);
    }
    re.push(r);
    im.push(i);
  }
  return { re, im };
}

/** Band energies as the schema's numpy recipe says, via the naive DFT. */
function naiveBands(x: readonly number[], bands: number, hann: boolean): number[] {
  const n = x.length;
  let m = 1;
  while (m < n) m *= 2;
  const mean = x.reduce((a, b) => a + b, 0) / n;
  const padded = new Array<number>(m).fill(0);
  x.forEach((v, t) => (padded[t] = (v - mean) * (hann ? 0.5 - 0.5 * Math.cos((2 * Math.PI * t) / n) : 1)));
  const { re, im } = naiveDft(padded);
  const k = m / 2;
  const out: number[] = [];
  for (let b = 0; b < bands; b++) {
    let e = 0;
    for (let j = 1 + Math.floor((b * k) / bands); j < 1 + Math.floor(((b + 1) * k) / bands); j++) e += re[j]! ** 2 + im[j]! ** 2;
    out.push(e);
  }
  return out;
}

function pushAll(acc: WindowAccumulator, rows: number[][], t0 = 0, dt = 10): (WindowEmit | undefined)[] {
  return rows.map((values, i) => acc.push({ ts: t0 + i * dt, values, id: `r${i}` }));
}

function assertClose(actual: ArrayLike<number>, expected: readonly number[], rel: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i] as number;
    const a = actual[i] as number;
    assert.ok(Math.abs(a - e) <= rel * Math.max(1, Math.abs(e)), `${what}[${i}]: ${a} vs ${e}`);
  }
}

const twoFeatures = [
  { name: 'a', mean: 1, std: 2 },
  { name: 'b', mean: -1, std: 0.5 },
];
const rows = [
  [1, 2],
  [3, 4],
  [5, 6],
];
const scaled = rows.map(([a, b]) => [(a! - 1) / 2, (b! + 1) / 0.5]);

describe('window layouts', () => {
  it('TF: [1, T, F], time-major, scaled per feature', () => {
    const out = pushAll(new WindowAccumulator(spec({ features: twoFeatures, size: 3, hop: 1, layout: 'TF' })), rows);
    assert.equal(out[0], undefined);
    assert.equal(out[1], undefined);
    const w = out[2]!;
    assert.deepEqual(w.dims, [1, 3, 2]);
    assert.deepEqual(Array.from(w.data), scaled.flat().map(Math.fround));
    assert.ok(w.data instanceof Float32Array);
  });

  it('FT: [1, F, T], feature-major', () => {
    const w = pushAll(new WindowAccumulator(spec({ features: twoFeatures, size: 3, hop: 1, layout: 'FT' })), rows)[2]!;
    assert.deepEqual(w.dims, [1, 2, 3]);
    assert.deepEqual(Array.from(w.data), [0, 1].flatMap((c) => scaled.map((r) => Math.fround(r[c]!))));
  });

  it('T: [1, T] for one feature; refused for several', () => {
    const w = pushAll(new WindowAccumulator(spec({ features: [{ name: 'x', mean: 2, std: 4 }], size: 3, hop: 1, layout: 'T' })), [[2], [6], [-2]])[2]!;
    assert.deepEqual(w.dims, [1, 3]);
    assert.deepEqual(Array.from(w.data), [0, 1, -1]);
    assert.equal(WindowSourceSchema.safeParse({ kind: 'window', features: twoFeatures, size: 3, hop: 1, layout: 'T' }).success, false);
  });

  it('emits the oldest reading first once the ring wraps, with first/last ts and ids', () => {
    const acc = new WindowAccumulator(spec({ features: [{ name: 'x' }], size: 3, hop: 1, layout: 'T' }));
    const out = pushAll(acc, [[0], [1], [2], [3], [4]], 1000, 10);
    assert.deepEqual(Array.from(out[4]!.data), [2, 3, 4]);
    assert.deepEqual([out[4]!.firstTs, out[4]!.lastTs, out[4]!.firstId, out[4]!.lastId], [1020, 1040, 'r2', 'r4']);
  });

  it('raw stats are per channel over the unscaled window', () => {
    const w = pushAll(new WindowAccumulator(spec({ features: twoFeatures, size: 3, hop: 1 })), [
      [1, -2],
      [3, 4],
      [-5, 6],
    ])[2]!;
    const ch0 = [1, 3, -5];
    const m0 = -1 / 3;
    assertClose(w.raw.mean, [m0, 8 / 3], 1e-12, 'mean');
    assertClose(w.raw.std, [Math.sqrt(ch0.reduce((a, v) => a + (v - m0) ** 2, 0) / 3), Math.sqrt(((-2 - 8 / 3) ** 2 + (4 - 8 / 3) ** 2 + (6 - 8 / 3) ** 2) / 3)], 1e-12, 'std');
    assertClose(w.raw.rms, [Math.sqrt(35 / 3), Math.sqrt(56 / 3)], 1e-12, 'rms');
    assert.deepEqual(Array.from(w.raw.peak), [5, 6]);
  });
});

describe('window hop, resets and refusals', () => {
  const one = (w: Record<string, unknown> = {}): WindowAccumulator => new WindowAccumulator(spec({ features: [{ name: 'x' }], size: 4, hop: 2, layout: 'T', maxGapMs: 100, ...w }));
  const emittedAt = (out: (WindowEmit | undefined)[]): number[] => out.flatMap((w, i) => (w ? [i + 1] : []));

  it('emits every hop readings once full', () => {
    const out = pushAll(one(), Array.from({ length: 10 }, (_, i) => [i]));
    assert.deepEqual(emittedAt(out), [4, 6, 8, 10]);
    assert.deepEqual(Array.from(out[5]!.data), [2, 3, 4, 5]);
  });

  it('hop larger than size skips readings between windows', () => {
    const out = pushAll(one({ size: 2, hop: 3 }), Array.from({ length: 8 }, (_, i) => [i]));
    assert.deepEqual(emittedAt(out), [2, 5, 8]);
    assert.deepEqual(Array.from(out[4]!.data), [3, 4]);
  });

  it('a gap over maxGapMs resets; exactly maxGapMs does not', () => {
    const resets: string[] = [];
    const acc = new WindowAccumulator(spec({ features: [{ name: 'x' }], size: 3, hop: 1, layout: 'T', maxGapMs: 100 }), { onReset: (r) => resets.push(r) });
    assert.equal(acc.push({ ts: 0, values: [1] }), undefined);
    assert.equal(acc.push({ ts: 100, values: [2] }), undefined);
    assert.equal(acc.lastReset, undefined);
    assert.equal(acc.push({ ts: 201, values: [3] }), undefined, 'a 101 ms gap empties the window');
    assert.equal(acc.lastReset, 'gap');
    assert.equal(acc.length, 1);
    assert.equal(acc.push({ ts: 210, values: [4] }), undefined);
    assert.equal(acc.lastReset, undefined);
    const w = acc.push({ ts: 220, values: [5] })!;
    assert.deepEqual(Array.from(w.data), [3, 4, 5]);
    assert.equal(w.firstTs, 201);
    assert.deepEqual(resets, ['gap']);
  });

  it('a ts going backwards resets (equal ts does not) and starts the new window', () => {
    const acc = one({ size: 2, hop: 1 });
    acc.push({ ts: 50, values: [1] });
    assert.ok(acc.push({ ts: 50, values: [2] }));
    assert.equal(acc.lastReset, undefined);
    assert.equal(acc.push({ ts: 49, values: [3] }), undefined);
    assert.equal(acc.lastReset, 'out_of_order');
    assert.deepEqual(Array.from(acc.push({ ts: 60, values: [4] })!.data), [3, 4]);
  });

  it('refuses NaN, Infinity, wrong length and a bad ts without touching the window', () => {
    const clean = one({ size: 3, hop: 1 });
    const dirty = one({ size: 3, hop: 1 });
    const reason = (fn: () => unknown): unknown => {
      try {
        fn();
      } catch (err) {
        assert.ok(err instanceof EdgefleetError);
        assert.equal(err.code, 'BAD_INPUT');
        return err.details?.reason;
      }
      assert.fail('expected a refusal');
    };
    const seq = [1, 2, 3, 4];
    seq.forEach((v, i) => {
      clean.push({ ts: i * 10, values: [v] });
      if (i === 1) {
        assert.equal(reason(() => dirty.push({ ts: 11, values: [NaN] })), 'non_finite');
        assert.equal(reason(() => dirty.push({ ts: 12, values: [Infinity] })), 'non_finite');
        assert.equal(reason(() => dirty.push({ ts: 13, values: [1, 2] })), 'wrong_length');
        assert.equal(reason(() => dirty.push({ ts: NaN, values: [1] })), 'bad_ts');
        // A refused reading with an old ts must not move lastTs either.
        assert.equal(reason(() => dirty.push({ ts: 5000, values: [NaN] })), 'non_finite');
      }
      dirty.push({ ts: i * 10, values: [v] });
      assert.equal(dirty.lastReset, undefined);
    });
    const a = clean.push({ ts: 40, values: [5] })!;
    const b = dirty.push({ ts: 40, values: [5] })!;
    assert.deepEqual(Array.from(b.data), Array.from(a.data));
    assert.deepEqual(Array.from(b.data), [3, 4, 5]);
  });

  it('each emission is a fresh buffer that survives being transferred', () => {
    const acc = one({ size: 2, hop: 1 });
    acc.push({ ts: 0, values: [1] });
    const w1 = acc.push({ ts: 1, values: [2] })!;
    structuredClone(w1.data, { transfer: [w1.data.buffer as ArrayBuffer] });
    assert.equal(w1.data.length, 0, 'detached');
    assert.deepEqual(Array.from(acc.push({ ts: 2, values: [3] })!.data), [2, 3]);
  });
});

describe('FFT', () => {
  it('matches a naive DFT for every power of two up to 2048', () => {
    const r = rng(1);
    for (let n = 1; n <= 2048; n *= 2) {
      const x = Array.from({ length: n }, () => r() * 2 - 1);
      const fft = new RealFft(n);
      const re = new Float64Array(n / 2 + 1);
      const im = new Float64Array(n / 2 + 1);
      fft.transform(x, re, im);
      const ref = naiveDft(x);
      const scale = Math.max(...ref.re.map((v, k) => Math.hypot(v, ref.im[k]!)));
      let diff = 0;
      for (let k = 0; k <= Math.floor(n / 2); k++) diff = Math.max(diff, Math.abs(re[k]! - ref.re[k]!), Math.abs(im[k]! - ref.im[k]!));
      assert.ok(diff / scale < 1e-9, `n=${n}: max diff ${diff} relative ${diff / scale}`);
      // The same instance is reusable (scratch does not leak between calls).
      fft.transform(x, re, im);
      assert.ok(Math.abs(re[0]! - ref.re[0]!) / scale < 1e-9);
    }
  });

  it('refuses sizes that are not powers of two', () => {
    assert.throws(() => new RealFft(12), RangeError);
    assert.throws(() => new RealFft(0), RangeError);
  });
});

describe('derived window features', () => {
  it('stats per channel, then bands per channel, match independent computations, then scale', () => {
    const r = rng(7);
    const size = 37; // not a power of two: zero-padded to 64
    const features = [
      { name: 'ax', mean: 0.5, std: 2 },
      { name: 'ay', mean: 0, std: 1 },
    ];
    const stats = ['mean', 'std', 'rms', 'peak', 'min', 'max', 'crest'] as const;
    const bands = 5;
    const data = Array.from({ length: size }, (_, t) => [Math.sin(t / 3) * 3 + r(), r() * 4 - 3]);
    const unscaled = spec({ features, size, hop: 1, derive: { stats, fftBands: bands } });
    const w = pushAll(new WindowAccumulator(unscaled), data)[size - 1]!;
    const n = 2 * (stats.length + bands);
    assert.deepEqual(w.dims, [1, n]);

    const expected: number[] = [];
    const chans = [0, 1].map((c) => data.map((row) => (row[c]! - features[c]!.mean) / features[c]!.std));
    for (const x of chans) {
      const mean = x.reduce((a, b) => a + b, 0) / size;
      const variance = x.reduce((a, b) => a + b * b, 0) / size - mean * mean;
      const rms = Math.sqrt(x.reduce((a, b) => a + b * b, 0) / size);
      const sorted = [...x].sort((a, b) => a - b);
      const peak = Math.max(Math.abs(sorted[0]!), Math.abs(sorted[size - 1]!));
      expected.push(mean, Math.sqrt(variance), rms, peak, sorted[0]!, sorted[size - 1]!, peak / rms);
    }
    for (const x of chans) expected.push(...naiveBands(x, bands, true));
    assertClose(w.data, expected, 1e-6, 'derived');

    const scale = expected.map((v, i) => ({ mean: i, std: 1 + i / 10 }));
    const withScale = spec({ features, size, hop: 1, derive: { stats, fftBands: bands, scale } });
    const ws = pushAll(new WindowAccumulator(withScale), data)[size - 1]!;
    assertClose(
      ws.data,
      expected.map((v, i) => (v - scale[i]!.mean) / scale[i]!.std),
      1e-6,
      'scaled',
    );
  });

  it("window 'none' gives the rectangular spectrum: a bin-centred tone has (A·N/2)² in its bin", () => {
    const size = 64;
    const w = pushAll(
      new WindowAccumulator(spec({ features: [{ name: 'x' }], size, hop: 1, derive: { fftBands: 32, window: 'none' } })),
      Array.from({ length: size }, (_, t) => [3 * Math.cos((2 * Math.PI * 5 * t) / size)]),
    )[size - 1]!;
    // 32 bands over bins 1..32: band b is bin b + 1, so bin 5 is band 4.
    assert.ok(Math.abs(w.data[4]! - (3 * 32) ** 2) < 1e-2, `${w.data[4]}`);
    const rest = Array.from(w.data).reduce((a, v, i) => (i === 4 ? a : a + v), 0);
    assert.ok(rest < 1e-6, `leak ${rest}`);
  });

  it('a sinusoid lands in its band, DC is excluded, Nyquist is in the last band', () => {
    const size = 256;
    const bands = 8; // 128 bins, 16 per band: band 2 is bins 33..48
    const mk = (fn: (t: number) => number): Float32Array =>
      pushAll(
        new WindowAccumulator(spec({ features: [{ name: 'x' }], size, hop: 1, derive: { fftBands: bands } })),
        Array.from({ length: size }, (_, t) => [fn(t)]),
      )[size - 1]!.data;
    const share = (e: Float32Array, b: number): number => e[b]! / Array.from(e).reduce((a, v) => a + v, 0);
    for (const bin of [40, 40.5, 35.25]) {
      const e = mk((t) => Math.sin((2 * Math.PI * bin * t) / size));
      assert.ok(share(e, 2) > 0.99, `bin ${bin}: band 2 has ${share(e, 2)}`);
    }
    const tone = mk((t) => Math.sin((2 * Math.PI * 40 * t) / size));
    const offset = mk((t) => 9.81 + Math.sin((2 * Math.PI * 40 * t) / size));
    assertClose(offset, Array.from(tone), 1e-5, 'a constant offset changes no band');
    assert.ok(mk(() => 5).every((v) => Math.abs(v) < 1e-9), 'a constant has no band energy');
    const nyquist = mk((t) => (t % 2 ? -1 : 1));
    assert.ok(share(nyquist, bands - 1) > 0.99);
  });

  it('the schema refuses derive specs the kernel could not honour', () => {
    const base = { kind: 'window', features: twoFeatures, size: 16, hop: 1 };
    assert.equal(WindowSourceSchema.safeParse({ ...base, derive: { fftBands: 8 } }).success, true);
    assert.equal(WindowSourceSchema.safeParse({ ...base, derive: { fftBands: 9 } }).success, false, 'more bands than bins');
    assert.equal(WindowSourceSchema.safeParse({ ...base, derive: {} }).success, false, 'nothing derived');
    assert.equal(WindowSourceSchema.safeParse({ ...base, derive: { stats: ['rms', 'rms'] } }).success, false, 'duplicate stat');
    assert.equal(WindowSourceSchema.safeParse({ ...base, derive: { stats: ['rms'], scale: [{ mean: 0, std: 1 }] } }).success, false, 'scale length');
    assert.equal(WindowSourceSchema.safeParse({ ...base, derive: { stats: ['rms'], scale: [{ mean: 0, std: 1 }, { mean: 0, std: 1 }] } }).success, true);
    assert.equal(WindowSourceSchema.safeParse({ ...base, size: 65_536, features: Array.from({ length: 17 }, (_, i) => ({ name: `f${i}` })) }).success, false, 'window too large');
  });
});

describe('window set', () => {
  const s = spec({ features: [{ name: 'x' }], size: 2, hop: 1, layout: 'T', maxGapMs: 100 });

  it('keeps one window per stream', () => {
    const set = new WindowSet(s, { maxStreams: 8 });
    set.push('a', { ts: 0, values: [1] });
    set.push('b', { ts: 0, values: [10] });
    assert.deepEqual(Array.from(set.push('a', { ts: 1, values: [2] })!.data), [1, 2]);
    assert.deepEqual(Array.from(set.push('b', { ts: 1, values: [20] })!.data), [10, 20]);
  });

  it('is bounded: the least recently pushed stream is evicted and counted', () => {
    const evicted: string[] = [];
    const set = new WindowSet(s, { maxStreams: 3, onEvict: (k) => evicted.push(k) });
    for (const k of ['a', 'b', 'c']) set.push(k, { ts: 0, values: [1] });
    set.push('a', { ts: 1, values: [1] }); // a is now the most recent
    for (let i = 0; i < 100; i++) set.push(`hostile-${i}`, { ts: 0, values: [1] });
    assert.equal(set.size, 3);
    assert.equal(set.evictions, 100);
    assert.deepEqual(evicted.slice(0, 3), ['b', 'c', 'a']);
    // An evicted stream starts over.
    assert.equal(set.push('b', { ts: 2, values: [1] }), undefined);
  });

  it('maxBytes lowers the bound for large windows', () => {
    const big = spec({ features: [{ name: 'x' }, { name: 'y' }], size: 1024, hop: 1 });
    const set = new WindowSet(big, { maxStreams: 1000, maxBytes: 1024 * 4 * 8 * 10 });
    assert.equal(set.capacity, 10);
    for (let i = 0; i < 50; i++) set.push(`s${i}`, { ts: 0, values: [1, 2] });
    assert.equal(set.size, 10);
  });

  it('reports resets with the stream key, and reset() forgets windows', () => {
    const resets: string[] = [];
    const set = new WindowSet(s, { maxStreams: 4, onReset: (k, r) => resets.push(`${k}:${r}`) });
    set.push('a', { ts: 0, values: [1] });
    set.push('a', { ts: 500, values: [1] });
    set.push('b', { ts: 10, values: [1] });
    set.push('b', { ts: 5, values: [1] });
    assert.deepEqual(resets, ['a:gap', 'b:out_of_order']);
    set.push('c', { ts: 0, values: [1] });
    set.reset('c');
    assert.equal(set.push('c', { ts: 1, values: [2] }), undefined);
    set.reset();
    assert.equal(set.size, 0);
  });
});
