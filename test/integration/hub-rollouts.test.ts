/**
 * Staged rollouts at the hub, end to end through its API, MQTT and SQLite: a real hub on a fake
 * clock and scripted devices (hub-rollouts-fixture.ts) that answer like the agent. Each test uses
 * its own model name and device group, so they share one hub (and its release pushes).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { run as rolloutCmd, runHistory } from '../../cli/commands/rollout.ts';
import { RolloutFixture, until, type Release, type RolloutStatusBody, type ScriptedDevice } from './hub-rollouts-fixture.ts';

const BAKE = 600_000;

describe('hub rollouts', () => {
  let dir: string;
  let fx: RolloutFixture;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-rollouts-'));
    fx = new RolloutFixture(join(dir, 'hub'));
    await fx.start({ windows: { 'g-win': ['* 22-23 * * *'] } });
  });

  after(async () => {
    await fx.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const fleet = async (group: string, n: number, runs: Release, opts: { offline?: number[]; labels?: (i: number) => Record<string, string> } = {}): Promise<ScriptedDevice[]> => {
    const out: ScriptedDevice[] = [];
    for (let i = 1; i <= n; i++) {
      const d = (await fx.register(`${group}-${String(i).padStart(2, '0')}`, group, opts.labels?.(i) ?? {})).runs(runs);
      if (!opts.offline?.includes(i)) await d.connect();
      out.push(d);
    }
    return out;
  };
  const create = (body: Record<string, unknown>): Promise<RolloutStatusBody> => fx.ok<RolloutStatusBody>('POST', '/v1/rollouts', body);
  const deviceState = (s: RolloutStatusBody, id: string): string | undefined => s.devices.find((d) => d.id === id)?.state;
  const waitFor = async (id: string, check: (s: RolloutStatusBody) => boolean, what: string): Promise<RolloutStatusBody> => {
    let last: RolloutStatusBody | undefined;
    await until(
      async () => {
        last = await fx.status(id);
        return check(last);
      },
      20_000,
      what,
    );
    return last as RolloutStatusBody;
  };

  test('waves advance with the defaults over 12 devices; the offline one updates when it connects', async () => {
    const v1 = await fx.release('m-waves', '1.0.0');
    const v2 = await fx.release('m-waves', '1.1.0');
    const devices = await fleet('g-waves', 12, v1, { offline: [5] });
    const offline = devices[4] as ScriptedDevice;

    const created = await create({ model: 'm-waves', version: '1.1.0', target: { group: 'g-waves' } });
    assert.equal(created.state, 'running');
    assert.deepEqual(
      created.waves.map((w) => w.cumulative),
      [1, 2, 6, 12],
    );
    // The canary is online; the offline device is planned last.
    assert.equal(created.devices.find((d) => d.id === offline.id)?.wave, 3);

    for (let wave = 0; wave < 4; wave++) {
      const s = await waitFor(created.id, (x) => x.currentWave === wave && x.phase === 'baking', `wave ${wave} to bake`);
      const cumulative = s.waves[wave]?.cumulative ?? 0;
      const commanded = devices.filter((d) => d.installs('model.install').length > 0).length;
      // Online devices of started waves only (the offline one never gets a command while away).
      assert.equal(commanded, wave === 3 ? 11 : cumulative, `wave ${wave}`);
      // No health data: the gate is insufficient, the bake is extended twice, then passes.
      await fx.advance(BAKE);
      await fx.advance(BAKE);
      assert.equal((await fx.status(created.id)).currentWave, wave, 'still baking after two extensions');
      await fx.advance(BAKE);
    }
    const done = await fx.status(created.id);
    assert.equal(done.state, 'completed');
    assert.equal(done.counts.succeeded, 11);
    assert.equal(deviceState(done, offline.id), 'pending');
    assert.equal(done.gates.length, 12);
    assert.deepEqual(new Set(done.gates.map((g) => g.action)), new Set(['extend', 'pass_insufficient']));

    await offline.connect();
    const healed = await waitFor(created.id, (x) => deviceState(x, offline.id) === 'succeeded', 'the offline device to update');
    assert.equal(healed.counts.succeeded, 12);
    assert.equal(offline.slots.get('m-waves')?.active?.version, v2.version);
    const history = await fx.history(offline.id);
    // A hello that arrives while the command is out sends the same command id again by design
    // (it may have been lost with the connection; the agent de-duplicates): on a loaded machine
    // the device's second hello can beat its install. One command id, sent once or more.
    const sent = history.filter((h) => h.event === 'command_sent');
    assert.equal(new Set(sent.map((h) => h.details.id)).size, 1, JSON.stringify(sent));
    assert.deepEqual(
      history.map((h) => h.event).filter((e, i, all) => !(e === 'command_sent' && all[i - 1] === 'command_sent')),
      ['assigned', 'command_sent', 'installed'],
    );
    // Every device: installed exactly once, though result, event and hello all reported it.
    for (const d of devices) assert.equal((await fx.history(d.id)).filter((h) => h.event === 'installed').length, 1, d.id);
  });

  test('a canary that rejects the release stops the rollout at wave 0; no other device gets a command', async () => {
    const v1 = await fx.release('m-canary', '1.0.0');
    await fx.release('m-canary', '1.1.0');
    const devices = await fleet('g-canary', 6, v1);
    (devices[0] as ScriptedDevice).behaviour = 'reject';
    const created = await create({ model: 'm-canary', version: '1.1.0', target: { group: 'g-canary' } });
    assert.equal(created.devices.find((d) => d.wave === 0)?.id, devices[0]?.id);

    const s = await waitFor(created.id, (x) => x.state !== 'running', 'the rollout to stop');
    assert.equal(s.state, 'rolled_back');
    assert.match(s.reason ?? '', /wave 0: 0 of 1 reporting devices succeeded/);
    assert.equal(deviceState(s, devices[0]?.id ?? ''), 'failed');
    await fx.advance(BAKE * 10);
    for (const d of devices.slice(1)) assert.equal(d.commands.length, 0, `${d.id} got a command`);
    assert.deepEqual(
      (await fx.history(devices[0]?.id ?? '')).map((h) => h.event),
      ['assigned', 'command_sent', 'rejected'],
    );
  });

  test('a behaviour gate breach (canary predicts another class mix) rolls the canary back', async () => {
    const v1 = await fx.release('m-gate', '1.0.0');
    await fx.release('m-gate', '1.1.0');
    const devices = await fleet('g-gate', 4, v1);
    const canary = devices[0] as ScriptedDevice;
    const created = await create({ model: 'm-gate', version: '1.1.0', target: { group: 'g-gate' }, waves: [1, '100%'], gates: { minSamples: 100 } });
    await waitFor(created.id, (x) => x.phase === 'baking', 'the canary wave to bake');

    // Same window, after the bake started: the canary on 1.1.0, the others still on 1.0.0.
    const windowStart = fx.clock.now();
    await canary.health('m-gate', '1.1.0', windowStart, [40, 40, 320]);
    for (const d of devices.slice(1)) await d.health('m-gate', '1.0.0', windowStart, [320, 60, 20]);

    const s = await waitFor(created.id, (x) => x.state === 'rolled_back' && deviceState(x, canary.id) === 'rolled_back', 'the gate to roll back');
    const gate = s.gates.find((g) => g.action === 'fail');
    assert.ok(gate, JSON.stringify(s.gates));
    assert.equal(gate.baseline, 'control');
    assert.ok(gate.breaches.some((b) => b.metric === 'class_shift'), JSON.stringify(gate.breaches));
    assert.match(s.reason ?? '', /behaviour gate failed/);
    // Once, or again with the same id when a hello still showing 1.1.0 crossed the rollback.
    assert.deepEqual(new Set(canary.installs('model.rollback').map((c) => c.id)), new Set([`rollback-${created.id}-${created.counter}`]));
    assert.equal(canary.slots.get('m-gate')?.active?.version, '1.0.0');
    for (const d of devices.slice(1)) assert.equal(d.commands.length, 0, `${d.id} got a command`);
    assert.ok((await fx.history(canary.id)).some((h) => h.event === 'rolled_back'));
    // A reconnect does not re-install the rolled-back release (the desired state went back).
    await canary.hello();
    await fx.advance(1000);
    assert.equal(canary.installs('model.install').length, 1);
  });

  test('a canary that rolls back on its own during the bake (probation) fails its wave', async () => {
    const v1 = await fx.release('m-prob', '1.0.0');
    const v2 = await fx.release('m-prob', '1.1.0');
    const devices = await fleet('g-prob', 3, v1);
    const created = await create({ model: 'm-prob', version: '1.1.0', target: { group: 'g-prob' }, waves: [1, '100%'] });
    await waitFor(created.id, (x) => x.phase === 'baking', 'the canary wave to bake');
    const canary = devices.find((d) => d.commands.length > 0) as ScriptedDevice;
    await canary.event({ event: 'rolled_back', name: 'm-prob', version: '1.1.0', counter: v2.counter, rolloutId: created.id, restored: { version: v1.version, counter: v1.counter, sha256: v1.sha256 }, phase: 'probation', code: 'LATENCY', message: 'p95 3x baseline' });
    const s = await waitFor(created.id, (x) => x.state !== 'running', 'the rollout to stop');
    assert.equal(s.state, 'rolled_back');
    assert.match(s.reason ?? '', /wave 0: 0 of 1 reporting devices succeeded/);
    assert.equal(deviceState(s, canary.id), 'rolled_back');
    for (const d of devices) if (d !== canary) assert.equal(d.commands.length, 0, d.id);
  });

  test('abort threshold over the rollout with onBreach pause; metrics count devices, commands and verdicts', async () => {
    const v1 = await fx.release('m-abort', '1.0.0');
    await fx.release('m-abort', '1.1.0');
    const devices = await fleet('g-abort', 6, v1);
    for (const d of devices.slice(0, 2)) d.behaviour = 'reject';
    const created = await create({ model: 'm-abort', version: '1.1.0', target: { group: 'g-abort' }, waves: ['100%'], onBreach: 'pause', maxConcurrent: 6 });
    const s = await waitFor(created.id, (x) => x.state === 'paused', 'the abort threshold');
    assert.match(s.reason ?? '', /abort threshold: 2 of \d devices failed \(> 0\.2\)/);
    assert.equal(devices.reduce((n, d) => n + d.installs('model.rollback').length, 0), 0, 'pause does not roll back');
    await waitFor(created.id, (x) => x.counts.succeeded === 4 && x.counts.failed === 2, 'every device to report');

    const metrics = await (await fetch(`${fx.hub.httpUrl}/metrics`, { headers: { authorization: `Bearer ${fx.hub.adminToken}` } })).text();
    assert.match(metrics, new RegExp(`edgefleet_hub_rollout_devices\\{rollout="${created.id}",state="succeeded"\\} 4`));
    assert.match(metrics, new RegExp(`edgefleet_hub_rollout_devices\\{rollout="${created.id}",state="failed"\\} 2`));
    assert.match(metrics, /edgefleet_hub_rollout_commands_total\{command="install"\} \d+/);
    assert.match(metrics, /edgefleet_hub_rollout_gate_verdicts_total\{verdict="(insufficient|fail)"\} \d+/);
    await fx.ok('POST', `/v1/rollouts/${created.id}/abort`);
  });

  test('maintenance window: no dispatch while closed, dispatch once the clock enters it', async () => {
    const v1 = await fx.release('m-win', '1.0.0');
    await fx.release('m-win', '1.1.0');
    const devices = await fleet('g-win', 2, v1);
    const created = await create({ model: 'm-win', version: '1.1.0', target: { group: 'g-win' }, waves: [1, '100%'] });
    await fx.advance(60_000);
    await fx.advance(60 * 60_000);
    assert.equal(devices.reduce((n, d) => n + d.commands.length, 0), 0);
    assert.equal((await fx.status(created.id)).state, 'running', 'waiting for a window is not a timeout');
    // Into the next 22:00-23:59 window (UTC).
    const at = new Date(fx.clock.now());
    const next = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate() + (at.getUTCHours() >= 22 ? 1 : 0), 22, 5);
    await fx.advance(next - fx.clock.now());
    await until(() => (devices[0]?.commands.length ?? 0) === 1, 10_000, 'the canary to get its install');
    await waitFor(created.id, (x) => x.phase === 'baking', 'the canary to report');
    assert.equal(devices[1]?.commands.length, 0);
    await fx.ok('POST', `/v1/rollouts/${created.id}/abort`);
  });

  test('pause, resume, approve, abort, and illegal transitions', async () => {
    const v1 = await fx.release('m-ops', '1.0.0');
    await fx.release('m-ops', '1.1.0');
    const devices = await fleet('g-ops', 3, v1);
    const created = await create({ model: 'm-ops', version: '1.1.0', target: { group: 'g-ops' }, waves: [1, '100%'], bakeMs: 0, approval: 'each-wave' });
    const conflict = await fx.api<{ error: { code: string } }>('POST', '/v1/rollouts', { model: 'm-ops', version: '1.1.0', target: { group: 'g-ops' } });
    assert.equal(conflict.status, 409, 'one active rollout per model');
    assert.equal(conflict.body.error.code, 'CONFLICT');

    await waitFor(created.id, (x) => x.counts.succeeded === 1, 'the canary');
    await fx.advance(1000);
    assert.equal((await fx.status(created.id)).phase, 'awaiting_approval');
    await fx.advance(BAKE * 10);
    assert.equal(devices.filter((d) => d.commands.length > 0).length, 1, 'nothing beyond wave 0 without approval');

    const act = (a: string): Promise<{ status: number; body: { state?: string; error?: { code: string } } }> => fx.api('POST', `/v1/rollouts/${created.id}/${a}`);
    assert.equal((await act('pause')).body.state, 'paused');
    assert.equal((await act('pause')).status, 409);
    assert.equal((await act('resume')).body.state, 'running');
    assert.equal((await act('resume')).status, 409);
    assert.equal((await act('approve')).status, 200);
    assert.equal((await act('approve')).status, 409);
    const done = await waitFor(created.id, (x) => x.state === 'completed', 'the rollout to complete');
    assert.equal(done.counts.succeeded, 3);
    for (const a of ['pause', 'resume', 'abort', 'approve']) {
      const r = await act(a);
      assert.equal(r.status, 409, a);
      assert.equal(r.body.error?.code, 'CONFLICT');
    }
    assert.equal((await fx.api('POST', '/v1/rollouts/ro-nope/pause')).status, 404);
    assert.equal((await fx.api('GET', '/v1/rollouts/ro-nope')).status, 404);

    // Abort: the next rollout of the same model stops; pending devices never get it.
    await fx.release('m-ops', '1.2.0');
    const second = await create({ model: 'm-ops', version: '1.2.0', target: { group: 'g-ops' }, waves: [1, '100%'], approval: 'each-wave' });
    const aborted = await fx.ok<RolloutStatusBody>('POST', `/v1/rollouts/${second.id}/abort`);
    assert.equal(aborted.state, 'aborted');
    assert.equal((await fx.api('POST', `/v1/rollouts/${second.id}/abort`)).status, 409);
    const list = await fx.ok<{ rollouts: { id: string; state: string }[] }>('GET', '/v1/rollouts');
    assert.deepEqual(
      list.rollouts.filter((r) => r.id === created.id || r.id === second.id).map((r) => r.state),
      ['aborted', 'completed'],
    );
  });

  test('targets by labels; a matching device registered after creation is included, others are not', async () => {
    const v1 = await fx.release('m-sel', '1.0.0');
    const v2 = await fx.release('m-sel', '1.1.0');
    const devices = await fleet('g-sel', 3, v1, { labels: (i) => ({ site: i === 3 ? 'b' : 'a', line: String(i) }) });
    const created = await create({ model: 'm-sel', version: '1.1.0', target: { labels: { site: 'a' } }, waves: [1, '100%'], bakeMs: 0 });
    assert.deepEqual(created.devices.map((d) => d.id).sort(), ['g-sel-01', 'g-sel-02']);

    const late = (await fx.register('g-sel-late', 'other', { site: 'a' })).runs(v1);
    await late.connect();
    const s = await waitFor(created.id, (x) => x.state === 'completed' && deviceState(x, late.id) === 'succeeded', 'the late device to update');
    assert.equal(s.devices.find((d) => d.id === late.id)?.wave, 1);
    assert.equal(late.slots.get('m-sel')?.active?.version, v2.version);
    assert.equal(devices[2]?.commands.length, 0, 'site=b is not targeted');
  });

  test('CLI: rollout create, status, list, pause, abort, and devices history', async () => {
    const v1 = await fx.release('m-cli', '1.0.0');
    await fx.release('m-cli', '1.1.0');
    const devices = await fleet('g-cli', 3, v1);
    const cli = async (fn: typeof rolloutCmd, args: string[]): Promise<{ code: number; out: string; err: string }> => {
      let out = '';
      let err = '';
      const code = await fn([...args, '--hub', fx.hub.httpUrl, '--token', fx.hub.adminToken], { out: (x) => (out += x), err: (x) => (err += x), env: {} });
      return { code, out, err };
    };
    const c = await cli(rolloutCmd, ['create', 'm-cli@1.1.0', '--target', 'group=g-cli', '--waves', '1,100%', '--bake', '5m', '--on-breach', 'pause', '--json']);
    assert.equal(c.code, 0, c.err);
    const created = JSON.parse(c.out) as RolloutStatusBody & { spec: { bakeMs: number; onBreach: string } };
    assert.equal(created.spec.bakeMs, 300_000);
    assert.equal(created.spec.onBreach, 'pause');
    await waitFor(created.id, (x) => x.phase === 'baking', 'the canary');

    const st = await cli(rolloutCmd, ['status', created.id]);
    assert.equal(st.code, 0, st.err);
    assert.match(st.out, new RegExp(`^${created.id}: m-cli@1\\.1\\.0 running \\(baking\\)`));
    assert.match(st.out, /wave 1 +current +1 device\(s\), cumulative 1: 1\/1 ok/);
    const ls = await cli(rolloutCmd, ['list']);
    assert.match(ls.out, new RegExp(`${created.id} +m-cli@1\\.1\\.0 +running +baking +1/2`));
    assert.equal((await cli(rolloutCmd, ['pause', created.id])).code, 0);
    const again = await cli(rolloutCmd, ['pause', created.id]);
    assert.equal(again.code, 1);
    assert.match(again.err, /cannot pause rollout .*: it is paused \(HTTP 409 CONFLICT\)/);
    assert.equal((await cli(rolloutCmd, ['abort', created.id])).code, 0);
    assert.equal((await cli(rolloutCmd, ['create', 'm-cli', '--target', 'group=g-cli'])).code, 2);

    const canary = devices.find((d) => d.commands.length > 0) as ScriptedDevice;
    const h = await cli(runHistory, [canary.id]);
    assert.equal(h.code, 0, h.err);
    assert.match(h.out, /assigned +m-cli@1\.1\.0 .*\n.*command_sent +m-cli@1\.1\.0 .*\n.*installed +m-cli@1\.1\.0/);
    const hj = await cli(runHistory, [canary.id, '--json']);
    assert.deepEqual(
      (JSON.parse(hj.out) as { event: string }[]).map((e) => e.event),
      ['assigned', 'command_sent', 'installed'],
    );
    assert.equal((await cli(runHistory, ['nobody'])).code, 1);
  });

  test('API validation errors', async () => {
    await fx.release('m-api', '1.0.0');
    await fx.register('g-api-01', 'g-api');
    const bad = async (body: unknown, status = 400, code = 'BAD_INPUT'): Promise<string> => {
      const r = await fx.api<{ error: { code: string; message: string } }>('POST', '/v1/rollouts', body);
      assert.equal(r.status, status, JSON.stringify(r.body));
      assert.equal(r.body.error.code, code);
      return r.body.error.message;
    };
    const ok = { model: 'm-api', version: '1.0.0', target: { group: 'g-api' } };
    assert.match(await bad({ model: 'm-api', version: '1.0.0' }), /target/);
    assert.match(await bad({ ...ok, target: {} }), /target needs devices, a group or labels/);
    assert.match(await bad({ ...ok, waves: ['150%'] }), /percentage/);
    assert.match(await bad({ ...ok, waves: [] }), /waves/);
    assert.match(await bad({ ...ok, successThreshold: 2 }), /successThreshold/);
    assert.match(await bad({ ...ok, onBreach: 'explode' }), /onBreach/);
    assert.match(await bad({ ...ok, gates: { maxClassShift: 3 } }), /gates\.maxClassShift/);
    assert.match(await bad({ ...ok, surprise: 1 }), /surprise/);
    assert.match(await bad({ ...ok, target: { devices: ['../etc'] } }), /device id/);
    assert.match(await bad({ ...ok, target: { group: 'nobody-here' } }), /no registered device matches/);
    assert.match(await bad({ ...ok, version: '9.9.9' }, 404, 'NOT_FOUND'), /no release m-api@9\.9\.9/);
    assert.equal((await fx.api('GET', '/v1/devices/nobody/history')).status, 404);
    const unauth = await fetch(`${fx.hub.httpUrl}/v1/rollouts`, { method: 'POST', body: JSON.stringify(ok) });
    assert.equal(unauth.status, 401);
  });
});
