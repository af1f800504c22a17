/**
 * Security matrix, TLS rows (issue #6): a real hub with mqtts and HTTPS on port 0, certificates
 * made by scripts/lib/pki.ts with Debian's openssl (a dev CA, a second CA, an expired client
 * certificate), real mqtt.js clients, a real agent in process. Each test is one row of the
 * matrix in RELIABILITY.md and prints `security-tls: <row>: <outcome>`.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import mqtt, { type MqttClient } from 'mqtt';
import { loadAgentConfig } from '../../agent/config.ts';
import { createAgent, type Agent } from '../../agent/main.ts';
import { downloadArtifact } from '../../agent/updater/download.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { startHub } from '../helpers/mqtt-clients.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { createCa, issueCert, type CertFiles } from '../../scripts/lib/pki.ts';
import { mulberry32, sensorSample, SENSOR_FEATURES, MACHINE_STATES } from '../../scripts/lib/synthetic.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { topics } from '../../shared/protocol.ts';
import { clientTlsOptions, tlsFetch, type ClientCertMode, type FetchLike } from '../../shared/tls.ts';
import { MODELS_DIR, until } from '../helpers/fleet-in-process.ts';

const row = (name: string, outcome: string): void => console.log(`security-tls: ${name}: ${outcome}`);

interface Pki {
  ca: CertFiles;
  otherCa: CertFiles;
  server: CertFiles;
  client: Record<string, CertFiles>;
}

async function makePki(dir: string): Promise<Pki> {
  const ca = await createCa(dir);
  const otherCa = await createCa(dir, { name: 'other-ca', cn: 'some other CA' });
  const server = await issueCert(ca, dir, { cn: 'localhost', kind: 'server', name: 'server' });
  const client: Record<string, CertFiles> = {};
  for (const id of ['dev-1', 'dev-1-vib', 'dev-2', 'dev-4']) client[id] = await issueCert(ca, dir, { cn: id, kind: 'client' });
  client['dev-3-expired'] = await issueCert(ca, dir, { cn: 'dev-3', kind: 'client', days: -1, name: 'dev-3-expired' });
  client['dev-2-other-ca'] = await issueCert(otherCa, dir, { cn: 'dev-2', kind: 'client', name: 'dev-2-other-ca' });
  return { ca, otherCa, server, client };
}

function startTlsHub(dataDir: string, pki: Pki, clientCerts: ClientCertMode, httpClientCerts?: ClientCertMode, limits: Record<string, number> = {}): Promise<Hub> {
  const tls = { certFile: pki.server.certFile, keyFile: pki.server.keyFile, caFile: pki.ca.certFile, clientCerts, httpClientCerts };
  return startHub(dataDir, { tls, limits });
}

type Attempt = { ok: true; client: MqttClient } | { ok: false; why: string; code: number | string | undefined };

/** One mqtt.js connection attempt (no reconnects); resolves with the client or why it failed. */
function attempt(url: string, o: { id: string; token: string; caFile?: string; cert?: CertFiles }, clients: MqttClient[]): Promise<Attempt> {
  return new Promise((resolve) => {
    const tls = o.caFile || o.cert ? clientTlsOptions({ caFile: o.caFile, certFile: o.cert?.certFile, keyFile: o.cert?.keyFile }, 'test') : {};
    const c = mqtt.connect(url, { clientId: o.id, username: o.id, password: o.token, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...tls });
    clients.push(c);
    let done = false;
    const finish = (r: Attempt): void => {
      if (done) return;
      done = true;
      if (!r.ok) c.end(true);
      resolve(r);
    };
    c.once('connect', () => finish({ ok: true, client: c }));
    c.once('error', (err: Error & { code?: number | string }) => finish({ ok: false, why: err.message, code: err.code }));
    c.once('close', () => finish({ ok: false, why: 'connection closed', code: undefined }));
  });
}

const refusedTls = (hub: Hub, reason: string): Promise<number> => counterValue(hub, 'edgefleet_hub_mqtt_tls_refused_total', { reason });

async function counterValue(hub: Hub, name: string, labels: Record<string, string>): Promise<number> {
  const m = hub.registry.getSingleMetric(name);
  assert.ok(m, `metric ${name}`);
  const { values } = await m.get();
  const hit = values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x));
  return hit?.value ?? 0;
}

describe('security matrix: TLS and mutual TLS (clientCerts required on MQTT, optional on HTTPS)', () => {
  let dir: string;
  let pki: Pki;
  let hub: Hub;
  let operator: FetchLike;
  const tokens: Record<string, string> = {};
  const clients: MqttClient[] = [];
  const agents: Agent[] = [];

  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const res = await operator(`${hub.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
    return JSON.parse(text) as T;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-tls-'));
    await makeModels({ outDir: MODELS_DIR });
    pki = await makePki(join(dir, 'pki'));
    hub = await startTlsHub(join(dir, 'hub'), pki, 'required', 'optional');
    assert.match(hub.mqttUrl, /^mqtts:\/\//);
    assert.match(hub.httpUrl, /^https:\/\//);
    // The operator has no client certificate: the API's mode is 'optional'.
    operator = tlsFetch(clientTlsOptions({ caFile: pki.ca.certFile }, 'test'));
    for (const id of ['dev-1', 'dev-2', 'dev-3', 'dev-4']) tokens[id] = (await api<{ token: string }>('POST', '/v1/devices', { id, group: 'tls' })).token;
    tokens['dev-1-vib'] = (await api<{ token: string }>('POST', '/v1/devices', { id: 'dev-1-vib', kind: 'sensor', device: 'dev-1' })).token;
  });

  after(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
    for (const a of agents) await a.stop();
    if (hub) assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('agent over mqtts with a good certificate connects and its telemetry arrives', async () => {
    const file = writeAgentConfig({
      dir: join(dir, 'dev-1'),
      deviceId: 'dev-1',
      token: tokens['dev-1']!,
      mqttUrl: hub.mqttUrl,
      modelsDir: MODELS_DIR,
      extra: { hub: { httpUrl: hub.httpUrl, tls: { caFile: pki.ca.certFile, certFile: pki.client['dev-1']!.certFile, keyFile: pki.client['dev-1']!.keyFile } } },
    });
    const agent = createAgent(loadAgentConfig({ file, env: {} }), { log: silentLogger() });
    agents.push(agent);
    await agent.start();
    const sensor = await attempt(hub.mqttUrl, { id: 'dev-1-vib', token: tokens['dev-1-vib']!, caFile: pki.ca.certFile, cert: pki.client['dev-1-vib'] }, clients);
    assert.ok(sensor.ok, sensor.ok ? '' : sensor.why);
    const rng = mulberry32(7);
    const n = 20;
    for (let i = 0; i < n; i++) {
      const values = sensorSample(rng, MACHINE_STATES[i % 3]!);
      const features = Object.fromEntries(SENSOR_FEATURES.map((f, k) => [f, values[k]]));
      await sensor.client.publishAsync(topics.input('dev-1', 'vibration'), JSON.stringify({ id: `r-${i}`, ts: Date.now(), features }), { qos: 1 });
    }
    const stored = async (): Promise<number> => (await hub.store.queryTelemetry({ deviceId: 'dev-1', stream: 'inference', limit: 1000 })).length;
    await until(async () => (await stored()) === n, 20_000, 'the agent’s inference telemetry at the hub');
    assert.ok(hub.store && (await hub.store.getDevice('dev-1'))?.online, 'dev-1 online');
    row('agent over mqtts, good certificate', `connected, ${await stored()}/${n} inference records stored at the hub`);
  });

  test('client trusting the WRONG CA refuses the hub; a client certificate from another CA is refused by the hub', async () => {
    const wrongTrust = await attempt(hub.mqttUrl, { id: 'dev-2', token: tokens['dev-2']!, caFile: pki.otherCa.certFile, cert: pki.client['dev-2'] }, clients);
    assert.equal(wrongTrust.ok, false);
    assert.match(wrongTrust.ok ? '' : wrongTrust.why, /issuer|verify|self.signed/i);
    await assert.rejects(tlsFetch(clientTlsOptions({ caFile: pki.otherCa.certFile }, 'test'))(`${hub.httpUrl}/healthz`), /issuer|verify|self.signed/i);

    const before = await refusedTls(hub, 'cert_untrusted');
    const otherCa = await attempt(hub.mqttUrl, { id: 'dev-2', token: tokens['dev-2']!, caFile: pki.ca.certFile, cert: pki.client['dev-2-other-ca'] }, clients);
    assert.equal(otherCa.ok, false, 'a certificate from another CA must not get in');
    assert.equal(await refusedTls(hub, 'cert_untrusted'), before + 1);
    row('wrong CA', `client refuses the hub (${wrongTrust.ok ? '' : wrongTrust.why}); hub closes on a client cert from another CA (${otherCa.ok ? '' : otherCa.why}), tls_refused{cert_untrusted} +1`);
  });

  test('EXPIRED client certificate refused', async () => {
    const before = await refusedTls(hub, 'cert_expired');
    const expired = await attempt(hub.mqttUrl, { id: 'dev-3', token: tokens['dev-3']!, caFile: pki.ca.certFile, cert: pki.client['dev-3-expired'] }, clients);
    assert.equal(expired.ok, false, 'an expired certificate must not get in');
    assert.equal(await refusedTls(hub, 'cert_expired'), before + 1);
    // The same device with a valid certificate gets in: the refusal was the expiry.
    const valid = await issueCert(pki.ca, join(dir, 'pki'), { cn: 'dev-3', kind: 'client', name: 'dev-3-valid' });
    const ok = await attempt(hub.mqttUrl, { id: 'dev-3', token: tokens['dev-3']!, caFile: pki.ca.certFile, cert: valid }, clients);
    assert.ok(ok.ok, ok.ok ? '' : ok.why);
    row('expired certificate', `closed after the handshake (${expired.ok ? '' : expired.why}), tls_refused{cert_expired} +1; a valid certificate for the same id connects`);
  });

  test("clientCerts 'required': no client certificate, no connection", async () => {
    const before = await refusedTls(hub, 'cert_missing');
    const none = await attempt(hub.mqttUrl, { id: 'dev-2', token: tokens['dev-2']!, caFile: pki.ca.certFile }, clients);
    assert.equal(none.ok, false);
    assert.equal(await refusedTls(hub, 'cert_missing'), before + 1);
    row('no client certificate (required)', `closed after the handshake (${none.ok ? '' : none.why}), tls_refused{cert_missing} +1`);
  });

  test('CN ≠ clientId refused with CONNACK 5 and edgefleet_hub_mqtt_connect_refused_total{reason="cert_cn_mismatch"}', async () => {
    const before = await counterValue(hub, 'edgefleet_hub_mqtt_connect_refused_total', { reason: 'cert_cn_mismatch' });
    // dev-4's valid certificate, dev-2's id and token: the certificate binds dev-4.
    const r = await attempt(hub.mqttUrl, { id: 'dev-2', token: tokens['dev-2']!, caFile: pki.ca.certFile, cert: pki.client['dev-4'] }, clients);
    assert.equal(r.ok, false);
    assert.equal(r.ok ? undefined : r.code, 5, r.ok ? '' : r.why);
    assert.equal(await counterValue(hub, 'edgefleet_hub_mqtt_connect_refused_total', { reason: 'cert_cn_mismatch' }), before + 1);
    // A matching certificate with a wrong token is refused too: the certificate does not replace the token.
    const noToken = await attempt(hub.mqttUrl, { id: 'dev-4', token: 'not-the-token', caFile: pki.ca.certFile, cert: pki.client['dev-4'] }, clients);
    assert.equal(noToken.ok ? undefined : noToken.code, 4);
    const own = await attempt(hub.mqttUrl, { id: 'dev-4', token: tokens['dev-4']!, caFile: pki.ca.certFile, cert: pki.client['dev-4'] }, clients);
    assert.ok(own.ok, own.ok ? '' : own.why);
    row('CN != clientId', 'CONNACK 5 (not authorized), cert_cn_mismatch counted; right cert + wrong token: CONNACK 4; own cert + token: connected');
  });

  test('HTTPS artifact download with a certificate whose CN is another device → 401', async () => {
    const manifest = JSON.parse(await readFile(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')) as { name: string; version: string; artifact: { sha256: string; size: number } };
    const bytes = await readFile(join(MODELS_DIR, 'machine-state.onnx'));
    const version = '9.0.1';
    await api('POST', '/v1/models', { manifest: { ...manifest, version } });
    const put = await operator(`${hub.httpUrl}/v1/models/${manifest.name}/${version}/artifact`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/octet-stream' },
      body: bytes,
    });
    assert.equal(put.status, 201, await put.text());
    const sha = createHash('sha256').update(bytes).digest('hex');
    // Served only to devices it is assigned to (issue #14).
    await api('POST', '/v1/rollouts', { model: manifest.name, version, target: { devices: ['dev-1'] } });
    await hub.rollouts.tick();
    const url = `${hub.httpUrl}/v1/artifacts/${sha}`;
    const asDevice = (cert: CertFiles): FetchLike => tlsFetch(clientTlsOptions({ caFile: pki.ca.certFile, certFile: cert.certFile, keyFile: cert.keyFile }, 'test'));
    const download = (cert: CertFiles, path: string): Promise<void> =>
      downloadArtifact(
        { url, authorization: `Bearer dev-1:${tokens['dev-1']!}`, path, sha256: sha, size: bytes.length },
        { stallTimeoutMs: 10_000, maxBytes: bytes.length, attempts: 1, backoff: { initialMs: 10, maxMs: 10, factor: 2, jitter: 0 }, log: silentLogger(), fetch: asDevice(cert) },
      );

    const wrong = await asDevice(pki.client['dev-2']!)(url, { headers: { authorization: `Bearer dev-1:${tokens['dev-1']!}` } });
    assert.equal(wrong.status, 401);
    await wrong.body?.cancel();
    await assert.rejects(download(pki.client['dev-2']!, join(dir, 'wrong.part')), (e: EdgefleetError) => e.code === ErrorCode.UNAUTHORIZED);
    // The agent's downloader over HTTPS with its own certificate gets the exact signed bytes.
    const part = join(dir, 'right.part');
    await download(pki.client['dev-1']!, part);
    assert.deepEqual(await readFile(part), bytes);
    row('HTTPS artifact, cert CN of another device', `401 (downloader: ${ErrorCode.UNAUTHORIZED}); own certificate: ${bytes.length} bytes, sha256 verified`);
  });

  test('plain MQTT to the TLS port fails cleanly and the hub keeps serving', async () => {
    const before = await refusedTls(hub, 'handshake');
    const plainUrl = hub.mqttUrl.replace(/^mqtts:/, 'mqtt:');
    const plain = await attempt(plainUrl, { id: 'dev-2', token: tokens['dev-2']! }, clients);
    assert.equal(plain.ok, false);
    await until(async () => (await refusedTls(hub, 'handshake')) > before, 5000, 'the plain connection counted as a failed handshake');
    const good = await attempt(hub.mqttUrl, { id: 'dev-2', token: tokens['dev-2']!, caFile: pki.ca.certFile, cert: pki.client['dev-2'] }, clients);
    assert.ok(good.ok, good.ok ? '' : good.why);
    const health = await operator(`${hub.httpUrl}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
    row('plain MQTT on the mqtts port', `refused (${plain.why}), counted; next TLS client connects, /healthz 200`);
  });
});

describe('TLS modes and config', () => {
  let dir: string;
  let pki: Pki;
  const clients: MqttClient[] = [];
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-tls-opt-'));
    pki = await makePki(join(dir, 'pki'));
  });
  after(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  test("clientCerts 'optional': no certificate + token connects, a certificate that does not verify is closed", async () => {
    const hub = await startTlsHub(join(dir, 'hub'), pki, 'optional');
    try {
      const token = (await (await tlsFetch(clientTlsOptions({ caFile: pki.ca.certFile }, 'test'))(`${hub.httpUrl}/v1/devices`, {
        method: 'POST',
        headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ id: 'dev-2' }),
      })).json() as { token: string }).token;
      const noCert = await attempt(hub.mqttUrl, { id: 'dev-2', token, caFile: pki.ca.certFile }, clients);
      assert.ok(noCert.ok, noCert.ok ? '' : noCert.why);
      await noCert.client.endAsync();
      const bad = await attempt(hub.mqttUrl, { id: 'dev-2', token, caFile: pki.ca.certFile, cert: pki.client['dev-2-other-ca'] }, clients);
      assert.equal(bad.ok, false);
      assert.equal(await refusedTls(hub, 'cert_untrusted'), 1);
      assert.equal(await refusedTls(hub, 'cert_missing'), 0);
      row("clientCerts 'optional'", `no certificate: connected with the token; certificate from another CA: closed (${bad.ok ? '' : bad.why})`);
    } finally {
      assert.deepEqual(await hub.stop(), []);
    }
  });

  test('the connection rate limit applies before the TLS handshake', async () => {
    const hub = await startTlsHub(join(dir, 'hub-rate'), pki, 'optional', undefined, { maxConnectsPerSecondPerIp: 1 });
    try {
      const tls = clientTlsOptions({ caFile: pki.ca.certFile }, 'test');
      const outcomes = await Promise.all(
        Array.from({ length: 8 }, () =>
          new Promise<string>((resolve) => {
            const s = tlsConnect({ ...tls, host: '127.0.0.1', port: hub.mqttPort, servername: 'localhost' });
            s.once('secureConnect', () => {
              s.end(); // gracefully: the hub completes its side of the handshake
              resolve('handshake');
            });
            s.once('error', (err: Error & { code?: string }) => resolve(err.code ?? err.message));
          }),
        ),
      );
      const refused = await counterValue(hub, 'edgefleet_hub_mqtt_connect_refused_total', { reason: 'rate' });
      const handshakes = outcomes.filter((o) => o === 'handshake').length;
      // Burst 2 (two seconds' worth); a slow machine may refill one more.
      assert.ok(handshakes >= 1 && handshakes <= 4, outcomes.join(','));
      assert.equal(refused, 8 - handshakes);
      // Refused before TLS: no failed handshakes counted for them.
      assert.equal(await refusedTls(hub, 'handshake'), 0);
      row('connection flood over TLS', `${handshakes}/8 handshakes, ${refused} closed at accept (rate), 0 TLS handshakes spent on them`);
    } finally {
      assert.deepEqual(await hub.stop(), []);
    }
  });

  test('an unreadable certificate file is a BAD_CONFIG error at start', async () => {
    const config = loadHubConfig({
      env: {},
      overrides: { dataDir: join(dir, 'hub-bad'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, tls: { certFile: join(dir, 'missing.crt'), keyFile: pki.server.keyFile } },
    });
    const hub = await createHub(config, { log: silentLogger() });
    await assert.rejects(hub.start(new AbortController().signal), (e: EdgefleetError) => e.code === ErrorCode.BAD_CONFIG && /tls\.certFile: cannot read/.test(e.message));
    await hub.stop();
    assert.throws(() => loadHubConfig({ env: {}, overrides: { tls: { certFile: 'a.crt', keyFile: 'a.key', clientCerts: 'required' } } }), /client certificates need tls\.caFile/);
    row('config', 'unreadable tls.certFile: BAD_CONFIG at start; clientCerts without caFile: BAD_CONFIG at load');
  });
});
