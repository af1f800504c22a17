/**
 * The hub on an existing broker (issue #15, `broker: { kind: external }`): a real Mosquitto 2
 * with the dynsec plugin (test/helpers/mosquitto.ts), a real hub whose bus is an mqtt.js client
 * of it (hub/broker/external-bus.ts) and which provisions principals through dynsec, and real
 * mqtt.js device clients (MQTT 3.1.1, as the agents speak) logging in to Mosquitto with the
 * tokens the hub API handed out. The hub's own connections go through a TCP proxy so the test
 * can cut them under device telemetry.
 *
 * Needs Debian's mosquitto: fails in CI without it, skips elsewhere with the reason.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Registry } from 'prom-client';
import { ExternalBus } from '../../hub/broker/external-bus.ts';
import { DynsecProvisioner } from '../../hub/broker/mosquitto-dynsec.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { silentLogger } from '../../shared/log.ts';
import { topics } from '../../shared/protocol.ts';
import { findMosquitto, startMosquitto, type Mosquitto } from '../helpers/mosquitto.ts';
import { api, batch, closed, register, sleep } from '../helpers/mqtt-clients.ts';
import { TcpProxy } from '../helpers/tcp-proxy.ts';

const install = findMosquitto();
const missing = 'missing' in install ? install.missing : undefined;
if (missing && process.env.CI) throw new Error(`test/integration/external-broker.test.ts needs Mosquitto 2 with the dynsec plugin in CI: ${missing}`);

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('hub on an external Mosquitto broker', { skip: missing }, () => {
  let broker: Mosquitto;
  let proxy: TcpProxy;
  let hub: Hub;
  let dir: string;
  let hubConfig: Hub['config'];
  const hubUser = { username: 'edgefleet-hub', password: randomUUID() };
  const clients: MqttClient[] = [];
  const buses: ExternalBus[] = [];

  function device(id: string, token: string, extra: IClientOptions = {}): Promise<MqttClient> {
    return new Promise((resolve, reject) => {
      const c = mqtt.connect(broker.url, { protocolVersion: 4, clientId: id, username: id, password: token, reconnectPeriod: 0, connectTimeout: 3000, clean: true, ...extra });
      clients.push(c);
      c.once('connect', () => resolve(c));
      c.once('error', reject);
      c.once('close', () => reject(new Error('closed before connect')));
    });
  }

  const stored = async (deviceId: string): Promise<number[]> => {
    const rows = await hub.store.queryTelemetry({ deviceId, limit: 10_000 });
    return rows.map((r) => r.seq);
  };

  before(async () => {
    if ('missing' in install) return;
    broker = await startMosquitto(install);
    proxy = new TcpProxy('127.0.0.1', broker.port);
    await proxy.start();
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-external-broker-'));
    const config = loadHubConfig({
      env: {},
      overrides: {
        dataDir: dir,
        http: { host: '127.0.0.1', port: 0 },
        log: { level: 'silent' },
        broker: {
          kind: 'external',
          url: proxy.url,
          username: hubUser.username,
          password: hubUser.password,
          subscribers: 2,
          reconnect: { initialMs: 100, maxMs: 500 },
          dynsec: { enabled: true, adminUsername: broker.admin.username, adminPassword: broker.admin.password },
        },
      },
    });
    hubConfig = config;
    hub = await createHub(config, { log: silentLogger() });
    await hub.start(new AbortController().signal);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    await Promise.all(buses.map((b) => b.stop()));
    if (hub) assert.deepEqual(await hub.stop(), []);
    await proxy?.stop();
    await broker?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('mqttUrl is the external broker; the hub has no listener of its own', () => {
    assert.equal(hub.mqttUrl, proxy.url);
    assert.equal(hub.mqttPort, 0);
  });

  test('a registered device logs in to Mosquitto; its telemetry is stored once and acked after the commit', async () => {
    const token = await register(hub, { id: 'dev-a' });
    const a = await device('dev-a', token);
    const acks: Record<string, unknown>[] = [];
    a.on('message', (topic, payload) => {
      if (topic === topics.of('dev-a', 'ack')) acks.push(JSON.parse(payload.toString()) as Record<string, unknown>);
    });
    await a.subscribeAsync(`edgefleet/v1/dev-a/#`, { qos: 1 });
    await a.publishAsync(topics.of('dev-a', 'telemetry'), batch('dev-a', 1), { qos: 1 });
    await until('the first ack', () => acks.length === 1);
    assert.equal(acks[0]?.ok, true);
    assert.equal(acks[0]?.stored, 1);
    // A resend (the ack was lost) is acked again as a duplicate, and stored once.
    await a.publishAsync(topics.of('dev-a', 'telemetry'), batch('dev-a', 1), { qos: 1 });
    await until('the second ack', () => acks.length === 2);
    assert.equal(acks[1]?.duplicates, 1);
    assert.deepEqual(await stored('dev-a'), [1]);

    // A command from the hub reaches the device through Mosquitto.
    const cmds: string[] = [];
    a.on('message', (topic, payload) => {
      if (topic === topics.of('dev-a', 'cmd')) cmds.push(payload.toString());
    });
    await hub.commands.send('dev-a', { v: 1, type: 'command', id: 'c-1', ts: Date.now(), name: 'ping', args: {} });
    await until('the command', () => cmds.length === 1);
    assert.equal((JSON.parse(cmds[0] ?? '{}') as { id?: string }).id, 'c-1');
  });

  test('presence comes from the retained status: online, then the last-will offline', async () => {
    const token = await register(hub, { id: 'dev-p' });
    const status = (state: string): string => JSON.stringify({ v: 1, type: 'status', deviceId: 'dev-p', ts: Date.now(), state });
    const p = await device('dev-p', token, { will: { topic: topics.of('dev-p', 'status'), payload: Buffer.from(status('offline')), qos: 1, retain: true } });
    await p.publishAsync(topics.of('dev-p', 'status'), status('online'), { qos: 1, retain: true });
    const online = async (): Promise<boolean | undefined> => (await hub.store.getDevice('dev-p'))?.online;
    await until('online', async () => (await online()) === true);
    // A dropped connection (no DISCONNECT): Mosquitto publishes the will.
    p.stream.destroy();
    await until('offline', async () => (await online()) === false);
  });

  test('the ACL holds on Mosquitto: a device cannot publish on another device\'s topics', async () => {
    const tokenB = await register(hub, { id: 'dev-b' });
    const tokenC = await register(hub, { id: 'dev-c' });
    const c = await device('dev-c', tokenC);
    // dev-c forges a batch into dev-b's subtree: Mosquitto drops it silently (3.1.1 has no negative PUBACK).
    await c.publishAsync(topics.of('dev-b', 'telemetry'), batch('dev-b', 7), { qos: 1 });
    // dev-c may not pose as the hub on its own ack topic either.
    const b = await device('dev-b', tokenB);
    const acks: string[] = [];
    b.on('message', (_t, payload) => acks.push(payload.toString()));
    await b.subscribeAsync(topics.of('dev-b', 'ack'), { qos: 1 });
    await c.publishAsync(topics.of('dev-b', 'ack'), JSON.stringify({ v: 1, type: 'ack', batchId: 'forged', ok: true, ranges: [], stored: 0, duplicates: 0 }), { qos: 1 });
    // A legitimate batch of dev-b afterwards: once its ack is in, the forged ones would have been too.
    await b.publishAsync(topics.of('dev-b', 'telemetry'), batch('dev-b', 8), { qos: 1 });
    await until('dev-b ack', () => acks.length >= 1);
    await sleep(200);
    assert.deepEqual(await stored('dev-b'), [8]);
    assert.equal(acks.length, 1);
    assert.ok(!acks.some((a) => a.includes('forged')));
  });

  test('a revoked device is dropped and refused by Mosquitto', async () => {
    const token = await register(hub, { id: 'dev-r' });
    const r = await device('dev-r', token);
    const res = await api(hub, 'POST', '/v1/devices/dev-r/revoke', hub.adminToken);
    assert.equal(res.status, 200, JSON.stringify(res.json));
    assert.ok(await closed(r, 3000), 'the broker dropped the revoked device');
    await assert.rejects(device('dev-r', token), (err: { code?: number }) => err.code === 5 || err.code === 4);
  });

  test('a principal the broker cannot provision is not registered: the API caller gets 503', async () => {
    proxy.cut(); // the hub's dynsec admin connection goes through the proxy too
    try {
      const res = await api(hub, 'POST', '/v1/devices', hub.adminToken, { id: 'dev-x' });
      assert.equal(res.status, 503, JSON.stringify(res.json));
      assert.match(String((res.json.error as { message?: string } | undefined)?.message), /dev-x not registered: the MQTT broker could not provision it/);
    } finally {
      proxy.heal();
    }
    assert.equal((await api(hub, 'GET', '/v1/devices/dev-x', hub.adminToken)).status, 404);
    // Once the broker is back (the admin connection reconnects on its own) the same id registers, and logs in to Mosquitto.
    let created: { status: number; json: Record<string, unknown> } | undefined;
    await until('dev-x registered', async () => (created = await api(hub, 'POST', '/v1/devices', hub.adminToken, { id: 'dev-x' })).status === 201, 10_000);
    await device('dev-x', String(created?.json.token));
  });

  test('an enrolled device is provisioned on Mosquitto too', async () => {
    const t = await api(hub, 'POST', '/v1/enrollment-tokens', hub.adminToken, { group: 'line-1' });
    assert.equal(t.status, 201, JSON.stringify(t.json));
    const e = await api(hub, 'POST', '/v1/enroll', undefined, { token: t.json.token, id: 'dev-e' });
    assert.ok(e.status === 200 || e.status === 201, JSON.stringify(e.json));
    await device('dev-e', String(e.json.token));
  });

  test('shared subscriptions: two buses in one group split 200 QoS 1 messages, each exactly once', async () => {
    const token = await register(hub, { id: 'dev-s' });
    const seen: string[][] = [[], []];
    for (const i of [0, 1]) {
      const bus = new ExternalBus({
        url: broker.url,
        username: hubUser.username,
        password: hubUser.password,
        clientIdPrefix: `split${i}`,
        shareGroup: 'split-test',
        subscribers: 1,
        keepaliveSeconds: 30,
        connectTimeoutMs: 3000,
        startTimeoutMs: 5000,
        reconnect: { initialMs: 100, maxMs: 500, factor: 2, jitter: 0.5 },
        log: silentLogger(),
        registry: new Registry(),
      });
      buses.push(bus);
      await bus.subscribe('edgefleet/v1/+/split', async (_t, payload) => {
        seen[i]?.push(payload.toString());
        await sleep(1); // the PUBACK waits for this
      });
      await bus.start(new AbortController().signal);
    }
    const s = await device('dev-s', token);
    for (let n = 0; n < 200; n++) await s.publishAsync('edgefleet/v1/dev-s/split', `m${n}`, { qos: 1 });
    await until('all 200', () => (seen[0]?.length ?? 0) + (seen[1]?.length ?? 0) >= 200);
    await sleep(200);
    const [x = [], y = []] = seen;
    assert.ok(x.length > 0 && y.length > 0, `both members got some (${x.length}, ${y.length})`);
    assert.equal(x.length + y.length, 200);
    const union = new Set([...x, ...y]);
    assert.equal(union.size, 200, 'disjoint, and every message');
  });

  test('the hub\'s broker connection drops under telemetry: it reconnects, nothing is lost, resends are stored once', async () => {
    const token = await register(hub, { id: 'dev-d' });
    const d = await device('dev-d', token);
    const N = 300;
    const unacked = new Map<number, number>(); // seq -> last sent
    d.on('message', (topic, payload) => {
      if (topic !== topics.of('dev-d', 'ack')) return;
      const ack = JSON.parse(payload.toString()) as { ok: boolean; batchId: string };
      if (ack.ok) unacked.delete(Number(ack.batchId.slice(1)));
    });
    await d.subscribeAsync(topics.of('dev-d', 'ack'), { qos: 1 });
    let resends = 0;
    // What the agent's link does, reduced: unacked batches are resent after an ack timeout.
    const resender = setInterval(() => {
      const now = Date.now();
      for (const [seq, at] of unacked) {
        if (now - at < 1000) continue;
        unacked.set(seq, now);
        resends++;
        d.publish(topics.of('dev-d', 'telemetry'), batch('dev-d', seq), { qos: 1 });
      }
    }, 200);
    try {
      for (let seq = 1; seq <= N; seq++) {
        unacked.set(seq, Date.now());
        d.publish(topics.of('dev-d', 'telemetry'), batch('dev-d', seq), { qos: 1 });
        if (seq === 100) proxy.cut();
        if (seq === 200) proxy.heal();
        await sleep(5);
      }
      await until('every batch acked', () => unacked.size === 0, 20_000);
    } finally {
      clearInterval(resender);
      proxy.heal();
    }
    const seqs = await stored('dev-d');
    const distinct = new Set(seqs);
    const lost = N - [...distinct].filter((s) => s >= 1 && s <= N).length;
    const duplicated = seqs.length - distinct.size;
    const metrics = await hub.registry.getSingleMetricAsString('edgefleet_hub_external_broker_connection_lost_total');
    console.log(`reliability: external-broker-drop lost=${lost} duplicated=${duplicated} (batches=${N}, resends=${resends})`);
    assert.equal(lost, 0);
    assert.equal(duplicated, 0);
    assert.ok(resends > 0, 'the cut made the device resend');
    assert.match(metrics, /connection_lost_total\{role="worker0"\} [1-9]/);
  });

  test('a restarted hub reconciles dynsec: live principals re-enabled, revoked ones removed', async () => {
    const admin = new DynsecProvisioner({ url: broker.url, username: broker.admin.username, password: broker.admin.password, log: silentLogger(), timeoutMs: 3000 });
    await admin.start(new AbortController().signal);
    try {
      // Drift while the hub is down: a live device disabled, a revoked one back on the broker.
      assert.deepEqual(await hub.stop(), []);
      await admin.command({ command: 'disableClient', username: 'dev-a' });
      await admin.provision({ id: 'dev-r', kind: 'device', deviceId: null, password: 'not-its-token-anymore' });
      hub = await createHub(hubConfig, { log: silentLogger() });
      await hub.start(new AbortController().signal);
      assert.equal((await admin.getClient('dev-a'))?.disabled ?? false, false);
      assert.equal(await admin.getClient('dev-r'), undefined);
    } finally {
      await admin.stop();
    }
  });
});
