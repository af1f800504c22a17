/**
 * Child processes and worker threads of this code base start whatever the working directory
 * (issue #12: a hub or agent started by systemd in /var/lib/... had every model probe fail,
 * because the probe child was started with `--import tsx`, which Node resolves from the cwd),
 * and a probe that fails for a reason of its own is reported as PROBE_FAILED, never as a bad
 * model. Real probe children, real ORT, real worker threads. The dist/ build is covered by
 * test/e2e/tarball-install.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import type { LocalModel } from '../../agent/models/local-models.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { EdgefleetError, ErrorCode, httpStatusOf } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { probeModel, runProbe, type ProbeLimits } from '../../shared/validate/model-probe.ts';
import { memoryBombModelBytes, segfaultModelBytes, writeHostileModel } from '../helpers/hostile-models.ts';
import { writeTinyLocalModel } from '../helpers/tiny-local-model.ts';

const LIMITS: ProbeLimits = { timeoutMs: 30_000, maxRssBytes: 1024 * 2 ** 20, addressSpaceBudgetBytes: 2 * 2 ** 30 };

describe('running from another working directory (issue #12)', { concurrency: false }, () => {
  let dir: string;
  let elsewhere: string;
  let model: LocalModel;
  const cwd = process.cwd();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-probe-cwd-'));
    // A directory with no node_modules anywhere above it, like systemd's /var/lib/edgefleet-hub.
    elsewhere = await mkdtemp(join(tmpdir(), 'edgefleet-not-a-checkout-'));
    model = await writeTinyLocalModel(dir, { name: 'cwd-model', version: '1.0.0', seed: 3 });
  });

  after(async () => {
    process.chdir(cwd);
    await rm(dir, { recursive: true, force: true });
    await rm(elsewhere, { recursive: true, force: true });
  });

  test('a probe started outside the checkout loads a good model and passes its test vectors', async () => {
    process.chdir(elsewhere);
    try {
      const outcome = await probeModel(model.onnxPath, model.manifest, LIMITS, silentLogger());
      assert.deepEqual(outcome.problems, []);
      assert.equal(outcome.exit, 'exited with code 0');
    } finally {
      process.chdir(cwd);
    }
  });

  test('inference worker threads start outside the checkout and serve the model', async () => {
    process.chdir(elsewhere);
    const engine = new WorkerPoolEngine({ log: silentLogger(), registry: new Registry() });
    try {
      await engine.start(new AbortController().signal);
      await engine.load(model.key, model.onnxPath);
      const tv = model.manifest.testVectors[0] as { input: number[]; shape: number[]; expected: number[] };
      const res = await engine.infer(model.key, { data: Float32Array.from(tv.input), dims: tv.shape });
      const logits = Array.from(res.outputs['logits']!.data);
      assert.equal(logits.length, tv.expected.length);
      logits.forEach((v, i) => assert.ok(Math.abs(v - tv.expected[i]!) < 1e-3, `${v} vs ${tv.expected[i]}`));
    } finally {
      await engine.stop();
      process.chdir(cwd);
    }
  });
});

describe('a probe that fails by itself is not a bad model', { concurrency: false }, () => {
  let dir: string;
  let model: LocalModel;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-probe-internal-'));
    model = await writeTinyLocalModel(dir, { name: 'good', version: '1.0.0', seed: 5 });
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const rejectsProbeFailed = async (p: Promise<unknown>, message: RegExp): Promise<void> => {
    await assert.rejects(p, (err: unknown) => {
      assert.ok(err instanceof EdgefleetError, String(err));
      assert.equal(err.code, ErrorCode.PROBE_FAILED);
      assert.match(err.message, /the model probe could not run, the model was not checked/);
      assert.match(err.message, message);
      assert.doesNotMatch(err.message, /could not be loaded safely/);
      return true;
    });
  };

  test('PROBE_FAILED is its own code, answered 503 (retry later), not 422', () => {
    assert.equal(httpStatusOf[ErrorCode.PROBE_FAILED], 503);
    assert.equal(httpStatusOf[ErrorCode.BAD_MODEL], 422);
  });

  test('a memory budget below what Node and onnxruntime need to start: PROBE_FAILED before READY', async () => {
    // Node + tsx + onnxruntime take ~100 MB before the child reads its request (measured).
    const limits = { ...LIMITS, maxRssBytes: 16 * 2 ** 20, pollMs: 5 };
    await rejectsProbeFailed(probeModel(model.onnxPath, model.manifest, limits, silentLogger()), /used \d+ MiB of memory, more than 16 MiB allowed before it was ready/);
  });

  test('a start-up slower than the timeout: PROBE_FAILED, not a model that timed out', async () => {
    await rejectsProbeFailed(
      runProbe({ path: model.onnxPath, vectors: [] }, { ...LIMITS, timeoutMs: 1 }, silentLogger()),
      /timed out after 1 ms before it was ready/,
    );
  });

  test('a model that bloats the child after READY past its budget is still a bad model (memory bomb)', async () => {
    const path = await writeHostileModel(join(dir, 'bomb.onnx'), memoryBombModelBytes({ inputDim: 4, outputDim: 3 }, 1024 * 2 ** 20));
    const outcome = await probeModel(path, model.manifest, { ...LIMITS, maxRssBytes: 256 * 2 ** 20, pollMs: 5 }, silentLogger());
    assert.equal(outcome.problems.length, 1, JSON.stringify(outcome));
    assert.match(outcome.problems[0]!, /could not be loaded safely: the loader used \d+ MiB of memory, more than 256 MiB allowed/);
  });

  test('a model that kills the child after READY is still a bad model (segfault)', async () => {
    const shape = { inputDim: 4, outputDim: 3 };
    const path = await writeHostileModel(join(dir, 'segfault.onnx'), segfaultModelBytes(shape));
    const outcome = await probeModel(path, model.manifest, LIMITS, silentLogger());
    assert.equal(outcome.problems.length, 1, JSON.stringify(outcome));
    assert.match(outcome.problems[0]!, /could not be loaded safely: the loader died with SIGSEGV/);
  });
});
