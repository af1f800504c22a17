/**
 * What a manifest-v2 demo model build is (issue #13), and the pieces the v2 builders share: ONNX
 * graphs with several inputs and outputs (builder.ts's buildModel takes one of each), dense
 * layers, percentiles. A build carries its bytes, its tensors and their sources, and two
 * callbacks run against an ORT session on those exact bytes by evaluate.ts's manifestV2For: one
 * measures the model on held-out synthetic data (and may calibrate a threshold), one makes the
 * test vectors.
 */
import type { InputSpecV2, ManifestV2, TensorSpecV2, TensorValues } from '../../shared/manifest.ts';
import type { TaskSpec } from '../../shared/tasks/specs.ts';
import type { GraphBuilder } from './onnx/builder.ts';
import { IR_VERSION, OPSET, valueInfo } from './onnx/builder.ts';
import { DataType, encodeModel } from './onnx/proto.ts';
import type { ModelMsg } from './onnx/proto.ts';
import type { Dense } from './train.ts';

/** Bumped whenever anything that changes the v2 models' bytes changes; make-models caches on it. */
export const V2_GENERATOR_VERSION = 'edgefleet-demo-models-v2/1';

/** Feeds or results by tensor name. */
export type Tensors = Record<string, TensorValues>;

/** A float32 model input for one call. */
export interface Feed {
  dims: number[];
  values: ArrayLike<number>;
}

/** Runs one call of the model under evaluation; returns every output as float32 values. */
export type RunFn = (feeds: Record<string, Feed>) => Promise<Record<string, { dims: number[]; data: Float32Array }>>;

/** What make-models reports about a v2 model beside the manifest. */
export interface Measured {
  evaluation: NonNullable<ManifestV2['evaluation']>;
  /** Task-specific figures (precision, recall, alarm rates, MAE...), for the report and the stamp. */
  metrics: Record<string, number>;
  /** Replaces the build's postprocessing (a threshold calibrated with ORT). */
  postprocessing?: TaskSpec;
  /** Appended to the build's description: the headline figures in words. */
  summary: string;
}

/** One test case: all inputs, and which outputs to record as expected. */
export interface TestCase {
  inputs: Tensors;
  /** Outputs to record; default all. */
  outputs?: string[];
}

/** Arrays for the sidecar test-vector file (npz) of a model whose inputs are too large for JSON. */
export interface LargeTestCase extends TestCase {
  name: string;
}

export interface ModelBuildV2 {
  name: string;
  quantization: 'fp32' | 'int8-qdq';
  task: TaskSpec['kind'];
  description: string;
  onnx: Uint8Array;
  inputs: InputSpecV2[];
  outputs: TensorSpecV2[];
  postprocessing: TaskSpec;
  evaluate(run: RunFn): Promise<Measured>;
  /** Small test cases, stored inline; state inputs may come from an earlier call of `run`. */
  testCases(run: RunFn): Promise<TestCase[]>;
  /** Test cases for the npz sidecar (too large for JSON); written only where shared/npz.ts exists. */
  largeTestCases?(run: RunFn): Promise<LargeTestCase[]>;
  /** Per-element tolerance for a case whose expected values are `expected`. */
  tolerance(expected: readonly number[]): number;
}

/** fp32 tolerance as the v1 models use it: 1e-4 relative to the largest magnitude (at least 1). */
export function fp32Tolerance(expected: readonly number[]): number {
  let m = 1;
  for (const v of expected) m = Math.max(m, Math.abs(v));
  return Number((1e-4 * m).toPrecision(2));
}

export interface ModelSpecV2 {
  graphName: string;
  docString: string;
  inputs: { name: string; shape: (number | string)[] }[];
  outputs: { name: string; shape: (number | string)[] }[];
  metadata: Record<string, string>;
}

/** Like builder.ts's buildModel, for float32 graphs with several inputs and outputs. */
export function buildModelV2(g: GraphBuilder, spec: ModelSpecV2): Uint8Array {
  const model: ModelMsg = {
    irVersion: IR_VERSION,
    producerName: 'edgefleet-make-models',
    producerVersion: V2_GENERATOR_VERSION,
    modelVersion: 1,
    docString: spec.docString,
    graph: {
      name: spec.graphName,
      node: g.nodes,
      initializer: g.initializers,
      input: spec.inputs.map((i) => valueInfo(i.name, DataType.FLOAT, i.shape)),
      output: spec.outputs.map((o) => valueInfo(o.name, DataType.FLOAT, o.shape)),
    },
    opsetImport: [{ domain: '', version: OPSET }],
    metadataProps: Object.entries(spec.metadata)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, value]) => ({ key, value })),
  };
  return encodeModel(model);
}

/** Gemm y = x·Wᵀ + b of a Dense layer (w[out][in]). */
export function gemmNode(g: GraphBuilder, x: string, name: string, d: Dense, out: string): string {
  const rows = d.w.length;
  const cols = d.w[0]?.length ?? 0;
  const w = g.init(`${name}_weight`, DataType.FLOAT, [rows, cols], d.w.flat());
  const b = g.init(`${name}_bias`, DataType.FLOAT, [rows], d.b);
  return g.node('Gemm', [x, w, b], out, { alpha: { float: 1 }, beta: { float: 1 }, transB: 1 });
}

/** The q-quantile (0..1) of values, linear between order statistics. */
export function quantile(values: readonly number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const pos = q * (s.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(s.length - 1, lo + 1);
  return (s[lo] as number) + ((s[hi] as number) - (s[lo] as number)) * (pos - lo);
}

export function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}
