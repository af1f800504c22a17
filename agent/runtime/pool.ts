/**
 * WorkerPoolEngine: the agent's InferenceEngine. Owns the inference worker threads, the
 * per-model sample queues and the dynamic micro-batching that feeds them. The main thread only
 * validates, queues, concatenates and splits; ORT runs in the workers (ARCHITECTURE §1).
 *
 * Batching: when a worker is free it takes up to `maxBatch` queued samples of one model (the
 * model whose oldest sample has waited longest), stacks them along dim 0 and runs them once.
 * A model with a dynamic batch dim waits at most `maxWaitMs` for a fuller batch.
 * Back-pressure: at most `queueMax` samples wait in total; beyond that `infer` rejects at once
 * with OVERLOADED and the caller decides what to drop.
 * Pipelining: under load a busy worker also gets a second, full batch queued behind the one it
 * runs (`pipelineDepth`), so it never waits for the main thread between runs; only while the
 * workers leave the main thread a core of its own, by default.
 * Faults: a worker that dies fails only the batches it holds, running and queued (INFERENCE),
 * is respawned with backoff, reloads every model and serves again. The pool never terminates a worker that may
 * be inside ORT: with onnxruntime-node 1.30 that aborts the whole process (see #terminateAll).
 * Memory (issue #14): sessions run without ORT's CPU arena, so a large run's memory goes back
 * to the system; with `memory` set, a timer samples process RSS while batches run and, past the
 * budget, hands the running models to `memoryWatch.onExceeded` (see #watchMemory).
 */
import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { Backoff } from '../../shared/backoff.ts';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import { StateMachine, withTimeout, type LifecycleState } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { newWorker, siblingModule } from '../../shared/modules.ts';
import { allocTensor, fitsDtype, TENSOR_DTYPES, type TensorData } from '../../shared/tensor.ts';
import type {
  EngineStats,
  InferenceEngine,
  InferInput,
  InferResult,
  InputData,
  InputDtype,
  LoadOptions,
  ModelHandle,
  OutputTensor,
  TensorMeta,
} from './engine.ts';
import { FromWorkerSchema, isResultMessage, type FromWorker, type ToWorker, type ValueMeta, type WorkerData } from './messages.ts';

export interface WorkerPoolOptions {
  log: Logger;
  registry?: Registry;
  /** Worker threads, each with its own session of every model. Default 1. */
  workers?: number;
  /** ORT intra-op threads per session. Default 1: on small devices workers and ORT's own pool fight for cores. */
  intraOpThreads?: number;
  /** Default largest batch per run (a model's LoadOptions may override). Default 16 here; the agent config defaults to 64. */
  maxBatch?: number;
  /** Longest a sample waits for a fuller batch while a worker is free. Default 2. */
  maxWaitMs?: number;
  /**
   * Batches per worker: 2 queues a full batch behind the running one (pipelining), 1 does not.
   * Default 2 while the workers leave the main thread a core of its own (workers < available
   * cores), else 1: workers that never pause would take the main thread's core too, and its
   * event-loop delay doubled in a test with 2 workers on 2 cores (BENCHMARKS.md, issue #5).
   */
  pipelineDepth?: 1 | 2;
  /** Samples waiting, over all models, before `infer` rejects with OVERLOADED. Default 1000. */
  queueMax?: number;
  /** How long `stop()` lets accepted work finish. Default 5000. */
  stopTimeoutMs?: number;
  /** Worker start-up (module + ORT load). Default 30000. */
  startTimeoutMs?: number;
  /** Session creation on one worker. Default 60000. */
  loadTimeoutMs?: number;
  /** Delays between respawns of a crashing worker. */
  respawnBackoff?: { initialMs: number; maxMs: number; factor: number; jitter: number };
  /** The run-time memory watchdog (issue #14); none when undefined. */
  memoryWatch?: MemoryWatch;
  /** Test hooks; never set in production. */
  testHooks?: { runDelayMs?: number; exit?: boolean };
}

/** A run that outgrew the memory budget. */
export interface MemoryBreach {
  /** Engine keys (name@version) of the batches running when the budget was crossed. */
  models: string[];
  rssBytes: number;
  maxRssBytes: number;
}

export interface MemoryWatch {
  /** Process RSS past which the running batches are treated as a memory attack. */
  maxRssBytes: number;
  /**
   * Sampling period, only while batches are in flight. Default 10: the crafted model of issue
   * #14 grew RSS by ~2 GB/s here, so the budget is overshot by ~20 MB at most; one RSS read per
   * sample, none per inference.
   */
  sampleMs?: number;
  /** Process RSS in bytes (main.ts passes process.memoryUsage.rss: only it touches `process`). */
  rss: () => number;
  /**
   * Called synchronously, once per breach. A run inside ORT cannot be interrupted (terminating
   * its worker or exiting aborts the process, and only once the run has finished allocating), so
   * the agent's handler records a marker and SIGKILLs the process (main.ts). If the handler
   * returns, the pool refuses those models from then on and recycles their workers once they are
   * back in JS.
   */
  onExceeded: (b: MemoryBreach) => void;
  /** `edgefleet_agent_worker_memory_kills_total{model}` (agent/metrics.ts). */
  kills?: Counter<'model'>;
}

type Reason = 'overloaded' | 'bad_input' | 'not_found' | 'unavailable' | 'inference';

interface Pending {
  data: InputData;
  dims: number[];
  extra: Record<string, { data: InputData; dims: number[] }> | undefined;
  transfer: boolean;
  reclaim: ((buffer: ArrayBuffer) => void) | undefined;
  t0: number;
  resolve: (r: InferResult) => void;
  reject: (e: EdgefleetError) => void;
}

interface ModelEntry {
  handle: ModelHandle;
  state: 'ready' | 'unloading';
  queue: Pending[];
  /** Samples in batches a worker is running. */
  inFlight: number;
  unloading: Promise<void> | undefined;
  /** Set when no live worker holds the model because reloading it after a respawn failed. */
  broken: EdgefleetError | undefined;
  /** Set when a run of it outgrew the memory budget: refused until unloaded (issue #14). */
  refused: EdgefleetError | undefined;
  drained: (() => void)[];
}

interface Rpc {
  resolve: (msg: FromWorker) => void;
  reject: (err: EdgefleetError) => void;
}

interface Slot {
  index: number;
  worker: Worker;
  ready: boolean;
  alive: boolean;
  /** Set when we terminate it on purpose, so its exit is not a crash. */
  retiring: boolean;
  spawnedAt: number;
  loaded: Set<string>;
  loading: Set<string>;
  /** Batches sent and not yet answered: the one running plus at most PIPELINE_DEPTH - 1 queued behind it. */
  batches: number;
  /** Model keys of those batches in order: the first is the one running (the worker runs them in turn). */
  running: string[];
  /** Set after a memory breach: gets no more batches, terminated and respawned once idle. */
  recycle: boolean;
  /** Fail the callers of each batch sent to this worker, without waiting for the run (stop timeout). */
  abandon: Set<(err: EdgefleetError) => void>;
  rpcs: Map<number, Rpc>;
  onReady: { resolve: () => void; reject: (e: Error) => void } | undefined;
}

interface Metrics {
  batchSize: Histogram<'model'>;
  duration: Histogram<'model'>;
  rejections: Counter<'reason'>;
  restarts: Counter;
}

const STATES: Record<LifecycleState, readonly LifecycleState[]> = {
  idle: ['starting', 'stopped'],
  starting: ['running', 'failed'],
  running: ['stopping'],
  stopping: ['stopped'],
  stopped: [],
  failed: ['stopping', 'stopped'],
};

const DTYPES: readonly InputDtype[] = TENSOR_DTYPES;

/**
 * Most batches a worker holds at once: the one it runs and one queued behind it, so under load
 * it starts the next run as soon as one ends instead of idling through the round trip to the
 * main thread and back (two thread wake-ups, ~60 µs here; issue #5). Two, not more: a dying
 * worker fails at most these two batches, and a stop waits for at most one extra run.
 */
const PIPELINE_DEPTH = 2;

/** The array covers its whole ArrayBuffer, so transferring the buffer sends exactly it. */
function wholeBuffer(data: InputData): boolean {
  return data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
}

/** A copy of `data` in a buffer of its own (transferred to the worker; callers may reuse theirs). */
function copyOf(data: InputData): TensorData {
  return data.slice();
}

const sameDims = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((v, i) => v === b[i]);

export class WorkerPoolEngine implements InferenceEngine {
  readonly name = 'inference-engine';
  readonly #o: Required<Omit<WorkerPoolOptions, 'registry' | 'testHooks' | 'respawnBackoff' | 'memoryWatch'>> & Pick<WorkerPoolOptions, 'testHooks'>;
  readonly #memory: MemoryWatch | undefined;
  #memoryTimer: NodeJS.Timeout | undefined;
  readonly #log: Logger;
  readonly #sm = new StateMachine<LifecycleState>('idle', STATES, 'inference engine');
  readonly #slots: Slot[] = [];
  readonly #models = new Map<string, ModelEntry>();
  readonly #loading = new Map<string, { path: string; promise: Promise<ModelHandle> }>();
  readonly #backoff: Backoff;
  readonly #metrics: Metrics | undefined;
  #queued = 0;
  #restarts = 0;
  #rpcId = 0;
  #pumpScheduled = false;
  #pumpTimer: NodeJS.Timeout | undefined;
  readonly #respawnTimers = new Set<NodeJS.Timeout>();
  #stopping: Promise<void> | undefined;
  #starting: Promise<void> | undefined;

  constructor(opts: WorkerPoolOptions) {
    const int = (v: number | undefined, dflt: number, min: number, what: string): number => {
      const x = v ?? dflt;
      if (!Number.isFinite(x) || x < min) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `runtime: ${what} must be ≥ ${min}, got ${x}`);
      return x;
    };
    const workers = int(opts.workers, 1, 1, 'workers');
    this.#o = {
      log: opts.log,
      workers,
      intraOpThreads: int(opts.intraOpThreads, 1, 1, 'intraOpThreads'),
      maxBatch: int(opts.maxBatch, 16, 1, 'maxBatch'),
      maxWaitMs: int(opts.maxWaitMs, 2, 0, 'maxWaitMs'),
      pipelineDepth: Math.min(PIPELINE_DEPTH, int(opts.pipelineDepth, workers < availableParallelism() ? PIPELINE_DEPTH : 1, 1, 'pipelineDepth')) as 1 | 2,
      queueMax: int(opts.queueMax, 1000, 1, 'queueMax'),
      stopTimeoutMs: int(opts.stopTimeoutMs, 5000, 0, 'stopTimeoutMs'),
      startTimeoutMs: int(opts.startTimeoutMs, 30_000, 1, 'startTimeoutMs'),
      loadTimeoutMs: int(opts.loadTimeoutMs, 60_000, 1, 'loadTimeoutMs'),
      testHooks: opts.testHooks,
    };
    this.#log = opts.log;
    if (opts.memoryWatch) {
      int(opts.memoryWatch.maxRssBytes, 0, 1, 'memoryWatch.maxRssBytes');
      int(opts.memoryWatch.sampleMs, 10, 1, 'memoryWatch.sampleMs');
    }
    this.#memory = opts.memoryWatch;
    this.#backoff = new Backoff(opts.respawnBackoff ?? { initialMs: 100, maxMs: 10_000, factor: 2, jitter: 0.5 });
    this.#metrics = opts.registry ? this.#createMetrics(opts.registry) : undefined;
  }

  // ---------------------------------------------------------------- lifecycle

  start(signal: AbortSignal): Promise<void> {
    this.#sm.to('starting');
    this.#starting = this.#start(signal);
    return this.#starting;
  }

  async #start(signal: AbortSignal): Promise<void> {
    try {
      if (signal.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'inference engine start aborted');
      const ready: Promise<void>[] = [];
      for (let i = 0; i < this.#o.workers; i++) ready.push(this.#spawn(i));
      let onAbort: (() => void) | undefined;
      const aborted = new Promise<never>((_, reject) => {
        onAbort = () => reject(new EdgefleetError(ErrorCode.ABORTED, 'inference engine start aborted'));
        signal.addEventListener('abort', onAbort, { once: true });
      });
      try {
        await Promise.race([withTimeout(Promise.all(ready), this.#o.startTimeoutMs, 'inference workers start'), aborted]);
      } finally {
        if (onAbort) signal.removeEventListener('abort', onAbort);
      }
      this.#sm.to('running');
      this.#log.info({ workers: this.#o.workers, intraOpThreads: this.#o.intraOpThreads, maxRssMiB: this.#memory ? mib(this.#memory.maxRssBytes) : undefined }, 'inference workers ready');
    } catch (err) {
      this.#sm.to('failed');
      await this.#terminateAll();
      throw toEdgefleetError(err, ErrorCode.UNAVAILABLE);
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    if (this.#sm.is('idle')) {
      this.#sm.to('stopped');
      return;
    }
    if (this.#sm.is('stopped')) return;
    // A stop during start-up waits for the start to finish or fail, then tears down either way.
    if (this.#sm.is('starting')) await this.#starting?.catch(() => undefined);
    if (this.#sm.is('running', 'failed')) this.#sm.to('stopping');
    // Accepted work gets to finish; the pump flushes partial batches without waiting while stopping.
    this.#schedulePump();
    const drained = Promise.all([...this.#models.values()].map((e) => this.#drained(e)));
    try {
      await withTimeout(drained, this.#o.stopTimeoutMs, 'inference drain');
    } catch {
      this.#log.warn({ queued: this.#queued, inFlight: this.#inFlight() }, 'stop: work still pending after timeout; failing it');
    }
    const stopped = new EdgefleetError(ErrorCode.UNAVAILABLE, 'inference engine stopped');
    for (const entry of this.#models.values()) this.#failQueue(entry, stopped);
    for (const slot of this.#slots) for (const abandon of [...slot.abandon]) abandon(stopped);
    for (const t of this.#respawnTimers) clearTimeout(t);
    this.#respawnTimers.clear();
    // 'close' queues behind a run still going, so it is answered once the worker is back in JS.
    await Promise.all(
      this.#slots.map(async (slot) => {
        if (!slot.alive || !slot.ready) return;
        try {
          await withTimeout(this.#rpc(slot, { t: 'close', id: this.#nextId() }), Math.max(1000, this.#o.stopTimeoutMs), `close worker ${slot.index}`);
        } catch (err) {
          this.#log.warn({ worker: slot.index, err }, 'worker did not release its sessions');
        }
      }),
    );
    await this.#terminateAll();
    this.#models.clear();
    this.#sm.to('stopped');
  }

  /**
   * Terminates every worker that is not inside a native ORT call. Terminating (or exiting the
   * process) while a worker is in session.run or session creation aborts the whole process
   * (onnxruntime-node throws Napi::Error into a terminating env: "terminate called after
   * throwing an instance of 'Napi::Error'", exit 134; checked here with 1.30). A worker still
   * busy is unref'd instead so it cannot keep the process alive.
   */
  async #terminateAll(): Promise<void> {
    for (const t of this.#respawnTimers) clearTimeout(t);
    this.#respawnTimers.clear();
    clearTimeout(this.#pumpTimer);
    clearInterval(this.#memoryTimer);
    await Promise.all(
      this.#slots.map(async (slot) => {
        slot.retiring = true;
        if (!slot.alive) return;
        if (slot.rpcs.size > 0) {
          // Terminated by #onMessage once its last reply arrives.
          this.#log.error({ worker: slot.index, pending: slot.rpcs.size }, 'worker still busy, maybe inside ORT; terminating it once it answers');
          slot.worker.unref();
          return;
        }
        await slot.worker.terminate();
      }),
    );
  }

  // ---------------------------------------------------------------- models

  handle(key: string): ModelHandle | undefined {
    return this.#models.get(key)?.handle;
  }

  load(key: string, onnxPath: string, opts: LoadOptions = {}): Promise<ModelHandle> {
    if (!this.#sm.is('running')) return Promise.reject(new EdgefleetError(ErrorCode.UNAVAILABLE, `cannot load ${key}: engine is ${this.#sm.state}`));
    const existing = this.#models.get(key);
    if (existing) {
      if (existing.handle.path === onnxPath && existing.state === 'ready') return Promise.resolve(existing.handle);
      return Promise.reject(new EdgefleetError(ErrorCode.CONFLICT, `model ${key} is already loaded from ${existing.handle.path}`));
    }
    const inProgress = this.#loading.get(key);
    if (inProgress) {
      if (inProgress.path === onnxPath) return inProgress.promise;
      return Promise.reject(new EdgefleetError(ErrorCode.CONFLICT, `model ${key} is being loaded from ${inProgress.path}`));
    }
    const promise = this.#load(key, onnxPath, opts).finally(() => this.#loading.delete(key));
    this.#loading.set(key, { path: onnxPath, promise });
    return promise;
  }

  async #load(key: string, path: string, opts: LoadOptions): Promise<ModelHandle> {
    const slots = this.#slots.filter((s) => s.alive && s.ready);
    if (!slots.length) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `cannot load ${key}: no inference worker is up`);
    const t0 = performance.now();
    const results = await Promise.allSettled(slots.map((s) => this.#loadOn(s, key, path)));
    const ok = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const modelErr = results.find(
      (r): r is PromiseRejectedResult => r.status === 'rejected' && !(r.reason instanceof EdgefleetError && r.reason.details?.['workerExit']),
    );
    let handle: ModelHandle | undefined;
    let problem: EdgefleetError | undefined;
    if (modelErr) problem = new EdgefleetError(ErrorCode.BAD_MODEL, `cannot load ${key} from ${path}: ${errMessage(modelErr.reason)}`, { cause: modelErr.reason });
    else if (!ok[0]) problem = new EdgefleetError(ErrorCode.INFERENCE, `cannot load ${key}: every worker exited during the load`);
    else {
      try {
        handle = this.#toHandle(key, path, ok[0], opts);
      } catch (err) {
        problem = toEdgefleetError(err, ErrorCode.BAD_MODEL);
      }
    }
    if (problem || !handle) {
      await this.#unloadFromWorkers(key);
      throw problem ?? new EdgefleetError(ErrorCode.INTERNAL, `cannot load ${key}`);
    }
    this.#models.set(key, { handle, state: 'ready', queue: [], inFlight: 0, drained: [], broken: undefined, refused: undefined, unloading: undefined });
    // Workers respawned during the load have not got it yet.
    for (const s of this.#slots) this.#syncSlot(s);
    this.#log.info({ model: key, path, workers: ok.length, ms: Math.round(performance.now() - t0), dynamicBatch: handle.dynamicBatch }, 'model loaded');
    return handle;
  }

  async #loadOn(slot: Slot, key: string, path: string): Promise<{ inputs: ValueMeta[]; outputs: ValueMeta[] }> {
    slot.loading.add(key);
    try {
      const id = this.#nextId();
      let reply: FromWorker;
      try {
        reply = await withTimeout(this.#rpc(slot, { t: 'load', id, key, path }), this.#o.loadTimeoutMs, `load ${key} on worker ${slot.index}`);
      } catch (err) {
        if (err instanceof EdgefleetError && err.code === ErrorCode.TIMEOUT) {
          // The worker cannot be terminated while it creates the session (that aborts the
          // process, see #terminateAll). Drop the reply when it comes and queue an unload behind
          // the load, so the late session is released.
          slot.rpcs.delete(id);
          this.#log.error({ worker: slot.index, model: key }, 'model load timed out');
          this.#rpc(slot, { t: 'unload', id: this.#nextId(), key }).catch(() => undefined);
        }
        throw err;
      }
      if (reply.t !== 'loaded') throw new EdgefleetError(ErrorCode.INTERNAL, `worker replied ${reply.t} to load`);
      slot.loaded.add(key);
      return { inputs: reply.inputs, outputs: reply.outputs };
    } finally {
      slot.loading.delete(key);
    }
  }

  #toHandle(key: string, path: string, meta: { inputs: ValueMeta[]; outputs: ValueMeta[] }, opts: LoadOptions): ModelHandle {
    const bad = (msg: string): EdgefleetError => new EdgefleetError(ErrorCode.BAD_MODEL, `${key}: ${msg}`);
    if (meta.inputs.length === 0) throw bad('the model has no inputs');
    const inputs: TensorMeta[] = meta.inputs.map((i) => {
      if (!i.isTensor || !i.type || !i.dims) throw bad(`input ${i.name} is not a tensor`);
      if (!DTYPES.includes(i.type as InputDtype)) throw bad(`input ${i.name} has type ${i.type}; supported: ${DTYPES.join(', ')}`);
      return { name: i.name, type: i.type, dims: i.dims };
    });
    const input = opts.primaryInput === undefined ? inputs[0]! : inputs.find((i) => i.name === opts.primaryInput);
    if (!input) throw bad(`no input named ${opts.primaryInput} (it has ${inputs.map((i) => i.name).join(', ')})`);
    if (input.dims.length === 0) throw bad(`input ${input.name} declares no shape, so samples cannot be checked`);
    const d0 = input.dims[0];
    if (inputs.length === 1 && typeof d0 === 'number' && d0 !== 1) throw bad(`input ${input.name} has a fixed batch of ${d0}; only 1 or a dynamic batch is supported`);
    if (meta.outputs.length === 0) throw bad('the model has no outputs');
    const outputs: TensorMeta[] = meta.outputs.map((o) => {
      if (!o.isTensor || !o.type || !o.dims) throw bad(`output ${o.name} is not a tensor`);
      return { name: o.name, type: o.type, dims: o.dims };
    });
    // Samples of a multi-input model are not stacked: state and constants are per call.
    const dynamicBatch = inputs.length === 1 && typeof d0 === 'string';
    const maxBatch = opts.maxBatch ?? this.#o.maxBatch;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${key}: maxBatch must be a positive integer`);
    return {
      key,
      path,
      inputName: input.name,
      inputType: input.type,
      inputDims: input.dims,
      inputs,
      outputNames: outputs.map((o) => o.name),
      outputs,
      dynamicBatch,
      maxBatch: dynamicBatch ? maxBatch : 1,
    };
  }

  async unload(key: string): Promise<void> {
    const entry = this.#models.get(key);
    if (!entry) {
      const loading = this.#loading.get(key);
      if (!loading) return;
      await loading.promise.catch(() => undefined);
      return this.unload(key);
    }
    entry.unloading ??= this.#unload(key, entry);
    return entry.unloading;
  }

  async #unload(key: string, entry: ModelEntry): Promise<void> {
    entry.state = 'unloading';
    this.#schedulePump();
    await this.#drained(entry);
    // Forget it first, so a worker respawned meanwhile does not load it again.
    this.#models.delete(key);
    await this.#unloadFromWorkers(key);
    this.#log.info({ model: key }, 'model unloaded');
  }

  async #unloadFromWorkers(key: string): Promise<void> {
    await Promise.all(
      this.#slots.map(async (slot) => {
        if (!slot.alive || !(slot.loaded.has(key) || slot.loading.has(key))) return;
        try {
          await this.#rpc(slot, { t: 'unload', id: this.#nextId(), key });
        } catch (err) {
          this.#log.warn({ worker: slot.index, model: key, err }, 'unload failed');
        }
        slot.loaded.delete(key);
      }),
    );
  }

  #drained(entry: ModelEntry): Promise<void> {
    if (entry.queue.length === 0 && entry.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => entry.drained.push(resolve));
  }

  #checkDrained(entry: ModelEntry): void {
    if (entry.queue.length || entry.inFlight || !entry.drained.length) return;
    const waiters = entry.drained.splice(0);
    for (const w of waiters) w();
  }

  // ---------------------------------------------------------------- inference

  infer(key: string, input: InferInput): Promise<InferResult> {
    const t0 = performance.now();
    if (!this.#sm.is('running')) return this.#reject('unavailable', ErrorCode.UNAVAILABLE, `inference engine is ${this.#sm.state}`);
    const entry = this.#models.get(key);
    if (!entry || entry.state !== 'ready') return this.#reject('not_found', ErrorCode.NOT_FOUND, `model ${key} is ${entry ? 'unloading' : 'not loaded'}`);
    const down = entry.refused ?? entry.broken;
    if (down) return this.#reject('inference', ErrorCode.INFERENCE, down.message);
    const problem = this.#checkInput(entry.handle, input);
    if (problem) return this.#reject('bad_input', ErrorCode.BAD_INPUT, `${key}: ${problem}`);
    if (this.#queued >= this.#o.queueMax) {
      return this.#reject('overloaded', ErrorCode.OVERLOADED, `inference queue is full (${this.#o.queueMax} samples waiting)`);
    }
    return new Promise<InferResult>((resolve, reject) => {
      entry.queue.push({ data: input.data, dims: [...input.dims], extra: input.extra, transfer: input.transfer === true, reclaim: input.reclaim, t0, resolve, reject });
      this.#queued++;
      this.#schedulePump();
    });
  }

  /** Returns why the sample does not fit the model, or undefined. ORT never sees a wrong shape. */
  #checkInput(h: ModelHandle, input: InferInput): string | undefined {
    const problem = tensorProblem(h.inputName, h.inputType, h.inputDims, input?.data, input?.dims, true);
    if (problem) return problem;
    if (h.inputs.length === 1) return input.extra && Object.keys(input.extra).length ? `the model has no input besides ${h.inputName}` : undefined;
    const extra = input.extra ?? {};
    for (const meta of h.inputs) {
      if (meta.name === h.inputName) continue;
      const t = extra[meta.name];
      if (!t) return `input ${meta.name} is missing`;
      const p = tensorProblem(meta.name, meta.type, meta.dims, t.data, t.dims, false);
      if (p) return p;
    }
    for (const name of Object.keys(extra)) if (!h.inputs.some((m) => m.name === name && name !== h.inputName)) return `the model has no input ${name}`;
    return undefined;
  }

  #reject(reason: Reason, code: ErrorCode, message: string): Promise<never> {
    this.#metrics?.rejections.inc({ reason });
    return Promise.reject(new EdgefleetError(code, message));
  }

  /** Coalesces every infer() of the current tick into one pump, so a burst forms one batch. */
  #schedulePump(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    queueMicrotask(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    clearTimeout(this.#pumpTimer);
    this.#pumpTimer = undefined;
    const now = performance.now();
    const flush = !this.#sm.is('running');
    let nextDeadline = Infinity;
    // Pass 0 feeds idle workers; pass 1 queues a second batch behind a running one (pipelining),
    // but only a full batch, so light load batches and waits exactly as without pipelining.
    for (let depth = 0; depth < this.#o.pipelineDepth; depth++) {
      for (const slot of this.#slots) {
        if (!slot.alive || !slot.ready || slot.recycle || slot.batches !== depth) continue;
        let best: ModelEntry | undefined;
        for (const [key, entry] of this.#models) {
          const head = entry.queue[0];
          if (!head || !slot.loaded.has(key)) continue;
          const h = entry.handle;
          const full = !h.dynamicBatch || entry.queue.length >= h.maxBatch;
          if (depth > 0 && !full && !flush) continue;
          const due = head.t0 + this.#o.maxWaitMs;
          if (!full && !flush && entry.state === 'ready' && due > now) {
            nextDeadline = Math.min(nextDeadline, due);
            continue;
          }
          if (!best || head.t0 < best.queue[0]!.t0) best = entry;
        }
        if (best) this.#dispatch(slot, best);
      }
    }
    if (nextDeadline !== Infinity) {
      this.#pumpTimer = setTimeout(() => this.#pump(), Math.max(0, Math.ceil(nextDeadline - now)));
    }
  }

  #dispatch(slot: Slot, entry: ModelEntry): void {
    const h = entry.handle;
    const head = entry.queue[0]!;
    // Only samples of the head's exact shape can be stacked (symbolic non-batch dims may differ).
    let n = 1;
    while (n < h.maxBatch && n < entry.queue.length && sameDims(entry.queue[n]!.dims, head.dims)) n++;
    const items = entry.queue.splice(0, n);
    this.#queued -= n;
    entry.inFlight += n;
    slot.batches++;
    slot.running.push(h.key);
    this.#armMemoryWatch();

    const per = head.data.length;
    const dtype = h.inputType as InputDtype;
    let batch: TensorData;
    // A single sample the caller handed over goes as it is (issue #13 bench: the copy of a
    // 0.9 MB image tensor was most of the engine's batch-1 overhead); anything else is copied.
    const handedOver = n === 1 && head.transfer && wholeBuffer(head.data);
    if (n === 1) batch = handedOver ? head.data : copyOf(head.data);
    else {
      batch = allocTensor(dtype, per * n);
      for (const [i, it] of items.entries()) (batch as Float32Array).set(it.data as Float32Array, i * per);
    }
    const dims = [n, ...head.dims.slice(1)];
    this.#metrics?.batchSize.observe({ model: h.key }, n);

    const transfer: ArrayBuffer[] = [batch.buffer as ArrayBuffer];
    const msg: ToWorker = { t: 'run', id: this.#nextId(), key: h.key, dtype, dims, data: batch.buffer as ArrayBuffer };
    const reclaim = handedOver ? head.reclaim : undefined;
    if (reclaim) msg.back = true;
    if (h.inputs.length > 1) {
      msg.input = h.inputName;
      msg.extra = Object.entries(head.extra ?? {}).map(([name, t]) => {
        const data = copyOf(t.data);
        transfer.push(data.buffer as ArrayBuffer);
        return { name, dtype: h.inputs.find((m) => m.name === name)!.type as InputDtype, dims: [...t.dims], data: data.buffer as ArrayBuffer };
      });
    }
    // Bookkeeping first, then settle: a caller that awaits its result sees consistent stats().
    let released = false;
    // Settling a promise twice is a no-op: a result that arrives after abandon() is dropped.
    const abandon = (err: EdgefleetError): void => {
      this.#metrics?.rejections.inc({ reason: 'unavailable' }, n);
      for (const it of items) it.reject(err);
    };
    const release = (): void => {
      if (released) return;
      released = true;
      entry.inFlight -= n;
      slot.batches--;
      const at = slot.running.indexOf(h.key);
      if (at >= 0) slot.running.splice(at, 1);
      slot.abandon.delete(abandon);
    };
    slot.abandon.add(abandon);
    // The reply settles this batch straight from #onMessage (or #onExit): no promise chain
    // between the worker's message and the callers' promises (hot path, issue #5).
    const settle = (reply: FromWorker | undefined, failure: unknown): void => {
      let perSample: Record<string, OutputTensor>[] | undefined;
      let err = failure;
      if (reply) {
        try {
          if (reply.t !== 'result') throw new EdgefleetError(ErrorCode.INTERNAL, `worker replied ${reply.t} to run`);
          perSample = splitOutputs(reply.outputs, n, h.key);
          this.#metrics?.duration.observe({ model: h.key }, reply.runMs / 1000);
        } catch (e) {
          err = e;
        }
      }
      release();
      if (reclaim && reply?.t === 'result' && reply.input) {
        try {
          reclaim(reply.input);
        } catch (e) {
          this.#log.warn({ model: h.key, err: toEdgefleetError(e) }, 'reclaiming an input buffer failed');
        }
      }
      if (perSample && reply?.t === 'result') {
        const done = performance.now();
        for (let i = 0; i < n; i++) {
          const it = items[i]!;
          it.resolve({ outputs: perSample[i]!, latencyMs: done - it.t0, runMs: reply.runMs, batchSize: n });
        }
      } else {
        const e =
          err instanceof EdgefleetError && (err.code === ErrorCode.INFERENCE || err.code === ErrorCode.UNAVAILABLE)
            ? err
            : new EdgefleetError(ErrorCode.INFERENCE, `${h.key}: ${errMessage(err)}`, { cause: err });
        this.#metrics?.rejections.inc({ reason: e.code === ErrorCode.UNAVAILABLE ? 'unavailable' : 'inference' }, n);
        this.#log.warn({ model: h.key, batch: n, err: e }, 'inference batch failed');
        for (const it of items) it.reject(e);
      }
      this.#checkDrained(entry);
      this.#schedulePump();
    };
    this.#send(slot, msg, transfer, { resolve: (reply) => settle(reply, undefined), reject: (e) => settle(undefined, e) });
  }

  #failQueue(entry: ModelEntry, err: EdgefleetError): void {
    const items = entry.queue.splice(0);
    this.#queued -= items.length;
    for (const it of items) it.reject(err);
    this.#checkDrained(entry);
  }

  #inFlight(): number {
    let n = 0;
    for (const e of this.#models.values()) n += e.inFlight;
    return n;
  }

  stats(): EngineStats {
    return {
      queued: this.#queued,
      inFlight: this.#inFlight(),
      workers: this.#slots.filter((s) => s.alive && s.ready && !s.retiring).length,
      restarts: this.#restarts,
      models: [...this.#models.keys()],
    };
  }

  /**
   * Test hook: kills worker `index` as a crash would. 'exit' makes the worker call
   * process.exit(1) itself as soon as it is back in JS (needs `testHooks.exit`); 'terminate'
   * calls worker.terminate() from here and must only be used while the worker is not inside
   * ORT (e.g. during `testHooks.runDelayMs`), or the whole process aborts.
   */
  async crashWorkerForTest(index: number, how: 'exit' | 'terminate' = 'terminate'): Promise<void> {
    const slot = this.#slots[index];
    if (!slot?.alive) throw new EdgefleetError(ErrorCode.NOT_FOUND, `worker ${index} is not running`);
    if (how === 'terminate') {
      await slot.worker.terminate();
      return;
    }
    if (!this.#o.testHooks?.exit) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, "crashWorkerForTest(i, 'exit') needs testHooks.exit");
    const exited = new Promise<void>((resolve) => slot.worker.once('exit', () => resolve()));
    slot.worker.postMessage({ t: 'test-exit', id: this.#nextId() } satisfies ToWorker);
    await exited;
  }

  // ---------------------------------------------------------------- workers

  #nextId(): number {
    this.#rpcId = (this.#rpcId + 1) % Number.MAX_SAFE_INTEGER;
    return this.#rpcId;
  }

  #rpc(slot: Slot, msg: ToWorker, transfer: ArrayBuffer[] = []): Promise<FromWorker> {
    return new Promise<FromWorker>((resolve, reject) => this.#send(slot, msg, transfer, { resolve, reject }));
  }

  /** Posts `msg`; `rpc` is called exactly once: with the reply, or with why there is none. */
  #send(slot: Slot, msg: ToWorker, transfer: ArrayBuffer[], rpc: Rpc): void {
    if (!slot.alive) {
      rpc.reject(workerGone(slot.index, 'is not running'));
      return;
    }
    slot.rpcs.set(msg.id, rpc);
    try {
      slot.worker.postMessage(msg, transfer);
    } catch (err) {
      slot.rpcs.delete(msg.id);
      rpc.reject(toEdgefleetError(err, ErrorCode.INFERENCE));
    }
  }

  /** Creates (or re-creates) worker `index`; resolves once its ORT module is loaded. */
  #spawn(index: number): Promise<void> {
    const url = siblingModule(import.meta.url, './worker');
    const data: WorkerData = {
      workerId: index,
      intraOpThreads: this.#o.intraOpThreads,
      ...(this.#o.testHooks?.runDelayMs ? { testRunDelayMs: this.#o.testHooks.runDelayMs } : {}),
      ...(this.#o.testHooks?.exit ? { testExit: true } : {}),
    };
    const worker = newWorker(url, { workerData: data, name: `inference-${index}` });
    const slot: Slot = {
      index,
      worker,
      ready: false,
      alive: true,
      retiring: false,
      spawnedAt: performance.now(),
      loaded: new Set(),
      loading: new Set(),
      batches: 0,
      running: [],
      recycle: false,
      abandon: new Set(),
      rpcs: new Map(),
      onReady: undefined,
    };
    this.#slots[index] = slot;
    const ready = new Promise<void>((resolve, reject) => {
      slot.onReady = { resolve, reject };
    });
    worker.on('message', (raw: unknown) => this.#onMessage(slot, raw));
    worker.on('messageerror', (err) => this.#log.error({ worker: index, err }, 'worker message could not be deserialised'));
    worker.on('error', (err) => this.#log.error({ worker: index, err }, 'inference worker error'));
    worker.on('exit', (code) => this.#onExit(slot, code));
    return ready;
  }

  #onMessage(slot: Slot, raw: unknown): void {
    let msg: FromWorker;
    if (isResultMessage(raw)) msg = raw;
    else {
      const parsed = FromWorkerSchema.safeParse(raw);
      if (!parsed.success) {
        this.#log.error({ worker: slot.index, problem: formatIssues(parsed.error) }, 'bad message from worker');
        return;
      }
      msg = parsed.data;
    }
    switch (msg.t) {
      case 'ready':
        slot.ready = true;
        slot.onReady?.resolve();
        slot.onReady = undefined;
        this.#syncSlot(slot);
        return;
      case 'protocol-error':
        this.#log.error({ worker: slot.index, problem: msg.message }, 'worker refused a message');
        return;
      default: {
        const rpc = slot.rpcs.get(msg.id);
        if (!rpc) return;
        slot.rpcs.delete(msg.id);
        // With a second batch queued at the worker its reply is usually waiting by the time this
        // one is settled, and Node handles up to 1000 queued port messages (and their
        // microtasks) without returning to the event loop: settled inline, a saturated pool
        // starved timers and I/O for 40-50 ms (event-loop delay p99). Deferred to setImmediate,
        // each loop turn settles at most the batches that had arrived. A lone batch (low load)
        // is still settled inline, with no extra hop.
        if (msg.t === 'result' && slot.batches > 1) setImmediate(() => this.#settle(slot, rpc, msg));
        else this.#settle(slot, rpc, msg);
        if ((slot.retiring || slot.recycle) && slot.rpcs.size === 0 && slot.alive) void slot.worker.terminate();
      }
    }
  }

  #settle(slot: Slot, rpc: Rpc, msg: FromWorker): void {
    try {
      if (msg.t === 'error') rpc.reject(new EdgefleetError(ErrorCode.INFERENCE, msg.message));
      else rpc.resolve(msg);
    } catch (err) {
      // A settle callback that throws is a bug here; it must not take the message handler down.
      this.#log.error({ worker: slot.index, err }, 'settling a worker reply failed');
    }
  }

  #onExit(slot: Slot, code: number): void {
    slot.alive = false;
    slot.ready = false;
    const err = slot.retiring
      ? new EdgefleetError(ErrorCode.UNAVAILABLE, 'inference engine stopped before the run finished')
      : workerGone(slot.index, `exited with code ${code}`);
    slot.onReady?.reject(err);
    slot.onReady = undefined;
    const rpcs = [...slot.rpcs.values()];
    slot.rpcs.clear();
    for (const r of rpcs) r.reject(err);
    if (slot.retiring || !this.#sm.is('running', 'stopping')) return;

    this.#restarts++;
    this.#metrics?.restarts.inc();
    // A worker that ran a while before dying is not crash-looping: start over with short delays.
    if (slot.recycle || performance.now() - slot.spawnedAt > 30_000) this.#backoff.reset();
    const delay = this.#backoff.next();
    if (slot.recycle) this.#log.warn({ worker: slot.index, restarts: this.#restarts, respawnInMs: delay }, 'inference worker recycled after a memory breach; respawning');
    else this.#log.error({ worker: slot.index, code, restarts: this.#restarts, respawnInMs: delay }, 'inference worker died; respawning');
    const timer = setTimeout(() => {
      this.#respawnTimers.delete(timer);
      if (!this.#sm.is('running', 'stopping')) return;
      this.#spawn(slot.index).catch((e: unknown) => this.#log.error({ worker: slot.index, err: e }, 'respawned worker failed to start'));
    }, delay);
    this.#respawnTimers.add(timer);
  }

  /**
   * The memory watchdog's sample (issue #14). Process RSS is all threads' together, so a breach
   * is blamed on the batches running at that moment (the head of each worker's list); with
   * several workers an innocent model running beside the culprit is blamed too, said in the log.
   */
  #watchMemory(): void {
    const m = this.#memory!;
    if (!this.#slots.some((s) => s.running.length > 0)) {
      // Nothing in flight: disarmed until the next dispatch, so an idle agent does not wake
      // 1000/sampleMs times a second for nothing.
      clearInterval(this.#memoryTimer);
      this.#memoryTimer = undefined;
      return;
    }
    const rss = m.rss();
    if (rss <= m.maxRssBytes) return;
    const heads = this.#slots.flatMap((s) => (s.alive && s.running[0] !== undefined ? [s.running[0]] : []));
    const models = [...new Set(heads)].filter((k) => !this.#models.get(k)?.refused);
    if (!models.length) return;
    this.#log.error({ models, rssMiB: mib(rss), maxRssMiB: mib(m.maxRssBytes) }, 'a model run outgrew the memory budget');
    for (const k of models) m.kills?.inc({ model: k });
    m.onExceeded({ models, rssBytes: rss, maxRssBytes: m.maxRssBytes });
    // The handler did not end the process: refuse the models, recycle their workers once idle.
    for (const k of models) {
      const entry = this.#models.get(k);
      if (!entry) continue;
      entry.refused = new EdgefleetError(ErrorCode.INFERENCE, `model ${k} is refused: a run of it took the agent past its memory budget (${mib(rss)} MiB > ${mib(m.maxRssBytes)} MiB)`);
      this.#failQueue(entry, entry.refused);
    }
    for (const s of this.#slots) {
      if (s.alive && s.running[0] !== undefined && models.includes(s.running[0])) s.recycle = true;
    }
  }

  /** Starts the memory watchdog's sampling (while batches are in flight; see #watchMemory). */
  #armMemoryWatch(): void {
    if (!this.#memory || this.#memoryTimer || !this.#sm.is('running')) return;
    this.#memoryTimer = setInterval(() => this.#watchMemory(), this.#memory.sampleMs ?? 10);
    this.#memoryTimer.unref();
  }

  /** Whether the memory watchdog is sampling now (only while batches are in flight). For tests and diagnostics. */
  get memoryWatchArmed(): boolean {
    return this.#memoryTimer !== undefined;
  }

  /** Loads every model the slot lacks (after a respawn, or after a load raced a respawn). */
  #syncSlot(slot: Slot): void {
    if (!slot.alive || !slot.ready) return;
    for (const [key, entry] of this.#models) {
      // Unloading models too: their queued samples still need a worker to drain.
      if (slot.loaded.has(key) || slot.loading.has(key)) continue;
      this.#loadOn(slot, key, entry.handle.path)
        .then(() => {
          entry.broken = undefined;
          this.#log.info({ worker: slot.index, model: key }, 'model reloaded on worker');
          this.#schedulePump();
        })
        .catch((err: unknown) => {
          this.#log.error({ worker: slot.index, model: key, err }, 'reloading model on worker failed');
          // With no worker left to run it, queued samples would wait forever: fail them and
          // refuse new ones until a later respawn reloads the model.
          if (this.#models.get(key) !== entry || this.#slots.some((s) => s.alive && (s.loaded.has(key) || s.loading.has(key)))) return;
          entry.broken = new EdgefleetError(ErrorCode.INFERENCE, `model ${key} could not be reloaded after a worker restart: ${errMessage(err)}`, { cause: err });
          this.#failQueue(entry, entry.broken);
        });
    }
    this.#schedulePump();
  }

  #createMetrics(registry: Registry): Metrics {
    const models = this.#models;
    new Gauge({
      name: 'edgefleet_agent_inference_queue_depth',
      help: 'Samples waiting for an inference worker, by model.',
      labelNames: ['model'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [key, e] of models) this.set({ model: key }, e.queue.length);
      },
    });
    return {
      batchSize: new Histogram({
        name: 'edgefleet_agent_inference_batch_size',
        help: 'Samples per ORT run, by model.',
        labelNames: ['model'],
        buckets: [1, 2, 4, 8, 16, 32, 64, 128],
        registers: [registry],
      }),
      duration: new Histogram({
        name: 'edgefleet_agent_inference_duration_seconds',
        help: 'Time in session.run per batch, by model.',
        labelNames: ['model'],
        buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        registers: [registry],
      }),
      rejections: new Counter({
        name: 'edgefleet_agent_inference_rejections_total',
        help: 'Samples refused or failed, by reason (overloaded, bad_input, not_found, unavailable, inference).',
        labelNames: ['reason'],
        registers: [registry],
      }),
      restarts: new Counter({
        name: 'edgefleet_agent_inference_worker_restarts_total',
        help: 'Inference workers respawned after dying.',
        registers: [registry],
      }),
    };
  }
}

/** Why a tensor handed to the engine does not fit input `name` of the model, or undefined. */
function tensorProblem(name: string, type: string, shape: readonly (number | string)[], data: unknown, dims: unknown, primary: boolean): string | undefined {
  if (!fitsDtype(data, type as InputDtype)) return `data for ${name} must be the array type of ${type}`;
  const arr = data as InputData;
  if (!Array.isArray(dims) || dims.length !== shape.length) return `dims [${String(dims)}] do not match the input shape [${shape.join(', ')}]`;
  let n = 1;
  for (const [i, d] of (dims as unknown[]).entries()) {
    if (!Number.isInteger(d) || (d as number) < (primary ? 1 : 0)) return `dim ${i} of ${name} is ${String(d)}; dims must be ${primary ? 'positive' : 'non-negative'} integers`;
    const want = shape[i];
    if (primary && i === 0 && typeof want !== 'number' && d !== 1) return `one sample per call: batch dim must be 1, got ${String(d)}`;
    if (typeof want === 'number' && d !== want) return `dims [${(dims as number[]).join(', ')}] do not match the input shape [${shape.join(', ')}]`;
    n *= d as number;
  }
  if (arr.length !== n) return `data has ${arr.length} values, dims [${(dims as number[]).join(', ')}] need ${n}`;
  return undefined;
}

const mib = (bytes: number): number => Math.round(bytes / 2 ** 20);

function workerGone(index: number, what: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.INFERENCE, `inference worker ${index} ${what}`, { details: { workerExit: true } });
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Splits batched outputs [n, ...] into n per-sample views (no copies: subarrays of one buffer). */
function splitOutputs(outputs: { name: string; dims: number[]; data: ArrayBuffer }[], n: number, key: string): Record<string, OutputTensor>[] {
  const perSample: Record<string, OutputTensor>[] = Array.from({ length: n }, () => ({}));
  for (const o of outputs) {
    const data = new Float32Array(o.data);
    if (n === 1) {
      perSample[0]![o.name] = { data, dims: o.dims };
      continue;
    }
    if (o.dims[0] !== n || data.length % n !== 0) {
      throw new EdgefleetError(ErrorCode.INFERENCE, `${key}: output ${o.name} has dims [${o.dims.join(', ')}], not batched over ${n} samples`);
    }
    const step = data.length / n;
    const dims = [1, ...o.dims.slice(1)];
    for (let i = 0; i < n; i++) perSample[i]![o.name] = { data: data.subarray(i * step, (i + 1) * step), dims };
  }
  return perSample;
}
