/**
 * A real RabbitMQ (Debian's rabbitmq-server, MQTT plugin) whose only auth backend is the hub's
 * HTTP endpoint (rabbitmq_auth_backend_http → /v1/broker-auth/rabbitmq/..., issue #15). A real
 * hub registers the principals; mqtt.js clients connect to RabbitMQ's MQTT port with their hub
 * tokens. Logins, publishes and subscriptions are decided by the hub's acl.ts: each case's
 * outcome through RabbitMQ is asserted equal to what publishRefusal / subscribeRefusal say for
 * the same identity and topic (the embedded broker's decisions). RabbitMQ boots once (slow:
 * Erlang). Skipped, with the reason, only when rabbitmq-server is not installed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { newSecret } from '../../hub/auth/tokens.ts';
import { publishRefusal, subscribeRefusal, type Identity } from '../../hub/broker/acl.ts';
import type { Hub } from '../../hub/main.ts';
import { findRabbitmq, startRabbitmq, type RabbitMq } from '../helpers/rabbitmq.ts';
import { register, sleep, startHub } from '../helpers/mqtt-clients.ts';

const install = findRabbitmq();
const missing = 'missing' in install ? install.missing : undefined;
if (missing && process.env.CI) throw new Error(`test/integration/broker-auth-rabbitmq.test.ts needs rabbitmq-server in CI (.ci/run installs it): ${missing}`);

describe('RabbitMQ with the hub as its HTTP auth backend', { skip: missing }, () => {
  let dir: string;
  let hub: Hub;
  let rabbit: RabbitMq | undefined;
  const clients: MqttClient[] = [];
  const secret = newSecret();
  const tokens: Record<string, string> = {};
  const ids: Record<string, Identity> = {
    devA: { id: 'rdev-a', kind: 'device', deviceId: null },
    devB: { id: 'rdev-b', kind: 'device', deviceId: null },
    sensor: { id: 'rsensor-1', kind: 'sensor', deviceId: 'rdev-a' },
    consumer: { id: 'rmes', kind: 'consumer', deviceId: null },
    revoked: { id: 'rdev-gone', kind: 'device', deviceId: null },
  };

  function connect(opts: IClientOptions): Promise<MqttClient> {
    return new Promise((resolve, reject) => {
      const c = mqtt.connect(rabbit?.mqttUrl ?? '', { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, clean: true, ...opts });
      clients.push(c);
      c.once('connect', () => resolve(c));
      c.once('error', reject);
      c.once('close', () => reject(new Error('closed before connect')));
    });
  }
  const as = (who: Identity, extra: IClientOptions = {}): Promise<MqttClient> => connect({ clientId: who.id, username: who.id, password: tokens[who.id] ?? '', ...extra });
  async function refused(opts: IClientOptions): Promise<number> {
    try {
      await connect(opts);
    } catch (err) {
      return (err as { code?: number }).code ?? -1;
    }
    return 0;
  }
  /** Publishes at QoS 1: RabbitMQ closes the connection on an unauthorized publish, else it PUBACKs. */
  async function publishAllowed(c: MqttClient, topic: string): Promise<boolean> {
    return new Promise((resolve) => {
      const onClose = (): void => resolve(false);
      c.once('close', onClose);
      c.publish(topic, 'x', { qos: 1 }, (err) => {
        c.off('close', onClose);
        resolve(!err);
      });
    });
  }
  async function subscribeGranted(c: MqttClient, filter: string): Promise<boolean> {
    return new Promise((resolve) => {
      const onClose = (): void => resolve(false);
      c.once('close', onClose);
      c.subscribe(filter, { qos: 1 }, (err, granted) => {
        c.off('close', onClose);
        resolve(!err && (granted?.[0]?.qos ?? 128) < 128);
      });
    });
  }

  before(async () => {
    if ('missing' in install) return;
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-rabbit-hub-'));
    await writeFile(join(dir, 'broker-secret'), `${secret}\n`, { mode: 0o600 });
    hub = await startHub(join(dir, 'hub'), { brokerAuth: { enabled: true, secretFile: join(dir, 'broker-secret') } });
    for (const who of Object.values(ids)) {
      tokens[who.id] = await register(hub, { id: who.id, kind: who.kind, ...(who.deviceId ? { device: who.deviceId } : {}) });
    }
    const res = await fetch(`${hub.httpUrl}/v1/devices/${ids.revoked?.id ?? ''}/revoke`, { method: 'POST', headers: { authorization: `Bearer ${hub.adminToken}` } });
    assert.equal(res.status, 200);
    rabbit = await startRabbitmq(install, `${hub.httpUrl}/v1/broker-auth/rabbitmq`, secret);
    process.stderr.write(`# rabbitmq boot: ${rabbit.bootMs} ms\n`);
  });

  after(async () => {
    for (const c of clients) c.end(true);
    await rabbit?.stop();
    await hub?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('the right token logs in; a wrong token, an unknown principal, a revoked one or a foreign client id are refused', async () => {
    const devA = ids.devA as Identity;
    const ok = await as(devA);
    assert.ok(ok.connected);
    ok.end(true);
    assert.notEqual(await refused({ clientId: devA.id, username: devA.id, password: newSecret() }), 0, 'wrong token');
    assert.notEqual(await refused({ clientId: `${devA.id}-other`, username: devA.id, password: tokens[devA.id] ?? '' }), 0, 'client id other than the username');
    assert.notEqual(await refused({ clientId: 'nobody', username: 'nobody', password: newSecret() }), 0, 'unknown principal');
    const gone = ids.revoked as Identity;
    assert.notEqual(await refused({ clientId: gone.id, username: gone.id, password: tokens[gone.id] ?? '' }), 0, 'revoked principal');
  });

  test('a device publishes on its own telemetry topic and a consumer reading results receives it', async () => {
    const devA = ids.devA as Identity;
    const consumer = await as(ids.consumer as Identity);
    const got: string[] = [];
    consumer.on('message', (t) => got.push(t));
    const topic = `edgefleet/v1/${devA.id}/out/result`;
    assert.equal(await subscribeGranted(consumer, 'edgefleet/v1/+/out/#'), true);
    const dev = await as(devA);
    assert.equal(await publishAllowed(dev, topic), true);
    const deadline = Date.now() + 5000;
    while (!got.includes(topic) && Date.now() < deadline) await sleep(50);
    assert.deepEqual(got, [topic]);
    assert.equal(await publishAllowed(dev, `edgefleet/v1/${devA.id}/telemetry`), true);
  });

  test('the ACL matrix through RabbitMQ equals acl.ts (the embedded broker) for the same cases', async () => {
    const A = ids.devA as Identity;
    const B = ids.devB as Identity;
    const S = ids.sensor as Identity;
    const C = ids.consumer as Identity;
    const pubs: [Identity, string][] = [
      [A, `edgefleet/v1/${A.id}/telemetry`],
      [A, `edgefleet/v1/${A.id}/hello`],
      [A, `edgefleet/v1/${B.id}/telemetry`],
      [A, `edgefleet/v1/${A.id}/cmd`],
      [A, `edgefleet/v1/${A.id}/ack`],
      [A, 'elsewhere/topic'],
      [S, `edgefleet/v1/${A.id}/in/temp`],
      [S, `edgefleet/v1/${A.id}/telemetry`],
      [S, `edgefleet/v1/${B.id}/in/temp`],
      [S, `edgefleet/v1/${A.id}/feedback`],
      [C, `edgefleet/v1/${A.id}/feedback`],
      [C, `edgefleet/v1/${A.id}/telemetry`],
    ];
    const subs: [Identity, string][] = [
      [A, `edgefleet/v1/${A.id}/cmd`],
      [A, `edgefleet/v1/${A.id}/#`],
      [A, `edgefleet/v1/${B.id}/cmd`],
      [A, 'edgefleet/v1/+/cmd'],
      [A, '#'],
      [S, `edgefleet/v1/${A.id}/cmd`],
      [C, 'edgefleet/v1/+/out/#'],
      [C, `edgefleet/v1/${A.id}/out/x`],
      [C, 'edgefleet/v1/$hub/alerts'],
      [C, `edgefleet/v1/${A.id}/telemetry`],
      [C, 'edgefleet/v1/#'],
    ];
    const mismatches: string[] = [];
    const cases = [...pubs.map(([w, t]) => [w, 'publish', t] as const), ...subs.map(([w, t]) => [w, 'subscribe', t] as const)];
    // A refused publish closes the connection: one connection per case.
    for (const [who, action, topic] of cases) {
      const c = await as(who);
      const viaRabbit = action === 'publish' ? await publishAllowed(c, topic) : await subscribeGranted(c, topic);
      const embedded = (action === 'publish' ? publishRefusal(who, topic) : subscribeRefusal(who, topic)) === undefined;
      if (viaRabbit !== embedded) mismatches.push(`${action} ${who.id} ${topic}: rabbitmq ${viaRabbit}, acl.ts ${embedded}`);
      c.end(true);
    }
    assert.deepEqual(mismatches, []);
    // The matrix has both outcomes on both sides (a broker that allowed or refused everything would not pass).
    assert.ok(pubs.some(([w, t]) => publishRefusal(w, t)) && pubs.some(([w, t]) => !publishRefusal(w, t)));
    assert.ok(subs.some(([w, t]) => subscribeRefusal(w, t)) && subs.some(([w, t]) => !subscribeRefusal(w, t)));
  });

  test('a principal revoked on the hub cannot log in through RabbitMQ any more (nothing cached)', async () => {
    const B = ids.devB as Identity;
    const c = await as(B);
    c.end(true);
    const res = await fetch(`${hub.httpUrl}/v1/devices/${B.id}/revoke`, { method: 'POST', headers: { authorization: `Bearer ${hub.adminToken}` } });
    assert.equal(res.status, 200);
    assert.notEqual(await refused({ clientId: B.id, username: B.id, password: tokens[B.id] ?? '' }), 0);
  });

  test('refusals are counted by broker, kind and result', async () => {
    const text = await hub.registry.metrics();
    assert.match(text, /edgefleet_hub_broker_auth_requests_total\{broker="rabbitmq",kind="authn",result="allow"\} [1-9]/);
    assert.match(text, /edgefleet_hub_broker_auth_requests_total\{broker="rabbitmq",kind="authn",result="deny"\} [1-9]/);
    assert.match(text, /edgefleet_hub_broker_auth_requests_total\{broker="rabbitmq",kind="authz",result="deny"\} [1-9]/);
  });
});
