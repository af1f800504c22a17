/**
 * Typed arrays for every tensor element type manifest v2 names, and the conversions between
 * them and plain numbers. onnxruntime-node takes float16 as raw IEEE half bits in a Uint16Array
 * (Node 20 has no Float16Array), int64 as BigInt64Array and bool as Uint8Array, so a value that
 * crosses into or out of a model goes through here: one place decides how a number becomes a
 * half or an int64.
 */
import type { TensorDtypeV2 } from './manifest.ts';

export type TensorDtype = TensorDtypeV2;
export type TensorData = Float32Array | Uint16Array | Uint8Array | Int8Array | Int32Array | BigInt64Array;

export const TENSOR_DTYPES: readonly TensorDtype[] = ['float32', 'float16', 'uint8', 'int8', 'int32', 'int64', 'bool'];

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float → IEEE 754 half bits, round to nearest even; overflow → ±Infinity, NaN stays NaN. */
export function floatToHalf(value: number): number {
  f32[0] = value;
  const x = u32[0] as number;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = sign | (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return half;
}

/** IEEE 754 half bits → number. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Allocates a zeroed array of `n` elements for `dtype`. */
export function allocTensor(dtype: TensorDtype, n: number): TensorData {
  switch (dtype) {
    case 'float32':
      return new Float32Array(n);
    case 'float16':
      return new Uint16Array(n);
    case 'uint8':
    case 'bool':
      return new Uint8Array(n);
    case 'int8':
      return new Int8Array(n);
    case 'int32':
      return new Int32Array(n);
    case 'int64':
      return new BigInt64Array(n);
  }
}

/** Numbers → the array type of `dtype` (integers truncated toward zero, bool = non-zero). */
export function toTensorData(dtype: TensorDtype, values: ArrayLike<number>): TensorData {
  const n = values.length;
  const out = allocTensor(dtype, n);
  switch (dtype) {
    case 'float16':
      for (let i = 0; i < n; i++) (out as Uint16Array)[i] = floatToHalf(values[i] as number);
      return out;
    case 'int64':
      for (let i = 0; i < n; i++) {
        const v = values[i] as number;
        (out as BigInt64Array)[i] = BigInt(Number.isFinite(v) ? Math.trunc(v) : 0);
      }
      return out;
    case 'bool':
      for (let i = 0; i < n; i++) (out as Uint8Array)[i] = values[i] ? 1 : 0;
      return out;
    default:
      (out as Float32Array).set(values);
      return out;
  }
}

/** The array type `dtype` is carried in, for checking what a caller hands the engine. */
export function fitsDtype(data: unknown, dtype: TensorDtype): boolean {
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array;
    case 'float16':
      return data instanceof Uint16Array;
    case 'uint8':
    case 'bool':
      return data instanceof Uint8Array;
    case 'int8':
      return data instanceof Int8Array;
    case 'int32':
      return data instanceof Int32Array;
    case 'int64':
      return data instanceof BigInt64Array;
  }
}

/** Any ORT output data (typed array of any element type, float16 as half bits) → Float32Array. */
export function toFloat32(data: unknown, dtype?: string): Float32Array {
  if (dtype === 'float16' && data instanceof Uint16Array) return Float32Array.from(data, halfToFloat);
  if (data instanceof Float32Array) return new Float32Array(data);
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) return Float32Array.from(data, (v) => Number(v));
  if (ArrayBuffer.isView(data) && !(data instanceof DataView)) return Float32Array.from(data as unknown as ArrayLike<number>);
  if (Array.isArray(data)) return Float32Array.from(data, (v) => (typeof v === 'boolean' ? (v ? 1 : 0) : Number(v)));
  throw new Error('output is not a numeric tensor');
}

/** Element count of a shape. */
export function elements(dims: readonly number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  return n;
}
