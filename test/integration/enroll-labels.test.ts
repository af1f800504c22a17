/**
 * Enrollment labels (issue #14) against a real hub (HTTP on port 0, SQLite in a temp dir): the
 * enrollment token's labels win, a device may add only the keys the token allows
 * (`allowDeviceLabels`, default none), and a request asking for any other label is refused whole
 * (400 naming the keys, no use of the token spent), so a device cannot place itself in a
 * label-targeted rollout. Also through the CLI (`enroll-token create --allow-device-label`).
 * Prints `security: enrollment labels ...`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CliIo } from '../../cli/command.ts';
import { dispatch } from '../../cli/router.ts';
import type { Hub } from '../../hub/main.ts';
import { matchesTarget } from '../../hub/rollouts/selector.ts';
import { api, startHub } from '../helpers/mqtt-clients.ts';

interface Reply {
  status: number;
  json: Record<string, unknown>;
}

describe('enrollment labels', () => {
  let dir: string;
  let hub: Hub;

  const call = (method: string, path: string, token: string | undefined, body?: unknown): Promise<Reply> => api(hub, method, path, token, body);
  const createToken = async (body: Record<string, unknown>): Promise<{ id: string; token: string }> => {
    const r = await call('POST', '/v1/enrollment-tokens', hub.adminToken, body);
    assert.equal(r.status, 201, JSON.stringify(r.json));
    return { id: r.json.id as string, token: r.json.token as string };
  };
  const labelsOf = async (id: string): Promise<Record<string, string>> => (await call('GET', `/v1/devices/${id}`, hub.adminToken)).json.labels as Record<string, string>;
  const usesOf = async (id: string): Promise<number> => {
    const { tokens } = (await call('GET', '/v1/enrollment-tokens', hub.adminToken)).json as { tokens: { id: string; uses: number }[] };
    return tokens.find((t) => t.id === id)?.uses ?? -1;
  };
  const refusedTotal = async (): Promise<number> => {
    const line = (await hub.registry.metrics()).split('\n').find((l) => l.startsWith('edgefleet_hub_enrollment_refused_total{reason="labels"}'));
    return line ? Number(line.split(' ').pop()) : 0;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-enroll-labels-'));
    hub = await startHub(dir);
  });

  after(async () => {
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('token labels win; a device adds only allowed keys; anything else is refused whole', async () => {
    const canary = { group: 'line2', labels: { ring: 'canary' } };
    const t = await createToken({ group: 'line2', labels: { site: 'plant-9', ring: 'stable' }, allowDeviceLabels: ['line'], maxUses: 5, ttlSeconds: 3600 });

    // The attack: the device asks to be in the canary ring (a token label) and adds a key of its own.
    const attack = await call('POST', '/v1/enroll', undefined, { token: t.token, id: 'cam-1', labels: { ring: 'canary', rollout: 'first' } });
    assert.equal(attack.status, 400, JSON.stringify(attack.json));
    const message = (attack.json.error as { message: string }).message;
    assert.match(message, /labels not allowed by this enrollment token: ring, rollout\b/);
    assert.equal((await call('GET', '/v1/devices/cam-1', hub.adminToken)).status, 404, 'nothing was registered');
    assert.equal(await usesOf(t.id), 0, 'a refused request spends no use of the token');

    // An allowed key, and a token label restated with the token's own value: accepted.
    const ok = await call('POST', '/v1/enroll', undefined, { token: t.token, id: 'cam-1', labels: { line: '2', site: 'plant-9' } });
    assert.equal(ok.status, 201, JSON.stringify(ok.json));
    assert.deepEqual(await labelsOf('cam-1'), { site: 'plant-9', ring: 'stable', line: '2' });
    assert.equal(matchesTarget(canary, { id: 'cam-1', group: 'line2', labels: await labelsOf('cam-1') }), false, 'not in the canary rollout');

    // Default: a token that allows nothing gives exactly its labels.
    const strict = await createToken({ group: 'line2', labels: { site: 'plant-9' }, maxUses: 2 });
    const listed = (await call('GET', '/v1/enrollment-tokens', hub.adminToken)).json as { tokens: { id: string; allowDeviceLabels: string[] }[] };
    assert.deepEqual(listed.tokens.find((x) => x.id === strict.id)?.allowDeviceLabels, []);
    const extra = await call('POST', '/v1/enroll', undefined, { token: strict.token, id: 'cam-2', labels: { line: '2' } });
    assert.equal(extra.status, 400);
    assert.match((extra.json.error as { message: string }).message, /: line \(the token sets site; a device may add none\)/);
    assert.equal((await call('POST', '/v1/enroll', undefined, { token: strict.token, id: 'cam-2' })).status, 201);
    assert.deepEqual(await labelsOf('cam-2'), { site: 'plant-9' });

    // A key both set by the token and left to the device is a contradiction: refused at creation.
    const both = await call('POST', '/v1/enrollment-tokens', hub.adminToken, { group: 'g', labels: { ring: 'stable' }, allowDeviceLabels: ['ring'] });
    assert.equal(both.status, 400);
    assert.match((both.json.error as { message: string }).message, /allowDeviceLabels/);
    // A refused label request holds a valid token: it is not a failed login (no 429 after many).
    for (let i = 0; i < 3; i++) assert.equal((await call('POST', '/v1/enroll', undefined, { token: strict.token, id: `cam-x${i}`, labels: { ring: 'canary' } })).status, 400);
    const refused = await refusedTotal();
    assert.equal(refused, 5);
    console.log(`security: enrollment labels: device asking for ring=canary + its own key refused 400 naming both (0 token uses spent), allowed key added, token labels kept, canary selector no match; ${refused} label refusals counted`);
  });

  test('edgefleet enroll-token create --allow-device-label', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const io: CliIo = { out: (s) => out.push(s), err: (s) => err.push(s), env: { EDGEFLEET_HUB: hub.httpUrl, EDGEFLEET_TOKEN: hub.adminToken } };
    const code = await dispatch(['enroll-token', 'create', '--group', 'line-4', '--label', 'site=p1', '--allow-device-label', 'line', '--allow-device-label', 'cell'], io);
    assert.equal(code, 0, err.join(''));
    assert.match(out.join(''), /group line-4: 1 use\(s\), expires \S+, devices may add labels cell, line; shown once:\n {2}enr_[0-9a-f]{16}\.\S+\n/);
    const token = /enr_\S+/.exec(out.join(''))?.[0] as string;
    assert.equal((await call('POST', '/v1/enroll', undefined, { token, id: 'cam-4', labels: { cell: '7', line: '4' } })).status, 201);
    assert.deepEqual(await labelsOf('cam-4'), { site: 'p1', cell: '7', line: '4' });
    out.length = 0;
    assert.equal(await dispatch(['enroll-token', 'list'], io), 0, err.join(''));
    assert.match(out.join(''), /DEVICE LABELS/);
    assert.match(out.join(''), /line-4\s+1\/1\s+cell,line\s/);
  });
});
