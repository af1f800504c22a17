/**
 * Issue #15 against a real hub (aedes on port 0, SQLite in a temp dir, raw mqtt.js clients): a
 * device credential stored with scrypt (as every row was before #15) logs in over MQTT, is
 * rehashed to HMAC-SHA256 in the store on that login, survives a hub restart upgraded, and its
 * later logins skip the scrypt. New registrations get HMAC rows at once. A wrong token is still
 * refused with CONNACK 4 on both kinds of row.
 */
import assert from 'node:assert/strict';
import { randomBytes, scryptSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Hub } from '../../hub/main.ts';
import { FAST_KDF, newSecret, verifyToken } from '../../hub/auth/tokens.ts';
import { clients, connect, refusedCode, register, startHub } from '../helpers/mqtt-clients.ts';

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

describe('device credentials: scrypt rows are upgraded to HMAC on MQTT login', () => {
  let dir: string;
  let hub: Hub;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-kdf-upgrade-'));
    hub = await startHub(dir);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  /** Connects, returns the time to CONNACK, disconnects. */
  async function login(id: string, password: string): Promise<number> {
    const t0 = performance.now();
    const c = await connect(hub, { clientId: id, username: id, password });
    const ms = performance.now() - t0;
    await c.endAsync();
    return ms;
  }

  test('an old scrypt credential logs in, is rehashed in the store, and logs in again (also after a restart)', async () => {
    const token = newSecret();
    const salt = randomBytes(16);
    // The row exactly as the pre-#15 hashToken wrote it.
    await hub.store.createPrincipal({
      id: 'old-dev',
      kind: 'device',
      group: 'line1',
      labels: {},
      token: { kdf: 'scrypt:N=4096,r=8,p=1,len=32', salt, hash: scryptSync(token, salt, 32, { N: 4096, r: 8, p: 1 }) },
      createdAt: Date.now(),
    });
    assert.equal(await refusedCode(hub, { clientId: 'old-dev', username: 'old-dev', password: newSecret() }), 4, 'a wrong token is refused');
    assert.match((await hub.store.getCredentials('old-dev'))?.token.kdf ?? '', /^scrypt:/, 'a refusal upgrades nothing');

    const first = await login('old-dev', token);
    const row = await hub.store.getCredentials('old-dev');
    assert.equal(row?.token.kdf, FAST_KDF, 'rehashed on the first successful login');
    assert.equal(await verifyToken(token, row.token), true);
    assert.notDeepEqual(row.token.salt, salt, 'a fresh salt');

    const again: number[] = [];
    for (let i = 0; i < 5; i++) again.push(await login('old-dev', token));
    assert.equal(await refusedCode(hub, { clientId: 'old-dev', username: 'old-dev', password: newSecret() }), 4, 'a wrong token against the HMAC row is refused');

    // The upgrade is in the database, not only in memory.
    assert.deepEqual(await hub.stop(), []);
    hub = await startHub(dir);
    assert.equal((await hub.store.getCredentials('old-dev'))?.token.kdf, FAST_KDF);
    const afterRestart = await login('old-dev', token);
    console.log(
      `kdf: MQTT login of a scrypt row ${first.toFixed(1)} ms (upgraded), then median of 5 on the HMAC row ${median(again).toFixed(1)} ms, after a hub restart ${afterRestart.toFixed(1)} ms`,
    );
  });

  test('a device registered over the API gets an HMAC row', async () => {
    const token = await register(hub, { id: 'new-dev', group: 'line1' });
    assert.equal((await hub.store.getCredentials('new-dev'))?.token.kdf, FAST_KDF);
    assert.ok((await login('new-dev', token)) >= 0);
  });
});
