/**
 * Manifest v2 for each real third-party model of test/helpers/third-party-models.ts (issue #13),
 * built from the cached file itself: sha256 and size read from it, inputs with their sources,
 * outputs, postprocessing, and test vectors computed by a bare onnxruntime run on deterministic
 * synthetic inputs (speech-like audio, a drawn face, drawn text strokes). Every manifest passes
 * ManifestV2Schema.parse.
 *
 * Also here, shared by the builders and the tests: the synthetic inputs, a bare-ORT runner, the
 * openWakeWord streaming loop (mel → embedding → head, driven by the chain description below)
 * and a metadata check of a loaded model against a v2 manifest. The runner is a function type so
 * the same loops can later run through the agent's own engine and be compared with bare ORT.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { pathToFileURL } from 'node:url';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import { mulberry32 } from '../../scripts/lib/rng.ts';
import { ManifestV2Schema, type ManifestV2, type TensorDtypeV2, type TensorValues, type TestVectorV2 } from '../../shared/manifest.ts';
import { ImageSourceSchema, type ImageSource } from '../../shared/tasks/specs.ts';
import type { ThirdPartyModel } from './third-party-models.ts';

// ------------------------------------------------------------------------------- running

export interface Tensor {
  dtype: 'float32' | 'int64';
  dims: number[];
  data: Float32Array | BigInt64Array;
}

export interface Output {
  dims: number[];
  data: Float32Array;
}

/** One model call: named input tensors in, named float outputs out. */
export type RunFn = (feeds: Record<string, Tensor>) => Promise<Record<string, Output>>;

export interface BareSession {
  run: RunFn;
  session: ort.InferenceSession;
  release(): Promise<void>;
}

/** A plain onnxruntime session, one intra-op thread (the agent's workers run that way too). */
export async function bareSession(path: string): Promise<BareSession> {
  const session = await ort.InferenceSession.create(path, { intraOpNumThreads: 1, interOpNumThreads: 1 });
  const run: RunFn = async (feeds) => {
    const t: Record<string, ort.Tensor> = {};
    for (const [name, f] of Object.entries(feeds)) t[name] = new ort.Tensor(f.dtype, f.data, f.dims);
    const r = await session.run(t);
    const out: Record<string, Output> = {};
    for (const [name, v] of Object.entries(r)) {
      if (!(v.data instanceof Float32Array)) throw new Error(`output ${name} is ${v.type}, these models give float32`);
      out[name] = { dims: [...v.dims], data: v.data };
    }
    return out;
  };
  return { run, session, release: () => session.release() };
}

export const f32 = (dims: number[], data: ArrayLike<number>): Tensor => ({ dtype: 'float32', dims, data: Float32Array.from(data) });
export const i64 = (dims: number[], data: readonly number[]): Tensor => ({ dtype: 'int64', dims, data: BigInt64Array.from(data.map((v) => BigInt(v))) });

/** A tensor as manifest test-vector values (int64 as numbers: these are small). */
export function valuesOf(t: Tensor | Output): TensorValues {
  return { dims: [...t.dims], values: Array.from(t.data as ArrayLike<number | bigint>, Number) };
}

/** A test vector's inputs as tensors, typed by the manifest's inputs. */
export function feedsOf(manifest: ManifestV2, tv: TestVectorV2): Record<string, Tensor> {
  const feeds: Record<string, Tensor> = {};
  for (const inp of manifest.inputs) {
    const v = tv.inputs[inp.name];
    if (!v) throw new Error(`test vector has no input ${inp.name}`);
    if (inp.dtype === 'int64') feeds[inp.name] = i64(v.dims, v.values);
    else if (inp.dtype === 'float32') feeds[inp.name] = f32(v.dims, v.values);
    else throw new Error(`input ${inp.name}: dtype ${inp.dtype} not used by these models`);
  }
  return feeds;
}

// ---------------------------------------------------------------------- metadata check

type Dim = number | string;
interface Meta {
  name: string;
  type: string;
  dims: Dim[];
}

function metaOf(list: readonly ort.InferenceSession.ValueMetadata[]): Meta[] {
  return list.map((m) => (m.isTensor ? { name: m.name, type: m.type, dims: [...m.shape] } : { name: m.name, type: 'non-tensor', dims: [] }));
}

const fmt = (d: readonly Dim[]): string => `[${d.join(', ')}]`;

function tensorMismatch(what: string, spec: { dtype: TensorDtypeV2; shape: readonly Dim[] }, meta: Meta): string[] {
  const out: string[] = [];
  if (spec.dtype !== meta.type) out.push(`${what}: dtype ${meta.type} in the model, ${spec.dtype} in the manifest`);
  if (spec.shape.length !== meta.dims.length) return [...out, `${what}: rank of ${fmt(meta.dims)} (model) vs ${fmt(spec.shape)} (manifest)`];
  for (const [i, want] of spec.shape.entries()) {
    const got = meta.dims[i]!;
    // A fixed manifest dim binds a symbolic model dim; a symbolic manifest dim needs a symbolic model dim.
    if (typeof got === 'number' && want !== got) out.push(`${what}: dim ${i} is ${got} in the model, ${want} in the manifest`);
  }
  return out;
}

/**
 * Every way a loaded model's inputs/outputs disagree with a v2 manifest (names, dtypes, ranks,
 * fixed dims), one sentence each; empty when the manifest describes the model. The same rules as
 * shared/model-check.ts, for every input instead of one.
 */
export function ioMismatches(session: Pick<ort.InferenceSession, 'inputMetadata' | 'outputMetadata'>, manifest: ManifestV2): string[] {
  const out: string[] = [];
  for (const [kind, metas, specs] of [
    ['input', metaOf(session.inputMetadata), manifest.inputs],
    ['output', metaOf(session.outputMetadata), manifest.outputs],
  ] as const) {
    for (const spec of specs) {
      const meta = metas.find((m) => m.name === spec.name);
      if (!meta) out.push(`${kind} ${spec.name}: not in the model (it has ${metas.map((m) => m.name).join(', ')})`);
      else out.push(...tensorMismatch(`${kind} ${spec.name}`, spec, meta));
    }
    for (const m of metas) if (!specs.some((s) => s.name === m.name)) out.push(`${kind} ${m.name}: in the model, not in the manifest`);
  }
  return out;
}

// ------------------------------------------------------------------ synthetic inputs

export const SAMPLE_RATE = 16_000;

/**
 * Vowel-like audio in [-0.5, 0.5]: a glottal pulse train (F0 120 ± 20 Hz) through three formant
 * resonators, cycling through four vowels, with a 4 Hz syllable envelope. Silero VAD scores it
 * ~0.9 and silence ~0.02 (measured); it is not a word, so no wake word should fire on it.
 */
export function speechLike(samples: number, seed = 1): Float32Array {
  const rnd = mulberry32(seed);
  const vowels = [
    [730, 1090, 2440],
    [270, 2290, 3010],
    [300, 870, 2240],
    [530, 1840, 2480],
  ] as const;
  const y1 = [0, 0, 0];
  const y2 = [0, 0, 0];
  const out = new Float32Array(samples);
  let phase = 0;
  let peak = 0;
  for (let i = 0; i < samples; i++) {
    const t = i / SAMPLE_RATE;
    phase += (120 + 20 * Math.sin(2 * Math.PI * 3 * t)) / SAMPLE_RATE;
    let src = 0.02 * (rnd() - 0.5);
    if (phase >= 1) {
      phase -= 1;
      src += 1;
    }
    const formants = vowels[Math.floor(t * 4) % 4]!;
    let y = 0;
    for (let k = 0; k < 3; k++) {
      const r = Math.exp((-Math.PI * (80 + 40 * k)) / SAMPLE_RATE);
      const yk = src + 2 * r * Math.cos((2 * Math.PI * formants[k]!) / SAMPLE_RATE) * y1[k]! - r * r * y2[k]!;
      y2[k] = y1[k]!;
      y1[k] = yk;
      y += yk / (k + 1);
    }
    out[i] = y * Math.sqrt(Math.max(0, Math.sin(Math.PI * ((t * 4) % 1))));
    peak = Math.max(peak, Math.abs(out[i]!));
  }
  for (let i = 0; i < samples; i++) out[i] = (out[i]! / peak) * 0.5;
  return out;
}

/** Uniform white noise in [-amplitude, amplitude). */
export function whiteNoise(samples: number, amplitude: number, seed = 2): Float32Array {
  const rnd = mulberry32(seed);
  return Float32Array.from({ length: samples }, () => amplitude * (2 * rnd() - 1));
}

interface EspeakModule {
  FS: { readFile(path: string): Uint8Array };
}
type EspeakFactory = (opts: { arguments: string[]; print: (s: string) => void; printErr: (s: string) => void }) => Promise<EspeakModule>;

/**
 * Real synthetic speech: eSpeak NG (WebAssembly, the espeak-ng npm package, fetched like the
 * models) saying `text`, resampled from its 22.05 kHz to 16 kHz floats in [-1, 1]. Each call
 * instantiates the module (~2 s: 18 MB of WebAssembly).
 */
export async function speak(espeakModule: string, text: string, opts: { voice?: string; wordsPerMinute?: number } = {}): Promise<Float32Array> {
  const mod = (await import(pathToFileURL(espeakModule).href)) as { default: EspeakFactory };
  // Emscripten sets process.exitCode when its main() returns: keep the test runner's.
  const exitCode = process.exitCode;
  let wav: Uint8Array;
  try {
    const es = await mod.default({
      arguments: ['-v', opts.voice ?? 'en-us', '-s', String(opts.wordsPerMinute ?? 140), '-w', '/out.wav', text],
      print: () => {},
      printErr: () => {},
    });
    wav = es.FS.readFile('/out.wav');
  } finally {
    process.exitCode = exitCode;
  }
  const { rate, samples } = parseWav(wav);
  return resample(samples, rate, SAMPLE_RATE);
}

/** 16-bit PCM mono WAV → floats in [-1, 1]. */
export function parseWav(bytes: Uint8Array): { rate: number; samples: Float32Array } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at: number): string => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (tag(0) !== 'RIFF' || tag(8) !== 'WAVE') throw new Error('not a WAV file');
  let rate = 0;
  for (let at = 12; at + 8 <= bytes.length; ) {
    const id = tag(at);
    const size = Math.min(v.getUint32(at + 4, true), bytes.length - at - 8);
    if (id === 'fmt ') {
      const [format, channels, bits] = [v.getUint16(at + 8, true), v.getUint16(at + 10, true), v.getUint16(at + 22, true)];
      if (format !== 1 || channels !== 1 || bits !== 16) throw new Error(`WAV format ${format}, ${channels} channels, ${bits} bits: want PCM mono 16-bit`);
      rate = v.getUint32(at + 12, true);
    } else if (id === 'data') {
      if (rate === 0) throw new Error('WAV data before fmt');
      const samples = new Float32Array(Math.floor(size / 2));
      for (let i = 0; i < samples.length; i++) samples[i] = v.getInt16(at + 8 + 2 * i, true) / 32768;
      return { rate, samples };
    }
    at += 8 + size + (size % 2);
  }
  throw new Error('WAV without data');
}

/** Band-limited resampling (Hann-windowed sinc, 16 taps a side, cut off at 95% of the lower Nyquist). */
export function resample(x: Float32Array, from: number, to: number): Float32Array {
  if (from === to) return x.slice();
  const ratio = to / from;
  const cutoff = 0.95 * Math.min(1, ratio);
  const W = 16;
  const out = new Float32Array(Math.floor(x.length * ratio));
  for (let n = 0; n < out.length; n++) {
    const t = n / ratio;
    const k0 = Math.floor(t);
    let acc = 0;
    for (let k = k0 - W + 1; k <= k0 + W; k++) {
      if (k < 0 || k >= x.length) continue;
      const d = t - k;
      const sinc = d === 0 ? 1 : Math.sin(Math.PI * cutoff * d) / (Math.PI * cutoff * d);
      acc += x[k]! * cutoff * sinc * (0.5 + 0.5 * Math.cos((Math.PI * d) / W));
    }
    out[n] = acc;
  }
  return out;
}

export interface SyntheticImage {
  width: number;
  height: number;
  /** Interleaved RGB, row-major. */
  rgb: Uint8Array;
  /** PNG of the same pixels (what a request would carry). */
  png: Buffer;
}

async function rasterize(svg: string, width: number, height: number): Promise<SyntheticImage> {
  const img = sharp(Buffer.from(svg)).resize(width, height, { fit: 'fill' }).removeAlpha();
  const { data, info } = await img.clone().raw().toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== width || info.height !== height) throw new Error(`rasterized ${info.width}×${info.height}×${info.channels}`);
  return { width, height, rgb: new Uint8Array(data), png: await img.png().toBuffer() };
}

/** The drawn face's bounding box in the 320×240 picture (head ellipse and hair), pixels xyxy. */
export const FACE_BOX = [108, 48, 212, 193] as const;

/** A drawn frontal face (skin ellipse, hair, eyes, brows, nose, mouth, neck) on a blue wall, 320×240. */
export function faceImage(): Promise<SyntheticImage> {
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="320" height="240">
<rect width="320" height="240" fill="#6b8fb0"/>
<rect x="140" y="190" width="40" height="50" fill="#e0ac8a"/>
<ellipse cx="160" cy="125" rx="52" ry="68" fill="#e0ac8a"/>
<path d="M108 110 Q110 45 160 48 Q210 45 212 110 Q200 70 160 72 Q120 70 108 110Z" fill="#3b2416"/>
<ellipse cx="139" cy="115" rx="9" ry="5" fill="#fff"/><circle cx="139" cy="115" r="4" fill="#2a1a10"/>
<ellipse cx="181" cy="115" rx="9" ry="5" fill="#fff"/><circle cx="181" cy="115" r="4" fill="#2a1a10"/>
<path d="M127 103 L151 101" stroke="#3b2416" stroke-width="4"/><path d="M169 101 L193 103" stroke="#3b2416" stroke-width="4"/>
<path d="M160 118 L154 145 L166 145" stroke="#b07a5c" stroke-width="3" fill="none"/>
<path d="M143 160 Q160 170 177 160" stroke="#a0413c" stroke-width="5" fill="none"/>
</svg>`;
  return rasterize(svg, 320, 240);
}

/** A flat grey picture (no face, no text). */
export function flatImage(width: number, height: number, grey = 128): Promise<SyntheticImage> {
  const c = grey.toString(16).padStart(2, '0');
  return rasterize(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}"><rect width="${width}" height="${height}" fill="#${c}${c}${c}"/></svg>`, width, height);
}

/** Where textImage's glyph-like strokes are (pixels xyxy), one line of twelve "letters". */
export const TEXT_BOX = [24, 44, 301, 84] as const;

/**
 * Black letter-like strokes on white, 320×128 (both multiples of 32, as the DB detector wants):
 * drawn with rectangles rather than a font, so the pixels do not depend on installed fonts.
 */
export function textImage(): Promise<SyntheticImage> {
  let s = '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="128"><rect width="320" height="128" fill="#fff"/>';
  for (let i = 0; i < 12; i++) {
    const x = 24 + i * 23;
    const y = 44;
    s += `<rect x="${x}" y="${y}" width="5" height="40"/><rect x="${x}" y="${y}" width="16" height="5"/><rect x="${x}" y="${y + 18}" width="12" height="5"/>`;
    s += `<rect x="${x + 11}" y="${y}" width="5" height="${i % 2 ? 40 : 20}"/>`;
  }
  return rasterize(`${s}</svg>`, 320, 128);
}

/**
 * An image source applied to RGB pixels already at the model's size: channel order, NCHW,
 * (p * scale - mean[c]) / std[c]. The reference the agent's own image preprocessing must match.
 */
export function imageTensor(img: SyntheticImage, src: Pick<ImageSource, 'colour' | 'layout' | 'scale' | 'mean' | 'std'>): Tensor {
  if (src.layout !== 'NCHW' || (src.colour !== 'rgb' && src.colour !== 'bgr')) throw new Error('these models take NCHW RGB/BGR');
  const { width: w, height: h, rgb } = img;
  const data = new Float32Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    const from = src.colour === 'rgb' ? c : 2 - c;
    const mean = src.mean[c] ?? src.mean[0]!;
    const std = src.std[c] ?? src.std[0]!;
    for (let i = 0; i < w * h; i++) data[c * w * h + i] = (rgb[i * 3 + from]! * src.scale - mean) / std;
  }
  return { dtype: 'float32', dims: [1, 3, h, w], data };
}

// -------------------------------------------------------------------------- manifests

async function artifact(model: ThirdPartyModel): Promise<ManifestV2['artifact']> {
  const bytes = await readFile(model.path);
  return { file: basename(model.path), sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length };
}

/** Silero VAD at 16 kHz: 512-sample frames (32 ms; this version also takes 1024 and 1536, as vad-node feeds it). */
export const VAD_FRAME = 512;

/**
 * Silero VAD: `input` ← 512-sample audio window, `sr` ← constant 16000 (an int64 scalar),
 * `h`/`c` ← the model's own `hn`/`cn` from the previous frame of the stream.
 *
 * Postprocessing is `anomaly` with threshold 0.5 on output[0]: the model emits one speech
 * probability (the sigmoid is inside the graph), and anomaly is the schema's only "one score
 * element against a threshold" task. Classification needs ≥ 2 labels and would read the single
 * column as class scores (softmax of one column is always 1; `sigmoid` would squash the
 * probability a second time).
 */
export async function sileroVadManifest(model: ThirdPartyModel, run: RunFn): Promise<ManifestV2> {
  const speech = speechLike(SAMPLE_RATE);
  const zero = new Float32Array(2 * 64);
  const frame = (audio: Float32Array, k: number): Tensor => f32([1, VAD_FRAME], audio.subarray(k * VAD_FRAME, (k + 1) * VAD_FRAME));
  const sr = i64([], [SAMPLE_RATE]);
  // Vector 1: the 13th speech frame with the state the first twelve left; vector 2: silence from a fresh state.
  let h = f32([2, 1, 64], zero);
  let c = f32([2, 1, 64], zero);
  for (let k = 0; k < 12; k++) {
    const r = await run({ input: frame(speech, k), sr, h, c });
    h = f32([2, 1, 64], r['hn']!.data);
    c = f32([2, 1, 64], r['cn']!.data);
  }
  const cases: Record<string, Tensor>[] = [
    { input: frame(speech, 12), sr, h, c },
    { input: f32([1, VAD_FRAME], new Float32Array(VAD_FRAME)), sr, h: f32([2, 1, 64], zero), c: f32([2, 1, 64], zero) },
  ];
  const testVectors: TestVectorV2[] = [];
  for (const feeds of cases) {
    const r = await run(feeds);
    testVectors.push({
      inputs: Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, valuesOf(v)])),
      expected: { output: valuesOf(r['output']!), hn: valuesOf(r['hn']!), cn: valuesOf(r['cn']!) },
      tolerance: 1e-4,
    });
  }
  return ManifestV2Schema.parse({
    manifestVersion: 2,
    name: 'silero-vad',
    version: '0.0.3',
    description: `Silero VAD (the h/c LSTM-state interface of v3/v4) from ${model.pkg} ${model.file}: speech probability per 32 ms frame of 16 kHz audio.`,
    task: 'anomaly',
    quantization: 'fp32',
    artifact: await artifact(model),
    inputs: [
      { name: 'input', dtype: 'float32', shape: [1, VAD_FRAME], source: { kind: 'window', features: [{ name: 'audio' }], size: VAD_FRAME, hop: VAD_FRAME, layout: 'T' } },
      { name: 'sr', dtype: 'int64', shape: [], source: { kind: 'constant', values: [SAMPLE_RATE] } },
      { name: 'h', dtype: 'float32', shape: [2, 1, 64], source: { kind: 'state', output: 'hn' } },
      { name: 'c', dtype: 'float32', shape: [2, 1, 64], source: { kind: 'state', output: 'cn' } },
    ],
    outputs: [
      { name: 'output', dtype: 'float32', shape: [1, 1] },
      { name: 'hn', dtype: 'float32', shape: [2, 1, 64] },
      { name: 'cn', dtype: 'float32', shape: [2, 1, 64] },
    ],
    postprocessing: { kind: 'anomaly', output: 'output', index: 0, threshold: 0.5 },
    testVectors,
  });
}

/**
 * UltraFace RFB-320 (fr_detect.onnx): 320×240 RGB, (p − 127) / 128, NCHW; `scores` [1, 4420, 2]
 * softmax (background, face) and `boxes` [1, 4420, 4] already decoded against the priors, corner
 * form x1 y1 x2 y2, normalized to 0..1 (checked: x2 ≥ x1 on every row, softmax rows sum to 1).
 *
 * Decoder `nms` with boxes + scores, xyxy, normalized, is the closest the schema has: the model
 * does no NMS (the agent applies threshold and NMS after any decoder), and its scores carry a
 * background column, [1, N, 2] rather than the [1, K] the `nms` decoder documents. Thresholds are
 * UltraFace's own (0.7 score, 0.3 IoU).
 */
export async function ultraFaceManifest(model: ThirdPartyModel, run: RunFn): Promise<ManifestV2> {
  const source = ImageSourceSchema.parse({ kind: 'image', width: 320, height: 240, fit: 'fill', colour: 'rgb', layout: 'NCHW', scale: 1, mean: [127, 127, 127], std: [128, 128, 128] });
  const input = imageTensor(await faceImage(), source);
  const r = await run({ input });
  return ManifestV2Schema.parse({
    manifestVersion: 2,
    name: 'ultraface-rfb-320',
    version: '0.0.1',
    description: `UltraFace RFB-320 face detector from ${model.pkg} ${model.file}.`,
    task: 'detection',
    quantization: 'fp32',
    artifact: await artifact(model),
    inputs: [{ name: 'input', dtype: 'float32', shape: [1, 3, 240, 320], source }],
    outputs: [
      { name: 'scores', dtype: 'float32', shape: [1, 4420, 2] },
      { name: 'boxes', dtype: 'float32', shape: [1, 4420, 4] },
    ],
    postprocessing: {
      kind: 'detection',
      // Boxes decoded in the model, scores [1, N, 2] with a background column, no NMS inside:
      // the agent thresholds, runs NMS and maps boxes back (agent/postprocess/detection.ts).
      decoder: 'decoded',
      labels: ['background', 'face'],
      ignoreClasses: [0],
      boxes: 'boxes',
      scores: 'scores',
      boxFormat: 'xyxy',
      normalized: true,
      scoreThreshold: 0.7,
      iouThreshold: 0.3,
      maxDetections: 100,
    },
    testVectors: [{ inputs: { input: valuesOf(input) }, expected: { scores: valuesOf(r['scores']!), boxes: valuesOf(r['boxes']!) }, tolerance: 1e-3 }],
  });
}

/**
 * PaddleOCR v4 text detector (DB): any H×W that is a multiple of 32, a text-probability map
 * [1, 1, H, W] out. Preprocessing as PaddleOCR's own: the image in BGR order (cv2), /255, then
 * ImageNet mean/std in that order, long side capped at 960. Segmentation with one label and
 * PaddleOCR's binarization threshold 0.3.
 */
export async function ppocrDetManifest(model: ThirdPartyModel, run: RunFn): Promise<ManifestV2> {
  const source = ImageSourceSchema.parse({
    kind: 'image',
    width: 960,
    height: 960,
    fit: 'inside',
    colour: 'bgr',
    layout: 'NCHW',
    scale: 1 / 255,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
    dynamic: { multiple: 32, maxSide: 960 },
  });
  const x = imageTensor(await textImage(), source);
  const r = await run({ x });
  return ManifestV2Schema.parse({
    manifestVersion: 2,
    name: 'ppocr-v4-det',
    version: '1.4.2',
    description: `PaddleOCR v4 text detector (DB probability map) from ${model.pkg} ${model.file}.`,
    task: 'segmentation',
    quantization: 'fp32',
    artifact: await artifact(model),
    inputs: [{ name: 'x', dtype: 'float32', shape: [1, 3, 'H', 'W'], source }],
    outputs: [{ name: 'sigmoid_0.tmp_0', dtype: 'float32', shape: [1, 1, 'H', 'W'] }],
    postprocessing: { kind: 'segmentation', output: 'sigmoid_0.tmp_0', labels: ['text'], activation: 'probability', threshold: 0.3 },
    testVectors: [{ inputs: { x: valuesOf(x) }, expected: { 'sigmoid_0.tmp_0': valuesOf(r['sigmoid_0.tmp_0']!) }, tolerance: 1e-3 }],
  });
}

// ------------------------------------------------------------------ openWakeWord chain

/**
 * openWakeWord's streaming arithmetic (its Python reference, openwakeword/utils.py
 * AudioFeatures; also wyoming-openwakeword): 16 kHz int16-scale audio in 80 ms chunks of 1280
 * samples; the mel model runs on each chunk plus the previous 480 samples (1760) and gives 8
 * frames of 32 mel bins (measured here: frames = ⌊(samples − 512) / 160⌋ + 1), transformed
 * x / 10 + 2 outside the model; the embedding model runs on the last 76 mel frames every 8 new
 * frames (so once per chunk) and gives one 96-vector; a wake-word head runs on the last 16
 * embeddings (hey_jarvis; other heads take 16-34) and gives one score. The first score comes
 * after 10 + 15 = 25 chunks (2.0 s); Python pre-fills both buffers to score from the start.
 *
 * The mel model clamps to (max − 80 dB) over each call, so its frames depend on the span it was
 * called on: a whole clip at once does not give the streamed frames (a 39-unit difference on a
 * test signal), and a chain must call it exactly this way.
 */
export const OWW = {
  sampleRate: SAMPLE_RATE,
  chunk: 1280,
  melContext: 480,
  melSamples: 1760,
  melFramesPerCall: 8,
  melBins: 32,
  /** int16 scale: the models were trained on int16 PCM values as floats. */
  audioScale: 32768,
  melTransform: { scale: 0.1, offset: 2 },
  embeddingWindow: 76,
  embeddingHop: 8,
  embeddingDim: 96,
  headWindow: 16,
} as const;

/**
 * How one stage's output feeds the next: the upstream tensor, an elementwise affine transform,
 * and the frames accumulated into a sliding window (size frames, run every hop new frames).
 * This is what ManifestV2 cannot say yet (see the report): the `upstream` source names only the
 * output.
 */
export interface ChainLink {
  from: 'mel' | 'embedding';
  output: string;
  to: 'embedding' | 'head';
  input: string;
  affine?: { scale: number; offset: number };
  frames: { size: number; hop: number; featureSize: number };
}

export interface WakewordChain {
  stages: { mel: ManifestV2; embedding: ManifestV2; head: ManifestV2 };
  links: [ChainLink, ChainLink];
}

export const WAKEWORD_LINKS: WakewordChain['links'] = [
  { from: 'mel', output: 'output', to: 'embedding', input: 'input_1', affine: OWW.melTransform, frames: { size: OWW.embeddingWindow, hop: OWW.embeddingHop, featureSize: OWW.melBins } },
  { from: 'embedding', output: 'conv2d_19', to: 'head', input: 'x.1', frames: { size: OWW.headWindow, hop: 1, featureSize: OWW.embeddingDim } },
];

export interface WakewordStep {
  /** New mel frames of this chunk, transformed (8 × 32). */
  mel: Float32Array;
  /** The embedding computed at this chunk, if the mel buffer was full. */
  embedding?: Float32Array;
  /** The head's score at this chunk, if 16 embeddings were there. */
  score?: number;
  /** The exact tensors fed to each stage this chunk (for test vectors and comparisons). */
  feeds: { mel: Tensor; embedding?: Tensor; head?: Tensor };
}

/**
 * openWakeWord's streaming loop, one 1280-sample chunk (floats in [-1, 1]) at a time, run by hand
 * through three RunFns and the chain links. The mel and embedding buffers start empty (no
 * pre-fill), the audio context as 480 samples of silence, so every mel call takes 1760 samples.
 */
export class WakewordStream {
  private audio = new Float32Array(OWW.melContext);
  private mel: Float32Array[] = [];
  private embeddings: Float32Array[] = [];
  private sinceEmbedding = 0;

  constructor(private readonly runs: { mel: RunFn; embedding: RunFn; head: RunFn }) {}

  async push(chunk: Float32Array): Promise<WakewordStep> {
    if (chunk.length !== OWW.chunk) throw new Error(`a chunk is ${OWW.chunk} samples, got ${chunk.length}`);
    const [toEmbedding, toHead] = WAKEWORD_LINKS;
    const samples = new Float32Array(OWW.melSamples);
    samples.set(this.audio);
    samples.set(chunk, OWW.melContext);
    this.audio = samples.slice(OWW.melSamples - OWW.melContext);
    const melIn = f32([1, OWW.melSamples], samples.map((v) => v * OWW.audioScale));
    const melOut = (await this.runs.mel({ input: melIn }))[toEmbedding.output]!;
    const frames = melOut.data.map((v) => v * toEmbedding.affine!.scale + toEmbedding.affine!.offset);
    const step: WakewordStep = { mel: frames, feeds: { mel: melIn } };
    const nFrames = frames.length / OWW.melBins;
    for (let j = 0; j < nFrames; j++) this.mel.push(frames.slice(j * OWW.melBins, (j + 1) * OWW.melBins));
    this.mel.splice(0, Math.max(0, this.mel.length - toEmbedding.frames.size));
    this.sinceEmbedding += nFrames;
    if (this.mel.length < toEmbedding.frames.size || this.sinceEmbedding < toEmbedding.frames.hop) return step;
    this.sinceEmbedding = 0;

    const embIn = f32([1, toEmbedding.frames.size, OWW.melBins, 1], concat(this.mel));
    const emb = (await this.runs.embedding({ [toEmbedding.input]: embIn }))[toHead.output]!.data.slice();
    step.embedding = emb;
    step.feeds.embedding = embIn;
    this.embeddings.push(emb);
    this.embeddings.splice(0, Math.max(0, this.embeddings.length - toHead.frames.size));
    if (this.embeddings.length < toHead.frames.size) return step;

    const headIn = f32([1, toHead.frames.size, OWW.embeddingDim], concat(this.embeddings));
    const out = await this.runs.head({ [toHead.input]: headIn });
    step.score = out['53']!.data[0]!;
    step.feeds.head = headIn;
    return step;
  }
}

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Runs a whole clip (a multiple of 1280 samples) through a fresh stream. */
export async function runWakewordClip(runs: { mel: RunFn; embedding: RunFn; head: RunFn }, audio: Float32Array): Promise<WakewordStep[]> {
  const stream = new WakewordStream(runs);
  const steps: WakewordStep[] = [];
  for (let at = 0; at + OWW.chunk <= audio.length; at += OWW.chunk) steps.push(await stream.push(audio.subarray(at, at + OWW.chunk)));
  return steps;
}

/**
 * The three openWakeWord stages as v2 manifests, plus the links between them. Each stage parses
 * on its own; the chain (which manifest feeds which, the x/10+2 between mel and embedding, the
 * framing) lives in `links`, because ManifestV2 has no `chain` and `upstream` names only the
 * output. Test vectors come from a streamed run over 2.4 s of speech-like audio.
 *
 * The head's postprocessing is `anomaly`, threshold 0.5 on its single sigmoid score, for the
 * same reason as Silero VAD's.
 */
export async function wakewordChain(
  models: { mel: ThirdPartyModel; embedding: ThirdPartyModel; head: ThirdPartyModel },
  runs: { mel: RunFn; embedding: RunFn; head: RunFn },
): Promise<WakewordChain> {
  const steps = await runWakewordClip(runs, speechLike(30 * OWW.chunk, 7));
  const last = steps[steps.length - 1]!;
  if (!last.feeds.embedding || !last.feeds.head || last.score === undefined) throw new Error('30 chunks should reach the head');
  const melOut = (await runs.mel({ input: last.feeds.mel }))['output']!;
  const embOut = (await runs.embedding({ input_1: last.feeds.embedding }))['conv2d_19']!;
  const headOut = (await runs.head({ 'x.1': last.feeds.head }))['53']!;
  const common = { manifestVersion: 2, quantization: 'fp32' } as const;
  const mel = ManifestV2Schema.parse({
    ...common,
    name: 'oww-melspectrogram',
    version: '0.1.1',
    description: `openWakeWord mel front end from ${models.mel.pkg} ${models.mel.file}: 1760 samples (80 ms + 30 ms context) → 8 × 32 log-mel frames.`,
    task: 'embedding',
    artifact: await artifact(models.mel),
    inputs: [
      {
        name: 'input',
        dtype: 'float32',
        shape: [1, OWW.melSamples],
        // Audio readings in [-1, 1], scaled to int16 values: (x − 0) / (1/32768).
        source: { kind: 'window', features: [{ name: 'audio', mean: 0, std: 1 / OWW.audioScale }], size: OWW.melSamples, hop: OWW.chunk, layout: 'T' },
      },
    ],
    outputs: [{ name: 'output', dtype: 'float32', shape: [1, 1, OWW.melFramesPerCall, OWW.melBins] }],
    postprocessing: { kind: 'embedding', outputs: ['output'], maxElements: OWW.melFramesPerCall * OWW.melBins },
    testVectors: [{ inputs: { input: valuesOf(last.feeds.mel) }, expected: { output: valuesOf(melOut) }, tolerance: 1e-3 }],
  });
  const embedding = ManifestV2Schema.parse({
    ...common,
    name: 'oww-embedding',
    version: '0.1.1',
    description: `openWakeWord speech embedding from ${models.embedding.pkg} ${models.embedding.file}: 76 mel frames → one 96-vector.`,
    task: 'embedding',
    artifact: await artifact(models.embedding),
    inputs: [{ name: 'input_1', dtype: 'float32', shape: [1, OWW.embeddingWindow, OWW.melBins, 1], source: { kind: 'upstream', output: 'output' } }],
    outputs: [{ name: 'conv2d_19', dtype: 'float32', shape: [1, 1, 1, OWW.embeddingDim] }],
    postprocessing: { kind: 'embedding', outputs: ['conv2d_19'], maxElements: OWW.embeddingDim },
    testVectors: [{ inputs: { input_1: valuesOf(last.feeds.embedding) }, expected: { conv2d_19: valuesOf(embOut) }, tolerance: 1e-3 }],
  });
  const head = ManifestV2Schema.parse({
    ...common,
    name: 'oww-hey-jarvis',
    version: '0.1.1',
    description: `openWakeWord "hey jarvis" head from ${models.head.pkg} ${models.head.file}: 16 embeddings (1.28 s) → wake-word probability.`,
    task: 'anomaly',
    artifact: await artifact(models.head),
    inputs: [{ name: 'x.1', dtype: 'float32', shape: [1, OWW.headWindow, OWW.embeddingDim], source: { kind: 'upstream', output: 'conv2d_19' } }],
    outputs: [{ name: '53', dtype: 'float32', shape: [1, 1] }],
    postprocessing: { kind: 'anomaly', output: '53', index: 0, threshold: 0.5 },
    testVectors: [{ inputs: { 'x.1': valuesOf(last.feeds.head) }, expected: { '53': valuesOf(headOut) }, tolerance: 1e-4 }],
  });
  return { stages: { mel, embedding, head }, links: WAKEWORD_LINKS };
}
