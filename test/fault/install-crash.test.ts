/**
 * SIGKILL of a real agent CHILD PROCESS at random points of model installs (issue #3: "a crash
 * at any point of an install leaves exactly one complete, verified model active after
 * restart"). The test plays the hub: an unauthenticated aedes broker carries `model.install`
 * commands, a ReleaseServer serves the artifacts. Each round sends one install (increasing
 * counters, alternating artifacts), kills the agent after a random delay or right when the log
 * says the new version was swapped in (just before the state commit), restarts it and checks:
 * state.json parses, its active version's files match the signed size and sha256, /healthz
 * lists exactly that version, and an inference works. Prints a figure line for RELIABILITY.md.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Aedes } from 'aedes';
import mqtt, { type MqttClient } from 'mqtt';
import { mulberry32 } from '../../scripts/lib/rng.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { ServiceProcess } from '../../scripts/fleet/processes.ts';
import { signCommand } from '../../shared/command-signing.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { PROTOCOL_VERSION, topics } from '../../shared/protocol.ts';
import { INSTALL_COMMAND } from '../../shared/updates.ts';
import { MODELS_DIR, until } from '../helpers/fleet-in-process.ts';
import { installArgs, ReleaseServer, signedRelease } from '../helpers/release-server.ts';

const KILLS = Number(process.env.INSTALL_CRASH_KILLS ?? 30);
const DEVICE = 'crash-upd';

describe('install crash safety (agent child process, SIGKILL mid-install)', () => {
  const root = mkdtempSync(join(tmpdir(), 'ef-install-crash-'));
  const server = new ReleaseServer();
  let broker: Aedes;
  let mqttServer: net.Server;
  let hubClient: MqttClient;
  let agent: ServiceProcess | undefined;
  let configFile: string;
  const shaByVersion = new Map<string, { sha256: string; size: number }>();

  before(async () => {
    broker = await Aedes.createBroker();
    mqttServer = net.createServer(broker.handle);
    await new Promise<void>((resolve) => mqttServer.listen(0, '127.0.0.1', resolve));
    const mqttUrl = `mqtt://127.0.0.1:${(mqttServer.address() as net.AddressInfo).port}`;
    await server.start();
    const keyFile = server.writePublicKey(join(root, 'release.pem'));
    configFile = writeAgentConfig({
      dir: join(root, 'agent'),
      deviceId: DEVICE,
      token: 'not-checked-here',
      mqttUrl,
      modelsDir: MODELS_DIR,
      extra: { hub: { httpUrl: server.url }, updates: { trustedKeys: [keyFile], probationMs: 0 }, log: { level: 'info' } },
    });
    hubClient = await mqtt.connectAsync(mqttUrl, { clientId: 'test-hub', protocolVersion: 4, reconnectPeriod: 0 });
    const config = ManifestSchema.parse(JSON.parse(readFileSync(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')));
    shaByVersion.set(config.version, { sha256: config.artifact.sha256, size: config.artifact.size });
  });

  after(async () => {
    await agent?.kill();
    await hubClient?.endAsync(true);
    await server.stop();
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    await new Promise<void>((resolve) => mqttServer.close(() => resolve()));
    rmSync(root, { recursive: true, force: true });
  });

  async function startAgent(): Promise<{ proc: ServiceProcess; port: number }> {
    const proc = new ServiceProcess('agent', ['agent', '--config', configFile], { keepLines: 500 });
    const line = await proc.waitForMsg('http listening', 60_000);
    const port = Number(line.port);
    await until(async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.status === 200, 30_000, 'agent healthy');
    await proc.waitForMsg('connected to hub', 30_000);
    return { proc, port };
  }

  /** Exactly one valid active model: returns its version. */
  async function checkOneValidModel(port: number): Promise<string> {
    const updates = join(root, 'agent', 'data', 'models');
    const statePath = join(updates, 'state.json');
    let version = '1.0.0';
    let counter: number;
    if (existsSync(statePath)) {
      const state = JSON.parse(readFileSync(statePath, 'utf8')) as { models: Record<string, { active: { version: string; counter: number; sha256: string } }> };
      const active = state.models['machine-state']?.active;
      assert.ok(active, 'state names an active version');
      ({ version, counter } = active);
      if (counter > 0) {
        const dir = join(updates, 'machine-state', `${version}-${counter}`);
        const bytes = readFileSync(join(dir, 'model.onnx'));
        const signed = shaByVersion.get(version)!;
        assert.equal(bytes.length, signed.size, 'active file has the signed size');
        assert.equal(createHash('sha256').update(bytes).digest('hex'), signed.sha256, 'active file has the signed sha256');
        const manifest = ManifestSchema.parse(JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')));
        assert.equal(manifest.artifact.sha256, signed.sha256);
      }
    }
    const health = (await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()) as { models: string[] };
    assert.deepEqual(health.models, [`machine-state@${version}`]);
    const res = await fetch(`http://127.0.0.1:${port}/v1/infer/vibration`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id: 'check', values: [1, 2, 3, 4, 0.5, 0.3, 0.2, 40] }),
    });
    assert.equal(res.status, 200, await res.text());
    return version;
  }

  it(`${KILLS} SIGKILLs at random points of an install leave exactly one valid model each time`, { timeout: 600_000 }, async () => {
    const fp32: Manifest = { ...ManifestSchema.parse(JSON.parse(readFileSync(join(MODELS_DIR, 'machine-state-fp32.manifest.json'), 'utf8'))), name: 'machine-state' };
    const base = readFileSync(join(MODELS_DIR, 'machine-state-fp32.onnx'));
    // Two artifacts of the same model (a different ModelProto.doc_string, field 6).
    const artifacts = ['A', 'B'].map((t) => Buffer.concat([base, Buffer.from([0x32, 1]), Buffer.from(t)]));
    for (const a of artifacts) server.add(a);
    const rand = mulberry32(Number(process.env.INSTALL_CRASH_SEED ?? 7));
    const t0 = Date.now();
    let { proc, port } = await startAgent();
    agent = proc;
    let current = await checkOneValidModel(port);
    const tally = { kills: 0, valid: 0, activeOld: 0, activeNew: 0, atSwap: 0 };
    for (let i = 0; i < KILLS; i++) {
      const version = `5.0.${i}`;
      const bytes = artifacts[i % 2]!;
      const release = signedRelease(server.key, fp32, bytes, { counter: 1000 + i, version });
      shaByVersion.set(version, { sha256: release.release.manifest.artifact.sha256, size: bytes.length });
      // Signed like the hub's (issue #14), with the release key the agent trusts.
      const cmd = signCommand({ v: PROTOCOL_VERSION, type: 'command', id: `install-crash-${i}`, ts: Date.now(), name: INSTALL_COMMAND, args: installArgs(release) }, DEVICE, server.key, { now: Date.now() });
      const swapped = proc.waitFor((l) => l.msg === 'model swapped in' && l.model === `machine-state@${version}`, 15_000, 'swap').catch(() => undefined);
      await hubClient.publishAsync(topics.of(DEVICE, 'cmd'), JSON.stringify(cmd), { qos: 1 });
      if (i % 3 === 2) {
        // Right around the commit: the new version serves, state.json is (about to be) written.
        if (await swapped) tally.atSwap++;
      } else {
        await sleep(Math.floor(rand() * 1500));
      }
      await proc.kill();
      tally.kills++;
      ({ proc, port } = await startAgent());
      agent = proc;
      const now = await checkOneValidModel(port);
      tally.valid++;
      if (now === version) tally.activeNew++;
      else if (now === current) tally.activeOld++;
      else assert.fail(`after kill ${i} the agent serves ${now}: neither the old ${current} nor the new ${version}`);
      current = now;
    }
    const partialDir = join(root, 'agent', 'data', 'models', '.partial');
    const partialLeft = existsSync(partialDir) ? readdirSync(partialDir).length : 0;
    const line = `install-crash: kills=${tally.kills} valid=${tally.valid} active_old=${tally.activeOld} active_new=${tally.activeNew} killed_at_swap=${tally.atSwap} partial_left=${partialLeft} seconds=${Math.round((Date.now() - t0) / 1000)}`;
    console.log(line);
    assert.equal(tally.valid, KILLS);
    assert.ok(tally.activeNew > 0 && tally.activeOld > 0, `kills must land both before and after the commit: ${line}`);
  });
});
