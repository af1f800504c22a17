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
import type { InputSpecV2, Manifest, ManifestV1, ManifestV2, TensorSpecV2 } from './manifest.ts';
import { modelSpec } from './model-spec.ts';

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

function tensorProblems(what: string, spec: Pick<TensorSpecV2, 'dtype' | 'shape'>, meta: TensorMeta): string[] {
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

function preprocessProblems(m: ManifestV1, input: TensorMeta): string[] {
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
  return manifest.manifestVersion === 1 ? checkV1(meta, manifest) : checkV2(meta, manifest);
}

function checkV1(meta: ModelMetadata, manifest: ManifestV1): string[] {
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
export function testVectorProblems(manifest: Manifest, actual: readonly (readonly number[] | Readonly<Record<string, readonly number[]>> | undefined)[]): string[] {
  const spec = modelSpec(manifest);
  const cases = spec.testVectors.map((tv, i) => ({
    label: `test vector ${i}`,
    expected: Object.fromEntries(Object.entries(tv.expected).map(([name, t]) => [name, { data: t.values }])),
    tolerance: tv.tolerance,
  }));
  // A v1 manifest has one output: its messages name the vector only.
  return caseProblems(cases, actual, manifest.manifestVersion === 1 ? 'vector' : 'output');
}

/** A test case as far as checking its outputs goes. */
export interface CheckedCase {
  label: string;
  expected: Readonly<Record<string, { data: ArrayLike<number> }>>;
  tolerance: number;
}

/**
 * How `actual` (per case: every output by name, or the one output's values; undefined = the
 * run failed) differs from the cases' expected outputs, each within the case's tolerance.
 * `naming` 'vector' names a single-output case by its label alone.
 */
export function caseProblems(
  cases: readonly CheckedCase[],
  actual: readonly (readonly number[] | Readonly<Record<string, readonly number[]>> | undefined)[],
  naming: 'vector' | 'output' = 'output',
): string[] {
  const out: string[] = [];
  for (const [i, c] of cases.entries()) {
    const got = actual[i];
    if (!got) {
      out.push(`${c.label}: the model could not run it`);
      continue;
    }
    const entries = Object.entries(c.expected);
    for (const [name, want] of entries) {
      const values = Array.isArray(got) ? (got as readonly number[]) : (got as Readonly<Record<string, readonly number[]>>)[name];
      const what = entries.length > 1 || naming === 'output' ? `${c.label} output ${name}` : c.label;
      if (!values) {
        out.push(`${what}: the model gave no such output`);
        continue;
      }
      if (values.length !== want.data.length) {
        out.push(`${what}: the model gave ${values.length} values, ${want.data.length} expected`);
        continue;
      }
      // `!(d <= tol)` so a NaN output counts as a miss.
      let bad = -1;
      for (let k = 0; k < want.data.length; k++) {
        if (!(Math.abs((values[k] as number) - (want.data[k] as number)) <= c.tolerance)) {
          bad = k;
          break;
        }
      }
      if (bad >= 0) out.push(`${what}: value ${bad} is ${values[bad]}, expected ${want.data[bad]} ± ${c.tolerance}`);
    }
  }
  return out;
}

/** Channels of an image source. */
const imageChannelCount = (colour: string): number => (colour === 'gray' ? 1 : colour === 'rgba' ? 4 : 3);

/** Problems of one v2 input's source against the model's tensor. */
function sourceProblems(spec: InputSpecV2, meta: TensorMeta, outputs: readonly TensorMeta[]): string[] {
  const src = spec.source;
  const dims = meta.dims;
  const what = `input ${spec.name} (${src.kind})`;
  const out: string[] = [];
  const fixed = (i: number): number | undefined => fixedDim(dims, spec.shape, i);
  switch (src.kind) {
    case 'image': {
      if (dims.length !== 4) return [`${what}: an ${src.layout} image input must have rank 4, the model's is ${fmt(dims)}`];
      const [c, h, w] = src.layout === 'NCHW' ? [1, 2, 3] : [3, 1, 2];
      const channels = imageChannelCount(src.colour);
      if (fixed(c) !== undefined && fixed(c) !== channels) out.push(`${what}: ${channels} channel(s) (${src.colour}), the model's dim ${c} is ${fixed(c)}`);
      if (!src.dynamic) {
        if (fixed(h) !== undefined && fixed(h) !== src.height) out.push(`${what}: height ${src.height}, the model's dim ${h} is ${fixed(h)}`);
        if (fixed(w) !== undefined && fixed(w) !== src.width) out.push(`${what}: width ${src.width}, the model's dim ${w} is ${fixed(w)}`);
      } else if (typeof dims[h] === 'number' || typeof dims[w] === 'number') out.push(`${what}: dynamic sizes, but the model's height/width are fixed ${fmt(dims)}`);
      if (!['float32', 'float16', 'uint8', 'int8'].includes(meta.type)) out.push(`${what}: pixels cannot feed a ${meta.type} tensor`);
      for (const [name, arr] of [['mean', src.mean] as const, ['std', src.std] as const]) {
        if (arr.length !== 1 && arr.length !== channels) out.push(`${what}: ${name} has ${arr.length} values for ${channels} channel(s)`);
      }
      return out;
    }
    case 'reading': {
      const width = dims.length ? fixed(dims.length - 1) : undefined;
      if (width !== undefined && width !== src.features.length) out.push(`${what}: ${src.features.length} features, the model's last dim is ${width}`);
      return out;
    }
    case 'window': {
      const f = src.features.length;
      if (src.derive) {
        const n = (src.derive.stats.length + src.derive.fftBands) * f;
        const width = dims.length ? fixed(dims.length - 1) : undefined;
        if (width !== undefined && width !== n) out.push(`${what}: derives ${n} features, the model's last dim is ${width}`);
        return out;
      }
      const want = src.layout === 'TF' ? [src.size, f] : src.layout === 'FT' ? [f, src.size] : [src.size];
      const tail = dims.slice(dims.length - want.length);
      for (const [k, d] of want.entries()) {
        const got = typeof tail[k] === 'number' ? tail[k] : undefined;
        if (got !== undefined && got !== d) out.push(`${what}: layout ${src.layout} gives ${fmt(want)}, the model's ${fmt(dims)}`);
      }
      return [...new Set(out)];
    }
    case 'constant': {
      const n = perSampleAll(dims, spec.shape);
      if (n !== undefined && n !== src.values.length) out.push(`${what}: ${src.values.length} values, the model's input takes ${n}`);
      return out;
    }
    case 'state': {
      const o = outputs.find((x) => x.name === src.output);
      if (!o) return [`${what}: fed back from output ${src.output}, which the model does not have`];
      if (o.type !== meta.type) out.push(`${what}: output ${src.output} is ${o.type}, the input ${meta.type}`);
      const a = perSampleAll(dims, spec.shape);
      const b = perSampleAll(o.dims, []);
      if (a !== undefined && b !== undefined && a !== b) out.push(`${what}: output ${src.output} has ${b} values, the input takes ${a}`);
      return out;
    }
    case 'upstream':
      return out;
  }
}

/** Elements of a whole tensor (every dim), or undefined if a dim is symbolic in both. */
function perSampleAll(model: readonly Dim[], manifest: readonly Dim[]): number | undefined {
  let n = 1;
  for (let i = 0; i < model.length; i++) {
    const d = fixedDim(model, manifest, i);
    if (d === undefined) return undefined;
    n *= d;
  }
  return n;
}

function checkV2(meta: ModelMetadata, manifest: ManifestV2): string[] {
  const out: string[] = [];
  const inputNames = meta.inputs.map((i) => i.name);
  for (const spec of manifest.inputs) {
    const m = meta.inputs.find((i) => i.name === spec.name);
    if (!m) {
      out.push(`input ${spec.name}: not in the model (it has ${inputNames.join(', ') || 'none'})`);
      continue;
    }
    out.push(...tensorProblems(`input ${spec.name}`, spec, m));
    out.push(...sourceProblems(spec, m, meta.outputs));
  }
  for (const name of inputNames) if (!manifest.inputs.some((i) => i.name === name)) out.push(`input ${name}: in the model but not in the manifest`);
  const outputNames = meta.outputs.map((o) => o.name);
  for (const spec of manifest.outputs) {
    const m = meta.outputs.find((o) => o.name === spec.name);
    if (!m) out.push(`output ${spec.name}: not in the model (it has ${outputNames.join(', ')})`);
    else out.push(...tensorProblems(`output ${spec.name}`, spec, m));
  }
  for (const name of outputNames) if (!manifest.outputs.some((o) => o.name === name)) out.push(`output ${name}: in the model but not in the manifest`);
  const post = manifest.postprocessing;
  if (post.kind === 'classification') {
    const o = meta.outputs.find((x) => x.name === (post.output ?? manifest.outputs[0]!.name));
    const spec = manifest.outputs.find((x) => x.name === o?.name);
    const classes = o && o.dims.length ? fixedDim(o.dims, spec?.shape ?? [], o.dims.length - 1) : undefined;
    if (classes !== undefined && classes !== post.labels.length) out.push(`postprocessing: ${post.labels.length} labels, output ${o!.name} has ${classes} classes`);
  }
  if (post.kind === 'detection' && (post.decoder === 'yolov5' || post.decoder === 'yolov8')) {
    const o = meta.outputs.find((x) => x.name === (post.output ?? manifest.outputs[0]!.name));
    if (o && o.dims.length === 3) {
      const d = post.decoder === 'yolov8' ? o.dims[1] : o.dims[2];
      const want = post.labels.length + (post.decoder === 'yolov8' ? 4 : 5);
      if (typeof d === 'number' && d !== want) out.push(`postprocessing: ${post.decoder} with ${post.labels.length} labels needs ${want} values per candidate, output ${o.name} has ${d}`);
    } else if (o) out.push(`postprocessing: ${post.decoder} needs a rank-3 output, ${o.name} is ${fmt(o.dims)}`);
  }
  for (const [i, tv] of manifest.testVectors.entries()) {
    for (const [name, t] of Object.entries(tv.inputs)) {
      const m = meta.inputs.find((x) => x.name === name);
      if (m) out.push(...shapeProblems(`test vector ${i} input ${name}`, t.dims, m.dims));
    }
    for (const [name, t] of Object.entries(tv.expected)) {
      const m = meta.outputs.find((x) => x.name === name);
      const n = m ? perSampleAll(m.dims, manifest.outputs.find((o) => o.name === name)?.shape ?? []) : undefined;
      if (n !== undefined && n !== t.values.length) out.push(`test vector ${i} output ${name}: expects ${t.values.length} values, the model gives ${n}`);
    }
  }
  return out;
}
