/**
 * A hub stopped mid-rollout and started again on the same data directory resumes the rollout
 * where it was: the bake keeps its deadline, commands that were out get sent again with the
 * same id when their devices reconnect, outcomes reported again (a resent command result, the
 * hello after the restart) count once, and every device's history has `installed` exactly once.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { PROTOCOL_VERSION, topics } from '../../shared/protocol.ts';
import { RolloutFixture, until, type RolloutStatusBody, type ScriptedDevice } from './hub-rollouts-fixture.ts';

const BAKE = 600_000;

describe('hub rollouts across a hub restart', () => {
  let dir: string | undefined;
  let fx: RolloutFixture | undefined;

  after(async () => {
    await fx?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the rollout resumes after a restart and counts no device twice', async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-rollouts-restart-'));
    const f = new RolloutFixture(join(dir, 'hub'));
    fx = f;
    await f.start();
    const v1 = await f.release('m-restart', '1.0.0');
    await f.release('m-restart', '1.1.0');
    const devices: ScriptedDevice[] = [];
    for (let i = 1; i <= 6; i++) {
      const d = (await f.register(`r-${i}`, 'g-restart')).runs(v1);
      await d.connect();
      devices.push(d);
    }
    const status = (id: string): Promise<RolloutStatusBody> => f.status(id);
    const created = await f.ok<RolloutStatusBody>('POST', '/v1/rollouts', { model: 'm-restart', version: '1.1.0', target: { group: 'g-restart' }, waves: [1, 3, '100%'] });
    const canary = devices.find((d) => d.id === created.devices.find((x) => x.wave === 0)?.id) as ScriptedDevice;
    await until(async () => (await status(created.id)).phase === 'baking', 20_000, 'the canary wave to bake');

    // Wave 1 devices take the command but do not answer before the hub goes down.
    const wave1 = created.devices.filter((x) => x.wave === 1).map((x) => devices.find((d) => d.id === x.id) as ScriptedDevice);
    for (const d of wave1) d.behaviour = 'silent';
    for (let i = 0; i < 3; i++) await f.advance(BAKE);
    await until(() => wave1.every((d) => d.commands.length === 1), 20_000, 'wave 1 commands');
    const before = await status(created.id);
    assert.equal(before.currentWave, 1);
    assert.deepEqual(
      before.devices.filter((x) => x.wave === 1).map((x) => x.state),
      ['dispatched', 'dispatched'],
    );

    await f.stop();
    await f.start();
    const resumed = await status(created.id);
    assert.equal(resumed.state, 'running');
    assert.equal(resumed.currentWave, 1);
    assert.equal(resumed.counts.succeeded, 1);

    for (const d of devices) d.behaviour = 'install';
    for (const d of devices) await d.connect();
    // The canary reports its install again (a command result resent after the reconnect).
    await canary.client?.publishAsync(
      topics.of(canary.id, 'cmd/result'),
      JSON.stringify({ v: PROTOCOL_VERSION, type: 'command_result', id: `install-${created.id}-${created.counter}`, ts: f.clock.now(), ok: true, result: { name: 'm-restart', version: '1.1.0', counter: created.counter, state: 'already_active' } }),
      { qos: 1 },
    );
    await until(async () => (await status(created.id)).phase === 'baking', 20_000, 'wave 1 to complete after the restart');
    for (const d of wave1) {
      assert.equal(d.commands.length, 2, `${d.id}: sent again on reconnect`);
      assert.equal(d.commands[0]?.id, d.commands[1]?.id, 'with the same id');
    }
    for (let i = 0; i < 3; i++) await f.advance(BAKE);
    await until(async () => (await status(created.id)).phase === 'baking', 20_000, 'the last wave to bake');
    for (let i = 0; i < 3; i++) await f.advance(BAKE);

    const done = await status(created.id);
    assert.equal(done.state, 'completed');
    assert.equal(done.counts.succeeded, 6);
    assert.equal(done.counts.total, 6);
    for (const d of devices) {
      const h = await f.history(d.id);
      assert.equal(h.filter((x) => x.event === 'installed').length, 1, `${d.id}: ${JSON.stringify(h.map((x) => x.event))}`);
      assert.equal(h.filter((x) => x.event === 'assigned').length, 1, d.id);
    }
    assert.equal(canary.installs('model.install').length, 1, 'the canary was not asked again');
  });
});
