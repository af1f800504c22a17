/**
 * A v2 manifest's test vectors as one normalized list, whether they are inline (`testVectors`)
 * or in an .npz sidecar beside the manifest (`testVectorsFile`, issue #13: a 640×640 model's
 * vectors are 1.2 M floats, too many for JSON), and the writers `edgefleet model init` uses to
 * produce either form. The model probe and the agent's activation check run what this returns.
 *
 * Sidecar arrays are named `<case>.in.<input>` and `<case>.out.<output>`; `<case>` is
 * [A-Za-z0-9_-]+ (the writer uses 0, 1, ...), so the first `.in.`/`.out.` splits a name
 * unambiguously. The file's size and sha256 are checked against the manifest before a byte of
 * it is parsed, and the archive is read with bounded entries and bytes (shared/npz.ts). Inputs
 * come back in the array type of the manifest input's dtype (float16 as half bits, int64 as
 * BigInt64Array, bool as 0/1 bytes), what onnxruntime-node takes; expected values as numbers.
 * Every mismatch with the manifest is BAD_MANIFEST naming the case and tensor.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { EdgefleetError, ErrorCode } from './errors.ts';
import type { ManifestV2, TensorDtypeV2, TestVectorV2 } from './manifest.ts';
import { readNpz, writeNpz, type NpyArray } from './npz.ts';
import { floatToHalf, halfToFloat, type TensorData } from './tensor.ts';

export type { TensorData } from './tensor.ts';

export interface VectorTensor {
  dims: number[];
  data: TensorData;
}
export interface ExpectedTensor {
  dims: number[];
  data: Float64Array | number[];
}
export interface TestCase {
  /** Where it came from, for messages: `testVectors[0]` or `vectors.npz case 0`. */
  label: string;
  inputs: Record<string, VectorTensor>;
  expected: Record<string, ExpectedTensor>;
  tolerance: number;
}

export interface SidecarLimits {
  /** Total bytes the archive may unpack to. Default 256 MiB. */
  maxBytes: number;
  /** Entries the archive may hold. Default 64 cases × (inputs + outputs). */
  maxEntries?: number;
}
export const DEFAULT_SIDECAR_MAX_BYTES = 256 * 1024 * 1024;
/** Cases per manifest, inline or in the sidecar (the schema's cap on `testVectors`). */
export const MAX_TEST_CASES = 64;

function bad(message: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_MANIFEST, message);
}

// ----------------------------------------------------------------------------- conversions

const INT_RANGE: Partial<Record<TensorDtypeV2, [number, number]>> = {
  uint8: [0, 255],
  int8: [-128, 127],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  bool: [0, 1],
};

/** Inline numbers → the array type of `dtype`; integers must be integers in range. */
function typedFromNumbers(dtype: TensorDtypeV2, values: readonly number[], what: string): TensorData {
  const range = INT_RANGE[dtype];
  if (range) {
    for (const [i, v] of values.entries()) {
      if (!Number.isInteger(v) || v < range[0] || v > range[1]) throw bad(`${what}: value ${v} at ${i} is not a ${dtype}`);
    }
  }
  switch (dtype) {
    case 'float32':
      return Float32Array.from(values);
    case 'float16':
      return Uint16Array.from(values, floatToHalf);
    case 'uint8':
    case 'bool':
      return Uint8Array.from(values);
    case 'int8':
      return Int8Array.from(values);
    case 'int32':
      return Int32Array.from(values);
    case 'int64':
      return BigInt64Array.from(values, (v) => BigInt(v));
  }
}

/** Any array the reader returns → numbers (float16 decoded, int64 as Number). */
export function numbersOf(a: { dtype: string; data: ArrayLike<number | bigint> }): Float64Array {
  const out = new Float64Array(a.data.length);
  for (let i = 0; i < out.length; i++) {
    const v = a.data[i] as number | bigint;
    out[i] = a.dtype === 'float16' ? halfToFloat(v as number) : Number(v);
  }
  return out;
}

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/** The dims of a vector tensor must fit the manifest shape: same rank, equal fixed dims. */
function dimsProblem(dims: readonly number[], shape: readonly (number | string)[]): string | undefined {
  if (dims.length !== shape.length) return `dims [${dims.join(', ')}] have rank ${dims.length}, the manifest shape [${shape.join(', ')}] rank ${shape.length}`;
  for (const [i, d] of shape.entries()) {
    if (typeof d === 'number' && dims[i] !== d) return `dim ${i} is ${dims[i]}, the manifest says ${d}`;
  }
  return undefined;
}

// ----------------------------------------------------------------------------------- reading

/** The inline `testVectors`, normalized. */
export function inlineTestVectors(m: ManifestV2): TestCase[] {
  const inputs = new Map(m.inputs.map((i) => [i.name, i]));
  const outputs = new Map(m.outputs.map((o) => [o.name, o]));
  return m.testVectors.map((tv, k) => {
    const label = `testVectors[${k}]`;
    const c: TestCase = { label, inputs: Object.create(null) as TestCase['inputs'], expected: Object.create(null) as TestCase['expected'], tolerance: tv.tolerance };
    for (const spec of m.inputs) {
      const t = tv.inputs[spec.name];
      if (!t) throw bad(`${label}: input ${spec.name} missing`);
      const problem = dimsProblem(t.dims, spec.shape) ?? (product(t.dims) === t.values.length ? undefined : `${t.values.length} values, dims say ${product(t.dims)}`);
      if (problem) throw bad(`${label} input ${spec.name}: ${problem}`);
      c.inputs[spec.name] = { dims: [...t.dims], data: typedFromNumbers(spec.dtype, t.values, `${label} input ${spec.name}`) };
    }
    for (const name of Object.keys(tv.inputs)) if (!inputs.has(name)) throw bad(`${label}: no input ${name} in the manifest`);
    for (const [name, t] of Object.entries(tv.expected)) {
      const spec = outputs.get(name);
      if (!spec) throw bad(`${label}: no output ${name} in the manifest`);
      const problem = dimsProblem(t.dims, spec.shape) ?? (product(t.dims) === t.values.length ? undefined : `${t.values.length} values, dims say ${product(t.dims)}`);
      if (problem) throw bad(`${label} expected ${name}: ${problem}`);
      c.expected[name] = { dims: [...t.dims], data: [...t.values] };
    }
    return c;
  });
}

const ARRAY_NAME = /^([A-Za-z0-9_-]{1,32})\.(in|out)\.(.+)$/;

/**
 * Test cases from sidecar bytes already checked against the manifest's size and sha256.
 * `file` names the sidecar in messages.
 */
export function sidecarTestVectors(m: ManifestV2, bytes: Uint8Array, limits: Partial<SidecarLimits> = {}): TestCase[] {
  const tf = m.testVectorsFile;
  if (!tf) return [];
  const maxEntries = limits.maxEntries ?? MAX_TEST_CASES * (m.inputs.length + m.outputs.length);
  const arrays = readNpz(bytes, { maxEntries, maxBytes: limits.maxBytes ?? DEFAULT_SIDECAR_MAX_BYTES, maxRank: 5 });
  const inputs = new Map(m.inputs.map((i) => [i.name, i]));
  const outputs = new Map(m.outputs.map((o) => [o.name, o]));
  const cases = new Map<string, TestCase>();
  for (const [key, a] of Object.entries(arrays)) {
    const match = ARRAY_NAME.exec(key);
    if (!match) throw bad(`${tf.file}: array ${key} is not named <case>.in.<input> or <case>.out.<output>`);
    const [, caseName, dir, tensor] = match as unknown as [string, string, 'in' | 'out', string];
    let c = cases.get(caseName);
    if (!c) {
      if (cases.size >= MAX_TEST_CASES) throw bad(`${tf.file}: more than ${MAX_TEST_CASES} test cases`);
      c = { label: `${tf.file} case ${caseName}`, inputs: Object.create(null) as TestCase['inputs'], expected: Object.create(null) as TestCase['expected'], tolerance: tf.tolerance };
      cases.set(caseName, c);
    }
    const where = `${tf.file} array ${key}`;
    if (dir === 'in') {
      const spec = inputs.get(tensor);
      if (!spec) throw bad(`${where}: no input ${tensor} in the manifest`);
      if (a.dtype !== spec.dtype) throw bad(`${where}: is ${a.dtype}, the manifest input is ${spec.dtype} (save it as ${spec.dtype})`);
      const problem = dimsProblem(a.dims, spec.shape);
      if (problem) throw bad(`${where}: ${problem}`);
      c.inputs[tensor] = { dims: a.dims, data: a.data as TensorData };
    } else {
      const spec = outputs.get(tensor);
      if (!spec) throw bad(`${where}: no output ${tensor} in the manifest`);
      const problem = dimsProblem(a.dims, spec.shape);
      if (problem) throw bad(`${where}: ${problem}`);
      c.expected[tensor] = { dims: a.dims, data: numbersOf(a) };
    }
  }
  const sorted = [...cases.entries()].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }));
  for (const [, c] of sorted) {
    for (const spec of m.inputs) if (!(spec.name in c.inputs)) throw bad(`${c.label}: input ${spec.name} missing`);
  }
  if (sorted.length === 0) throw bad(`${tf.file}: holds no test cases`);
  return sorted.map(([, c]) => c);
}

/**
 * Every test vector of `m`: the inline ones, then the sidecar's (read from `manifestDir`, its
 * size and sha256 checked before parsing). Throws BAD_MANIFEST for a missing, altered or
 * malformed sidecar and for vectors that do not fit the manifest.
 */
export async function loadTestVectors(m: ManifestV2, manifestDir: string, limits: Partial<SidecarLimits> = {}): Promise<TestCase[]> {
  const out = inlineTestVectors(m);
  const tf = m.testVectorsFile;
  if (!tf) return out;
  // The schema allows a bare file name only; checked again so no caller can be led elsewhere.
  if (basename(tf.file) !== tf.file) throw bad(`testVectorsFile ${tf.file} must be a file name beside the manifest`);
  return [...out, ...(await readTestVectorsFile(m, join(manifestDir, tf.file), limits, 'beside the manifest'))];
}

/**
 * The sidecar's test cases read from `path` (beside the manifest on a device, in the hub's
 * content-addressed artifact store for a release), its size and sha256 checked against the
 * manifest before it is parsed. Empty when the manifest names no sidecar.
 */
export async function readTestVectorsFile(m: ManifestV2, path: string, limits: Partial<SidecarLimits> = {}, where = `at ${path}`): Promise<TestCase[]> {
  const tf = m.testVectorsFile;
  if (!tf) return [];
  const maxBytes = limits.maxBytes ?? DEFAULT_SIDECAR_MAX_BYTES;
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `test vectors file ${tf.file} cannot be read ${where}: ${(err as Error).message}`, { cause: err });
  }
  if (size !== tf.size) throw bad(`test vectors file ${tf.file} has ${size} bytes, the manifest says ${tf.size}`);
  // Deflate never grows data by more than a few bytes per 16 KiB block, so a file much larger than
  // what it may unpack to is refused before it is read.
  if (size > maxBytes + 1024 * 1024) throw bad(`test vectors file ${tf.file} has ${size} bytes, more than the ${maxBytes} its contents may unpack to`);
  const bytes = await readFile(path);
  if (bytes.length !== tf.size) throw bad(`test vectors file ${tf.file} changed while it was read`);
  const sha = createHash('sha256').update(bytes).digest('hex');
  if (sha !== tf.sha256) throw bad(`test vectors file ${tf.file} has sha256 ${sha}, the manifest says ${tf.sha256}`);
  return sidecarTestVectors(m, bytes, limits);
}

// ----------------------------------------------------------------------------------- writing

/** One recorded case: every input as fed and the outputs it produced, with their dtypes. */
export interface RecordedTensor {
  dtype: TensorDtypeV2;
  dims: number[];
  data: TensorData;
}
export interface RecordedCase {
  inputs: Record<string, RecordedTensor>;
  outputs: Record<string, RecordedTensor>;
}

/** The sidecar bytes for `cases` (case names 0, 1, ...). Deterministic: same cases, same sha256. */
export function encodeTestVectorsNpz(cases: readonly RecordedCase[]): Buffer {
  if (cases.length > MAX_TEST_CASES) throw new RangeError(`${cases.length} test cases, at most ${MAX_TEST_CASES}`);
  const arrays: Record<string, NpyArray> = Object.create(null) as Record<string, NpyArray>;
  for (const [k, c] of cases.entries()) {
    for (const [name, t] of Object.entries(c.inputs)) arrays[`${k}.in.${name}`] = t;
    for (const [name, t] of Object.entries(c.outputs)) arrays[`${k}.out.${name}`] = t;
  }
  return writeNpz(arrays);
}

/** The manifest's `testVectorsFile` entry for sidecar `bytes` saved as `file`. */
export function testVectorsFileEntry(bytes: Uint8Array, file: string, tolerance: number): NonNullable<ManifestV2['testVectorsFile']> {
  return { file, sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, tolerance };
}

/** The shortest decimal that reads back as the same float32 (9 significant digits at most). */
export function shortestFloat32(x: number): number {
  if (!Number.isFinite(x)) return x;
  for (let p = 1; p < 9; p++) {
    const v = Number(x.toPrecision(p));
    if (Math.fround(v) === x) return v;
  }
  return Number(x.toPrecision(9));
}

/** Values of a recorded tensor for JSON: float32 at its shortest exact decimal, others as numbers. */
export function jsonValues(t: RecordedTensor): number[] {
  if (t.dtype === 'float32') return Array.from(t.data as Float32Array, shortestFloat32);
  return Array.from(numbersOf(t));
}

/** Inline `testVectors` for `cases`. Throws RangeError for values JSON cannot hold (NaN, ±Infinity). */
export function inlineTestVectorsOf(cases: readonly RecordedCase[], tolerance: number): TestVectorV2[] {
  return cases.map((c, k) => {
    const tensors = (r: Record<string, RecordedTensor>, what: string): TestVectorV2['inputs'] =>
      Object.fromEntries(
        Object.entries(r).map(([name, t]) => {
          const values = jsonValues(t);
          if (!values.every(Number.isFinite)) throw new RangeError(`case ${k} ${what} ${name} holds NaN or Infinity, which JSON cannot carry`);
          return [name, { dims: [...t.dims], values }];
        }),
      );
    return { inputs: tensors(c.inputs, 'input'), expected: tensors(c.outputs, 'output'), tolerance };
  });
}
