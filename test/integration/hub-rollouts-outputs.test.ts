/**
 * The output gate through the hub (issue #13): a real hub on a fake clock and scripted devices
 * (hub-rollouts-fixture.ts) that publish synthetic HealthWindow telemetry carrying the task output
 * statistic (`output`) of an anomaly model. The thing under test is the hub's gate: a canary whose
 * alarm rate jumps is rolled back with an output_rate breach, one whose rate is unchanged passes
 * its wave; the verdict shows in the rollout status API and `rollout status`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatStatus } from '../../cli/commands/rollout.ts';
import { CONFIDENCE_BINS, LATENCY_EDGES_MS, type HealthWindow } from '../../shared/updates.ts';
import { RolloutFixture, until, type Release, type RolloutStatusBody, type ScriptedDevice } from './hub-rollouts-fixture.ts';

const BAKE = 600_000;

interface OutputGate {
  verdict: string;
  statistic: string | null;
  detail: string;
  candidate: { n: number; mean: number } | null;
}
type Status = Omit<RolloutStatusBody, 'gates'> & { gates: (RolloutStatusBody['gates'][number] & { wave: number; output?: OutputGate })[] };

describe('hub rollouts: output gate on an anomaly model', () => {
  let dir: string;
  let fx: RolloutFixture;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-rollouts-out-'));
    fx = new RolloutFixture(join(dir, 'hub'));
    await fx.start();
  });

  after(async () => {
    await fx.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const fleet = async (group: string, n: number, runs: Release): Promise<ScriptedDevice[]> => {
    const out: ScriptedDevice[] = [];
    for (let i = 1; i <= n; i++) {
      const d = (await fx.register(`${group}-${String(i).padStart(2, '0')}`, group)).runs(runs);
      await d.connect();
      out.push(d);
    }
    return out;
  };
  const waitFor = async (id: string, check: (s: Status) => boolean, what: string): Promise<Status> => {
    let last: Status | undefined;
    await until(
      async () => {
        last = (await fx.status(id)) as Status;
        return check(last);
      },
      20_000,
      what,
    );
    return last as Status;
  };
  /** A window of `ok` anomaly scorings, `alarms` of them alarms; health otherwise identical everywhere. */
  const anomalyWindow = (d: ScriptedDevice, model: string, version: string, windowStart: number, ok: number, alarms: number): Promise<void> => {
    const latency = new Array<number>(LATENCY_EDGES_MS.length + 1).fill(0);
    latency[2] = ok;
    const w: HealthWindow = {
      model,
      version,
      windowStart,
      windowMs: 60_000,
      ok,
      errors: 0,
      latency,
      classCounts: [],
      confidence: new Array<number>(CONFIDENCE_BINS).fill(0),
      output: { name: 'alarm', kind: 'rate', n: ok, sum: alarms, sumSq: alarms },
    };
    return d.telemetry([{ stream: 'health', kind: 'health', body: w }]);
  };

  test('a canary whose alarm rate jumps (0.02 → 0.25) is rolled back with an output_rate breach', async () => {
    const v1 = await fx.release('an-jump', '1.0.0');
    await fx.release('an-jump', '1.1.0');
    const devices = await fleet('g-an-jump', 4, v1);
    const canary = devices[0] as ScriptedDevice;
    const created = await fx.ok<Status>('POST', '/v1/rollouts', { model: 'an-jump', version: '1.1.0', target: { group: 'g-an-jump' }, waves: [1, '100%'], bakeMs: BAKE, gates: { minSamples: 100 } });
    await waitFor(created.id, (x) => x.phase === 'baking', 'the canary wave to bake');

    const windowStart = fx.clock.now();
    await anomalyWindow(canary, 'an-jump', '1.1.0', windowStart, 400, 100);
    for (const d of devices.slice(1)) await anomalyWindow(d, 'an-jump', '1.0.0', windowStart, 400, 8);

    const s = await waitFor(created.id, (x) => x.state === 'rolled_back' && x.devices.find((d) => d.id === canary.id)?.state === 'rolled_back', 'the output gate to roll back');
    const gate = s.gates.find((g) => g.action === 'fail');
    assert.ok(gate, JSON.stringify(s.gates));
    assert.equal(gate.baseline, 'control');
    assert.deepEqual(
      gate.breaches.map((b) => b.metric),
      ['output_rate'],
    );
    assert.equal(gate.output?.verdict, 'fail');
    assert.equal(gate.output.statistic, 'alarm');
    assert.match(s.reason ?? '', /behaviour gate failed: alarm rate 0\.250 vs 0\.020/);
    assert.equal(canary.slots.get('an-jump')?.active?.version, '1.0.0');
    for (const d of devices.slice(1)) assert.equal(d.commands.length, 0, `${d.id} got a command`);
    const text = formatStatus(s as unknown as Parameters<typeof formatStatus>[0]);
    assert.match(text, /output {4}wave 1: fail: alarm rate 0\.250 vs 0\.020/);
  });

  test('a canary whose alarm rate is unchanged passes its wave (output verdict pass)', async () => {
    const v1 = await fx.release('an-same', '1.0.0');
    await fx.release('an-same', '1.1.0');
    const devices = await fleet('g-an-same', 4, v1);
    const canary = devices[0] as ScriptedDevice;
    const created = await fx.ok<Status>('POST', '/v1/rollouts', { model: 'an-same', version: '1.1.0', target: { group: 'g-an-same' }, waves: [1, '100%'], bakeMs: BAKE, gates: { minSamples: 100 } });
    await waitFor(created.id, (x) => x.phase === 'baking', 'the canary wave to bake');

    const windowStart = fx.clock.now();
    await anomalyWindow(canary, 'an-same', '1.1.0', windowStart, 400, 9);
    for (const d of devices.slice(1)) await anomalyWindow(d, 'an-same', '1.0.0', windowStart, 400, 8);
    await fx.advance(BAKE);

    const s = await waitFor(created.id, (x) => x.currentWave === 1, 'the canary wave to pass');
    const gate = s.gates.find((g) => g.wave === 0 && g.action === 'pass');
    assert.ok(gate, JSON.stringify(s.gates));
    assert.equal(gate.verdict, 'pass');
    assert.deepEqual(gate.breaches, []);
    assert.equal(gate.output?.verdict, 'pass', JSON.stringify(gate.output));
    assert.equal(gate.output.candidate?.n, 400);
    assert.notEqual(s.state, 'rolled_back');
    assert.equal(canary.slots.get('an-same')?.active?.version, '1.1.0');
    assert.match(formatStatus(s as unknown as Parameters<typeof formatStatus>[0]), /output {4}wave 1: pass: alarm rate 0\.022 vs 0\.020 \(\+0\.002, limit 0\.05/);
  });
});
