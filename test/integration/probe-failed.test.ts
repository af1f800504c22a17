/**
 * When the model probe itself cannot run (issue #12: its child could not load tsx outside the
 * checkout; here: a memory budget at the config's minimum, 64 MiB, below the ~100 MB Node and
 * onnxruntime take to start), the hub answers a push with PROBE_FAILED / 503 and stores
 * nothing, and the agent refuses the install as PROBE_FAILED without quarantining the model or
 * recording it as failed; it keeps the verified download, and the next try (with a probe that
 * can run) installs it without downloading again. Real hub, real agent, real probe children.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadAgentConfig } from '../../agent/config.ts';
import { createAgent, type Agent } from '../../agent/main.ts';
import { PARTIAL_DIR, QUARANTINE_DIR } from '../../agent/updater/updater.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { createLogger, silentLogger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { ModelEventSchema } from '../../shared/updates.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';
import { installArgs, ReleaseServer, sha256, signedRelease } from '../helpers/release-server.ts';

/** Below what the probe child needs to start (Node + tsx + onnxruntime: ~100 MB RSS at READY). */
const STARVED = { timeoutMs: 30_000, maxRssBytes: 64 * 2 ** 20, addressSpaceBudgetBytes: 1024 * 2 ** 20 };

interface LogLine {
  msg?: string;
  code?: string;
  err?: { code?: string; message?: string };
}

async function demoModel(): Promise<{ manifest: Manifest; bytes: Buffer }> {
  const manifest = ManifestSchema.parse(JSON.parse(await readFile(join(MODELS_DIR, 'machine-state-fp32.manifest.json'), 'utf8')));
  return { manifest: { ...manifest, name: 'machine-state' }, bytes: await readFile(join(MODELS_DIR, 'machine-state-fp32.onnx')) };
}

describe('hub: a push whose probe cannot run', () => {
  let dir: string;
  let hub: Hub | undefined;
  const logLines: LogLine[] = [];

  const start = async (probe?: typeof STARVED): Promise<Hub> => {
    const config = loadHubConfig({
      env: {},
      overrides: { dataDir: join(dir, 'hub'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, ...(probe ? { models: { probe } } : {}) },
    });
    const destination = { write: (line: string): void => void logLines.push(JSON.parse(line) as LogLine) };
    const h = await createHub(config, { log: probe ? createLogger({ name: 'hub', level: 'warn', destination }) : silentLogger() });
    await h.start(new AbortController().signal);
    return h;
  };
  const api = (h: Hub, path: string, init: RequestInit = {}): Promise<Response> =>
    fetch(`${h.httpUrl}${path}`, { ...init, headers: { ...(init.headers as Record<string, string> | undefined), authorization: `Bearer ${h.adminToken}` } });
  const put = (h: Hub, m: Manifest, bytes: Buffer): Promise<Response> =>
    api(h, `/v1/models/${m.name}/${m.version}/artifact`, { method: 'PUT', body: bytes, headers: { 'content-type': 'application/octet-stream' } });

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-probe-failed-hub-'));
    await makeModels({ outDir: MODELS_DIR });
  });
  after(async () => {
    await hub?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('answers 503 PROBE_FAILED (not 422 BAD_MODEL), stores nothing, and the same push succeeds once the probe can run', async () => {
    const { manifest, bytes } = await demoModel();
    hub = await start(STARVED);
    const announced = await api(hub, '/v1/models', { method: 'POST', body: JSON.stringify({ manifest }), headers: { 'content-type': 'application/json' } });
    assert.equal(announced.status, 202, await announced.clone().text());
    const res = await put(hub, manifest, bytes);
    const body = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(res.status, 503, JSON.stringify(body));
    // The API hides the text of 5xx errors (hub/api/http.ts); the code says what happened, the log why.
    assert.equal(body.error.code, 'PROBE_FAILED');
    assert.doesNotMatch(body.error.message, /could not be loaded safely/);
    const logged = logLines.find((l) => l.code === 'PROBE_FAILED' || l.err?.code === 'PROBE_FAILED');
    assert.ok(logged, logLines.map((l) => l.msg).join(' | '));
    assert.match(
      JSON.stringify(logged),
      /the model probe could not run, the model was not checked: its child process used \d+ MiB of memory, more than 64 MiB allowed before it was ready/,
    );
    assert.equal((await api(hub, `/v1/models/${manifest.name}/${manifest.version}`)).status, 404, 'not released');
    assert.equal(existsSync(join(dir, 'hub', 'artifacts', manifest.artifact.sha256.slice(0, 2), manifest.artifact.sha256)), false, 'not stored');
    await hub.stop();

    hub = await start();
    const retry = await put(hub, manifest, bytes);
    assert.equal(retry.status, 201, await retry.clone().text());
  });
});

describe('agent: an install whose validator cannot run', () => {
  const fleet = new InProcessFleet();
  const server = new ReleaseServer();
  let agent: Agent | undefined;
  let token: string;
  let configDir: string;
  let trusted: string;

  const startAgent = async (validator?: typeof STARVED): Promise<Agent> => {
    const file = writeAgentConfig({
      dir: configDir,
      deviceId: 'probe-failed-1',
      token,
      mqttUrl: fleet.hub.mqttUrl,
      modelsDir: MODELS_DIR,
      extra: { hub: { httpUrl: server.url }, updates: { trustedKeys: [trusted], probationMs: 0, ...(validator ? { validator } : {}) } },
    });
    const a = createAgent(loadAgentConfig({ file, env: {} }), { log: silentLogger() });
    await a.start();
    return a;
  };

  before(async () => {
    await fleet.startHub();
    await server.start();
    token = await fleet.addPrincipal({ id: 'probe-failed-1' });
    configDir = join(fleet.root, 'probe-failed-1');
    trusted = server.writePublicKey(join(fleet.root, 'test.pem'));
  });
  after(async () => {
    await agent?.stop();
    await server.stop();
    await fleet.stop();
  });

  test('refuses as PROBE_FAILED, quarantines nothing, records no failure, keeps the download; the retry installs it from disk', async () => {
    const { manifest, bytes } = await demoModel();
    const sha = server.add(bytes);
    const release = signedRelease(server.key, manifest, bytes, { counter: 10, version: '2.0.0' });
    agent = await startAgent(STARVED);
    const updatesDir = join(agent.config.dataDir, 'models');
    await until(() => agent!.link.connected, 20_000, 'agent connected');

    await assert.rejects(agent.updater!.install(installArgs(release, { rolloutId: 'r-probe' })), (err: Error & { code?: string; details?: { phase?: string; code?: string } }) => {
      assert.equal(err.code, 'PROBE_FAILED', err.message);
      assert.deepEqual(err.details, { phase: 'validate', code: 'PROBE_FAILED' });
      assert.match(err.message, /the model probe could not run, the model was not checked/);
      return true;
    });
    assert.deepEqual(readdirSync(join(updatesDir, QUARANTINE_DIR)), [], 'nothing quarantined');
    assert.deepEqual(readdirSync(join(updatesDir, PARTIAL_DIR)), [`${sha}.part`], 'the verified download is kept');
    const slot = agent.updater!.modelState().find((s) => s.name === 'machine-state');
    assert.deepEqual(slot?.failed ?? [], [], 'not recorded as a failed release: it may be tried again');
    assert.notEqual(slot?.active?.version, '2.0.0');
    // The hub hears about it as the probe's failure, not as a bad model.
    await until(async () => (await fleet.telemetry('probe-failed-1', 'events')).length > 0, 20_000, 'rejected event at the hub');
    const events = (await fleet.telemetry('probe-failed-1', 'events')).map((r) => ModelEventSchema.parse(r.body));
    assert.deepEqual(
      events.map((e) => [e.event, e.phase, e.code]),
      [['rejected', 'validate', 'PROBE_FAILED']],
    );

    await agent.stop();
    agent = await startAgent();
    const served = server.requests.filter((r) => r.sha === sha).length;
    const outcome = await agent.updater!.install(installArgs(release, { rolloutId: 'r-probe' }));
    assert.equal(outcome.state, 'active');
    assert.equal(server.requests.filter((r) => r.sha === sha).length, served, 'installed from the kept download, not fetched again');
    assert.equal(sha256(await readFile(join(updatesDir, 'machine-state', '2.0.0-10', 'model.onnx'))), sha);
  });
});
