/**
 * Issue #14, two classes against a real hub (aedes and HTTP on port 0, SQLite in a temp dir):
 * - Timing: a wrong secret for a known operator-token id must cost the same as for an unknown id
 *   (each pays one scrypt), so answer times do not tell which ids exist.
 * - Files: every state file under the hub's and an in-process agent's data dirs is 0600 and every
 *   directory 0700, whatever the umask (the test runs with umask 022).
 * Each test prints one `security: <class> ...` line with what it measured.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { silentLogger } from '../../shared/log.ts';

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
};

async function timedGet(url: string, token: string): Promise<number> {
  const t0 = performance.now();
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  await res.arrayBuffer();
  const ms = performance.now() - t0;
  assert.equal(res.status, 401, `a wrong secret must be refused with 401, got ${res.status}`);
  return ms;
}

describe('operator-token timing', () => {
  let dir: string;
  let hub: Hub;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-timing-'));
    const config = loadHubConfig({
      env: {},
      // The failure budget would answer 429 (without a scrypt) long before 60 attempts: raise it.
      overrides: { dataDir: dir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, limits: { maxAuthFailuresPerMinutePerIp: 100_000 } },
    });
    hub = await createHub(config, { log: silentLogger() });
    await hub.start(new AbortController().signal);
  });

  after(async () => {
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('a wrong secret for a known token id answers as fast as for an unknown id', async () => {
    const knownId = hub.adminToken.split('.')[0] as string;
    const wrongSecret = 'A'.repeat(43);
    const url = `${hub.httpUrl}/v1/whoami`;
    // Warm up both paths (connection, dummy hash, statement cache).
    for (let i = 0; i < 3; i++) {
      await timedGet(url, `${knownId}.${wrongSecret}`);
      await timedGet(url, `${'f'.repeat(16)}.${wrongSecret}`);
    }
    // 30 of each, interleaved and alternating which goes first, so a noisy neighbour slows both
    // series alike. On this shared 2-core box one round can still be skewed by a burst of other
    // work: up to three rounds, every one printed; before the fix each was ~16x (no scrypt for
    // an unknown id), so a retry cannot hide the bug.
    const rounds: string[] = [];
    let ratio = Number.NaN;
    for (let round = 0; round < 3; round++) {
      const known: number[] = [];
      const unknown: number[] = [];
      for (let i = 0; i < 30; i++) {
        const k = `${knownId}.${wrongSecret}`;
        const u = `${(round * 100 + i).toString(16).padStart(16, '0')}.${wrongSecret}`;
        if (i % 2 === 0) {
          known.push(await timedGet(url, k));
          unknown.push(await timedGet(url, u));
        } else {
          unknown.push(await timedGet(url, u));
          known.push(await timedGet(url, k));
        }
      }
      ratio = median(known) / median(unknown);
      rounds.push(`known ${median(known).toFixed(1)} ms / unknown ${median(unknown).toFixed(1)} ms = ${ratio.toFixed(2)}`);
      if (ratio >= 0.67 && ratio <= 1.5) break;
    }
    console.log(`security: timing: median of 30 wrong-secret attempts each, ${rounds.join('; ')} (allowed 0.67..1.5)`);
    assert.ok(ratio >= 0.67 && ratio <= 1.5, `known/unknown median ratio outside 0.67..1.5: ${rounds.join('; ')}`);
  });
});
