/**
 * Per-principal broker quotas (issue #14, hub/broker/quotas.ts) against a real hub: aedes on
 * port 0 behind the hub's auth and ACLs, SQLite in a temp dir, raw mqtt.js clients. Caps are
 * set small so a flood of 10x the cap is quick; the hub's clock is skewed forward for session
 * expiry. Each test prints `security: broker-quotas <class>: <figures>`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { IClientOptions, MqttClient } from 'mqtt';
import pino from 'pino';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { TOPIC_ROOT } from '../../shared/protocol.ts';
import { until } from '../helpers/fleet-in-process.ts';
import { clients, closed, collect, connect, register, sleep } from '../helpers/mqtt-clients.ts';

const CAPS = { queuedMessages: 20, queuedBytes: 64 * 1024, retainedMessages: 5, retainedBytes: 8192, subscriptions: 8, sessionExpiryMs: 3_600_000 };
const figure = (cls: string, text: string): void => console.log(`security: broker-quotas ${cls}: ${text}`);

describe('broker quotas per principal', () => {
  let dir: string;
  let hub: Hub;
  let skew = 0;
  const tokens = new Map<string, string>();
  const warnings: { msg: string; principal?: string; suppressed?: number }[] = [];

  async function principal(id: string, kind: 'device' | 'sensor' | 'consumer' = 'device'): Promise<void> {
    tokens.set(id, await register(hub, { id, kind, ...(kind === 'device' ? { group: 'q' } : {}) }));
  }
  const as = (id: string, opts: IClientOptions = {}): Promise<MqttClient> => connect(hub, { clientId: id, username: id, password: tokens.get(id), ...opts });

  async function drops(kind: string, limit: string): Promise<number> {
    const text = await hub.registry.metrics();
    const line = text.split('\n').find((l) => l.startsWith(`edgefleet_hub_broker_quota_drops_total{kind="${kind}",limit="${limit}"}`));
    return line ? Number(line.split(' ').pop()) : 0;
  }

  /** SUBACK codes of one SUBSCRIBE packet carrying `filters`. */
  async function suback(c: MqttClient, filters: string[]): Promise<number[]> {
    const map = Object.fromEntries(filters.map((f) => [f, { qos: 1 as const }]));
    try {
      return (await c.subscribeAsync(map)).map((g) => g.qos);
    } catch (err) {
      const granted = (err as { packet?: { granted?: number[] } }).packet?.granted;
      assert.ok(granted, `unexpected subscribe error ${String(err)}`);
      return granted;
    }
  }

  /** A persistent session subscribed to `filter`, left offline. */
  async function offlineSession(id: string, filter: string): Promise<void> {
    const c = await as(id, { clean: false });
    await c.subscribeAsync(filter, { qos: 1 });
    await c.endAsync();
    await until(() => hub.broker.quotaUsage(id).offlineSince !== null, 5000, `${id} offline`);
  }

  /** Publishes `n` QoS 1 messages from `c`, all in flight at once. */
  async function flood(c: MqttClient, topic: (i: number) => string, payload: (i: number) => string, n: number, retain = false): Promise<void> {
    await Promise.all(Array.from({ length: n }, (_, i) => c.publishAsync(topic(i), payload(i), { qos: 1, retain })));
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-quotas-'));
    const config = loadHubConfig({
      env: {},
      overrides: { dataDir: dir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, limits: { brokerQuotas: CAPS } },
    });
    // Warnings captured: a flood of drops must log a few lines, not one per drop.
    const log = pino({ level: 'warn' }, { write: (line: string) => void warnings.push(JSON.parse(line) as (typeof warnings)[number]) });
    hub = await createHub(config, { log, now: () => Date.now() + skew });
    await hub.start(new AbortController().signal);
    for (const id of ['dev-a', 'dev-b', 'dev-c', 'dev-d', 'dev-e']) await principal(id);
    for (const id of ['mes-1', 'mes-2', 'mes-3', 'mes-4', 'mes-5', 'mes-6']) await principal(id, 'consumer');
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('offline persistent session: a flood of 10x the cap leaves the first N queued, drops counted, the hub keeps a reserve', async () => {
    await offlineSession('mes-1', `${TOPIC_ROOT}/dev-a/out/#`);
    const dev = await as('dev-a');
    const n = 10 * CAPS.queuedMessages;
    const before = await drops('queued', 'count');
    await flood(dev, () => `${TOPIC_ROOT}/dev-a/out/p`, (i) => JSON.stringify({ n: i }), n);
    await until(async () => (await drops('queued', 'count')) - before >= n - CAPS.queuedMessages, 5000, 'drops counted');
    const atCap = hub.broker.quotaUsage('mes-1');
    assert.equal(atCap.queued, CAPS.queuedMessages);
    assert.equal((await drops('queued', 'count')) - before, n - CAPS.queuedMessages);
    // The hub's own message (a command or an alert) still gets in: a tenth above the cap.
    await hub.broker.publish(`${TOPIC_ROOT}/dev-a/out/hub`, Buffer.from('from the hub'), { qos: 1 });
    assert.equal(hub.broker.quotaUsage('mes-1').queued, CAPS.queuedMessages + 1);

    const back = await as('mes-1', { clean: false });
    const got = collect(back);
    await until(() => got.length >= CAPS.queuedMessages + 1, 5000, 'queued messages delivered');
    await sleep(200);
    const flooded = got.filter((m) => m.topic.endsWith('/p')).map((m) => (JSON.parse(m.payload) as { n: number }).n);
    // The first N are kept: a drop on arrival never touches a message already sent with a packet id.
    assert.deepEqual(flooded, Array.from({ length: CAPS.queuedMessages }, (_, i) => i));
    assert.equal(got.filter((m) => m.payload === 'from the hub').length, 1);
    const logged = warnings.filter((w) => w.principal === 'mes-1' && w.msg.startsWith('message not queued'));
    assert.ok(logged.length >= 1 && logged.length <= 2, `${logged.length} warnings for ${n - CAPS.queuedMessages} drops`);
    await until(() => hub.broker.quotaUsage('mes-1').queued === 0, 5000, 'queue emptied by the acks');
    figure('queued', `sent ${n} QoS 1 to an offline session, queued ${atCap.queued} (${atCap.queuedBytes} B), dropped ${n - atCap.queued} (${logged.length} warning logged), delivered on reconnect ${flooded.length} (the first ${CAPS.queuedMessages}) + 1 from the hub in its reserve`);
    await back.endAsync();
    await dev.endAsync();
  });

  test('offline persistent session: the byte cap holds with large messages', async () => {
    await offlineSession('mes-2', `${TOPIC_ROOT}/dev-b/out/#`);
    const dev = await as('dev-b');
    const payload = 'x'.repeat(8 * 1024);
    const n = Math.ceil((10 * CAPS.queuedBytes) / payload.length);
    const before = await drops('queued', 'bytes');
    await flood(dev, () => `${TOPIC_ROOT}/dev-b/out/big`, () => payload, n);
    await until(async () => hub.broker.quotaUsage('mes-2').queued + (await drops('queued', 'bytes')) - before >= n, 5000, 'all accounted');
    const u = hub.broker.quotaUsage('mes-2');
    assert.ok(u.queuedBytes <= CAPS.queuedBytes, `${u.queuedBytes} B queued`);
    assert.ok(u.queuedBytes > CAPS.queuedBytes - payload.length - 64, `${u.queuedBytes} B queued: should fill the cap`);
    figure('queued-bytes', `sent ${n} x ${payload.length} B (${n * payload.length} B) to an offline session, queued ${u.queued} (${u.queuedBytes} B of ${CAPS.queuedBytes}), dropped ${n - u.queued}`);
    await dev.endAsync();
  });

  test('online persistent session under the same flood: everything delivered, not disconnected', async () => {
    const c = await as('mes-3', { clean: false });
    await c.subscribeAsync(`${TOPIC_ROOT}/dev-c/out/#`, { qos: 1 });
    const got = collect(c);
    const dev = await as('dev-c');
    const n = 10 * CAPS.queuedMessages;
    const before = await drops('queued', 'count');
    await flood(dev, () => `${TOPIC_ROOT}/dev-c/out/p`, (i) => String(i), n);
    await until(() => got.length >= n, 10_000, `${n} delivered (got ${got.length})`);
    assert.equal(c.connected, true);
    assert.equal(new Set(got.map((m) => m.payload)).size, n);
    await until(() => hub.broker.quotaUsage('mes-3').queued === 0, 5000, 'nothing left queued');
    const past = (await drops('queued', 'count')) - before;
    figure('queued-online', `sent ${n} QoS 1 to a connected persistent session: ${got.length} delivered, ${past} of them past the queue cap (sent live, at most once), still connected`);
    await c.endAsync();
    await dev.endAsync();
  });

  test('retained flood: one principal stops at its cap, deletes and replacements still work, another principal can still retain', async () => {
    const dev = await as('dev-a');
    const n = 10 * CAPS.retainedMessages;
    const before = await drops('retained', 'count');
    await flood(dev, (i) => `${TOPIC_ROOT}/dev-a/out/r${i}`, (i) => `v${i}`, n, true);
    await until(async () => (await drops('retained', 'count')) - before >= n - CAPS.retainedMessages, 5000, 'retained drops counted');
    assert.equal(hub.broker.quotaUsage('dev-a').retained, CAPS.retainedMessages);

    const reader = await as('mes-4');
    const seen = collect(reader);
    await reader.subscribeAsync(`${TOPIC_ROOT}/dev-a/out/#`, { qos: 1 });
    await until(() => seen.length >= CAPS.retainedMessages, 5000, 'retained delivered');
    await sleep(200);
    const retained = seen.filter((m) => m.retain).length;
    assert.equal(retained, CAPS.retainedMessages);
    // At the cap: replacing an own topic is accepted, a delete (empty payload) frees a slot.
    const [first, second] = seen.map((m) => m.topic);
    assert.ok(first && second);
    const retainedOf = (id: string): number => hub.broker.quotaUsage(id).retained;
    await dev.publishAsync(first, 'replaced', { qos: 1, retain: true });
    await dev.publishAsync(second, '', { qos: 1, retain: true });
    await until(() => retainedOf('dev-a') === CAPS.retainedMessages - 1, 5000, 'deleted');
    await dev.publishAsync(`${TOPIC_ROOT}/dev-a/out/new`, 'new', { qos: 1, retain: true });
    await until(() => retainedOf('dev-a') === CAPS.retainedMessages, 5000, 'a new one in the freed slot');
    // Another principal is not affected.
    const other = await as('dev-b');
    await other.publishAsync(`${TOPIC_ROOT}/dev-b/out/status`, 'b', { qos: 1, retain: true });
    await until(() => retainedOf('dev-b') === 1, 5000, 'dev-b retains');
    const fresh = await as('mes-2');
    const seen2 = collect(fresh);
    await fresh.subscribeAsync([`${TOPIC_ROOT}/dev-b/out/status`, `${TOPIC_ROOT}/dev-a/out/#`], { qos: 1 });
    await until(() => seen2.some((m) => m.payload === 'b') && seen2.some((m) => m.payload === 'replaced') && seen2.some((m) => m.payload === 'new'), 5000, 'retained of both');
    assert.equal(seen2.filter((m) => m.topic.startsWith(`${TOPIC_ROOT}/dev-a/`)).length, CAPS.retainedMessages);
    // Bytes: 2 KiB payloads stop at the byte cap.
    const big = await as('dev-c');
    const bytesBefore = await drops('retained', 'bytes');
    await flood(big, (i) => `${TOPIC_ROOT}/dev-c/out/big${i}`, () => 'y'.repeat(2048), 20, true);
    await until(async () => retainedOf('dev-c') + (await drops('retained', 'bytes')) - bytesBefore >= 20, 5000, 'all accounted');
    const u = hub.broker.quotaUsage('dev-c');
    assert.ok(u.retainedBytes <= CAPS.retainedBytes && u.retained === 3, JSON.stringify(u));
    assert.equal((await drops('retained', 'bytes')) - bytesBefore, 20 - u.retained);
    figure('retained', `${n} retained publishes from one principal: ${retained} retained (cap ${CAPS.retainedMessages}), ${n - retained} delivered but not retained; another principal retained 1; 20 x 2 KiB: ${u.retained} retained (${u.retainedBytes} B of ${CAPS.retainedBytes})`);
    for (const c of [dev, reader, other, fresh, big]) await c.endAsync();
  });

  test('subscription flood: SUBACK 128 past the cap; refused filters never enter a persistent session', async () => {
    const c = await as('dev-d');
    const n = 10 * CAPS.subscriptions;
    const before = await drops('subscription', 'count');
    const codes = await suback(
      c,
      Array.from({ length: n }, (_, i) => `${TOPIC_ROOT}/dev-d/in/s${i}`),
    );
    assert.equal(codes.filter((q) => q === 1).length, CAPS.subscriptions);
    assert.equal(codes.filter((q) => q === 128).length, n - CAPS.subscriptions);
    assert.equal((await drops('subscription', 'count')) - before, n - CAPS.subscriptions);
    assert.equal(hub.broker.quotaUsage('dev-d').subscriptions, CAPS.subscriptions);
    // An unsubscribe frees a slot; the connection is still usable.
    await c.unsubscribeAsync(`${TOPIC_ROOT}/dev-d/in/s0`);
    assert.deepEqual(await suback(c, [`${TOPIC_ROOT}/dev-d/in/again`, `${TOPIC_ROOT}/dev-d/in/more`]), [1, 128]);
    await c.endAsync();

    // aedes stores a SUBSCRIBE's whole filter list in a persistent session, refused ones too:
    // before the fix, '#' below (SUBACK 128) still queued every QoS 1 message of the fleet.
    const e = await as('dev-e', { clean: false });
    assert.deepEqual(await suback(e, [`${TOPIC_ROOT}/dev-e/cmd`, '#']), [1, 128]);
    await e.endAsync();
    await until(() => hub.broker.quotaUsage('dev-e').offlineSince !== null, 5000, 'dev-e offline');
    const dev = await as('dev-b');
    await flood(dev, () => `${TOPIC_ROOT}/dev-b/telemetry-x`, () => 'z', 50);
    await sleep(100);
    assert.equal(hub.broker.quotaUsage('dev-e').queued, 0);
    figure('subscriptions', `${n} filters in one SUBSCRIBE: ${CAPS.subscriptions} granted, ${n - CAPS.subscriptions} SUBACK 128; a refused '#' in a persistent session queued ${hub.broker.quotaUsage('dev-e').queued} of 50 fleet messages`);
    await dev.endAsync();
  });

  test('a persistent session offline longer than the expiry is dropped, with its queue', async () => {
    await offlineSession('mes-4', `${TOPIC_ROOT}/dev-a/out/#`);
    const dev = await as('dev-a');
    await flood(dev, () => `${TOPIC_ROOT}/dev-a/out/e`, (i) => String(i), 5);
    await until(() => hub.broker.quotaUsage('mes-4').queued === 5, 5000, 'queued');
    assert.deepEqual(await hub.broker.expireSessions(), [], 'nothing due yet');
    const before = await drops('session', 'expired');
    skew += CAPS.sessionExpiryMs + 1000;
    const dropped = await hub.broker.expireSessions();
    assert.ok(dropped.includes('mes-4'), dropped.join(','));
    assert.deepEqual(hub.broker.quotaUsage('mes-4'), { queued: 0, queuedBytes: 0, retained: 0, retainedBytes: 0, subscriptions: 0, offlineSince: null });
    assert.equal((await drops('session', 'expired')) - before, dropped.length);
    const back = await as('mes-4', { clean: false });
    const got = collect(back);
    await flood(dev, () => `${TOPIC_ROOT}/dev-a/out/e`, () => 'after', 3);
    await sleep(300);
    assert.equal(got.length, 0, 'the session and its subscriptions are gone');
    assert.equal(await closed(back, 10), false);
    figure('sessions', `a session offline for ${CAPS.sessionExpiryMs / 3_600_000} h + 1 s dropped with its 5 queued messages (sessions dropped: ${dropped.length}); one session per principal (client id = principal id)`);
    await back.endAsync();
    await dev.endAsync();
  });

  test("a revoked principal's persistent session is dropped at once, offline or still connected", async () => {
    await offlineSession('mes-5', `${TOPIC_ROOT}/dev-a/out/#`);
    const online = await as('mes-6', { clean: false });
    await online.subscribeAsync(`${TOPIC_ROOT}/dev-a/out/#`, { qos: 1 });
    const dev = await as('dev-a');
    await flood(dev, () => `${TOPIC_ROOT}/dev-a/out/v`, (i) => String(i), 5);
    await until(() => hub.broker.quotaUsage('mes-5').queued === 5, 5000, 'queued');
    const before = await drops('session', 'revoked');
    for (const id of ['mes-5', 'mes-6']) {
      const res = await fetch(`${hub.httpUrl}/v1/devices/${id}/revoke`, { method: 'POST', headers: { authorization: `Bearer ${hub.adminToken}` } });
      assert.equal(res.status, 200, await res.text());
    }
    assert.equal(await closed(online, 5000), true);
    await until(async () => (await drops('session', 'revoked')) - before === 2, 5000, 'both sessions dropped');
    for (const id of ['mes-5', 'mes-6']) assert.deepEqual(hub.broker.quotaUsage(id), { queued: 0, queuedBytes: 0, retained: 0, retainedBytes: 0, subscriptions: 0, offlineSince: null });
    await flood(dev, () => `${TOPIC_ROOT}/dev-a/out/v`, () => 'after', 3);
    await sleep(100);
    assert.equal(hub.broker.quotaUsage('mes-5').queued + hub.broker.quotaUsage('mes-6').queued, 0, 'nothing queued for revoked principals');
    figure('revoked', 'persistent sessions of 2 revoked principals (one offline with 5 queued, one connected) dropped at the revocation, not after the expiry');
    await dev.endAsync();
  });
});
