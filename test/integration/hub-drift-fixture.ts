/**
 * Test fixture for hub drift monitoring: the rollout fixture's real hub on a fake clock (with
 * drift and alerts config), the demo machine-state release pushed through the real API (its
 * manifest carries the reference bins), and scripted devices publishing telemetry batches with
 * drift summaries built by shared/drift/summary.ts's DriftAccumulator from the synthetic sensor
 * generator (scripts/lib/synthetic.ts), optionally with a feature shifted by k reference SDs.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { DRIFT_KIND, DRIFT_STREAM, DriftAccumulator, type DriftSummary } from '../../shared/drift/summary.ts';
import { silentLogger, type Logger } from '../../shared/log.ts';
import type { ReferenceBins } from '../../shared/manifest.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { createRng, type Rng } from '../../scripts/lib/rng.ts';
import { MACHINE_STATES, SENSOR_FEATURES, sensorSample } from '../../scripts/lib/synthetic.ts';
import { RolloutFixture, ScriptedDevice, T0, until } from './hub-rollouts-fixture.ts';

export { T0, until };
export const WINDOW_MS = 900_000;
export const MODEL = { name: 'machine-state', version: '1.0.0' };

export interface Shift {
  feature: string;
  sd: number;
}

export class DriftFixture extends RolloutFixture {
  features: readonly ReferenceBins[] = [];
  readonly rng: Rng = createRng(4242);
  log: Logger = silentLogger();

  /** Starts the hub with drift/alerts overrides (tests drive ticks and flushes themselves). */
  override async start(overrides: Record<string, unknown> = {}): Promise<Hub> {
    const manifest = JSON.parse(await readFile(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8')) as { drift: { features: ReferenceBins[] } };
    this.features = manifest.drift.features;
    const config = loadHubConfig({
      env: {},
      overrides: {
        dataDir: this.dataDir,
        mqtt: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        rollouts: { tickMs: 60_000 },
        ...overrides,
        drift: { tickMs: 600_000, graceMs: 60_000, ...((overrides.drift) ?? {}) },
        alerts: { ...((overrides.alerts) ?? {}), delivery: { pollMs: 600_000, initialMs: 1000, maxMs: 60_000, ...(((overrides.alerts as { delivery?: object } | undefined)?.delivery) ?? {}) } },
      },
    });
    this.hub = await createHub(config, { log: this.log, now: this.clock.now });
    await this.hub.start(new AbortController().signal);
    return this.hub;
  }

  /** One device's summary of `n` readings in the hub window starting at `windowStart`. */
  summary(deviceId: string, windowStart: number, n: number, shift?: Shift, instance = 'i1'): DriftSummary {
    const acc = new DriftAccumulator({ deviceId, model: MODEL, windowMs: WINDOW_MS, features: this.features, classes: MACHINE_STATES.length, instance });
    const f = shift ? SENSOR_FEATURES.indexOf(shift.feature as (typeof SENSOR_FEATURES)[number]) : -1;
    const sd = f >= 0 ? (this.features[f]?.std ?? 0) : 0;
    for (let i = 0; i < n; i++) {
      const cls = i % MACHINE_STATES.length;
      const x = sensorSample(this.rng, MACHINE_STATES[cls] as (typeof MACHINE_STATES)[number]);
      if (shift && f >= 0) x[f] = (x[f] as number) + shift.sd * sd;
      // The "model" answers the true class with a fixed confidence: outputs do not drift.
      const scores = [0.05, 0.05, 0.05];
      scores[cls] = 0.9;
      acc.add(x, { index: cls, confidence: 0.9, margin: 0.85, scores });
    }
    return acc.flush(windowStart);
  }

  /** Publishes each device's summary for the window as one telemetry batch and waits until all are merged. */
  async sendWindow(devices: readonly ScriptedDevice[], windowStart: number, n: number, shifted: ReadonlyMap<string, Shift> = new Map()): Promise<DriftSummary[]> {
    const before = await this.mergedSummaries(windowStart);
    const sent: DriftSummary[] = [];
    for (const d of devices) {
      const s = this.summary(d.id, windowStart, n, shifted.get(d.id));
      sent.push(s);
      await d.telemetry([{ stream: DRIFT_STREAM, kind: DRIFT_KIND, body: s }]);
    }
    await until(async () => (await this.mergedSummaries(windowStart)) === before + devices.length, 20_000, `summaries of window ${windowStart} merged`);
    return sent;
  }

  async mergedSummaries(windowStart: number): Promise<number> {
    await this.hub.driftAggregator.idle();
    const rows = await this.hub.store.driftDeviceWindows(MODEL.name, MODEL.version, windowStart);
    return rows.reduce((a, r) => a + r.summaries, 0);
  }

  /** Moves the clock past the window's end plus grace and runs one detection tick. */
  async closeWindow(windowStart: number): Promise<void> {
    const due = windowStart + WINDOW_MS + 60_000;
    if (this.clock.t < due) this.clock.t = due;
    await this.hub.drift.tick();
  }
}
