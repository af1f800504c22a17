/**
 * Window preprocessing (issue #13): readings of one stream accumulated into a sliding window of
 * the manifest's `window` source, emitted as the model tensor every `hop` readings — laid out
 * TF / FT / T and scaled per feature, or reduced to derived features (statistics and FFT band
 * energies, see WindowSourceSchema for the exact definition a training script must match).
 *
 * Owns: the per-stream ring (WindowAccumulator), the bounded set of streams (WindowSet) and the
 * real FFT. A window is only meaningful over contiguous readings, so a gap longer than
 * `maxGapMs` or a timestamp that goes backwards empties the ring (a *reset*, reported with its
 * reason) and the reading starts a new window. A reading with the wrong number of values or a
 * non-finite value/ts is refused before anything is written, so it cannot corrupt the window.
 *
 * Hot path: a push writes into one preallocated Float64Array ring (no per-push allocation); an
 * emission allocates only its output (a fresh Float32Array, which the pipeline transfers to a
 * worker) and the four small raw-stat arrays. FFT scratch is shared by all streams of a set.
 *
 * Spectral decisions (documented in the schema too): the window is mean-removed and Hann-tapered
 * (periodic Hann over the N real samples, `window: 'none'` to skip it) before zero-padding to the
 * next power of two; band energies sum |X_k|² over bins 1..M/2 — DC excluded (the `mean` stat
 * carries it; a sensor offset such as gravity would otherwise swamp the lowest band), Nyquist
 * included.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { WindowSource } from '../../shared/tasks/specs.ts';

export type WindowResetReason = 'gap' | 'out_of_order';
/** Why a reading was refused (in the thrown BAD_INPUT's `details.reason`). */
export type WindowRefusal = 'wrong_length' | 'non_finite' | 'bad_ts';

export interface WindowReading {
  /** Epoch ms (any finite number; only differences matter). */
  ts: number;
  /** Raw channel values in the spec's feature order. */
  values: ArrayLike<number>;
  /** Correlation id of the reading, echoed as the window's first/last id. */
  id?: string | undefined;
}

/** Per-channel statistics of the raw (unscaled) window, for the drift monitor. */
export interface WindowRawStats {
  mean: Float64Array;
  /** Population std (ddof 0). */
  std: Float64Array;
  rms: Float64Array;
  /** max |x|. */
  peak: Float64Array;
}

export interface WindowEmit {
  /** The model input, freshly allocated (safe to transfer). */
  data: Float32Array;
  dims: number[];
  raw: WindowRawStats;
  firstTs: number;
  lastTs: number;
  firstId: string | undefined;
  lastId: string | undefined;
}

// --------------------------------------------------------------------------------------- FFT

/**
 * Radix-2 FFT of a real sequence of length n (a power of two): one complex FFT of n/2 points
 * over the even/odd samples packed as re/im, then the split step. Tables and scratch are
 * allocated once per size.
 */
export class RealFft {
  readonly n: number;
  readonly #h: number;
  readonly #zr: Float64Array;
  readonly #zi: Float64Array;
  /** cos/sin(2πj/h), j < h/2: the complex FFT's twiddles. */
  readonly #cos: Float64Array;
  readonly #sin: Float64Array;
  /** cos/sin(2πk/n), k ≤ h: the split step's twiddles. */
  readonly #cosN: Float64Array;
  readonly #sinN: Float64Array;
  readonly #rev: Uint32Array;

  constructor(n: number) {
    if (!Number.isInteger(n) || n < 1 || (n & (n - 1)) !== 0) throw new RangeError(`FFT size must be a power of two, got ${n}`);
    this.n = n;
    const h = n >> 1;
    this.#h = h;
    this.#zr = new Float64Array(h);
    this.#zi = new Float64Array(h);
    this.#cos = new Float64Array(h >> 1);
    this.#sin = new Float64Array(h >> 1);
    for (let j = 0; j < h >> 1; j++) {
      this.#cos[j] = Math.cos((2 * Math.PI * j) / h);
      this.#sin[j] = Math.sin((2 * Math.PI * j) / h);
    }
    this.#cosN = new Float64Array(h + 1);
    this.#sinN = new Float64Array(h + 1);
    for (let k = 0; k <= h; k++) {
      this.#cosN[k] = Math.cos((2 * Math.PI * k) / n);
      this.#sinN[k] = Math.sin((2 * Math.PI * k) / n);
    }
    this.#rev = new Uint32Array(h);
    let bits = 0;
    while (1 << bits < h) bits++;
    for (let i = 0; i < h; i++) {
      let r = 0;
      for (let b = 0; b < bits; b++) r |= ((i >> b) & 1) << (bits - 1 - b);
      this.#rev[i] = r;
    }
  }

  /** X_k = Σ x_t e^{-2πikt/n} for k = 0..n/2 into re/im (length ≥ n/2 + 1); x has length n. */
  transform(x: ArrayLike<number>, re: Float64Array, im: Float64Array): void {
    const n = this.n;
    if (x.length !== n || re.length < (n >> 1) + 1 || im.length < (n >> 1) + 1) throw new RangeError('FFT buffer sizes do not match');
    if (n === 1) {
      re[0] = x[0] as number;
      im[0] = 0;
      return;
    }
    const h = this.#h;
    const zr = this.#zr;
    const zi = this.#zi;
    const rev = this.#rev;
    for (let i = 0; i < h; i++) {
      const r = rev[i] as number;
      zr[r] = x[2 * i] as number;
      zi[r] = x[2 * i + 1] as number;
    }
    const cos = this.#cos;
    const sin = this.#sin;
    for (let len = 2; len <= h; len <<= 1) {
      const half = len >> 1;
      const step = h / len;
      for (let i = 0; i < h; i += len) {
        for (let j = 0; j < half; j++) {
          const wr = cos[j * step] as number;
          const wi = -(sin[j * step] as number);
          const a = i + j;
          const b = a + half;
          const br = zr[b] as number;
          const bi = zi[b] as number;
          const tr = wr * br - wi * bi;
          const ti = wr * bi + wi * br;
          const ar = zr[a] as number;
          const ai = zi[a] as number;
          zr[b] = ar - tr;
          zi[b] = ai - ti;
          zr[a] = ar + tr;
          zi[a] = ai + ti;
        }
      }
    }
    // Split: E_k = (Z_k + conj Z_{h-k}) / 2 (even samples), O_k = (Z_k - conj Z_{h-k}) / 2i (odd),
    // X_k = E_k + e^{-2πik/n} O_k; Z is periodic in h, so Z_h = Z_0.
    const cosN = this.#cosN;
    const sinN = this.#sinN;
    for (let k = 0; k <= h; k++) {
      const k1 = k === h ? 0 : k;
      const k2 = k === 0 || k === h ? 0 : h - k;
      const ar = zr[k1] as number;
      const ai = zi[k1] as number;
      const cr = zr[k2] as number;
      const ci = -(zi[k2] as number);
      const er = (ar + cr) / 2;
      const ei = (ai + ci) / 2;
      const or = (ai - ci) / 2;
      const oi = -(ar - cr) / 2;
      const wr = cosN[k] as number;
      const wi = -(sinN[k] as number);
      re[k] = er + wr * or - wi * oi;
      im[k] = ei + wr * oi + wi * or;
    }
  }
}

/** Smallest power of two ≥ n (n ≥ 1). */
export function nextPow2(n: number): number {
  let m = 1;
  while (m < n) m *= 2;
  return m;
}

// ------------------------------------------------------------------------------ the kernel

/**
 * What a window spec compiles to, shared by every stream of one pipeline: scaling constants,
 * the FFT and its scratch. JS runs one emission at a time, so sharing the scratch is safe.
 */
export class WindowKernel {
  readonly spec: WindowSource;
  readonly channels: number;
  /** Length of the emitted tensor. */
  readonly outLength: number;
  readonly dims: number[];
  readonly #mean: Float64Array;
  readonly #std: Float64Array;
  readonly #fft: RealFft | undefined;
  readonly #taper: Float64Array | undefined;
  readonly #chan: Float64Array;
  readonly #fftIn: Float64Array;
  readonly #re: Float64Array;
  readonly #im: Float64Array;
  readonly #edges: Int32Array;
  readonly #vec: Float64Array;

  constructor(spec: WindowSource) {
    const f = spec.features.length;
    const bad = (m: string): never => {
      throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `window source: ${m}`);
    };
    if (!Number.isInteger(spec.size) || spec.size < 1 || !Number.isInteger(spec.hop) || spec.hop < 1) bad('size and hop must be positive integers');
    this.spec = spec;
    this.channels = f;
    this.#mean = Float64Array.from(spec.features, (x) => x.mean);
    this.#std = Float64Array.from(spec.features, (x) => x.std);
    const d = spec.derive;
    const m = nextPow2(spec.size);
    if (d) {
      const n = f * (d.stats.length + d.fftBands);
      if (n === 0) bad('derive needs stats or fftBands');
      if (d.fftBands > m / 2) bad(`${d.fftBands} bands, a window of ${spec.size} has ${m / 2} spectral bins`);
      if (d.scale && d.scale.length !== n) bad(`derive.scale has ${d.scale.length} entries for ${n} derived features`);
      this.outLength = n;
      this.dims = [1, n];
    } else {
      if (spec.layout === 'T' && f !== 1) bad(`layout T takes one feature, there are ${f}`);
      this.outLength = spec.size * f;
      this.dims = spec.layout === 'TF' ? [1, spec.size, f] : spec.layout === 'FT' ? [1, f, spec.size] : [1, spec.size];
    }
    const bands = d?.fftBands ?? 0;
    this.#vec = new Float64Array(d ? this.outLength : 0);
    this.#chan = new Float64Array(d ? spec.size : 0);
    this.#fft = bands > 0 ? new RealFft(m) : undefined;
    this.#fftIn = new Float64Array(bands > 0 ? m : 0);
    this.#re = new Float64Array(bands > 0 ? m / 2 + 1 : 0);
    this.#im = new Float64Array(bands > 0 ? m / 2 + 1 : 0);
    this.#edges = new Int32Array(bands + 1);
    for (let b = 0; b <= bands; b++) this.#edges[b] = 1 + Math.floor((b * (m / 2)) / bands);
    if (bands > 0 && d?.window === 'hann') {
      const n = spec.size;
      this.#taper = Float64Array.from({ length: n }, (_, t) => 0.5 - 0.5 * Math.cos((2 * Math.PI * t) / n));
    }
  }

  /**
   * The emission of a full ring: `ring` holds `size` readings × F channels, the oldest at slot
   * `head`. Allocates only the returned arrays.
   */
  emit(ring: Float64Array, head: number, firstTs: number, lastTs: number, firstId: string | undefined, lastId: string | undefined): WindowEmit {
    const { size } = this.spec;
    const f = this.channels;
    const raw = rawStats(ring, size, f);
    const data = new Float32Array(this.outLength);
    if (this.spec.derive) this.#derive(ring, head, data);
    else this.#layout(ring, head, data);
    return { data, dims: this.dims.slice(), raw, firstTs, lastTs, firstId, lastId };
  }

  #layout(ring: Float64Array, head: number, out: Float32Array): void {
    const { size, layout } = this.spec;
    const f = this.channels;
    const mean = this.#mean;
    const std = this.#std;
    let slot = head;
    for (let t = 0; t < size; t++) {
      const base = slot * f;
      for (let c = 0; c < f; c++) {
        const v = ((ring[base + c] as number) - (mean[c] as number)) / (std[c] as number);
        out[layout === 'FT' ? c * size + t : t * f + c] = v;
      }
      if (++slot === size) slot = 0;
    }
  }

  #derive(ring: Float64Array, head: number, out: Float32Array): void {
    const d = this.spec.derive!;
    const { size } = this.spec;
    const f = this.channels;
    const nStats = d.stats.length;
    const bands = d.fftBands;
    const chan = this.#chan;
    const vec = this.#vec;
    for (let c = 0; c < f; c++) {
      const mu = this.#mean[c] as number;
      const sd = this.#std[c] as number;
      let slot = head;
      let sum = 0;
      for (let t = 0; t < size; t++) {
        const v = ((ring[slot * f + c] as number) - mu) / sd;
        chan[t] = v;
        sum += v;
        if (++slot === size) slot = 0;
      }
      const mean = sum / size;
      if (nStats > 0) {
        let dev = 0;
        let sq = 0;
        let min = Infinity;
        let max = -Infinity;
        let peak = 0;
        for (let t = 0; t < size; t++) {
          const v = chan[t] as number;
          dev += (v - mean) * (v - mean);
          sq += v * v;
          if (v < min) min = v;
          if (v > max) max = v;
          const a = Math.abs(v);
          if (a > peak) peak = a;
        }
        const rms = Math.sqrt(sq / size);
        for (let s = 0; s < nStats; s++) {
          const stat = d.stats[s];
          const value =
            stat === 'mean' ? mean : stat === 'std' ? Math.sqrt(dev / size) : stat === 'rms' ? rms : stat === 'peak' ? peak : stat === 'min' ? min : stat === 'max' ? max : rms > 0 ? peak / rms : 0;
          vec[c * nStats + s] = value;
        }
      }
      if (bands > 0) {
        const fftIn = this.#fftIn;
        const taper = this.#taper;
        for (let t = 0; t < size; t++) fftIn[t] = ((chan[t] as number) - mean) * (taper ? (taper[t] as number) : 1);
        fftIn.fill(0, size);
        this.#fft!.transform(fftIn, this.#re, this.#im);
        const re = this.#re;
        const im = this.#im;
        const edges = this.#edges;
        const base = f * nStats + c * bands;
        for (let b = 0; b < bands; b++) {
          let e = 0;
          for (let k = edges[b] as number; k < (edges[b + 1] as number); k++) e += (re[k] as number) * (re[k] as number) + (im[k] as number) * (im[k] as number);
          vec[base + b] = e;
        }
      }
    }
    const scale = d.scale;
    for (let i = 0; i < vec.length; i++) {
      const sc = scale?.[i];
      out[i] = sc ? ((vec[i] as number) - sc.mean) / sc.std : (vec[i] as number);
    }
  }
}

/** Per-channel mean/std/rms/peak of the raw ring (order of slots does not matter). */
function rawStats(ring: Float64Array, size: number, f: number): WindowRawStats {
  const mean = new Float64Array(f);
  const std = new Float64Array(f);
  const rms = new Float64Array(f);
  const peak = new Float64Array(f);
  for (let i = 0; i < size * f; i++) {
    const c = i % f;
    const v = ring[i] as number;
    mean[c] = (mean[c] as number) + v;
    rms[c] = (rms[c] as number) + v * v;
    const a = Math.abs(v);
    if (a > (peak[c] as number)) peak[c] = a;
  }
  for (let c = 0; c < f; c++) mean[c] = (mean[c] as number) / size;
  for (let i = 0; i < size * f; i++) {
    const c = i % f;
    const dv = (ring[i] as number) - (mean[c] as number);
    std[c] = (std[c] as number) + dv * dv;
  }
  for (let c = 0; c < f; c++) {
    std[c] = Math.sqrt((std[c] as number) / size);
    rms[c] = Math.sqrt((rms[c] as number) / size);
  }
  return { mean, std, rms, peak };
}

// ------------------------------------------------------------------------ one stream's ring

export interface WindowAccumulatorOptions {
  /** Called synchronously inside push when the reading reset the window. */
  onReset?: (reason: WindowResetReason) => void;
}

/** The sliding window of one stream. */
export class WindowAccumulator {
  readonly kernel: WindowKernel;
  /** The reset the last push caused (undefined when it caused none or was refused). */
  lastReset: WindowResetReason | undefined;
  readonly #size: number;
  readonly #f: number;
  readonly #hop: number;
  readonly #maxGap: number;
  readonly #ring: Float64Array;
  readonly #ts: Float64Array;
  readonly #ids: (string | undefined)[];
  readonly #onReset: ((reason: WindowResetReason) => void) | undefined;
  /** Slot the next reading goes to; when full, also the oldest reading's slot. */
  #head = 0;
  #count = 0;
  #untilEmit: number;
  #lastTs = NaN;

  /** Pass a WindowKernel to share its FFT scratch with other streams of the same spec. */
  constructor(spec: WindowSource | WindowKernel, opts: WindowAccumulatorOptions = {}) {
    this.kernel = spec instanceof WindowKernel ? spec : new WindowKernel(spec);
    const s = this.kernel.spec;
    this.#size = s.size;
    this.#f = this.kernel.channels;
    this.#hop = s.hop;
    this.#maxGap = s.maxGapMs;
    this.#ring = new Float64Array(s.size * this.#f);
    this.#ts = new Float64Array(s.size);
    this.#ids = new Array<string | undefined>(s.size).fill(undefined);
    this.#untilEmit = s.size;
    this.#onReset = opts.onReset;
  }

  /** Readings in the window now (0..size). */
  get length(): number {
    return this.#count;
  }

  /** Approximate bytes this stream holds (ring, timestamps, id slots). */
  static bytesFor(spec: WindowSource): number {
    return spec.size * (spec.features.length + 2) * 8;
  }

  /**
   * Adds a reading; returns the window when this reading completes one (every `hop` readings
   * once `size` have arrived since the last reset). Throws BAD_INPUT (details.reason a
   * WindowRefusal) for a reading it refuses, leaving the window as it was.
   */
  push(reading: WindowReading): WindowEmit | undefined {
    this.lastReset = undefined;
    const { ts, values } = reading;
    const f = this.#f;
    if (typeof ts !== 'number' || !Number.isFinite(ts)) throw refuse('bad_ts', 'reading ts is not a finite number');
    if (values.length !== f) throw refuse('wrong_length', `expected ${f} values, got ${values.length}`);
    for (let c = 0; c < f; c++) {
      const v = values[c];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw refuse('non_finite', `value ${c} (${this.kernel.spec.features[c]?.name}) is not a finite number`);
    }
    if (this.#count > 0) {
      const reason = ts < this.#lastTs ? 'out_of_order' : ts - this.#lastTs > this.#maxGap ? 'gap' : undefined;
      if (reason) {
        this.clear();
        this.lastReset = reason;
        this.#onReset?.(reason);
      }
    }
    const slot = this.#head;
    const base = slot * f;
    for (let c = 0; c < f; c++) this.#ring[base + c] = values[c] as number;
    this.#ts[slot] = ts;
    this.#ids[slot] = reading.id;
    this.#head = slot + 1 === this.#size ? 0 : slot + 1;
    if (this.#count < this.#size) this.#count++;
    this.#lastTs = ts;
    if (--this.#untilEmit > 0) return undefined;
    this.#untilEmit = this.#hop;
    const first = this.#head;
    return this.kernel.emit(this.#ring, first, this.#ts[first] as number, ts, this.#ids[first], reading.id);
  }

  /** Empties the window (not reported as a reset: the caller knows why). */
  clear(): void {
    this.#head = 0;
    this.#count = 0;
    this.#untilEmit = this.#size;
    this.#lastTs = NaN;
    this.#ids.fill(undefined);
  }
}

function refuse(reason: WindowRefusal, message: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_INPUT, message, { details: { reason } });
}

// -------------------------------------------------------------------------- many streams

export interface WindowSetOptions {
  /** Streams kept at once; past it the least recently pushed one is evicted (its window lost). */
  maxStreams: number;
  /** Bytes all rings may take together (default 64 MiB); lowers maxStreams for large windows. */
  maxBytes?: number;
  onReset?: (stream: string, reason: WindowResetReason) => void;
  onEvict?: (stream: string) => void;
}

/**
 * The windows of every stream of one pipeline, keyed by the pipeline's stream key, bounded so a
 * publisher inventing stream ids cannot grow memory: least-recently-pushed streams are evicted
 * (counted) and their ring is reused for the newcomer.
 */
export class WindowSet {
  readonly kernel: WindowKernel;
  /** Effective bound on streams: maxStreams, lowered to fit maxBytes (at least 1). */
  readonly capacity: number;
  readonly #streams = new Map<string, WindowAccumulator>();
  readonly #opts: WindowSetOptions;
  #last: string | undefined;
  #evictions = 0;

  constructor(spec: WindowSource, opts: WindowSetOptions) {
    if (!Number.isInteger(opts.maxStreams) || opts.maxStreams < 1) throw new RangeError('maxStreams must be a positive integer');
    this.kernel = new WindowKernel(spec);
    this.#opts = opts;
    const byBytes = Math.floor((opts.maxBytes ?? 64 * 1024 * 1024) / WindowAccumulator.bytesFor(spec));
    this.capacity = Math.max(1, Math.min(opts.maxStreams, byBytes));
  }

  get size(): number {
    return this.#streams.size;
  }

  get evictions(): number {
    return this.#evictions;
  }

  /** WindowAccumulator.push for `stream` (same return and refusals); resets reach onReset. */
  push(stream: string, reading: WindowReading): WindowEmit | undefined {
    let acc = this.#streams.get(stream);
    if (!acc) acc = this.#add(stream);
    else if (this.#last !== stream) {
      // Map order is the LRU order: move to the back (skipped for the common repeat stream).
      this.#streams.delete(stream);
      this.#streams.set(stream, acc);
    }
    this.#last = stream;
    const out = acc.push(reading);
    if (acc.lastReset) this.#opts.onReset?.(stream, acc.lastReset);
    return out;
  }

  /** Forgets one stream's window, or every window (model swap). Not reported as a reset. */
  reset(stream?: string): void {
    if (stream === undefined) {
      this.#streams.clear();
      this.#last = undefined;
    } else {
      this.#streams.get(stream)?.clear();
    }
  }

  #add(stream: string): WindowAccumulator {
    let acc: WindowAccumulator | undefined;
    if (this.#streams.size >= this.capacity) {
      const oldest = this.#streams.keys().next().value as string;
      acc = this.#streams.get(oldest)!;
      this.#streams.delete(oldest);
      acc.clear();
      this.#evictions++;
      this.#opts.onEvict?.(oldest);
    }
    acc ??= new WindowAccumulator(this.kernel);
    this.#streams.set(stream, acc);
    return acc;
  }
}
