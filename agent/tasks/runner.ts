/**
 * Runs one request through a manifest v2 model, or a chain of them (issue #13): builds the
 * request input (an image, a reading, or a window of readings of one stream), the constant,
 * state and upstream feeds, calls the engine, keeps the state outputs for the stream's next
 * call and postprocesses the last stage by its task. The v1 classifier path in pipeline.ts stays
 * as it was (its hot path is tuned, issue #5); v2 classification runs here.
 *
 * Per-stream state (windows, model state, chain row windows) is keyed by model version, so a
 * model swap starts every stream afresh, as a stateful model needs. Calls of one stream are
 * serialized (a state read and its write-back must not interleave with another call of the
 * same stream); different streams run concurrently and batch in the engine as before.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { InputSpecV2 } from '../../shared/manifest.ts';
import { modelSpec, type ModelSpec } from '../../shared/model-spec.ts';
import { toTensorData, type TensorData } from '../../shared/tensor.ts';
import type { ReadingSource, WindowSource } from '../../shared/tasks/specs.ts';
import type { LocalModel } from '../models/local-models.ts';
import { imageSpecOf, preprocessImage, type ImageGeometry, type ImageStats } from '../preprocess/image.ts';
import { preprocessTabular, type Reading } from '../preprocess/tabular.ts';
import { WindowSet, type WindowEmit, type WindowResetReason } from '../preprocess/window.ts';
import { postprocess, type TaskOutcome, type Tensor } from '../postprocess/tasks.ts';
import type { InferInput } from '../runtime/engine.ts';
import { StreamStateStore, type StateLease, type StateResetReason } from '../runtime/stream-state.ts';
import { concreteDims, constantFeed, RowWindow, type Feed } from './inputs.ts';
import { BufferPool } from '../runtime/buffer-pool.ts';

export interface RunnerEngine {
  infer(key: string, input: InferInput): Promise<{ outputs: Record<string, Tensor>; latencyMs: number }>;
}

export interface RunnerEvents {
  windowReset?: (reason: WindowResetReason | 'evicted') => void;
  stateReset?: (reason: StateResetReason | 'evicted') => void;
}

export interface RunnerOptions {
  pipeline: string;
  engine: RunnerEngine;
  /** Streams (sensors, cameras) one pipeline keeps windows and state for; LRU past it. */
  maxStreams: number;
  events?: RunnerEvents;
  now?: () => number;
  /** Image tensors are written into buffers the engine hands back (InferInput.reclaim); default a pool of its own. */
  buffers?: BufferPool;
}

/** The request input, prepared. `buffered` = a window is not full yet: nothing to infer. */
export type PreparedV2 =
  | { buffered: true; stream: string; have: number; need: number }
  | {
      buffered: false;
      stream: string;
      feed: Feed;
      /** Raw values for drift: the reading's, or the window's per-channel means. */
      raw?: Float64Array;
      stats?: ImageStats;
      geometry?: ImageGeometry;
      window?: Pick<WindowEmit, 'firstTs' | 'lastTs' | 'firstId' | 'lastId'>;
      /** Windows the same chunk completed before this one, oldest first: each is run too. */
      earlier?: { feed: Feed; raw?: Float64Array; window: Pick<WindowEmit, 'firstTs' | 'lastTs' | 'firstId' | 'lastId'> }[];
    };

export interface RunOutcome {
  outcome: TaskOutcome;
  /** Engine latency summed over the chain's stages. */
  engineMs: number;
  /** A chain stage whose upstream window is not full yet: nothing to publish. */
  buffered?: { stage: string };
}

interface StreamState {
  /** Chain inputs' row windows, by input name. */
  rows: Map<string, RowWindow>;
  /** Tail of the stream's call queue (serialization). */
  tail: Promise<unknown>;
}

interface ModelRuntime {
  spec: ModelSpec;
  constants: Record<string, Feed>;
  windows: WindowSet | undefined;
  /** The model's state per stream (agent/runtime/stream-state.ts), for models with state inputs. */
  states: StreamStateStore | undefined;
}

const NO_STREAM = '_';

/** A reading's values in a reading source's feature order (raw, unscaled). */
function readingValues(src: ReadingSource | WindowSource, reading: Reading): Float64Array {
  return preprocessTabular({ kind: 'tabular', features: src.features.map((f) => ({ name: f.name, mean: 0, std: 1 })) }, reading).raw;
}

export class TaskRunner {
  readonly #o: RunnerOptions;
  readonly #models = new Map<string, ModelRuntime>();
  readonly #buffers: BufferPool;
  /** Per stream per model key. */
  readonly #streams = new Map<string, StreamState>();
  readonly #now: () => number;

  constructor(opts: RunnerOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#buffers = opts.buffers ?? new BufferPool();
  }

  #runtime(model: LocalModel): ModelRuntime {
    let rt: ModelRuntime | undefined = this.#models.get(model.key);
    if (!rt) {
      const spec = modelSpec(model.manifest);
      const constants: Record<string, Feed> = {};
      for (const i of spec.inputs) if (i.source.kind === 'constant') constants[i.name] = constantFeed(i);
      const win = spec.primary?.source.kind === 'window' ? spec.primary.source : undefined;
      const windows = win
        ? new WindowSet(win, {
            maxStreams: this.#o.maxStreams,
            onReset: (stream, reason) => {
              this.#o.events?.windowReset?.(reason);
              // A gap in the readings is a gap in the model's memory too.
              rt?.states?.reset(stream, reason === 'gap' ? 'window_gap' : 'window_out_of_order');
              this.#resetRows(model.key, stream);
            },
            onEvict: () => this.#o.events?.windowReset?.('evicted'),
          })
        : undefined;
      const states = spec.stateInputs.length
        ? new StreamStateStore(spec.stateInputs, {
            maxStreams: this.#o.maxStreams,
            onReset: (_stream, reason) => this.#o.events?.stateReset?.(reason),
            onEvict: () => this.#o.events?.stateReset?.('evicted'),
            now: this.#now,
          })
        : undefined;
      rt = { spec, constants, windows, states };
      // Versions come and go with rollouts: forget the state of versions no longer served.
      if (this.#models.size >= 8) this.#forget(this.#models.keys().next().value as string);
      this.#models.set(model.key, rt);
    }
    return rt;
  }

  #forget(key: string): void {
    this.#models.delete(key);
    for (const k of [...this.#streams.keys()]) if (k.startsWith(`${key}\u0000`)) this.#streams.delete(k);
  }

  /** Drops every stream's state of versions other than `keep` (a model swap). */
  retain(keep: readonly string[]): void {
    for (const key of [...this.#models.keys()]) if (!keep.includes(key)) this.#forget(key);
  }

  #stream(key: string, stream: string): StreamState {
    const k = `${key}\u0000${stream}`;
    let s = this.#streams.get(k);
    if (s) {
      this.#streams.delete(k);
      this.#streams.set(k, s);
      return s;
    }
    s = { rows: new Map(), tail: Promise.resolve() };
    this.#streams.set(k, s);
    if (this.#streams.size > this.#o.maxStreams * 4) {
      this.#streams.delete(this.#streams.keys().next().value as string);
      this.#o.events?.stateReset?.('evicted');
    }
    return s;
  }

  #resetRows(key: string, stream: string): void {
    const s = this.#streams.get(`${key}\u0000${stream}`);
    if (s) for (const r of s.rows.values()) r.reset();
  }

  /** The model's request input from a JSON reading (reading or window source). */
  prepareReading(model: LocalModel, reading: Reading & { stream?: string }, stream: string | undefined): PreparedV2 {
    const rt = this.#runtime(model);
    const p = rt.spec.primary;
    const key = stream ?? reading.stream ?? NO_STREAM;
    if (!p || (p.source.kind !== 'reading' && p.source.kind !== 'window')) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `model ${model.key} takes ${p ? `${p.source.kind}s` : 'no request input'}, not JSON readings`, { details: { reason: 'wrong_kind' } });
    }
    if (p.source.kind === 'reading') {
      const t = preprocessTabular({ kind: 'tabular', features: p.source.features }, reading);
      return { buffered: false, stream: key, feed: { data: p.dtype === 'float32' ? t.data : toTensorData(p.dtype, t.data), dims: concreteDims(p) }, raw: t.raw };
    }
    const windows = rt.windows!;
    const ts = reading.ts ?? this.#now();
    const samples = (reading as { samples?: number[][] }).samples;
    let emit: WindowEmit | undefined;
    const emits: WindowEmit[] = [];
    if (samples) {
      // A chunk of consecutive samples (audio frames, a burst from an accelerometer): sample i at
      // ts + i · periodMs, so the window's gap check sees the real spacing of a long chunk.
      // Checked whole before any sample enters the window: a chunk refused halfway would leave
      // its first part there and shift every later window of the stream.
      const f = p.source.features.length;
      for (const [i, values] of samples.entries()) {
        if (values.length !== f) throw new EdgefleetError(ErrorCode.BAD_INPUT, `sample ${i}: expected ${f} values, got ${values.length}`, { details: { reason: 'wrong_length' } });
        for (const v of values) {
          if (typeof v !== 'number' || !Number.isFinite(v)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `sample ${i}: a value is not a finite number`, { details: { reason: 'non_finite' } });
        }
      }
      const period = (reading as { periodMs?: number }).periodMs ?? 0;
      for (const [i, values] of samples.entries()) {
        const e = windows.push(key, { ts: ts + i * period, values, id: reading.id });
        if (e) emits.push(e);
      }
      emit = emits.pop();
    } else emit = windows.push(key, { ts, values: readingValues(p.source, reading), id: reading.id });
    if (!emit) return { buffered: true, stream: key, have: 0, need: p.source.size };
    const input = p;
    const one = (e: WindowEmit): { feed: Feed; raw: Float64Array; window: Pick<WindowEmit, 'firstTs' | 'lastTs' | 'firstId' | 'lastId'> } => ({
      feed: { data: input.dtype === 'float32' ? e.data : toTensorData(input.dtype, e.data), dims: e.dims.length === input.shape.length ? e.dims : concreteDims(input) },
      raw: e.raw.mean,
      window: { firstTs: e.firstTs, lastTs: e.lastTs, firstId: e.firstId, lastId: e.lastId },
    });
    return { buffered: false, stream: key, ...one(emit), ...(emits.length ? { earlier: emits.map(one) } : {}) };
  }

  /** The model's request input from an encoded image. */
  async prepareImage(model: LocalModel, bytes: Buffer, stream: string | undefined, opts: { maxInputBytes?: number; maxInputPixels?: number }): Promise<PreparedV2> {
    const rt = this.#runtime(model);
    const p = rt.spec.primary;
    if (!p || p.source.kind !== 'image') {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `model ${model.key} takes ${p ? `${p.source.kind}s` : 'no request input'}, not images`, { details: { reason: 'wrong_kind' } });
    }
    const t = await preprocessImage(imageSpecOf(p.source, p.dtype), bytes, { ...opts, buffers: this.#buffers });
    return { buffered: false, stream: stream ?? NO_STREAM, feed: { data: t.data, dims: t.dims }, stats: t.stats, geometry: t.geometry };
  }

  /**
   * Runs the prepared input through `stages` (one model, or a chain whose later stages take
   * `upstream` inputs) and postprocesses the last one. Calls of one stream run in order.
   */
  run(stages: readonly LocalModel[], prepared: Extract<PreparedV2, { buffered: false }>, ctx: { topK: number; thresholds?: Readonly<Record<string, number>> }): Promise<RunOutcome> {
    const first = this.#stream(stages[0]!.key, prepared.stream);
    const run = first.tail.then(() => this.#run(stages, prepared, ctx));
    first.tail = run.catch(() => undefined);
    return run;
  }

  async #run(stages: readonly LocalModel[], prepared: Extract<PreparedV2, { buffered: false }>, ctx: { topK: number; thresholds?: Readonly<Record<string, number>> }): Promise<RunOutcome> {
    let engineMs = 0;
    let upstream: Record<string, Tensor> | undefined;
    let last: { rt: ModelRuntime; outputs: Record<string, Tensor>; fed: Record<string, ArrayLike<number>> } | undefined;
    for (const [i, model] of stages.entries()) {
      const rt = this.#runtime(model);
      const st = this.#stream(model.key, prepared.stream);
      const lease = rt.states ? await rt.states.acquire(prepared.stream) : undefined;
      try {
        const res = await this.#stage(model, rt, st, lease, i === 0 ? prepared.feed : undefined, upstream);
        if (!res) return { outcome: emptyOutcome(), engineMs, buffered: { stage: model.key } };
        engineMs += res.latencyMs;
        upstream = res.outputs;
        last = { rt, outputs: res.outputs, fed: res.fed };
      } finally {
        lease?.release();
      }
    }
    const outcome = postprocess({ spec: last!.rt.spec, outputs: last!.outputs, inputs: last!.fed, geometry: prepared.geometry, topK: ctx.topK, thresholds: ctx.thresholds });
    return { outcome, engineMs };
  }

  /** One model of the run: its feeds, the engine call, the state written back. Undefined = a chain window is not full yet. */
  async #stage(
    model: LocalModel,
    rt: ModelRuntime,
    st: StreamState,
    lease: StateLease | undefined,
    request: Feed | undefined,
    upstream: Record<string, Tensor> | undefined,
  ): Promise<{ outputs: Record<string, Tensor>; latencyMs: number; fed: Record<string, ArrayLike<number>> } | undefined> {
    const i = request ? 0 : 1;
    const state = lease?.take();
    const fed: Record<string, ArrayLike<number>> = {};
    let primary: { name: string; feed: Feed } | undefined;
    const extra: Record<string, Feed> = {};
    for (const input of rt.spec.inputs) {
      const feed = input.source.kind === 'state' ? state?.[input.name] : this.#feed(model, rt, st, input, request, upstream);
      if (feed === undefined) {
        if (input.source.kind === 'state') throw new EdgefleetError(ErrorCode.INTERNAL, `model ${model.key}: no state for input ${input.name}`);
        return undefined;
      }
      fed[input.name] = feed.data as ArrayLike<number>;
      if (!primary && (input === rt.spec.primary || (i > 0 && input.source.kind === 'upstream'))) primary = { name: input.name, feed };
      else extra[input.name] = feed;
    }
    primary ??= firstFeed(extra);
    if (!primary) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `model ${model.key} has no input`);
    delete extra[primary.name];
    // The request input is fresh per call; handed over unless postprocessing reads it again
    // (an autoencoder's reconstruction error) or it is a constant the runner reuses.
    const post = rt.spec.post;
    const reread = post.kind === 'anomaly' && post.reconstructs === primary.name;
    const shared = rt.spec.inputs.find((x) => x.name === primary.name)?.source.kind === 'constant';
    const transfer = !reread && !shared;
    const req: InferInput = { data: primary.feed.data, dims: primary.feed.dims, transfer };
    // An image tensor comes back for the next frame (windows are sized per model: not pooled).
    if (transfer && rt.spec.inputs.find((x) => x.name === primary.name)?.source.kind === 'image') req.reclaim = this.#buffers.give;
    if (Object.keys(extra).length) req.extra = extra;
    const res = await this.#o.engine.infer(model.key, req);
    if (lease) {
      // State outputs come back as float32 (engine.ts); the store converts to the input's dtype and checks dims.
      const put = lease.put(stateOutputs(rt.spec, res.outputs));
      if (!put.ok && put.reason === 'invalid_output') throw new EdgefleetError(ErrorCode.INFERENCE, `model ${model.key}: ${put.message}`);
    }
    return { outputs: res.outputs, latencyMs: res.latencyMs, fed };
  }

  #feed(model: LocalModel, rt: ModelRuntime, st: StreamState, input: InputSpecV2, request: Feed | undefined, upstream: Record<string, Tensor> | undefined): Feed | undefined {
    const src = input.source;
    switch (src.kind) {
      case 'image':
      case 'reading':
      case 'window':
        if (!request) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `model ${model.key}: input ${input.name} takes the request, but it is not the chain's first model`);
        return request;
      case 'constant':
        return rt.constants[input.name]!;
      case 'state':
        throw new EdgefleetError(ErrorCode.INTERNAL, `model ${model.key}: state input ${input.name} is fed by the state store`);
      case 'upstream': {
        const out = upstream?.[src.output];
        if (!out) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `model ${model.key}: input ${input.name} takes output ${src.output} of the previous model, which it does not have`);
        let rows = st.rows.get(input.name);
        if (!rows) {
          rows = new RowWindow(input, src.frames, src.hop, src);
          st.rows.set(input.name, rows);
        }
        return rows.push(out.data);
      }
    }
  }
}

/** The outputs that feed state inputs, converted to each input's dtype (the engine returns float32). */
function stateOutputs(spec: ModelSpec, outputs: Record<string, Tensor>): Record<string, { data: TensorData; dims: number[] } | undefined> {
  const out: Record<string, { data: TensorData; dims: number[] } | undefined> = {};
  for (const s of spec.stateInputs) {
    if (s.source.kind !== 'state') continue;
    const t = outputs[s.source.output];
    out[s.source.output] = t && { data: s.dtype === 'float32' ? t.data : toTensorData(s.dtype, t.data), dims: t.dims };
  }
  return out;
}

function firstFeed(feeds: Record<string, Feed>): { name: string; feed: Feed } | undefined {
  for (const [name, feed] of Object.entries(feeds)) return { name, feed };
  return undefined;
}

function emptyOutcome(): TaskOutcome {
  return { fields: {}, record: {}, values: {} };
}

