/**
 * The model manifest: the model, how to feed it, how to check it (ARCHITECTURE §7).
 * Written by scripts/make-models (and later by the hub's registry), read by the agent before
 * it loads a model. Signing fields are added by the release (see shared/signing.ts, later).
 */
import { z } from 'zod';
import { NameSchema } from './protocol.ts';

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

export const ManifestSchema = z
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
export type Manifest = z.infer<typeof ManifestSchema>;
