/**
 * Drift benchmark (not a test): bytes per 1-min summary (8 features, 3 classes, JSON as sent),
 * and how many summaries the hub merges and tests per second: a 200-device fleet's 3,000 one-minute
 * summaries → per-device 15-min aggregates → FleetDriftDetector.evaluate.
 *   node --import tsx scripts/bench-drift.ts [--repeats 5]
 */
import { FleetDriftDetector } from '../shared/drift/detector.ts';
import { groupSummaries } from '../shared/drift/merge.ts';
import { DriftAccumulator } from '../shared/drift/summary.ts';
import type { DriftSummary } from '../shared/drift/summary.ts';
import { referenceBins } from './lib/models.ts';
import { createRng } from './lib/rng.ts';
import { MACHINE_STATES, SENSOR_FEATURES, sensorDataset } from './lib/synthetic.ts';

const arg = process.argv.indexOf('--repeats');
const repeats = arg > 0 ? Number(process.argv[arg + 1]) : 5;
const DEVICES = 200;
const PER_MINUTE = 60;
const model = { name: 'machine-state', version: '1.0.0' };

const rng = createRng(5);
const ref = sensorDataset(rng, 1000);
const features = SENSOR_FEATURES.map((name, f) => referenceBins(name, ref.x.map((row) => row[f] as number)));
const pool = sensorDataset(rng, 4000);
const reference = { model, features, classCounts: MACHINE_STATES.map((_, c) => ref.y.filter((y) => y === c).length) };

function fleetWindow(windowStart: number): DriftSummary[] {
  const out: DriftSummary[] = [];
  for (let d = 0; d < DEVICES; d++) {
    const acc = new DriftAccumulator({ deviceId: `dev-${String(d).padStart(3, '0')}`, model, features, classes: 3, instance: 'b' });
    for (let m = 0; m < 15; m++) {
      for (let i = 0; i < PER_MINUTE; i++) {
        const r = rng.int(pool.y.length);
        const scores = [0.1, 0.1, 0.1];
        scores[pool.y[r] as number] = 0.8;
        acc.add(pool.x[r] as number[], { index: pool.y[r] as number, confidence: 0.8, margin: 0.7, scores });
      }
      out.push(acc.flush(windowStart + m * 60_000));
    }
  }
  return out;
}

const windows = Array.from({ length: repeats }, (_, i) => fleetWindow(i * 900_000));
const bytes = windows[0]!.map((s) => Buffer.byteLength(JSON.stringify(s)));
console.log(`bytes per 1-min summary (8 features × 10 bins, 3 classes, JSON): mean ${(bytes.reduce((a, b) => a + b, 0) / bytes.length).toFixed(0)}, max ${Math.max(...bytes)}`);

const detector = new FleetDriftDetector(reference);
const results: { merge: number; test: number; tests: number }[] = [];
for (const summaries of windows) {
  const t0 = performance.now();
  const devices = groupSummaries(summaries, { windowMs: 900_000, by: 'device' });
  const t1 = performance.now();
  const report = detector.evaluate({ devices, groupOf: (id) => `line-${Number(id.slice(4)) % 10}` });
  const t2 = performance.now();
  results.push({ merge: t1 - t0, test: t2 - t1, tests: report.tests });
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const merge = median(results.map((r) => r.merge));
const test = median(results.map((r) => r.test));
const n = windows[0]!.length;
console.log(`one 15-min fleet window: ${n} summaries from ${DEVICES} devices, ${results[0]!.tests} tests (median of ${repeats})`);
console.log(`merge: ${merge.toFixed(1)} ms → ${Math.round((n / merge) * 1000)} summaries/s`);
console.log(`test:  ${test.toFixed(1)} ms → ${Math.round((results[0]!.tests / test) * 1000)} tests/s`);
console.log(`merge + test: ${(merge + test).toFixed(1)} ms → ${Math.round((n / (merge + test)) * 1000)} summaries/s`);
