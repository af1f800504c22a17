/**
 * The pure parts of rollouts: wave planning, device selection, maintenance windows (node-cron on
 * an injected time), the config checks of window expressions, the request schema's defaults, and
 * the CLI's parsing of selectors, waves and durations.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createBody, parseDuration, parseTarget, parseWaves } from '../../cli/commands/rollout.ts';
import { loadHubConfig } from '../../hub/config.ts';
import { assignWaves, joinerWave, planWaves } from '../../hub/rollouts/planner.ts';
import { matchesTarget } from '../../hub/rollouts/selector.ts';
import { RolloutSpecSchema } from '../../hub/rollouts/spec.ts';
import { MaintenanceWindows, windowExpressionProblem } from '../../hub/rollouts/windows.ts';

describe('wave planning', () => {
  test('default waves over 12, 3, 1 and 200 devices are cumulative, rounded up, without empty waves', () => {
    const d = [1, '10%', '50%', '100%'] as const;
    assert.deepEqual(planWaves(d, 12), [1, 2, 6, 12]);
    assert.deepEqual(planWaves(d, 3), [1, 2, 3]);
    assert.deepEqual(planWaves(d, 1), [1]);
    assert.deepEqual(planWaves(d, 200), [1, 20, 100, 200]);
    assert.deepEqual(planWaves(d, 0), []);
  });

  test('the last wave always takes the rest; counts above the fleet are capped', () => {
    assert.deepEqual(planWaves([2, 5], 10), [2, 5, 10]);
    assert.deepEqual(planWaves([50, '100%'], 10), [10]);
    assert.deepEqual(planWaves(['0.5%'], 10), [1, 10]);
  });

  test('online devices come first (the canary can answer now); joiners go to the last wave', () => {
    const devices = [
      { id: 'c', online: false },
      { id: 'b', online: true },
      { id: 'a', online: false },
      { id: 'd', online: true },
    ];
    assert.deepEqual(assignWaves(devices, [1, 2, 4]), [
      { deviceId: 'b', wave: 0 },
      { deviceId: 'd', wave: 1 },
      { deviceId: 'a', wave: 2 },
      { deviceId: 'c', wave: 2 },
    ]);
    assert.equal(joinerWave([1, 2, 4]), 2);
    assert.equal(joinerWave([]), 0);
  });
});

describe('selectors', () => {
  const dev = { id: 'cam-1', group: 'line-1', labels: { site: 'x', line: '3' } };
  test('ids, group and labels; all given parts must match', () => {
    assert.ok(matchesTarget({ devices: ['cam-1', 'cam-2'] }, dev));
    assert.ok(!matchesTarget({ devices: ['cam-2'] }, dev));
    assert.ok(matchesTarget({ group: 'line-1' }, dev));
    assert.ok(!matchesTarget({ group: 'line-2' }, dev));
    assert.ok(matchesTarget({ labels: { site: 'x' } }, dev));
    assert.ok(matchesTarget({ labels: { site: 'x', line: '3' } }, dev));
    assert.ok(!matchesTarget({ labels: { site: 'x', line: '4' } }, dev));
    assert.ok(!matchesTarget({ labels: { zone: 'x' } }, dev));
    assert.ok(!matchesTarget({ group: 'line-1', labels: { site: 'y' } }, dev));
  });
});

describe('maintenance windows', () => {
  test('a window matches every minute inside it, in the configured time zone; groups without windows are open', () => {
    const w = new MaintenanceWindows({ 'line-1': ['* 22-23 * * 1-5'], berlin: ['* 22 * * *'] }, 'UTC');
    try {
      const monday = (h: number, m: number, s = 0): number => Date.UTC(2026, 0, 5, h, m, s);
      assert.ok(!w.isOpen('line-1', monday(21, 59, 59)));
      assert.ok(w.isOpen('line-1', monday(22, 0)));
      assert.ok(w.isOpen('line-1', monday(23, 59, 59)), 'seconds inside a matching minute');
      assert.ok(!w.isOpen('line-1', monday(24, 0)));
      assert.ok(!w.isOpen('line-1', Date.UTC(2026, 0, 10, 22, 30)), 'Saturday');
      assert.ok(w.isOpen('no-windows', monday(3, 0)));
      assert.ok(w.hasWindows('line-1') && !w.hasWindows('no-windows'));
    } finally {
      w.close();
    }
    const tz = new MaintenanceWindows({ berlin: ['* 22 * * *'] }, 'Europe/Berlin');
    try {
      assert.ok(tz.isOpen('berlin', Date.UTC(2026, 0, 5, 21, 30)), '22:30 in Berlin (UTC+1 in January)');
      assert.ok(!tz.isOpen('berlin', Date.UTC(2026, 0, 5, 22, 30)));
    } finally {
      tz.close();
    }
  });

  test('expressions are checked at config load: 5 fields, valid cron, known time zone', () => {
    assert.equal(windowExpressionProblem('* 22-23 * * 1-5'), undefined);
    assert.match(windowExpressionProblem('0 * 22-23 * * 1-5') ?? '', /5 fields/);
    assert.match(windowExpressionProblem('* 25 * * *') ?? '', /not a valid cron/);
    const load = (rollouts: unknown): unknown => loadHubConfig({ env: {}, overrides: { dataDir: '/tmp/x', rollouts } });
    assert.doesNotThrow(() => load({ windows: { 'line-1': ['* 22-23 * * 1-5'] } }));
    assert.throws(() => load({ windows: { 'line-1': ['* 25 * * *'] } }), /rollouts\.windows\.line-1\.0.*not a valid cron/s);
    assert.throws(() => load({ windows: { 'line-1': [] } }), /rollouts\.windows\.line-1/);
    assert.throws(() => load({ timezone: 'Mars/Olympus' }), /unknown time zone/);
  });
});

describe('rollout request', () => {
  test('defaults: waves 1,10%,50%,100%, success 0.9, bake 10 min, abort 0.2 over 5, 50 at once, rollback, no approvals', () => {
    const s = RolloutSpecSchema.parse({ model: 'm', version: '1.0.0', target: { group: 'g' } });
    assert.deepEqual(s.waves, [1, '10%', '50%', '100%']);
    assert.equal(s.successThreshold, 0.9);
    assert.equal(s.bakeMs, 600_000);
    assert.equal(s.abortThreshold, 0.2);
    assert.equal(s.minSample, 5);
    assert.equal(s.maxConcurrent, 50);
    assert.equal(s.onBreach, 'rollback');
    assert.equal(s.approval, 'none');
    assert.equal(s.gates.minSamples, 200);
  });
});

describe('rollout CLI parsing', () => {
  test('selectors, waves, durations and the request body', () => {
    assert.deepEqual(parseTarget(['devices=a,b,c']), { devices: ['a', 'b', 'c'] });
    assert.deepEqual(parseTarget(['group=line-1']), { group: 'line-1' });
    assert.deepEqual(parseTarget(['labels=site=x,line=3']), { labels: { site: 'x', line: '3' } });
    assert.deepEqual(parseTarget(['group=g', 'labels=site=x']), { group: 'g', labels: { site: 'x' } });
    assert.throws(() => parseTarget([]), /--target/);
    assert.throws(() => parseTarget(['zone=x']), /unknown selector/);
    assert.throws(() => parseTarget(['labels=site']), /key=value/);
    assert.deepEqual(parseWaves('1,10%,50%,100%'), [1, '10%', '50%', '100%']);
    assert.throws(() => parseWaves('1,ten'), /--waves/);
    assert.equal(parseDuration('10m', '--bake'), 600_000);
    assert.equal(parseDuration('90s', '--bake'), 90_000);
    assert.equal(parseDuration('1.5h', '--bake'), 5_400_000);
    assert.equal(parseDuration('250', '--bake'), 250);
    assert.throws(() => parseDuration('soon', '--bake'), /duration/);
    assert.deepEqual(createBody('machine-state@1.2.0', { target: ['group=line-1'], waves: '1,50%', bake: '2m', success: '0.95', 'max-concurrent': '5', 'on-breach': 'pause' }), {
      model: 'machine-state',
      version: '1.2.0',
      target: { group: 'line-1' },
      waves: [1, '50%'],
      bakeMs: 120_000,
      successThreshold: 0.95,
      maxConcurrent: 5,
      onBreach: 'pause',
    });
    assert.throws(() => createBody('machine-state', { target: ['group=g'] }), /<name>@<version>/);
    assert.throws(() => createBody('m@1.0.0', { target: ['group=g'], 'min-sample': '2.5' }), /integer/);
  });
});
