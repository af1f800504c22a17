/**
 * Image preprocessing from the manifest's declarative spec (ARCHITECTURE §7): decode an
 * untrusted encoded image (JPEG, PNG, WebP, GIF, TIFF, AVIF/HEIF) with sharp, auto-orient it,
 * resize it with the spec's fit, convert it to the model's colour order and lay the pixels out
 * as an NCHW or NHWC tensor of the model's dtype. Also computes the image drift statistics of the
 * model-sized image. Anything that is not a decodable image within the limits is refused with
 * BAD_INPUT (PAYLOAD_TOO_LARGE for too many bytes) before or instead of decoding it; the only
 * other errors are ABORTED, BAD_MANIFEST for a spec whose mean/std do not fit its channels, and
 * INTERNAL should sharp ever hand back a buffer of the wrong shape.
 *
 * sharp runs each pipeline on a libuv pool thread, so decoding does not block the event loop.
 */
import sharp from 'sharp';
import type { FailOnOptions, FitEnum, Metadata, OutputInfo, Sharp } from 'sharp';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { ImagePreprocess } from '../../shared/manifest.ts';
import { toTensorData, type TensorData } from '../../shared/tensor.ts';
import type { ImageSource } from '../../shared/tasks/specs.ts';
import { letterboxGeometry } from '../postprocess/detection.ts';
import type { BufferPool } from '../runtime/buffer-pool.ts';

/**
 * What preprocessing needs of an image input: a v1 `preprocessing` block as it is, or a v2 image
 * source with the tensor's dtype (issue #13 adds letterbox, a pad value, RGBA, float16 and
 * dynamic sizes). A v1 spec never uses the additions, so v1 models get exactly what they got.
 */
export type ImageSpec = Omit<ImagePreprocess, 'fit' | 'colour' | 'dtype' | 'kind'> & {
  fit: ImagePreprocess['fit'] | 'letterbox';
  colour: ImagePreprocess['colour'] | 'rgba';
  dtype: ImagePreprocess['dtype'] | 'float16';
  pad?: number;
  dynamic?: ImageSource['dynamic'];
};

/** The image spec of a v2 image source feeding a tensor of `dtype`. */
export function imageSpecOf(src: ImageSource, dtype: string): ImageSpec {
  if (dtype !== 'float32' && dtype !== 'float16' && dtype !== 'uint8' && dtype !== 'int8') {
    throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `image input: dtype ${dtype} cannot hold pixels (float32, float16, uint8 or int8)`);
  }
  return { ...src, dtype };
}

/**
 * How the original image maps onto the model input: model = original × scale + pad (per axis).
 * Detection boxes go back with (model - pad) / scale.
 */
export interface ImageGeometry {
  srcWidth: number;
  srcHeight: number;
  /** Size of the tensor's image. */
  width: number;
  height: number;
  scaleX: number;
  scaleY: number;
  padX: number;
  padY: number;
}

/** Default cap on width × height of the encoded image, checked from its header before decoding. */
export const DEFAULT_MAX_INPUT_PIXELS = 40_000_000;
/** Default cap on the encoded size: a camera frame far above this is not a camera frame. */
export const DEFAULT_MAX_INPUT_BYTES = 32 * 1024 * 1024;

/**
 * Formats accepted. SVG and PDF are refused on purpose: they are documents that get rendered
 * (at a density the sender chooses, with external references), not camera frames.
 */
export const IMAGE_INPUT_FORMATS: readonly string[] = ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif', 'heif'];

export interface ImageStats {
  /** Mean gray level / 255 of the model-sized image. */
  brightness: number;
  /** Standard deviation of the gray level / 255. */
  contrast: number;
  /** Mean absolute 4-neighbour Laplacian / 255 over interior pixels; falls with blur. */
  sharpness: number;
  /** Mean / 255 of each tensor channel, in the tensor's channel order (B, G, R for `bgr`). */
  channelMeans: number[];
}

export interface ImageTensor {
  data: TensorData;
  /** [1, C, H, W] or [1, H, W, C]. */
  dims: number[];
  stats: ImageStats;
  geometry: ImageGeometry;
}

export interface PreprocessImageOptions {
  maxInputPixels?: number;
  maxInputBytes?: number;
  /**
   * sharp's `failOn`. The default `warning` refuses any image libvips complains about (what
   * sharp advises for untrusted input); `error` tolerates cameras that emit slightly
   * non-conforming JPEGs but lets some corrupt data through as garbage pixels.
   */
  failOn?: FailOnOptions;
  /** Checked before and after decoding; sharp cannot cancel a pipeline already running. */
  signal?: AbortSignal;
  /** Float tensors are written into a reused buffer from here when one is idle (the engine hands them back, InferInput.reclaim). */
  buffers?: BufferPool;
}

/** Tensor channels of a spec: 1 for gray, 3 for rgb and bgr, 4 for rgba. */
export function imageChannels(spec: Pick<ImageSpec, 'colour'>): 1 | 3 | 4 {
  return spec.colour === 'gray' ? 1 : spec.colour === 'rgba' ? 4 : 3;
}

/** Tensor dims for a batch of `batch` images, as the model's input shape must read. */
export function imageTensorDims(spec: Pick<ImageSpec, 'colour' | 'layout' | 'width' | 'height'>, batch = 1): number[] {
  const c = imageChannels(spec);
  return spec.layout === 'NCHW' ? [batch, c, spec.height, spec.width] : [batch, spec.height, spec.width, c];
}

/**
 * Where a `srcW`×`srcH` image lands in a `dstW`×`dstH` model input under `fit`: the placement
 * detection maps boxes back with (agent/postprocess/detection.ts letterboxGeometry, which
 * documents each fit's rounding), so the pixels and the boxes agree by construction.
 */
export function fitGeometry(srcW: number, srcH: number, dstW: number, dstH: number, fit: ImageSpec['fit']): ImageGeometry {
  const g = letterboxGeometry(srcW, srcH, dstW, dstH, fit);
  return { srcWidth: srcW, srcHeight: srcH, width: dstW, height: dstH, scaleX: g.scaleX, scaleY: g.scaleY, padX: g.padLeft, padY: g.padTop };
}

/** Model input size for a dynamic-size model: the image's own size, capped, rounded up to `multiple`. */
export function dynamicSize(srcW: number, srcH: number, d: NonNullable<ImageSpec['dynamic']>): { width: number; height: number } {
  const r = Math.min(1, d.maxSide / Math.max(srcW, srcH));
  const up = (x: number): number => Math.max(d.multiple, Math.ceil((x * r) / d.multiple) * d.multiple);
  return { width: Math.min(up(srcW), Math.ceil(d.maxSide / d.multiple) * d.multiple), height: Math.min(up(srcH), Math.ceil(d.maxSide / d.multiple) * d.multiple) };
}

/**
 * libvips loaders that render documents or hand the bytes to large delegate libraries (librsvg,
 * PDFium/poppler, ImageMagick, OpenSlide). Camera frames never need them; blocking them means
 * even reading the header of such a payload never reaches that code.
 */
export const BLOCKED_LOADERS: readonly string[] = ['VipsForeignLoadSvg', 'VipsForeignLoadPdf', 'VipsForeignLoadMagick', 'VipsForeignLoadOpenslide'];

/**
 * Process-wide sharp settings for a small (2-core) edge device; main.ts calls it once.
 *
 * - cache(false): libvips' operation cache (default up to 50 MB, 100 operations) only pays when
 *   the same input is processed again; every camera frame is a new buffer, so it only holds
 *   memory. Measured here (600 different 640×480 and 1920×1440 JPEGs → 64×64 gray): the cache
 *   never held more than 2 MB and speed was the same either way, so off costs nothing.
 * - concurrency(1): threads libvips uses *per image*. Frames here are small and several arrive
 *   at once, so parallelism comes from libuv's pool running images side by side, not from
 *   splitting one image. sharp already picks 1 on glibc without jemalloc (memory fragmentation);
 *   on a 2-core box a higher value competes with the ORT inference workers for the same cores.
 *   Measured here, 1920×1440 JPEG → 64×64: one stream 18.2 ms/image at 1 thread, 18.6 at 2 (JPEG
 *   decode with shrink-on-load is sequential); two images in flight 13.7 vs 11.6 ms/image, a gain
 *   only while nothing else wants the second core.
 * - block(BLOCKED_LOADERS), unless `blockDocumentLoaders: false`.
 */
export function configureSharp(opts: { cache?: boolean; concurrency?: number; blockDocumentLoaders?: boolean } = {}): void {
  sharp.cache(opts.cache ?? false);
  sharp.concurrency(opts.concurrency ?? 1);
  if (opts.blockDocumentLoaders ?? true) sharp.block({ operation: [...BLOCKED_LOADERS] });
}

function badInput(message: string, cause?: unknown): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_INPUT, message, cause === undefined ? undefined : { cause });
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'image preprocessing aborted', { cause: signal.reason });
}

/** Mean/std per tensor channel; a single value applies to every channel. */
function perChannel(values: readonly number[], channels: number, what: 'mean' | 'std'): number[] {
  if (values.length === channels) return [...values];
  if (values.length === 1) return new Array<number>(channels).fill(values[0] as number);
  throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `image preprocessing: ${what} has ${values.length} values for ${channels} channel(s)`);
}

const SRGB_TO_LINEAR = Float64Array.from({ length: 256 }, (_, i) => {
  const v = i / 255;
  return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
});

function linearToSrgb8(y: number): number {
  const v = y <= 0.0031308 ? 12.92 * y : 1.055 * y ** (1 / 2.4) - 0.055;
  return Math.min(255, Math.max(0, Math.round(v * 255)));
}

/**
 * Gray level of interleaved RGB pixels, the way libvips' sRGB → b-w does it (Rec. 709 luminance
 * in linear light, re-encoded), so an rgb model and a gray model see the same brightness.
 */
/**
 * UP[k] = the smallest double y with linearToSrgb8(y) > k, found by bisection down to adjacent
 * doubles, so `linearToSrgb8Fast` (a binary search over UP) returns exactly what linearToSrgb8
 * does without a pow per pixel (issue #13 bench: the pow made imageStats ~12 ms of a 640×480
 * frame's ~20 ms preprocessing).
 */
const UP = Float64Array.from({ length: 255 }, (_, k) => {
  let lo = 0;
  let hi = 1;
  for (;;) {
    const mid = (lo + hi) / 2;
    if (mid === lo || mid === hi) return hi;
    if (linearToSrgb8(mid) > k) hi = mid;
    else lo = mid;
  }
});

function linearToSrgb8Fast(y: number): number {
  if (!(y > 0)) return linearToSrgb8(y);
  if (y >= 1) return 255;
  let lo = 0;
  let hi = 255;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if ((UP[mid] as number) <= y) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function grayOfRgb(rgb: Uint8Array, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels);
  for (let i = 0; i < pixels; i++) {
    const y =
      0.2126 * (SRGB_TO_LINEAR[rgb[3 * i] as number] as number) +
      0.7152 * (SRGB_TO_LINEAR[rgb[3 * i + 1] as number] as number) +
      0.0722 * (SRGB_TO_LINEAR[rgb[3 * i + 2] as number] as number);
    out[i] = linearToSrgb8Fast(y);
  }
  return out;
}

/** For the test that holds the fast path to the exact one. */
export const gammaForTest = { linearToSrgb8, linearToSrgb8Fast };

/**
 * Drift statistics of an 8-bit image (interleaved, `channels` 1 or 3 in RGB order), computed on
 * its gray levels exactly as scripts/lib/synthetic.ts `imageDriftStats` computes the reference
 * bins shipped in the manifest: brightness = mean / 255, contrast = std / 255, sharpness = mean
 * absolute 4-neighbour Laplacian / 255 over interior pixels. Channel means are in the given order.
 */
export function imageStats(pixels: Uint8Array, width: number, height: number, channels: 1 | 3 | 4): ImageStats {
  if (channels === 4) return imageStats(dropAlpha(pixels, width * height), width, height, 3);
  const count = width * height;
  if (pixels.length !== count * channels) throw new RangeError(`expected ${count * channels} bytes, got ${pixels.length}`);
  const channelSums = new Array<number>(channels).fill(0);
  for (let i = 0; i < pixels.length; i++) channelSums[i % channels] = (channelSums[i % channels] as number) + (pixels[i] as number);
  const gray = channels === 1 ? pixels : grayOfRgb(pixels, count);
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < count; i++) {
    const p = gray[i] as number;
    sum += p;
    sq += p * p;
  }
  const mean = count > 0 ? sum / count : 0;
  const variance = count > 0 ? Math.max(0, sq / count - mean * mean) : 0;
  let lap = 0;
  let m = 0;
  for (let y = 1; y < height - 1; y++) {
    for (let x = 1; x < width - 1; x++) {
      const i = y * width + x;
      const v = (gray[i - 1] as number) + (gray[i + 1] as number) + (gray[i - width] as number) + (gray[i + width] as number) - 4 * (gray[i] as number);
      lap += Math.abs(v);
      m++;
    }
  }
  return {
    brightness: mean / 255,
    contrast: Math.sqrt(variance) / 255,
    sharpness: m > 0 ? lap / m / 255 : 0,
    channelMeans: channelSums.map((s) => (count > 0 ? s / count / 255 : 0)),
  };
}

/**
 * Turns model-sized interleaved 8-bit pixels (channels in the tensor's order) into the tensor the
 * spec asks for. Exported for inputs that already deliver raw frames of the right size.
 */
export function pixelsToTensor(spec: ImageSpec, pixels: Uint8Array, buffers?: BufferPool): TensorData {
  if (spec.dtype === 'float16') return toTensorData('float16', pixelsToTensor({ ...spec, dtype: 'float32' }, pixels) as Float32Array);
  const c = imageChannels(spec);
  const hw = spec.width * spec.height;
  if (pixels.length !== hw * c) throw new RangeError(`expected ${hw * c} bytes (${spec.width}×${spec.height}×${c}), got ${pixels.length}`);
  // NHWC is sharp's interleaved order already; NCHW moves pixel i of channel k to k * hw + i.
  const at = spec.layout === 'NHWC' ? (i: number, k: number): number => i * c + k : (i: number, k: number): number => k * hw + i;
  if (spec.dtype === 'uint8') {
    if (spec.layout === 'NHWC') return Uint8Array.from(pixels);
    const out = new Uint8Array(hw * c);
    for (let i = 0; i < hw; i++) for (let k = 0; k < c; k++) out[at(i, k)] = pixels[i * c + k] as number;
    return out;
  }
  if (spec.dtype === 'int8') {
    const out = new Int8Array(hw * c);
    for (let i = 0; i < hw; i++) for (let k = 0; k < c; k++) out[at(i, k)] = (pixels[i * c + k] as number) - 128;
    return out;
  }
  const mean = perChannel(spec.mean, c, 'mean');
  const std = perChannel(spec.std, c, 'std');
  // One lookup table per channel: 256 values instead of a multiply-subtract-divide per pixel.
  const luts = mean.map((mu, k) => Float32Array.from({ length: 256 }, (_, p) => (p * spec.scale - mu) / (std[k] as number)));
  // Every element is written below, so a reused buffer needs no clearing.
  const out = buffers ? buffers.float32(hw * c) : new Float32Array(hw * c);
  // Plain index arithmetic per layout, no closure per element (issue #13 bench).
  for (let k = 0; k < c; k++) {
    const lut = luts[k] as Float32Array;
    if (spec.layout === 'NCHW') {
      const base = k * hw;
      for (let i = 0, j = k; i < hw; i++, j += c) out[base + i] = lut[pixels[j] as number] as number;
    } else {
      for (let j = k; j < hw * c; j += c) out[j] = lut[pixels[j] as number] as number;
    }
  }
  return out;
}

function dropAlpha(rgba: Uint8Array, pixels: number): Uint8Array {
  const out = new Uint8Array(pixels * 3);
  for (let i = 0; i < pixels; i++) {
    out[3 * i] = rgba[4 * i] as number;
    out[3 * i + 1] = rgba[4 * i + 1] as number;
    out[3 * i + 2] = rgba[4 * i + 2] as number;
  }
  return out;
}

/** Copies a w×h×c image into the top-left of a W×H×c black canvas, cropping what does not fit. */
function placeTopLeft(src: Uint8Array, w: number, h: number, c: number, W: number, H: number): Uint8Array {
  const out = new Uint8Array(W * H * c);
  const rowBytes = Math.min(w, W) * c;
  for (let y = 0; y < Math.min(h, H); y++) out.set(src.subarray(y * w * c, y * w * c + rowBytes), y * W * c);
  return out;
}

function swapRgbBgr(px: Uint8Array): void {
  // Only 3-channel pixels get here (bgr); rgba keeps its order.
  for (let i = 0; i + 2 < px.length; i += 3) {
    const r = px[i] as number;
    px[i] = px[i + 2] as number;
    px[i + 2] = r;
  }
}

/** Decodes, orients, resizes and converts to the spec's colour; returns W×H interleaved 8-bit pixels in RGB (or gray) order. */
async function decodeToModelSize(
  spec: ImageSpec,
  input: Buffer,
  opts: Required<Pick<PreprocessImageOptions, 'maxInputPixels' | 'failOn'>>,
): Promise<{ px: Uint8Array; geometry: ImageGeometry }> {
  const c = imageChannels(spec);
  // Integer demanded by sharp; 0 would mean "no limit", so never below 1.
  const limitInputPixels = Math.max(1, Math.floor(opts.maxInputPixels));
  const inputOptions = { limitInputPixels, failOn: opts.failOn, autoOrient: true, sequentialRead: true } as const;

  // The header first: format and size are known before any pixel is decoded, so the refusal
  // can say what was wrong, and a 20000×20000 header never reaches the decoder.
  let meta: Metadata;
  try {
    meta = await sharp(input, inputOptions).metadata();
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    if (/pixel limit/i.test(msg)) throw badInput(`image has more pixels than the limit of ${limitInputPixels}`, err);
    if (/unsupported image format/i.test(msg)) throw badInput('not an image in a supported format (jpeg, png, webp, gif, tiff, avif, heif)', err);
    throw badInput(`cannot read image header: ${msg}`, err);
  }
  if (meta.format === undefined || !IMAGE_INPUT_FORMATS.includes(meta.format)) {
    throw badInput(`unsupported image format ${meta.format ?? 'unknown'}; accepted: ${IMAGE_INPUT_FORMATS.join(', ')}`);
  }
  if (!meta.width || !meta.height) throw badInput(`${meta.format} image without dimensions`);
  if (meta.width * meta.height > limitInputPixels) {
    throw badInput(`${meta.format} image is ${meta.width}×${meta.height} = ${meta.width * meta.height} pixels, limit ${limitInputPixels}`);
  }

  // autoOrient: the header's size is before rotation; EXIF orientations 5-8 swap the axes.
  const rotated = (meta.orientation ?? 1) >= 5;
  const srcW = rotated ? meta.height : meta.width;
  const srcH = rotated ? meta.width : meta.height;
  const size = spec.dynamic ? dynamicSize(srcW, srcH, spec.dynamic) : { width: spec.width, height: spec.height };
  const geometry = fitGeometry(srcW, srcH, size.width, size.height, spec.fit);
  const pad = spec.pad ?? 0;
  let pipeline: Sharp;
  if (spec.fit === 'letterbox') {
    const w = Math.round(srcW * geometry.scaleX);
    const h = Math.round(srcH * geometry.scaleY);
    if (geometry.padX < 0 || geometry.padY < 0 || w + geometry.padX > size.width || h + geometry.padY > size.height) {
      throw new EdgefleetError(ErrorCode.INTERNAL, `letterbox placement ${w}×${h}+${geometry.padX}+${geometry.padY} does not fit ${size.width}×${size.height}`);
    }
    pipeline = sharp(input, inputOptions)
      .resize(w, h, { fit: 'fill' })
      .extend({ top: geometry.padY, left: geometry.padX, bottom: size.height - h - geometry.padY, right: size.width - w - geometry.padX, background: { r: pad, g: pad, b: pad, alpha: 1 } });
  } else {
    const fit: keyof FitEnum = spec.fit;
    // inside/outside keep the aspect ratio and give a size that differs from the model's; the
    // result is then padded (inside) or cropped (outside) at the top-left, so model coordinates
    // stay proportional to image coordinates from the origin. contain pads centred, cover crops centred.
    pipeline = sharp(input, inputOptions).resize(size.width, size.height, { fit, background: { r: pad, g: pad, b: pad, alpha: 1 } });
  }
  pipeline = c === 4 ? pipeline.ensureAlpha() : pipeline.removeAlpha();
  // toColourspace('b-w') is what guarantees one channel out of raw(); grayscale() alone gave 3 in older sharp (lovell/sharp#1425).
  pipeline = c === 1 ? pipeline.toColourspace('b-w') : pipeline.toColourspace('srgb');
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await pipeline.raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw badInput(`cannot decode ${meta.format} image (${meta.width}×${meta.height}): ${msg}`, err);
  }
  const { data, info } = out;
  if (info.channels !== c || data.length !== info.width * info.height * c) {
    throw new EdgefleetError(ErrorCode.INTERNAL, `sharp gave ${info.width}×${info.height}×${info.channels} (${data.length} bytes), wanted ${c} channel(s)`);
  }
  const px = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (info.width === size.width && info.height === size.height) return { px, geometry };
  if (spec.fit !== 'inside' && spec.fit !== 'outside') {
    throw new EdgefleetError(ErrorCode.INTERNAL, `sharp resized to ${info.width}×${info.height} with fit ${spec.fit}, wanted ${size.width}×${size.height}`);
  }
  return { px: placeTopLeft(px, info.width, info.height, c, size.width, size.height), geometry };
}

/**
 * Encoded image → model input tensor plus drift statistics. Throws EdgefleetError: BAD_INPUT
 * (empty, not an image, unsupported format, corrupt or truncated data, too many pixels),
 * PAYLOAD_TOO_LARGE (more than `maxInputBytes`), BAD_MANIFEST (mean/std do not fit the
 * channels), ABORTED.
 */
export async function preprocessImage(spec: ImageSpec, input: Buffer, opts: PreprocessImageOptions = {}): Promise<ImageTensor> {
  throwIfAborted(opts.signal);
  const maxBytes = opts.maxInputBytes ?? DEFAULT_MAX_INPUT_BYTES;
  if (input.length === 0) throw badInput('empty image (0 bytes)');
  if (input.length > maxBytes) {
    throw new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `image is ${input.length} bytes, limit ${maxBytes}`, { details: { bytes: input.length, limit: maxBytes } });
  }
  const c = imageChannels(spec);
  // Fail on a bad spec before spending a decode on it.
  if (spec.dtype === 'float32' || spec.dtype === 'float16') {
    perChannel(spec.mean, c, 'mean');
    perChannel(spec.std, c, 'std');
  }
  const { px, geometry } = await decodeToModelSize(spec, input, {
    maxInputPixels: opts.maxInputPixels ?? DEFAULT_MAX_INPUT_PIXELS,
    failOn: opts.failOn ?? 'warning',
  });
  throwIfAborted(opts.signal);
  const sized = { ...spec, width: geometry.width, height: geometry.height };
  const stats = imageStats(px, sized.width, sized.height, c);
  if (spec.colour === 'bgr') {
    swapRgbBgr(px);
    stats.channelMeans.reverse();
  }
  return { data: pixelsToTensor(sized, px, opts.buffers), dims: imageTensorDims(sized), stats, geometry };
}
