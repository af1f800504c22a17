/**
 * Compares a model's own metadata (what onnxruntime reports after loading it) with its manifest
 * (ARCHITECTURE §7): input/output names, dtypes and shapes, and whether the preprocessing,
 * labels and test vectors can feed and read this model at all. Shared because both ends check:
 * the hub before it signs a release, the agent before it activates one. A manifest that lies
 * about its model would otherwise fail on every sample or, worse, produce plausible garbage.
 *
 * Pure functions over plain data: no onnxruntime import here, the caller loads the model
 * (in a child process or worker) and passes the metadata in.
 */
import type { Manifest, TensorSpec } from './manifest.ts';

type Dim = number | string;

/** A tensor as the model declares it; a dim is a size or a symbolic name (e.g. `N`). */
export interface TensorMeta {
  name: string;
  /** ORT tensor type name: 'float32', 'uint8', 'int8', 'int64', ... */
  type: string;
  dims: Dim[];
}

export interface ModelMetadata {
  inputs: TensorMeta[];
  outputs: TensorMeta[];
}

const fmt = (dims: readonly Dim[]): string => `[${dims.map((d) => (typeof d === 'number' ? String(d) : `'${d}'`)).join(', ')}]`;

/**
 * A fixed manifest dim is satisfied by the same size or by a symbolic model dim (the model
 * accepts any size); a symbolic manifest dim promises callers a dynamic size, so the model must
 * have a symbolic dim there too.
 */
function shapeProblems(what: string, manifest: readonly Dim[], model: readonly Dim[]): string[] {
  if (manifest.length !== model.length) {
    return [`${what}: manifest shape ${fmt(manifest)} has rank ${manifest.length}, the model's ${fmt(model)} has rank ${model.length}`];
  }
  const out: string[] = [];
  for (const [i, want] of manifest.entries()) {
    const got = model[i]!;
    if (typeof want === 'number' && typeof got === 'number' && want !== got) {
      out.push(`${what}: dim ${i} is ${got} in the model, ${want} in the manifest`);
    } else if (typeof want === 'string' && typeof got === 'number') {
      out.push(`${what}: dim ${i} is dynamic ('${want}') in the manifest but fixed at ${got} in the model`);
    }
  }
  return out;
}

function tensorProblems(what: string, spec: TensorSpec, meta: TensorMeta): string[] {
  const out: string[] = [];
  if (spec.dtype !== meta.type) out.push(`${what}: dtype is ${meta.type} in the model, ${spec.dtype} in the manifest`);
  out.push(...shapeProblems(what, spec.shape, meta.dims));
  return out;
}

/** A model dim that is fixed, or the manifest's fixed dim where the model's is symbolic. */
function fixedDim(model: readonly Dim[], manifest: readonly Dim[], i: number): number | undefined {
  const a = model[i];
  if (typeof a === 'number') return a;
  const b = manifest[i];
  return typeof b === 'number' ? b : undefined;
}

function preprocessProblems(m: Manifest, input: TensorMeta): string[] {
  const out: string[] = [];
  const spec = m.preprocessing;
  const shape = m.inputs[0]!.shape;
  const dims = input.dims;
  if (spec.kind === 'tabular') {
    if (dims.length !== 2) return [`preprocessing: tabular input must be [batch, features], the model's input is ${fmt(dims)}`];
    const width = fixedDim(dims, shape, 1);
    if (width !== undefined && width !== spec.features.length) {
      out.push(`preprocessing: ${spec.features.length} features, the model's input takes ${width}`);
    }
    if (input.type !== 'float32') out.push(`preprocessing: tabular features are float32, the model's input is ${input.type}`);
    return out;
  }
  const channels = spec.colour === 'gray' ? 1 : 3;
  if (dims.length !== 4) return [`preprocessing: ${spec.layout} image input must have rank 4, the model's input is ${fmt(dims)}`];
  const [c, h, w] = spec.layout === 'NCHW' ? [1, 2, 3] : [3, 1, 2];
  const check = (i: number, want: number, what: string): void => {
    const got = fixedDim(dims, shape, i);
    if (got !== undefined && got !== want) out.push(`preprocessing: ${what} is ${want}, the model's input dim ${i} (${spec.layout}) is ${got}`);
  };
  check(c, channels, `channels (${spec.colour})`);
  check(h, spec.height, 'height');
  check(w, spec.width, 'width');
  if (spec.dtype !== input.type) out.push(`preprocessing: produces ${spec.dtype}, the model's input is ${input.type}`);
  for (const [name, arr] of [['mean', spec.mean] as const, ['std', spec.std] as const]) {
    if (arr.length !== 1 && arr.length !== channels) out.push(`preprocessing: ${name} has ${arr.length} values for ${channels} channel(s)`);
  }
  return out;
}

/** Elements per sample of a shape (batch dim counted as 1), or undefined if a dim is symbolic. */
function perSample(dims: readonly Dim[]): number | undefined {
  let n = 1;
  for (const [i, d] of dims.entries()) {
    if (i === 0) continue;
    if (typeof d !== 'number') return undefined;
    n *= d;
  }
  return n;
}

/**
 * Every way the model's metadata disagrees with its manifest, one sentence each; an empty list
 * means the manifest describes this model. Sentences match agent/runtime/session-check.ts.
 */
export function checkModelMetadata(meta: ModelMetadata, manifest: Manifest): string[] {
  const input = meta.inputs[0];
  if (meta.inputs.length !== 1 || !input) {
    return [`input: the model has ${meta.inputs.length} inputs (${meta.inputs.map((i) => i.name).join(', ') || 'none'}), exactly one is supported`];
  }
  const out: string[] = [];
  const inSpec = manifest.inputs[0]!;
  if (inSpec.name !== input.name) out.push(`input: named ${input.name} in the model, ${inSpec.name} in the manifest`);
  out.push(...tensorProblems(`input ${inSpec.name}`, inSpec, input));

  const outputNames = meta.outputs.map((o) => o.name);
  for (const spec of manifest.outputs) {
    const m = meta.outputs.find((o) => o.name === spec.name);
    if (!m) out.push(`output ${spec.name}: not in the model (it has ${outputNames.join(', ')})`);
    else out.push(...tensorProblems(`output ${spec.name}`, spec, m));
  }
  for (const name of outputNames) {
    if (!manifest.outputs.some((o) => o.name === name)) out.push(`output ${name}: in the model but not in the manifest`);
  }

  out.push(...preprocessProblems(manifest, input));

  const first = meta.outputs.find((o) => o.name === manifest.outputs[0]!.name);
  if (first) {
    const classes = first.dims.length ? fixedDim(first.dims, manifest.outputs[0]!.shape, first.dims.length - 1) : undefined;
    const labels = manifest.postprocessing.labels.length;
    if (classes !== undefined && classes !== labels) out.push(`postprocessing: ${labels} labels, output ${first.name} has ${classes} classes`);
  }

  const expectedLen = first ? (perSample(first.dims) ?? perSample(manifest.outputs[0]!.shape)) : undefined;
  for (const [i, tv] of manifest.testVectors.entries()) {
    const what = `test vector ${i}`;
    if (tv.shape[0] !== 1) out.push(`${what}: batch dim is ${tv.shape[0]}, must be 1`);
    out.push(...shapeProblems(what, tv.shape, input.dims));
    if (expectedLen !== undefined && tv.expected.length !== expectedLen) {
      out.push(`${what}: expects ${tv.expected.length} output values, the model gives ${expectedLen} per sample`);
    }
  }
  return out;
}

/**
 * Compares what the model produced for each test vector (its first manifest output, flattened)
 * with the expected values; `actual[i]` undefined means that vector could not be run.
 */
export function testVectorProblems(manifest: Manifest, actual: readonly (readonly number[] | undefined)[]): string[] {
  const out: string[] = [];
  for (const [i, tv] of manifest.testVectors.entries()) {
    const got = actual[i];
    if (!got) {
      out.push(`test vector ${i}: the model could not run it`);
      continue;
    }
    if (got.length !== tv.expected.length) {
      out.push(`test vector ${i}: the model gave ${got.length} values, ${tv.expected.length} expected`);
      continue;
    }
    // `!(d <= tol)` so a NaN output counts as a miss.
    const bad = tv.expected.findIndex((want, k) => !(Math.abs((got[k] as number) - want) <= tv.tolerance));
    if (bad >= 0) out.push(`test vector ${i}: value ${bad} is ${got[bad]}, expected ${tv.expected[bad]} ± ${tv.tolerance}`);
  }
  return out;
}
