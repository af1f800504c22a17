/**
 * Telemetry ingest end to end: real hub (aedes on port 0, SQLite in a temp dir), raw mqtt.js
 * clients. Acks come only after commit, cover every record, and de-duplication holds across
 * resends, bad input, storage failures and a hub restart.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { Hub } from '../../hub/main.ts';
import { startHub } from '../helpers/mqtt-clients.ts';
import { toRanges } from '../../hub/ingest/ranges.ts';
import { HUB_DB_FILE } from '../../hub/store/sqlite-store.ts';
import { AckSchema, topics, type Ack, type TelemetryRecord } from '../../shared/protocol.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const MAX_PAYLOAD = 8192;

function startIngestHub(dataDir: string): Promise<Hub> {
  return startHub(dataDir, { limits: { maxPayloadBytes: MAX_PAYLOAD }, store: { busyTimeoutMs: 50 } });
}

async function register(hub: Hub, id: string): Promise<string> {
  const res = await fetch(`${hub.httpUrl}/v1/devices`, {
    method: 'POST',
    headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ id, group: 'g' }),
  });
  assert.equal(res.status, 201);
  return ((await res.json()) as { token: string }).token;
}

interface Agent {
  client: MqttClient;
  acks: Ack[];
  /** Rows in the hub's database at the moment each ack arrived (read through a separate connection). */
  rowsAtAck: number[];
}

const open: MqttClient[] = [];

async function agent(hub: Hub, id: string, token: string, extra: IClientOptions = {}): Promise<Agent> {
  const client = await new Promise<MqttClient>((resolve, reject) => {
    const c = mqtt.connect(hub.mqttUrl, { protocolVersion: 4, reconnectPeriod: 0, clientId: id, username: id, password: token, clean: true, ...extra });
    open.push(c);
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
  const a: Agent = { client, acks: [], rowsAtAck: [] };
  const db = join(hub.config.dataDir, HUB_DB_FILE);
  client.on('message', (topic, payload) => {
    if (topic !== topics.of(id, 'ack')) return;
    const reader = new Database(db, { readonly: true });
    try {
      a.rowsAtAck.push((reader.prepare('SELECT count(*) AS n FROM telemetry WHERE device_id = ?').get(id) as { n: number }).n);
    } finally {
      reader.close();
    }
    a.acks.push(AckSchema.parse(JSON.parse(payload.toString())));
  });
  await client.subscribeAsync(topics.of(id, 'ack'), { qos: 1 });
  return a;
}

async function waitFor(cond: () => boolean, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) assert.fail('timed out waiting');
    await sleep(10);
  }
}

function rec(seq: number, stream = 'inference', epoch = 1): TelemetryRecord {
  return { stream, epoch, seq, ts: 1_700_000_000_000 + seq, kind: 'inference', body: { label: 'ok', seq } };
}

function batch(deviceId: string, batchId: string, records: TelemetryRecord[]): string {
  return JSON.stringify({ v: 1, type: 'telemetry', deviceId, batchId, records });
}

function rowCount(hub: Hub, deviceId: string): Promise<number> {
  return hub.store.queryTelemetry({ deviceId, limit: 1000 }).then((r) => r.length);
}

describe('hub telemetry ingest', () => {
  let dir: string;
  let hub: Hub;
  let token: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-hub-ingest-'));
    hub = await startIngestHub(dir);
    token = await register(hub, 'dev-1');
  });

  after(async () => {
    await Promise.all(open.map((c) => c.endAsync(true).catch(() => undefined)));
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('ranges compress consecutive seqs per (stream, epoch)', () => {
    assert.deepEqual(toRanges([rec(3), rec(1), rec(2), rec(7), rec(0, 'events', 2), rec(2, 'inference', 0), rec(3)]), [
      { stream: 'events', epoch: 2, from: 0, to: 0 },
      { stream: 'inference', epoch: 0, from: 2, to: 2 },
      { stream: 'inference', epoch: 1, from: 1, to: 3 },
      { stream: 'inference', epoch: 1, from: 7, to: 7 },
    ]);
  });

  test('a batch is stored, then acked with ranges covering every record; the ack comes after the commit', async () => {
    const a = await agent(hub, 'dev-1', token);
    const records = [rec(0), rec(1), rec(2), rec(5), rec(6), rec(0, 'events', 2)];
    await a.client.publishAsync(topics.of('dev-1', 'telemetry'), batch('dev-1', 'b1', records), { qos: 1 });
    await waitFor(() => a.acks.length === 1);
    assert.deepEqual(a.acks[0], {
      v: 1,
      type: 'ack',
      batchId: 'b1',
      ok: true,
      stored: 6,
      duplicates: 0,
      ranges: [
        { stream: 'events', epoch: 2, from: 0, to: 0 },
        { stream: 'inference', epoch: 1, from: 0, to: 2 },
        { stream: 'inference', epoch: 1, from: 5, to: 6 },
      ],
    });
    assert.deepEqual(a.rowsAtAck, [6], 'rows were not committed when the ack arrived');
    const stored = await hub.store.queryTelemetry({ deviceId: 'dev-1', stream: 'inference', limit: 100 });
    assert.deepEqual(stored.map((r) => r.seq), [0, 1, 2, 5, 6]);
    assert.deepEqual(stored[0]?.body, { label: 'ok', seq: 0 });

    // The same batch again: acked again, stored once, counted as duplicates.
    await a.client.publishAsync(topics.of('dev-1', 'telemetry'), batch('dev-1', 'b1', records), { qos: 1 });
    await waitFor(() => a.acks.length === 2);
    assert.equal(a.acks[1]?.ok, true);
    assert.equal(a.acks[1]?.stored, 0);
    assert.equal(a.acks[1]?.duplicates, 6);
    assert.deepEqual(a.acks[1]?.ranges, a.acks[0]?.ranges);
    assert.equal(await rowCount(hub, 'dev-1'), 6);
    const dev = await hub.store.getDevice('dev-1');
    assert.equal(dev?.counters.stored, 6);
    assert.equal(dev?.counters.duplicates, 6);
    assert.equal(dev?.counters.gaps, 2, 'seqs 3 and 4 of inference/1 are missing');
    const stats = await hub.store.streamStats('dev-1');
    assert.deepEqual(stats.find((s) => s.stream === 'inference'), { stream: 'inference', epoch: 1, minSeq: 0, maxSeq: 6, count: 5, gaps: 2 });

    // Filling the gap closes it.
    await a.client.publishAsync(topics.of('dev-1', 'telemetry'), batch('dev-1', 'b2', [rec(3), rec(4)]), { qos: 1 });
    await waitFor(() => a.acks.length === 3);
    assert.equal((await hub.store.getDevice('dev-1'))?.counters.gaps, 0);
    await a.client.endAsync();
  });

  test('malformed, schema-invalid, mismatched and oversized messages are counted, never acked, and valid traffic goes on', async () => {
    const before = (await hub.store.getDevice('dev-1'))?.counters;
    const rowsBefore = await rowCount(hub, 'dev-1');
    const a = await agent(hub, 'dev-1', token);
    const t = topics.of('dev-1', 'telemetry');
    await a.client.publishAsync(t, '{"v":1,"type":"telemetry",', { qos: 1 });
    await a.client.publishAsync(t, JSON.stringify({ v: 1, type: 'telemetry', deviceId: 'dev-1', batchId: 'bad', records: [{ stream: 'x', seq: -1 }] }), { qos: 1 });
    await a.client.publishAsync(t, batch('dev-2', 'spoof', [rec(100)]), { qos: 1 });
    await a.client.publishAsync(t, JSON.stringify({ v: 2, type: 'telemetry', deviceId: 'dev-1', batchId: 'future', records: [rec(101)] }), { qos: 1 });
    await a.client.publishAsync(topics.of('dev-1', 'hello'), '[]', { qos: 1 });
    await sleep(200);
    assert.deepEqual(a.acks, []);
    assert.equal(a.client.connected, true, 'bad payloads do not cost the connection');
    let dev = await hub.store.getDevice('dev-1');
    assert.equal(dev?.counters.badMessages, (before?.badMessages ?? 0) + 5);
    const metrics = await hub.registry.getSingleMetricAsString('edgefleet_hub_bad_messages_total');
    assert.match(metrics, /kind="telemetry",code="BAD_PAYLOAD"\} 4/);
    assert.match(metrics, /kind="hello",code="BAD_PAYLOAD"\} 1/);

    // Oversized: refused at the broker (connection closed), counted, not acked, nothing stored.
    const big = batch('dev-1', 'big', [{ ...rec(200), body: { pad: 'x'.repeat(MAX_PAYLOAD) } }]);
    const gone = new Promise<void>((resolve) => a.client.once('close', () => resolve()));
    a.client.publish(t, big, { qos: 1 });
    await gone;
    dev = await hub.store.getDevice('dev-1');
    assert.equal(dev?.counters.badMessages, (before?.badMessages ?? 0) + 6);
    assert.match(await hub.registry.getSingleMetricAsString('edgefleet_hub_mqtt_publish_refused_total'), /reason="too_large"\} 1/);
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore);
    assert.deepEqual(a.acks, []);

    // Far beyond the cap: cut at the packet header, before the body is buffered.
    const c = await agent(hub, 'dev-1', token);
    const cGone = new Promise<void>((resolve) => c.client.once('close', () => resolve()));
    c.client.publish(t, batch('dev-1', 'huge', [{ ...rec(201), body: { pad: 'x'.repeat(200_000) } }]), { qos: 1 });
    await cGone;
    assert.match(await hub.registry.getSingleMetricAsString('edgefleet_hub_mqtt_publish_refused_total'), /reason="packet_too_large"\} 1/);
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore);

    // The hub keeps serving.
    const b = await agent(hub, 'dev-1', token);
    await b.client.publishAsync(t, batch('dev-1', 'good', [rec(7)]), { qos: 1 });
    await waitFor(() => b.acks.length === 1);
    assert.equal(b.acks[0]?.ok, true);
    assert.equal(b.acks[0]?.stored, 1);
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore + 1);
    await b.client.endAsync();
  });

  test('a failed commit (SQLITE_BUSY) acks ok:false, stores nothing, and the resend is stored', async () => {
    const a = await agent(hub, 'dev-1', token);
    const rowsBefore = await rowCount(hub, 'dev-1');
    const locker = new Database(join(dir, HUB_DB_FILE));
    try {
      locker.exec('BEGIN IMMEDIATE'); // holds the write lock: the hub gets SQLITE_BUSY after busy_timeout
      await a.client.publishAsync(topics.of('dev-1', 'telemetry'), batch('dev-1', 'busy', [rec(50), rec(51)]), { qos: 1 });
      await waitFor(() => a.acks.length === 1);
      assert.equal(a.acks[0]?.ok, false);
      assert.equal(a.acks[0]?.error?.code, 'STORAGE');
      assert.deepEqual(a.acks[0]?.ranges, []);
    } finally {
      locker.exec('ROLLBACK');
      locker.close();
    }
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore);
    assert.match(await hub.registry.getSingleMetricAsString('edgefleet_hub_telemetry_batches_total'), /outcome="store_failed"\} 1/);
    await a.client.publishAsync(topics.of('dev-1', 'telemetry'), batch('dev-1', 'busy', [rec(50), rec(51)]), { qos: 1 });
    await waitFor(() => a.acks.length === 2);
    assert.equal(a.acks[1]?.ok, true);
    assert.equal(a.acks[1]?.stored, 2);
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore + 2);
    await a.client.endAsync();
  });

  test('hello and status update the device record; presence follows the connection', async () => {
    const a = await agent(hub, 'dev-1', token, {
      will: { topic: topics.of('dev-1', 'status'), payload: Buffer.from(JSON.stringify({ v: 1, type: 'status', deviceId: 'dev-1', ts: 1, state: 'offline' })), qos: 1, retain: true },
    });
    const hello = {
      v: 1,
      type: 'hello',
      deviceId: 'dev-1',
      ts: Date.now(),
      agentVersion: '0.1.0-test',
      bootEpoch: 3,
      models: [{ name: 'anomaly', version: '1.2.0' }],
      streams: [
        { stream: 'inference', epoch: 3, nextSeq: 40, pending: 5 },
        { stream: 'events', epoch: 3, nextSeq: 2, pending: 1 },
      ],
    };
    await a.client.publishAsync(topics.of('dev-1', 'hello'), JSON.stringify(hello), { qos: 1 });
    await a.client.publishAsync(topics.of('dev-1', 'status'), JSON.stringify({ v: 1, type: 'status', deviceId: 'dev-1', ts: Date.now(), state: 'online' }), { qos: 1, retain: true });
    let dev = await hub.store.getDevice('dev-1');
    assert.equal(dev?.online, true);
    assert.equal(dev?.agentVersion, '0.1.0-test');
    assert.equal(dev?.bootEpoch, 3);
    assert.deepEqual(dev?.models, [{ name: 'anomaly', version: '1.2.0' }]);
    assert.equal(dev?.counters.backlog, 6);
    assert.ok(dev?.lastSeen && Date.now() - dev.lastSeen < 5000);

    // A stale `offline` (e.g. an old connection's will) while connected does not win.
    await a.client.publishAsync(topics.of('dev-1', 'status'), JSON.stringify({ v: 1, type: 'status', deviceId: 'dev-1', ts: Date.now(), state: 'offline' }), { qos: 1 });
    assert.equal((await hub.store.getDevice('dev-1'))?.online, true);

    // Dropping the connection without DISCONNECT: the will fires, the device goes offline.
    a.client.stream.destroy();
    await waitFor(() => !a.client.connected);
    for (let i = 0; i < 100; i++) {
      dev = await hub.store.getDevice('dev-1');
      if (!dev?.online) break;
      await sleep(20);
    }
    assert.equal(dev?.online, false);
  });

  test('after a restart on the same data dir, data, tokens and dedup persist', async () => {
    const rowsBefore = await rowCount(hub, 'dev-1');
    const adminBefore = hub.adminToken;
    assert.deepEqual(await hub.stop(), []);
    hub = await startIngestHub(dir);
    assert.equal(hub.adminToken, adminBefore);
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore);
    const dev = await hub.store.getDevice('dev-1');
    assert.equal(dev?.online, false);
    assert.equal(dev?.agentVersion, '0.1.0-test');
    const a = await agent(hub, 'dev-1', token);
    await a.client.publishAsync(topics.of('dev-1', 'telemetry'), batch('dev-1', 'again', [rec(0), rec(1), rec(300)]), { qos: 1 });
    await waitFor(() => a.acks.length === 1);
    assert.equal(a.acks[0]?.stored, 1);
    assert.equal(a.acks[0]?.duplicates, 2);
    assert.equal(await rowCount(hub, 'dev-1'), rowsBefore + 1);
    await a.client.endAsync();
  });
});
