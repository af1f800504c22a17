/**
 * The model manifest: the model, how to feed it, how to check it (ARCHITECTURE §7).
 * Written by scripts/make-models (and later by the hub's registry), read by the agent before
 * it loads a model. Signing fields are added by the release (see shared/signing.ts, later).
 */
import { z } from 'zod';
import { NameSchema } from './protocol.ts';
import { InputSourceSchema, TaskSpecSchema, TASKS } from './tasks/specs.ts';

export const TensorDtypeSchema = z.enum(['float32', 'uint8', 'int8', 'int64']);
export type TensorDtype = z.infer<typeof TensorDtypeSchema>;

/** A dimension is a fixed size or a symbolic name (e.g. `N` for a dynamic batch). */
export const DimSchema = z.union([z.number().int().positive(), z.string().min(1).max(32)]);

export const TensorSpecSchema = z.object({
  name: z.string().min(1).max(128),
  dtype: TensorDtypeSchema,
  shape: z.array(DimSchema).min(1).max(8),
});
export type TensorSpec = z.infer<typeof TensorSpecSchema>;

export const TabularPreprocessSchema = z.object({
  kind: z.literal('tabular'),
  /** Features in the order the model expects; input values are scaled as (x - mean) / std. */
  features: z
    .array(z.object({ name: NameSchema, mean: z.number(), std: z.number().positive() }))
    .min(1)
    .max(4096),
});

export const ImagePreprocessSchema = z.object({
  kind: z.literal('image'),
  width: z.number().int().positive().max(4096),
  height: z.number().int().positive().max(4096),
  fit: z.enum(['cover', 'contain', 'fill', 'inside', 'outside']).default('fill'),
  colour: z.enum(['gray', 'rgb', 'bgr']),
  layout: z.enum(['NCHW', 'NHWC']),
  dtype: z.enum(['float32', 'uint8', 'int8']),
  /** Applied after scaling pixel values by `scale`: (p * scale - mean[c]) / std[c]. */
  scale: z.number().positive().default(1 / 255),
  mean: z.array(z.number()).min(1).max(3),
  std: z.array(z.number().positive()).min(1).max(3),
});

export const PreprocessSchema = z.discriminatedUnion('kind', [TabularPreprocessSchema, ImagePreprocessSchema]);
export type Preprocess = z.infer<typeof PreprocessSchema>;
export type TabularPreprocess = z.infer<typeof TabularPreprocessSchema>;
export type ImagePreprocess = z.infer<typeof ImagePreprocessSchema>;

export const PostprocessSchema = z.object({
  /** What the first output holds per row: raw logits (softmax applied by the agent) or probabilities. */
  output: z.enum(['logits', 'probabilities']),
  labels: z.array(z.string().min(1).max(64)).min(2).max(10_000),
});
export type Postprocess = z.infer<typeof PostprocessSchema>;

/** Reference distribution of one numeric feature: counts over `edges` plus under/overflow. */
export const ReferenceBinsSchema = z.object({
  name: z.string().min(1).max(64),
  /** Strictly increasing interior edges; counts has edges.length + 1 entries. */
  edges: z.array(z.number()).min(1).max(256),
  counts: z.array(z.number().int().nonnegative()),
  mean: z.number(),
  std: z.number().nonnegative(),
});
export type ReferenceBins = z.infer<typeof ReferenceBinsSchema>;

export const TestVectorSchema = z.object({
  /** Model input tensor, flattened row-major, shape given with batch 1. */
  input: z.array(z.number()),
  shape: z.array(z.number().int().positive()),
  /** Expected first output, flattened. */
  expected: z.array(z.number()),
  /** Max absolute difference allowed per element. */
  tolerance: z.number().nonnegative(),
});
export type TestVector = z.infer<typeof TestVectorSchema>;

const SHA256 = z.string().regex(/^[0-9a-f]{64}$/, 'sha256: 64 lowercase hex digits');

export const ManifestV1Schema = z
  .object({
    manifestVersion: z.literal(1),
    name: NameSchema,
    version: z.string().regex(/^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$/, 'version: semver'),
    description: z.string().max(1000).optional(),
    task: z.literal('classification'),
    quantization: z.enum(['fp32', 'int8-qdq', 'int8-qoperator']),
    artifact: z.object({
      /** File name of the ONNX artifact, relative to the manifest. */
      file: z.string().regex(/^[A-Za-z0-9._-]+\.onnx$/),
      sha256: SHA256,
      size: z.number().int().positive(),
    }),
    inputs: z.array(TensorSpecSchema).length(1),
    outputs: z.array(TensorSpecSchema).min(1).max(8),
    preprocessing: PreprocessSchema,
    postprocessing: PostprocessSchema,
    drift: z
      .object({
        features: z.array(ReferenceBinsSchema).max(256),
        /** Reference rate of each predicted class, same order as labels. */
        classRates: z.array(z.number().nonnegative()).optional(),
      })
      .optional(),
    testVectors: z.array(TestVectorSchema).min(1).max(64),
    /** Accuracy measured by make-models on a held-out synthetic set. */
    evaluation: z.object({ dataset: z.string(), samples: z.number().int(), accuracy: z.number().min(0).max(1) }).optional(),
  })
  .superRefine((m, ctx) => {
    for (const [i, f] of (m.drift?.features ?? []).entries()) {
      if (f.counts.length !== f.edges.length + 1) {
        ctx.addIssue({ code: 'custom', path: ['drift', 'features', i, 'counts'], message: 'counts must have edges.length + 1 entries' });
      }
      for (let k = 1; k < f.edges.length; k++) {
        if (!((f.edges[k] as number) > (f.edges[k - 1] as number))) {
          ctx.addIssue({ code: 'custom', path: ['drift', 'features', i, 'edges'], message: 'edges must be strictly increasing' });
          break;
        }
      }
    }
    for (const [i, tv] of m.testVectors.entries()) {
      const n = tv.shape.reduce((a, b) => a * b, 1);
      if (n !== tv.input.length) {
        ctx.addIssue({ code: 'custom', path: ['testVectors', i, 'input'], message: `input has ${tv.input.length} values, shape says ${n}` });
      }
    }
  });
export type ManifestV1 = z.infer<typeof ManifestV1Schema>;

// ------------------------------------------------------------------------------ manifest v2

/** Every element type manifest v2 can describe (ORT's names). */
export const TensorDtypeV2Schema = z.enum(['float32', 'float16', 'uint8', 'int8', 'int32', 'int64', 'bool']);
export type TensorDtypeV2 = z.infer<typeof TensorDtypeV2Schema>;

export const TensorSpecV2Schema = z.object({
  name: z.string().min(1).max(128),
  dtype: TensorDtypeV2Schema,
  shape: z.array(DimSchema).min(0).max(5),
});
export type TensorSpecV2 = z.infer<typeof TensorSpecV2Schema>;

/** A model input and where its values come from on every call. */
export const InputSpecV2Schema = TensorSpecV2Schema.extend({ source: InputSourceSchema });
export type InputSpecV2 = z.infer<typeof InputSpecV2Schema>;

/** Values of one tensor, flattened row-major. */
export const TensorValuesSchema = z.object({
  dims: z.array(z.number().int().nonnegative()).max(5),
  values: z.array(z.number()),
});
export type TensorValues = z.infer<typeof TensorValuesSchema>;

/**
 * A test vector of a v2 model: every model input as fed (after preprocessing), and the expected
 * values of some outputs. A model state input is given like any other.
 */
export const TestVectorV2Schema = z.object({
  inputs: z.record(z.string().min(1).max(128), TensorValuesSchema),
  expected: z.record(z.string().min(1).max(128), TensorValuesSchema),
  tolerance: z.number().nonnegative(),
});
export type TestVectorV2 = z.infer<typeof TestVectorV2Schema>;

/**
 * Test vectors too large for JSON (a 640×640 image is 1.2 M floats) live beside the manifest:
 * an .npz (or .npy-per-array zip) whose arrays are named `<case>.in.<input>` and
 * `<case>.out.<output>`, checked by size and sha256 like the artifact.
 */
export const TestVectorsFileSchema = z.object({
  file: z.string().regex(/^[A-Za-z0-9._-]+\.npz$/),
  sha256: SHA256,
  size: z.number().int().positive(),
  tolerance: z.number().nonnegative(),
});

export const ManifestV2Schema = z
  .object({
    manifestVersion: z.literal(2),
    name: NameSchema,
    version: ManifestV1Schema.shape.version,
    description: z.string().max(1000).optional(),
    task: z.enum(TASKS),
    quantization: z.enum(['fp32', 'fp16', 'int8-qdq', 'int8-qoperator']),
    artifact: ManifestV1Schema.shape.artifact,
    inputs: z.array(InputSpecV2Schema).min(1).max(16),
    outputs: z.array(TensorSpecV2Schema).min(1).max(64),
    postprocessing: TaskSpecSchema,
    drift: ManifestV1Schema.shape.drift,
    testVectors: z.array(TestVectorV2Schema).max(64).default([]),
    testVectorsFile: TestVectorsFileSchema.optional(),
    evaluation: ManifestV1Schema.shape.evaluation,
  })
  .superRefine((m, ctx) => {
    const issue = (path: (string | number)[], message: string): void => ctx.addIssue({ code: 'custom', path, message });
    if (m.postprocessing.kind !== m.task) issue(['postprocessing', 'kind'], `is ${m.postprocessing.kind}, the task is ${m.task}`);
    if (m.testVectors.length === 0 && !m.testVectorsFile) issue(['testVectors'], 'at least one test vector (inline or testVectorsFile) is required');
    const inputs = new Set(m.inputs.map((i) => i.name));
    const outputs = new Set(m.outputs.map((o) => o.name));
    if (inputs.size !== m.inputs.length) issue(['inputs'], 'input names must be unique');
    if (outputs.size !== m.outputs.length) issue(['outputs'], 'output names must be unique');
    const primary = m.inputs.filter((i) => ['image', 'reading', 'window'].includes(i.source.kind));
    const kinds = new Set(primary.map((i) => i.source.kind));
    if (kinds.size > 1) issue(['inputs'], `one kind of request input per model, this one mixes ${[...kinds].join(' and ')}`);
    if (primary.length > 1) issue(['inputs'], `one input may take the request (image, reading or window); ${primary.map((i) => i.name).join(', ')} all do`);
    for (const [i, inp] of m.inputs.entries()) {
      const src = inp.source;
      if (src.kind === 'state' && !outputs.has(src.output)) issue(['inputs', i, 'source', 'output'], `state comes from output ${src.output}, which the manifest does not declare`);
      if (src.kind === 'constant') {
        const n = inp.shape.reduce<number>((a, d) => a * (typeof d === 'number' ? d : 1), 1);
        if (n !== src.values.length) issue(['inputs', i, 'source', 'values'], `${src.values.length} values for shape [${inp.shape.join(', ')}] (${n} elements)`);
      }
    }
    const post = m.postprocessing;
    const named = (path: (string | number)[], name: string | undefined): void => {
      if (name !== undefined && !outputs.has(name)) issue(path, `output ${name} is not declared in outputs`);
    };
    switch (post.kind) {
      case 'classification':
      case 'segmentation':
        named(['postprocessing', 'output'], post.output);
        break;
      case 'detection':
        for (const k of ['output', 'boxes', 'scores', 'classes', 'count'] as const) named(['postprocessing', k], post[k]);
        if (post.decoder === 'ssd' && (!post.anchors || !post.boxes || !post.scores)) issue(['postprocessing'], 'the ssd decoder needs boxes, scores and anchors');
        if (post.decoder === 'nms' && (!post.boxes || !post.scores)) issue(['postprocessing'], 'the nms decoder needs boxes and scores (and classes for several labels)');
        if (post.decoder === 'decoded' && (!post.boxes || !post.scores)) issue(['postprocessing'], 'the decoded decoder needs boxes and scores');
        for (const c of post.ignoreClasses ?? []) if (c >= post.labels.length) issue(['postprocessing', 'ignoreClasses'], `class ${c} is beyond the ${post.labels.length} labels`);
        break;
      case 'regression':
        for (const [k, t] of post.targets.entries()) named(['postprocessing', 'targets', k, 'output'], t.output);
        break;
      case 'anomaly':
        named(['postprocessing', 'output'], post.output);
        if (post.reconstructs !== undefined && !inputs.has(post.reconstructs)) issue(['postprocessing', 'reconstructs'], `input ${post.reconstructs} is not declared in inputs`);
        break;
      case 'embedding':
        for (const [k, o] of post.outputs.entries()) named(['postprocessing', 'outputs', k], o);
        break;
    }
    for (const [i, tv] of m.testVectors.entries()) {
      for (const [name, t] of Object.entries(tv.inputs)) {
        if (!inputs.has(name)) issue(['testVectors', i, 'inputs', name], `no input ${name}`);
        const n = t.dims.reduce((a, b) => a * b, 1);
        if (n !== t.values.length) issue(['testVectors', i, 'inputs', name], `${t.values.length} values, dims say ${n}`);
      }
      for (const name of inputs) if (!(name in tv.inputs)) issue(['testVectors', i, 'inputs'], `input ${name} missing`);
      for (const name of Object.keys(tv.expected)) if (!outputs.has(name)) issue(['testVectors', i, 'expected', name], `no output ${name}`);
    }
  });
export type ManifestV2 = z.infer<typeof ManifestV2Schema>;

/** Either manifest version; v1 manifests (one input, classification) keep working unchanged. */
export const ManifestSchema = z.discriminatedUnion('manifestVersion', [ManifestV1Schema, ManifestV2Schema]);
export type Manifest = ManifestV1 | ManifestV2;
