/**
 * Bench sections on the inference path, each against a bare onnxruntime-node loop on the main
 * thread with the same model and the same session options as the agent's workers:
 *
 *   pipeline  machine-state: sequential requests through the real Pipeline.infer +
 *             WorkerPoolEngine vs `session.run` batch 1 (overhead); many concurrent requests
 *             (micro-batching) vs the same batch-1 loop (throughput); the main thread's
 *             event-loop delay p99 while that load saturates the workers vs an idle loop.
 *   image     part-defect: PNG camera frames through Pipeline.infer with several in flight vs a
 *             naive loop, one frame at a time: sharp decode+resize, then `session.run`.
 *
 * The pipelines are built the way agent/main.ts builds them (config parsed by the agent's own
 * schema, so runtime defaults follow agent/config.ts), with `output.telemetry` off: the outbox
 * has its own section, and with telemetry on a sequential request also waits for the outbox's
 * group commit (`outbox.flushMs`), which would measure the commit timer, not the pipeline.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import sharp from 'sharp';
import { AgentConfigSchema, type AgentConfig } from '../../agent/config.ts';
import { createPipelineMetrics } from '../../agent/metrics.ts';
import { openLocalModel, type LocalModel } from '../../agent/models/local-models.ts';
import { Pipeline, type InferRequest } from '../../agent/pipeline.ts';
import { configureSharp, pixelsToTensor } from '../../agent/preprocess/image.ts';
import { preprocessTabular } from '../../agent/preprocess/tabular.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { sessionOptions } from '../lib/evaluate.ts';
import { createRng, partDataset, PART_SIZE, sensorDataset } from '../lib/synthetic.ts';
import { figure, interleave, rate, type Figure } from './measure.ts';

export interface SectionOptions {
  modelsDir: string;
  repeats: number;
  /** Shortens every timed window (smoke runs). */
  quick: boolean;
}

type Runtime = AgentConfig['runtime'];

/** The agent's config defaults for one MQTT pipeline on `model`, overridable. */
function agentDefaults(model: string, runtime: Partial<Runtime> = {}): AgentConfig {
  return AgentConfigSchema.parse({
    deviceId: 'bench-box',
    dataDir: '/nonexistent',
    hub: { url: 'mqtt://127.0.0.1:1', token: 'bench-token' },
    runtime,
    models: [{ manifest: 'unused' }],
    pipelines: [{ name: 'bench', model, input: { type: 'mqtt' }, output: { telemetry: false } }],
  });
}

export interface BenchPipeline {
  pipeline: Pipeline;
  model: LocalModel;
  engine: WorkerPoolEngine;
  stop(): Promise<void>;
}

/** A real Pipeline + WorkerPoolEngine on one demo model, as agent/main.ts wires them. */
export async function startPipeline(modelsDir: string, name: string, runtime: Partial<Runtime> = {}): Promise<BenchPipeline> {
  const config = agentDefaults(name, runtime);
  const log = silentLogger();
  const registry = new Registry();
  const model = await openLocalModel(join(modelsDir, `${name}.manifest.json`));
  const engine = new WorkerPoolEngine({ ...config.runtime, log, registry });
  await engine.start(new AbortController().signal);
  await engine.load(model.key, model.onnxPath);
  const pipeline = new Pipeline({
    deviceId: config.deviceId,
    config: config.pipelines[0]!,
    model: () => model,
    engine,
    publisher: { publish: () => true },
    sink: {
      append: () => Promise.reject(new EdgefleetError(ErrorCode.INTERNAL, 'bench pipelines keep no telemetry')),
      appendNow: () => {
        throw new EdgefleetError(ErrorCode.INTERNAL, 'bench pipelines keep no telemetry');
      },
    },
    metrics: createPipelineMetrics(registry),
    log,
  });
  await pipeline.start();
  return {
    pipeline,
    model,
    engine,
    stop: async () => {
      await pipeline.stop();
      await engine.stop();
    },
  };
}

/** A bare session on the main thread, as the agent's workers open theirs. */
async function bareSession(model: LocalModel): Promise<ort.InferenceSession> {
  return ort.InferenceSession.create(model.onnxPath, sessionOptions());
}

async function warm(n: number, step: (i: number) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < n; i++) await step(i);
}

/** Event-loop delay p99 (ms) on this thread while `during` runs. */
async function lagP99(during: () => Promise<unknown>): Promise<number> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  try {
    await during();
  } finally {
    h.disable();
  }
  return h.percentile(99) / 1e6;
}

export async function pipelineSection(o: SectionOptions): Promise<Figure[]> {
  const windowMs = o.quick ? 250 : 1000;
  const loadConcurrency = 256;
  const ds = sensorDataset(createRng(5), 50);
  const readings = ds.x.map((values, i) => ({ id: `r-${i}`, values }));
  const reqs: InferRequest[] = readings.map((r) => ({ kind: 'json', body: r }));
  const req = (i: number): InferRequest => reqs[i % reqs.length]!;

  const low = await startPipeline(o.modelsDir, 'machine-state', { maxWaitMs: 0 });
  const dflt = await startPipeline(o.modelsDir, 'machine-state');
  const session = await bareSession(low.model);
  try {
    const man = low.model.manifest;
    if (man.manifestVersion !== 1 || man.preprocessing.kind !== 'tabular') throw new Error('machine-state is not a v1 tabular model');
    const spec = man.preprocessing;
    const inputName = low.model.manifest.inputs[0]!.name;
    // The baseline gets its tensors ready-made: it is the floor, not a fair fight.
    const feeds = readings.map((r) => {
      const t = preprocessTabular(spec, r);
      return { [inputName]: new ort.Tensor('float32', t.data, t.dims) };
    });
    const bare = (i: number): Promise<unknown> => session.run(feeds[i % feeds.length]!);
    await warm(200, bare);
    await warm(200, (i) => low.pipeline.infer(req(i)));
    await warm(200, (i) => dflt.pipeline.infer(req(i)));

    const msPer = async (step: (i: number) => Promise<unknown>): Promise<number> => 1000 / (await rate(windowMs, 1, step));
    const seqLow = await interleave(o.repeats, () => msPer((i) => low.pipeline.infer(req(i))), () => msPer(bare));
    const seqDefault = await interleave(o.repeats, () => msPer((i) => dflt.pipeline.infer(req(i))), () => msPer(bare));
    const load = await interleave(o.repeats, () => rate(windowMs, loadConcurrency, (i) => dflt.pipeline.infer(req(i))), () => rate(windowMs, 1, bare));
    const lag = await interleave(
      o.repeats,
      () => lagP99(() => rate(windowMs, loadConcurrency, (i) => dflt.pipeline.infer(req(i)))),
      () => lagP99(() => new Promise((r) => setTimeout(r, windowMs))),
    );
    const workers = dflt.engine.stats().workers;
    return [
      figure({
        section: 'pipeline',
        name: 'machine-state batch 1, sequential (maxWaitMs 0)',
        unit: 'ms/req',
        subjectLabel: 'Pipeline.infer',
        baselineLabel: 'session.run',
        subject: seqLow.subject,
        baseline: seqLow.baseline,
        target: { kind: 'maxRatio', value: 1.1 },
        note: `one request at a time, runtime.maxWaitMs 0 (no wait for a fuller batch); ${windowMs} ms windows`,
      }),
      figure({
        section: 'pipeline',
        name: 'machine-state batch 1, sequential (default maxWaitMs)',
        unit: 'ms/req',
        subjectLabel: 'Pipeline.infer',
        baselineLabel: 'session.run',
        subject: seqDefault.subject,
        baseline: seqDefault.baseline,
        note: `agent defaults: every lone request waits runtime.maxWaitMs (${agentDefaults('x').runtime.maxWaitMs} ms) for company`,
      }),
      figure({
        section: 'pipeline',
        name: `machine-state under load (${loadConcurrency} in flight)`,
        unit: 'req/s',
        subjectLabel: 'Pipeline.infer',
        baselineLabel: 'session.run b1',
        subject: load.subject,
        baseline: load.baseline,
        target: { kind: 'minRatio', value: 2 },
        note: `agent defaults (${workers} worker, maxBatch ${agentDefaults('x').runtime.maxBatch}); baseline is the bare batch-1 loop`,
      }),
      figure({
        section: 'pipeline',
        name: 'event-loop delay p99 while inference saturates',
        unit: 'ms',
        subjectLabel: 'under load',
        baselineLabel: 'idle',
        subject: lag.subject,
        baseline: lag.baseline,
        target: { kind: 'maxValue', value: 20 },
        note: `monitorEventLoopDelay (1 ms resolution) on the agent's main thread, ${loadConcurrency} requests in flight`,
      }),
    ];
  } finally {
    await session.release();
    await low.stop();
    await dflt.stop();
  }
}

/** Camera-sized PNG frames (the 64×64 parts scaled up), so decode and resize do real work. */
async function cameraFrames(n: number, size: number): Promise<Buffer[]> {
  const ds = partDataset(createRng(17), n);
  return Promise.all(
    ds.images.map((px) =>
      sharp(Buffer.from(px), { raw: { width: PART_SIZE, height: PART_SIZE, channels: 1 } })
        .resize(size, size, { kernel: 'nearest' })
        .png()
        .toBuffer(),
    ),
  );
}

export async function imageSection(o: SectionOptions): Promise<Figure[]> {
  const windowMs = o.quick ? 300 : 2000;
  const concurrency = 8;
  const frameSize = 320;
  // What createAgent does: process-wide sharp settings (no cache, one libvips thread per image).
  configureSharp();
  const frames = await cameraFrames(32, frameSize);
  const reqs: InferRequest[] = frames.map((bytes, i) => ({ kind: 'image', bytes, id: `f-${i}` }));
  const p = await startPipeline(o.modelsDir, 'part-defect');
  const session = await bareSession(p.model);
  try {
    const man = p.model.manifest;
    if (man.manifestVersion !== 1 || man.preprocessing.kind !== 'image') throw new Error('part-defect is not a v1 image model');
    const spec = man.preprocessing;
    const inputName = p.model.manifest.inputs[0]!.name;
    const naive = async (i: number): Promise<unknown> => {
      const px = await sharp(frames[i % frames.length]).resize(spec.width, spec.height, { fit: 'fill' }).greyscale().raw().toBuffer();
      const data = pixelsToTensor(spec, new Uint8Array(px.buffer, px.byteOffset, px.length));
      return session.run({ [inputName]: new ort.Tensor('float32', data as Float32Array, [1, 1, spec.height, spec.width]) });
    };
    const piped = (i: number): Promise<unknown> => p.pipeline.infer(reqs[i % reqs.length]!);
    await warm(20, naive);
    await warm(20, piped);
    const r = await interleave(o.repeats, () => rate(windowMs, concurrency, piped), () => rate(windowMs, 1, naive));
    return [
      figure({
        section: 'image',
        name: `part-defect, ${frameSize}×${frameSize} PNG → 64×64`,
        unit: 'img/s',
        subjectLabel: `Pipeline.infer ×${concurrency}`,
        baselineLabel: 'sharp→ORT loop',
        subject: r.subject,
        baseline: r.baseline,
        target: { kind: 'minRatio', value: 1.3 },
        note: `${concurrency} frames in flight through the agent (agent defaults) vs one at a time: sharp decode+resize, then session.run`,
      }),
    ];
  } finally {
    await session.release();
    await p.stop();
  }
}
