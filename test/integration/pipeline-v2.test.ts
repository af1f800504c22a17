/**
 * The agent's own manifest v2 serving path end to end on real third-party models (issue #13):
 * a real `Pipeline` (agent/pipeline.ts → agent/tasks/runner.ts → agent/postprocess/tasks.ts) on a
 * real WorkerPoolEngine, each model opened with openLocalModel from a v2 manifest written next to
 * (a symlink to) the cached .onnx, compared with bare onnxruntime run by hand:
 *
 *  - Silero VAD (window of `samples` chunks, `sr` constant, `h`/`c` state): scores equal a bare
 *    run with the state fed back by hand; a `ts` gap resets window and state; streams are apart.
 *  - openWakeWord mel → embedding → hey_jarvis as a config chain with `upstream` frames/hop.
 *  - UltraFace RFB-320: detections in original-image pixels vs an independent NMS written here.
 *  - Bad input on these pipelines: rejected, counted, and the next good input is served right.
 *
 * Skips with the helper's reason when the models cannot be fetched. The engine is wrapped by a
 * recording spy (what each stage was fed, what it gave); publisher and sink are small fakes.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import sharp from 'sharp';
import { PipelineSchema } from '../../agent/config.ts';
import { createPipelineMetrics } from '../../agent/metrics.ts';
import { openLocalModel, type LocalModel } from '../../agent/models/local-models.ts';
import { Pipeline, type InferRequest, type TaskResult } from '../../agent/pipeline.ts';
import type { InferInput } from '../../agent/runtime/engine.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { decodeDetections } from '../../agent/postprocess/detection.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { engineInput, modelSpec } from '../../shared/model-spec.ts';
import {
  bareSession,
  f32,
  faceImage,
  flatImage,
  i64,
  imageTensor,
  OWW,
  SAMPLE_RATE,
  sileroVadManifest,
  speechLike,
  ultraFaceManifest,
  VAD_FRAME,
  wakewordChain,
  type BareSession,
  type RunFn,
  type SyntheticImage,
} from '../helpers/third-party-manifests.ts';
import { ensureThirdPartyModels, type ThirdPartyModel, type ThirdPartyModelId } from '../helpers/third-party-models.ts';

const IDS = ['silero-vad', 'oww-melspectrogram', 'oww-embedding', 'oww-hey-jarvis', 'ultraface-rfb-320'] as const satisfies readonly ThirdPartyModelId[];
type Id = (typeof IDS)[number];

const fetched = await ensureThirdPartyModels({ only: IDS });
const cached = fetched.models;
function skipUnless(...ids: Id[]): string | false {
  const missing = ids.filter((id) => !cached[id]);
  return missing.length === 0 ? false : (fetched.reason ?? `not in the cache: ${missing.join(', ')}`);
}

// ------------------------------------------------------------------ engine, models, pipelines

interface Call {
  key: string;
  input: InferInput;
  outputs: Record<string, { data: Float32Array; dims: number[] }>;
}

const log = silentLogger();
const engine = new WorkerPoolEngine({ workers: 1, intraOpThreads: 1, log, registry: new Registry() });
/** Every engine call of every pipeline, in order. */
const calls: Call[] = [];
const spy = {
  infer: async (key: string, input: InferInput) => {
    // A copy of what was fed: the pipeline hands its request tensor over (transfer), so the
    // caller's array is detached once the engine has it.
    const fed: InferInput = { ...input, data: input.data.slice() };
    const r = await engine.infer(key, input);
    calls.push({ key, input: fed, outputs: r.outputs });
    return r;
  },
};

let dir: string;
const bare: Partial<Record<Id, BareSession>> = {};
const loaded = new Set<string>();

/** Writes the manifest + a symlink to the cached .onnx into a fresh dir, opens and loads it. */
async function localModel(manifest: ManifestV2, model: ThirdPartyModel): Promise<LocalModel> {
  const d = await mkdtemp(join(dir, `${manifest.name}-`));
  assert.equal(manifest.artifact.file, basename(model.path));
  await symlink(model.path, join(d, manifest.artifact.file));
  const path = join(d, 'manifest.json');
  await writeFile(path, JSON.stringify(ManifestV2Schema.parse(manifest)));
  const m = await openLocalModel(path);
  if (!loaded.has(m.key)) {
    await engine.load(m.key, m.onnxPath, { primaryInput: engineInput(modelSpec(m.manifest)) });
    loaded.add(m.key);
  }
  return m;
}

interface Harness {
  pipeline: Pipeline;
  registry: Registry;
  published: string[];
  rejected(): Promise<Record<string, number>>;
}

async function harness(name: string, model: LocalModel, chain: LocalModel[] = []): Promise<Harness> {
  const registry = new Registry();
  const published: string[] = [];
  const byName = new Map([model, ...chain].map((m) => [m.manifest.name, m]));
  const pipeline = new Pipeline({
    deviceId: 'dev-1',
    config: PipelineSchema.parse({ name, model: model.manifest.name, chain: chain.map((m) => m.manifest.name), input: { type: 'mqtt' } }),
    model: () => model,
    acquire: () => ({ model, release: () => undefined }),
    acquireStage: (n) => {
      const m = byName.get(n);
      return m && { model: m, release: () => undefined };
    },
    engine: spy,
    publisher: { publish: (_t, p) => (published.push(String(p)), true) },
    sink: { append: () => Promise.resolve({ epoch: 1, seq: 1 }), appendNow: () => ({ epoch: 1, seq: 1 }) },
    metrics: createPipelineMetrics(registry),
    log,
  });
  await pipeline.start();
  return {
    pipeline,
    registry,
    published,
    rejected: async () => {
      const m = await registry.getSingleMetric('edgefleet_agent_input_rejected_total')!.get();
      return Object.fromEntries(m.values.map((v) => [String(v.labels['reason']), v.value]));
    },
  };
}

const task = (r: unknown): TaskResult => r as TaskResult;

async function rejects(p: Promise<unknown>, codes: readonly string[]): Promise<EdgefleetError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof EdgefleetError, `not an EdgefleetError: ${String(err)}`);
    assert.ok(codes.includes(err.code), `${err.code}: ${err.message} (wanted ${codes.join('/')})`);
    return err;
  }
  assert.fail('resolved, wanted a rejection');
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-pipeline-v2-'));
  await engine.start(AbortSignal.timeout(60_000));
  for (const id of IDS) if (cached[id]) bare[id] = await bareSession(cached[id].path);
});

after(async () => {
  await engine.stop();
  for (const s of Object.values(bare)) await s.release();
  await rm(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------- Silero VAD

/** Bare-ORT Silero over 512-sample frames, h/c fed back by hand (fresh state unless given). */
class BareVad {
  h = new Float32Array(128);
  c = new Float32Array(128);
  constructor(private readonly run: RunFn) {}
  async frame(x: Float32Array): Promise<number> {
    const r = await this.run({ input: f32([1, VAD_FRAME], x), sr: i64([], [SAMPLE_RATE]), h: f32([2, 1, 64], this.h), c: f32([2, 1, 64], this.c) });
    this.h = r['hn']!.data.slice();
    this.c = r['cn']!.data.slice();
    return r['output']!.data[0]!;
  }
}

const samplesOf = (x: Float32Array): number[][] => Array.from(x, (v) => [v]);
const frameOf = (audio: Float32Array, k: number): Float32Array => audio.subarray(k * VAD_FRAME, (k + 1) * VAD_FRAME);

void describe('Silero VAD through the Pipeline (window + constant + h/c state)', { skip: skipUnless('silero-vad') }, () => {
  let vad: LocalModel;
  const speech = speechLike(40 * VAD_FRAME, 3);
  const silence = new Float32Array(20 * VAD_FRAME);
  before(async () => {
    vad = await localModel(await sileroVadManifest(cached['silero-vad']!, bare['silero-vad']!.run), cached['silero-vad']!);
  });

  const send = (h: Harness, stream: string, ts: number, x: Float32Array | number[][], id?: string): Promise<TaskResult> =>
    h.pipeline.infer({ kind: 'json', body: { ...(id ? { id } : {}), stream, ts, samples: Array.isArray(x) ? x : samplesOf(x) } }).then(task);

  void test('scores equal bare ORT with the state fed back by hand; speech > silence; half chunks buffer', async (t) => {
    const h = await harness('vad', vad);
    const ref = new BareVad(bare['silero-vad']!.run);
    const audio = new Float32Array([...speech.subarray(0, 24 * VAD_FRAME), ...silence.subarray(0, 16 * VAD_FRAME)]);
    const got: number[] = [];
    const want: number[] = [];
    let ts = 1_000;
    for (let k = 0; k < 40; k++) {
      const frame = frameOf(audio, k);
      let r: TaskResult;
      if (k % 5 === 4) {
        // Two half chunks: the first only buffers.
        const a = await send(h, 'mic-1', ts, frame.subarray(0, 256));
        assert.equal(a.buffered, true);
        r = await send(h, 'mic-1', ts + 16, frame.subarray(256));
      } else r = await send(h, 'mic-1', ts, frame);
      assert.equal(r.task, 'anomaly');
      assert.equal(r.buffered, undefined);
      got.push(r['score'] as number);
      want.push(await ref.frame(frame));
      ts += 32;
    }
    const worst = Math.max(...got.map((g, i) => Math.abs(g - want[i]!)));
    const meanSpeech = got.slice(4, 24).reduce((a, b) => a + b, 0) / 20;
    const meanSilence = got.slice(28).reduce((a, b) => a + b, 0) / 12;
    t.diagnostic(`max |agent - bare| ${worst.toExponential(2)}; mean speech ${meanSpeech.toFixed(3)}, silence ${meanSilence.toFixed(3)}`);
    assert.ok(worst <= 1e-6, `max |difference| ${worst}`);
    assert.ok(meanSpeech > 0.5 && meanSilence < 0.2 && meanSpeech > meanSilence + 0.4, `speech ${meanSpeech}, silence ${meanSilence}`);
    // The state really is fed back: a fresh-state run of a late speech frame gives another score.
    const fresh = await new BareVad(bare['silero-vad']!.run).frame(frameOf(audio, 20));
    assert.ok(Math.abs(fresh - want[20]!) > 1e-3, `state made no difference (${fresh} vs ${want[20]})`);
    assert.equal(h.published.length, 40, 'one published result per full window');
    assert.deepEqual(await h.rejected(), {});
  });

  void test('a chunk that completes several windows runs each of them in order: every frame reaches the state', async () => {
    const h = await harness('vad-multi', vad);
    const ref = new BareVad(bare['silero-vad']!.run);
    const three = speech.subarray(0, 3 * VAD_FRAME);
    const r = await send(h, 'mic-1', 9_000, three, 'burst');
    const want: number[] = [];
    for (let k = 0; k < 3; k++) want.push(await ref.frame(frameOf(three, k)));
    assert.ok(Math.abs((r['score'] as number) - want[2]!) <= 1e-6, `the answer is the last window's: ${String(r['score'])} vs ${want[2]}`);
    assert.equal(h.published.length, 3, 'each window is published');
    const ids = h.published.map((p) => (JSON.parse(p) as { id: string }).id);
    assert.deepEqual(ids, ['burst#0', 'burst#1', 'burst'], 'earlier windows get the id with #k');
    const scores = h.published.map((p) => (JSON.parse(p) as { score: number }).score);
    for (const [k, w] of want.entries()) assert.ok(Math.abs(scores[k]! - w) <= 1e-6, `window ${k}: ${scores[k]} vs ${w}`);
  });

  void test('periodMs spaces a chunk\'s samples: chunks 32 ms apart are continuous with a 1 ms maxGapMs; without it each chunk is a gap', async () => {
    const tight = ManifestV2Schema.parse({
      ...vad.manifest,
      version: '0.0.1-tight',
      inputs: (vad.manifest as ManifestV2).inputs.map((i) => (i.source.kind === 'window' ? { ...i, source: { ...i.source, maxGapMs: 1 } } : i)),
    });
    const model = await localModel(tight, cached['silero-vad']!);
    const run = async (name: string, periodMs: number | undefined): Promise<number> => {
      const h = await harness(name, model);
      const ref = new BareVad(bare['silero-vad']!.run);
      for (let k = 0; k < 4; k++) {
        const body = { stream: 'mic-p', ts: 20_000 + k * 32, ...(periodMs === undefined ? {} : { periodMs }), samples: samplesOf(frameOf(speech, k)) };
        const r = (await h.pipeline.infer({ kind: 'json', body })) as TaskResult;
        const want = await ref.frame(frameOf(speech, k));
        if (periodMs !== undefined) assert.ok(Math.abs((r['score'] as number) - want) <= 1e-6, `chunk ${k}: continuous state`);
      }
      const resets = await h.registry.getSingleMetric('edgefleet_agent_window_resets_total')!.get();
      return resets.values.filter((v) => v.labels['reason'] === 'gap').reduce((a, v) => a + v.value, 0);
    };
    assert.equal(await run('vad-period', 1 / 16), 0, 'with periodMs (16 kHz): no gap');
    assert.equal(await run('vad-noperiod', undefined), 3, 'without it, every chunk after the first starts 32 ms after the last sample');
  });

  void test('a ts gap over maxGapMs resets window and state: the next result is a fresh-state run', async () => {
    const h = await harness('vad-gap', vad);
    const ref = new BareVad(bare['silero-vad']!.run);
    let ts = 5_000;
    for (let k = 0; k < 12; k++) {
      const r = await send(h, 'mic-1', ts, frameOf(speech, k));
      assert.ok(Math.abs((r['score'] as number) - (await ref.frame(frameOf(speech, k)))) <= 1e-6);
      ts += 32;
    }
    // Half a window, then a gap of 6 s (maxGapMs defaults to 5 s): the half is dropped with the state.
    assert.equal((await send(h, 'mic-1', ts, frameOf(speech, 12).subarray(0, 200))).buffered, true);
    ts += 6_000;
    const after = await send(h, 'mic-1', ts, frameOf(speech, 13));
    const fresh = new BareVad(bare['silero-vad']!.run);
    const want = await fresh.frame(frameOf(speech, 13));
    const continued = await ref.frame(frameOf(speech, 13));
    assert.ok(Math.abs((after['score'] as number) - want) <= 1e-6, `after the gap ${String(after['score'])} vs fresh ${want} (continued state: ${continued})`);
    assert.ok(Math.abs(want - continued) > 1e-3, 'the test frame tells fresh and continued state apart');
    // And it goes on from the fresh state.
    const next = await send(h, 'mic-1', ts + 32, frameOf(speech, 14));
    assert.ok(Math.abs((next['score'] as number) - (await fresh.frame(frameOf(speech, 14)))) <= 1e-6);
    const resets = await h.registry.getSingleMetric('edgefleet_agent_window_resets_total')!.get();
    assert.ok(resets.values.some((v) => v.labels['reason'] === 'gap' && v.value === 1), JSON.stringify(resets.values));
    const dropped = await h.registry.getSingleMetric('edgefleet_agent_input_dropped_total')!.get();
    assert.ok(!dropped.values.some((v) => v.value > 0), `a reset is not dropped input: ${JSON.stringify(dropped.values)}`);
  });

  void test('two streams keep separate windows and state', async () => {
    const h = await harness('vad-streams', vad);
    const other = speechLike(20 * VAD_FRAME, 11);
    const refA = new BareVad(bare['silero-vad']!.run);
    const refB = new BareVad(bare['silero-vad']!.run);
    let ts = 10_000;
    for (let k = 0; k < 16; k++) {
      // Interleaved, B's chunks split so its window is half full while A's runs.
      const b1 = await send(h, 'mic-b', ts, frameOf(other, k).subarray(0, 300));
      const a = await send(h, 'mic-a', ts, frameOf(k < 8 ? speech : silence, k));
      const b = await send(h, 'mic-b', ts + 10, frameOf(other, k).subarray(300));
      assert.equal(b1.buffered, true);
      assert.ok(Math.abs((a['score'] as number) - (await refA.frame(frameOf(k < 8 ? speech : silence, k)))) <= 1e-6, `stream a, frame ${k}`);
      assert.ok(Math.abs((b['score'] as number) - (await refB.frame(frameOf(other, k)))) <= 1e-6, `stream b, frame ${k}`);
      ts += 32;
    }
  });

  void test('bad input is rejected and counted, and the next good chunk is served as if it never came', async () => {
    const h = await harness('vad-bad', vad);
    const ref = new BareVad(bare['silero-vad']!.run);
    let ts = 20_000;
    let k = 0;
    const good = async (): Promise<void> => {
      const r = await send(h, 'mic-1', ts, frameOf(speech, k));
      assert.ok(Math.abs((r['score'] as number) - (await ref.frame(frameOf(speech, k)))) <= 1e-6, `good frame ${k} after bad input`);
      ts += 32;
      k++;
    };
    await good();
    const chunk = samplesOf(frameOf(speech, 1));
    const bad: [string, InferRequest, readonly string[]][] = [
      ['NaN in a sample (object body)', { kind: 'json', body: { stream: 'mic-1', ts, samples: [[0.1], [Number.NaN]] } }, [ErrorCode.BAD_PAYLOAD, ErrorCode.BAD_INPUT]],
      ['NaN in the JSON text', { kind: 'json', body: Buffer.from(`{"stream":"mic-1","ts":${ts},"samples":[[0.1],[NaN]]}`) }, [ErrorCode.BAD_PAYLOAD]],
      ['Infinity in the last sample of a full chunk', { kind: 'json', body: { stream: 'mic-1', ts, samples: [...chunk.slice(0, 511), [Number.POSITIVE_INFINITY]] } }, [ErrorCode.BAD_INPUT, ErrorCode.BAD_PAYLOAD]],
      ['a sample of two channels mid-chunk', { kind: 'json', body: { stream: 'mic-1', ts, samples: [...chunk.slice(0, 300), [0.1, 0.2], ...chunk.slice(301)] } }, [ErrorCode.BAD_INPUT]],
      ['an empty sample', { kind: 'json', body: { stream: 'mic-1', ts, samples: [...chunk.slice(0, 100), []] } }, [ErrorCode.BAD_INPUT]],
      ['string samples', { kind: 'json', body: { stream: 'mic-1', ts, samples: [['0.1'], ['0.2']] } }, [ErrorCode.BAD_PAYLOAD]],
      ['boolean samples', { kind: 'json', body: { stream: 'mic-1', ts, samples: [[true]] } }, [ErrorCode.BAD_PAYLOAD]],
      ['samples not an array of arrays', { kind: 'json', body: { stream: 'mic-1', ts, samples: [0.1, 0.2] } }, [ErrorCode.BAD_PAYLOAD]],
      ['values and samples both', { kind: 'json', body: { stream: 'mic-1', ts, values: [0.1], samples: [[0.1]] } }, [ErrorCode.BAD_PAYLOAD]],
      ['a feature by a wrong name', { kind: 'json', body: { stream: 'mic-1', ts, features: { volume: 0.1 } } }, [ErrorCode.BAD_INPUT]],
      ['a bad stream name', { kind: 'json', body: { stream: '../x', ts, samples: [[0.1]] } }, [ErrorCode.BAD_PAYLOAD]],
      ['malformed JSON', { kind: 'json', body: Buffer.from('{"samples": [[0.1]') }, [ErrorCode.BAD_PAYLOAD]],
      ['an image to an audio model', { kind: 'image', bytes: (await faceImage()).png, stream: 'mic-1' }, [ErrorCode.BAD_INPUT]],
    ];
    for (const [what, req, codes] of bad) {
      await rejects(h.pipeline.infer(req), codes).catch((e: Error) => assert.fail(`${what}: ${e.message}`));
      await good();
    }
    const counted = await h.rejected();
    const total = Object.values(counted).reduce((a, b) => a + b, 0);
    assert.equal(total, bad.length, `edgefleet_agent_input_rejected_total ${JSON.stringify(counted)}`);
    assert.ok((counted['wrong_kind'] ?? 0) >= 1 && (counted['malformed'] ?? 0) >= 2 && (counted['schema'] ?? 0) >= 1 && (counted['bad_input'] ?? 0) >= 1, JSON.stringify(counted));
  });
});

// ------------------------------------------------------------------ openWakeWord chain

/**
 * openWakeWord's streaming loop written out here (the helper's WakewordStream hard-codes the
 * x/10+2 link transform): mel on 480 samples of context + each 1280-sample chunk, `affine` on the
 * mel frames, the embedding on the last 76 frames every 8, the head on the last 16 embeddings.
 */
async function ownStream(runs: { mel: RunFn; embedding: RunFn; head: RunFn }, audio: Float32Array, affine: { scale: number; offset: number }): Promise<(number | undefined)[]> {
  let context = new Float32Array(OWW.melContext);
  const mel: Float32Array[] = [];
  const emb: Float32Array[] = [];
  let since = 0;
  const scores: (number | undefined)[] = [];
  for (let at = 0; at + OWW.chunk <= audio.length; at += OWW.chunk) {
    const x = new Float32Array(OWW.melSamples);
    x.set(context);
    x.set(audio.subarray(at, at + OWW.chunk), OWW.melContext);
    context = x.slice(OWW.melSamples - OWW.melContext);
    const m = (await runs.mel({ input: f32([1, OWW.melSamples], x.map((v) => v * OWW.audioScale)) }))['output']!.data;
    for (let j = 0; j < OWW.melFramesPerCall; j++) mel.push(m.slice(j * OWW.melBins, (j + 1) * OWW.melBins).map((v) => v * affine.scale + affine.offset));
    mel.splice(0, Math.max(0, mel.length - OWW.embeddingWindow));
    since += OWW.melFramesPerCall;
    if (mel.length < OWW.embeddingWindow || since < OWW.embeddingHop) {
      scores.push(undefined);
      continue;
    }
    since = 0;
    const e = (await runs.embedding({ input_1: f32([1, OWW.embeddingWindow, OWW.melBins, 1], flat(mel)) }))['conv2d_19']!.data.slice();
    emb.push(e);
    emb.splice(0, Math.max(0, emb.length - OWW.headWindow));
    if (emb.length < OWW.headWindow) {
      scores.push(undefined);
      continue;
    }
    scores.push((await runs.head({ 'x.1': f32([1, OWW.headWindow, OWW.embeddingDim], flat(emb)) }))['53']!.data[0]);
  }
  return scores;
}

function flat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}


void describe('openWakeWord mel → embedding → hey_jarvis as a config chain', { skip: skipUnless('oww-melspectrogram', 'oww-embedding', 'oww-hey-jarvis') }, () => {
  let stages: { mel: LocalModel; embedding: LocalModel; head: LocalModel };
  let runs: { mel: RunFn; embedding: RunFn; head: RunFn };
  const CHUNKS = 30;
  const audio = speechLike(CHUNKS * OWW.chunk, 7);
  before(async () => {
    runs = { mel: bare['oww-melspectrogram']!.run, embedding: bare['oww-embedding']!.run, head: bare['oww-hey-jarvis']!.run };
    const built = await wakewordChain({ mel: cached['oww-melspectrogram']!, embedding: cached['oww-embedding']!, head: cached['oww-hey-jarvis']! }, runs);
    const { mel, embedding, head } = built.stages;
    // The builders' upstream sources take the defaults (frames 1, hop 1): a 76-row mel window and a
    // 16-row embedding window are set here, from the helper's own chain links.
    const [toEmb, toHead] = built.links;
    const withFrames = (m: ManifestV2, frames: { size: number; hop: number }): ManifestV2 =>
      ManifestV2Schema.parse({ ...m, inputs: m.inputs.map((i) => (i.source.kind === 'upstream' ? { ...i, source: { ...i.source, frames: frames.size, hop: frames.hop } } : i)) });
    stages = {
      mel: await localModel(mel, cached['oww-melspectrogram']!),
      embedding: await localModel(withFrames(embedding, toEmb.frames), cached['oww-embedding']!),
      head: await localModel(withFrames(head, toHead.frames), cached['oww-hey-jarvis']!),
    };
  });

  async function runChain(h: Harness, stream: string, ts0: number): Promise<TaskResult[]> {
    // 480 samples of silence first: the reference's initial mel context (buffered, no result).
    const first = task(await h.pipeline.infer({ kind: 'json', body: { stream, ts: ts0, samples: samplesOf(new Float32Array(OWW.melContext)) } }));
    assert.equal(first.buffered, true);
    const out: TaskResult[] = [];
    for (let k = 0; k < CHUNKS; k++) {
      const chunk = audio.subarray(k * OWW.chunk, (k + 1) * OWW.chunk);
      out.push(task(await h.pipeline.infer({ kind: 'json', body: { stream, ts: ts0 + 30 + k * 80, samples: samplesOf(chunk) } })));
    }
    return out;
  }

  void test('the chain buffers until both row windows are full, then scores every chunk as the hand loop (links without the transform)', async (t) => {
    const h = await harness('wake', stages.mel, [stages.embedding, stages.head]);
    const from = calls.length;
    const got = await runChain(h, 'mic-1', 100_000);
    const want = await ownStream(runs, audio, { scale: 1, offset: 0 });
    assert.equal(want.findIndex((s) => s !== undefined), 24, 'the first score at chunk 25 (10 mel calls fill 76 rows, 15 more fill 16 embeddings)');
    let worst = 0;
    for (const [k, r] of got.entries()) {
      if (want[k] === undefined) {
        assert.equal(r.buffered, true, `chunk ${k} should be buffered`);
        continue;
      }
      assert.equal(r.buffered, undefined, `chunk ${k} should score`);
      assert.equal(typeof r['alarm'], 'boolean', 'the head\'s anomaly fields');
      worst = Math.max(worst, Math.abs((r['score'] as number) - want[k]));
    }
    t.diagnostic(`max |agent - hand loop| ${worst.toExponential(2)}`);
    assert.ok(worst <= 1e-6, `max |difference| ${worst}`);
    // Stage calls: a mel call per chunk, an embedding per chunk from the 10th, a head per chunk from the 25th.
    const mine = calls.slice(from);
    const count = (key: string): number => mine.filter((c) => c.key === key).length;
    assert.deepEqual([count(stages.mel.key), count(stages.embedding.key), count(stages.head.key)], [CHUNKS, CHUNKS - 9, CHUNKS - 24]);
    // The mel model got exactly the reference's first call: 480 zeros + the first chunk, int16-scaled.
    const mel0 = mine.find((c) => c.key === stages.mel.key)!.input;
    assert.deepEqual(mel0.dims, [1, OWW.melSamples]);
    const x0 = new Float32Array(OWW.melSamples);
    x0.set(audio.subarray(0, OWW.chunk).map((v) => v * OWW.audioScale), OWW.melContext);
    assert.deepEqual(Array.from(mel0.data as Float32Array), Array.from(x0));
    assert.equal(h.published.length, CHUNKS - 24, 'buffered chunks publish nothing');
  });

  void test('a chain result names the stage whose task made it (the head: task anomaly, model oww-hey-jarvis) and lists the chain', async () => {
    const h = await harness('wake-task', stages.mel, [stages.embedding, stages.head]);
    const r = (await runChain(h, 'mic-1', 400_000)).at(-1)!;
    assert.equal(r.task, 'anomaly');
    assert.equal(r.model.name, 'oww-hey-jarvis');
    assert.deepEqual(
      r.chain?.map((c) => c.name),
      [stages.mel, stages.embedding, stages.head].map((m) => m.manifest.name),
    );
  });

  void test('two streams keep separate chain row windows', async () => {
    const h = await harness('wake-2', stages.mel, [stages.embedding, stages.head]);
    const want = await ownStream(runs, audio, { scale: 1, offset: 0 });
    const [a, b] = await Promise.all([runChain(h, 'mic-a', 200_000), runChain(h, 'mic-b', 300_000)]);
    for (const [k, w] of want.entries()) {
      for (const r of [a[k]!, b[k]!]) {
        if (w === undefined) assert.equal(r.buffered, true);
        else assert.ok(Math.abs((r['score'] as number) - w) <= 1e-6, `chunk ${k}`);
      }
    }
  });

  void test('bad input on the chain is rejected, counted, and leaves the row windows as they were', async () => {
    const h = await harness('wake-bad', stages.mel, [stages.embedding, stages.head]);
    const want = await ownStream(runs, audio, { scale: 1, offset: 0 });
    assert.equal((await h.pipeline.infer({ kind: 'json', body: { stream: 's', ts: 1, samples: samplesOf(new Float32Array(OWW.melContext)) } }).then(task)).buffered, true);
    let bad = 0;
    for (let k = 0; k < CHUNKS; k++) {
      const chunk = samplesOf(audio.subarray(k * OWW.chunk, (k + 1) * OWW.chunk));
      if (k % 7 === 3) {
        await rejects(h.pipeline.infer({ kind: 'json', body: { stream: 's', ts: 31 + k * 80, samples: [...chunk.slice(0, 640), [1, 2], ...chunk.slice(641)] } }), [ErrorCode.BAD_INPUT]);
        await rejects(h.pipeline.infer({ kind: 'image', bytes: Buffer.from('not an image'), stream: 's' }), [ErrorCode.BAD_INPUT]);
        bad += 2;
      }
      const r = task(await h.pipeline.infer({ kind: 'json', body: { stream: 's', ts: 31 + k * 80, samples: chunk } }));
      if (want[k] === undefined) assert.equal(r.buffered, true, `chunk ${k}`);
      else assert.ok(Math.abs((r['score'] as number) - want[k]!) <= 1e-6, `chunk ${k}: ${String(r['score'])} vs ${want[k]}`);
    }
    const counted = await h.rejected();
    assert.equal(Object.values(counted).reduce((x, y) => x + y, 0), bad, JSON.stringify(counted));
  });

  void test('with openWakeWord\'s x/10+2 link (upstream scale/offset): the chain\'s scores equal openWakeWord\'s own streaming', async () => {
    const affine = (m: LocalModel): ManifestV2 =>
      ManifestV2Schema.parse({ ...m.manifest, inputs: (m.manifest as ManifestV2).inputs.map((i) => (i.source.kind === 'upstream' ? { ...i, source: { ...i.source, ...OWW.melTransform } } : i)) });
    const embedding = await localModel(affine(stages.embedding), cached['oww-embedding']!);
    const h = await harness('wake-affine', stages.mel, [embedding, stages.head]);
    const got = await runChain(h, 'mic-1', 500_000);
    const want = await ownStream(runs, audio, OWW.melTransform);
    const plain = await ownStream(runs, audio, { scale: 1, offset: 0 });
    let differs = false;
    for (const [k, w] of want.entries()) {
      if (w === undefined) {
        assert.equal(got[k]!.buffered, true);
        continue;
      }
      assert.ok(Math.abs((got[k]!['score'] as number) - w) <= 1e-6, `chunk ${k}: ${String(got[k]!['score'])} vs ${w}`);
      if (Math.abs(w - plain[k]!) > 1e-6) differs = true;
    }
    assert.ok(differs, 'the transform changes the scores (else this test could not fail)');
  });
});

// ---------------------------------------------------------------------------- UltraFace

interface Box {
  score: number;
  box: [number, number, number, number];
}

/**
 * Independent reference: face column of `scores` ≥ threshold, greedy NMS (score descending,
 * ties by index, drop IoU > iou), capped, normalized boxes × the original image size (the model
 * takes the whole image stretched: fit `fill`), clipped to it.
 */
function referenceDetections(scores: Float32Array, boxes: Float32Array, opts: { threshold: number; iou: number; max: number; width: number; height: number }): Box[] {
  const n = scores.length / 2;
  const cand: number[] = [];
  for (let i = 0; i < n; i++) if (scores[2 * i + 1]! >= opts.threshold) cand.push(i);
  cand.sort((a, b) => scores[2 * b + 1]! - scores[2 * a + 1]! || a - b);
  const px = (i: number): [number, number, number, number] => [boxes[4 * i]! * 320, boxes[4 * i + 1]! * 240, boxes[4 * i + 2]! * 320, boxes[4 * i + 3]! * 240];
  const iou = (a: readonly number[], b: readonly number[]): number => {
    const iw = Math.min(a[2]!, b[2]!) - Math.max(a[0]!, b[0]!);
    const ih = Math.min(a[3]!, b[3]!) - Math.max(a[1]!, b[1]!);
    if (iw <= 0 || ih <= 0) return 0;
    const area = (r: readonly number[]): number => (r[2]! - r[0]!) * (r[3]! - r[1]!);
    return (iw * ih) / (area(a) + area(b) - iw * ih);
  };
  const kept: number[] = [];
  for (const i of cand) {
    if (kept.length >= opts.max) break;
    if (kept.some((k) => iou(px(k), px(i)) > opts.iou)) continue;
    kept.push(i);
  }
  const clip = (v: number, hi: number): number => Math.min(hi, Math.max(0, v));
  const sx = opts.width / 320;
  const sy = opts.height / 240;
  return kept.map((i) => {
    const [x1, y1, x2, y2] = px(i);
    return { score: scores[2 * i + 1]!, box: [clip(x1 * sx, opts.width), clip(y1 * sy, opts.height), clip(x2 * sx, opts.width), clip(y2 * sy, opts.height)] };
  });
}

const round1 = (x: number): number => Math.round(x * 10) / 10;
const r6 = (x: number): number => Math.round(x * 1e6) / 1e6;

/** The face image at another size (the box mapping to original pixels must undo the resize). */
async function scaled(img: SyntheticImage, width: number, height: number): Promise<Buffer> {
  return sharp(img.png).resize(width, height, { fit: 'fill', kernel: 'nearest' }).png().toBuffer();
}

let ultraManifest: ManifestV2 | undefined;
/** Whether detection.ts decodes UltraFace's own layout (scores [1, N, 2] with a background column). */
let ultraDecodable: string | false = skipUnless('ultraface-rfb-320') || 'not probed';
if (!skipUnless('ultraface-rfb-320')) {
  const s = await bareSession(cached['ultraface-rfb-320']!.path);
  try {
    ultraManifest = await ultraFaceManifest(cached['ultraface-rfb-320']!, s.run);
    const src = ultraManifest.inputs[0]!.source;
    const r = await s.run({ input: imageTensor(await faceImage(), src as Parameters<typeof imageTensor>[1]) });
    const post = ultraManifest.postprocessing;
    if (post.kind !== 'detection') throw new Error('UltraFace manifest is not detection');
    try {
      decodeDetections(post, r, { inputWidth: 320, inputHeight: 240, srcWidth: 320, srcHeight: 240, scaleX: 1, scaleY: 1, padLeft: 0, padTop: 0 });
      ultraDecodable = false;
    } catch (err) {
      ultraDecodable =
        'missing feature in agent/postprocess/detection.ts: no decoder for UltraFace\'s layout (`scores` [1, N, 2] softmax with a background column, `boxes` [1, N, 4] decoded ' +
        `xyxy normalized, no NMS inside); the \`nms\` decoder wants scores [1, K] and runs no NMS: ${(err as Error).message}`;
    }
  } finally {
    await s.release();
  }
}

void describe('UltraFace RFB-320 through the Pipeline', { skip: skipUnless('ultraface-rfb-320') }, () => {
  let face: SyntheticImage;
  before(async () => {
    face = await faceImage();
  });

  /** The pipeline's detections vs the reference over the same call's raw outputs. */
  async function compare(h: Harness, key: string, png: Buffer, width: number, height: number, post: { scoreThreshold: number; iouThreshold: number; maxDetections: number }): Promise<TaskResult> {
    const from = calls.length;
    const r = task(await h.pipeline.infer({ kind: 'image', bytes: png }));
    const call = calls.slice(from).find((c) => c.key === key)!;
    const want = referenceDetections(call.outputs['scores']!.data, call.outputs['boxes']!.data, { threshold: post.scoreThreshold, iou: post.iouThreshold, max: post.maxDetections, width, height });
    const got = r['detections'] as { label: string; score: number; box: { x1: number; y1: number; x2: number; y2: number } }[];
    assert.equal(r.count, want.length);
    assert.deepEqual(
      got.map((d) => [d.label, d.score, d.box.x1, d.box.y1, d.box.x2, d.box.y2]),
      want.map((w) => ['face', r6(w.score), ...w.box.map(round1)]),
    );
    return r;
  }

  void test('the pipeline feeds the model exactly the reference preprocessing of the drawn face', async () => {
    const m = await localModel(ultraManifest!, cached['ultraface-rfb-320']!);
    const h = await harness('faces-feed', m);
    const from = calls.length;
    await h.pipeline.infer({ kind: 'image', bytes: face.png }).catch(() => undefined);
    const call = calls.slice(from).find((c) => c.key === m.key);
    assert.ok(call, 'the engine was called');
    const want = imageTensor(face, ultraManifest!.inputs[0]!.source as Parameters<typeof imageTensor>[1]);
    assert.deepEqual(call.input.dims, want.dims);
    let worst = 0;
    for (let i = 0; i < want.data.length; i++) worst = Math.max(worst, Math.abs((call.input.data[i] as number) - (want.data[i] as number)));
    assert.ok(worst <= 1e-6, `max |difference| ${worst}`);
  });

  void test('detections in original pixels equal an independent NMS + box mapping over the bare outputs', { skip: ultraDecodable }, async () => {
    const m = await localModel(ultraManifest!, cached['ultraface-rfb-320']!);
    const h = await harness('faces', m);
    const post = ultraManifest!.postprocessing as Extract<ManifestV2['postprocessing'], { kind: 'detection' }>;
    const r = await compare(h, m.key, await scaled(face, 640, 480), 640, 480, post);
    assert.ok((r.count as number) >= 1);
    assert.equal((await compare(h, m.key, (await flatImage(320, 240)).png, 320, 240, post)).count, 0);
  });

  void test(
    'the detector\'s own decoded layout at three image sizes and a flat wall; bad images rejected and counted, the next one served',
    { skip: ultraDecodable },
    async (t) => {
      const post = ultraManifest!.postprocessing as Extract<ManifestV2['postprocessing'], { kind: 'detection' }>;
      const m = await localModel(ultraManifest!, cached['ultraface-rfb-320']!);
      const h = await harness('faces-sizes', m);
      const big = await compare(h, m.key, await scaled(face, 640, 480), 640, 480, post);
      const same = await compare(h, m.key, face.png, 320, 240, post);
      const small = await compare(h, m.key, await scaled(face, 160, 120), 160, 120, post);
      const none = await compare(h, m.key, (await flatImage(320, 240)).png, 320, 240, post);
      const d = (same['detections'] as { score: number; box: Record<string, number> }[])[0];
      t.diagnostic(`640×480: ${String(big.count)} face(s); 320×240: ${String(same.count)} (best ${String(d?.score)} at ${JSON.stringify(d?.box)}); 160×120: ${String(small.count)}; flat wall: ${String(none.count)}`);
      assert.ok((same.count as number) >= 1 && (big.count as number) >= 1, 'the drawn face is found');
      assert.equal(none.count, 0, 'nothing on a flat wall');
      // Bad images on the detector: rejected, counted, and the next good one is served.
      const before = (await h.rejected())['bad_input'] ?? 0;
      const truncated = face.png.subarray(0, Math.floor(face.png.length / 2));
      for (const bytes of [Buffer.from('definitely not a PNG'), truncated, Buffer.alloc(0)]) {
        await rejects(h.pipeline.infer({ kind: 'image', bytes }), [ErrorCode.BAD_INPUT, ErrorCode.BAD_PAYLOAD]);
        await compare(h, m.key, face.png, 320, 240, post);
      }
      await rejects(h.pipeline.infer({ kind: 'json', body: { values: [1, 2, 3] } }), [ErrorCode.BAD_INPUT]);
      const counted = await h.rejected();
      assert.equal((counted['bad_input'] ?? 0) - before + (counted['too_large'] ?? 0) + (counted['malformed'] ?? 0), 3, JSON.stringify(counted));
      assert.equal(counted['wrong_kind'], 1, JSON.stringify(counted));
    },
  );
});
