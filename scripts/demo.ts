/**
 * `npm run demo [-- --duration 60 --agents 3 --cameras 2 --rate 20 --fps 5 --data <dir> --keep]`
 *
 * A whole fleet on one machine with no external service: generates the demo models, starts
 * the hub (embedded broker + SQLite) and the agents as separate processes — gateways running the
 * machine-state model on vibration sensors, and camera boxes running the part-defect model on PNG
 * frames — provisions devices, sensors and cameras through the hub's API, runs them, and prints a
 * live fleet summary. On Ctrl-C or after --duration it drains, stops everything cleanly and
 * prints per-device totals.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { makeModels } from './make-models.ts';
import { writeAgentConfig } from './fleet/agent-config.ts';
import { hubApi, startHubProcess, type HubInfo } from './fleet/hub-process.ts';
import { ServiceProcess, REPO_ROOT } from './fleet/processes.ts';
import { SimulatedCamera } from './fleet/cameras.ts';
import { SimulatedSensor } from './fleet/sensors.ts';
import { scrapeCounter } from './fleet/metrics-scrape.ts';

interface DeviceRow {
  id: string;
  kind?: string;
  online: boolean;
  lastSeen: number | null;
  counters: { stored: number; duplicates: number; badMessages: number; gaps: number };
  backlog?: number | null;
}

const { values } = parseArgs({
  options: {
    duration: { type: 'string' },
    agents: { type: 'string', default: '3' },
    cameras: { type: 'string', default: '2' },
    rate: { type: 'string', default: '20' },
    fps: { type: 'string', default: '5' },
    data: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
});
const durationS = values.duration ? Number(values.duration) : Infinity;
const nAgents = Number(values.agents);
const nCameras = Number(values.cameras);
const rate = Number(values.rate);
const fps = Number(values.fps);
if (!(durationS > 0) || !(nAgents >= 1) || !(nCameras >= 0) || !(rate > 0) || !(fps > 0)) {
  console.error('usage: npm run demo -- [--duration <s>] [--agents <n>] [--cameras <n>] [--rate <readings/s per sensor>] [--fps <frames/s per camera>] [--data <dir>] [--keep]');
  process.exit(2);
}

const root = values.data ? resolve(values.data) : mkdtempSync(join(tmpdir(), 'edgefleet-demo-'));
mkdirSync(join(root, 'logs'), { recursive: true });
const say = (s: string): void => void process.stdout.write(`${s}\n`);

say(`edgefleet demo: ${nAgents} sensor gateways at ${rate} readings/s, ${nCameras} camera boxes at ${fps} frames/s; state and logs in ${root}`);
const models = await makeModels({ outDir: join(REPO_ROOT, 'models') });
for (const m of models) say(`  model ${m.name}: held-out accuracy ${(m.accuracy * 100).toFixed(1)}%`);

const hub: HubInfo = await startHubProcess({ dataDir: join(root, 'hub'), logFile: join(root, 'logs', 'hub.log') });
say(`hub: mqtt ${hub.mqttUrl}, http ${hub.httpUrl}`);

const agents: { id: string; proc: ServiceProcess; httpPort: number }[] = [];
/** One input source per agent, in the same order: a vibration sensor or a camera. */
const sensors: (SimulatedSensor | SimulatedCamera)[] = [];
let stopping = false;
let exitCode = 0;

async function shutdown(): Promise<void> {
  for (const s of sensors) await s.stop().catch(() => undefined);
  // Let the agents finish what they accepted and the hub ack it, then stop them.
  await waitForDrain(10_000);
  const inferences = new Map<string, number>();
  for (const a of agents) inferences.set(a.id, await agentInferences(a.httpPort));
  const exits = await Promise.all(agents.map((a) => a.proc.stop()));
  const devices = await listDevices().catch(() => [] as DeviceRow[]);
  const storedInferences = new Map<string, number>();
  for (const a of agents) storedInferences.set(a.id, await inferenceRecords(a.id).catch(() => NaN));
  const hubExit = await hub.proc.stop();
  say('\nfinal summary');
  say(pad(['device', 'inputs sent', 'inferences', 'stored at hub', 'all records', 'duplicates', 'gaps', 'exit']));
  for (const [i, a] of agents.entries()) {
    const d = devices.find((x) => x.id === a.id);
    const e = exits[i]!;
    say(
      pad([
        a.id,
        String(sensors[i]?.sent ?? 0),
        String(inferences.get(a.id) ?? '?'),
        String(storedInferences.get(a.id) ?? '?'),
        String(d?.counters.stored ?? '?'),
        String(d?.counters.duplicates ?? '?'),
        String(d?.counters.gaps ?? '?'),
        e.code === 0 ? 'ok' : `${e.code ?? e.signal}`,
      ]),
    );
    if (e.code !== 0) exitCode = 1;
  }
  say(`hub exit: ${hubExit.code === 0 ? 'ok' : String(hubExit.code ?? hubExit.signal)}`);
  if (hubExit.code !== 0) exitCode = 1;
  if (!values.keep && !values.data) rmSync(root, { recursive: true, force: true });
  else say(`state and logs kept in ${root}`);
}

async function listDevices(): Promise<DeviceRow[]> {
  const res = await hubApi<{ devices: DeviceRow[] }>(hub, 'GET', '/v1/devices');
  return res.devices.filter((d) => (d.kind ?? 'device') === 'device');
}

/** Inference records the hub stored for a device (its per-stream statistics), not health or drift windows. */
async function inferenceRecords(id: string): Promise<number> {
  const d = await hubApi<{ streamStats: { stream: string; count: number }[] }>(hub, 'GET', `/v1/devices/${id}`);
  return d.streamStats.filter((s) => s.stream === 'inference').reduce((a, s) => a + s.count, 0);
}

async function agentInferences(port: number): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return scrapeCounter(text, 'edgefleet_agent_inferences_total', { outcome: 'ok' });
  } catch {
    return NaN;
  }
}

/** Records the agent committed and the hub has not acked yet. */
async function outboxPending(port: number): Promise<number> {
  try {
    const h = (await (await fetch(`http://127.0.0.1:${port}/healthz`)).json()) as { outboxPending?: number };
    return h.outboxPending ?? 0;
  } catch {
    return 0;
  }
}

async function waitForDrain(timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    const pending = await Promise.all(agents.map((a) => outboxPending(a.httpPort)));
    if (pending.every((p) => p === 0)) return;
    await sleep(250);
  }
}

function pad(cols: string[]): string {
  return cols.map((c, i) => (i === 0 ? c.padEnd(12) : c.padStart(14))).join(' ');
}

const onSignal = (): void => {
  if (stopping) process.exit(1);
  stopping = true;
  say('\nstopping…');
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

try {
  const startAgent = async (id: string, token: string, extra?: Record<string, unknown>): Promise<void> => {
    const config = writeAgentConfig({ dir: join(root, id), deviceId: id, token, mqttUrl: hub.mqttUrl, modelsDir: join(REPO_ROOT, 'models'), extra });
    const proc = new ServiceProcess(id, ['agent', '--config', config], { logFile: join(root, 'logs', `${id}.log`) });
    const listening = await proc.waitForMsg('http listening', 60_000);
    await proc.waitForMsg('agent running', 60_000);
    agents.push({ id, proc, httpPort: Number(listening.port) });
  };
  for (let i = 1; i <= nAgents; i++) {
    const id = `line1-gw${i}`;
    const dev = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, group: 'line-1', labels: { site: 'demo', slot: String(i) } });
    const sensorId = `line1-vib${i}`;
    const sensor = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id: sensorId, kind: 'sensor', device: id, group: 'line-1' });
    await startAgent(id, dev.token);
    sensors.push(new SimulatedSensor({ sensorId, token: sensor.token, deviceId: id, mqttUrl: hub.mqttUrl, input: 'vibration', ratePerSecond: rate, seed: i }));
  }
  for (let i = 1; i <= nCameras; i++) {
    const id = `line1-cam${i}`;
    const dev = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, group: 'line-1', labels: { site: 'demo', station: `inspect-${i}` } });
    const cameraId = `line1-cam${i}-lens`;
    const camera = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id: cameraId, kind: 'sensor', device: id, group: 'line-1' });
    await startAgent(id, dev.token, {
      models: [{ manifest: join(REPO_ROOT, 'models', 'part-defect.manifest.json') }],
      pipelines: [{ name: 'camera', model: 'part-defect', input: { type: 'mqtt', format: 'image' }, thresholds: { defective: 0.7 } }],
    });
    sensors.push(new SimulatedCamera({ sensorId: cameraId, token: camera.token, deviceId: id, mqttUrl: hub.mqttUrl, input: 'camera', framesPerSecond: fps, seed: 100 + i }));
  }
  for (const s of sensors) await s.start();
  say(`fleet up: ${agents.length} agents, ${sensors.length} sensors and cameras${Number.isFinite(durationS) ? `, running ${durationS} s` : ', Ctrl-C to stop'}\n`);

  const t0 = Date.now();
  let lastStored = 0;
  let lastT = t0;
  while (!stopping && Date.now() - t0 < durationS * 1000) {
    await sleep(Math.min(2000, Math.max(50, durationS * 1000 - (Date.now() - t0))));
    const devices = await listDevices().catch(() => undefined);
    if (!devices) continue;
    const now = Date.now();
    const stored = devices.reduce((a, d) => a + d.counters.stored, 0);
    const perS = ((stored - lastStored) * 1000) / Math.max(1, now - lastT);
    lastStored = stored;
    lastT = now;
    const online = devices.filter((d) => d.online).length;
    const lag = (await Promise.all(agents.map((a) => outboxPending(a.httpPort)))).reduce((a, b) => a + b, 0);
    say(`[${Math.round((now - t0) / 1000)}s] online ${online}/${devices.length}  records stored/s ${perS.toFixed(1)}  stored ${stored}  telemetry lag ${lag} records`);
  }
  stopping = true;
} catch (err) {
  console.error(`demo failed: ${(err as Error).message}`);
  exitCode = 1;
} finally {
  await shutdown();
}
process.exit(exitCode);
