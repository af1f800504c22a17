/**
 * The two token kdfs (hub/auth/tokens.ts, issue #15) and the upgrade on login
 * (hub/auth/principals.ts) against a real SQLite store in a temp dir: HMAC round trip, wrong
 * token, wrong lengths, tokens outside our random format never take the fast path, scrypt rows
 * (as written before #15) still verify and are rehashed to HMAC, and refusals cost the same for
 * unknown ids, HMAC rows and scrypt rows.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes, scryptSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PrincipalVerifier } from '../../hub/auth/principals.ts';
import { FAST_KDF, hashToken, isRandomSecret, needsRehash, newSecret, verifyOrDummy, verifyToken, type TokenHash } from '../../hub/auth/tokens.ts';
import { SqliteHubStore } from '../../hub/store/sqlite-store.ts';
import { silentLogger } from '../../shared/log.ts';

/** A hash exactly as hashToken wrote it before issue #15 (scrypt N=2^12 for every token). */
function legacyScrypt(token: string): TokenHash {
  const salt = randomBytes(16);
  return { kdf: 'scrypt:N=4096,r=8,p=1,len=32', salt, hash: scryptSync(token, salt, 32, { N: 4096, r: 8, p: 1 }) };
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

describe('token kdfs', () => {
  test('a random secret is hashed with HMAC-SHA256 and round-trips; a wrong one is refused', async () => {
    const token = newSecret();
    const h = await hashToken(token);
    assert.equal(h.kdf, FAST_KDF);
    assert.equal(h.salt.length, 16);
    assert.equal(h.hash.length, 32);
    assert.equal(await verifyToken(token, h), true);
    assert.equal(await verifyToken(newSecret(), h), false);
    // Same token, new salt: a different hash.
    assert.notDeepEqual((await hashToken(token)).hash, h.hash);
    assert.equal(needsRehash(token, h), false);
  });

  test('wrong lengths are refused: a truncated stored hash, a short, long or non-canonical token', async () => {
    const token = newSecret();
    const h = await hashToken(token);
    assert.equal(await verifyToken(token, { ...h, hash: h.hash.subarray(0, 31) }), false);
    assert.equal(await verifyToken(token, { ...h, hash: Buffer.concat([h.hash, Buffer.alloc(1)]) }), false);
    assert.equal(await verifyToken(token.slice(0, 42), h), false);
    assert.equal(await verifyToken(`${token}A`, h), false);
    assert.equal(await verifyToken('', h), false);
    // 43 base64url characters whose last one carries stray bits do not decode to our format.
    const odd = `${token.slice(0, 42)}B`;
    assert.equal(Buffer.from(odd, 'base64url').length, 32);
    assert.equal(isRandomSecret(odd), false);
    assert.equal(await verifyToken(odd, h), false);
  });

  test('a token outside the random format is hashed with scrypt and never verified on the fast path', async () => {
    for (const weak of ['hunter2', 'correct horse battery staple', 'A'.repeat(44), `${newSecret()}=`, 'é'.repeat(43)]) {
      assert.equal(isRandomSecret(weak), false, weak);
      const h = await hashToken(weak);
      assert.match(h.kdf, /^scrypt:/, `${weak} hashed with ${h.kdf}`);
      assert.equal(await verifyToken(weak, h), true);
      assert.equal(needsRehash(weak, h), false, 'a weak token is never moved to the fast kdf');
      // An HMAC row computed over the same string (as a forged or buggy row would be) is refused.
      const forged: TokenHash = { kdf: FAST_KDF, salt: h.salt, hash: createHmac('sha256', h.salt).update(weak).digest() };
      assert.equal(await verifyToken(weak, forged), false, 'the fast path refuses a token not in our format');
    }
  });

  test('scrypt rows written before issue #15 still verify and ask for a rehash', async () => {
    const token = newSecret();
    const old = legacyScrypt(token);
    assert.equal(await verifyToken(token, old), true);
    assert.equal(await verifyToken(newSecret(), old), false);
    assert.equal(needsRehash(token, old), true);
    assert.equal(await verifyToken(token, { ...old, kdf: 'scrypt:N=4096,r=8,p=1,len=16' }), false, 'the stored length must match its kdf');
    assert.equal(await verifyToken(token, { ...old, kdf: 'bcrypt' }), false, 'an unknown kdf never verifies');
  });

  test('verifyOrDummy: unknown, wrong-HMAC and wrong-scrypt refusals each cost one scrypt', async () => {
    const token = newSecret();
    const fast = await hashToken(token);
    const slow = legacyScrypt(token);
    assert.equal(await verifyOrDummy(token, fast), true);
    assert.equal(await verifyOrDummy(token, slow), true);
    assert.equal(await verifyOrDummy(token, undefined), false);
    const wrong = newSecret();
    for (let i = 0; i < 3; i++) await Promise.all([verifyOrDummy(wrong, undefined), verifyOrDummy(wrong, fast), verifyOrDummy(wrong, slow)]);
    const unknown: number[] = [];
    const knownFast: number[] = [];
    const knownSlow: number[] = [];
    for (let i = 0; i < 15; i++) {
      unknown.push(await timed(() => verifyOrDummy(wrong, undefined)));
      knownFast.push(await timed(() => verifyOrDummy(wrong, fast)));
      knownSlow.push(await timed(() => verifyOrDummy(wrong, slow)));
    }
    const okFast = await timed(() => verifyOrDummy(token, fast));
    const [u, f, s] = [median(unknown), median(knownFast), median(knownSlow)];
    console.log(`kdf: refusal medians unknown ${u.toFixed(2)} ms, HMAC row ${f.toFixed(2)} ms, scrypt row ${s.toFixed(2)} ms; a valid HMAC token ${okFast.toFixed(3)} ms`);
    for (const [name, v] of [['HMAC row', f], ['scrypt row', s]] as const) {
      assert.ok(v / u >= 0.67 && v / u <= 1.5, `${name} refusal ${v.toFixed(2)} ms vs unknown ${u.toFixed(2)} ms`);
    }
  });
});

describe('upgrade on login (PrincipalVerifier on a real SQLite store)', () => {
  let dir: string;
  let store: SqliteHubStore;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-kdf-'));
    store = new SqliteHubStore({ dataDir: dir, synchronous: 'NORMAL', busyTimeoutMs: 1000, walLimitBytes: 1 << 20, log: silentLogger() });
    await store.start(new AbortController().signal);
  });

  after(async () => {
    await store.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('a scrypt row verifies once with scrypt, is stored as HMAC, and verifies again', async () => {
    const token = newSecret();
    await store.createPrincipal({ id: 'legacy-1', kind: 'device', group: 'g', labels: {}, token: legacyScrypt(token), createdAt: Date.now() });
    await store.createPrincipal({ id: 'legacy-1-cam', kind: 'sensor', group: 'g', labels: {}, deviceId: 'legacy-1', token: legacyScrypt(token), createdAt: Date.now() });
    const v = new PrincipalVerifier(store);
    assert.equal(await v.verify('legacy-1', newSecret()), undefined, 'a wrong token does not upgrade anything');
    assert.match((await store.getCredentials('legacy-1'))?.token.kdf ?? '', /^scrypt:/);

    const first = await v.verify('legacy-1', token);
    assert.equal(first?.id, 'legacy-1');
    const after = await store.getCredentials('legacy-1');
    assert.equal(after?.token.kdf, FAST_KDF, 'rehashed in the store');
    assert.equal(await verifyToken(token, after.token), true);
    assert.equal((await v.verify('legacy-1', token))?.id, 'legacy-1', 'the HMAC row verifies');
    assert.equal(await v.verify('legacy-1', newSecret()), undefined);

    assert.equal((await v.verify('legacy-1-cam', token))?.kind, 'sensor');
    assert.equal((await store.getCredentials('legacy-1-cam'))?.token.kdf, FAST_KDF, 'sensors are upgraded too');
    assert.deepEqual(v.stats(), { upgraded: 2, upgradeFailed: 0 });
  });

  test('revoked principals are not upgraded; a row changed meanwhile is not overwritten', async () => {
    const token = newSecret();
    await store.createPrincipal({ id: 'legacy-2', kind: 'device', group: 'g', labels: {}, token: legacyScrypt(token), createdAt: Date.now() });
    await store.revokePrincipal('legacy-2', Date.now());
    const v = new PrincipalVerifier(store);
    assert.ok((await v.verify('legacy-2', token))?.revokedAt);
    assert.match((await store.getCredentials('legacy-2'))?.token.kdf ?? '', /^scrypt:/);

    const t3 = newSecret();
    const old = legacyScrypt(t3);
    await store.createPrincipal({ id: 'legacy-3', kind: 'device', group: 'g', labels: {}, token: old, createdAt: Date.now() });
    const other = await hashToken(newSecret());
    assert.equal(await store.replacePrincipalToken('legacy-3', old, other), true);
    assert.equal(await store.replacePrincipalToken('legacy-3', old, await hashToken(t3)), false, 'compare-and-swap on the old hash');
    assert.deepEqual((await store.getCredentials('legacy-3'))?.token.hash, other.hash);
  });

  test('refusals cost the same for an unknown id, an HMAC row and a scrypt row', async () => {
    const token = newSecret();
    await store.createPrincipal({ id: 'timing-fast', kind: 'device', group: 'g', labels: {}, token: await hashToken(token), createdAt: Date.now() });
    await store.createPrincipal({ id: 'timing-slow', kind: 'device', group: 'g', labels: {}, token: legacyScrypt(token), createdAt: Date.now() });
    const v = new PrincipalVerifier(store);
    const wrong = newSecret();
    for (let i = 0; i < 3; i++) for (const id of ['nobody', 'timing-fast', 'timing-slow']) await v.verify(id, wrong);
    const series: Record<string, number[]> = { nobody: [], 'timing-fast': [], 'timing-slow': [] };
    for (let i = 0; i < 15; i++) for (const id of Object.keys(series)) series[id]?.push(await timed(() => v.verify(id, wrong)));
    const m = Object.fromEntries(Object.entries(series).map(([k, xs]) => [k, median(xs)])) as Record<string, number>;
    console.log(`kdf: PrincipalVerifier refusal medians ${Object.entries(m).map(([k, x]) => `${k} ${x.toFixed(2)} ms`).join(', ')}`);
    const u = m.nobody as number;
    for (const id of ['timing-fast', 'timing-slow']) {
      const r = (m[id] as number) / u;
      assert.ok(r >= 0.67 && r <= 1.5, `${id} ${(m[id] as number).toFixed(2)} ms vs unknown ${u.toFixed(2)} ms`);
    }
    assert.equal((await store.getCredentials('timing-slow'))?.token.kdf.startsWith('scrypt:'), true, 'refusals never upgrade');
  });
});
