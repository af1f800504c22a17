/**
 * Probation under load on real parts (issue #3): WorkerPoolEngine, ModelSet, Pipeline,
 * HealthMonitor (real outbox) and Probation on its real timer. A baseline version serves; then
 * candidates are swapped in under 4 request loops and watched against it:
 *   slow      machine-state's `slow` release variant (scripts/lib/release-variants.ts): the same
 *             outputs at ~100× the compute → breach naming latency_p95 (and nothing else)
 *   good      machine-state retrained, a new version of the same behaviour → pass at untilMs
 *   collapse  a tiny model's weights with a manifest that scales inputs to ~0, so its outputs are
 *             near-uniform → breach naming confidence
 * After a breach the test swaps the baseline back in, as the updater's rollback does.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Registry } from 'prom-client';
import { PipelineSchema } from '../../agent/config.ts';
import { HealthMonitor } from '../../agent/health/health-monitor.ts';
import { Probation, ProbationThresholdsSchema, type ProbationBreach, type ProbationPass } from '../../agent/health/probation.ts';
import { createPipelineMetrics } from '../../agent/metrics.ts';
import type { LocalModel } from '../../agent/models/local-models.ts';
import { ModelSet } from '../../agent/models/model-set.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { Pipeline } from '../../agent/pipeline.ts';
import { WorkerPoolEngine } from '../../agent/runtime/pool.ts';
import { meanConfidence, p95LatencyMs, samples } from '../../shared/health.ts';
import { silentLogger } from '../../shared/log.ts';
import { writeReleaseVariant } from '../../scripts/lib/release-variants.ts';
import { createRng, mulberry32 } from '../../scripts/lib/rng.ts';
import { sensorDataset } from '../../scripts/lib/synthetic.ts';
import { until } from '../helpers/fleet-in-process.ts';
import { writeTinyLocalModel } from '../helpers/tiny-local-model.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-probation-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

interface Harness {
  /** Swaps `m` in, watches it against the baseline until a verdict; rolls back after a breach. */
  tryVersion(m: LocalModel, probationMs: number): Promise<{ breach?: ProbationBreach; pass?: ProbationPass }>;
  served(m: LocalModel): number;
  readonly figures: string[];
  readonly breaches: ProbationBreach[];
  readonly failed: number;
  close(): Promise<void>;
}

// Probation defaults, but latency judged on a scale that a busy 2-core test machine's queueing
// noise does not reach (a slow release is far beyond it).
const thresholds = ProbationThresholdsSchema.parse({ minLatencyDeltaMs: 10, maxLatencyRatio: 3 });

async function harness(baseline: LocalModel, reading: (rand: () => number) => number[]): Promise<Harness> {
  const name = baseline.manifest.name;
  const log = silentLogger();
  const registry = new Registry();
  const engine = new WorkerPoolEngine({ workers: 2, intraOpThreads: 1, maxBatch: 8, log, registry });
  const outbox = new Outbox({ path: join(dir, `outbox-${name}.db`), log, registry });
  const models = new ModelSet({ manifests: [baseline.manifestPath], engine, log });
  const health = new HealthMonitor({ windowMs: 1000, keepWindows: 300, sink: outbox, log });
  const probation = new Probation({ health, thresholds, checkMs: 200, log });
  const signal = new AbortController().signal;
  await outbox.start(signal);
  await engine.start(signal);
  await models.start(signal);
  await health.start();
  await probation.start();
  const breaches: ProbationBreach[] = [];
  const passes: ProbationPass[] = [];
  probation.onBreach((b) => breaches.push(b));
  probation.onPass((p) => passes.push(p));
  const pipeline = new Pipeline({
    deviceId: 'dev-1',
    config: PipelineSchema.parse({ name: 'p', model: name, input: { type: 'mqtt' }, output: { telemetry: false } }),
    model: () => models.byName(name),
    acquire: () => models.acquire(name),
    health,
    engine,
    publisher: { publish: () => true },
    sink: outbox,
    metrics: createPipelineMetrics(registry),
    log,
  });
  await pipeline.start();

  let stop = false;
  let failed = 0;
  const loop = async (seed: number): Promise<void> => {
    const rand = mulberry32(seed);
    while (!stop) {
      try {
        await pipeline.infer({ kind: 'json', body: { values: reading(rand) } });
      } catch {
        failed++;
      }
    }
  };
  const loops = Array.from({ length: 4 }, (_, i) => loop(200 + i));
  const served = (m: LocalModel, from = 0): number => samples(health.totalsSince(name, m.manifest.version, from));
  const figures: string[] = [];
  const describeVersion = (m: LocalModel, from: number): string => {
    const t = health.totalsSince(name, m.manifest.version, from);
    return `${m.manifest.version}: n=${samples(t)} p95=${p95LatencyMs(t).toFixed(2)}ms conf=${meanConfidence(t).toFixed(3)}`;
  };
  await until(() => served(baseline) >= 600, 60_000, `baseline requests on ${baseline.key}`);
  figures.push(describeVersion(baseline, 0));

  return {
    figures,
    breaches,
    get failed() {
      return failed;
    },
    served: (m) => served(m),
    tryVersion: async (m, probationMs) => {
      const nb = breaches.length;
      const np = passes.length;
      await models.swap(m);
      const from = Date.now();
      probation.watch({ name, version: m.manifest.version, previousVersion: baseline.manifest.version, untilMs: Date.now() + probationMs });
      await until(() => breaches.length > nb || passes.length > np, probationMs + 60_000, `probation verdict on ${m.key}`);
      figures.push(describeVersion(m, from));
      const verdict = { breach: breaches[nb], pass: passes[np] };
      if (verdict.breach) await models.swap(baseline); // the updater's local rollback
      return verdict;
    },
    close: async () => {
      stop = true;
      await Promise.all(loops);
      await pipeline.stop();
      await probation.stop();
      await health.stop();
      await models.stop();
      await engine.stop();
      await outbox.stop();
      console.log(`probation ${name}: ${figures.join(' | ')} | breaches: ${breaches.map((b) => `${b.version} → ${b.reason}`).join(' | ') || 'none'} | failed=${failed}`);
    },
  };
}

function localModel(w: { manifest: LocalModel['manifest']; manifestPath: string; onnxPath: string }): LocalModel {
  return { manifest: w.manifest, manifestPath: w.manifestPath, onnxPath: w.onnxPath, key: `${w.manifest.name}@${w.manifest.version}` };
}

describe('probation under load', () => {
  void test('a much slower release breaches naming latency_p95; a good one passes at untilMs', { timeout: 150_000 }, async () => {
    const v1 = localModel(await writeReleaseVariant(dir, 'retrained', '1.0.0'));
    const slow = localModel(await writeReleaseVariant(dir, 'slow', '2.0.0-slow'));
    const good = localModel(await writeReleaseVariant(dir, 'retrained', '2.0.0'));
    // Field readings of every machine state, as the demo's sensors send them.
    const rows = sensorDataset(createRng(77), 500).x;
    const h = await harness(v1, (rand) => rows[Math.floor(rand() * rows.length)]!);
    try {
      const s = await h.tryVersion(slow, 60_000);
      assert.ok(s.breach, 'slow version breached');
      assert.equal(s.breach.version, '2.0.0-slow');
      assert.match(s.breach.reason, /^latency_p95: /);
      assert.doesNotMatch(s.breach.reason, /class_shift|confidence|error_rate/, 'same outputs: only latency');

      const g = await h.tryVersion(good, 4000);
      assert.deepEqual(g.pass, { name: 'machine-state', version: '2.0.0' }, `good version: ${JSON.stringify(h.breaches.slice(1))}`);
      assert.ok(h.served(good) >= thresholds.minSamples, 'the good version was judged on enough requests');
      assert.equal(h.breaches.length, 1);
    } finally {
      await h.close();
    }
    assert.equal(h.failed, 0);
  });

  void test('a release whose outputs collapse to near-uniform breaches naming confidence', { timeout: 120_000 }, async () => {
    const base = { name: 'ms', inputDim: 8, layers: 1, hidden: 32, seed: 21 };
    const v1 = await writeTinyLocalModel(dir, { ...base, version: '1.0.0' });
    const collapse = await writeTinyLocalModel(dir, { ...base, version: '2.0.0-collapse', featureStd: 1e4 });
    // Large readings make the baseline confident; the collapsed manifest scales them to ~0.
    const h = await harness(v1, (rand) => Array.from({ length: 8 }, () => rand() * 40 - 20));
    try {
      const c = await h.tryVersion(collapse, 60_000);
      assert.ok(c.breach, 'collapsed version breached');
      assert.match(c.breach.reason, /confidence: mean confidence/);
      assert.doesNotMatch(c.breach.reason, /latency_p95/);
    } finally {
      await h.close();
    }
    assert.equal(h.failed, 0);
  });
});
