// Statistical suite for fleet drift detection on simulated fleets (issue #4 "Must show"):
// (a) false alarms under no drift per model-version-day, (b) a 0.3 SD shift on 5% of devices
// found and the devices named, (c) a 0.5 SD fleet-wide shift found within N windows.
// Prints one line per scenario. Seeded; DRIFT_SUITE_DAYS and DRIFT_SUITE_SEED override the number
// of days and the seed of (a) (12 days by default, to stay under 60 s on a 2-core machine).
//
// The simulated world: readings are whole 8-feature vectors of the demo machine-state sensor
// generator (scripts/lib/synthetic.ts), drawn with replacement from a fixed pool of 65,536, so
// features keep their real skew and correlation. Each simulated day is one model version: its
// reference bins are built by make-models' own `referenceBins` from 3,000 fresh draws, exactly
// as the manifest's are. Under "no drift", devices and reference sample the same world, so any
// finding is a false alarm. Outputs come from a fixed nearest-class-mean classifier per pool row.
// Agents send 1-min summaries; the hub tests 15-min windows (96 per day).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FleetDriftDetector } from '../../shared/drift/detector.ts';
import type { DriftReference, DriftReport } from '../../shared/drift/detector.ts';
import { groupSummaries } from '../../shared/drift/merge.ts';
import type { DriftAggregate } from '../../shared/drift/merge.ts';
import { chiSquareSf } from '../../shared/drift/stats.ts';
import { binIndex, DriftAccumulator, normalizedEntropy, OUTPUT_BINS, OUTPUT_EDGES } from '../../shared/drift/summary.ts';
import type { DriftSummary } from '../../shared/drift/summary.ts';
import type { ReferenceBins } from '../../shared/manifest.ts';
import { referenceBins } from '../../scripts/lib/models.ts';
import { createRng, mulberry32 } from '../../scripts/lib/rng.ts';
import { MACHINE_STATES, SENSOR_FEATURES, sensorDataset } from '../../scripts/lib/synthetic.ts';

const NF = SENSOR_FEATURES.length;
const NC = MACHINE_STATES.length;
const DEVICES = 200;
const GROUPS = 10; // production lines of 20 devices
const WINDOW_MS = 900_000;
const WINDOWS_PER_DAY = 96;
const T0 = Date.UTC(2025, 0, 6);
const model = { name: 'machine-state', version: '1.0.0' };

// ---------------------------------------------------------------------------------------------
// The world

interface Pool {
  size: number;
  values: Float32Array; // size × NF; float32 and 16k rows keep the pool in cache
  cls: Uint8Array;
  confBin: Uint8Array;
  marginBin: Uint8Array;
  entropyBin: Uint8Array;
  classification: { index: number; confidence: number; margin: number; scores: number[] }[];
}

function makePool(seed: number): Pool {
  const data = sensorDataset(createRng(seed), 5462);
  const size = 16_384;
  const values = new Float32Array(size * NF);
  for (let r = 0; r < size; r++) values.set(data.x[r] as number[], r * NF);
  // A fixed classifier: nearest class mean over standardised features (the demo model's job,
  // without ORT in a statistics test); only its outputs' distribution matters here.
  const mean = Array.from({ length: NC }, () => new Float64Array(NF));
  const cnt = new Float64Array(NC);
  const sd = new Float64Array(NF);
  const all = new Float64Array(NF);
  for (let r = 0; r < size; r++) {
    const y = data.y[r] as number;
    cnt[y]! += 1;
    for (let f = 0; f < NF; f++) {
      mean[y]![f]! += values[r * NF + f]!;
      all[f]! += values[r * NF + f]!;
    }
  }
  for (let c = 0; c < NC; c++) for (let f = 0; f < NF; f++) mean[c]![f]! /= cnt[c]!;
  for (let f = 0; f < NF; f++) all[f]! /= size;
  for (let r = 0; r < size; r++) for (let f = 0; f < NF; f++) sd[f]! += (values[r * NF + f]! - all[f]!) ** 2;
  for (let f = 0; f < NF; f++) sd[f] = Math.sqrt(sd[f]! / size);
  const pool: Pool = { size, values, cls: new Uint8Array(size), confBin: new Uint8Array(size), marginBin: new Uint8Array(size), entropyBin: new Uint8Array(size), classification: [] };
  for (let r = 0; r < size; r++) {
    const logits = mean.map((m) => {
      let d = 0;
      for (let f = 0; f < NF; f++) d += ((values[r * NF + f]! - m[f]!) / sd[f]!) ** 2;
      return -0.5 * d;
    });
    const mx = Math.max(...logits);
    const e = logits.map((l) => Math.exp(l - mx));
    const t = e.reduce((a, b) => a + b, 0);
    const scores = e.map((x) => x / t);
    const order = scores.map((s, i) => [s, i] as const).sort((a, b) => b[0] - a[0]);
    const c = { index: order[0]![1], confidence: order[0]![0], margin: order[0]![0] - order[1]![0], scores };
    pool.classification.push(c);
    pool.cls[r] = c.index;
    pool.confBin[r] = binIndex(OUTPUT_EDGES, c.confidence);
    pool.marginBin[r] = binIndex(OUTPUT_EDGES, c.margin);
    pool.entropyBin[r] = binIndex(OUTPUT_EDGES, normalizedEntropy(scores));
  }
  return pool;
}

/** One model version: reference bins from 3,000 draws (as make-models does), and every pool value's bin. */
interface Version {
  reference: DriftReference;
  bins: Uint8Array; // pool.size × NF, bin of each pool value under this version's edges
}

function makeVersion(pool: Pool, rand: () => number): Version {
  const rows = Array.from({ length: 3000 }, () => Math.floor(rand() * pool.size));
  const features: ReferenceBins[] = SENSOR_FEATURES.map((name, f) => referenceBins(name, rows.map((r) => pool.values[r * NF + f]!)));
  const classCounts = new Array<number>(NC).fill(0);
  for (const r of rows) classCounts[pool.cls[r]!]! += 1;
  const bins = new Uint8Array(pool.size * NF);
  for (let r = 0; r < pool.size; r++) for (let f = 0; f < NF; f++) bins[r * NF + f] = binIndex(features[f]!.edges, pool.values[r * NF + f]!);
  return { reference: { model, features, classCounts }, bins };
}

// ---------------------------------------------------------------------------------------------
// Devices

interface Device {
  id: string;
  group: string;
  perMinute: number;
  /** Additive shift per feature, in the feature's units. */
  shift: Float64Array;
}

/** 70% of devices read at 1 Hz, 20% every 3 s, 10% are nearly idle (4/min): small windows are where effect-only gates false-alarm. */
function makeFleet(rand: () => number, mixed: boolean): Device[] {
  return Array.from({ length: DEVICES }, (_, i) => {
    const u = rand();
    return {
      id: `dev-${String(i).padStart(3, '0')}`,
      group: `line-${(i % GROUPS) + 1}`,
      perMinute: !mixed || u < 0.7 ? 60 : u < 0.9 ? 20 : 4,
      shift: new Float64Array(NF),
    };
  });
}

/**
 * Fast path for the long no-drift runs: fills a device's 15-min aggregate directly, which is
 * what merging its fifteen 1-min summaries gives (exact; test/unit/drift-merge.test.ts).
 * Only unshifted devices (the bins are precomputed); min/max are not tracked.
 */
function fastDeviceWindow(pool: Pool, v: Version, d: Device, windowStart: number, rng: { state: number }): DriftAggregate {
  const n = d.perMinute * 15;
  const S = 16; // stride per feature in `counts`; bins ≤ 10 here
  const counts = new Int32Array(NF * S);
  const sum = new Float64Array(NF);
  const sumSq = new Float64Array(NF);
  const out = new Int32Array(NC + 3 * OUTPUT_BINS);
  const { values, cls, confBin, marginBin, entropyBin } = pool;
  const { bins } = v;
  let st = rng.state;
  for (let i = 0; i < n; i++) {
    // mulberry32 inlined (the hot loop of the suite); top 14 bits pick one of the 16,384 rows.
    st = (st + 0x6d2b79f5) | 0;
    let t = Math.imul(st ^ (st >>> 15), st | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const r = ((t ^ (t >>> 14)) >>> 0) >>> 18;
    const o = r * NF;
    for (let f = 0; f < NF; f++) {
      counts[f * S + bins[o + f]!]! += 1;
      const x = values[o + f]!;
      sum[f]! += x;
      sumSq[f]! += x * x;
    }
    out[cls[r]!]! += 1;
    out[NC + confBin[r]!]! += 1;
    out[NC + OUTPUT_BINS + marginBin[r]!]! += 1;
    out[NC + 2 * OUTPUT_BINS + entropyBin[r]!]! += 1;
  }
  rng.state = st;
  const id = `${d.id}/${windowStart}`;
  const slice = (from: number, len: number): number[] => Array.from(out.subarray(from, from + len));
  return {
    model,
    scope: 'device',
    id: d.id,
    windowStart,
    windowMs: WINDOW_MS,
    summaryIds: new Set([id]),
    devices: new Set([d.id]),
    count: n,
    numeric: SENSOR_FEATURES.map((name, f) => ({
      name,
      counts: Array.from(counts.subarray(f * S, f * S + v.reference.features[f]!.counts.length)),
      nan: 0,
      sum: sum[f]!,
      sumSq: sumSq[f]!,
      min: null,
      max: null,
    })),
    categorical: [],
    outputs: { classCounts: slice(0, NC), confidence: slice(NC, OUTPUT_BINS), margin: slice(NC + OUTPUT_BINS, OUTPUT_BINS), entropy: slice(NC + 2 * OUTPUT_BINS, OUTPUT_BINS) },
  };
}

/** The real path: each device's DriftAccumulator, one 1-min summary per minute, as the agent sends them. */
function agentSummaries(pool: Pool, v: Version, fleet: Device[], accs: Map<string, DriftAccumulator>, windowStart: number, rand: () => number, shiftFrom = Infinity): DriftSummary[] {
  const out: DriftSummary[] = [];
  const x = new Float64Array(NF);
  for (const d of fleet) {
    let acc = accs.get(d.id);
    if (!acc) {
      acc = new DriftAccumulator({ deviceId: d.id, model, features: v.reference.features, classes: NC, instance: 'sim' });
      accs.set(d.id, acc);
    }
    for (let m = 0; m < 15; m++) {
      const minute = windowStart + m * 60_000;
      for (let i = 0; i < d.perMinute; i++) {
        const ts = minute + (i * 60_000) / d.perMinute;
        const r = (rand() * pool.size) | 0;
        for (let f = 0; f < NF; f++) x[f] = pool.values[r * NF + f]! + (ts >= shiftFrom ? d.shift[f]! : 0);
        acc.add(x, pool.classification[r]!);
      }
      out.push(acc.flush(minute));
    }
  }
  return out;
}

/** The pitfall, for comparison: one-sample chi-square treating the reference proportions as exact. */
function oneSampleP(observed: readonly number[], ref: readonly number[]): number {
  const n = observed.reduce((a, b) => a + b, 0);
  const nr = ref.reduce((a, b) => a + b, 0);
  let stat = 0;
  for (let i = 0; i < ref.length; i++) {
    const e = (n * ref[i]!) / nr;
    stat += (observed[i]! - e) ** 2 / e;
  }
  return chiSquareSf(stat, ref.length - 1);
}

const pool = makePool(4242);

describe('drift detection on simulated fleets (200 devices, 8 features, 15-min windows)', () => {
  it('(a) no drift: at most 5% of model-version-days raise any finding', () => {
    const days = Number(process.env.DRIFT_SUITE_DAYS ?? 12);
    const seed = Number(process.env.DRIFT_SUITE_SEED ?? 1001);
    const rand = mulberry32(seed);
    const fast = { state: seed };
    let daysWithAlarm = 0;
    let findings = 0;
    let tests = 0;
    let significantWindows = 0;
    let oneSampleWindows = 0;
    let windows = 0;
    const byScope = { fleet: 0, group: 0, device: 0 };
    const t0 = performance.now();
    for (let day = 0; day < days; day++) {
      const v = makeVersion(pool, rand);
      const fleet = makeFleet(rand, true);
      const groupOf = new Map(fleet.map((d) => [d.id, d.group]));
      const detector = new FleetDriftDetector(v.reference);
      let alarm = false;
      for (let w = 0; w < WINDOWS_PER_DAY; w++) {
        const ws = T0 + (day * WINDOWS_PER_DAY + w) * WINDOW_MS;
        const devices = fleet.map((d) => fastDeviceWindow(pool, v, d, ws, fast));
        const report = detector.evaluate({ devices, groupOf: (id) => groupOf.get(id) });
        windows++;
        tests += report.tests;
        if (report.significant > 0) significantWindows++;
        findings += report.findings.length;
        for (const f of report.findings) {
          byScope[f.scope]++;
          console.log(`    false alarm on day ${day}, window ${w}: ${f.message}`);
        }
        if (report.findings.length > 0) alarm = true;
        // What a one-sample test of the fleet against reference proportions would have said.
        const fleetCounts = v.reference.features.map((_, f) => {
          const c = new Array<number>(devices[0]!.numeric[f]!.counts.length).fill(0);
          for (const d of devices) d.numeric[f]!.counts.forEach((x, i) => (c[i]! += x));
          return c;
        });
        if (fleetCounts.some((c, f) => oneSampleP(c, v.reference.features[f]!.counts) < 0.01 / NF)) oneSampleWindows++;
      }
      if (alarm) daysWithAlarm++;
    }
    const rate = daysWithAlarm / days;
    console.log(
      `(a) no drift, seed ${seed}: ${daysWithAlarm}/${days} model-version-days with any finding (${(100 * rate).toFixed(1)}%; limit 5%); ` +
        `${findings} findings (fleet ${byScope.fleet}, group ${byScope.group}, device ${byScope.device}) in ${windows} windows, ${tests} tests; ` +
        `windows with any BH-significant test: ${significantWindows} (${((100 * significantWindows) / windows).toFixed(1)}%); ` +
        `a one-sample test against reference proportions (Bonferroni over features) would have fired in ${((100 * oneSampleWindows) / windows).toFixed(1)}% of windows; ` +
        `${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    assert.ok(rate <= 0.05, `false-alarm rate ${rate}`);
  });

  it('(b) 0.3 SD shift on 5% of devices: the devices are named', () => {
    const rand = mulberry32(2002);
    const v = makeVersion(pool, rand);
    const fleet = makeFleet(rand, false);
    const feature = SENSOR_FEATURES.indexOf('temp_c');
    const shifted = new Set<string>();
    const order = fleet.map((d) => ({ d, u: rand() })).sort((a, b) => a.u - b.u);
    for (const { d } of order.slice(0, DEVICES / 20)) {
      d.shift[feature] = 0.3 * v.reference.features[feature]!.std;
      shifted.add(d.id);
    }
    const detector = new FleetDriftDetector(v.reference);
    const accs = new Map<string, DriftAccumulator>();
    const windows = 4; // one hour, shift present from the start
    const named = new Set<string>();
    let pairsFound = 0;
    let last: DriftReport | undefined;
    const t0 = performance.now();
    for (let w = 0; w < windows; w++) {
      const ws = T0 + w * WINDOW_MS;
      const summaries = agentSummaries(pool, v, fleet, accs, ws, rand, T0);
      last = detector.evaluate({ devices: groupSummaries(summaries, { windowMs: WINDOW_MS, by: 'device' }) });
      const hit = new Set(last.findings.filter((f) => f.scope === 'device').map((f) => f.id));
      for (const id of hit) named.add(id);
      pairsFound += [...shifted].filter((id) => hit.has(id)).length;
      assert.equal(last.findings.filter((f) => f.scope === 'fleet').length, 0, 'the fleet as a whole looks fine');
    }
    const recall = [...shifted].filter((id) => named.has(id)).length / shifted.size;
    const falseDevices = [...named].filter((id) => !shifted.has(id));
    console.log(
      `(b) 0.3 SD shift of temp_c on ${shifted.size} of ${DEVICES} devices (1 Hz): named ${named.size} devices within ${windows} windows (1 h), ` +
        `recall ${recall.toFixed(2)}, false devices ${falseDevices.length}; per-window recall ${(pairsFound / (shifted.size * windows)).toFixed(2)}; ` +
        `headline: "${last?.headlines[0] ?? ''}"; ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    assert.ok(recall >= 0.9, `recall ${recall}`);
    assert.ok(falseDevices.length <= 1, `false devices ${falseDevices.join(', ')}`);
  });

  it('(c) 0.5 SD fleet-wide shift: found within N = 2 windows of its onset', () => {
    const rand = mulberry32(3003);
    const v = makeVersion(pool, rand);
    const latencies: number[] = [];
    const t0 = performance.now();
    // One trial per feature (4 of the 8); the shift starts at a random moment inside window 1.
    for (const f of [0, 2, 4, 7]) {
      const fleet = makeFleet(rand, false);
      for (const d of fleet) d.shift[f] = 0.5 * v.reference.features[f]!.std;
      const onset = T0 + WINDOW_MS + Math.floor(rand() * WINDOW_MS);
      const detector = new FleetDriftDetector(v.reference);
      const accs = new Map<string, DriftAccumulator>();
      let latency = Infinity;
      for (let w = 0; w < 4 && latency === Infinity; w++) {
        const ws = T0 + w * WINDOW_MS;
        const summaries = agentSummaries(pool, v, fleet, accs, ws, rand, onset);
        const report = detector.evaluate({ devices: groupSummaries(summaries, { windowMs: WINDOW_MS, by: 'device' }) });
        const hit = report.findings.some((x) => x.scope === 'fleet' && x.feature === SENSOR_FEATURES[f] && x.direction === 'up');
        if (w === 0) assert.equal(report.findings.length, 0, 'nothing before the onset');
        // Windows counted from the one in which the shift began (that one counts as 1).
        if (hit) latency = w;
      }
      latencies.push(latency);
    }
    const n = Math.max(...latencies);
    console.log(
      `(c) 0.5 SD fleet-wide shift (4 features, onset at a random moment): detected after ${latencies.join(', ')} windows ` +
        `(N = ${n}, i.e. within ${n * 15} min of onset at 15-min windows); ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    assert.ok(n <= 2, `latencies ${latencies.join(', ')}`);
  });
});
