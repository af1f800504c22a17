/**
 * The inference engine contract. Everything above the runtime (pipelines, updater, drift)
 * talks to this interface, so their tests can use a fake and onnxruntime-node loads in one
 * place only (agent/runtime/worker.ts). The real implementation is WorkerPoolEngine (pool.ts).
 */
import type { Component } from '../../shared/lifecycle.ts';
import type { TensorMeta } from '../../shared/model-check.ts';
import type { TensorData, TensorDtype } from '../../shared/tensor.ts';

/**
 * Element types a sample may carry (shared/tensor.ts: float16 as half bits in a Uint16Array,
 * int64 as BigInt64Array, bool as Uint8Array). The model's input type must match the array's.
 */
export type InputData = TensorData;
export type InputDtype = TensorDtype;

/** A tensor as the model declares it (shared with the hub's check). */
export type { TensorMeta };

export interface ModelHandle {
  /** Caller-chosen id of one model version, e.g. 'machine-state@1.0.0'. */
  key: string;
  path: string;
  /** The primary input: the one `InferInput.data` feeds (LoadOptions.primaryInput, else the first). */
  inputName: string;
  inputType: string;
  inputDims: (number | string)[];
  /** Every input of the model; those other than the primary are fed through `InferInput.extra`. */
  inputs: TensorMeta[];
  outputNames: string[];
  outputs: TensorMeta[];
  /** True when the model has one input whose first dim is symbolic, so samples can be stacked into one run. */
  dynamicBatch: boolean;
  /** Largest batch the engine forms for this model (1 when the batch dim is fixed). */
  maxBatch: number;
}

export interface InferInput {
  data: InputData;
  /** Shape of this one sample, batch dim first and equal to 1. */
  dims: number[];
  /** The model's other inputs by name (constants, state, ...): exactly those the model has besides the primary. */
  extra?: Record<string, { data: InputData; dims: number[] }>;
  /**
   * The caller hands `data`'s buffer over: it is transferred to the worker instead of copied
   * (a 640×640 float image is 4.9 MB) and is detached afterwards. Only for a fresh array that
   * spans its whole buffer and is not read again; otherwise the engine copies as before.
   */
  transfer?: boolean;
  /**
   * With `transfer`: the worker hands `data`'s buffer back with the result and the engine gives
   * it to `reclaim` (e.g. BufferPool.give) before the result settles, so the caller's next
   * frame is written into it: no frame-sized allocation, and no garbage for the worker's GC, per
   * call. Not called when the run fails or the buffer went into a batch of several samples.
   */
  reclaim?: (buffer: ArrayBuffer) => void;
}

export interface OutputTensor {
  /** Non-float outputs (e.g. int64 class ids) are converted to float32. */
  data: Float32Array;
  /** Shape for this sample, batch dim 1. */
  dims: number[];
}

export interface InferResult {
  outputs: Record<string, OutputTensor>;
  /** From `infer()` to the result: queueing + batching wait + run + transfer. */
  latencyMs: number;
  /** Time ORT spent in `session.run` for the batch this sample was part of. */
  runMs: number;
  /** How many samples shared the run. */
  batchSize: number;
}

export interface LoadOptions {
  /** Overrides the engine's default maximum batch for this model. */
  maxBatch?: number;
  /** Name of the input `InferInput.data` feeds; default the model's first input. */
  primaryInput?: string;
}

export interface EngineStats {
  /** Samples waiting for a worker. */
  queued: number;
  /** Samples inside batches that a worker is running. */
  inFlight: number;
  /** Live workers. */
  workers: number;
  /** Workers respawned after a crash, since start. */
  restarts: number;
  models: string[];
}

export interface InferenceEngine extends Component {
  /**
   * Loads a model version on every worker. Rejects BAD_MODEL when the file cannot be loaded or
   * has an input that is not a tensor of a supported type, CONFLICT when `key` is loaded with another path.
   * Loading the same key and path again returns the existing handle.
   */
  load(key: string, onnxPath: string, opts?: LoadOptions): Promise<ModelHandle>;
  /** Stops accepting samples for `key`, waits for its queued and in-flight work, releases it. */
  unload(key: string): Promise<void>;
  /**
   * Runs one sample. Rejects: NOT_FOUND (no such key, or unloading), BAD_INPUT (shape or type
   * does not fit the model), OVERLOADED (queue full, at once), INFERENCE (ORT failed or the
   * worker died), UNAVAILABLE (engine not running).
   */
  infer(key: string, input: InferInput): Promise<InferResult>;
  handle(key: string): ModelHandle | undefined;
  stats(): EngineStats;
}
