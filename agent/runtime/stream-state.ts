/**
 * Model state per stream (issue #13): a stateful model (an RNN, a voice-activity detector) has
 * inputs fed from its own outputs of the previous call *of the same stream*. This store owns
 * those tensors for one pipeline: the init tensor on a stream's first call and after every reset
 * (a window gap, a model swap, `resetAfterMs` without a new state, an output that does not fit),
 * copies in and out (the pipeline transfers what it feeds to a worker), validation of what is
 * fed back, a bound on the number of streams, and the order of calls.
 *
 * Ordering: a call reads the state the previous call of its stream wrote, so two calls of one
 * stream must not overlap. `acquire(stream)` hands out a lease per stream in FIFO order (the
 * order of the acquire calls, which the pipeline makes in the order windows are emitted); the
 * next lease is granted only when the holder releases. Streams are independent of each other.
 * A reset while a call is in flight makes that call's `put` stale: it is dropped, so state from
 * before a gap or from the old model never reaches the next call.
 *
 * A failed call (no `put`) keeps the previous state; the pipeline may `reset(stream,
 * 'inference_failed')` instead. Busy streams (a lease held or waiting) are never evicted — their
 * number is bounded by the calls in flight — so the bound can be exceeded by that many.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { InputSpecV2 } from '../../shared/manifest.ts';
import type { StateSource } from '../../shared/tasks/specs.ts';
import { elements, fitsDtype, toTensorData, type TensorData, type TensorDtype } from '../../shared/tensor.ts';

export interface StateTensor {
  data: TensorData;
  dims: number[];
}

export type StateResetReason = 'window_gap' | 'window_out_of_order' | 'model_swap' | 'idle' | 'invalid_output' | 'inference_failed' | 'manual';

/** What `put` did: stored; dropped because a reset happened since the lease's take; or refused. */
export type PutResult = { ok: true } | { ok: false; reason: 'stale' | 'invalid_output'; message: string };

/** A model output as the engine returns it. */
export interface OutputTensor {
  data: unknown;
  dims: readonly number[];
}

export interface StreamStateOptions {
  /** Streams kept at once; past it the least recently used idle stream is evicted (its state lost). */
  maxStreams: number;
  /** Elements one state tensor may have (symbolic dims can grow). Default 1 Mi. */
  maxElements?: number;
  /** Clock for take/put without an explicit `now`. Default Date.now. */
  now?: () => number;
  /** One call per reset event: a stream's (stream set), or every stream's (stream undefined). */
  onReset?: (stream: string | undefined, reason: StateResetReason, message?: string) => void;
  onEvict?: (stream: string) => void;
}

/** Exclusive access to one stream's state until release(). */
export interface StateLease {
  readonly stream: string;
  /** The state to feed now (fresh copies). */
  take(now?: number): Record<string, StateTensor>;
  /** Stores the state from this call's outputs (copied); stale after a reset since take. */
  put(outputs: Readonly<Record<string, OutputTensor | undefined>>, now?: number): PutResult;
  /** Lets the stream's next call proceed. Idempotent; always call it (finally). */
  release(): void;
}

interface Slot {
  name: string;
  output: string;
  dtype: TensorDtype;
  shape: readonly (number | string)[];
  resetAfterMs: number | undefined;
  initDims: number[];
  init: TensorData;
}

interface Waiter {
  grant: (lease: StateLease) => void;
  fail: (err: Error) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

interface Entry {
  stream: string;
  /** Stored state per slot (undefined: feed init). */
  tensors: (StateTensor | undefined)[];
  storedAt: number[];
  /** Bumped by every reset, so an in-flight call's put can tell it is stale. */
  epoch: number;
  holder: StateLease | undefined;
  waiters: Waiter[];
}

const INT_RANGE: Partial<Record<TensorDtype, [number, number]>> = {
  int8: [-128, 127],
  uint8: [0, 255],
  bool: [0, 1],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
};

export class StreamStateStore {
  readonly #slots: Slot[];
  readonly #entries = new Map<string, Entry>();
  readonly #maxStreams: number;
  readonly #maxElements: number;
  readonly #now: () => number;
  readonly #onReset: StreamStateOptions['onReset'];
  readonly #onEvict: StreamStateOptions['onEvict'];
  #evictions = 0;

  /** `inputs`: the model's state inputs (ModelSpec.stateInputs); anything else is refused. */
  constructor(inputs: readonly InputSpecV2[], opts: StreamStateOptions) {
    if (!Number.isInteger(opts.maxStreams) || opts.maxStreams < 1) throw new RangeError('maxStreams must be a positive integer');
    this.#maxStreams = opts.maxStreams;
    this.#maxElements = opts.maxElements ?? 1 << 20;
    this.#now = opts.now ?? Date.now;
    this.#onReset = opts.onReset;
    this.#onEvict = opts.onEvict;
    const bad = (name: string, m: string): never => {
      throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `state input ${name}: ${m}`);
    };
    this.#slots = inputs.map((inp) => {
      if (inp.source.kind !== 'state') return bad(inp.name, `is fed from ${inp.source.kind}, not state`);
      const src: StateSource = inp.source;
      const initDims = inp.shape.map((d) => (typeof d === 'number' ? d : 1));
      const n = elements(initDims);
      if (n > this.#maxElements) bad(inp.name, `${n} elements, at most ${this.#maxElements}`);
      const range = INT_RANGE[inp.dtype];
      if (range && !(Number.isInteger(src.init) && src.init >= range[0] && src.init <= range[1])) bad(inp.name, `init ${src.init} does not fit ${inp.dtype}`);
      const init = toTensorData(inp.dtype, new Array<number>(n).fill(src.init));
      return { name: inp.name, output: src.output, dtype: inp.dtype, shape: inp.shape, resetAfterMs: src.resetAfterMs, initDims, init };
    });
    if (new Set(this.#slots.map((s) => s.name)).size !== this.#slots.length) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, 'state input names must be unique');
  }

  /** Streams held now. */
  get size(): number {
    return this.#entries.size;
  }

  get evictions(): number {
    return this.#evictions;
  }

  /**
   * Waits for exclusive use of `stream`'s state; leases are granted in the order of acquire
   * calls. Rejects with ABORTED if `signal` aborts before the grant.
   */
  acquire(stream: string, signal?: AbortSignal): Promise<StateLease> {
    if (signal?.aborted) return Promise.reject(aborted());
    const entry = this.#touch(stream);
    if (!entry.holder && entry.waiters.length === 0) return Promise.resolve(this.#grant(entry));
    return new Promise<StateLease>((resolve, reject) => {
      const w: Waiter = { grant: resolve, fail: reject, signal, onAbort: undefined };
      if (signal) {
        w.onAbort = () => {
          const i = entry.waiters.indexOf(w);
          if (i >= 0) entry.waiters.splice(i, 1);
          reject(aborted());
        };
        signal.addEventListener('abort', w.onAbort, { once: true });
      }
      entry.waiters.push(w);
    });
  }

  /**
   * The state to feed `stream` now, without a lease: for callers that serialize the stream's
   * calls themselves. Throws ILLEGAL_STATE while a lease on the stream is held.
   */
  take(stream: string, now: number = this.#now()): Record<string, StateTensor> {
    const entry = this.#touch(stream);
    if (entry.holder) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, `stream ${stream} is leased`);
    return this.#takeEntry(entry, now);
  }

  /** Stores `stream`'s new state from its outputs, without a lease (see take). */
  put(stream: string, outputs: Readonly<Record<string, OutputTensor | undefined>>, now: number = this.#now()): PutResult {
    const entry = this.#touch(stream);
    if (entry.holder) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, `stream ${stream} is leased`);
    return this.#putEntry(entry, outputs, now);
  }

  /**
   * Back to init: one stream (a window gap), or every stream (a model swap with the same state
   * inputs; a model with other state inputs needs a new store). In-flight calls' puts go stale.
   */
  reset(stream: string | undefined, reason: StateResetReason): void {
    if (stream !== undefined) {
      const entry = this.#entries.get(stream);
      if (!entry) return;
      this.#clear(entry);
      this.#onReset?.(stream, reason);
      return;
    }
    if (this.#entries.size === 0) return;
    for (const [key, entry] of this.#entries) {
      if (entry.holder || entry.waiters.length > 0) this.#clear(entry);
      else this.#entries.delete(key);
    }
    this.#onReset?.(undefined, reason);
  }

  // ------------------------------------------------------------------ used by Lease

  #takeEntry(entry: Entry, now: number): Record<string, StateTensor> {
    const out: Record<string, StateTensor> = {};
    let idle = false;
    for (let i = 0; i < this.#slots.length; i++) {
      const slot = this.#slots[i]!;
      let t = entry.tensors[i];
      if (t && slot.resetAfterMs !== undefined && now - (entry.storedAt[i] as number) > slot.resetAfterMs) {
        entry.tensors[i] = t = undefined;
        idle = true;
      }
      out[slot.name] = t ? { data: t.data.slice(), dims: t.dims.slice() } : { data: slot.init.slice(), dims: slot.initDims.slice() };
    }
    if (idle) {
      entry.epoch++;
      this.#onReset?.(entry.stream, 'idle');
    }
    return out;
  }

  #putEntry(entry: Entry, outputs: Readonly<Record<string, OutputTensor | undefined>>, now: number): PutResult {
    const next: StateTensor[] = [];
    for (const slot of this.#slots) {
      const problem = this.#check(slot, outputs[slot.output]);
      if (problem) {
        const message = `state ${slot.name} from output ${slot.output}: ${problem}`;
        this.#clear(entry);
        this.#onReset?.(entry.stream, 'invalid_output', message);
        return { ok: false, reason: 'invalid_output', message };
      }
      const o = outputs[slot.output]!;
      next.push({ data: (o.data as TensorData).slice(), dims: [...o.dims] });
    }
    entry.tensors = next;
    entry.storedAt = next.map(() => now);
    return { ok: true };
  }

  /** A lease on `entry`, made its holder. */
  #grant(entry: Entry): StateLease {
    let epoch = entry.epoch;
    let released = false;
    const live = (): void => {
      if (released) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, `lease on stream ${entry.stream} already released`);
    };
    const lease: StateLease = {
      stream: entry.stream,
      take: (now = this.#now()) => {
        live();
        const out = this.#takeEntry(entry, now);
        epoch = entry.epoch;
        return out;
      },
      put: (outputs, now = this.#now()) => {
        live();
        if (entry.epoch !== epoch) return { ok: false, reason: 'stale', message: `stream ${entry.stream} was reset during the call` };
        return this.#putEntry(entry, outputs, now);
      },
      release: () => {
        if (released) return;
        released = true;
        entry.holder = undefined;
        const w = entry.waiters.shift();
        if (!w) return;
        if (w.onAbort) w.signal?.removeEventListener('abort', w.onAbort);
        w.grant(this.#grant(entry));
      },
    };
    entry.holder = lease;
    return lease;
  }

  #check(slot: Slot, o: OutputTensor | undefined): string | undefined {
    if (!o) return 'missing from the outputs';
    if (!fitsDtype(o.data, slot.dtype)) return `data is not ${slot.dtype}`;
    const dims = o.dims;
    if (dims.length !== slot.shape.length) return `dims [${dims.join(', ')}], the input is [${slot.shape.join(', ')}]`;
    for (let i = 0; i < dims.length; i++) {
      const want = slot.shape[i];
      const got = dims[i] as number;
      if (typeof want === 'number' ? got !== want : !(Number.isInteger(got) && got >= 1)) return `dims [${dims.join(', ')}], the input is [${slot.shape.join(', ')}]`;
    }
    const n = elements(dims);
    if (n > this.#maxElements) return `${n} elements, at most ${this.#maxElements}`;
    const data = o.data as TensorData;
    if (data.length !== n) return `${data.length} values for dims [${dims.join(', ')}]`;
    // A NaN fed back would poison every later call of the stream: reset instead.
    if (slot.dtype === 'float32') {
      for (const v of data as Float32Array) if (!Number.isFinite(v)) return 'non-finite values';
    } else if (slot.dtype === 'float16') {
      for (const h of data as Uint16Array) if ((h & 0x7c00) === 0x7c00) return 'non-finite values';
    }
    return undefined;
  }

  #clear(entry: Entry): void {
    entry.tensors = [];
    entry.storedAt = [];
    entry.epoch++;
  }

  /** The stream's entry, created if new, moved to the back of the LRU order. */
  #touch(stream: string): Entry {
    let entry = this.#entries.get(stream);
    if (entry) {
      this.#entries.delete(stream);
      this.#entries.set(stream, entry);
      return entry;
    }
    if (this.#entries.size >= this.#maxStreams) {
      for (const [key, e] of this.#entries) {
        if (e.holder || e.waiters.length > 0) continue;
        this.#entries.delete(key);
        this.#evictions++;
        this.#onEvict?.(key);
        break;
      }
    }
    entry = { stream, tensors: [], storedAt: [], epoch: 0, holder: undefined, waiters: [] };
    this.#entries.set(stream, entry);
    return entry;
  }
}

function aborted(): EdgefleetError {
  return new EdgefleetError(ErrorCode.ABORTED, 'aborted while waiting for the stream state');
}
