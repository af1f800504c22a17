/**
 * Shared setup for the fault tests (test/fault/): an in-process hub on a temp data dir, agents as
 * real child processes (the CLI through scripts/fleet/processes.ts), a sensor publisher that can
 * burst, and the checks that read the hub's SQLite file directly to prove exactly-once storage.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { MqttClient } from 'mqtt';
import { loadHubConfig, createHub, type Hub } from '../../hub/main.ts';
import { HUB_DB_FILE } from '../../hub/store/sqlite-store.ts';
import { silentLogger } from '../../shared/log.ts';
import { topics } from '../../shared/protocol.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { hubApi } from '../../scripts/fleet/hub-process.ts';
import { scrapeCounter } from '../../scripts/fleet/metrics-scrape.ts';
import { ServiceProcess, REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { connectSensor } from '../../scripts/fleet/sensors.ts';
import { MACHINE_STATES, mulberry32, sensorSample, SENSOR_FEATURES } from '../../scripts/lib/synthetic.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { until } from './fleet-in-process.ts';

export { until };

export const MODELS_DIR = join(REPO_ROOT, 'models');
export const PIPELINE = 'vibration';

/** Generates (or reuses the cached) demo models. */
export async function ensureModels(): Promise<void> {
  await makeModels({ outDir: MODELS_DIR });
}

/** Starts the real hub in this process on 127.0.0.1; ports 0 unless given (a restart reuses them). */
export async function startHub(dataDir: string, ports: { mqtt?: number; http?: number } = {}): Promise<Hub> {
  const config = loadHubConfig({
    overrides: { dataDir, mqtt: { host: '127.0.0.1', port: ports.mqtt ?? 0 }, http: { host: '127.0.0.1', port: ports.http ?? 0 } },
  });
  const hub = await createHub(config, { log: silentLogger() });
  await hub.start(new AbortController().signal);
  return hub;
}

/** Registers a device and a sensor feeding it; returns both tokens. */
export async function provision(hub: Hub, deviceId: string, sensorId: string): Promise<{ deviceToken: string; sensorToken: string }> {
  const api = { httpUrl: hub.httpUrl, adminToken: hub.adminToken };
  const dev = await hubApi<{ token: string }>(api, 'POST', '/v1/devices', { id: deviceId, group: 'fault' });
  const sen = await hubApi<{ token: string }>(api, 'POST', '/v1/devices', { id: sensorId, kind: 'sensor', device: deviceId, group: 'fault' });
  return { deviceToken: dev.token, sensorToken: sen.token };
}

export interface AgentProcess {
  proc: ServiceProcess;
  httpPort: number;
}

/** Writes the agent's config (once per dir; rewriting is harmless) and returns its path. */
export function agentConfig(opts: { dir: string; deviceId: string; token?: string; mqttUrl: string; extra?: Record<string, unknown> }): string {
  return writeAgentConfig({ ...opts, modelsDir: MODELS_DIR, extra: { log: { level: 'info' }, ...opts.extra } });
}

/** Spawns `edgefleet agent --config <file>` and waits until it serves (`agent running`). */
export async function startAgentProcess(name: string, configFile: string, opts: { logFile?: string; timeoutMs?: number } = {}): Promise<AgentProcess> {
  const proc = new ServiceProcess(name, ['agent', '--config', configFile], { logFile: opts.logFile, keepLines: 200 });
  try {
    const listening = await proc.waitForMsg('http listening', opts.timeoutMs ?? 60_000);
    await proc.waitForMsg('agent running', opts.timeoutMs ?? 60_000);
    return { proc, httpPort: Number(listening.port) };
  } catch (err) {
    await proc.kill();
    throw err;
  }
}

/**
 * Waits until the agent is connected, its outbox is empty and its commit counter has not moved
 * for `quietMs`: every reading that reached it is inferred, committed and acked.
 */
export async function untilDrained(port: number, opts: { quietMs?: number; timeoutMs?: number; what?: string } = {}): Promise<void> {
  const quietMs = opts.quietMs ?? 750;
  let last = -1;
  let since = Date.now();
  await until(
    async () => {
      const h = await agentHealth(port);
      const n = await agentMetric(port, 'edgefleet_agent_outbox_committed_total');
      const now = Date.now();
      if (n !== last || !h.hubConnected || h.outboxPending !== 0) {
        last = n;
        since = now;
        return false;
      }
      return now - since >= quietMs;
    },
    opts.timeoutMs ?? 60_000,
    opts.what ?? 'agent drained',
  );
}

export interface AgentHealth {
  ok: boolean;
  hubConnected: boolean;
  outboxPending: number;
}

export async function agentHealth(port: number): Promise<AgentHealth> {
  const res = await fetch(`http://127.0.0.1:${port}/healthz`);
  return (await res.json()) as AgentHealth;
}

export async function agentMetric(port: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return scrapeCounter(text, name, labels);
}

/**
 * A sensor as a raw MQTT client, publishing machine-state readings with unique ids
 * (`<prefix>-<n>`) to one device's input, either in bursts or at a steady rate. Readings sent
 * while the client is offline are skipped (counted in `skipped`), not queued.
 */
export class ReadingPublisher {
  sent = 0;
  skipped = 0;
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  readonly #rng: () => number;
  readonly #topic: string;

  constructor(
    private readonly opts: { sensorId: string; token: string; deviceId: string; mqttUrl: string; qos: 0 | 1; seed: number; prefix?: string },
  ) {
    this.#rng = mulberry32(opts.seed);
    this.#topic = topics.input(opts.deviceId, PIPELINE);
  }

  async start(): Promise<void> {
    const o = this.opts;
    this.#client = await connectSensor({ mqttUrl: o.mqttUrl, sensorId: o.sensorId, token: o.token, reconnectPeriod: 300 });
  }

  get connected(): boolean {
    return this.#client?.connected ?? false;
  }

  #one(): void {
    const client = this.#client;
    if (!client?.connected) {
      this.skipped++;
      return;
    }
    const cls = MACHINE_STATES[Math.floor(this.#rng() * 3)]!;
    const values = sensorSample(this.#rng, cls);
    const features = Object.fromEntries(SENSOR_FEATURES.map((f, i) => [f, values[i]]));
    const id = `${this.opts.prefix ?? this.opts.sensorId}-${this.sent + this.skipped}`;
    client.publish(this.#topic, JSON.stringify({ id, ts: Date.now(), features }), { qos: this.opts.qos });
    this.sent++;
  }

  /** Publishes `n` readings at once (QoS 1 ones are in flight when this returns). */
  burst(n: number): void {
    for (let i = 0; i < n; i++) this.#one();
  }

  /** Publishes `perTick` readings every `tickMs` until stopSteady(). */
  steady(perTick: number, tickMs: number): void {
    this.stopSteady();
    this.#timer = setInterval(() => this.burst(perTick), tickMs);
  }

  stopSteady(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async stop(): Promise<void> {
    this.stopSteady();
    await this.#client?.endAsync(true).catch(() => undefined);
    this.#client = undefined;
  }
}

export interface StoredRow {
  stream: string;
  epoch: number;
  seq: number;
  ts: number;
  id: string | null;
}

/** Every telemetry row the hub stored for `deviceId`, read from hub.db with a separate read-only connection. */
export function readHubTelemetry(hubDataDir: string, deviceId: string): StoredRow[] {
  const db = new Database(join(hubDataDir, HUB_DB_FILE), { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare<[string], StoredRow>("SELECT stream, epoch, seq, ts, json_extract(body, '$.id') AS id FROM telemetry WHERE device_id = ? ORDER BY stream, epoch, seq")
      .all(deviceId);
  } finally {
    db.close();
  }
}

export interface ExactlyOnceReport {
  stored: number;
  epochs: number;
  /** Seqs missing inside 0..max of some (stream, epoch). */
  gaps: number;
  /** Reading ids stored more than once. */
  duplicateIds: number;
  /** (stream, epoch) pairs whose ts is not non-decreasing in seq order. */
  disorders: number;
  problems: string[];
}

/**
 * The exactly-once checks on what the hub stored: per (stream, epoch) the seqs are exactly
 * 0..count-1, no reading id appears twice, and ts does not go backwards in seq order (the agent
 * takes ts just before the append that assigns the seq, so seq order is its own time order).
 */
export function checkExactlyOnce(rows: readonly StoredRow[]): ExactlyOnceReport {
  const problems: string[] = [];
  const groups = new Map<string, StoredRow[]>();
  for (const r of rows) {
    const k = `${r.stream}/${r.epoch}`;
    const g = groups.get(k);
    if (g) g.push(r);
    else groups.set(k, [r]);
  }
  let gaps = 0;
  let disorders = 0;
  for (const [k, g] of groups) {
    g.sort((a, b) => a.seq - b.seq);
    const max = g[g.length - 1]!.seq;
    const missing = max + 1 - g.length;
    if (missing !== 0 || g[0]!.seq !== 0) {
      gaps += missing;
      if (problems.length < 20) problems.push(`${k}: ${g.length} records, seqs ${g[0]!.seq}..${max}`);
    }
    for (let i = 1; i < g.length; i++) {
      if (g[i]!.ts < g[i - 1]!.ts) {
        disorders++;
        if (problems.length < 20) problems.push(`${k}: ts goes back at seq ${g[i]!.seq}`);
        break;
      }
    }
  }
  const ids = new Map<string, number>();
  for (const r of rows) if (r.id !== null) ids.set(r.id, (ids.get(r.id) ?? 0) + 1);
  let duplicateIds = 0;
  for (const [id, n] of ids) {
    if (n > 1) {
      duplicateIds += n - 1;
      if (problems.length < 20) problems.push(`reading ${id} stored ${n} times`);
    }
  }
  // Reading ids belong to inference records; health and drift windows have none.
  const nullIds = rows.filter((r) => r.id === null && r.stream === 'inference').length;
  if (nullIds > 0) problems.push(`${nullIds} inference records without a reading id`);
  return { stored: rows.length, epochs: new Set(rows.map((r) => r.epoch)).size, gaps, duplicateIds, disorders, problems };
}

/** The hub's per-device counters (de-duplicated redeliveries among them). */
export async function deviceCounters(hub: Hub, deviceId: string): Promise<{ stored: number; duplicates: number; gaps: number }> {
  const d = await hub.store.getDevice(deviceId);
  if (!d) throw new Error(`device ${deviceId} unknown to the hub`);
  return d.counters;
}
