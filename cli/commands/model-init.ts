/**
 * `edgefleet model init <file.onnx>` (issue #13): drafts a manifest v2 from the model itself.
 *
 *  1. sha256, size, and a quantization guess from the operator names in the file (QDQ /
 *     QOperator / fp16 tensors);
 *  2. the model's inputs and outputs through the hub's own hardened probe (runProbe: a child
 *     process with a timeout, an RSS watch and an address-space cap), so a file the hub would not
 *     load fails here the same way;
 *  3. sources, task and postprocessing guessed from that metadata (model-init-guess.ts);
 *  4. a reference run in a second guarded child (model-init-child.ts: every input, every
 *     output) on deterministic inputs, or with `--image` on real images, recorded as test
 *     vectors: inline when small, else in an .npz sidecar beside the manifest
 *     (`testVectorsFile`, shared/test-vectors.ts);
 *  5. the draft checked with ManifestV2Schema and written, with what was guessed and what a
 *     person must check printed.
 *
 * `--image` preprocessing uses sharp directly with the drafted source's size, fit (fill, or
 * letterbox: aspect kept, centred, padded), colour, layout, scale and mean/std. It is not the
 * agent's own preprocessing (the v2 letterbox path is written elsewhere), which does not matter
 * for the vectors: they hold the tensor as fed, so they check the model, not the resize.
 */
import { spawn, execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { NameSchema } from '../../shared/ids.ts';
import { silentLogger, type Logger } from '../../shared/log.ts';
import { ManifestV1Schema, ManifestV2Schema, type InputSpecV2, type ManifestV2, type TensorDtypeV2 } from '../../shared/manifest.ts';
import { childExecArgv, siblingModule } from '../../shared/modules.ts';
import { TASKS, type ImageSource, type Task } from '../../shared/tasks/specs.ts';
import { encodeTestVectorsNpz, inlineTestVectorsOf, numbersOf, testVectorsFileEntry, type RecordedCase, type RecordedTensor } from '../../shared/test-vectors.ts';
import { allocTensor, floatToHalf, type TensorData } from '../../shared/tensor.ts';
import { runProbe, type ProbeLimits } from '../../shared/validate/model-probe.ts';
import { EXIT, failure, humanBytes, UsageError, type CliIo } from '../command.ts';
import { guessModel, refineWithOutputs, V2_DTYPES, type Guess } from './model-init-guess.ts';
import { INIT_READY_LINE, INIT_RESULT_PREFIX, InitResultSchema, type InitRequest, type InitResult, type WireTensor } from './model-init-protocol.ts';

const USAGE = `usage: edgefleet model init <file.onnx> [--name <n>] [--version 1.0.0] [--out <m.manifest.json>]
                           [--image <sample.jpg>]... [--task <task>] [--primary <input>]
                           [--constant <input>=v1,v2,...]... [--dim <name>=<n>]... [--tolerance <t>]
                           [--quantization fp32|fp16|int8-qdq|int8-qoperator]
                           [--vectors-inline-max <elements>] [--force] [--json]

Drafts a manifest v2 for a model from the model itself: inputs and outputs (loaded in a
guarded child process), sha256 and size, a guessed task, decoder and input sources, and test
vectors from a reference run. Prints what it guessed and what you must check (labels,
thresholds, input scaling) before pushing it with 'edgefleet model push'.

  --name <n>                 model name (default: the file name)
  --version <v>              semver (default 1.0.0)
  --out <file>               manifest to write (default <file>.manifest.json beside the model;
                             the .onnx must sit beside the manifest when it is pushed)
  --image <file>             run the reference on this image (repeat for more cases) instead of
                             deterministic synthetic inputs; resized with sharp to the drafted
                             image source (fill, or letterbox for detection)
  --task <task>              ${TASKS.join(', ')} (default: guessed)
  --primary <input>          the input that takes the request, when several could
  --constant <input>=<v,...> values of a constant input (default zeros), e.g. --constant sr=16000
  --dim <name>=<n>           size of a symbolic dim for the reference run and the drafted
                             sources, e.g. --dim sequence=512 (default: image 640, window 64,
                             one-channel window 512, anything else 1)
  --tolerance <t>            max absolute difference per element (default from the quantization
                             and the output magnitude)
  --quantization <q>         default: guessed from the operators in the file
  --vectors-inline-max <n>   test vectors up to n elements in all stay in the manifest; more go
                             to an .npz sidecar beside it (default ${16_384})
  --force                    overwrite an existing manifest or sidecar
  --json                     print the summary as JSON

Exit codes: 0 written, 1 the model could not be loaded or described, 2 usage.
`;

type Quantization = ManifestV2['quantization'];
const QUANTIZATIONS: readonly Quantization[] = ['fp32', 'fp16', 'int8-qdq', 'int8-qoperator'];

export const DEFAULT_INLINE_MAX = 16_384;
/** The hub refuses manifests over its `models.maxManifestBytes` (default 8 MiB). */
const HUB_DEFAULT_MAX_MANIFEST_BYTES = 8 * 1024 * 1024;

/** Budgets of both children: generous, this runs on an operator's machine, but bounded. */
export const DEFAULT_INIT_LIMITS: ProbeLimits = {
  timeoutMs: 120_000,
  maxRssBytes: 2 * 1024 ** 3,
  addressSpaceBudgetBytes: 4 * 1024 ** 3,
};

export interface ModelInitOptions {
  modelPath: string;
  name?: string;
  version?: string;
  /** Manifest path; default `<model stem>.manifest.json` beside the model. */
  out?: string;
  images?: string[];
  task?: Task;
  primary?: string;
  constants?: Record<string, number[]>;
  /** Sizes of symbolic dims for the reference run and the drafted sources (`sequence: 512`). */
  dims?: Record<string, number>;
  tolerance?: number;
  quantization?: Quantization;
  vectorsInlineMax?: number;
  force?: boolean;
  limits?: ProbeLimits;
  log?: Logger;
}

export interface ModelInitResult {
  manifestPath: string;
  manifest: ManifestV2;
  /** Path of the .npz sidecar, when the vectors went there. */
  testVectorsPath: string | undefined;
  guess: Guess;
  /** The reference cases as recorded (inputs as fed, every output). */
  cases: RecordedCase[];
  /** How the quantization was decided. */
  quantizationFrom: string;
}

const ARTIFACT_NAME = /^[A-Za-z0-9._-]+\.onnx$/;

function fail(message: string, code: ErrorCode = ErrorCode.BAD_MODEL): EdgefleetError {
  return new EdgefleetError(code, message);
}

// ------------------------------------------------------------------------------- the file

/**
 * sha256, size and which quantization operators the file names, in one streamed pass. Operator
 * types are plain strings in the protobuf, so a byte search finds them without parsing an
 * untrusted model in this process.
 */
async function scanModel(path: string): Promise<{ sha256: string; size: number; ops: Set<string> }> {
  const needles = ['QLinearConv', 'QLinearMatMul', 'MatMulInteger', 'ConvInteger', 'QGemm', 'QuantizeLinear', 'DequantizeLinear'].map((s) => Buffer.from(s));
  const hash = createHash('sha256');
  const ops = new Set<string>();
  let size = 0;
  let tail = Buffer.alloc(0);
  for await (const chunk of createReadStream(path)) {
    const b = chunk as Buffer;
    hash.update(b);
    size += b.length;
    const window = Buffer.concat([tail, b]);
    for (const n of needles) if (window.includes(n)) ops.add(n.toString());
    tail = window.subarray(Math.max(0, window.length - 32));
  }
  return { sha256: hash.digest('hex'), size, ops };
}

function guessQuantization(ops: ReadonlySet<string>, dtypes: readonly string[]): { q: Quantization; from: string } {
  const qop = ['QLinearConv', 'QLinearMatMul', 'MatMulInteger', 'ConvInteger', 'QGemm'].filter((o) => ops.has(o));
  if (qop.length) return { q: 'int8-qoperator', from: `operators ${qop.join(', ')}` };
  if (ops.has('QuantizeLinear') || ops.has('DequantizeLinear')) return { q: 'int8-qdq', from: 'QuantizeLinear/DequantizeLinear operators' };
  if (dtypes.includes('float16')) return { q: 'fp16', from: 'float16 inputs or outputs' };
  return { q: 'fp32', from: 'no quantization operators, no float16 tensors' };
}

// ---------------------------------------------------------------------- reference child

async function procStatusKb(pid: number, field: 'VmRSS' | 'VmSize'): Promise<number | undefined> {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs model-init-child.ts on `req` with the same guards as the model probe
 * (shared/validate/model-probe.ts): a timeout, an RSS watch, and RLIMIT_AS set with prlimit to
 * the child's baseline plus a budget once it has loaded onnxruntime. Rejects with PROBE_FAILED
 * when the child never got as far as the model, BAD_MODEL when the model brought it down.
 */
export function runReference(req: InitRequest, limits: ProbeLimits, log: Logger): Promise<Extract<InitResult, { ok: true }>> {
  const url = siblingModule(import.meta.url, './model-init-child');
  const child = spawn(process.execPath, [...childExecArgv(url), fileURLToPath(url)], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, NODE_OPTIONS: '' } });
  const pid = child.pid;
  let ready = false;
  let killedFor: string | undefined;
  let resultLine: string | undefined;
  let stderr = '';
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const kill = (why: string): void => {
    killedFor ??= why;
    child.kill('SIGKILL');
  };
  const timer = setTimeout(() => kill(`timed out after ${limits.timeoutMs} ms`), limits.timeoutMs);
  let polling = false;
  const poll = setInterval(() => {
    if (pid === undefined || polling) return;
    polling = true;
    void procStatusKb(pid, 'VmRSS')
      .then((kb) => {
        if (kb !== undefined && kb * 1024 > limits.maxRssBytes) kill(`used ${Math.round(kb / 1024)} MiB of memory, more than ${Math.round(limits.maxRssBytes / 2 ** 20)} MiB allowed`);
      })
      .finally(() => (polling = false));
  }, limits.pollMs ?? 25);

  const onReady = async (): Promise<void> => {
    if (pid !== undefined) {
      const baseKb = await procStatusKb(pid, 'VmSize');
      if (baseKb !== undefined) {
        await new Promise<void>((res) => {
          execFile('prlimit', [`--pid=${pid}`, `--as=${baseKb * 1024 + limits.addressSpaceBudgetBytes}`], { timeout: 2000 }, (err) => {
            if (err) log.warn({ err }, 'cannot cap the model init child address space (prlimit); relying on the RSS watch');
            res();
          });
        });
      }
    }
    child.stdin.end(JSON.stringify(req));
  };

  // Lines are found in each new chunk only: the result line of a big model is many megabytes.
  const MAX_OUTPUT = 512 * 1024 * 1024;
  child.stdout.on('data', (chunk: Buffer) => {
    let start = 0;
    let nl: number;
    while ((nl = chunk.indexOf(0x0a, start)) >= 0) {
      pending.push(chunk.subarray(start, nl));
      const line = Buffer.concat(pending).toString('utf8');
      pending = [];
      pendingBytes = 0;
      start = nl + 1;
      if (line === INIT_READY_LINE && !ready) {
        ready = true;
        onReady().catch(() => kill('could not be handed the request'));
      } else if (line.startsWith(INIT_RESULT_PREFIX)) resultLine = line.slice(INIT_RESULT_PREFIX.length);
    }
    pending.push(chunk.subarray(start));
    pendingBytes += chunk.length - start;
    if (pendingBytes > MAX_OUTPUT) kill('wrote too much output');
  });
  child.stdin.on('error', () => undefined); // it may die before reading; its exit says why
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => {
    if (stderr.length < 8192) stderr += s;
  });

  return new Promise((resolvePromise, reject) => {
    child.once('error', (err) => {
      killedFor ??= `could not be started: ${err.message}`;
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      clearInterval(poll);
      const exit = killedFor ?? (signal ? `died with ${signal}` : `exited with code ${code ?? '?'}`);
      if (!ready) {
        const last = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('Node.js v'));
        log.error({ exit, stderr: stderr.slice(-2000) }, 'the model init child failed before it saw the model');
        reject(new EdgefleetError(ErrorCode.PROBE_FAILED, `the reference run could not start: its child process ${exit} before it was ready${last.length ? ` (${last.find((l) => /Error\b/.test(l)) ?? last.at(-1)})` : ''}`));
        return;
      }
      let result: InitResult | undefined;
      if (resultLine !== undefined && !killedFor) {
        try {
          const parsed = InitResultSchema.safeParse(JSON.parse(resultLine));
          result = parsed.success ? parsed.data : { ok: false, error: 'the reference run answered nonsense' };
        } catch {
          result = { ok: false, error: 'the reference run answered nonsense' };
        }
      }
      if (!result) reject(fail(`the model could not be run safely: the reference run ${exit}`));
      else if (!result.ok) reject(fail(result.error));
      else resolvePromise(result);
    });
  });
}

// -------------------------------------------------------------------------- reference inputs

/** mulberry32: small, seeded, the same numbers everywhere. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const seedOf = (s: string): number => createHash('sha256').update(s).digest().readUInt32LE(0);

/** The concrete dims a case feeds: image H/W and window length from the source, then --dim, else 1. */
function feedDims(spec: InputSpecV2, dims: Readonly<Record<string, number>> = {}): number[] {
  const src = spec.source;
  return spec.shape.map((d, i) => {
    if (typeof d === 'number') return d;
    if (src.kind === 'image') {
      const hAt = src.layout === 'NCHW' ? 2 : 1;
      if (i === hAt) return src.height;
      if (i === hAt + 1) return src.width;
    }
    if (src.kind === 'window' && i === (src.layout === 'FT' ? 2 : 1)) return src.size;
    return Object.hasOwn(dims, d) ? (dims[d] as number) : 1;
  });
}

function fromNumbers(dtype: TensorDtypeV2, values: ArrayLike<number>): TensorData {
  switch (dtype) {
    case 'float32':
      return Float32Array.from(values);
    case 'float16':
      return Uint16Array.from(values, floatToHalf);
    case 'uint8':
      return Uint8Array.from(values, (v) => Math.min(255, Math.max(0, Math.round(v))));
    case 'bool':
      return Uint8Array.from(values, (v) => (v ? 1 : 0));
    case 'int8':
      return Int8Array.from(values, (v) => Math.min(127, Math.max(-128, Math.round(v))));
    case 'int32':
      return Int32Array.from(values, (v) => Math.round(v));
    case 'int64':
      return BigInt64Array.from(values, (v) => BigInt(Math.round(v)));
  }
}

/** Synthetic values for one input of one case: pixels for images, k/64 in [-2, 2] for readings. */
function syntheticInput(spec: InputSpecV2, k: number, symbolic: Readonly<Record<string, number>> = {}): RecordedTensor {
  const dims = feedDims(spec, symbolic);
  const n = dims.reduce((a, b) => a * b, 1);
  const src = spec.source;
  const rand = rng(seedOf(`${k}:${spec.name}`));
  const values = new Float64Array(n);
  if (src.kind === 'constant') values.set(src.values.slice(0, n));
  else if (src.kind === 'state') values.fill(src.init);
  else if (src.kind === 'image') {
    const c = dims[src.layout === 'NCHW' ? 1 : 3] as number;
    for (let i = 0; i < n; i++) {
      const ch = src.layout === 'NCHW' ? Math.floor(i / (n / c)) % c : i % c;
      const p = Math.floor(rand() * 256);
      values[i] = (p * src.scale - (src.mean[ch] ?? src.mean[0] ?? 0)) / (src.std[ch] ?? src.std[0] ?? 1);
    }
  } else if (src.kind === 'reading' || src.kind === 'window') {
    for (let i = 0; i < n; i++) values[i] = Math.round(rand() * 256 - 128) / 64;
  }
  return { dtype: spec.dtype, dims, data: fromNumbers(spec.dtype, values) };
}

/** An image file → the tensor the drafted image source describes (sharp, see the header). */
async function imageInput(spec: InputSpecV2 & { source: ImageSource }, file: string): Promise<RecordedTensor> {
  const { default: sharp } = await import('sharp');
  const src = spec.source;
  if (!['float32', 'float16', 'uint8'].includes(spec.dtype)) throw new UsageError(`--image: input ${spec.name} is ${spec.dtype}; only float32, float16 and uint8 images are supported`);
  const channels = src.colour === 'gray' ? 1 : src.colour === 'rgba' ? 4 : 3;
  let img = sharp(await readFile(file), { failOn: 'error', limitInputPixels: 40_000_000 }).rotate();
  const pad = { r: src.pad, g: src.pad, b: src.pad, alpha: 1 };
  img = src.fit === 'letterbox' || src.fit === 'contain' ? img.resize(src.width, src.height, { fit: 'contain', background: pad, position: 'centre' }) : img.resize(src.width, src.height, { fit: src.fit });
  img = src.colour === 'gray' ? img.toColourspace('b-w') : src.colour === 'rgba' ? img.ensureAlpha() : img.removeAlpha();
  let raw: { data: Buffer; info: { width: number; height: number; channels: number } };
  try {
    raw = await img.raw().toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw new UsageError(`--image ${file}: ${(err as Error).message}`);
  }
  const { width: w, height: h } = raw.info;
  if (w !== src.width || h !== src.height || raw.info.channels !== channels) {
    throw new UsageError(`--image ${file}: came out ${w}x${h}x${raw.info.channels}, the input wants ${src.width}x${src.height}x${channels} (fit ${src.fit})`);
  }
  const dims = src.layout === 'NCHW' ? [1, channels, h, w] : [1, h, w, channels];
  const values = new Float64Array(w * h * channels);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < channels; c++) {
        const from = src.colour === 'bgr' ? 2 - c : c;
        const p = raw.data[(y * w + x) * channels + from] as number;
        const v = spec.dtype === 'uint8' ? p : (p * src.scale - (src.mean[c] ?? src.mean[0] ?? 0)) / (src.std[c] ?? src.std[0] ?? 1);
        values[src.layout === 'NCHW' ? (c * h + y) * w + x : (y * w + x) * channels + c] = v;
      }
    }
  }
  return { dtype: spec.dtype, dims, data: fromNumbers(spec.dtype, values) };
}

const wire = (t: RecordedTensor): WireTensor => ({ type: t.dtype, dims: t.dims, b64: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).toString('base64') });

const ITEM_BYTES: Record<TensorDtypeV2, number> = { float32: 4, float16: 2, uint8: 1, int8: 1, int32: 4, int64: 8, bool: 1 };

/** A tensor from the child, checked before anything is allocated for it: the child is not trusted. */
function unwire(t: WireTensor, what: string): RecordedTensor {
  if (!(V2_DTYPES as readonly string[]).includes(t.type)) throw fail(`${what} came back as ${t.type}`);
  const dtype = t.type as TensorDtypeV2;
  const bytes = Buffer.from(t.b64, 'base64');
  const n = t.dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== n * ITEM_BYTES[dtype]) throw fail(`${what}: ${bytes.length} bytes for dims [${t.dims.join(', ')}] of ${dtype}`);
  const out = allocTensor(dtype, n);
  new Uint8Array(out.buffer).set(bytes);
  return { dtype, dims: t.dims, data: out };
}

// ------------------------------------------------------------------------------ the command

/**
 * JSON for people: a value that fits on a line (a feature, a shape, a flat object) stays on
 * one; arrays of numbers always do (test vectors hold thousands of them).
 */
export function formatJson(value: unknown, indent = ''): string {
  const entries = (v: object): [string, unknown][] => Object.entries(v).filter(([, x]) => x !== undefined);
  const oneLine = (v: unknown): string => {
    if (Array.isArray(v)) return `[${v.map(oneLine).join(', ')}]`;
    if (v !== null && typeof v === 'object') return `{${entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${oneLine(x)}`).join(', ')}}`;
    return JSON.stringify(v) ?? 'null';
  };
  const numbers = Array.isArray(value) && value.every((v) => typeof v === 'number');
  if (value === null || typeof value !== 'object' || numbers) return oneLine(value);
  const line = oneLine(value);
  if (line.length <= 96) return line;
  const next = `${indent}  `;
  if (Array.isArray(value)) return `[\n${value.map((v) => `${next}${formatJson(v, next)}`).join(',\n')}\n${indent}]`;
  return `{\n${entries(value).map(([k, v]) => `${next}${JSON.stringify(k)}: ${formatJson(v, next)}`).join(',\n')}\n${indent}}`;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function writeAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Default tolerance: float error grows with the magnitudes and with the precision given up. */
function defaultTolerance(q: Quantization, cases: readonly RecordedCase[]): number {
  let maxAbs = 0;
  for (const c of cases) {
    for (const t of Object.values(c.outputs)) {
      if (t.dtype !== 'float32' && t.dtype !== 'float16') continue;
      for (const v of numbersOf(t)) if (Number.isFinite(v)) maxAbs = Math.max(maxAbs, Math.abs(v));
    }
  }
  const rel = q === 'fp32' ? 1e-3 : 2e-2;
  return Number((rel * Math.max(1, maxAbs)).toPrecision(2));
}

function defaultName(modelPath: string): string {
  const stem = basename(modelPath).replace(/\.onnx$/i, '');
  const s = stem.replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64);
  return s || 'model';
}

/** Drafts and writes the manifest (and sidecar); the command's body, exported for tests and scripts. */
export async function modelInit(opts: ModelInitOptions): Promise<ModelInitResult> {
  const log = opts.log ?? silentLogger();
  const limits = opts.limits ?? DEFAULT_INIT_LIMITS;
  const modelPath = resolve(opts.modelPath);
  const artifactFile = basename(modelPath);
  if (!ARTIFACT_NAME.test(artifactFile)) throw new UsageError(`${artifactFile}: the manifest names its artifact as [A-Za-z0-9._-]+.onnx; rename the file`);
  const name = opts.name ?? defaultName(modelPath);
  if (!NameSchema.safeParse(name).success) throw new UsageError(`--name ${name}: 1-64 of [A-Za-z0-9._-], starting with a letter or digit`);
  const version = opts.version ?? '1.0.0';
  if (!ManifestV1Schema.shape.version.safeParse(version).success) throw new UsageError(`--version ${version}: expected semver such as 1.0.0`);
  const inlineMax = opts.vectorsInlineMax ?? DEFAULT_INLINE_MAX;
  const manifestPath = resolve(opts.out ?? join(dirname(modelPath), `${artifactFile.replace(/\.onnx$/, '')}.manifest.json`));
  const sidecarFile = `${basename(manifestPath).replace(/(\.manifest)?\.json$/, '').replace(/[^A-Za-z0-9._-]/g, '_') || 'model'}.vectors.npz`;
  const sidecarPath = join(dirname(manifestPath), sidecarFile);
  if (opts.images && opts.images.length > 64) throw new UsageError('--image: at most 64 images (one test case each)');

  let scan: Awaited<ReturnType<typeof scanModel>>;
  try {
    scan = await scanModel(modelPath);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_INPUT, `cannot read ${opts.modelPath}: ${(err as Error).message}`, { cause: err });
  }
  if (!opts.force) {
    for (const p of [manifestPath, sidecarPath]) if (await exists(p)) throw new EdgefleetError(ErrorCode.CONFLICT, `${p} exists; --force overwrites it`);
  }

  // The hub's probe, metadata only (no test vectors yet): the same loader and guards as a push.
  const probe = await runProbe({ path: modelPath, vectors: [] }, limits, log);
  if (!probe.result) throw fail(`the model could not be loaded safely: the loader ${probe.exit}`);
  if (!probe.result.ok) throw fail(probe.result.error);
  const meta = probe.result;
  const nonTensor = [...meta.inputs, ...meta.outputs].find((t) => t.type === 'non-tensor');
  if (nonTensor) throw fail(`${nonTensor.name} is not a tensor (a sequence or map); manifest v2 describes tensors only`);

  const guess = guessModel(meta.inputs, meta.outputs, { task: opts.task, primary: opts.primary, constants: opts.constants, dims: opts.dims });
  const primary = guess.inputs.find((i) => ['image', 'reading', 'window'].includes(i.source.kind));
  if (opts.images?.length && primary?.source.kind !== 'image') throw new UsageError(`--image: the model has no image input (${primary ? `${primary.name} is a ${primary.source.kind}` : 'no request input'})`);

  // Reference cases: synthetic inputs (2 cases) or one per image; state chained from case to case.
  const caseCount = opts.images?.length || 2;
  const feeds: Record<string, RecordedTensor>[] = [];
  for (let k = 0; k < caseCount; k++) {
    const f: Record<string, RecordedTensor> = {};
    for (const spec of guess.inputs) {
      const image = opts.images?.[k];
      f[spec.name] = image !== undefined && spec === primary ? await imageInput(spec as InputSpecV2 & { source: ImageSource }, image) : syntheticInput(spec, k, opts.dims);
    }
    feeds.push(f);
  }
  const chain = Object.fromEntries(guess.inputs.flatMap((i) => (i.source.kind === 'state' ? [[i.name, i.source.output]] : [])));
  const ref = await runReference({ path: modelPath, cases: feeds.map((f) => ({ feeds: Object.fromEntries(Object.entries(f).map(([n, t]) => [n, wire(t)])) })), chain }, limits, log).catch(
    (err: unknown) => {
      if (!(err instanceof EdgefleetError) || err.code !== ErrorCode.BAD_MODEL) throw err;
      // Most failures here are input sizes guessed for symbolic dims or constants left at zero.
      const fed = Object.entries(feeds[0] ?? {}).map(([n, t]) => `${n} [${t.dims.join(', ')}]`).join(', ');
      const symbolic = [...new Set(guess.inputs.flatMap((i) => i.shape.filter((d): d is string => typeof d === 'string')))];
      const zeros = guess.inputs.filter((i) => i.source.kind === 'constant' && !opts.constants?.[i.name]).map((i) => i.name);
      const hints = [
        ...(symbolic.length ? [`set symbolic dims with --dim (${symbolic.map((d) => `${d}=<n>`).join(', ')})`] : []),
        ...(zeros.length ? [`set constants with --constant (${zeros.map((n) => `${n}=...`).join(', ')})`] : []),
      ];
      throw new EdgefleetError(ErrorCode.BAD_MODEL, `${err.message} (fed ${fed}${hints.length ? `; ${hints.join('; ')}` : ''})`, { cause: err });
    },
  );
  if (ref.cases.length !== caseCount) throw fail(`the reference run returned ${ref.cases.length} cases, ${caseCount} were asked for`);
  const cases: RecordedCase[] = ref.cases.map((c, k) => {
    const outputs: Record<string, RecordedTensor> = {};
    for (const spec of guess.outputs) {
      const t = c.outputs[spec.name];
      if (!t) throw fail(`reference case ${k}: output ${spec.name} missing`);
      const r = unwire(t, `reference case ${k} output ${spec.name}`);
      if (r.dtype !== spec.dtype) throw fail(`reference case ${k}: output ${spec.name} is ${r.dtype}, the model declares ${spec.dtype}`);
      if (r.dims.length !== spec.shape.length || spec.shape.some((d, i) => typeof d === 'number' && d !== r.dims[i])) {
        throw fail(`reference case ${k}: output ${spec.name} came out [${r.dims.join(', ')}], the model declares [${spec.shape.join(', ')}]`);
      }
      if (!numbersOf(r).every(Number.isFinite)) {
        throw fail(`reference case ${k}: output ${spec.name} holds NaN or Infinity on the ${opts.images?.length ? 'given image' : 'synthetic input'}; test vectors need finite values${opts.images?.length ? '' : ' (try --image with a real sample)'}`);
      }
      outputs[spec.name] = r;
    }
    const inputs = { ...(feeds[k] as Record<string, RecordedTensor>) };
    // What the child fed from the previous case's outputs, as the agent will.
    if (k > 0) {
      for (const [input, output] of Object.entries(chain)) {
        const prev = ref.cases[k - 1]?.outputs[output];
        if (!prev) throw fail(`reference case ${k - 1}: state output ${output} missing`);
        inputs[input] = unwire(prev, `reference case ${k - 1} output ${output}`);
      }
    }
    return { inputs, outputs };
  });
  refineWithOutputs(guess, new Map(guess.outputs.map((o) => [o.name, cases.map((c) => ({ dims: c.outputs[o.name]!.dims, values: numbersOf(c.outputs[o.name]!) }))])));

  const quant = opts.quantization ? { q: opts.quantization, from: '--quantization' } : guessQuantization(scan.ops, [...meta.inputs, ...meta.outputs].map((t) => t.type));
  const tolerance = opts.tolerance ?? defaultTolerance(quant.q, cases);
  const elements = cases.reduce((a, c) => a + [...Object.values(c.inputs), ...Object.values(c.outputs)].reduce((b, t) => b + t.data.length, 0), 0);
  const inline = elements <= inlineMax;
  let sidecar: Buffer | undefined;
  let testVectorsFile: ManifestV2['testVectorsFile'];
  if (!inline) {
    sidecar = encodeTestVectorsNpz(cases);
    testVectorsFile = testVectorsFileEntry(sidecar, sidecarFile, tolerance);
  }
  const draft = {
    manifestVersion: 2,
    name,
    version,
    description: `Draft by edgefleet model init from ${artifactFile}: check labels, thresholds and input scaling before release.`,
    task: guess.task,
    quantization: quant.q,
    artifact: { file: artifactFile, sha256: scan.sha256, size: scan.size },
    inputs: guess.inputs,
    outputs: guess.outputs,
    postprocessing: guess.postprocessing,
    testVectors: inline ? inlineTestVectorsOf(cases, tolerance) : [],
    ...(testVectorsFile ? { testVectorsFile } : {}),
  };
  const parsed = ManifestV2Schema.safeParse(draft);
  if (!parsed.success) throw new EdgefleetError(ErrorCode.INTERNAL, `model init drafted a manifest its own schema refuses (a bug; please report it): ${formatIssues(parsed.error)}`);
  const manifest = parsed.data;
  const text = `${formatJson(draft)}\n`;
  if (Buffer.byteLength(text) > HUB_DEFAULT_MAX_MANIFEST_BYTES) {
    guess.check.push(`the manifest is ${humanBytes(Buffer.byteLength(text))}, over the hub's default models.maxManifestBytes (8 MiB): lower --vectors-inline-max to move the vectors to the sidecar`);
  }
  guess.check.push(`test vectors (${caseCount} case${caseCount === 1 ? '' : 's'}, tolerance ${tolerance}) are this machine's outputs on ${opts.images?.length ? 'the given images' : 'synthetic inputs'}: they check the model runs the same on a device, not that it is right`);
  if (manifestPath !== join(dirname(modelPath), basename(manifestPath))) guess.check.push(`the manifest is not beside ${artifactFile}: copy the model next to it before pushing`);

  if (sidecar) await writeAtomic(sidecarPath, sidecar);
  await writeAtomic(manifestPath, text);
  return { manifestPath, manifest, testVectorsPath: sidecar ? sidecarPath : undefined, guess, cases, quantizationFrom: quant.from };
}

// ------------------------------------------------------------------------------ argv

function parseDims(list: readonly string[] | undefined): Record<string, number> | undefined {
  if (!list?.length) return undefined;
  const out: Record<string, number> = {};
  for (const item of list) {
    const eq = item.lastIndexOf('=');
    const n = Number(item.slice(eq + 1));
    if (eq <= 0 || !Number.isInteger(n) || n < 1 || n > 65_536) throw new UsageError(`--dim expects <symbolic dim>=<size 1..65536>, got "${item}"`);
    out[item.slice(0, eq)] = n;
  }
  return out;
}

function parseConstants(list: readonly string[] | undefined): Record<string, number[]> | undefined {
  if (!list?.length) return undefined;
  const out: Record<string, number[]> = {};
  for (const item of list) {
    const eq = item.indexOf('=');
    const values = eq > 0 ? item.slice(eq + 1).split(',').map((s) => Number(s.trim())) : [];
    if (eq <= 0 || values.length === 0 || !values.every(Number.isFinite)) throw new UsageError(`--constant expects <input>=<number>[,<number>...], got "${item}"`);
    out[item.slice(0, eq)] = values;
  }
  return out;
}

function summary(r: ModelInitResult): string {
  const m = r.manifest;
  const post = m.postprocessing;
  const lines = [
    `wrote ${r.manifestPath}${r.testVectorsPath ? ` and ${basename(r.testVectorsPath)} (${humanBytes(m.testVectorsFile?.size ?? 0)})` : ''}: a draft manifest v2`,
    `  model   ${m.artifact.file}, ${humanBytes(m.artifact.size)}, sha256 ${m.artifact.sha256.slice(0, 12)}…, ${m.quantization} (${r.quantizationFrom})`,
    `  task    ${m.task}${post.kind === 'detection' ? `, decoder ${post.decoder}` : ''}`,
    `  vectors ${r.cases.length} case(s) ${m.testVectorsFile ? `in ${m.testVectorsFile.file}` : 'inline'}`,
    '',
    'guessed:',
    ...r.guess.guessed.map((g) => `  - ${g}`),
    '',
    'check before releasing:',
    ...r.guess.check.map((c) => `  - ${c}`),
  ];
  return `${lines.join('\n')}\n`;
}

export async function run(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        name: { type: 'string' },
        version: { type: 'string' },
        out: { type: 'string' },
        image: { type: 'string', multiple: true },
        task: { type: 'string' },
        primary: { type: 'string' },
        constant: { type: 'string', multiple: true },
        dim: { type: 'string', multiple: true },
        tolerance: { type: 'string' },
        quantization: { type: 'string' },
        'vectors-inline-max': { type: 'string' },
        force: { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (positionals.length !== 1) throw new UsageError(positionals.length ? `unexpected argument ${positionals.slice(1).join(' ')}` : 'a model file is required');
    if (values.task !== undefined && !(TASKS as readonly string[]).includes(values.task)) throw new UsageError(`--task must be one of ${TASKS.join(', ')}`);
    if (values.quantization !== undefined && !(QUANTIZATIONS as readonly string[]).includes(values.quantization)) throw new UsageError(`--quantization must be one of ${QUANTIZATIONS.join(', ')}`);
    const num = (flag: string, v: string | undefined, ok: (n: number) => boolean): number | undefined => {
      if (v === undefined) return undefined;
      const n = Number(v);
      if (v.trim() === '' || !ok(n)) throw new UsageError(`--${flag}: bad value "${v}"`);
      return n;
    };
    const r = await modelInit({
      modelPath: positionals[0] as string,
      name: values.name,
      version: values.version,
      out: values.out,
      images: values.image,
      task: values.task as Task | undefined,
      primary: values.primary,
      constants: parseConstants(values.constant),
      dims: parseDims(values.dim),
      tolerance: num('tolerance', values.tolerance, (n) => Number.isFinite(n) && n >= 0),
      quantization: values.quantization as Quantization | undefined,
      vectorsInlineMax: num('vectors-inline-max', values['vectors-inline-max'], (n) => Number.isInteger(n) && n >= 0),
      force: values.force,
    });
    if (values.json) {
      const post = r.manifest.postprocessing;
      io.out(
        `${JSON.stringify({
          manifest: r.manifestPath,
          testVectorsFile: r.testVectorsPath ?? null,
          task: r.manifest.task,
          decoder: post.kind === 'detection' ? post.decoder : null,
          quantization: r.manifest.quantization,
          inputs: r.manifest.inputs.map((i) => ({ name: i.name, source: i.source.kind })),
          cases: r.cases.length,
          guessed: r.guess.guessed,
          check: r.guess.check,
        })}\n`,
      );
    } else io.out(summary(r));
    return EXIT.OK;
  } catch (err) {
    return failure(io, 'model init', err, USAGE);
  }
}
