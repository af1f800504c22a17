/**
 * Drift of a non-classification v2 task through the real hub (issue #13): the demo line-state
 * anomaly release, its manifest carrying an `out.score` reference (shared/drift/reference.ts
 * referenceBins) and alarm class rates, is pushed through the API; scripted devices send the
 * summaries the agent's DriftMonitor.recordTask builds (fake clock) in telemetry batches; the hub
 * merges them (exact counts) and tests `out.score` and the alarm rate against the reference
 * counts: nothing found while the devices follow the reference, a fleet finding on both when the
 * scores move. No hub change was needed: features are tested by name.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DriftConfigSchema, DriftMonitor } from '../../agent/drift/drift-monitor.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { createRng, type Rng } from '../../scripts/lib/rng.ts';
import { referenceBins } from '../../shared/drift/reference.ts';
import { DRIFT_KIND, DRIFT_STREAM, DriftSummarySchema, type DriftSummary } from '../../shared/drift/summary.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import type { ScriptedDevice } from './hub-rollouts-fixture.ts';
import { DriftFixture, T0, WINDOW_MS, until } from './hub-drift-fixture.ts';

const NAME = 'line-state';
const VERSION = '1.0.0';
const DEVICES = 10;
const READINGS = 300;
const THRESHOLD = 6.428;
const ALARM_RATE = 0.02;

/** An anomaly score: log-normal, about 2% above the alarm threshold. */
const score = (rng: Rng, k = 1): number => k * Math.exp(0.3 + 0.8 * rng.normal());

describe('hub drift of a v2 anomaly task (out.score, alarm rate)', { timeout: 180_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-drift-tasks-'));
  const fx = new DriftFixture(dir);
  const devices: ScriptedDevice[] = [];
  const rng = createRng(1313);
  let manifest: Manifest;
  let w = T0;

  before(async () => {
    await fx.start();
    const raw = JSON.parse(await readFile(join(REPO_ROOT, 'models', `${NAME}.manifest.json`), 'utf8')) as Record<string, unknown>;
    const ref = Array.from({ length: 20_000 }, () => score(rng));
    const alarms = ref.filter((s) => s > THRESHOLD).length / ref.length;
    assert.ok(Math.abs(alarms - ALARM_RATE) < 0.01, `reference alarm rate ${alarms}`);
    const samples = (raw['evaluation'] as { samples: number }).samples;
    const drift = { features: [referenceBins('out.score', ref)], classRates: [1 - ALARM_RATE, ALARM_RATE] };
    manifest = ManifestSchema.parse({ ...raw, drift });
    assert.deepEqual(manifest.drift?.classRates?.map((r) => Math.round(r * samples)), [294, 6]);
    await fx.ok('POST', '/v1/models', { manifest: { ...raw, drift } });
    const res = await fetch(`${fx.hub.httpUrl}/v1/models/${NAME}/${VERSION}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${fx.hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: readFileSync(join(REPO_ROOT, 'models', `${NAME}.onnx`)),
    });
    assert.equal(res.status, 201, await res.text());
    for (let i = 0; i < DEVICES; i++) {
      const d = await fx.register(`a${String(i).padStart(2, '0')}`, 'line-2');
      await d.connect();
      devices.push(d);
    }
  });

  after(async () => {
    await fx.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The summaries the agent's DriftMonitor flushes for one device and window (fake clock). */
  async function agentSummaries(deviceId: string, windowStart: number, k: number): Promise<DriftSummary[]> {
    const out: DriftSummary[] = [];
    let now = windowStart + 1;
    const monitor = new DriftMonitor({
      deviceId,
      config: DriftConfigSchema.parse({ windowMs: 60_000 }),
      sink: { append: (stream, _kind, body) => (stream === DRIFT_STREAM && out.push(DriftSummarySchema.parse(body)), Promise.resolve()) },
      instance: () => 'e1',
      upload: { hubHttpUrl: undefined, deviceId, token: 't' },
      log: silentLogger(),
      now: () => now,
    });
    for (let i = 0; i < READINGS; i++) {
      now = windowStart + 1 + i * 1000; // 1 Hz: five agent windows inside the hub window
      const s = score(rng, k);
      monitor.recordTask('line', manifest, Float64Array.from([1, 2, 3, 4]), { values: { score: s, alarm: s > THRESHOLD ? 1 : 0 } }, { kind: 'json', body: {} }, `r${i}`, now);
    }
    await monitor.stop();
    return out;
  }

  async function window(k: number): Promise<{ windowStart: number; sent: DriftSummary[] }> {
    const ws = w;
    w += WINDOW_MS;
    const sent: DriftSummary[] = [];
    for (const d of devices) {
      const summaries = await agentSummaries(d.id, ws, k);
      sent.push(...summaries);
      await d.telemetry(summaries.map((body) => ({ stream: DRIFT_STREAM, kind: DRIFT_KIND, body })));
    }
    await until(
      async () => {
        await fx.hub.driftAggregator.idle();
        const rows = await fx.hub.store.driftDeviceWindows(NAME, VERSION, ws);
        return rows.reduce((a, r) => a + r.summaries, 0) === sent.length;
      },
      20_000,
      `summaries of window ${ws} merged`,
    );
    await fx.closeWindow(ws);
    return { windowStart: ws, sent };
  }

  type DriftBody = { windows: { windowStart: string; devices: number; tests: number; skipped?: string }[]; findings: { scope: string; feature: string; against: string; id: string }[] };

  test('devices on the reference: merged exactly, tested, nothing found', async () => {
    const { windowStart, sent } = await window(1);
    assert.equal(sent.length, DEVICES * 5, 'five 60 s agent windows per device in the 15 min hub window');
    for (const s of sent) assert.deepEqual(s.numeric.map((f) => f.name), ['out.score']);
    // The device rows hold the exact sums of what each device sent.
    for (const row of await fx.hub.store.driftDeviceWindows(NAME, VERSION, windowStart)) {
      const mine = sent.filter((s) => s.deviceId === row.deviceId);
      const agg = JSON.parse(row.aggregate) as { count: number; numeric: { counts: number[] }[]; outputs: { classCounts: number[] } };
      assert.equal(agg.count, READINGS);
      assert.deepEqual(agg.numeric[0]!.counts, mine.reduce((acc, s) => acc.map((v, i) => v + s.numeric[0]!.counts[i]!), new Array<number>(mine[0]!.numeric[0]!.counts.length).fill(0)));
      assert.deepEqual(agg.outputs.classCounts, mine.reduce((acc, s) => acc.map((v, i) => v + s.outputs.classCounts[i]!), [0, 0]));
    }
    const drift = await fx.ok<DriftBody>('GET', `/v1/drift?model=${NAME}&version=${VERSION}`);
    assert.equal(drift.windows.length, 1);
    assert.equal(drift.windows[0]!.skipped, undefined, JSON.stringify(drift.windows[0]));
    assert.equal(drift.windows[0]!.devices, DEVICES);
    assert.ok(drift.windows[0]!.tests > DEVICES, `fleet, group and per-device tests ran (${drift.windows[0]!.tests})`);
    assert.deepEqual(drift.findings, []);
  });

  test('scores ×2.5 on every device: fleet findings on out.score and the alarm rate against the reference', async () => {
    const { windowStart } = await window(2.5);
    const drift = await fx.ok<DriftBody>('GET', `/v1/drift?model=${NAME}&version=${VERSION}&from=${windowStart}`);
    const fleet = drift.findings.filter((f) => f.scope === 'fleet');
    assert.deepEqual(fleet.map((f) => `${f.feature}/${f.against}`).sort(), ['out.score/reference', 'output:class/reference'], JSON.stringify(drift.findings));
  });
});
