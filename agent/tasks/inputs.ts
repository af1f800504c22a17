/**
 * Feeds of a manifest v2 model beyond its request input (issue #13): constants (built once per
 * model version), the model's own state (agent/runtime/stream-state.ts keeps it per stream) and
 * rows of an upstream model's output in a chain, accumulated per stream into the frames the
 * downstream model takes (openWakeWord-style: mel frames → embedding window → head window).
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { InputSpecV2 } from '../../shared/manifest.ts';
import { elements, toTensorData, type TensorData } from '../../shared/tensor.ts';

export interface Feed {
  data: TensorData;
  dims: number[];
}

/** Fixed dims of an input: symbolic dims (a batch `N`) read as 1. */
export function concreteDims(spec: InputSpecV2): number[] {
  return spec.shape.map((d) => (typeof d === 'number' ? d : 1));
}

/** A constant input's tensor. */
export function constantFeed(spec: InputSpecV2): Feed {
  if (spec.source.kind !== 'constant') throw new EdgefleetError(ErrorCode.INTERNAL, `input ${spec.name} is not a constant`);
  return { data: toTensorData(spec.dtype, spec.source.values), dims: concreteDims(spec) };
}

/**
 * Rows of an upstream output accumulated into `frames` rows for one downstream input: each
 * upstream result adds its rows (its values split into rows of the input's row size = input
 * elements / frames); once `frames` rows are there, every `hop` new rows emit the latest
 * `frames` rows. Bounded by construction: one ring of `frames` rows per stream.
 */
export class RowWindow {
  readonly #frames: number;
  readonly #hop: number;
  readonly #row: number;
  readonly #ring: Float32Array;
  #count = 0;
  #head = 0;
  #sinceEmit = 0;

  readonly #scale: number;
  readonly #offset: number;

  constructor(
    readonly spec: InputSpecV2,
    frames: number,
    hop: number,
    affine: { scale: number; offset: number } = { scale: 1, offset: 0 },
  ) {
    this.#scale = affine.scale;
    this.#offset = affine.offset;
    const n = elements(concreteDims(spec));
    if (frames < 1 || n % frames !== 0) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `input ${spec.name}: ${n} elements do not split into ${frames} frames`);
    this.#frames = frames;
    this.#hop = Math.max(1, hop);
    this.#row = n / frames;
    this.#ring = new Float32Array(n);
  }

  /** Adds an upstream output; returns the feed when a window is due. */
  push(values: Float32Array): Feed | undefined {
    if (values.length % this.#row !== 0) {
      throw new EdgefleetError(ErrorCode.INFERENCE, `chain: upstream gave ${values.length} values for input ${this.spec.name}, not a whole number of rows of ${this.#row}`);
    }
    const rows = values.length / this.#row;
    const plain = this.#scale === 1 && this.#offset === 0;
    for (let r = 0; r < rows; r++) {
      const at = this.#head * this.#row;
      if (plain) this.#ring.set(values.subarray(r * this.#row, (r + 1) * this.#row), at);
      else for (let k = 0; k < this.#row; k++) this.#ring[at + k] = (values[r * this.#row + k] as number) * this.#scale + this.#offset;
      this.#head = (this.#head + 1) % this.#frames;
      if (this.#count < this.#frames) this.#count++;
      this.#sinceEmit++;
    }
    if (this.#count < this.#frames) return undefined;
    if (this.#frames > 1 && this.#sinceEmit < this.#hop) return undefined;
    this.#sinceEmit = 0;
    const out = new Float32Array(this.#ring.length);
    // Oldest row first: the ring from head to the end, then from the start to head.
    const split = this.#head * this.#row;
    out.set(this.#ring.subarray(split), 0);
    out.set(this.#ring.subarray(0, split), this.#ring.length - split);
    return { data: this.spec.dtype === 'float32' ? out : toTensorData(this.spec.dtype, out), dims: concreteDims(this.spec) };
  }

  reset(): void {
    this.#count = 0;
    this.#head = 0;
    this.#sinceEmit = 0;
  }
}
