/**
 * Issue #15 against a real hub (aedes on port 0, SQLite in a temp dir, raw mqtt.js clients): one
 * telemetry batch from each of 250 devices at once is answered, every one. Before the fix the
 * ingest handler held an aedes delivery slot (mqemitter concurrency 100) while it waited for its
 * own ack to be delivered, which needed a slot too: past 100 batches in flight the hub stopped
 * answering for good (50 of 300 acks, the rest never; bench:scale saw 50 of 10,000).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import type { Hub } from '../../hub/main.ts';
import { hashToken, newSecret } from '../../hub/auth/tokens.ts';
import { AckSchema, topics } from '../../shared/protocol.ts';
import { batch, clients, connect, startHub } from '../helpers/mqtt-clients.ts';

const DEVICES = 250;

describe('telemetry storm: one batch from every device at once', () => {
  let dir: string;
  let hub: Hub;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-telemetry-storm-'));
    hub = await startHub(dir);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test(`${DEVICES} batches in flight together are all acked`, async () => {
    const devices: { id: string; c: MqttClient }[] = [];
    for (let base = 0; base < DEVICES; base += 50) {
      const chunk = await Promise.all(
        Array.from({ length: Math.min(50, DEVICES - base) }, async (_, k) => {
          const id = `storm-${base + k}`;
          const token = newSecret();
          await hub.store.createPrincipal({ id, kind: 'device', group: 'storm', labels: {}, token: await hashToken(token), createdAt: Date.now() });
          const c = await connect(hub, { clientId: id, username: id, password: token });
          await c.subscribeAsync(topics.of(id, 'ack'), { qos: 1 });
          return { id, c };
        }),
      );
      devices.push(...chunk);
    }
    const t0 = performance.now();
    const answered = devices.map(
      ({ id, c }) =>
        new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), 20_000);
          c.on('message', (topic, payload) => {
            if (topic !== topics.of(id, 'ack')) return;
            clearTimeout(timer);
            resolve(AckSchema.parse(JSON.parse(payload.toString())).ok);
          });
          c.publish(topics.of(id, 'telemetry'), batch(id, 1), { qos: 1 });
        }),
    );
    const results = await Promise.all(answered);
    const acked = results.filter(Boolean).length;
    console.log(`ingest: ${acked} of ${DEVICES} batches sent at once acked in ${(performance.now() - t0).toFixed(0)} ms`);
    assert.equal(acked, DEVICES);
  });
});
