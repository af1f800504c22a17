/**
 * The failed-login budget (hub/auth/failures.ts, issue #14) with a fake clock: other addresses
 * never reset an attacker's window, a table full of live windows fails closed for new addresses
 * (shared overflow window, counted), and the work per failure stays O(1).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Registry } from 'prom-client';
import { AuthFailureLimiter, checkFailureBudget } from '../../hub/auth/failures.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';

function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

describe('failed-login budget', () => {
  test('failing once from 10,001 other addresses does not reset the attacker', () => {
    const c = clock();
    const f = new AuthFailureLimiter(60, c.now);
    for (let i = 0; i < 60; i++) f.fail('10.0.0.1');
    assert.equal(f.allowed('10.0.0.1'), false);
    for (let i = 0; i < 10_001; i++) f.fail(`172.16.${i >> 8}.${i & 255}`);
    c.advance(30_000);
    assert.equal(f.allowed('10.0.0.1'), false, 'the attacker is still over budget');
    assert.ok(f.retryAfterSeconds('10.0.0.1') <= 30);
    assert.throws(() => checkFailureBudget(f, '10.0.0.1'), (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.OVERLOADED);
    c.advance(30_000);
    assert.equal(f.allowed('10.0.0.1'), true, 'the window ends after a minute');
    console.log(`security: failed-login budget: attacker still refused after 10,001 other addresses failed once (table ${f.stats().addresses}, overflowed ${f.stats().overflowed})`);
  });

  test('a table full of live windows puts new addresses in one overflow window and fails closed', async () => {
    const c = clock();
    const registry = new Registry();
    const f = new AuthFailureLimiter(5, c.now, { maxAddresses: 100, registry });
    for (let i = 0; i < 100; i++) f.fail(`a${i}`);
    assert.equal(f.allowed('newcomer'), true, 'the overflow window is not exhausted yet');
    for (let i = 0; i < 5; i++) f.fail(`b${i}`);
    assert.equal(f.allowed('newcomer'), false, 'overflow exhausted: untracked addresses are refused');
    assert.equal(f.allowed('a7'), true, 'tracked addresses keep their own windows');
    assert.equal(f.stats().addresses, 100);
    const text = await registry.metrics();
    assert.match(text, /^edgefleet_hub_auth_failure_overflow_total 5$/m);
    assert.match(text, /^edgefleet_hub_auth_failure_addresses 100$/m);
    c.advance(60_000);
    assert.equal(f.allowed('newcomer'), true, 'all windows over: nobody is refused');
    f.fail('newcomer');
    assert.equal(f.stats().addresses, 1, 'expired windows were evicted, the newcomer has its own');
  });

  test('a window restarted after expiry is evicted in start order, never a live one', () => {
    const c = clock();
    const f = new AuthFailureLimiter(3, c.now, { maxAddresses: 2 });
    f.fail('x');
    c.advance(40_000);
    f.fail('y');
    c.advance(30_000); // x expired, y live
    for (let i = 0; i < 3; i++) f.fail('x'); // x restarts, evicting nothing live
    assert.equal(f.allowed('x'), false);
    f.fail('y');
    f.fail('y');
    assert.equal(f.allowed('y'), false, 'y kept its live window');
    c.advance(-120_000); // the clock stepped back: every window counts as over
    assert.equal(f.allowed('x'), true);
  });

  test('50,000 failures from distinct addresses stay O(1) each', () => {
    const c = clock();
    const f = new AuthFailureLimiter(60, c.now);
    const t0 = performance.now();
    // 6 ms apart: about 10,000 windows live at any time, one expiring per new failure (the
    // pattern that made the old table scan all its entries on every failure).
    for (let i = 0; i < 50_000; i++) {
      f.fail(`198.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      f.allowed(`198.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      c.advance(6);
    }
    const ms = performance.now() - t0;
    const { addresses, evicted, overflowed } = f.stats();
    console.log(`security: failed-login budget: 50,000 distinct-address failures in ${ms.toFixed(0)} ms, ${evicted} evictions (<= 1 per failure), table ${addresses}, overflowed ${overflowed}`);
    assert.ok(evicted <= 50_000, `each window is evicted at most once (${evicted})`);
    assert.ok(addresses <= 10_000);
    assert.ok(ms < 1500, `took ${ms.toFixed(0)} ms`);
  });
});
