// Drift statistics: chi-square distribution, the two-sample count test, effect sizes, BH, CUSUM
// and the device-vs-peers comparison, against values computed with scipy 1.x (stated inline).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  benjaminiHochberg,
  chiSquareCdf,
  chiSquareSf,
  chiSquareTwoSample,
  compareCounts,
  Cusum,
  jsDistance,
  logGamma,
  moments,
  peerComparison,
  psi,
  regularizedGammaP,
  regularizedGammaQ,
  shiftInSd,
} from '../../shared/drift/stats.ts';

const close = (actual: number, expected: number, relTol: number, what = ''): void => {
  const ok = Math.abs(actual - expected) <= relTol * Math.abs(expected) + 1e-300;
  assert.ok(ok, `${what} ${actual} not within ${relTol} (relative) of ${expected}`);
};

describe('chi-square distribution', () => {
  it('log-gamma matches factorials and Γ(1/2) = √π', () => {
    assert.ok(Math.abs(logGamma(1)) < 1e-13);
    close(logGamma(11), Math.log(3628800), 1e-13, 'lnΓ(11)');
    close(logGamma(0.5), 0.5 * Math.log(Math.PI), 1e-13, 'lnΓ(1/2)');
    close(logGamma(171.5), 709.1431630309283, 1e-13, 'lnΓ(171.5) (scipy gammaln)');
    close(logGamma(0.1), 2.252712651734206, 1e-13, 'lnΓ(0.1)');
    close(logGamma(1000.5), 5908.674175848678, 1e-13, 'lnΓ(1000.5)');
  });

  it('gives the textbook critical values', () => {
    close(chiSquareSf(3.841458820694124, 1), 0.05, 1e-10, 'χ²=3.84 df=1');
    close(chiSquareSf(6.634896601021214, 1), 0.01, 1e-10, 'χ²=6.63 df=1');
    close(chiSquareSf(18.307038053275146, 10), 0.05, 1e-10, 'χ²=18.3 df=10');
    close(chiSquareSf(2, 2), Math.exp(-1), 1e-13, 'df=2 is exponential');
    close(chiSquareCdf(1, 1), 0.6826894921370859, 1e-12, 'one sigma');
  });

  it('keeps precision deep in the upper tail and in odd corners (scipy.stats.chi2.sf)', () => {
    close(chiSquareSf(100, 10), 5.4497019829205215e-17, 1e-9, 'sf(100, 10)');
    close(chiSquareSf(1000, 9), 1.7240681189224405e-209, 1e-8, 'sf(1000, 9)');
    close(chiSquareSf(30, 1), 4.3204630578274955e-8, 1e-9, 'sf(30, 1)');
    close(chiSquareSf(0.5, 3), 0.9188914116546758, 1e-12, 'sf(0.5, 3)');
    close(chiSquareSf(250, 200), 0.009379131668826098, 1e-9, 'sf(250, 200)');
    close(chiSquareSf(5000, 4000), 1.6633156038804178e-25, 1e-7, 'sf(5000, 4000)');
    assert.equal(chiSquareSf(0.1, 150), 1);
    assert.equal(chiSquareSf(0, 3), 1);
    assert.equal(chiSquareSf(5, 0), 1, 'no degrees of freedom: nothing to test');
  });

  it('P + Q = 1 on both sides of the series / continued-fraction switch', () => {
    for (const a of [0.5, 1, 4.5, 30, 200]) {
      for (const x of [0.01, a * 0.5, a + 0.999, a + 1.001, a * 2, a + 40]) {
        close(regularizedGammaP(a, x) + regularizedGammaQ(a, x), 1, 1e-12, `a=${a} x=${x}`);
      }
    }
    assert.ok(Number.isNaN(regularizedGammaQ(0, 1)));
  });
});

describe('two-sample chi-square on counts', () => {
  it('equals scipy chi2_contingency (no correction) when every expected count is ≥ 5', () => {
    const r = chiSquareTwoSample([10, 20, 30], [30, 20, 10]);
    close(r.stat, 20, 1e-12, 'stat');
    assert.equal(r.df, 2);
    close(r.p, 4.539992976248486e-5, 1e-9, 'p');
  });

  it('merges sparse cells into their neighbours before testing', () => {
    // The last column (9 vs 30) expects 3.9 < 5 observed readings; it joins its neighbour, which
    // equals scipy on the table [[12,25,200,309],[40,90,1800,2930]]. The empty column is dropped.
    const r = chiSquareTwoSample([12, 25, 200, 300, 9, 0], [40, 90, 1800, 2900, 30, 0], { minExpected: 5 });
    assert.equal(r.cells, 4);
    assert.equal(r.df, 3);
    close(r.stat, 27.94289452469183, 1e-12, 'stat');
    close(r.p, 3.733669938594977e-6, 1e-9, 'p');
  });

  it('is calibrated where treating reference proportions as exact is not', () => {
    // Same distribution, reference of 3,000 vs 100,000 observations: the reference's own
    // sampling error makes a one-sample test against its proportions reject far too often.
    const ref = [290, 310, 305, 295, 300, 300, 310, 290, 300, 300];
    const obs = ref.map((c) => c * 33.3333);
    const r = chiSquareTwoSample(obs, ref);
    assert.ok(r.p > 0.5, `p = ${r.p}`);
  });

  it('returns p = 1 with nothing to compare', () => {
    assert.deepEqual(chiSquareTwoSample([0, 0], [5, 5]), { stat: 0, df: 0, p: 1, cells: 0 });
    assert.equal(chiSquareTwoSample([1, 1], [2, 2]).df, 0, 'too few readings: one merged cell');
    assert.throws(() => chiSquareTwoSample([1], [1, 2]), RangeError);
  });

  it('unordered (categorical) cells merge the rarest categories together', () => {
    const r = chiSquareTwoSample([100, 2, 100, 1], [100, 1, 100, 3], { ordered: false });
    assert.equal(r.cells, 2, 'the two rare categories join the smaller large one');
  });
});

describe('effect sizes', () => {
  it('PSI: zero for identical, the closed form for a known pair, symmetric', () => {
    assert.equal(psi([10, 20, 30], [1, 2, 3]), 0);
    close(psi([50, 50], [25, 75], 0), 0.25 * Math.log(2) + 0.25 * Math.log(1.5), 1e-12, 'psi');
    close(psi([50, 50], [25, 75]), psi([25, 75], [50, 50]), 1e-12, 'symmetry');
    // An empty bin is finite thanks to the floor, and large.
    const p = psi([0, 100], [50, 50]);
    assert.ok(Number.isFinite(p) && p > 2, `psi ${p}`);
  });

  it('Jensen-Shannon distance (base 2): 0, 1 for disjoint, scipy on a known pair', () => {
    assert.equal(jsDistance([1, 2, 3], [2, 4, 6]), 0);
    close(jsDistance([5, 0], [0, 7]), 1, 1e-12, 'disjoint');
    close(jsDistance([1, 2, 3, 4], [4, 3, 2, 1]), 0.3918681606471551, 1e-12, 'scipy jensenshannon base=2');
  });

  it('moments and shift in SDs', () => {
    const xs = [1, 2, 3, 4, 10];
    const m = moments(xs.length, xs.reduce((a, b) => a + b), xs.reduce((a, b) => a + b * b, 0));
    close(m.mean, 4, 1e-15);
    close(m.sd, Math.sqrt(10), 1e-12);
    assert.equal(shiftInSd(5, 4, 2), 0.5);
    assert.equal(shiftInSd(5, 4, 0), null);
    assert.ok(Number.isNaN(moments(0, 0, 0).mean));
  });

  it('compareCounts bundles the test and the effects', () => {
    const c = compareCounts([10, 20, 30], [30, 20, 10]);
    assert.equal(c.n, 60);
    assert.equal(c.nRef, 60);
    close(c.stat, 20, 1e-12);
    assert.ok(c.psi > 0.5 && c.js > 0.2);
  });
});

describe('Benjamini-Hochberg', () => {
  it('matches a hand-worked example and scipy.stats.false_discovery_control', () => {
    // sorted: .005 .01 .03 .04 .2 .5 (m = 6) → ×6/rank: .03 .03 .06 .06 .24 .5, monotone from the top.
    const q = benjaminiHochberg([0.01, 0.04, 0.03, 0.005, 0.5, 0.2]);
    const expected = [0.03, 0.06, 0.06, 0.03, 0.5, 0.24];
    for (const [i, e] of expected.entries()) close(q[i] as number, e, 1e-12, `q[${i}]`);
  });

  it('caps at 1, treats NaN as 1, handles empty input', () => {
    assert.deepEqual(benjaminiHochberg([0.9, 0.8, Number.NaN]), [1, 1, 1]);
    assert.deepEqual(benjaminiHochberg([]), []);
  });
});

describe('CUSUM', () => {
  it('stays quiet on noise below the allowance and alarms on a persistent shift', () => {
    const c = new Cusum(0.1, 0.5);
    for (let i = 0; i < 1000; i++) assert.equal(c.update(i % 2 ? 0.08 : -0.08).alarm, false);
    const steps = [0.3, 0.3, 0.3].map((x) => c.update(x));
    assert.deepEqual(steps.map((s) => s.alarm), [false, false, true], 'three windows of 0.3 SD: 0.2 + 0.2 + 0.2 > 0.5');
    assert.equal(steps[2]?.direction, 'up');
    assert.equal(c.up, 0, 'restarts after an alarm');
    const down = [-0.45, -0.45].map((x) => c.update(x));
    assert.equal(down[1]?.alarm, true);
    assert.equal(down[1]?.direction, 'down');
  });
});

describe('fleet-relative outliers', () => {
  it('compares each device with its pooled peers, not with a fleet that contains it', () => {
    const normal = [100, 100, 100, 100];
    const devices = Array.from({ length: 20 }, (_, i) => ({ id: `d${i}`, counts: normal, n: 400, sum: 400 * 5 }));
    devices.push({ id: 'odd', counts: [40, 80, 120, 160], n: 400, sum: 400 * 6 });
    const res = peerComparison(devices, { sd: 2 });
    const odd = res.find((r) => r.id === 'odd');
    assert.ok(odd && odd.p < 1e-10 && odd.psi > 0.1, `odd p ${odd?.p} psi ${odd?.psi}`);
    close(odd.shiftSd as number, 0.5, 1e-12, 'odd shift vs peers');
    const d0 = res.find((r) => r.id === 'd0');
    assert.ok(d0 && d0.p > 0.5, `d0 p ${d0?.p}`);
    assert.ok(d0.nRef === 20 * 400, 'peers exclude the device itself');
    assert.deepEqual(peerComparison([]), []);
  });
});
