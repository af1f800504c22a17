/**
 * The security commands against a real in-process hub: operator tokens with roles, enrollment
 * tokens, device revocation and the audit log, through `dispatch` exactly as `edgefleet` runs
 * them (exit codes: 0 ok, 1 failed, 4 not authorized).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { CliIo } from '../../cli/command.ts';
import { dispatch } from '../../cli/router.ts';
import type { Hub } from '../../hub/main.ts';
import { startHub } from '../helpers/mqtt-clients.ts';

function capture(env: NodeJS.ProcessEnv): { io: CliIo; out: () => string; err: () => string } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s) => out.push(s), err: (s) => err.push(s), env }, out: () => out.join(''), err: () => err.join('') };
}

describe('edgefleet token / enroll-token / device revoke / audit', () => {
  let dir: string;
  let hub: Hub;
  const run = async (argv: string[], token?: string): Promise<{ code: number | undefined; out: string; err: string }> => {
    const c = capture({ EDGEFLEET_HUB: hub.httpUrl, EDGEFLEET_TOKEN: token ?? hub.adminToken });
    const code = await dispatch(argv, c.io);
    return { code, out: c.out(), err: c.err() };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-cli-security-'));
    hub = await startHub(dir);
  });
  after(async () => {
    await hub.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('roles, enrollment, revocation and the audit trail from the terminal', async () => {
    const created = await run(['token', 'create', 'night-shift', '--role', 'viewer', '--json']);
    assert.equal(created.code, 0, created.err);
    const viewer = (JSON.parse(created.out) as { token: string }).token;
    assert.match(viewer, /^[0-9a-f]{16}\./);

    const listed = await run(['token', 'list']);
    assert.equal(listed.code, 0, listed.err);
    assert.match(listed.out, /^ID\s+NAME\s+ROLE\s+CREATED\s+BY\s+REVOKED$/m);
    assert.match(listed.out, /night-shift\s+viewer\s+\S+\s+admin\s+-/);
    assert.ok(!listed.out.includes(viewer.split('.')[1] as string), 'the secret is never listed');

    // A viewer reads, but may not change anything: exit 4.
    assert.equal((await run(['devices'], viewer)).code, 0);
    const denied = await run(['device', 'add', 'cam-9', '--group', 'g'], viewer);
    assert.equal(denied.code, 4);
    assert.match(denied.err, /HTTP 403/);

    const enr = await run(['enroll-token', 'create', '--group', 'line-3', '--max-uses', '2', '--ttl', '2h', '--label', 'site=p1']);
    assert.equal(enr.code, 0, enr.err);
    assert.match(enr.out, /group line-3: 2 use\(s\).*\n {2}enr_[0-9a-f]{16}\.\S+\n/);
    const enrList = await run(['enroll-token', 'list', '--json']);
    assert.deepEqual((JSON.parse(enrList.out) as { group: string; uses: number; usable: boolean }[]).map((t) => [t.group, t.uses, t.usable]), [['line-3', 0, true]]);

    assert.equal((await run(['device', 'add', 'cam-1', '--group', 'line-3'])).code, 0);
    const revoked = await run(['device', 'revoke', 'cam-1']);
    assert.equal(revoked.code, 0, revoked.err);
    assert.match(revoked.out, /revoked device cam-1 at \S+; it was disconnected/);
    assert.equal((await run(['device', 'revoke', 'nobody'])).code, 1);

    const tokenId = (JSON.parse(created.out) as { id: string }).id;
    assert.equal((await run(['token', 'revoke', tokenId])).code, 0);
    assert.equal((await run(['devices'], viewer)).code, 4, 'a revoked token is refused at once');

    const audit = await run(['audit', '--since', '1h', '--json']);
    assert.equal(audit.code, 0, audit.err);
    const entries = JSON.parse(audit.out) as { actor: string; action: string; outcome: string }[];
    const seen = entries.map((e) => `${e.actor} ${e.action} ${e.outcome}`);
    for (const want of ['admin token.create ok', 'night-shift device.create denied', 'admin enrollment-token.create ok', 'admin device.revoke ok', 'admin device.revoke failed', 'admin token.revoke ok']) {
      assert.ok(seen.includes(want), `audit has "${want}": ${seen.join(', ')}`);
    }
    const table = await run(['audit', '--outcome', 'denied']);
    assert.match(table.out, /^AT\s+ACTOR\s+ROLE\s+ACTION\s+TARGET\s+OUTCOME\s+STATUS\s+FROM$/m);
    assert.match(table.out, /night-shift\s+viewer\s+device\.create\s+-\s+denied\s+403\s+/);
    assert.equal((await run(['audit', '--outcome', 'maybe'])).code, 2);
    assert.equal((await run(['audit'], viewer)).code, 4);
  });
});
