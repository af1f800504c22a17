/**
 * The hub's HTTP API and the operator CLI commands against a real hub (port 0, SQLite in a
 * temp dir): auth, device registration (token shown once, only its hash stored), listing,
 * errors, /metrics, /healthz, telemetry paging, fleet totals.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import mqtt, { type MqttClient } from 'mqtt';
import { run as deviceAdd } from '../../cli/commands/device-add.ts';
import { run as devicesCmd } from '../../cli/commands/devices.ts';
import { run as sensorAdd } from '../../cli/commands/sensor-add.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { HUB_DB_FILE } from '../../hub/store/sqlite-store.ts';
import { createLogger } from '../../shared/log.ts';
import { topics } from '../../shared/protocol.ts';

describe('hub HTTP API and operator CLI', () => {
  let dir: string;
  let hub: Hub;
  let logText = '';
  const mqttClients: MqttClient[] = [];

  const api = (path: string, init: RequestInit & { token?: string | null } = {}): Promise<Response> => {
    const token = init.token === undefined ? hub.adminToken : init.token;
    const headers: Record<string, string> = { ...(init.body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) };
    return fetch(`${hub.httpUrl}${path}`, { ...init, headers });
  };
  const errorOf = async (res: Response): Promise<{ code: string; message: string }> => ((await res.json()) as { error: { code: string; message: string } }).error;

  function cli(): { io: { out: (s: string) => void; err: (s: string) => void; env: NodeJS.ProcessEnv }; out: () => string; err: () => string } {
    let out = '';
    let err = '';
    return { io: { out: (s) => (out += s), err: (s) => (err += s), env: {} }, out: () => out, err: () => err };
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-hub-api-'));
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logText += chunk.toString();
        cb();
      },
    });
    const log = createLogger({ name: 'hub', level: 'debug', destination: sink });
    const config = loadHubConfig({ env: {}, overrides: { dataDir: dir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0, maxBodyBytes: 4096 } } });
    hub = await createHub(config, { log });
    await hub.start(new AbortController().signal);
  });

  after(async () => {
    await Promise.all(mqttClients.map((c) => c.endAsync(true).catch(() => undefined)));
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('healthz needs no token; everything else does', async () => {
    const h = await api('/healthz', { token: null });
    assert.equal(h.status, 200);
    assert.deepEqual(await h.json(), { ok: true });
    for (const path of ['/v1/devices', '/v1/fleet', '/metrics', '/v1/telemetry']) {
      const res = await api(path, { token: null });
      assert.equal(res.status, 401, path);
      assert.equal((await errorOf(res)).code, 'UNAUTHORIZED');
      const bad = await api(path, { token: `${hub.adminToken.slice(0, -2)}xx` });
      assert.equal(bad.status, 401, `${path} with a wrong token`);
    }
    assert.equal((await api('/v1/devices', { token: 'not-even-a-token' })).status, 401);
    const post = await api('/v1/devices', { method: 'POST', token: null, body: JSON.stringify({ id: 'x' }) });
    assert.equal(post.status, 401);
  });

  test('admin.token is written 0600 and never logged', async () => {
    const file = join(dir, 'admin.token');
    assert.equal((await readFile(file, 'utf8')).trim(), hub.adminToken);
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.ok(logText.includes('admin token created'), 'expected the creation to be logged');
    assert.ok(!logText.includes(hub.adminToken.split('.')[1] as string), 'the admin token leaked into the log');
    const info = JSON.parse(await readFile(join(dir, 'hub.json'), 'utf8')) as { mqttUrl: string; httpUrl: string; pid: number };
    assert.deepEqual(info, { mqttUrl: hub.mqttUrl, httpUrl: hub.httpUrl, pid: process.pid });
  });

  test('creating a device returns its token once and stores only a hash', async () => {
    const res = await api('/v1/devices', { method: 'POST', body: JSON.stringify({ id: 'cam-01', group: 'line-1', labels: { site: 'berlin' } }) });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    const body = (await res.json()) as { id: string; kind: string; group: string; token: string };
    assert.equal(body.id, 'cam-01');
    assert.equal(body.kind, 'device');
    assert.match(body.token, /^[A-Za-z0-9_-]{43}$/);

    const db = new Database(join(dir, HUB_DB_FILE), { readonly: true });
    try {
      const row = db.prepare('SELECT token_hash, token_salt, token_kdf FROM principals WHERE id = ?').get('cam-01') as { token_hash: Buffer; token_salt: Buffer; token_kdf: string };
      assert.equal(row.token_hash.length, 32);
      assert.equal(row.token_salt.length, 16);
      // A device token is 256 random bits: the fast keyed hash, not scrypt (hub/auth/tokens.ts).
      assert.match(row.token_kdf, /^hmac-sha256/);
      assert.ok(!row.token_hash.equals(Buffer.from(body.token)));
    } finally {
      db.close();
    }
    for (const f of [HUB_DB_FILE, `${HUB_DB_FILE}-wal`]) {
      const bytes = await readFile(join(dir, f)).catch(() => Buffer.alloc(0));
      assert.equal(bytes.includes(body.token), false, `plaintext token found in ${f}`);
    }
    assert.ok(!logText.includes(body.token), 'device token leaked into the log');

    // The token works on MQTT, exactly as printed.
    const c = await mqtt.connectAsync(hub.mqttUrl, { protocolVersion: 4, reconnectPeriod: 0, clientId: 'cam-01', username: 'cam-01', password: body.token });
    mqttClients.push(c);
    assert.equal(c.connected, true);

    // It is never shown again.
    const one = await api('/v1/devices/cam-01');
    assert.equal(one.status, 200);
    assert.ok(!(await one.text()).includes(body.token));
  });

  test('conflicts, bad bodies and unknown things get 409, 400, 404, 405 and 413', async () => {
    const dup = await api('/v1/devices', { method: 'POST', body: JSON.stringify({ id: 'cam-01', group: 'x' }) });
    assert.equal(dup.status, 409);
    assert.equal((await errorOf(dup)).code, 'CONFLICT');
    for (const body of [
      '{"id":"bad/id"}',
      '{"id":"#"}',
      '{"id":"ok-id","extra":1}',
      '{"id":"s1","kind":"sensor"}',
      '{"id":"d1","device":"cam-01"}',
      '{"id":"ok-id","labels":{"k":1}}',
      '{not json',
      '[]',
    ]) {
      const res = await api('/v1/devices', { method: 'POST', body });
      assert.equal(res.status, 400, body);
      assert.equal((await errorOf(res)).code, 'BAD_INPUT', body);
    }
    const orphan = await api('/v1/devices', { method: 'POST', body: JSON.stringify({ id: 's-x', kind: 'sensor', device: 'nope' }) });
    assert.equal(orphan.status, 404);
    const notFound = await api('/v1/devices/nope');
    assert.equal(notFound.status, 404);
    assert.deepEqual(Object.keys(await errorOf(notFound)).sort(), ['code', 'message']);
    assert.equal((await api('/v1/nothing')).status, 404);
    const wrongMethod = await api('/v1/fleet', { method: 'POST', body: '{}' });
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.headers.get('allow'), 'GET');
    const huge = await api('/v1/devices', { method: 'POST', body: JSON.stringify({ id: 'big', labels: { pad: 'x'.repeat(5000) } }) });
    assert.equal(huge.status, 413);
    assert.equal((await errorOf(huge)).code, 'PAYLOAD_TOO_LARGE');
    assert.equal((await api('/v1/telemetry?limit=0')).status, 400);
    assert.equal((await api('/v1/telemetry?device=a/b')).status, 400);
  });

  test('listing, one device, telemetry paging and fleet totals', async () => {
    const created = await api('/v1/devices', { method: 'POST', body: JSON.stringify({ id: 'gw-7', group: 'line-2' }) });
    const { token } = (await created.json()) as { token: string };
    const c = await mqtt.connectAsync(hub.mqttUrl, { protocolVersion: 4, reconnectPeriod: 0, clientId: 'gw-7', username: 'gw-7', password: token });
    mqttClients.push(c);
    const records = [0, 1, 2, 3, 4].map((seq) => ({ stream: 'inference', epoch: 1, seq, ts: 1000 + seq, kind: 'inference', body: { seq } }));
    await c.publishAsync(topics.of('gw-7', 'telemetry'), JSON.stringify({ v: 1, type: 'telemetry', deviceId: 'gw-7', batchId: 'b', records }), { qos: 1 });
    await c.publishAsync(
      topics.of('gw-7', 'hello'),
      JSON.stringify({ v: 1, type: 'hello', deviceId: 'gw-7', ts: Date.now(), agentVersion: '9.9.9', bootEpoch: 1, models: [{ name: 'm', version: '1' }], streams: [{ stream: 'inference', epoch: 1, nextSeq: 9, pending: 4 }] }),
      { qos: 1 },
    );

    const list = (await (await api('/v1/devices')).json()) as { items: { id: string; online: boolean; agentVersion: string | null; counters: Record<string, number> }[]; total: number; nextCursor: string | null };
    assert.equal(list.total, list.items.length);
    assert.equal(list.nextCursor, null, 'one page holds them all');
    const gw = list.items.find((d) => d.id === 'gw-7');
    assert.ok(gw);
    assert.equal(gw.online, true);
    assert.equal(gw.agentVersion, '9.9.9');
    assert.deepEqual(gw.counters, { stored: 5, duplicates: 0, badMessages: 0, gaps: 0, backlog: 4 });
    assert.deepEqual(list.items.map((d) => d.id), [...list.items.map((d) => d.id)].sort());

    const one = (await (await api('/v1/devices/gw-7')).json()) as { streams: unknown[]; streamStats: { count: number }[] };
    assert.equal(one.streams.length, 1);
    assert.equal(one.streamStats[0]?.count, 5);

    const seqs: number[] = [];
    let after: number | null = 0;
    let pages = 0;
    while (after !== null) {
      const page = (await (await api(`/v1/telemetry?device=gw-7&limit=2&after=${after}`)).json()) as { records: { seq: number; deviceId: string }[]; next: number | null };
      seqs.push(...page.records.map((r) => r.seq));
      after = page.next;
      pages++;
    }
    assert.deepEqual(seqs, [0, 1, 2, 3, 4]);
    assert.equal(pages, 3);
    const filtered = (await (await api('/v1/telemetry?kind=nothing')).json()) as { records: unknown[] };
    assert.deepEqual(filtered.records, []);

    const fleet = (await (await api('/v1/fleet')).json()) as { devices: { total: number; online: number }; records: { stored: number; perSecondLastMinute: number } };
    assert.ok(fleet.devices.total >= 2);
    assert.ok(fleet.devices.online >= 1);
    assert.equal(fleet.records.stored, 5);
    assert.ok(fleet.records.perSecondLastMinute > 0);
  });

  test('/metrics is Prometheus text with the hub metrics', async () => {
    const res = await api('/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    assert.match(text, /^# HELP edgefleet_hub_telemetry_records_total /m);
    assert.match(text, /^# TYPE edgefleet_hub_telemetry_records_total counter$/m);
    assert.match(text, /^edgefleet_hub_telemetry_records_total\{result="stored"\} 5$/m);
    assert.match(text, /^edgefleet_hub_mqtt_clients \d+$/m);
    assert.match(text, /^# TYPE edgefleet_hub_mqtt_connect_refused_total counter$/m);
  });

  test('CLI: device add, sensor add and devices through --data', async () => {
    let c = cli();
    assert.equal(await deviceAdd(['cli-dev', '--group', 'g1', '--label', 'site=x', '--label', 'line=2', '--data', dir], c.io), 0, c.err());
    const token = /^ {2}(\S{43})$/m.exec(c.out())?.[1];
    assert.ok(token, c.out());

    c = cli();
    assert.equal(await deviceAdd(['cli-dev', '--data', dir], c.io), 1);
    assert.match(c.err(), /already exists.*409/);

    c = cli();
    assert.equal(await sensorAdd(['cli-sensor', '--device', 'cli-dev', '--json', '--data', dir], c.io), 0, c.err());
    const sensor = JSON.parse(c.out()) as { id: string; kind: string; device: string; token: string };
    assert.equal(sensor.kind, 'sensor');
    assert.equal(sensor.device, 'cli-dev');

    c = cli();
    assert.equal(await devicesCmd(['--json', '--data', dir], c.io), 0, c.err());
    const listed = JSON.parse(c.out()) as { id: string; labels: Record<string, string> }[];
    assert.deepEqual(listed.find((d) => d.id === 'cli-dev')?.labels, { site: 'x', line: '2' });
    assert.ok(listed.some((d) => d.id === 'cli-sensor'));

    // Env location, table output.
    c = cli();
    c.io.env = { EDGEFLEET_HUB: hub.httpUrl, EDGEFLEET_TOKEN: hub.adminToken };
    assert.equal(await devicesCmd([], c.io), 0, c.err());
    assert.match(c.out(), /^ID\s+KIND\s+ONLINE\s+LAST SEEN\s+GROUP\s+LABELS\s+MODELS\s+STORED\s+DUPES\s+GAPS\s+BACKLOG$/m);
    assert.match(c.out(), /^gw-7\s+device\s+yes\s+\S+ ago\s+line-2\s+-\s+m@1\s+5\s+0\s+0\s+4$/m);

    // Usage errors exit 2, hub errors exit 1, --help exits 0.
    c = cli();
    assert.equal(await deviceAdd(['--data', dir], c.io), 2);
    assert.match(c.err(), /usage: edgefleet device add/);
    c = cli();
    assert.equal(await deviceAdd(['x', '--label', 'novalue', '--data', dir], c.io), 2);
    c = cli();
    assert.equal(await sensorAdd(['s9', '--data', dir], c.io), 2);
    c = cli();
    assert.equal(await devicesCmd(['--bogus'], c.io), 2);
    c = cli();
    assert.equal(await devicesCmd(['--hub', hub.httpUrl, '--token', 'wrong'], c.io), 4, 'exit 4: not authorized');
    assert.match(c.err(), /refused the API token/);
    c = cli();
    assert.equal(await devicesCmd(['--data', join(dir, 'missing')], c.io), 3, 'exit 3: hub unreachable');
    assert.match(c.err(), /no hub found/);
    c = cli();
    assert.equal(await devicesCmd(['--help'], c.io), 0);
    assert.match(c.out(), /usage: edgefleet devices/);
  });
});
