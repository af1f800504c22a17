/**
 * Manifest v2's per-task pieces (issue #13): where each model input comes from (its *source*) and
 * how the outputs are read (its *postprocessing*, one shape per task). shared/manifest.ts puts
 * them together; the agent's preprocess/ and postprocess/ modules implement them. Kept apart
 * from the manifest so each implementation imports only the spec it serves.
 */
import { z } from 'zod';
import { NameSchema } from '../ids.ts';

const Label = z.string().min(1).max(64);
const TensorName = z.string().min(1).max(128);

// ---------------------------------------------------------------------------- input sources

/** Scaled numeric feature: (x - mean) / std. */
export const FeatureSchema = z.object({ name: NameSchema, mean: z.number().default(0), std: z.number().positive().default(1) });
export type Feature = z.infer<typeof FeatureSchema>;

/**
 * An encoded image (JPEG, PNG, WebP, ...) decoded and resized by sharp. `letterbox` keeps the
 * aspect ratio and pads with `pad` (Ultralytics uses 114), so boxes can be mapped back to the
 * original pixels; `dynamic` lets a model with symbolic H/W take the image at its own size,
 * rounded up to `multiple` and capped at `maxSide`.
 */
export const ImageSourceSchema = z.object({
  kind: z.literal('image'),
  width: z.number().int().positive().max(4096),
  height: z.number().int().positive().max(4096),
  fit: z.enum(['fill', 'cover', 'contain', 'inside', 'outside', 'letterbox']).default('fill'),
  /** Pad value (0-255, every channel) for `letterbox` and `contain`. */
  pad: z.number().int().min(0).max(255).default(114),
  colour: z.enum(['gray', 'rgb', 'bgr', 'rgba']),
  layout: z.enum(['NCHW', 'NHWC']),
  /** Applied after scaling pixel values by `scale`: (p * scale - mean[c]) / std[c]. */
  scale: z.number().positive().default(1 / 255),
  mean: z.array(z.number()).min(1).max(4).default([0]),
  std: z.array(z.number().positive()).min(1).max(4).default([1]),
  dynamic: z.object({ multiple: z.number().int().positive().max(256).default(32), maxSide: z.number().int().positive().max(4096) }).optional(),
});
export type ImageSource = z.infer<typeof ImageSourceSchema>;

/** One JSON reading `{features: {...}}` or `{values: [...]}`, scaled per feature. */
export const ReadingSourceSchema = z.object({
  kind: z.literal('reading'),
  features: z.array(FeatureSchema).min(1).max(4096),
});
export type ReadingSource = z.infer<typeof ReadingSourceSchema>;

/** Summary statistics computed per channel over a window, in preprocessing. */
export const WindowStatSchema = z.enum(['mean', 'std', 'rms', 'peak', 'min', 'max', 'crest']);

/** Elements of one window (size × features): 1 Mi, a 4 MiB float32 tensor and an 8 MiB ring per stream. */
export const MAX_WINDOW_ELEMENTS = 1 << 20;

/**
 * Readings of one stream accumulated into a sliding window of `size` readings, emitted every
 * `hop` readings (hop > size skips readings between windows). A gap longer than `maxGapMs`
 * between readings (by their `ts`) or a reading out of order resets the window. `layout` is the
 * tensor's order: [1, T, F] (`TF`), [1, F, T] (`FT`) or [1, T] (`T`, one feature), each value
 * scaled as (x - mean) / std of its feature.
 *
 * With `derive`, the window is reduced to features instead, computed from the scaled values
 * (leave mean 0 / std 1 to derive from raw readings), giving a [1, F·S + F·B] tensor: first the
 * named statistics per channel (c0.s0, c0.s1, ..., c1.s0, ...), then `fftBands` band energies per
 * channel (c0.b0, ..., c1.b0, ...). `std` is the population std (ddof 0), `peak` max |x|,
 * `crest` peak / rms (0 when rms is 0). The band energies, in numpy, with N = size, M the next
 * power of two ≥ N, K = M / 2:
 *   x = x - x.mean();  w = 0.5 - 0.5 * cos(2π n / N)  (periodic Hann, or 1 with window 'none')
 *   P = abs(rfft(x * w, n=M))**2;  edges = 1 + (arange(B + 1) * K) // B;  E[b] = P[edges[b]:edges[b+1]].sum()
 * i.e. DC excluded, Nyquist included, B equal-width bands of one-sided bins, not normalized.
 * `scale` then normalizes the whole vector, in its order.
 */
export const WindowSourceSchema = z
  .object({
    kind: z.literal('window'),
    features: z.array(FeatureSchema).min(1).max(256),
    size: z.number().int().min(1).max(65_536),
    hop: z.number().int().min(1).max(65_536),
    maxGapMs: z.number().int().positive().default(5_000),
    layout: z.enum(['TF', 'FT', 'T']).default('TF'),
    derive: z
      .object({
        stats: z.array(WindowStatSchema).max(7).default([]),
        fftBands: z.number().int().min(0).max(256).default(0),
        /** Taper applied before the FFT: Hann keeps a tone's energy out of the neighbouring bands. */
        window: z.enum(['hann', 'none']).default('hann'),
        /** Normalization of the derived vector, in its order (stats per channel, then bands per channel). */
        scale: z.array(z.object({ mean: z.number(), std: z.number().positive() })).optional(),
      })
      .optional(),
  })
  .superRefine((w, ctx) => {
    const issue = (path: (string | number)[], message: string): void => ctx.addIssue({ code: 'custom', path, message });
    const f = w.features.length;
    if (w.size * f > MAX_WINDOW_ELEMENTS) issue(['size'], `size × features is ${w.size * f}, at most ${MAX_WINDOW_ELEMENTS}`);
    if (!w.derive) {
      if (w.layout === 'T' && f !== 1) issue(['layout'], `layout T takes one feature, there are ${f}`);
      return;
    }
    const d = w.derive;
    if (new Set(d.stats).size !== d.stats.length) issue(['derive', 'stats'], 'statistics must be unique');
    let m = 1;
    while (m < w.size) m *= 2;
    if (d.fftBands > m / 2) issue(['derive', 'fftBands'], `${d.fftBands} bands, a window of ${w.size} has ${m / 2} spectral bins (DC excluded)`);
    const n = f * (d.stats.length + d.fftBands);
    if (n === 0) issue(['derive'], 'derive needs stats or fftBands');
    if (d.scale && d.scale.length !== n) issue(['derive', 'scale'], `${d.scale.length} entries for ${n} derived features`);
  });
export type WindowSource = z.infer<typeof WindowSourceSchema>;

/** A fixed tensor fed on every call (a sample rate, a mask, a config scalar). */
export const ConstantSourceSchema = z.object({
  kind: z.literal('constant'),
  values: z.array(z.number()).min(1).max(65_536),
});
export type ConstantSource = z.infer<typeof ConstantSourceSchema>;

/**
 * The model's own state: output `output` of the previous call of the same stream is fed back
 * here; `init` fills the first call and every reset (a window gap, a model swap, `resetAfterMs`
 * since the state was stored). The init tensor has the input's shape with symbolic dims as 1;
 * a stored state may differ from it only in symbolic dims.
 */
export const StateSourceSchema = z.object({
  kind: z.literal('state'),
  output: TensorName,
  init: z.number().default(0),
  resetAfterMs: z.number().int().positive().optional(),
});
export type StateSource = z.infer<typeof StateSourceSchema>;

/**
 * Output `output` of the previous model of a chain (agent config `pipelines[].chain`). Its
 * values are taken as rows (this input's elements / `frames` each) and accumulated per stream:
 * the model runs once `frames` rows are there, then every `hop` new rows (openWakeWord's mel
 * frames → embedding → head windows). `frames: 1` feeds each upstream result as it comes.
 */
export const UpstreamSourceSchema = z.object({
  kind: z.literal('upstream'),
  output: TensorName,
  frames: z.number().int().min(1).max(65_536).default(1),
  hop: z.number().int().min(1).max(65_536).default(1),
  /** Elementwise x · scale + offset on the way in (openWakeWord's mel → embedding link is x / 10 + 2). */
  scale: z.number().default(1),
  offset: z.number().default(0),
});
export type UpstreamSource = z.infer<typeof UpstreamSourceSchema>;

export const InputSourceSchema = z.discriminatedUnion('kind', [
  ImageSourceSchema,
  ReadingSourceSchema,
  WindowSourceSchema,
  ConstantSourceSchema,
  StateSourceSchema,
  UpstreamSourceSchema,
]);
export type InputSource = z.infer<typeof InputSourceSchema>;

// ----------------------------------------------------------------------------- postprocessing

export const ClassificationSpecSchema = z.object({
  kind: z.literal('classification'),
  /** Output holding the class scores; default the first output. */
  output: TensorName.optional(),
  activation: z.enum(['logits', 'probabilities', 'sigmoid']).default('logits'),
  labels: z.array(Label).min(2).max(10_000),
});
export type ClassificationSpec = z.infer<typeof ClassificationSpecSchema>;

/**
 * Object detection. Decoders:
 *  - `yolov5`: one output [1, N, 5 + C] rows (cx, cy, w, h, objectness, class scores...);
 *  - `yolov8`: one output [1, 4 + C, N] columns (cx, cy, w, h, class scores...) — also v11;
 *  - `ssd`:    `boxes` [1, N, ≥4] deltas against generated `anchors`, `scores` [1, N, C] logits
 *              or probabilities (BlazeFace-like);
 *  - `nms`:    NMS inside the model: `boxes` [1, K, 4], `scores` [1, K], `classes` [1, K]
 *              (optional `count` [1] of valid rows);
 *  - `decoded`: boxes decoded inside the model but no NMS: `boxes` [1, N, ≥4] in `boxFormat`,
 *              `scores` [1, N, C] (or [1, N] for one label), e.g. UltraFace, SSD exports with
 *              their box decoding built in.
 * Coordinates are in model-input pixels unless `normalized` (0..1). The agent applies the score
 * threshold, class-aware NMS by IoU (class-agnostic if asked), keeps `maxDetections` and maps
 * boxes back to the original image's pixels (undoing letterbox / resize). After `nms` it runs
 * NMS again only when `classAgnostic` (in-model NMS is usually per class).
 */
export const DetectionSpecSchema = z.object({
  kind: z.literal('detection'),
  decoder: z.enum(['yolov5', 'yolov8', 'ssd', 'nms', 'decoded']),
  /** One per class column of the scores (a background column included, then ignored below). */
  labels: z.array(Label).min(1).max(10_000),
  /**
   * Class columns never reported, as MediaPipe's ignore_classes: a background column (UltraFace
   * and TF Object Detection API SSDs put it at 0), or classes a site does not care about.
   */
  ignoreClasses: z.array(z.number().int().nonnegative()).max(10_000).optional(),
  /** yolov5 / yolov8: the prediction tensor; default the first output. */
  output: TensorName.optional(),
  boxes: TensorName.optional(),
  scores: TensorName.optional(),
  classes: TensorName.optional(),
  count: TensorName.optional(),
  /**
   * Order of the four box values. `cycxhw` is the TF Object Detection API / MediaPipe default
   * for SSD deltas (y first); BlazeFace emits `cxcywh` (MediaPipe's reverse_output_order). The
   * ssd decoder takes only the centre-size orders; columns after the first four (BlazeFace's
   * keypoints) are ignored.
   */
  boxFormat: z.enum(['cxcywh', 'cycxhw', 'xyxy', 'yxyx']).default('cxcywh'),
  normalized: z.boolean().default(false),
  /** `sigmoid` when the model emits logits (most SSD heads). */
  scoreActivation: z.enum(['none', 'sigmoid']).default('none'),
  scoreThreshold: z.number().min(0).max(1).default(0.25),
  iouThreshold: z.number().min(0).max(1).default(0.45),
  maxDetections: z.number().int().min(1).max(1000).default(100),
  classAgnostic: z.boolean().default(false),
  /**
   * ssd: anchor grid (MediaPipe SSD anchor options, fixed anchor size): per stride a
   * ceil(H / stride) × ceil(W / stride) grid with `perCell` anchors per cell, centres at
   * (cell + offset) / grid size. Consecutive equal strides share one grid, their anchors
   * interleaved per cell, as MediaPipe merges them (BlazeFace front: strides [8, 16, 16, 16],
   * perCell [2, 2, 2, 2] = 896 anchors; [8, 16] with [2, 6] is the same).
   */
  anchors: z
    .object({
      strides: z.array(z.number().int().positive()).min(1).max(8),
      perCell: z.array(z.number().int().positive()).min(1).max(8),
      offset: z.number().default(0.5),
    })
    .refine((a) => a.perCell.length === a.strides.length, { message: 'perCell needs one entry per stride', path: ['perCell'] })
    .optional(),
  /** ssd: box deltas are divided by this (BlazeFace: the input size, the default: width for x and w, height for y and h). */
  deltaScale: z.number().positive().optional(),
});
export type DetectionSpec = z.infer<typeof DetectionSpecSchema>;

/**
 * Dense per-pixel output [1, C, H, W] (or [1, H, W] / [1, 1, H, W] for a single class).
 * `argmax` picks a class per pixel; `sigmoid`/`probability` threshold one map. Results carry
 * per-class coverage (fraction of pixels) and, bounded, a run-length mask when asked.
 */
export const SegmentationSpecSchema = z.object({
  kind: z.literal('segmentation'),
  output: TensorName.optional(),
  labels: z.array(Label).min(1).max(1024),
  activation: z.enum(['argmax', 'sigmoid', 'probability']).default('argmax'),
  threshold: z.number().default(0.5),
  /** Publish the mask run-length encoded when it has at most this many runs (0: never). */
  maxMaskRuns: z.number().int().min(0).max(1_000_000).default(0),
});
export type SegmentationSpec = z.infer<typeof SegmentationSpecSchema>;

/** Named numeric outputs with units: value = raw * scale + offset. */
export const RegressionSpecSchema = z.object({
  kind: z.literal('regression'),
  targets: z
    .array(
      z.object({
        name: NameSchema,
        output: TensorName.optional(),
        index: z.number().int().nonnegative().default(0),
        unit: z.string().max(32).optional(),
        scale: z.number().default(1),
        offset: z.number().default(0),
        /** Range where the model is trusted; outside, the result is flagged. */
        min: z.number().optional(),
        max: z.number().optional(),
      }),
    )
    .min(1)
    .max(64),
});
export type RegressionSpec = z.infer<typeof RegressionSpecSchema>;

/**
 * An anomaly score and its alarm threshold. The score is an output element (`output`, `index`),
 * or, for an autoencoder, the mean squared error between input `reconstructs` (as fed, after
 * scaling) and output `output`.
 */
export const AnomalySpecSchema = z.object({
  kind: z.literal('anomaly'),
  output: TensorName.optional(),
  index: z.number().int().nonnegative().default(0),
  reconstructs: TensorName.optional(),
  threshold: z.number(),
  /** Published score: raw, or divided by the threshold (1.0 = at the alarm line). */
  normalize: z.boolean().default(false),
});
export type AnomalySpec = z.infer<typeof AnomalySpecSchema>;

/** Named tensors passed through (embeddings, features), each bounded in size. */
export const EmbeddingSpecSchema = z.object({
  kind: z.literal('embedding'),
  outputs: z.array(TensorName).min(1).max(16),
  maxElements: z.number().int().positive().max(65_536).default(4096),
  /** Round published values to this many decimals. */
  decimals: z.number().int().min(0).max(9).default(6),
});
export type EmbeddingSpec = z.infer<typeof EmbeddingSpecSchema>;

export const TaskSpecSchema = z.discriminatedUnion('kind', [
  ClassificationSpecSchema,
  DetectionSpecSchema,
  SegmentationSpecSchema,
  RegressionSpecSchema,
  AnomalySpecSchema,
  EmbeddingSpecSchema,
]);
export type TaskSpec = z.infer<typeof TaskSpecSchema>;
export type Task = TaskSpec['kind'];
export const TASKS = ['classification', 'detection', 'segmentation', 'regression', 'anomaly', 'embedding'] as const satisfies readonly Task[];
