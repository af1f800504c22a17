/**
 * The security matrix (issue #6, RELIABILITY.md "Security"), against a real hub: aedes on port
 * 0, SQLite in a temp dir, raw mqtt.js clients and fetch. Each test is one row and prints
 * `security: <row>: <outcome>`. Time is real except for enrollment-token expiry, where the
 * hub's clock is skewed forward (the hub takes `now` from its composition root).
 *
 * Rows covered elsewhere: retained message across devices, last-will into another device's
 * subtree, wrong token / client id (test/integration/hub-auth.test.ts); TLS rows (wrong CA,
 * expired certificate, CN ≠ client id: test/integration/security-tls.test.ts).
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { topics } from '../../shared/protocol.ts';
import { api, clients, closed, collect, connect, refusedCode, sleep, subscribeCodes } from '../helpers/mqtt-clients.ts';
import { until } from '../helpers/fleet-in-process.ts';

const row = (name: string, outcome: string): void => console.log(`security: ${name}: ${outcome}`);

async function metric(hub: Hub, name: string, labels: string): Promise<number> {
  const text = await hub.registry.metrics();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('security matrix', () => {
  let dir: string;
  let hub: Hub;
  let skew = 0;
  const logLines: string[] = [];
  const secrets: string[] = [];
  const tokens: Record<string, string> = {};

  async function register(body: Record<string, unknown>): Promise<string> {
    const r = await api(hub, 'POST', '/v1/devices', hub.adminToken, body);
    assert.equal(r.status, 201, JSON.stringify(r.json));
    const token = r.json.token as string;
    secrets.push(token);
    return token;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-security-'));
    const config = loadHubConfig({
      env: {},
      overrides: { dataDir: dir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log: { level: 'debug' }, limits: { maxConnectsPerSecondPerIp: 20 } },
    });
    // The real logger at debug, captured: no secret may ever appear in it.
    const log = pino({ level: 'debug' }, { write: (s: string) => void logLines.push(s) });
    hub = await createHub(config, { log, now: () => Date.now() + skew });
    await hub.start(new AbortController().signal);
    secrets.push(hub.adminToken);
    tokens.A = await register({ id: 'dev-a', group: 'line1' });
    tokens.B = await register({ id: 'dev-b', group: 'line1' });
    tokens.S = await register({ id: 'sensor-a', kind: 'sensor', device: 'dev-a' });
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true).catch(() => undefined)));
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('revoked device while connected: disconnected at once, cannot reconnect, HTTP refused', async () => {
    const token = await register({ id: 'dev-r', group: 'line1' });
    const c = await connect(hub, { clientId: 'dev-r', username: 'dev-r', password: token });
    const auth = { authorization: `Bearer dev-r:${token}` };
    // Warm the device HTTP cache: revocation must evict it.
    assert.equal((await fetch(`${hub.httpUrl}/v1/artifacts/${'0'.repeat(64)}`, { headers: auth })).status, 404);
    const gone = closed(c, 5000);
    const t0 = performance.now();
    const r = await api(hub, 'POST', '/v1/devices/dev-r/revoke', hub.adminToken);
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(await gone, true, 'the connected client was not disconnected');
    const ms = Math.round(performance.now() - t0);
    c.options.reconnectPeriod = 0;
    assert.equal(await refusedCode(hub, { clientId: 'dev-r', username: 'dev-r', password: token }), 5);
    assert.equal((await fetch(`${hub.httpUrl}/v1/artifacts/${'0'.repeat(64)}`, { headers: auth })).status, 401);
    assert.equal(await metric(hub, 'edgefleet_hub_mqtt_connect_refused_total', 'reason="revoked"'), 1);
    const dev = await api(hub, 'GET', '/v1/devices/dev-r', hub.adminToken);
    assert.ok(dev.json.revokedAt, 'device view shows the revocation');
    row('revoked device while connected', `disconnected ${ms} ms after the revoke call, reconnect CONNACK 5, HTTP 401`);
  });

  test('enrollment: one-time token registers one device; reused, expired and revoked tokens are refused', async () => {
    const created = await api(hub, 'POST', '/v1/enrollment-tokens', hub.adminToken, { group: 'line2', labels: { site: 'plant-9' }, allowDeviceLabels: ['line'] });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const enr = created.json.token as string;
    secrets.push(enr);
    assert.match(enr, /^enr_[0-9a-f]{16}\./);
    const first = await api(hub, 'POST', '/v1/enroll', undefined, { token: enr, id: 'new-1', labels: { line: '2' } });
    assert.equal(first.status, 201, JSON.stringify(first.json));
    const cred = first.json.token as string;
    secrets.push(cred);
    const dev = await api(hub, 'GET', '/v1/devices/new-1', hub.adminToken);
    assert.equal(dev.json.group, 'line2');
    assert.deepEqual(dev.json.labels, { site: 'plant-9', line: '2' });
    const c = await connect(hub, { clientId: 'new-1', username: 'new-1', password: cred });
    await c.endAsync();

    const reused = await api(hub, 'POST', '/v1/enroll', undefined, { token: enr, id: 'new-2' });
    assert.equal(reused.status, 401);
    assert.equal((await api(hub, 'GET', '/v1/devices/new-2', hub.adminToken)).status, 404);

    // Count-limited: three uses, the fourth refused.
    const multi = await api(hub, 'POST', '/v1/enrollment-tokens', hub.adminToken, { group: 'line2', maxUses: 3, ttlSeconds: 3600 });
    const many = multi.json.token as string;
    secrets.push(many);
    const statuses = [];
    for (const id of ['m-1', 'm-2', 'm-3', 'm-4']) statuses.push((await api(hub, 'POST', '/v1/enroll', undefined, { token: many, id })).status);
    assert.deepEqual(statuses, [201, 201, 201, 401]);

    // Expired: the hub's clock moves past the token's lifetime.
    const short = await api(hub, 'POST', '/v1/enrollment-tokens', hub.adminToken, { group: 'line2', ttlSeconds: 60 });
    skew = 61_000;
    try {
      assert.equal((await api(hub, 'POST', '/v1/enroll', undefined, { token: short.json.token, id: 'late-1' })).status, 401);
    } finally {
      skew = 0;
    }
    // Revoked before use; a taken id is a conflict, not a second credential.
    const rv = await api(hub, 'POST', '/v1/enrollment-tokens', hub.adminToken, { group: 'line2', maxUses: 5 });
    assert.equal((await api(hub, 'POST', '/v1/enroll', undefined, { token: rv.json.token, id: 'dev-a' })).status, 409);
    assert.equal((await api(hub, 'POST', `/v1/enrollment-tokens/${String(rv.json.id)}/revoke`, hub.adminToken)).status, 200);
    assert.equal((await api(hub, 'POST', '/v1/enroll', undefined, { token: rv.json.token, id: 'rv-1' })).status, 401);
    // Enrollments are audited under the token that allowed them; refusals as denied.
    const audit = (await api(hub, 'GET', '/v1/audit?action=device.enroll&limit=100', hub.adminToken)).json.entries as { actor: string; outcome: string; target: string | null; details: Record<string, unknown> }[];
    assert.ok(audit.some((e) => e.actor === `enrollment:${String(created.json.id)}` && e.outcome === 'ok' && e.details.device === 'new-1' && !('actor' in e.details)), JSON.stringify(audit[0]));
    // Refusals carry no valid credential: counted and folded into one row per address per minute (issue #14).
    assert.equal(await metric(hub, 'edgefleet_hub_audit_anonymous_refusals_total', 'action="device.enroll"'), 4);
    // Listing never shows secrets.
    const listed = await api(hub, 'GET', '/v1/enrollment-tokens', hub.adminToken);
    assert.ok(!JSON.stringify(listed.json).includes(enr.split('.')[1] as string));
    row('reused enrollment token', 'second use 401, 4th use of a 3-use token 401, expired 401, revoked 401, taken id 409');
  });

  test('a sensor publishing a command is disconnected and the device never sees it', async () => {
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    const got = collect(a);
    await a.subscribeAsync(topics.of('dev-a', 'cmd'), { qos: 1 });
    const s = await connect(hub, { clientId: 'sensor-a', username: 'sensor-a', password: tokens.S });
    const gone = closed(s);
    s.publish(topics.of('dev-a', 'cmd'), JSON.stringify({ v: 1, type: 'command', id: 'evil', command: 'model.rollback' }), { qos: 1 });
    assert.equal(await gone, true);
    await sleep(200);
    assert.equal(got.length, 0);
    await a.endAsync();
    row('sensor publishing a command', 'connection closed, 0 commands delivered');
  });

  test('roles: a viewer cannot start a rollout, an operator cannot mint tokens; both denials are audited', async () => {
    const v = await api(hub, 'POST', '/v1/tokens', hub.adminToken, { name: 'view-1', role: 'viewer' });
    assert.equal(v.status, 201, JSON.stringify(v.json));
    const viewer = v.json.token as string;
    const o = await api(hub, 'POST', '/v1/tokens', hub.adminToken, { name: 'ops-1', role: 'operator' });
    const operator = o.json.token as string;
    secrets.push(viewer, operator);
    assert.equal((await api(hub, 'GET', '/v1/devices', viewer)).status, 200);
    const denied = await api(hub, 'POST', '/v1/rollouts', viewer, { model: 'm', version: '1', target: { group: 'line1' } });
    assert.equal(denied.status, 403);
    assert.equal((await api(hub, 'POST', '/v1/tokens', operator, { name: 'x', role: 'admin' })).status, 403);
    assert.equal((await api(hub, 'POST', '/v1/devices/dev-b/revoke', operator)).status, 403);
    assert.equal((await api(hub, 'GET', '/v1/audit', operator)).status, 403);
    // An operator may act on the fleet (this one fails on the unknown model, and is audited so).
    const tried = await api(hub, 'POST', '/v1/rollouts', operator, { model: 'nope', version: '1', target: { group: 'line1' } });
    assert.ok(tried.status >= 400 && tried.status < 500 && tried.status !== 403, String(tried.status));

    const audit = await api(hub, 'GET', '/v1/audit?limit=50', hub.adminToken);
    const entries = audit.json.entries as { actor: string; action: string; outcome: string; status: number }[];
    assert.ok(entries.some((e) => e.actor === 'view-1' && e.action === 'rollout.create' && e.outcome === 'denied' && e.status === 403));
    assert.ok(entries.some((e) => e.actor === 'ops-1' && e.action === 'token.create' && e.outcome === 'denied'));
    assert.ok(entries.some((e) => e.actor === 'ops-1' && e.action === 'rollout.create' && e.outcome === 'failed'));
    assert.ok(entries.some((e) => e.actor === 'admin' && e.action === 'token.create' && e.outcome === 'ok'));
    const filtered = await api(hub, 'GET', '/v1/audit?outcome=denied&actor=view-1', hub.adminToken);
    assert.deepEqual(
      (filtered.json.entries as { action: string }[]).map((e) => e.action),
      ['rollout.create'],
    );

    // A revoked operator token stops working at once (no cache lifetime).
    assert.equal((await api(hub, 'GET', '/v1/devices', operator)).status, 200);
    assert.equal((await api(hub, 'POST', `/v1/tokens/${String(o.json.id)}/revoke`, hub.adminToken)).status, 200);
    assert.equal((await api(hub, 'GET', '/v1/devices', operator)).status, 401);
    row('viewer starting a rollout', 'HTTP 403, audited as denied; operator minting a token 403; revoked operator token 401 on the next request');
  });

  test('$SYS is not writable and a device cannot read it', async () => {
    const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
    assert.deepEqual(await subscribeCodes(a, '$SYS/#'), [128]);
    const gone = closed(a);
    a.publish('$SYS/broker/clients/connected', '0', { qos: 1, retain: true });
    assert.equal(await gone, true);
    row('$SYS publish', 'connection closed; $SYS subscribe SUBACK 128');
  });

  test('oversized and deeply nested topics are refused', async () => {
    const outcomes: string[] = [];
    for (const [name, topic] of [
      ['oversized', `edgefleet/v1/dev-a/${'x'.repeat(600)}`],
      ['deep', `edgefleet/v1/dev-a/${Array.from({ length: 40 }, () => 'l').join('/')}`],
    ] as const) {
      const a = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
      const got = collect(a);
      // Refused either with SUBACK 128 (our ACL) or by closing the connection (aedes' own checks).
      let sub: string;
      try {
        const codes = await subscribeCodes(a, topic);
        assert.deepEqual(codes, [128], `${name} subscription`);
        sub = 'SUBACK 128';
      } catch (err) {
        assert.match(String(err), /Connection closed/);
        sub = 'connection closed';
      }
      const b = await connect(hub, { clientId: 'dev-a', username: 'dev-a', password: tokens.A });
      const gone = closed(b);
      b.publish(topic, '{}', { qos: 1 });
      assert.equal(await gone, true, `${name} publish was not refused`);
      assert.equal(got.length, 0);
      outcomes.push(`${name}: subscribe ${sub}, publish closed`);
    }
    assert.ok((await metric(hub, 'edgefleet_hub_mqtt_publish_refused_total', 'reason="topic_too_long"')) >= 1);
    row('oversized and deeply nested topics', outcomes.join('; '));
  });

  test('a QoS 2 flood reusing one packet id is cut off at the in-flight limit', async () => {
    const sock = tcpConnect(hub.mqttPort, '127.0.0.1');
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const str = (s: string): Buffer => Buffer.concat([Buffer.from([s.length >> 8, s.length & 0xff]), Buffer.from(s)]);
    const connectBody = Buffer.concat([str('MQTT'), Buffer.from([4, 0xc2, 0, 30]), str('dev-a'), str('dev-a'), str(tokens.A as string)]);
    sock.write(Buffer.concat([Buffer.from([0x10, connectBody.length]), connectBody]));
    await new Promise<void>((resolve) => sock.once('data', () => resolve()));
    const topic = str(topics.of('dev-a', 'status'));
    const body = Buffer.concat([topic, Buffer.from([0x12, 0x34]), Buffer.from('{}')]);
    const publish = Buffer.concat([Buffer.from([0x34, body.length]), body]);
    let sent = 0;
    const done = new Promise<void>((resolve) => sock.once('close', () => resolve()));
    for (; sent < 5000 && !sock.destroyed; sent++) sock.write(publish);
    await done;
    assert.ok((await metric(hub, 'edgefleet_hub_mqtt_publish_refused_total', 'reason="inflight"')) >= 1);
    assert.equal((await api(hub, 'GET', '/healthz', undefined)).status, 200);
    row('QoS 2 flood reusing one id', `connection cut at limits.maxInflight = 64 unreleased (${sent} packets queued by the client), hub healthy`);
  });

  test('connection floods from one address are rate limited; others keep connecting', async () => {
    const before = await metric(hub, 'edgefleet_hub_mqtt_connect_refused_total', 'reason="rate"');
    const socks = await Promise.all(
      Array.from({ length: 120 }, () => new Promise<boolean>((resolve) => {
        const s = tcpConnect(hub.mqttPort, '127.0.0.1');
        s.once('error', () => resolve(false));
        s.once('close', () => resolve(false));
        s.once('connect', () => setTimeout(() => { resolve(!s.destroyed); s.destroy(); }, 200));
      })),
    );
    const refused = (await metric(hub, 'edgefleet_hub_mqtt_connect_refused_total', 'reason="rate"')) - before;
    assert.ok(refused >= 60, `only ${refused} of 120 refused at 20/s (burst 40)`);
    // The bucket refills: a legitimate client gets in a little later.
    await until(async () => {
      try {
        const c = await connect(hub, { clientId: 'dev-b', username: 'dev-b', password: tokens.B });
        await c.endAsync();
        return true;
      } catch {
        return false;
      }
    }, 10_000, 'a legitimate connection after the flood');
    row('connection flood from one address', `${refused} of ${socks.length} refused at 20/s, legitimate client connected after refill`);
  });

  test('failed logins from one address: past the budget refused without a scrypt; cached tokens keep working', async () => {
    // Earlier rows spent some of 127.0.0.1's budget (60 a minute): count 401s until the 429.
    let refused401 = 0;
    let limited: Response | undefined;
    for (let i = 0; i < 80 && !limited; i++) {
      const res = await fetch(`${hub.httpUrl}/v1/devices`, { headers: { authorization: `Bearer ${'0'.repeat(16)}.${'x'.repeat(43)}` } });
      await res.arrayBuffer();
      if (res.status === 401) refused401++;
      else if (res.status === 429) limited = res;
      else assert.fail(`status ${res.status}`);
    }
    assert.ok(limited, 'no 429 after 80 bad tokens');
    assert.ok(Number(limited.headers.get('retry-after')) >= 1, 'Retry-After');
    // A token verified before (cached) still works from the same address.
    assert.equal((await api(hub, 'GET', '/v1/devices', hub.adminToken)).status, 200);
    // MQTT from the same address: refused before the credential check, CONNACK 3.
    assert.equal(await refusedCode(hub, { clientId: 'dev-b', username: 'dev-b', password: 'wrong-token-wrong-token' }), 3);
    assert.ok((await metric(hub, 'edgefleet_hub_mqtt_connect_refused_total', 'reason="auth_rate"')) >= 1);
    // The window ends: checks resume (a bad token is 401 again, a good device connects).
    skew = 61_000;
    try {
      const again = await fetch(`${hub.httpUrl}/v1/devices`, { headers: { authorization: `Bearer ${'0'.repeat(16)}.${'x'.repeat(43)}` } });
      assert.equal(again.status, 401);
      const c = await connect(hub, { clientId: 'dev-b', username: 'dev-b', password: tokens.B });
      await c.endAsync();
    } finally {
      skew = 0;
    }
    row('failed logins from one address', `${refused401} more 401s, then 429 (Retry-After ${limited.headers.get('retry-after') ?? '?'} s) and CONNACK 3; cached admin token 200; checks resume after the minute`);
  });

  test('secrets never reach the log or the audit log', async () => {
    const audit = await api(hub, 'GET', '/v1/audit?limit=1000', hub.adminToken);
    const text = `${logLines.join('')}\n${JSON.stringify(audit.json)}`;
    assert.ok(logLines.length > 20, 'the log was captured');
    for (const s of secrets) {
      const secretPart = s.includes('.') ? (s.split('.').pop() as string) : s;
      assert.ok(!text.includes(secretPart), `a secret appears in the logs: ${secretPart.slice(0, 6)}…`);
    }
    row('secrets in logs', `0 of ${secrets.length} secrets found in ${logLines.length} log lines and ${(audit.json.entries as unknown[]).length} audit entries`);
  });
});
