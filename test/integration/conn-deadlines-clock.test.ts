/**
 * Connection deadlines run on real time, not on the hub's injected clock. Tests (and any
 * embedding that simulates business time) move that clock by hours to bake rollouts and age
 * windows; before this test the connection limiter shared it, so the next sweep after a jump
 * closed every idle keep-alive socket as "past its header deadline" and MQTT clients still
 * authenticating. A client reusing its keep-alive socket at that moment saw ECONNRESET
 * (hub-rollouts "waves advance with the defaults" failed CI that way).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { createHub, type Hub } from '../../hub/main.ts';
import { loadHubConfig } from '../../hub/config.ts';
import { silentLogger } from '../../shared/log.ts';
import { FakeClock } from './hub-rollouts-fixture.ts';

describe('connection deadlines and the hub clock', () => {
  let dir: string;
  let hub: Hub;
  const clock = new FakeClock();

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgefleet-conn-clock-'));
    const config = loadHubConfig({
      env: {},
      overrides: {
        dataDir: dir,
        mqtt: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        log: { level: 'silent' },
        limits: { connections: { sweepMs: 50 } },
      },
    });
    hub = await createHub(config, { log: silentLogger(), now: clock.now });
    await hub.start(new AbortController().signal);
  });

  after(async () => {
    await hub.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an idle keep-alive socket survives the hub clock jumping an hour', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const url = new URL(hub.httpUrl);
    const get = (): Promise<{ status: number; socket: Socket }> =>
      new Promise((resolve, reject) => {
        const req = request({ host: url.hostname, port: url.port, path: '/healthz', agent }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, socket: req.socket as Socket }));
        });
        req.on('error', reject);
        req.end();
      });
    try {
      const first = await get();
      assert.equal(first.status, 200);
      clock.advance(60 * 60_000);
      await sleep(300); // several sweeps (50 ms) on real time; the header deadline is 10 s
      assert.equal(first.socket.destroyed, false, 'the idle keep-alive socket was closed after the clock jump');
      const second = await get();
      assert.equal(second.status, 200);
      assert.equal(second.socket, first.socket, 'the same keep-alive socket served the second request');
    } finally {
      agent.destroy();
    }
  });
});
