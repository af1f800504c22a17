/**
 * WorkerPoolEngine against real ORT sessions in real worker threads, on tiny real ONNX models
 * (test/helpers/tiny-model.ts). Results are compared with a direct single-thread
 * InferenceSession.run of the same inputs.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import ort from 'onnxruntime-node';
import { Registry } from 'prom-client';
import { WorkerPoolEngine, type WorkerPoolOptions } from '../../agent/runtime/pool.ts';
import type { InferResult } from '../../agent/runtime/engine.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { mulberry32 as rng } from '../../scripts/lib/rng.ts';
import { writeTinyModel } from '../helpers/tiny-model.ts';

type Session = Awaited<ReturnType<typeof ort.InferenceSession.create>>;

let dir: string;
const paths: Record<string, string> = {};
const refs: Record<string, Session> = {};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-runtime-'));
  paths.linear = await writeTinyModel(join(dir, 'linear.onnx'), { inputDim: 8, outputDim: 3, layers: 1, hidden: 16, softmax: true, seed: 7 });
  paths.linear2 = await writeTinyModel(join(dir, 'linear2.onnx'), { inputDim: 8, outputDim: 3, seed: 99 });
  paths.fixed = await writeTinyModel(join(dir, 'fixed.onnx'), { inputDim: 8, outputDim: 3, batch: 1, seed: 7 });
  paths.u8 = await writeTinyModel(join(dir, 'u8.onnx'), { inputDim: 16, extraDims: [1, 4], outputDim: 2, inputType: 'uint8', seed: 3 });
  paths.twoInputs = await writeTinyModel(join(dir, 'two.onnx'), { inputDim: 8, outputDim: 3, secondInput: true });
  // ~2M parameters: a batch of 16 keeps a worker busy for several ms.
  paths.heavy = await writeTinyModel(join(dir, 'heavy.onnx'), { inputDim: 512, hidden: 512, layers: 8, outputDim: 4, seed: 5 });
  for (const k of ['linear', 'fixed', 'u8']) {
    refs[k] = await ort.InferenceSession.create(paths[k]!, { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
  }
});

after(async () => {
  for (const s of Object.values(refs)) await s.release();
  await rm(dir, { recursive: true, force: true });
});

const engines: WorkerPoolEngine[] = [];
after(async () => {
  await Promise.all(engines.map((e) => e.stop()));
});

async function startEngine(opts: Partial<WorkerPoolOptions> = {}): Promise<{ engine: WorkerPoolEngine; registry: Registry }> {
  const registry = new Registry();
  const engine = new WorkerPoolEngine({ log: silentLogger(), registry, ...opts });
  engines.push(engine);
  await engine.start(new AbortController().signal);
  return { engine, registry };
}

function sample(seed: number, n = 8): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 4 - 2);
}

async function reference(key: string, data: Float32Array | Uint8Array, dims: number[]): Promise<Record<string, Float32Array>> {
  const s = refs[key]!;
  const dtype = data instanceof Float32Array ? 'float32' : 'uint8';
  const out = await s.run({ [s.inputNames[0]!]: new ort.Tensor(dtype, data, dims) });
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, Float32Array.from(v.data as Float32Array)]));
}

function assertClose(actual: Float32Array, expected: Float32Array, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(Math.abs(actual[i]! - expected[i]!) <= tol, `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<EdgefleetError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof EdgefleetError, `expected EdgefleetError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected rejection with ${code}`);
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = await registry.getSingleMetric(name)?.get();
  const v = m?.values.find((x) => Object.entries(labels).every(([k, l]) => x.labels[k] === l));
  return v?.value ?? 0;
}

/** One worker, batches of 4, each run held 150 ms, `crashWorkerForTest(0, 'exit')` allowed. */
const CRASHABLE: Partial<WorkerPoolOptions> = {
  workers: 1,
  maxBatch: 4,
  testHooks: { runDelayMs: 150, exit: true },
  respawnBackoff: { initialMs: 20, maxMs: 100, factor: 2, jitter: 0 },
};

function outcome(p: Promise<InferResult>): Promise<{ ok: true; r: InferResult } | { ok: false; err: unknown }> {
  return p.then(
    (r) => ({ ok: true as const, r }),
    (err: unknown) => ({ ok: false as const, err }),
  );
}

void describe('WorkerPoolEngine', { concurrency: false }, () => {
  void test('load reports the model metadata and refuses what it cannot serve', async () => {
    const { engine } = await startEngine();
    const h = await engine.load('linear@1.0.0', paths.linear!);
    assert.deepEqual(
      { name: h.inputName, type: h.inputType, dims: h.inputDims, outs: h.outputNames, dyn: h.dynamicBatch, max: h.maxBatch },
      { name: 'input', type: 'float32', dims: ['N', 8], outs: ['logits', 'probs'], dyn: true, max: 16 },
    );
    assert.deepEqual(h.outputs[0], { name: 'logits', type: 'float32', dims: ['N', 3] });
    assert.equal(await engine.load('linear@1.0.0', paths.linear!), h, 'same key and path: the same handle');
    await rejectsWith(engine.load('linear@1.0.0', paths.linear2!), 'CONFLICT');

    const fixed = await engine.load('fixed@1', paths.fixed!, { maxBatch: 8 });
    assert.equal(fixed.dynamicBatch, false);
    assert.equal(fixed.maxBatch, 1);

    await rejectsWith(engine.load('missing@1', join(dir, 'nope.onnx')), 'BAD_MODEL');
    await rejectsWith(engine.load('no-such-input@1', paths.twoInputs!, { primaryInput: 'nope' }), 'BAD_MODEL');
    assert.deepEqual(engine.stats().models.sort(), ['fixed@1', 'linear@1.0.0']);
    // The refused model is not left behind on the worker.
    await rejectsWith(engine.infer('missing@1', { data: sample(1), dims: [1, 8] }), 'NOT_FOUND');
  });

  void test('a handed-over input comes back to reclaim with its bytes; copied, batched or failed runs give nothing back (issue #13)', async () => {
    const { engine } = await startEngine({ workers: 1, maxBatch: 4, maxWaitMs: 200 });
    await engine.load('linear@1.0.0', paths.linear!);
    const back: ArrayBuffer[] = [];
    const reclaim = (b: ArrayBuffer): void => void back.push(b);
    const x = sample(41);
    const expected = await reference('linear', x, [1, 8]);
    const given = x.slice();
    const r = await engine.infer('linear@1.0.0', { data: given, dims: [1, 8], transfer: true, reclaim });
    assertClose(r.outputs.probs!.data, expected.probs!, 1e-5, 'probs');
    assert.equal(given.byteLength, 0, 'the caller handed its buffer over (detached)');
    assert.equal(back.length, 1, 'the buffer came back before the result settled');
    assert.deepEqual(new Float32Array(back[0]!), x, 'with the bytes that were sent');
    // Fed again from the reclaimed buffer: the same answer.
    const again = await engine.infer('linear@1.0.0', { data: new Float32Array(back[0]!), dims: [1, 8], transfer: true, reclaim });
    assertClose(again.outputs.probs!.data, expected.probs!, 1e-5, 'probs from the reclaimed buffer');
    assert.equal(back.length, 2);

    // Not handed over (copied by the engine): the caller keeps its array, nothing comes back.
    const kept = x.slice();
    await engine.infer('linear@1.0.0', { data: kept, dims: [1, 8], reclaim });
    assert.equal(kept.length, 8);
    // Stacked into a batch of several: the samples were copied into one buffer, nothing comes back.
    const batch = await Promise.all([1, 2, 3].map((k) => engine.infer('linear@1.0.0', { data: sample(k), dims: [1, 8], transfer: true, reclaim })));
    assert.ok(batch.some((b) => b.batchSize > 1), 'the three samples shared a run');
    assert.equal(back.length, 2 + batch.filter((b) => b.batchSize === 1).length);
    // A refused input (wrong shape) gives nothing back.
    const before = back.length;
    await rejectsWith(engine.infer('linear@1.0.0', { data: new Float32Array(5), dims: [1, 5], transfer: true, reclaim }), 'BAD_INPUT');
    assert.equal(back.length, before);
  });

  void test('a model with several inputs takes the others by name, one sample per run (issue #13)', async () => {
    const { engine } = await startEngine();
    const two = await engine.load('two@1', paths.twoInputs!);
    assert.deepEqual(
      { primary: two.inputName, inputs: two.inputs.map((i) => i.name), dyn: two.dynamicBatch, max: two.maxBatch },
      { primary: 'input', inputs: ['input', 'extra'], dyn: false, max: 1 },
    );
    const x = sample(3);
    const missing = await rejectsWith(engine.infer('two@1', { data: x, dims: [1, 8] }), 'BAD_INPUT');
    assert.match(missing.message, /input extra is missing/);
    const wrongType = await rejectsWith(engine.infer('two@1', { data: x, dims: [1, 8], extra: { extra: { data: new Uint8Array(3), dims: [1, 3] } } }), 'BAD_INPUT');
    assert.match(wrongType.message, /extra must be the array type of float32/);
    const unknown = await rejectsWith(
      engine.infer('two@1', { data: x, dims: [1, 8], extra: { extra: { data: new Float32Array(3), dims: [1, 3] }, other: { data: new Float32Array(1), dims: [1] } } }),
      'BAD_INPUT',
    );
    assert.match(unknown.message, /no input other/);
    const zero = await engine.infer('two@1', { data: x, dims: [1, 8], extra: { extra: { data: new Float32Array(3), dims: [1, 3] } } });
    const offset = Float32Array.of(1, -2, 0.5);
    const shifted = await engine.infer('two@1', { data: x, dims: [1, 8], extra: { extra: { data: offset, dims: [1, 3] } } });
    const a = zero.outputs['logits2']!.data;
    const b = shifted.outputs['logits2']!.data;
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(b[i]! - a[i]! - offset[i]!) < 1e-5, `the extra input is added: ${b[i]} - ${a[i]} = ${offset[i]}`);
    assert.deepEqual([...offset], [1, -2, 0.5], 'the caller keeps its arrays (the engine sends copies)');
  });

  void test('single results equal a direct single-thread session run', async () => {
    const { engine } = await startEngine({ workers: 2 });
    await engine.load('linear@1', paths.linear!);
    await engine.load('u8@1', paths.u8!);
    for (let i = 0; i < 5; i++) {
      const data = sample(100 + i);
      const res = await engine.infer('linear@1', { data, dims: [1, 8] });
      const ref = await reference('linear', data, [1, 8]);
      assert.equal(res.batchSize, 1);
      assert.deepEqual(res.outputs.logits?.dims, [1, 3]);
      assert.deepEqual(res.outputs.logits?.data, ref.logits);
      assert.deepEqual(res.outputs.probs?.data, ref.probs);
      assert.ok(res.latencyMs >= res.runMs && res.runMs >= 0);
    }
    const px = Uint8Array.from({ length: 64 }, (_, i) => (i * 37) % 256);
    const res = await engine.infer('u8@1', { data: px, dims: [1, 1, 4, 16] });
    assert.deepEqual(res.outputs.logits?.dims, [1, 1, 4, 2]);
    assert.deepEqual(res.outputs.logits?.data, (await reference('u8', px, [1, 1, 4, 16])).logits);
  });

  void test('concurrent samples form batches > 1 and every sample gets its own result', async () => {
    const { engine, registry } = await startEngine({ workers: 2, maxBatch: 8 });
    await engine.load('linear@1', paths.linear!);
    const inputs = Array.from({ length: 100 }, (_, i) => sample(1000 + i));
    const results = await Promise.all(inputs.map((data) => engine.infer('linear@1', { data, dims: [1, 8] })));
    const sizes = results.map((r) => r.batchSize);
    assert.ok(Math.max(...sizes) > 1, `no batch formed: ${sizes.join(',')}`);
    assert.ok(Math.max(...sizes) <= 8, 'maxBatch is respected');
    for (const [i, r] of results.entries()) {
      const ref = await reference('linear', inputs[i]!, [1, 8]);
      assertClose(r.outputs.logits!.data, ref.logits!, 1e-5, `sample ${i} logits`);
      assertClose(r.outputs.probs!.data, ref.probs!, 1e-6, `sample ${i} probs`);
      assert.deepEqual(r.outputs.logits!.dims, [1, 3]);
    }
    const hist = await registry.getSingleMetric('edgefleet_agent_inference_batch_size')?.get();
    const count = hist?.values.find((v) => (v as { metricName?: string }).metricName === 'edgefleet_agent_inference_batch_size_count')?.value ?? 0;
    const sum = hist?.values.find((v) => (v as { metricName?: string }).metricName === 'edgefleet_agent_inference_batch_size_sum')?.value ?? 0;
    assert.equal(sum, 100, 'every sample ran exactly once');
    assert.ok(count < 100, 'fewer runs than samples');
    assert.deepEqual(engine.stats(), { queued: 0, inFlight: 0, workers: 2, restarts: 0, models: ['linear@1'] });
  });

  void test('a lone sample waits at most about maxWaitMs for company', async () => {
    const { engine } = await startEngine({ maxWaitMs: 2 });
    await engine.load('linear@1', paths.linear!);
    await engine.infer('linear@1', { data: sample(1), dims: [1, 8] }); // warm-up
    const lat: number[] = [];
    for (let i = 0; i < 10; i++) lat.push((await engine.infer('linear@1', { data: sample(i), dims: [1, 8] })).latencyMs);
    lat.sort((a, b) => a - b);
    assert.ok(lat[0]! >= 1.5, `a lone sample should wait ~maxWaitMs for company, waited ${lat[0]} ms`);
    assert.ok(lat[5]! < 30, `median latency ${lat[5]} ms`);
  });

  void test('a fixed-batch model is never batched', async () => {
    const { engine } = await startEngine({ maxBatch: 16 });
    await engine.load('fixed@1', paths.fixed!);
    const inputs = Array.from({ length: 20 }, (_, i) => sample(200 + i));
    const results = await Promise.all(inputs.map((data) => engine.infer('fixed@1', { data, dims: [1, 8] })));
    for (const [i, r] of results.entries()) {
      assert.equal(r.batchSize, 1);
      assert.deepEqual(r.outputs.logits!.data, (await reference('fixed', inputs[i]!, [1, 8])).logits);
    }
  });

  void test('samples that do not fit the model are refused with BAD_INPUT before ORT', async () => {
    const { engine, registry } = await startEngine();
    await engine.load('linear@1', paths.linear!);
    await engine.load('fixed@1', paths.fixed!);
    const bad: [string, unknown, number[]][] = [
      ['linear@1', new Float32Array(7), [1, 7]],
      ['linear@1', new Float32Array(16), [2, 8]],
      ['linear@1', new Float32Array(8), [8]],
      ['linear@1', new Float32Array(8), [1, 1, 8]],
      ['linear@1', new Float32Array(9), [1, 8]],
      ['linear@1', new Uint8Array(8), [1, 8]],
      ['linear@1', [1, 2, 3, 4, 5, 6, 7, 8], [1, 8]],
      ['linear@1', new Float32Array(8), [1, 8.5]],
      ['fixed@1', new Float32Array(16), [2, 8]],
    ];
    for (const [key, data, dims] of bad) {
      await rejectsWith(engine.infer(key, { data: data as Float32Array, dims }), 'BAD_INPUT');
    }
    assert.equal(await metricValue(registry, 'edgefleet_agent_inference_rejections_total', { reason: 'bad_input' }), bad.length);
    await rejectsWith(engine.infer('nope@1', { data: new Float32Array(8), dims: [1, 8] }), 'NOT_FOUND');
    // Good samples mixed with bad ones are unaffected.
    const good = await engine.infer('linear@1', { data: sample(5), dims: [1, 8] });
    assert.deepEqual(good.outputs.logits!.data, (await reference('linear', sample(5), [1, 8])).logits);
  });

  void test('queue overflow rejects at once with OVERLOADED and the engine keeps serving', async () => {
    const { engine, registry } = await startEngine({ queueMax: 8, maxBatch: 4, testHooks: { runDelayMs: 30 } });
    await engine.load('linear@1', paths.linear!);
    const settled: ('ok' | 'overloaded' | 'other')[] = [];
    const t0 = performance.now();
    let firstOverloadMs = -1;
    const all = Array.from({ length: 40 }, (_, i) =>
      engine.infer('linear@1', { data: sample(i), dims: [1, 8] }).then(
        () => settled.push('ok'),
        (err: unknown) => {
          const overloaded = err instanceof EdgefleetError && err.code === 'OVERLOADED';
          if (overloaded && firstOverloadMs < 0) firstOverloadMs = performance.now() - t0;
          settled.push(overloaded ? 'overloaded' : 'other');
        },
      ),
    );
    await Promise.all(all);
    assert.equal(settled.filter((s) => s === 'ok').length, 8, 'exactly queueMax samples accepted in one burst');
    assert.equal(settled.filter((s) => s === 'overloaded').length, 32);
    assert.equal(settled.filter((s) => s === 'other').length, 0);
    assert.ok(firstOverloadMs < 25, `rejection was not immediate: ${firstOverloadMs} ms`);
    assert.equal(await metricValue(registry, 'edgefleet_agent_inference_rejections_total', { reason: 'overloaded' }), 32);
    const after = await engine.infer('linear@1', { data: sample(3), dims: [1, 8] });
    assert.equal(after.outputs.logits!.data.length, 3);
    assert.equal(engine.stats().queued, 0);
  });

  void test('a killed worker fails only its in-flight batch; the engine respawns it and serves', async () => {
    const { engine, registry } = await startEngine(CRASHABLE);
    await engine.load('linear@1', paths.linear!);
    await engine.load('u8@1', paths.u8!);
    const outcomes = Array.from({ length: 6 }, (_, i) => outcome(engine.infer('linear@1', { data: sample(300 + i), dims: [1, 8] })));
    while (engine.stats().inFlight === 0) await sleep(2);
    assert.equal(engine.stats().inFlight, 4, 'first batch of 4 is in flight');
    await engine.crashWorkerForTest(0, 'exit'); // process.exit(1) inside the worker
    const res = await Promise.all(outcomes);
    const failed = res.filter((x) => !x.ok);
    assert.equal(failed.length, 4, 'the in-flight batch fails');
    for (const f of failed) {
      assert.ok(f.err instanceof EdgefleetError && f.err.code === 'INFERENCE', String(f.err));
    }
    // The 2 queued samples were served by the respawned worker, with correct results.
    for (const [i, x] of res.entries()) {
      if (!x.ok) continue;
      assert.ok(i >= 4);
      assertClose(x.r.outputs.logits!.data, (await reference('linear', sample(300 + i), [1, 8])).logits!, 1e-5, `sample ${i}`);
    }
    assert.equal(engine.stats().restarts, 1);
    assert.equal(await metricValue(registry, 'edgefleet_agent_inference_worker_restarts_total'), 1);
    // Both models were reloaded on the new worker.
    const u8 = await engine.infer('u8@1', { data: new Uint8Array(64).fill(9), dims: [1, 1, 4, 16] });
    assert.deepEqual(u8.outputs.logits!.dims, [1, 1, 4, 2]);
    assert.equal(engine.stats().workers, 1);
  });

  void test('pipelining: a busy worker holds a second full batch, and no result crosses to another sample or model', async () => {
    const { engine, registry } = await startEngine({ workers: 1, maxBatch: 4, maxWaitMs: 50, pipelineDepth: 2, testHooks: { runDelayMs: 60 } });
    await engine.load('linear@1', paths.linear!);
    await engine.load('u8@1', paths.u8!);
    // 12 float samples and 8 uint8 ones, interleaved: full batches of both models queue up.
    const jobs = Array.from({ length: 20 }, (_, i) =>
      i % 5 < 3
        ? { key: 'linear@1', ref: 'linear', data: sample(700 + i), dims: [1, 8] }
        : { key: 'u8@1', ref: 'u8', data: Uint8Array.from({ length: 64 }, (_, j) => (i * 31 + j * 7) % 256), dims: [1, 1, 4, 16] },
    );
    let maxInFlight = 0;
    const results = jobs.map((j) => engine.infer(j.key, { data: j.data, dims: j.dims }));
    const all = Promise.all(results);
    let done = false;
    void all.finally(() => (done = true)).catch(() => undefined);
    while (!done) {
      maxInFlight = Math.max(maxInFlight, engine.stats().inFlight);
      await sleep(5);
    }
    const out = await all;
    assert.equal(maxInFlight, 8, 'one batch of 4 running and one of 4 queued at the worker, never more');
    for (const [i, r] of out.entries()) {
      const j = jobs[i]!;
      const ref = await reference(j.ref, j.data, j.dims);
      for (const [name, want] of Object.entries(ref)) assertClose(r.outputs[name]!.data, want, 1e-5, `sample ${i} (${j.key}) ${name}`);
      assert.equal(r.batchSize, 4, `sample ${i} ran in a full batch`);
    }
    const sums = (await registry.getSingleMetric('edgefleet_agent_inference_batch_size')?.get())?.values.filter(
      (v) => (v as { metricName?: string }).metricName === 'edgefleet_agent_inference_batch_size_sum',
    );
    assert.equal(
      sums?.reduce((n, v) => n + v.value, 0),
      20,
      'every sample ran exactly once',
    );
    assert.deepEqual(engine.stats(), { queued: 0, inFlight: 0, workers: 1, restarts: 0, models: ['linear@1', 'u8@1'] });
  });

  void test('pipelining: a worker that dies with a batch queued behind its run fails both; the pool recovers', async () => {
    const { engine, registry } = await startEngine({ ...CRASHABLE, pipelineDepth: 2 });
    await engine.load('linear@1', paths.linear!);
    const outcomes = Array.from({ length: 10 }, (_, i) => outcome(engine.infer('linear@1', { data: sample(900 + i), dims: [1, 8] })));
    for (let t0 = Date.now(); engine.stats().inFlight < 8; await sleep(2)) {
      assert.ok(Date.now() - t0 < 10_000, `two batches never reached the worker (inFlight ${engine.stats().inFlight})`);
    }
    assert.deepEqual([engine.stats().inFlight, engine.stats().queued], [8, 2], 'running + queued at the worker; 2 wait in the pool');
    await engine.crashWorkerForTest(0, 'exit');
    const res = await Promise.all(outcomes);
    for (const [i, x] of res.entries()) {
      if (i < 8) {
        assert.ok(!x.ok && x.err instanceof EdgefleetError && x.err.code === 'INFERENCE', `sample ${i}: ${x.ok ? 'served' : String(x.err)}`);
      } else {
        assert.ok(x.ok, `sample ${i} waited in the pool and is served after the respawn`);
        assertClose(x.r.outputs.logits!.data, (await reference('linear', sample(900 + i), [1, 8])).logits!, 1e-5, `sample ${i}`);
      }
    }
    assert.equal(await metricValue(registry, 'edgefleet_agent_inference_rejections_total', { reason: 'inference' }), 8);
    // Recovered: full service, pipelining included, on the respawned worker.
    const again = await Promise.all(Array.from({ length: 12 }, (_, i) => engine.infer('linear@1', { data: sample(950 + i), dims: [1, 8] })));
    for (const [i, r] of again.entries()) {
      assertClose(r.outputs.logits!.data, (await reference('linear', sample(950 + i), [1, 8])).logits!, 1e-5, `after respawn ${i}`);
    }
    assert.deepEqual(engine.stats(), { queued: 0, inFlight: 0, workers: 1, restarts: 1, models: ['linear@1'] });
  });

  void test('with two workers, a crash of one does not stop the other', async () => {
    const { engine } = await startEngine({ workers: 2, respawnBackoff: { initialMs: 500, maxMs: 500, factor: 1, jitter: 0 } });
    await engine.load('linear@1', paths.linear!);
    await engine.crashWorkerForTest(1, 'terminate');
    // Respawn is 500 ms away: worker 0 alone serves meanwhile.
    const r = await Promise.all(Array.from({ length: 20 }, (_, i) => engine.infer('linear@1', { data: sample(i), dims: [1, 8] })));
    assert.equal(r.length, 20);
    assert.equal(engine.stats().workers, 1);
    while (engine.stats().workers < 2) await sleep(10);
    assert.equal(engine.stats().restarts, 1);
  });

  void test('a model that cannot be reloaded after a respawn fails fast instead of hanging', async () => {
    const { engine } = await startEngine({ workers: 1, respawnBackoff: { initialMs: 10, maxMs: 10, factor: 1, jitter: 0 } });
    const copy = join(dir, 'vanishing.onnx');
    await copyFile(paths.linear!, copy);
    await engine.load('v@1', copy);
    await rm(copy);
    await engine.crashWorkerForTest(0);
    const queued = engine.infer('v@1', { data: sample(1), dims: [1, 8] });
    const err = await rejectsWith(queued, 'INFERENCE');
    assert.match(err.message, /could not be reloaded/);
    await rejectsWith(engine.infer('v@1', { data: sample(1), dims: [1, 8] }), 'INFERENCE');
    // Once the file is back, the next respawn reloads it and the model serves again.
    await copyFile(paths.linear!, copy);
    await engine.crashWorkerForTest(0);
    let res: InferResult | undefined;
    for (let i = 0; i < 200 && !res; i++) {
      res = await engine.infer('v@1', { data: sample(1), dims: [1, 8] }).catch(() => undefined);
      if (!res) await sleep(10);
    }
    assert.ok(res, 'served again after the reload');
    assert.equal(engine.stats().restarts, 2);
  });

  void test('a load that outlives loadTimeoutMs fails with BAD_MODEL without killing the worker mid-load', async () => {
    const { engine } = await startEngine({ workers: 1, loadTimeoutMs: 1 });
    const err = await rejectsWith(engine.load('heavy@1', paths.heavy!), 'BAD_MODEL');
    assert.match(err.message, /timed out/);
    assert.deepEqual(engine.stats().models, []);
    assert.equal(engine.stats().restarts, 0, 'the worker was not killed mid-load (that aborts the process)');
  });

  void test('stop() during a long native run fails its callers at the timeout and does not abort the process', async () => {
    const { engine } = await startEngine({ workers: 1, maxBatch: 2048, queueMax: 4096, stopTimeoutMs: 10 });
    await engine.load('heavy@1', paths.heavy!);
    const data = sample(9, 512);
    const pending = Array.from({ length: 2048 }, () =>
      engine.infer('heavy@1', { data: data.slice(), dims: [1, 512] }).then(
        () => 'ok',
        (e: unknown) => (e instanceof EdgefleetError ? e.code : 'other'),
      ),
    );
    while (engine.stats().inFlight === 0) await sleep(1);
    await engine.stop();
    const codes = new Set(await Promise.all(pending));
    assert.deepEqual([...codes], ['UNAVAILABLE'], 'the callers of the run in flight were failed at the timeout');
    assert.equal(engine.stats().workers, 0);
  });

  void test('the main thread stays responsive while the workers are saturated', async (t) => {
    const { engine } = await startEngine({ workers: 2, maxBatch: 16, queueMax: 500 });
    await engine.load('heavy@1', paths.heavy!);
    const data = sample(42, 512);
    await engine.infer('heavy@1', { data, dims: [1, 512] });
    const h = monitorEventLoopDelay({ resolution: 5 });
    h.enable();
    const until = performance.now() + 1500;
    let done = 0;
    let busySamples = 0;
    let batched = 0;
    const probe = setInterval(() => {
      if (engine.stats().inFlight > 0) busySamples++;
    }, 20);
    // 64 concurrent callers each keep one sample outstanding: workers never idle.
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (performance.now() < until) {
          const r = await engine.infer('heavy@1', { data: data.slice(), dims: [1, 512] });
          batched += r.batchSize;
          done++;
        }
      }),
    );
    clearInterval(probe);
    h.disable();
    const p99 = h.percentile(99) / 1e6;
    assert.ok(done > 64, `only ${done} inferences`);
    assert.ok(busySamples > 10, 'workers were busy');
    assert.ok(batched / done > 8, `mean batch ${(batched / done).toFixed(1)}: the queue never backed up, workers were not saturated`);
    t.diagnostic(`${done} heavy inferences in 1.5 s on 2 workers; mean batch ${(batched / done).toFixed(1)}; event-loop delay p99 ${p99.toFixed(1)} ms, max ${(h.max / 1e6).toFixed(1)} ms`);
    assert.ok(p99 < 50, `event-loop delay p99 ${p99.toFixed(1)} ms while saturated`);
  });

  void test('loading a new version does not disturb the one serving; unload waits for its in-flight work', async () => {
    const { engine } = await startEngine({ workers: 1, maxBatch: 4, testHooks: { runDelayMs: 40 } });
    await engine.load('m@1', paths.linear!);
    const pending: Promise<InferResult>[] = [];
    for (let i = 0; i < 12; i++) pending.push(engine.infer('m@1', { data: sample(400 + i), dims: [1, 8] }));
    const h2 = await engine.load('m@2', paths.linear2!);
    assert.equal(h2.key, 'm@2');
    let unloaded = false;
    const unloading = engine.unload('m@1').then(() => {
      unloaded = true;
    });
    await rejectsWith(engine.infer('m@1', { data: sample(1), dims: [1, 8] }), 'NOT_FOUND');
    const results = await Promise.all(pending);
    assert.equal(results.length, 12, 'every accepted sample of the old version was served');
    for (const [i, r] of results.entries()) {
      assertClose(r.outputs.logits!.data, (await reference('linear', sample(400 + i), [1, 8])).logits!, 1e-5, `m@1 sample ${i}`);
    }
    await unloading;
    assert.ok(unloaded);
    assert.deepEqual(engine.stats().models, ['m@2']);
    const r2 = await engine.infer('m@2', { data: sample(7), dims: [1, 8] });
    assert.equal(r2.outputs.logits!.data.length, 3);
    // The key can be loaded again after unload (one session per version, released on unload).
    await engine.load('m@1', paths.linear!);
  });

  void test('stop() lets accepted work finish, then refuses new work', async () => {
    const { engine } = await startEngine({ workers: 1, maxBatch: 2, testHooks: { runDelayMs: 50 } });
    await engine.load('linear@1', paths.linear!);
    const pending = Array.from({ length: 5 }, (_, i) => engine.infer('linear@1', { data: sample(i), dims: [1, 8] }));
    while (engine.stats().inFlight === 0) await sleep(2);
    const stopping = engine.stop();
    await rejectsWith(engine.infer('linear@1', { data: sample(1), dims: [1, 8] }), 'UNAVAILABLE');
    const results = await Promise.all(pending);
    assert.equal(results.length, 5);
    await stopping;
    assert.equal(engine.stats().workers, 0);
    await rejectsWith(engine.load('x@1', paths.linear!), 'UNAVAILABLE');
    await engine.stop(); // idempotent
  });

  void test('stop() is bounded: work that outlives stopTimeoutMs fails instead of hanging', async () => {
    const { engine } = await startEngine({ workers: 1, maxBatch: 1, stopTimeoutMs: 100, testHooks: { runDelayMs: 2000 } });
    await engine.load('linear@1', paths.linear!);
    const pending = Array.from({ length: 3 }, (_, i) =>
      engine.infer('linear@1', { data: sample(i), dims: [1, 8] }).then(
        () => 'ok',
        (err: unknown) => (err instanceof EdgefleetError ? err.code : 'other'),
      ),
    );
    while (engine.stats().inFlight === 0) await sleep(2);
    const t0 = performance.now();
    await engine.stop();
    assert.ok(performance.now() - t0 < 1500, 'stop did not wait for the slow run');
    assert.deepEqual(await Promise.all(pending), ['UNAVAILABLE', 'UNAVAILABLE', 'UNAVAILABLE'], 'in flight and queued fail with UNAVAILABLE');
  });

  void test('start() honours an aborted signal', async () => {
    const engine = new WorkerPoolEngine({ log: silentLogger() });
    engines.push(engine);
    const ac = new AbortController();
    const starting = engine.start(ac.signal);
    ac.abort();
    await rejectsWith(starting, 'ABORTED');
    assert.equal(engine.stats().workers, 0);
    await engine.stop();
  });
});
