/**
 * Signed state-changing commands, replays refused (issue #14): a real hub in-process (broker,
 * registry, rollout engine, its signing key) and a real agent whose MQTT link runs through a
 * man in the middle on the plain link. The MITM sees every packet from the hub, keeps the
 * signed commands, and injects its own publishes between the hub's packets. The legit path
 * (a rollout's install, a hub rollback, a second install) runs; unsigned, tampered (args,
 * device), wrong-device, expired and replayed commands are refused, counted by reason and
 * answered with FORBIDDEN, and the active version never changes; after an agent restart a
 * captured command is still refused (persisted replay memory). A guard-level case checks the
 * high-water mark with the device clock set back.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { loadAgentConfig } from '../../agent/config.ts';
import { DRIFT_SAMPLE_COMMAND } from '../../agent/drift/drift-monitor.ts';
import { COMMAND_REPLAY_FILE, CommandGuard } from '../../agent/link/command-guard.ts';
import { createAgent, type Agent } from '../../agent/main.ts';
import { SAMPLE_COMMAND } from '../../hub/alerts/delivery.ts';
import { encodeJson } from '../../shared/codec.ts';
import { commandClass, signCommand } from '../../shared/command-signing.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { CommandResultSchema, CommandSchema, PROTOCOL_VERSION, topics, type Command, type CommandResult } from '../../shared/protocol.ts';
import { generateSigningKey, signingKeyFromPem, trustedKeyFromPem, type SigningKey } from '../../shared/signing.ts';
import { INSTALL_COMMAND, ROLLBACK_COMMAND, type RollbackArgs } from '../../shared/updates.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';

const DEVICE = 'sig-1';
const CMD_TOPIC = topics.of(DEVICE, 'cmd');
const RESULT_TOPIC = topics.of(DEVICE, 'cmd/result');

/** A TCP man in the middle for MQTT: forwards both ways, records publishes, injects its own. */
class Mitm {
  readonly fromHub: { topic: string; payload: Buffer }[] = [];
  readonly results: CommandResult[] = [];
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  #toAgent: net.Socket | undefined;
  port = 0;

  constructor(hubPort: number) {
    this.#server = net.createServer((agentSide) => {
      const hubSide = net.connect(hubPort, '127.0.0.1');
      this.#toAgent = agentSide;
      for (const s of [agentSide, hubSide]) {
        this.#sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.#sockets.delete(s);
          agentSide.destroy();
          hubSide.destroy();
        });
      }
      // Hub → agent packet by packet, so an injected packet always lands between two of the hub's.
      const down = mqttPacket.parser({ protocolVersion: 4 });
      down.on('packet', (p: Packet) => {
        if (p.cmd === 'publish') this.fromHub.push({ topic: p.topic, payload: Buffer.from(p.payload) });
        agentSide.write(mqttPacket.generate(p));
      });
      hubSide.on('data', (b: Buffer) => down.parse(b));
      const up = mqttPacket.parser({ protocolVersion: 4 });
      up.on('packet', (p: Packet) => {
        if (p.cmd === 'publish' && p.topic === RESULT_TOPIC) this.results.push(CommandResultSchema.parse(JSON.parse(Buffer.from(p.payload).toString('utf8'))));
      });
      agentSide.on('data', (b: Buffer) => {
        up.parse(b);
        hubSide.write(b);
      });
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as net.AddressInfo).port;
  }

  /** Signed commands the hub sent, as received (raw bytes and parsed). */
  commands(): { raw: Buffer; cmd: Command }[] {
    return this.fromHub.filter((m) => m.topic === CMD_TOPIC).map((m) => ({ raw: m.payload, cmd: CommandSchema.parse(JSON.parse(m.payload.toString('utf8'))) }));
  }

  inject(payload: Buffer | string): void {
    this.#toAgent?.write(mqttPacket.generate({ cmd: 'publish', topic: CMD_TOPIC, payload: Buffer.from(payload), qos: 0, dup: false, retain: false }));
  }

  resultsFor(id: string): CommandResult[] {
    return this.results.filter((r) => r.id === id);
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

async function active(agent: Agent): Promise<string[]> {
  return ((await (await fetch(`http://127.0.0.1:${agent.httpPort}/healthz`)).json()) as { models: string[] }).models;
}

async function refused(agent: Agent): Promise<Record<string, number>> {
  const m = await agent.registry.getSingleMetric('edgefleet_agent_commands_refused_total')?.get();
  return Object.fromEntries((m?.values ?? []).map((v) => [String(v.labels.reason), v.value]));
}

test('every command the hub sends or the agent handles is classified', () => {
  assert.equal(commandClass('ping'), 'read_only');
  assert.equal(commandClass(DRIFT_SAMPLE_COMMAND), 'read_only');
  assert.equal(commandClass(SAMPLE_COMMAND), 'read_only');
  assert.equal(commandClass(INSTALL_COMMAND), 'state_changing');
  assert.equal(commandClass(ROLLBACK_COMMAND), 'state_changing');
  assert.equal(commandClass('config.set'), 'state_changing', 'an unknown name needs a signature');
  assert.equal(commandClass('__proto__'), 'state_changing');
});

describe('signed commands (issue #14)', () => {
  const fleet = new InProcessFleet();
  let mitm: Mitm;
  let agent: Agent;
  let hubKey: SigningKey;
  let fp32: Manifest;
  let fp32Bytes: Buffer;
  let configVersion: string;
  let rollbackRaw: Buffer;
  let installRaw: Buffer;
  const figures: string[] = [];
  const attacks = { sent: 0, refused: 0 };

  /** Injects `payload` as the MITM; expects a FORBIDDEN answer naming `reason`, a count, and no change. */
  async function expectRefused(payload: Buffer | string, id: string, reason: string): Promise<void> {
    const before = await active(agent);
    const counted = (await refused(agent))[reason] ?? 0;
    const answers = mitm.resultsFor(id).length;
    attacks.sent++;
    mitm.inject(payload);
    await until(() => mitm.resultsFor(id).length > answers, 10_000, `answer to ${id}`);
    const r = mitm.resultsFor(id).at(-1)!;
    assert.equal(r.ok, false);
    assert.equal(r.error?.code, 'FORBIDDEN');
    assert.match(r.error?.message ?? '', new RegExp(`\\(${reason}\\)`));
    assert.equal((await refused(agent))[reason], counted + 1, `counted as ${reason}`);
    assert.deepEqual(await active(agent), before, 'the active version did not change');
    attacks.refused++;
  }

  async function release(version: string): Promise<void> {
    await fleet.api('POST', '/v1/models', { manifest: { ...fp32, version } });
    const put = await fetch(`${fleet.hub.httpUrl}/v1/models/machine-state/${version}/artifact`, {
      method: 'PUT',
      body: fp32Bytes,
      headers: { authorization: `Bearer ${fleet.hub.adminToken}`, 'content-type': 'application/octet-stream' },
    });
    assert.equal(put.status, 201, await put.clone().text());
  }

  const signedByHub = (cmd: Command, deviceId: string, now = Date.now(), ttlMs?: number): Buffer => encodeJson(signCommand(cmd, deviceId, hubKey, { now, ttlMs }));
  const rollback = (id: string, version: string): Command => ({
    v: PROTOCOL_VERSION,
    type: 'command',
    id,
    ts: Date.now(),
    name: ROLLBACK_COMMAND,
    args: { name: 'machine-state', version, reason: 'test' } satisfies RollbackArgs,
  });

  async function startAgent(): Promise<Agent> {
    const a = createAgent(loadAgentConfig({ file: join(fleet.root, DEVICE, 'agent.json'), env: {} }), { log: silentLogger() });
    await a.start();
    fleet.agents.push(a);
    await until(() => a.link.connected, 20_000, 'agent connected');
    return a;
  }

  before(async () => {
    await fleet.startHub();
    mitm = new Mitm(fleet.hub.mqttPort);
    await mitm.start();
    const keysDir = join(fleet.root, 'hub', 'keys');
    hubKey = signingKeyFromPem(readFileSync(join(keysDir, `${readFileSync(join(keysDir, 'active'), 'utf8').trim()}.key`), 'utf8'));
    // The agent trusts the hub's public key as served by GET /v1/keys (README "Model updates").
    const keys = (await fleet.api<{ keys: { publicKeyPem: string }[] }>('GET', '/v1/keys')).keys;
    const pem = join(fleet.root, 'hub.pem');
    writeFileSync(pem, keys[0]!.publicKeyPem);
    assert.equal(trustedKeyFromPem(keys[0]!.publicKeyPem).keyId, hubKey.keyId);
    const config = ManifestSchema.parse(JSON.parse(readFileSync(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')));
    configVersion = config.version;
    fp32 = { ...ManifestSchema.parse(JSON.parse(readFileSync(join(MODELS_DIR, 'machine-state-fp32.manifest.json'), 'utf8'))), name: 'machine-state' };
    fp32Bytes = readFileSync(join(MODELS_DIR, 'machine-state-fp32.onnx'));
    agent = await fleet.startAgent(DEVICE, {
      hub: { url: `mqtt://127.0.0.1:${mitm.port}`, httpUrl: fleet.hub.httpUrl },
      updates: { trustedKeys: [pem], probationMs: 0, validator: { timeoutMs: 30_000 } },
    });
    await until(() => agent.link.connected, 20_000, 'agent connected');
  });

  after(async () => {
    await fleet.stop();
    await mitm?.stop();
    console.log(`security: command-signing ${figures.join('; ')}`);
  });

  test('the legit path: a rollout install and a hub rollback, both signed, run', async () => {
    const t0 = performance.now();
    await release('1.1.0');
    const created = await fleet.api<{ id: string }>('POST', '/v1/rollouts', { model: 'machine-state', version: '1.1.0', target: { devices: [DEVICE] }, waves: [1], bakeMs: 0 });
    await until(async () => (await active(agent)).includes('machine-state@1.1.0'), 20_000, 'the rollout install');
    const install = mitm.commands().find((c) => c.cmd.name === 'model.install');
    assert.ok(install?.cmd.auth, 'the engine signed the install');
    assert.equal(install.cmd.auth.deviceId, DEVICE);
    assert.equal(install.cmd.args.rolloutId, created.id);
    installRaw = install.raw;

    const sent = await fleet.hub.commands.send(DEVICE, rollback('rb-legit', '1.1.0'));
    await until(async () => (await active(agent)).includes(`machine-state@${configVersion}`), 20_000, 'the hub rollback');
    await until(() => mitm.resultsFor('rb-legit').length > 0, 10_000, 'the rollback result');
    const r = mitm.resultsFor('rb-legit');
    assert.equal(r[0]?.ok, true, JSON.stringify(r[0]));
    assert.deepEqual(mitm.commands().find((c) => c.cmd.id === 'rb-legit')?.cmd, sent, 'the MITM saw the signed rollback');
    rollbackRaw = mitm.commands().find((c) => c.cmd.id === 'rb-legit')!.raw;

    // The same signed rollback again while the agent remembers it: the first answer, no second run.
    mitm.inject(rollbackRaw);
    await until(() => mitm.resultsFor('rb-legit').length === 2, 10_000, 'the repeated answer');
    assert.deepEqual({ ...mitm.resultsFor('rb-legit')[1], ts: 0 }, { ...r[0], ts: 0 });
    assert.match(await agent.registry.metrics(), /edgefleet_agent_commands_total\{outcome="duplicate"(,[^}]*)?\} 1/);

    // Forward again with a second rollout: 1.2.0 is what an attacker would roll back.
    await release('1.2.0');
    await fleet.api('POST', '/v1/rollouts', { model: 'machine-state', version: '1.2.0', target: { devices: [DEVICE] }, waves: [1], bakeMs: 0 });
    await until(async () => (await active(agent)).includes('machine-state@1.2.0'), 20_000, 'the 1.2.0 install');
    figures.push(`legit rollout install + hub rollback + rollout install ran in ${Math.round(performance.now() - t0)} ms`);
  });

  test('unsigned, tampered, wrong-device, expired and replayed commands are refused; the version stays', async () => {
    assert.deepEqual(await active(agent), ['machine-state@1.2.0']);
    // Forged: an unsigned rollback of what runs now (the attack that succeeded before).
    await expectRefused(encodeJson(rollback('evil-1', '1.2.0')), 'evil-1', 'unsigned');
    // The captured signed rollback with its args changed to what runs now, keeping the signature.
    const captured = JSON.parse(rollbackRaw.toString('utf8')) as Command & { auth: NonNullable<Command['auth']> };
    await expectRefused(JSON.stringify({ ...captured, id: 'evil-2', args: { ...captured.args, version: '1.2.0' } }), 'evil-2', 'bad_signature');
    await expectRefused(JSON.stringify({ ...captured, args: { ...captured.args, version: '1.2.0' } }), 'rb-legit', 'bad_signature');
    // Its device changed (a command captured on another device's link, relabelled).
    const other = JSON.parse(signedByHub(rollback('evil-3', '1.2.0'), 'sig-other').toString('utf8')) as typeof captured;
    await expectRefused(JSON.stringify({ ...other, auth: { ...other.auth, deviceId: DEVICE } }), 'evil-3', 'bad_signature');
    // Validly signed by the hub, but for another device.
    await expectRefused(signedByHub(rollback('evil-4', '1.2.0'), 'sig-other'), 'evil-4', 'wrong_device');
    // Validly signed, but an hour old; and one from 20 minutes in the future (beyond the 5 min skew).
    await expectRefused(signedByHub(rollback('evil-5', '1.2.0'), DEVICE, Date.now() - 3600_000), 'evil-5', 'expired');
    await expectRefused(signedByHub(rollback('evil-6', '1.2.0'), DEVICE, Date.now() + 20 * 60_000), 'evil-6', 'expired');
    // Signed by a key the agent does not trust.
    const rogue = generateSigningKey();
    await expectRefused(encodeJson(signCommand(rollback('evil-7', '1.2.0'), DEVICE, rogue, { now: Date.now() })), 'evil-7', 'bad_signature');
    // A signed envelope with junk under __proto__ (dropped by zod's copy, not by the check).
    await expectRefused(rollbackRaw.toString('utf8').replace('"args":{', '"args":{"__proto__":{"x":1},'), 'rb-legit', 'bad_signature');
    assert.deepEqual(await active(agent), ['machine-state@1.2.0']);
  });

  test('after an agent restart, the captured rollback and install are refused as replays', async () => {
    const floorBefore = JSON.parse(readFileSync(join(agent.config.dataDir, COMMAND_REPLAY_FILE), 'utf8')) as { floor: number; nonces: unknown[] };
    assert.ok(floorBefore.nonces.length >= 3, 'the admitted signed commands are remembered');
    await agent.stop();
    fleet.agents.splice(fleet.agents.indexOf(agent), 1);
    agent = await startAgent();
    assert.deepEqual(await active(agent), ['machine-state@1.2.0']);
    await expectRefused(rollbackRaw, 'rb-legit', 'replay');
    const installId = (JSON.parse(installRaw.toString('utf8')) as Command).id;
    await expectRefused(installRaw, installId, 'replay');
    // A fresh signing of a known id (what the hub does on a retry) still runs: a no-op rollback.
    await fleet.hub.commands.send(DEVICE, rollback('rb-legit', '1.1.0'));
    await until(() => mitm.resultsFor('rb-legit').some((r) => r.ok && (r.result as { state?: string }).state === 'not_active'), 10_000, 'the re-signed rollback');
    assert.deepEqual(await active(agent), ['machine-state@1.2.0']);
    figures.push(`${attacks.refused}/${attacks.sent} attacks refused (unsigned, tampered args/device/__proto__, wrong device, expired, future, untrusted key, replay after restart), active version unchanged`);
  });

  test('the high-water mark refuses an old command when the device clock is set back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ef-cmd-guard-'));
    try {
      const key = generateSigningKey();
      const trusted = [trustedKeyFromPem(key.publicKeyPem)];
      let clock = Date.UTC(2026, 0, 1);
      const guard = (): CommandGuard => new CommandGuard({ deviceId: DEVICE, keys: trusted, path: join(dir, COMMAND_REPLAY_FILE), skewMs: 5 * 60_000, allowUnsigned: false, log: silentLogger(), now: () => clock });
      const run = async (g: CommandGuard, payload: Buffer): Promise<string> => {
        const cmd = CommandSchema.parse(JSON.parse(payload.toString('utf8')));
        const v = g.verify(cmd, payload);
        if (!v.ok) return v.reason;
        const a = g.admit(cmd, v.auth!);
        if (!a.ok) return a.reason;
        await a.persisted;
        return 'ran';
      };
      const sign = (id: string): Buffer => encodeJson(signCommand(rollback(id, '1.0.0'), DEVICE, key, { now: clock }));
      const g1 = guard();
      const old = sign('old');
      assert.equal(await run(g1, old), 'ran');
      clock += 30 * 60_000;
      assert.equal(await run(g1, sign('later')), 'ran');
      // Restarted with the clock back near the old command's time: its window looks open locally.
      clock -= 29 * 60_000;
      const g2 = guard();
      assert.ok(g2.floor > Date.UTC(2026, 0, 1) + 10 * 60_000);
      assert.equal(await run(g2, old), 'replay');
      figures.push('old command with device clock set back 29 min after a restart: replay (high-water mark)');
      // What the check costs per command (signature over the canonical JSON, on this machine).
      clock += 60 * 60_000;
      const fresh = sign('cost');
      const parsed = CommandSchema.parse(JSON.parse(fresh.toString('utf8')));
      const n = 500;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) assert.ok(g2.verify(parsed, fresh).ok);
      figures.push(`verify ${Math.round(((performance.now() - t0) / n) * 1000)} µs per command`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
