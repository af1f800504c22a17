/**
 * An in-process fleet for integration tests: the real hub (aedes on port 0, SQLite in a temp
 * dir) and real agents (worker-thread ORT sessions, SQLite outboxes), plus helpers to provision
 * principals and read what the hub stored.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import mqtt, { type MqttClient } from 'mqtt';
import { loadAgentConfig } from '../../agent/config.ts';
import { createAgent, type Agent } from '../../agent/main.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import type { TelemetryRow } from '../../hub/store/store.ts';
import { silentLogger, type Logger } from '../../shared/log.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { hubApi } from '../../scripts/fleet/hub-process.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { makeModels } from '../../scripts/make-models.ts';

export const MODELS_DIR = join(REPO_ROOT, 'models');

export class InProcessFleet {
  readonly root = mkdtempSync(join(tmpdir(), 'ef-fleet-'));
  hub!: Hub;
  readonly agents: Agent[] = [];
  readonly clients: MqttClient[] = [];

  async startHub(): Promise<Hub> {
    await makeModels({ outDir: MODELS_DIR });
    const config = loadHubConfig({
      overrides: { dataDir: join(this.root, 'hub'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } },
    });
    this.hub = await createHub(config, { log: silentLogger() });
    await this.hub.start(new AbortController().signal);
    return this.hub;
  }

  api<T>(method: string, path: string, body?: unknown): Promise<T> {
    return hubApi<T>({ httpUrl: this.hub.httpUrl, adminToken: this.hub.adminToken }, method, path, body);
  }

  async addPrincipal(body: { id: string; kind?: 'device' | 'sensor' | 'consumer'; device?: string; group?: string }): Promise<string> {
    const res = await this.api<{ token: string }>('POST', '/v1/devices', { group: 'test', ...body });
    return res.token;
  }

  async startAgent(deviceId: string, extra?: Record<string, unknown>, log: Logger = silentLogger()): Promise<Agent> {
    const token = await this.addPrincipal({ id: deviceId });
    const file = writeAgentConfig({ dir: join(this.root, deviceId), deviceId, token, mqttUrl: this.hub.mqttUrl, modelsDir: MODELS_DIR, extra });
    const agent = createAgent(loadAgentConfig({ file, env: {} }), { log });
    try {
      await agent.start();
    } catch (err) {
      // A start that fails halfway leaves workers and sockets up: stop what did start, or the
      // test file's process never exits.
      await agent.stop().catch(() => undefined);
      throw err;
    }
    this.agents.push(agent);
    return agent;
  }

  async connect(id: string, token: string): Promise<MqttClient> {
    const c = await mqtt.connectAsync(this.hub.mqttUrl, { clientId: id, username: id, password: token, protocolVersion: 4, reconnectPeriod: 0 });
    this.clients.push(c);
    return c;
  }

  /** Every record the hub stored for a device, or those of one stream (e.g. `inference`). */
  async telemetry(deviceId: string, stream?: string): Promise<TelemetryRow[]> {
    const rows: TelemetryRow[] = [];
    let after: number | undefined;
    for (;;) {
      const page = await this.hub.store.queryTelemetry({ deviceId, stream, after, limit: 1000 });
      rows.push(...page);
      if (page.length < 1000) return rows;
      after = page[page.length - 1]!.cursor;
    }
  }

  async stop(): Promise<void> {
    for (const c of this.clients) await c.endAsync(true).catch(() => undefined);
    for (const a of this.agents) await a.stop();
    if (this.hub) await this.hub.stop();
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Polls `check` until it returns true or the time is up (then throws with `what`). */
export async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!(await check())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}
