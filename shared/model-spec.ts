/**
 * One view of a model for everything that runs or checks it, whatever its manifest version:
 * v1 manifests (one input, `preprocessing`, a softmax classifier) are read as the v2 model they
 * describe — a single input fed from a reading or an image, classification postprocessing — so
 * the agent, the probe and the hub's checks have one code path per task, and v1 files keep
 * working unchanged (issue #13).
 */
import type { ImagePreprocess, InputSpecV2, Manifest, ManifestV2, TensorSpecV2 } from './manifest.ts';
import type { ImageSource, InputSource, TaskSpec } from './tasks/specs.ts';
import type { Task } from './tasks/specs.ts';

function featureNames(primary: InputSpecV2 | undefined): string[] {
  const src = primary?.source;
  return src && (src.kind === 'reading' || src.kind === 'window') ? src.features.map((f) => f.name) : [];
}

export interface ModelSpec {
  task: Task;
  inputs: InputSpecV2[];
  outputs: TensorSpecV2[];
  post: TaskSpec;
  /** The input fed from the request (image, reading or window); undefined for a model fed only by constants/state/upstream. */
  primary: InputSpecV2 | undefined;
  /** Class names of classification, detection and segmentation; empty for other tasks. */
  labels: string[];
  /** Inputs fed back from the model's own outputs. */
  stateInputs: InputSpecV2[];
  /** Inline test vectors, every input by name (v1: the one input; expected: the first output). */
  testVectors: SpecTestVector[];
  /** Reading/window feature names of the request input, in model order; [] for images. */
  featureNames: string[];
}

export interface SpecTestVector {
  inputs: Record<string, { dims: number[]; values: number[] }>;
  expected: Record<string, { dims: number[]; values: number[] }>;
  tolerance: number;
}

const cache = new WeakMap<Manifest, ModelSpec>();

function v1Image(p: ImagePreprocess): ImageSource {
  return { kind: 'image', width: p.width, height: p.height, fit: p.fit, pad: 0, colour: p.colour, layout: p.layout, scale: p.scale, mean: p.mean, std: p.std };
}

function labelsOf(post: TaskSpec): string[] {
  return post.kind === 'classification' || post.kind === 'detection' || post.kind === 'segmentation' ? post.labels : [];
}

/** The request-fed input of a v2 model. */
export function primaryInput(inputs: readonly InputSpecV2[]): InputSpecV2 | undefined {
  return inputs.find((i) => i.source.kind === 'image' || i.source.kind === 'reading' || i.source.kind === 'window');
}

function build(m: Manifest): ModelSpec {
  if (m.manifestVersion === 1) {
    const input = m.inputs[0]!;
    const source: InputSource = m.preprocessing.kind === 'image' ? v1Image(m.preprocessing) : { kind: 'reading', features: m.preprocessing.features };
    const spec: InputSpecV2 = { ...input, source };
    const post: TaskSpec = { kind: 'classification', output: m.outputs[0]!.name, activation: m.postprocessing.output, labels: m.postprocessing.labels };
    const out = m.outputs[0]!.name;
    const testVectors = m.testVectors.map((tv) => ({
      inputs: { [input.name]: { dims: tv.shape, values: tv.input } },
      expected: { [out]: { dims: [], values: tv.expected } },
      tolerance: tv.tolerance,
    }));
    return { task: 'classification', inputs: [spec], outputs: m.outputs, post, primary: spec, labels: post.labels, stateInputs: [], testVectors, featureNames: featureNames(spec) };
  }
  return fromV2(m);
}

function fromV2(m: ManifestV2): ModelSpec {
  return {
    task: m.task,
    inputs: m.inputs,
    outputs: m.outputs,
    post: m.postprocessing,
    primary: primaryInput(m.inputs),
    labels: labelsOf(m.postprocessing),
    stateInputs: m.inputs.filter((i) => i.source.kind === 'state'),
    testVectors: m.testVectors,
    featureNames: featureNames(primaryInput(m.inputs)),
  };
}

/** The model's normalized spec (computed once per parsed manifest). */
export function modelSpec(m: Manifest): ModelSpec {
  let s = cache.get(m);
  if (!s) {
    s = build(m);
    cache.set(m, s);
  }
  return s;
}

/** Class labels of a manifest of either version ([] for tasks without classes). */
export function manifestLabels(m: Manifest): string[] {
  return modelSpec(m).labels;
}

/**
 * The input the engine's `data` feeds: the request input, else a chain stage's first upstream
 * input, else the first (pool.ts LoadOptions.primaryInput).
 */
export function engineInput(spec: ModelSpec): string {
  return (spec.primary ?? spec.inputs.find((i) => i.source.kind === 'upstream') ?? spec.inputs[0]!).name;
}

/** The output a task reads first (classification scores, a yolo prediction, ...): named, else the first. */
export function mainOutput(spec: ModelSpec): string {
  const p = spec.post;
  const named = p.kind === 'regression' ? p.targets[0]?.output : p.kind === 'embedding' ? p.outputs[0] : p.kind === 'detection' ? (p.output ?? p.boxes) : p.output;
  return named ?? spec.outputs[0]!.name;
}
