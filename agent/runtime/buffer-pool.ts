/**
 * Frame-sized input buffers handed back by the inference worker (InferInput.reclaim), reused
 * for the next frame's tensor. Without it every frame allocates a model-input-sized buffer
 * (0.9 MB for a 320×240 RGB float input, 4.9 MB at 640×640) that the worker thread then has to
 * garbage-collect: at batch 1 on a 3 ms model that GC tail was most of the engine's overhead over
 * bare onnxruntime (issue #13, BENCHMARKS.md "Batch 1 on the pipeline's own path").
 *
 * Bounded: at most `maxPerSize` idle buffers per byte length and `maxBytes` in all; a buffer
 * beyond either is dropped (the GC takes it as before). A buffer taken is the caller's; its
 * contents are whatever the last frame left, so callers must overwrite every element.
 */
export interface BufferPoolOptions {
  /** Idle buffers kept per byte length. Default 4. */
  maxPerSize?: number;
  /** Idle bytes kept in all. Default 64 MiB. */
  maxBytes?: number;
}

export class BufferPool {
  readonly #idle = new Map<number, ArrayBuffer[]>();
  readonly #maxPerSize: number;
  readonly #maxBytes: number;
  #bytes = 0;

  constructor(opts: BufferPoolOptions = {}) {
    this.#maxPerSize = opts.maxPerSize ?? 4;
    this.#maxBytes = opts.maxBytes ?? 64 * 2 ** 20;
  }

  /** Idle bytes held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A Float32Array of `length` over a reused buffer when one is idle, else a new one. */
  float32(length: number): Float32Array {
    const buf = this.#take(length * 4);
    return buf ? new Float32Array(buf) : new Float32Array(length);
  }

  /** Takes a buffer back (detached or shared buffers are ignored). An arrow: pass it as InferInput.reclaim. */
  readonly give = (buf: ArrayBuffer): void => {
    const n = buf.byteLength;
    if (n === 0 || this.#bytes + n > this.#maxBytes) return; // a detached buffer has length 0
    let list = this.#idle.get(n);
    if (!list) this.#idle.set(n, (list = []));
    if (list.length >= this.#maxPerSize) return;
    list.push(buf);
    this.#bytes += n;
  };

  #take(byteLength: number): ArrayBuffer | undefined {
    const buf = this.#idle.get(byteLength)?.pop();
    if (buf) this.#bytes -= byteLength;
    return buf;
  }
}
