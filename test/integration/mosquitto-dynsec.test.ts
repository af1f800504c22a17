/**
 * The fleet's auth and ACL inside a real Mosquitto 2 through its dynamic-security plugin (issue
 * #15, hub/broker/mosquitto-dynsec.ts): the provisioner creates a device, a sensor of it, a second
 * device and a consumer, and real mqtt.js clients (MQTT 3.1.1, as the agents speak) check the
 * matrix of hub/broker/acl.ts, mirroring test/integration/hub-auth.test.ts. Every publish case is
 * also compared with acl.ts's publishRefusal and every subscription with subscribeRefusal, so a
 * rule that drifts from the embedded broker's fails here. A spy logged in as the dynsec admin
 * (whose role reads `#`) sees every message the broker delivers: Mosquitto drops a refused
 * publish silently (it still PUBACKs a 3.1.1 client), so non-delivery is what is asserted.
 *
 * Needs Debian's mosquitto: fails in CI without it, skips elsewhere with the reason.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { publishRefusal, subscribeRefusal, type Identity } from '../../hub/broker/acl.ts';
import { DynsecProvisioner, IN_DEPTH, roleFor, type DynsecAcl, type DynsecPrincipal } from '../../hub/broker/mosquitto-dynsec.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { topics } from '../../shared/protocol.ts';
import { findMosquitto, readDynsecFile, startMosquitto, type Mosquitto } from '../helpers/mosquitto.ts';
import { closed, sleep, subscribeCodes } from '../helpers/mqtt-clients.ts';

const install = findMosquitto();
const missing = 'missing' in install ? install.missing : undefined;
if (missing && process.env.CI) throw new Error(`test/integration/mosquitto-dynsec.test.ts needs Mosquitto 2 with the dynsec plugin in CI: ${missing}`);

const token = (): string => `tok-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;

describe('mosquitto dynamic-security provisioning', { skip: missing }, () => {
  let broker: Mosquitto;
  let prov: DynsecProvisioner;
  let spy: MqttClient;
  let hub: MqttClient;
  const seen: { topic: string; payload: string }[] = [];
  const clients: MqttClient[] = [];
  const hubPassword = token();
  const P: Record<'A' | 'B' | 'S' | 'C', DynsecPrincipal> = {
    A: { id: 'dev-a', kind: 'device', deviceId: null, password: token() },
    B: { id: 'dev-b', kind: 'device', deviceId: null, password: token() },
    S: { id: 'sensor-1', kind: 'sensor', deviceId: 'dev-a', password: token() },
    C: { id: 'mes', kind: 'consumer', deviceId: null, password: token() },
  };
  const identity = (p: DynsecPrincipal): Identity => ({ id: p.id, kind: p.kind, deviceId: p.deviceId });

  function connect(opts: IClientOptions): Promise<MqttClient> {
    return new Promise((resolve, reject) => {
      const c = mqtt.connect(broker.url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 3000, clean: true, ...opts });
      clients.push(c);
      c.once('connect', () => resolve(c));
      c.once('error', reject);
      c.once('close', () => reject(new Error('closed before connect')));
    });
  }
  const as = (p: DynsecPrincipal, extra: IClientOptions = {}): Promise<MqttClient> => connect({ clientId: p.id, username: p.id, password: p.password, ...extra });

  async function refusedCode(opts: IClientOptions): Promise<number> {
    try {
      await connect(opts);
    } catch (err) {
      return (err as { code?: number }).code ?? -1;
    }
    assert.fail('connection was accepted');
  }

  /** Waits until the spy saw every payload in `expected` (or a little past the deadline). */
  async function settle(expected: Set<string>, ms = 1500): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline && [...expected].some((p) => !seen.some((m) => m.payload === p))) await sleep(20);
    // Refused messages would arrive no later than the allowed ones published after them; a margin anyway.
    await sleep(100);
  }

  before(async () => {
    if ('missing' in install) return;
    broker = await startMosquitto(install);
    prov = new DynsecProvisioner({ url: broker.url, username: broker.admin.username, password: broker.admin.password, log: silentLogger(), timeoutMs: 3000 });
    await prov.start(new AbortController().signal);
    for (const p of Object.values(P)) await prov.provision(p);
    // The spy is the dynsec admin: its role reads `#`, beyond the protocol tree too.
    spy = await connect({ clientId: 'spy', username: broker.admin.username, password: broker.admin.password });
    spy.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }));
    assert.deepEqual(await subscribeCodes(spy, '#'), [1]);
    // The hub's own client reads and writes the protocol tree, and nothing else.
    await prov.provisionHub({ username: 'edgefleet-hub', password: hubPassword, clientId: 'edgefleet-hub' });
    hub = await connect({ clientId: 'edgefleet-hub', username: 'edgefleet-hub', password: hubPassword });
    assert.deepEqual(await subscribeCodes(hub, 'edgefleet/v1/#'), [1]);
    assert.deepEqual(await subscribeCodes(hub, '#'), [128]);
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    await prov?.stop();
    await broker?.stop();
  });

  test('each principal is a dynsec client bound to its client id, with its role; the broker saved it', async () => {
    const a = await prov.getClient('dev-a');
    assert.equal(a?.clientid, 'dev-a');
    assert.deepEqual(a?.roles.map((r) => r.rolename), ['edgefleet-device-dev-a']);
    assert.deepEqual((await prov.getClient('sensor-1'))?.roles.map((r) => r.rolename), ['edgefleet-sensor-sensor-1']);
    assert.deepEqual((await prov.getClient('mes'))?.roles.map((r) => r.rolename), ['edgefleet-consumer']);
    assert.equal(await prov.getClient('nobody'), undefined);
    const saved = JSON.stringify(await readDynsecFile(broker));
    for (const p of Object.values(P)) assert.ok(saved.includes(`"username":"${p.id}"`), `${p.id} not in the saved dynsec file`);
    assert.ok(!saved.includes(P.A.password), 'the token itself is stored, not its hash');
  });

  test('a wrong password, an unknown user, missing credentials and a foreign client id are refused (CONNACK 5)', async () => {
    assert.equal(await refusedCode({ clientId: 'dev-a', username: 'dev-a', password: 'wrong-token-wrong-token' }), 5);
    assert.equal(await refusedCode({ clientId: 'nobody', username: 'nobody', password: P.A.password }), 5);
    assert.equal(await refusedCode({ clientId: 'dev-a' }), 5);
    // B's valid credentials with A's client id: must not take over A's session.
    const a = await as(P.A);
    const aClosed = closed(a, 500);
    assert.equal(await refusedCode({ clientId: 'dev-a', username: 'dev-b', password: P.B.password }), 5);
    assert.equal(await refusedCode({ clientId: 'other-id', username: 'dev-a', password: P.A.password }), 5);
    assert.equal(await aClosed, false, 'A was kicked off');
    await a.endAsync();
  });

  test('every publish case is delivered exactly when acl.ts allows it', async () => {
    const cases = [
      topics.of('dev-a', 'telemetry'),
      topics.of('dev-a', 'status'),
      topics.output('dev-a', 'p1'),
      topics.input('dev-a', 'temperature'),
      `${topics.input('dev-a', 'camera')}/frame-42`,
      `${topics.root('dev-a')}/in`,
      `${topics.root('dev-a')}/in/`,
      `${topics.root('dev-a')}/in//x`,
      `${topics.root('dev-a')}/in/x/`,
      `${topics.root('dev-a')}/feedback`,
      topics.of('dev-a', 'ack'),
      topics.of('dev-a', 'cmd'),
      `${topics.of('dev-a', 'cmd')}/result`,
      topics.root('dev-a'),
      `${topics.root('dev-a')}/`,
      topics.of('dev-b', 'telemetry'),
      topics.input('dev-b', 'temperature'),
      topics.output('dev-b', 'p1'),
      `${topics.root('dev-b')}/feedback`,
      'edgefleet/v1/$hub/alerts',
      'edgefleet/v1/$hub/feedback',
      'edgefleet/v1//feedback',
      topics.of('sensor-1', 'telemetry'),
      `${topics.root('sensor-1')}/in/temp`,
      'edgefleet/v2/dev-a/telemetry',
      'elsewhere/x',
    ];
    const expected = new Set<string>();
    const refused = new Set<string>();
    for (const p of [P.A, P.B, P.S, P.C]) {
      let c = await as(p);
      for (const [i, topic] of cases.entries()) {
        const payload = `${p.id}#${i}`;
        (publishRefusal(identity(p), topic) === undefined ? expected : refused).add(payload);
        if (!c.connected) c = await as(p);
        await c.publishAsync(topic, payload, { qos: 1 });
      }
      await c.endAsync();
    }
    await settle(expected);
    const got = new Set(seen.map((m) => m.payload));
    const describeCase = (payload: string): string => {
      const [id, i] = payload.split('#');
      return `${id} -> ${cases[Number(i)]}`;
    };
    assert.deepEqual([...expected].filter((x) => !got.has(x)).map(describeCase), [], 'allowed by acl.ts but not delivered');
    assert.deepEqual([...refused].filter((x) => got.has(x)).map(describeCase), [], 'refused by acl.ts but delivered');
    assert.ok(expected.size >= 15 && refused.size >= 60, `${expected.size} allowed, ${refused.size} refused`);
  });

  test('every subscription is granted exactly when acl.ts allows it (refused: SUBACK 0x80)', async () => {
    const filters = [
      'edgefleet/v1/dev-a/#',
      'edgefleet/v1/dev-a/+/x',
      'edgefleet/v1/dev-a/out/p1',
      'edgefleet/v1/dev-a/in/#',
      'edgefleet/v1/dev-a',
      'edgefleet/v1/dev-b/#',
      'edgefleet/v1/dev-b/telemetry',
      'edgefleet/v1/dev-b/out/vibration',
      'edgefleet/v1/+/out/#',
      'edgefleet/v1/+/out/p1',
      'edgefleet/v1/$hub/alerts',
      'edgefleet/v1/+/telemetry',
      'edgefleet/v1/+/#',
      'edgefleet/v1/#',
      'edgefleet/#',
      'edgefleet/+/dev-a/#',
      '#',
      '$SYS/#',
      '$CONTROL/dynamic-security/v1/response',
    ];
    const mismatches: string[] = [];
    for (const p of [P.A, P.S, P.C]) {
      const c = await as(p);
      for (const filter of filters) {
        const want = subscribeRefusal(identity(p), filter) === undefined ? 1 : 128;
        const got = (await subscribeCodes(c, filter))[0];
        if (got !== want) mismatches.push(`${p.id} ${filter}: SUBACK ${got}, acl.ts ${want}`);
      }
      assert.equal(c.connected, true, 'a refused subscription does not disconnect');
      await c.endAsync();
    }
    assert.deepEqual(mismatches, []);
  });

  test("a device cannot read another device's messages, retained ones included", async () => {
    const b = await as(P.B);
    await b.publishAsync(topics.output('dev-b', 'state'), 'retained-b', { qos: 1, retain: true });
    await b.endAsync();
    const a = await as(P.A);
    const aGot: string[] = [];
    a.on('message', (topic) => aGot.push(topic));
    assert.deepEqual(await subscribeCodes(a, 'edgefleet/v1/dev-a/#'), [1]);
    assert.deepEqual(await subscribeCodes(a, 'edgefleet/v1/+/out/state'), [128]);
    const b2 = await as(P.B);
    await b2.publishAsync(topics.output('dev-b', 'p1'), 'for B only', { qos: 1 });
    // A positive control on the same path: A's own result reaches A.
    await a.publishAsync(topics.output('dev-a', 'p1'), 'for A', { qos: 1 });
    for (let i = 0; i < 50 && aGot.length === 0; i++) await sleep(20);
    await sleep(100);
    assert.deepEqual(aGot, [topics.output('dev-a', 'p1')]);
    // The retained message exists: B gets it back.
    const bGot: string[] = [];
    b2.on('message', (_t, payload) => bGot.push(payload.toString()));
    await b2.subscribeAsync('edgefleet/v1/dev-b/out/state', { qos: 1 });
    for (let i = 0; i < 50 && bGot.length === 0; i++) await sleep(20);
    assert.deepEqual(bGot, ['retained-b']);
    await b2.publishAsync(topics.output('dev-b', 'state'), '', { qos: 1, retain: true });
    await Promise.all([a.endAsync(), b2.endAsync()]);
  });

  test("a consumer reads every device's results and the hub's alerts, and labels feedback", async () => {
    const c = await as(P.C);
    const cGot: string[] = [];
    c.on('message', (topic) => cGot.push(topic));
    assert.deepEqual(await subscribeCodes(c, 'edgefleet/v1/+/out/#'), [1]);
    assert.deepEqual(await subscribeCodes(c, 'edgefleet/v1/$hub/alerts'), [1]);
    const a = await as(P.A);
    await a.subscribeAsync('edgefleet/v1/dev-a/feedback', { qos: 1 });
    const aGot: string[] = [];
    a.on('message', (_t, payload) => aGot.push(payload.toString()));
    await a.publishAsync(topics.output('dev-a', 'p1'), '{"y":1}', { qos: 1 });
    await a.publishAsync(topics.of('dev-a', 'telemetry'), '{}', { qos: 1 });
    const b = await as(P.B);
    await b.publishAsync(topics.output('dev-b', 'p2'), '{"y":2}', { qos: 1 });
    // Only the hub publishes alerts.
    await hub.publishAsync('edgefleet/v1/$hub/alerts', '{"alert":1}', { qos: 1 });
    await c.publishAsync('edgefleet/v1/dev-a/feedback', '{"feedback":[{"id":"a1","label":"ok"}]}', { qos: 1 });
    for (let i = 0; i < 100 && (cGot.length < 3 || aGot.length < 1); i++) await sleep(20);
    await sleep(100);
    assert.deepEqual(cGot.sort(), [topics.output('dev-a', 'p1'), topics.output('dev-b', 'p2'), 'edgefleet/v1/$hub/alerts'].sort());
    assert.deepEqual(aGot, ['{"feedback":[{"id":"a1","label":"ok"}]}']);
    await Promise.all([a.endAsync(), b.endAsync(), c.endAsync()]);
  });

  test(`a sensor's in/ topics: up to ${IN_DEPTH} levels (deeper is refused on Mosquitto only)`, async () => {
    const s = await as(P.S);
    const deep = (n: number): string => `${topics.root('dev-a')}/in/${Array.from({ length: n }, (_, i) => `l${i}`).join('/')}`;
    await s.publishAsync(deep(IN_DEPTH), 'deep-ok', { qos: 1 });
    await s.publishAsync(deep(IN_DEPTH + 1), 'too-deep', { qos: 1 });
    await settle(new Set(['deep-ok']));
    assert.ok(seen.some((m) => m.payload === 'deep-ok'));
    assert.ok(!seen.some((m) => m.payload === 'too-deep'));
    await s.endAsync();
  });

  test("a will outside the own subtree is not delivered; one inside is", async () => {
    const before = seen.length;
    for (const [topic, payload] of [
      [topics.of('dev-b', 'status'), 'forged-will'],
      [topics.of('dev-a', 'status'), 'own-will'],
    ] as const) {
      const a = await as(P.A, { will: { topic, payload: Buffer.from(payload), qos: 1, retain: false } });
      // An unclean end (the socket dies) sends the will.
      a.stream.destroy();
      await closed(a);
    }
    await settle(new Set(['own-will']));
    const wills = seen.slice(before).map((m) => m.payload);
    assert.deepEqual(wills, ['own-will']);
  });

  test("re-provisioning puts a role edited behind the hub's back back to acl.ts's rules", async () => {
    const rolename = roleFor(identity(P.A)).rolename;
    const extra = { acltype: 'publishClientSend', topic: 'edgefleet/v1/dev-b/#', priority: 20, allow: true };
    assert.equal((await prov.command({ command: 'addRoleACL', rolename, ...extra })).error, undefined);
    assert.equal((await prov.command({ command: 'removeRoleACL', rolename, acltype: 'publishClientSend', topic: 'edgefleet/v1/dev-a/ack' })).error, undefined);
    await prov.provision(P.A);
    const role = await prov.command({ command: 'getRole', rolename });
    const acls = (role.data as { role: { acls: DynsecAcl[] } }).role.acls;
    const key = (a: DynsecAcl): string => `${a.acltype} ${a.topic} ${a.priority} ${a.allow}`;
    assert.deepEqual(acls.map(key).sort(), roleFor(identity(P.A)).acls.map(key).sort());
  });

  test('re-provisioning replaces the password; a revoked principal is dropped and cannot connect again', async () => {
    const old = P.B.password;
    P.B.password = token();
    await prov.provision(P.B);
    assert.equal(await refusedCode({ clientId: 'dev-b', username: 'dev-b', password: old }), 5);
    const b = await as(P.B);
    const bClosed = closed(b, 3000);
    assert.equal(await prov.revoke({ id: 'dev-b', kind: 'device' }), true);
    assert.equal(await bClosed, true, 'the connected principal was not dropped');
    assert.equal(await refusedCode({ clientId: 'dev-b', username: 'dev-b', password: P.B.password }), 5);
    assert.equal(await prov.getClient('dev-b'), undefined);
    assert.equal((await prov.command({ command: 'getRole', rolename: 'edgefleet-device-dev-b' })).error, 'Role not found');
    assert.equal(await prov.revoke({ id: 'dev-b', kind: 'device' }), false, 'a second revoke finds nothing');
    // A revoked sensor and consumer too; the shared consumer role stays for the others.
    assert.equal(await prov.revoke({ id: 'sensor-1', kind: 'sensor' }), true);
    assert.equal(await refusedCode({ clientId: 'sensor-1', username: 'sensor-1', password: P.S.password }), 5);
    assert.equal(await prov.revoke({ id: 'mes', kind: 'consumer' }), true);
    assert.equal(await refusedCode({ clientId: 'mes', username: 'mes', password: P.C.password }), 5);
    assert.equal((await prov.command({ command: 'getRole', rolename: 'edgefleet-consumer' })).error, undefined);
    // The others still work.
    await (await as(P.A)).endAsync();
  });

  test("the broker's errors come back as EdgefleetError with dynsec's text", async () => {
    await assert.rejects(prov.ensureRole({ rolename: 'edgefleet-bad', acls: [{ acltype: 'publishClientSend', topic: 'a/#/b', priority: 1, allow: true }] }), (err: unknown) => {
      assert.ok(err instanceof EdgefleetError);
      assert.equal(err.code, 'BAD_INPUT');
      assert.equal(err.message, 'dynsec addRoleACL: Invalid ACL topic');
      return true;
    });
    // Ids become topic levels: a wildcard or an empty id never reaches the broker.
    for (const id of ['', 'dev-#', 'dev/+', '+']) {
      await assert.rejects(prov.provision({ id, kind: 'device', deviceId: null, password: 'x' }), (err: unknown) => err instanceof EdgefleetError && err.code === 'BAD_INPUT', JSON.stringify(id));
      assert.equal(await prov.getClient(id), undefined);
    }
    await assert.rejects(prov.provision({ id: 's2', kind: 'sensor', deviceId: '#', password: 'x' }), /BAD_INPUT|deviceId/);
    await assert.rejects(prov.provision({ id: 's2', kind: 'sensor', deviceId: null, password: 'x' }), /names its device/);
    const wrong = new DynsecProvisioner({ url: broker.url, username: 'admin', password: 'not-the-password', log: silentLogger(), timeoutMs: 2000 });
    await assert.rejects(wrong.start(new AbortController().signal), (err: unknown) => err instanceof EdgefleetError && err.code === 'UNAUTHORIZED');
  });
});
