/**
 * Checks a loaded model's own metadata against its manifest before the model is activated
 * (ARCHITECTURE §7): input/output names, dtypes and shapes, and whether the preprocessing,
 * labels and test vectors the manifest describes can feed and read this model at all.
 * A manifest that lies about its model would otherwise fail on every sample, or, worse,
 * produce plausible garbage (e.g. an NHWC image fed to an NCHW model of square size).
 */
import type { Manifest, TensorSpec } from '../../shared/manifest.ts';
import type { ModelHandle, TensorMeta } from './engine.ts';

type Dim = number | string;

const fmt = (dims: readonly Dim[]): string => `[${dims.map((d) => (typeof d === 'number' ? String(d) : `'${d}'`)).join(', ')}]`;

/**
 * Compares a manifest shape with the model's. A fixed manifest dim is satisfied by the same
 * size or by a symbolic model dim (the model accepts any size); a symbolic manifest dim
 * promises callers a dynamic size, so the model must have a symbolic dim there too.
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
 * Returns every way the loaded model disagrees with its manifest, one sentence each;
 * an empty list means the model may be activated.
 */
export function checkModelAgainstManifest(handle: ModelHandle, manifest: Manifest): string[] {
  const out: string[] = [];
  const inSpec = manifest.inputs[0]!;
  const input: TensorMeta = { name: handle.inputName, type: handle.inputType, dims: handle.inputDims };
  if (inSpec.name !== handle.inputName) out.push(`input: named ${handle.inputName} in the model, ${inSpec.name} in the manifest`);
  out.push(...tensorProblems(`input ${inSpec.name}`, inSpec, input));

  for (const spec of manifest.outputs) {
    const meta = handle.outputs.find((o) => o.name === spec.name);
    if (!meta) out.push(`output ${spec.name}: not in the model (it has ${handle.outputNames.join(', ')})`);
    else out.push(...tensorProblems(`output ${spec.name}`, spec, meta));
  }
  for (const name of handle.outputNames) {
    if (!manifest.outputs.some((o) => o.name === name)) out.push(`output ${name}: in the model but not in the manifest`);
  }

  out.push(...preprocessProblems(manifest, input));

  const first = handle.outputs.find((o) => o.name === manifest.outputs[0]!.name);
  if (first) {
    const classes = first.dims.length ? fixedDim(first.dims, manifest.outputs[0]!.shape, first.dims.length - 1) : undefined;
    const labels = manifest.postprocessing.labels.length;
    if (classes !== undefined && classes !== labels) out.push(`postprocessing: ${labels} labels, output ${first.name} has ${classes} classes`);
  }

  const expectedLen = first ? perSample(first.dims) ?? perSample(manifest.outputs[0]!.shape) : undefined;
  for (const [i, tv] of manifest.testVectors.entries()) {
    const what = `test vector ${i}`;
    if (tv.shape[0] !== 1) out.push(`${what}: batch dim is ${tv.shape[0]}, must be 1`);
    out.push(...shapeProblems(what, tv.shape, handle.inputDims));
    if (expectedLen !== undefined && tv.expected.length !== expectedLen) {
      out.push(`${what}: expects ${tv.expected.length} output values, the model gives ${expectedLen} per sample`);
    }
  }
  return out;
}
