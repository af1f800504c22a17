/**
 * The embedded broker's authentication and ACLs, against a real hub (aedes on port 0, SQLite in
 * a temp dir) with raw mqtt.js clients speaking MQTT 3.1.1.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Hub } from '../../hub/main.ts';
import { mayReceive, publishRefusal, subscribeRefusal } from '../../hub/broker/acl.ts';
import { FrameSizeGuard } from '../../hub/broker/packet-guard.ts';
import { topics } from '../../shared/protocol.ts';
import { batch, clients, closed, collect, connect, refusedCode, register, sleep, startHub, subscribeCodes } from '../helpers/mqtt-clients.ts';

describe('hub broker auth and ACL', () => {
  let dir: string;
  let hub: Hub;
  const tokens: Record<string, string> = {};

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-hub-auth-'));
    hub = await startHub(dir);
    tokens.A = await register(hub, { id: 'dev-a', group: 'line1' });
    tokens.B = await register(hub, { id: 'dev-b', group: 'line1' });
    tokens.S = await register(hub, { id: 'sensor-1', kind: 'sensor', device: 'dev-a' });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    const failures = await hub.stop();
    assert.deepEqual(failures, []);
    await rm(dir, { recursive: true, force: true });
  });

  test('a wrong token, an unknown user and missing credentials are refused with code 4', async () => {
    assert.equal(await refusedCode(hub, { clientId: 'dev-a', username: 'dev-a', password: 'wrong-token-wrong-token' }), 4);
    assert.equal(await refusedCode(hub, { clientId: 'nobody', username: 'nobody', password: tokens.A }), 4);
    assert.equal(await refusedCode(hub, { clientId: 'dev-a' }), 4);
    const metrics = await hub.registry.getSingleMetricAsString('edgefleet_hub_mqtt_connect_refused_total');
    assert.match(metrics, /reason="bad_credentials"\} 3/);
  });

  test('clientId must equal the username', async () => {
    assert.equal(await refusedCode(hub, { clientId: 'other-id', username: 'dev-a', password: tokens.A }), 2);
  });

  test("reusing A's clientId without A's token is refused and A stays connected", async () => {
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    const aClosed = closed(a, 500);
    // B's valid credentials, A's clientId: must not take over A's session.
    assert.equal(await refusedCode(hub, { clientId: 'dev-a', username: 'dev-b', password: tokens.B }), 2);
    assert.equal(await refusedCode(hub, { clientId: 'dev-a', username: 'dev-a', password: 'stolen-but-wrong-token' }), 4);
    assert.equal(await aClosed, false, 'A was kicked off');
    assert.equal(a.connected, true);
    // A still works end to end.
    const got = collect(a);
    await a.subscribeAsync(topics.output('dev-a', 'p1'), { qos: 1 });
    await a.publishAsync(topics.output('dev-a', 'p1'), 'still here', { qos: 1 });
    for (let i = 0; i < 50 && got.length === 0; i++) await sleep(20);
    assert.deepEqual(got.map((m) => m.payload), ['still here']);
    assert.equal((await hub.store.getDevice('dev-a'))?.online, true);
    await a.endAsync();
  });

  test("a device cannot publish into another device's subtree", async () => {
    const b = await connect(hub, { clientId: 'dev-b', username: 'dev-b', password: tokens.B });
    const bGot = collect(b);
    await b.subscribeAsync('edgefleet/v1/dev-b/#', { qos: 1 });
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    const aClosed = closed(a);
    a.publish(topics.of('dev-b', 'telemetry'), batch('dev-b', 1), { qos: 1 });
    assert.equal(await aClosed, true, 'the broker closes a client that publishes outside its subtree');
    await sleep(200);
    assert.deepEqual(bGot, [], 'B received what A published into its subtree');
    const devB = await hub.store.getDevice('dev-b');
    assert.equal(devB?.counters.stored, 0);
    assert.deepEqual(await hub.store.queryTelemetry({ deviceId: 'dev-b', limit: 10 }), []);
    assert.equal((await hub.store.getDevice('dev-a'))?.counters.badMessages, 1);
    await b.endAsync();
  });

  test("a device cannot subscribe to another device's topics, to # or to fleet wildcards", async () => {
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    const aGot = collect(a);
    for (const filter of ['edgefleet/v1/dev-b/#', 'edgefleet/v1/dev-b/telemetry', '#', 'edgefleet/#', 'edgefleet/v1/+/telemetry', 'edgefleet/v1/+/#', '$SYS/#', 'edgefleet/+/dev-a/#']) {
      assert.deepEqual(await subscribeCodes(a, filter), [128], filter);
    }
    assert.equal(a.connected, true, 'a refused subscription does not disconnect');
    const b = await connect(hub, { clientId: 'dev-b', username: 'dev-b', password: tokens.B });
    await b.publishAsync(topics.output('dev-b', 'p1'), 'for B only', { qos: 1 });
    await sleep(200);
    assert.deepEqual(aGot, []);
    await Promise.all([a.endAsync(), b.endAsync()]);
  });

  test("a retained message in B's subtree is not delivered to A", async () => {
    const b = await connect(hub, { clientId: 'dev-b', username: 'dev-b', password: tokens.B });
    await b.publishAsync(topics.output('dev-b', 'state'), 'retained-b', { qos: 1, retain: true });
    await b.endAsync();
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    const aGot = collect(a);
    assert.deepEqual(await subscribeCodes(a, 'edgefleet/v1/dev-a/#'), [1]);
    assert.deepEqual(await subscribeCodes(a, 'edgefleet/v1/+/out/state'), [128]);
    await sleep(200);
    assert.deepEqual(aGot, []);
    // B itself does get it back: the retained message exists.
    const b2 = await connect(hub, { clientId: 'dev-b', username: 'dev-b', password: tokens.B });
    const bGot = collect(b2);
    await b2.subscribeAsync('edgefleet/v1/dev-b/out/#', { qos: 1 });
    for (let i = 0; i < 50 && bGot.length === 0; i++) await sleep(20);
    assert.deepEqual(bGot, [{ topic: topics.output('dev-b', 'state'), payload: 'retained-b', retain: true }]);
    await Promise.all([a.endAsync(), b2.endAsync()]);
  });

  test("a sensor publishes to its device's in/ topics and nowhere else", async () => {
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    const aGot = collect(a);
    await a.subscribeAsync('edgefleet/v1/dev-a/in/#', { qos: 1 });
    const s = await connect(hub, { clientId: 'sensor-1', username: 'sensor-1', password: tokens.S });
    await s.publishAsync(topics.input('dev-a', 'temperature'), '{"t":21.5}', { qos: 1 });
    for (let i = 0; i < 50 && aGot.length === 0; i++) await sleep(20);
    assert.deepEqual(aGot.map((m) => m.topic), [topics.input('dev-a', 'temperature')]);
    assert.deepEqual(await subscribeCodes(s, 'edgefleet/v1/dev-a/in/#'), [128]);

    for (const topic of [topics.of('dev-a', 'telemetry'), topics.input('dev-b', 'temperature'), topics.output('dev-a', 'p1')]) {
      const s2 = await connect(hub, { clientId: 'sensor-1', username: 'sensor-1', password: tokens.S });
      const gone = closed(s2);
      s2.publish(topic, topic.endsWith('telemetry') ? batch('dev-a', 7) : '{}', { qos: 1 });
      assert.equal(await gone, true, `sensor publish to ${topic} was not refused`);
    }
    await sleep(100);
    assert.equal(aGot.length, 1);
    assert.equal((await hub.store.getDevice('dev-a'))?.counters.stored, 0);
    await a.endAsync();
  });

  test('a will outside the own subtree is refused; a device cannot forge acks for itself', async () => {
    const code = await refusedCode(hub, {
      clientId: 'dev-a',
      username: 'dev-a',
      password: tokens.A,
      will: { topic: topics.of('dev-b', 'status'), payload: Buffer.from('{}'), qos: 1, retain: true },
    });
    assert.equal(code, 5);
    const a = await connect(hub, {
      clientId: 'dev-a',
      username: 'dev-a',
      password: tokens.A,
      will: { topic: topics.of('dev-a', 'status'), payload: Buffer.from('{}'), qos: 1, retain: true },
    });
    const gone = closed(a);
    a.publish(topics.of('dev-a', 'ack'), '{}', { qos: 1 });
    assert.equal(await gone, true);
  });

  test('an unauthenticated client announcing a huge CONNECT is cut off before it is buffered', async () => {
    const sock = tcpConnect(hub.mqttPort, '127.0.0.1');
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const closedAt = new Promise<number>((resolve) => sock.once('close', () => resolve(Date.now())));
    sock.on('error', () => undefined);
    // CONNECT, remaining length 100 MB (varint 0x80 0x80 0xd0 0x2f), then a little of the body.
    sock.write(Buffer.from([0x10, 0x80, 0x80, 0xd0, 0x2f, 0x00, 0x04]));
    const t0 = Date.now();
    assert.ok((await closedAt) - t0 < 2000);
    assert.match(await hub.registry.getSingleMetricAsString('edgefleet_hub_mqtt_publish_refused_total'), /reason="packet_too_large"\} 1/);
  });

  test('frame size guard follows packet boundaries across chunks', () => {
    const g = new FrameSizeGuard(300);
    // PINGREQ (length 0), then a PUBLISH of 200 bytes whose varint (0xc8 0x01) is split across chunks.
    assert.equal(g.feed(Buffer.from([0xc0, 0x00, 0x30, 0xc8])), undefined);
    assert.equal(g.feed(Buffer.concat([Buffer.from([0x01]), Buffer.alloc(150)])), undefined);
    assert.equal(g.feed(Buffer.alloc(50)), undefined);
    // Next packet declares 400 bytes (0x90 0x03).
    assert.equal(g.feed(Buffer.from([0x30, 0x90, 0x03])), 400);
    assert.equal(new FrameSizeGuard(1e9).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff])), Number.POSITIVE_INFINITY);
  });

  test('ACL rules', () => {
    const dev = { id: 'd1', kind: 'device' as const, deviceId: null };
    const sen = { id: 's1', kind: 'sensor' as const, deviceId: 'd1' };
    assert.equal(publishRefusal(dev, 'edgefleet/v1/d1/telemetry'), undefined);
    assert.equal(publishRefusal(dev, 'edgefleet/v1/d1/cmd/result'), undefined);
    assert.ok(publishRefusal(dev, 'edgefleet/v1/d1/cmd'));
    assert.ok(publishRefusal(dev, 'edgefleet/v1/d2/telemetry'));
    assert.ok(publishRefusal(dev, 'edgefleet/v1/d1'));
    assert.ok(publishRefusal(dev, '$SYS/x'));
    assert.equal(publishRefusal(sen, 'edgefleet/v1/d1/in/temp'), undefined);
    assert.ok(publishRefusal(sen, 'edgefleet/v1/d1/in/'));
    assert.ok(publishRefusal(sen, 'edgefleet/v1/d1/in'));
    assert.ok(publishRefusal(sen, 'edgefleet/v1/s1/in/temp'));
    assert.equal(subscribeRefusal(dev, 'edgefleet/v1/d1/#'), undefined);
    assert.equal(subscribeRefusal(dev, 'edgefleet/v1/d1/+/x'), undefined);
    assert.ok(subscribeRefusal(dev, 'edgefleet/v1/+/ack'));
    assert.ok(subscribeRefusal(dev, 'edgefleet/v1/#'));
    assert.ok(subscribeRefusal(sen, 'edgefleet/v1/d1/in/#'));
    assert.equal(mayReceive(dev, 'edgefleet/v1/d1/ack'), true);
    assert.equal(mayReceive(dev, 'edgefleet/v1/d10/ack'), false);
    assert.equal(mayReceive(sen, 'edgefleet/v1/d1/in/x'), false);
    // A consumer (MES, dashboard) reads results of any device and nothing else.
    const con = { id: 'mes', kind: 'consumer' as const, deviceId: null };
    assert.equal(subscribeRefusal(con, 'edgefleet/v1/+/out/#'), undefined);
    assert.equal(subscribeRefusal(con, 'edgefleet/v1/d1/out/vibration'), undefined);
    assert.ok(subscribeRefusal(con, 'edgefleet/v1/+/telemetry'));
    assert.ok(subscribeRefusal(con, 'edgefleet/v1/d1/#'));
    assert.ok(subscribeRefusal(con, 'edgefleet/v1/#'));
    assert.ok(subscribeRefusal(con, '#'));
    assert.ok(publishRefusal(con, 'edgefleet/v1/d1/out/vibration'));
    assert.ok(publishRefusal(con, 'edgefleet/v1/d1/in/temp'));
    assert.equal(mayReceive(con, 'edgefleet/v1/d1/out/vibration'), true);
    assert.equal(mayReceive(con, 'edgefleet/v1/d1/telemetry'), false);
    assert.equal(mayReceive(con, 'edgefleet/v1/d1/ack'), false);
  });
});
