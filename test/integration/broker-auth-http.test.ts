/**
 * The EMQX 5 and VerneMQ shapes of the external-broker auth endpoint (issue #15), and the
 * endpoint's own protection, over real HTTP against a real hub. No EMQX or VerneMQ binaries
 * are available here (Debian packages neither), so the requests are the bodies those brokers
 * send as their docs describe them (EMQX "Use HTTP Service" authn/authz, VerneMQ webhooks
 * auth_on_register/publish/subscribe and _m5); RabbitMQ itself is exercised in
 * broker-auth-rabbitmq.test.ts. Decisions are compared with acl.ts for the same identities.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { newSecret } from '../../hub/auth/tokens.ts';
import { publishRefusal, subscribeRefusal, type Identity } from '../../hub/broker/acl.ts';
import type { Hub } from '../../hub/main.ts';
import { register, startHub } from '../helpers/mqtt-clients.ts';

describe('broker auth endpoint: EMQX and VerneMQ shapes', () => {
  let dir: string;
  let hub: Hub;
  let off: Hub;
  const secret = newSecret();
  const tokens: Record<string, string> = {};
  const A: Identity = { id: 'hdev-a', kind: 'device', deviceId: null };
  const B: Identity = { id: 'hdev-b', kind: 'device', deviceId: null };
  const S: Identity = { id: 'hsensor', kind: 'sensor', deviceId: 'hdev-a' };
  const C: Identity = { id: 'hmes', kind: 'consumer', deviceId: null };

  async function call(path: string, body: unknown, headers: Record<string, string> = { authorization: `Bearer ${secret}` }, target: Hub = hub): Promise<{ status: number; text: string; json: () => unknown }> {
    const res = await fetch(`${target.httpUrl}/v1/broker-auth/${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, text, json: () => JSON.parse(text) as unknown };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-broker-auth-'));
    await writeFile(join(dir, 'secret'), secret);
    hub = await startHub(join(dir, 'hub'), { brokerAuth: { enabled: true, secretFile: join(dir, 'secret') }, limits: { maxAuthFailuresPerMinutePerIp: 3 } });
    off = await startHub(join(dir, 'off'));
    for (const who of [A, B, S, C]) tokens[who.id] = await register(hub, { id: who.id, kind: who.kind, ...(who.deviceId ? { device: who.deviceId } : {}) });
  });

  after(async () => {
    await hub?.stop();
    await off?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the endpoint wants the shared secret (Bearer, Basic password or ?key=), and is 404 when disabled', async () => {
    const login = { clientid: A.id, username: A.id, password: tokens[A.id], peerhost: '10.0.0.1' };
    assert.deepEqual((await call('emqx/authn', login)).json(), { result: 'allow', is_superuser: false });
    const basic = `Basic ${Buffer.from(`emqx:${secret}`).toString('base64')}`;
    assert.equal((await call('emqx/authn', login, { authorization: basic })).status, 200);
    assert.deepEqual((await call(`emqx/authn?key=${secret}`, login, {})).json(), { result: 'allow', is_superuser: false });
    for (const headers of <Record<string, string>[]>[{}, { authorization: `Bearer ${newSecret()}` }, { authorization: `Basic ${Buffer.from(`emqx:${newSecret()}`).toString('base64')}` }]) {
      const r = await call('emqx/authn', login, headers);
      assert.equal(r.status, 401);
      assert.deepEqual(r.json(), { result: 'deny', is_superuser: false });
    }
    assert.equal((await call('emqx/authn', login, { authorization: `Bearer ${secret}` }, off)).status, 404);
  });

  test('EMQX authn: right token allow; wrong token, foreign client id, unknown id deny; never a superuser', async () => {
    const base = { clientid: A.id, username: A.id, password: tokens[A.id], peerhost: '10.0.0.2' };
    assert.deepEqual((await call('emqx/authn', base)).json(), { result: 'allow', is_superuser: false });
    for (const bad of [{ ...base, password: newSecret() }, { ...base, clientid: 'someone-else' }, { ...base, username: 'nobody', clientid: 'nobody' }, { ...base, password: null }]) {
      const r = await call('emqx/authn', bad);
      assert.equal(r.status, 200);
      assert.deepEqual(r.json(), { result: 'deny', is_superuser: false }, JSON.stringify(bad));
    }
  });

  test('failed logins count into the failure limiter by the peer address the broker reports', async () => {
    const peer = '10.9.9.9';
    const bad = { clientid: B.id, username: B.id, password: newSecret(), peerhost: peer };
    for (let i = 0; i < 3; i++) await call('emqx/authn', bad);
    // Over budget: even the right token is refused from that address, but not from another one.
    const good = { ...bad, password: tokens[B.id] };
    assert.deepEqual((await call('emqx/authn', good)).json(), { result: 'deny', is_superuser: false });
    assert.deepEqual((await call('emqx/authn', { ...good, peerhost: '10.9.9.10' })).json(), { result: 'allow', is_superuser: false });
  });

  test('EMQX authz and VerneMQ publish/subscribe decide as acl.ts', async () => {
    const cases: [Identity, 'publish' | 'subscribe', string][] = [
      [A, 'publish', `edgefleet/v1/${A.id}/telemetry`],
      [A, 'publish', `edgefleet/v1/${B.id}/telemetry`],
      [A, 'publish', `edgefleet/v1/${A.id}/cmd`],
      [A, 'subscribe', `edgefleet/v1/${A.id}/cmd`],
      [A, 'subscribe', 'edgefleet/v1/+/cmd'],
      [S, 'publish', `edgefleet/v1/${A.id}/in/temp`],
      [S, 'publish', `edgefleet/v1/${B.id}/in/temp`],
      [S, 'subscribe', `edgefleet/v1/${A.id}/cmd`],
      [C, 'subscribe', 'edgefleet/v1/+/out/#'],
      [C, 'subscribe', 'edgefleet/v1/#'],
      [C, 'publish', `edgefleet/v1/${A.id}/feedback`],
      [C, 'publish', `edgefleet/v1/${A.id}/telemetry`],
    ];
    for (const [who, action, topic] of cases) {
      const expected = (action === 'publish' ? publishRefusal(who, topic) : subscribeRefusal(who, topic)) === undefined;
      const emqx = await call('emqx/authz', { clientid: who.id, username: who.id, topic, action, qos: 1, retain: false });
      assert.deepEqual(emqx.json(), { result: expected ? 'allow' : 'deny' }, `emqx ${who.id} ${action} ${topic}`);
      if (action === 'publish') {
        const v = await call('vernemq/auth_on_publish', { username: who.id, client_id: who.id, mountpoint: '', qos: 1, topic, payload: 'eA==', retain: false });
        assert.deepEqual(v.json(), expected ? { result: 'ok' } : { result: { error: 'not_allowed' } }, `vernemq ${who.id} ${topic}`);
      }
    }
    // Subscribe: refused filters at qos 128 (135 for MQTT 5), allowed ones keep theirs.
    const topics = [{ topic: `edgefleet/v1/${A.id}/cmd`, qos: 1 }, { topic: `edgefleet/v1/${B.id}/cmd`, qos: 1 }];
    assert.deepEqual((await call('vernemq/auth_on_subscribe', { username: A.id, client_id: A.id, mountpoint: '', topics: [topics[0]] })).json(), { result: 'ok' });
    assert.deepEqual((await call('vernemq/auth_on_subscribe', { username: A.id, client_id: A.id, mountpoint: '', topics })).json(), { result: 'ok', topics: [topics[0], { ...topics[1], qos: 128 }] });
    assert.deepEqual((await call('vernemq/auth_on_subscribe_m5', { username: A.id, client_id: A.id, mountpoint: '', topics, properties: {} })).json(), {
      result: 'ok',
      modifiers: { topics: [topics[0], { ...topics[1], qos: 135 }] },
    });
  });

  test('VerneMQ register (and _m5): ok or not_allowed; a revoked principal is refused at login and in every later check', async () => {
    const reg = { peer_addr: '10.1.1.1', peer_port: 5000, username: B.id, password: tokens[B.id], mountpoint: '', client_id: B.id, clean_session: true };
    assert.deepEqual((await call('vernemq/auth_on_register', reg)).json(), { result: 'ok' });
    assert.deepEqual((await call('vernemq/auth_on_register_m5', { ...reg, clean_start: true, properties: {} })).json(), { result: 'ok' });
    assert.deepEqual((await call('vernemq/auth_on_register', { ...reg, client_id: 'other' })).json(), { result: { error: 'not_allowed' } });
    const res = await fetch(`${hub.httpUrl}/v1/devices/${B.id}/revoke`, { method: 'POST', headers: { authorization: `Bearer ${hub.adminToken}` } });
    assert.equal(res.status, 200);
    assert.deepEqual((await call('vernemq/auth_on_register', reg)).json(), { result: { error: 'not_allowed' } });
    assert.deepEqual((await call('vernemq/auth_on_publish', { username: B.id, client_id: B.id, mountpoint: '', qos: 1, topic: `edgefleet/v1/${B.id}/telemetry`, payload: '', retain: false })).json(), { result: { error: 'not_allowed' } });
    assert.deepEqual((await call('emqx/authz', { clientid: B.id, username: B.id, topic: `edgefleet/v1/${B.id}/telemetry`, action: 'publish' })).json(), { result: 'deny' });
  });

  test('a malformed body is a refusal with 400 in the broker\'s shape, never a crash', async () => {
    for (const [path, body, shape] of [
      ['emqx/authn', '{not json', { result: 'deny', is_superuser: false }],
      ['emqx/authz', { username: A.id, topic: 'x', action: 'delete' }, { result: 'deny' }],
      ['emqx/authz', '[]', { result: 'deny' }],
      ['vernemq/auth_on_subscribe', { username: A.id, topics: 'all' }, { result: { error: 'not_allowed' } }],
      ['vernemq/auth_on_publish', { username: A.id, topic: 42 }, { result: { error: 'not_allowed' } }],
    ] as const) {
      const r = await call(path, body);
      assert.equal(r.status, 400, `${path} ${JSON.stringify(body)}`);
      assert.deepEqual(r.json(), shape);
    }
    const rabbit = await fetch(`${hub.httpUrl}/v1/broker-auth/rabbitmq/resource`, { method: 'POST', headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/x-www-form-urlencoded' }, body: 'username=x' });
    assert.equal(rabbit.status, 400);
    assert.equal(await rabbit.text(), 'deny');
    // The hub still answers.
    assert.deepEqual((await call('emqx/authn', { clientid: A.id, username: A.id, password: tokens[A.id] })).json(), { result: 'allow', is_superuser: false });
  });

  test('RabbitMQ in GET mode: the parameters are appended to a URL that already has ?key=', async () => {
    const q = new URLSearchParams({ username: A.id, password: tokens[A.id] ?? '' }).toString();
    const r = await fetch(`${hub.httpUrl}/v1/broker-auth/rabbitmq/user?key=${secret}?${q}`);
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'allow');
    const t = new URLSearchParams({ username: A.id, vhost: '/', resource: 'topic', name: 'amq.topic', permission: 'write', routing_key: `edgefleet.v1.${B.id}.telemetry` }).toString();
    assert.equal(await (await fetch(`${hub.httpUrl}/v1/broker-auth/rabbitmq/topic?key=${secret}?${t}`)).text(), 'deny');
  });

  test('requests are counted by broker, kind and result', async () => {
    const text = await hub.registry.metrics();
    for (const series of ['broker="emqx",kind="authn",result="allow"', 'broker="emqx",kind="authn",result="unauthorized"', 'broker="emqx",kind="authz",result="deny"', 'broker="vernemq",kind="authz",result="bad_request"']) {
      assert.match(text, new RegExp(`edgefleet_hub_broker_auth_requests_total\\{${series}\\} [1-9]`), series);
    }
  });
});
