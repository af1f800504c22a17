// FleetDriftDetector on deterministic fleets (expected counts, no sampling noise): what it
// reports for a fleet-wide shift, a single outlier device, a slow shift below the per-window
// effect gate (CUSUM), and what it refuses.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FleetDriftDetector, referenceFromManifest } from '../../shared/drift/detector.ts';
import type { DriftReference } from '../../shared/drift/detector.ts';
import { mergeSummaries } from '../../shared/drift/merge.ts';
import type { DriftAggregate } from '../../shared/drift/merge.ts';
import { regularizedGammaP } from '../../shared/drift/stats.ts';
import { DRIFT_SUMMARY_VERSION, OUTPUT_BINS } from '../../shared/drift/summary.ts';
import type { DriftSummary } from '../../shared/drift/summary.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import type { Manifest } from '../../shared/manifest.ts';

const model = { name: 'machine-state', version: '1.0.0' };
const EDGES = [-1.2816, -0.8416, -0.5244, -0.2533, 0, 0.2533, 0.5244, 0.8416, 1.2816];
const WINDOW = 900_000;
const phi = (x: number): number => 0.5 * (1 + Math.sign(x) * regularizedGammaP(0.5, (x * x) / 2));

/** Expected counts of n draws of N(shift, 1) over EDGES (largest-remainder rounding, so they sum to n). */
function normalCounts(n: number, shift: number): number[] {
  const cuts = [-Infinity, ...EDGES, Infinity].map((e) => phi(e - shift));
  const exact = EDGES.concat(0).map((_, k) => n * ((cuts[k + 1] as number) - (cuts[k] as number)));
  const counts = exact.map(Math.floor);
  const order = exact.map((x, i) => [x - Math.floor(x), i] as const).sort((a, b) => b[0] - a[0]);
  for (let r = n - counts.reduce((a, b) => a + b, 0), j = 0; r > 0; r--, j++) counts[order[j]![1]]! += 1;
  return counts;
}

const reference: DriftReference = {
  model,
  features: ['a', 'b'].map((name) => ({ name, edges: EDGES, counts: normalCounts(3000, 0), mean: 0, std: 1 })),
  classCounts: [1000, 1000, 1000],
};

function device(id: string, w: number, n: number, shift: { a?: number; b?: number } = {}): DriftAggregate {
  const third = Math.floor(n / 3);
  const numeric = (['a', 'b'] as const).map((name) => {
    const s = shift[name] ?? 0;
    return { name, counts: normalCounts(n, s), nan: 0, sum: n * s, sumSq: n * (1 + s * s), min: null, max: null };
  });
  const hist = new Array<number>(OUTPUT_BINS).fill(0);
  hist[OUTPUT_BINS - 1] = n;
  const summary: DriftSummary = {
    v: DRIFT_SUMMARY_VERSION,
    summaryId: `${id}/${w}`,
    deviceId: id,
    model,
    windowStart: w * WINDOW,
    windowMs: WINDOW,
    count: n,
    numeric,
    categorical: [],
    outputs: { classCounts: [third, third, n - 2 * third], confidence: hist, margin: hist, entropy: hist },
  };
  return mergeSummaries([summary], { scope: 'device', id, windowMs: WINDOW });
}

const fleet = (w: number, n: number, shiftOf: (i: number) => { a?: number; b?: number } = () => ({})): DriftAggregate[] =>
  Array.from({ length: 50 }, (_, i) => device(`dev-${String(i).padStart(2, '0')}`, w, n, shiftOf(i)));

describe('FleetDriftDetector', () => {
  it('finds nothing when every device matches the reference', () => {
    const r = new FleetDriftDetector(reference).evaluate({ devices: fleet(0, 900), groupOf: (id) => (id < 'dev-25' ? 'line-1' : 'line-2') });
    assert.equal(r.findings.length, 0, r.findings.map((f) => f.message).join('\n'));
    // fleet: 2 features + classes; 2 groups: 3 each; 50 devices × (2 features + 4 outputs).
    assert.equal(r.tests, 3 + 6 + 50 * 6);
    assert.equal(r.devices, 50);
    assert.equal(r.count, 45_000);
    assert.ok(Math.abs(r.alpha - 0.002 / 96) < 1e-15, 'q threshold: 0.2% per day over 96 windows');
  });

  it('reports a fleet-wide shift against the reference, in words, and not on every device', () => {
    const r = new FleetDriftDetector(reference).evaluate({ devices: fleet(0, 900, () => ({ a: 0.5 })) });
    assert.deepEqual(r.findings.map((f) => [f.scope, f.feature, f.direction]), [['fleet', 'a', 'up']]);
    const f = r.findings[0]!;
    assert.ok(Math.abs(f.effect.shiftSd! - 0.5) < 1e-9);
    assert.ok(f.effect.psi > 0.2 && f.effect.js > 0.1 && f.q! < 1e-10);
    assert.match(f.message, /^a up 0\.50 SD fleet-wide vs reference \(PSI 0\.\d+, q \d+e-\d+, n 45000\)$/);
    assert.deepEqual(r.headlines, [f.message]);
  });

  it('names a device that differs from its peers while the fleet looks fine', () => {
    const r = new FleetDriftDetector(reference).evaluate({ devices: fleet(0, 900, (i) => (i === 7 ? { b: -0.4 } : {})) });
    assert.deepEqual(r.findings.map((f) => [f.scope, f.id, f.feature, f.direction, f.against]), [['device', 'dev-07', 'b', 'down', 'peers']]);
    assert.match(r.findings[0]!.message, /^b down 0\.40 SD on device dev-07 vs its 49 peers/);
    assert.deepEqual(r.headlines, ['b down 0.40 SD on 1 of 50 devices: dev-07']);
  });

  it('a line that drifted does not make the healthy devices look like outliers (peers on the reference only)', () => {
    // Half the fleet (line-1) moves by 1 SD. Pooled over every other device, each healthy device
    // of line-2 would sit 0.5 SD above its peers; against the devices still on the reference it
    // sits on them.
    const groupOf = (id: string): string => (id < 'dev-25' ? 'line-1' : 'line-2');
    const r = new FleetDriftDetector(reference).evaluate({ devices: fleet(0, 900, (i) => (i < 25 ? { a: -1 } : {})), groupOf });
    const devices = r.findings.filter((f) => f.scope === 'device');
    assert.equal(devices.length, 25, r.headlines.join('\n'));
    for (const f of devices) {
      assert.equal(groupOf(f.id), 'line-1', f.message);
      assert.equal(f.direction, 'down');
      assert.match(f.message, /vs its 25 peers/);
    }
    assert.ok(r.findings.some((f) => f.scope === 'group' && f.id === 'line-1' && f.feature === 'a'));
    assert.ok(!r.findings.some((f) => f.scope === 'group' && f.id === 'line-2'));
  });

  it('does not alert on a significant but tiny shift (effect gate)', () => {
    // 0.1 SD on 5 devices: at 9,000 readings each the binned test is clearly significant.
    const r = new FleetDriftDetector(reference).evaluate({ devices: fleet(0, 9000, (i) => (i < 5 ? { a: 0.1 } : {})) });
    assert.ok(r.significant >= 5, `significant ${r.significant}`);
    assert.equal(r.findings.length, 0);
  });

  it('skips devices with too few readings to test, and falls back to the reference without peers', () => {
    const small = new FleetDriftDetector(reference).evaluate({ devices: fleet(0, 60) });
    assert.equal(small.tests, 3, 'only the fleet (3,000 readings) is tested');
    const lonely = new FleetDriftDetector(reference).evaluate({ devices: [device('solo', 0, 900, { a: 0.6 })] });
    assert.deepEqual(lonely.findings.map((f) => [f.scope, f.id, f.against]), [
      ['fleet', 'fleet', 'reference'],
      ['device', 'solo', 'reference'],
    ]);
  });

  it('CUSUM catches a persistent shift below the per-window effect gate', () => {
    const det = new FleetDriftDetector(reference);
    const trendAt: number[] = [];
    for (let w = 0; w < 20; w++) {
      const r = det.evaluate({ devices: fleet(w, 900, () => (w >= 4 ? { a: 0.16 } : {})) });
      assert.equal(r.findings.filter((f) => f.kind === 'window').length, 0, 'below 0.2 SD and 0.1 PSI');
      if (r.findings.some((f) => f.kind === 'trend' && f.scope === 'fleet' && f.feature === 'a' && f.direction === 'up')) trendAt.push(w);
    }
    // (0.16 − 0.1) per window: alarm on the 9th shifted window (0.54 > 0.5), then it restarts.
    assert.deepEqual(trendAt, [12]);
  });

  it('refuses windows of another model version or with a different bin layout', () => {
    const det = new FleetDriftDetector(reference);
    const other = fleet(0, 900).map((d) => ({ ...d, model: { ...model, version: '2.0.0' } }));
    assert.throws(() => det.evaluate({ devices: other }), (e: unknown) => e instanceof EdgefleetError && e.code === 'CONFLICT');
    const bad = new FleetDriftDetector({ features: [{ name: 'a', edges: [0], counts: [5, 5], mean: 0, std: 1 }] });
    assert.throws(() => bad.evaluate({ devices: fleet(0, 900) }), /summaries have 10 bins, reference 2/);
    assert.throws(() => det.evaluate({ devices: [] }), EdgefleetError);
  });

  it('referenceFromManifest turns the manifest class rates back into counts', () => {
    const m = {
      name: 'machine-state',
      version: '1.0.0',
      drift: { features: reference.features, classRates: [0.326667, 0.342667, 0.330667] },
      evaluation: { dataset: 'x', samples: 3000, accuracy: 0.97 },
    } as unknown as Manifest;
    const ref = referenceFromManifest(m);
    assert.deepEqual(ref.classCounts, [980, 1028, 992]);
    assert.deepEqual(ref.model, model);
    assert.equal(ref.features.length, 2);
  });
});
