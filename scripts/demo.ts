/**
 * `npm run demo [-- --duration 60 --agents 3 --cameras 2 --rate 10 --fps 2 --line-rate <n> --frames jpeg|png --data <dir> --http-port 8080 --mqtt-port 0 --keep --quiet]`
 *
 * The dashboard is on a fixed port, 8080 by default (the next free one, said so, when 8080 is
 * taken; `--http-port` or EDGEFLEET_DEMO_HTTP_PORT to choose, strictly; 0 picks a free one), and the demo prints its URL, the admin token and a one-click login link
 * (`/ui/#token=...`, which the dashboard takes out of the address at once) as soon as the hub is up.
 * While the fleet starts, the demo models are pushed as signed releases (announce, test vectors,
 * artifact: the hub probes and signs each), and the agents trust the hub's release key.
 *
 * A whole fleet on one machine with no external service and no download: generates the demo
 * models (v1 and manifest v2, cached by their stamps), starts the hub (embedded broker + SQLite)
 * and the agents as separate processes, provisions devices, sensors and cameras through the
 * hub's API, runs them, and prints a live fleet summary. On Ctrl-C or after --duration it drains,
 * stops everything cleanly and prints per-device totals and what the models said.
 *
 * Sensor gateways (line1-gw<i>) run four pipelines, each fed by its own simulated sensor
 * (scripts/fleet/sensors.ts, sensors-v2.ts), `stream` = the sensor id:
 *   vibration  machine-state (v1 classifier)  feature vectors at --rate
 *   bearing    bearing-anomaly (autoencoder)  a 500 Hz accelerometer in 8-sample chunks; gw2
 *                                             develops an outer-race fault, gw3 looseness
 *   spindle    spindle-rul (regression)       a 128-reading burst every 0.5 s; wear rises over the run
 *   line       line-state (stateful anomaly)  the drive's 1 Hz log replayed at --line-rate; gw1's
 *                                             drive develops a drag
 * Camera boxes (line1-cam<i>) run `conveyor`: conveyor-parts (YOLOv8-layout detector) on 640×480
 * conveyor frames at --fps (scripts/fleet/conveyor-camera.ts); cam2's lamp dims halfway.
 *
 * What the models said comes from their results as a dashboard sees them: the demo subscribes
 * as a `consumer` principal to `edgefleet/v1/+/out/#` (scripts/fleet/results.ts). Counts come
 * from the agents' Prometheus metrics and the hub's API (inference records stored per device).
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { deepMerge } from '../shared/config.ts';
import { makeModels, makeModelsV2 } from './make-models.ts';
import { writeAgentConfig } from './fleet/agent-config.ts';
import { hubApi, startHubProcess, type HubInfo } from './fleet/hub-process.ts';
import { ServiceProcess, REPO_ROOT } from './fleet/processes.ts';
import { SimulatedSensor } from './fleet/sensors.ts';
import { SimulatedAccelerometer, SimulatedLineDrive, SimulatedSpindle } from './fleet/sensors-v2.ts';
import { SimulatedConveyorCamera } from './fleet/conveyor-camera.ts';
import { ResultCollector, type PipelineStats } from './fleet/results.ts';
import { scrapeCounter } from './fleet/metrics-scrape.ts';

interface DeviceRow {
  id: string;
  kind?: string;
  online: boolean;
  lastSeen: number | null;
  counters: { stored: number; duplicates: number; badMessages: number; gaps: number };
  backlog?: number | null;
}

interface Source {
  sent: number;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Sources that run on a shared clock (the scenario's): connect first, then run from one origin. */
  connect?(): Promise<void>;
  run?(origin: number): void;
}

interface Agent {
  id: string;
  proc: ServiceProcess;
  httpPort: number;
  /** The simulated sensors and cameras feeding it. */
  sources: Source[];
  accelerometer?: SimulatedAccelerometer;
  spindle?: SimulatedSpindle;
  drive?: SimulatedLineDrive;
  camera?: SimulatedConveyorCamera;
}

const { values } = parseArgs({
  options: {
    duration: { type: 'string' },
    agents: { type: 'string', default: '3' },
    cameras: { type: 'string', default: '2' },
    rate: { type: 'string', default: '10' },
    fps: { type: 'string', default: '2' },
    'line-rate': { type: 'string' },
    frames: { type: 'string', default: 'jpeg' },
    data: { type: 'string' },
    'http-port': { type: 'string' },
    'mqtt-port': { type: 'string', default: '0' },
    keep: { type: 'boolean', default: false },
    quiet: { type: 'boolean', default: false },
  },
});
const durationS = values.duration ? Number(values.duration) : Infinity;
const nAgents = Number(values.agents);
const nCameras = Number(values.cameras);
const rate = Number(values.rate);
const fps = Number(values.fps);
/** The run the scenario (faults, wear, drag) is laid out over; an open-ended run repeats 120 s. */
const horizonS = Number.isFinite(durationS) ? durationS : 120;
/** Readings per line-drive run: 10 minutes of its 1 Hz log, replayed over the horizon. */
const LINE_STEPS = 600;
const PIPELINE_ORDER = ['vibration', 'bearing', 'spindle', 'line', 'conveyor'];
const lineRate = values['line-rate'] ? Number(values['line-rate']) : Math.min(30, Math.max(5, Math.round(LINE_STEPS / horizonS)));
const frames = values.frames;
/** Chosen by the user (flag or env): used as given, a taken port stops the demo. The default 8080 moves to the next free one, said loudly. */
const httpPortGiven = values['http-port'] ?? process.env.EDGEFLEET_DEMO_HTTP_PORT;
const DEFAULT_HTTP_PORT = 8080;
let httpPort = Number(httpPortGiven ?? DEFAULT_HTTP_PORT);
const mqttPort = Number(values['mqtt-port']);
const isPort = (n: number): boolean => Number.isInteger(n) && n >= 0 && n <= 65_535;
if (!isPort(httpPort) || !isPort(mqttPort) || !(durationS > 0) || !(nAgents >= 1) || !(nCameras >= 0) || !(rate > 0) || !(fps > 0) || !(lineRate > 0) || (frames !== 'jpeg' && frames !== 'png')) {
  console.error(
    'usage: npm run demo -- [--duration <s>] [--agents <gateways>] [--cameras <n>] [--rate <machine-state readings/s>] [--fps <frames/s per camera>] [--line-rate <line readings/s>] [--frames jpeg|png] [--data <dir>] [--http-port <port, 0 = any>] [--mqtt-port <port>] [--keep] [--quiet]',
  );
  process.exit(2);
}

const root = values.data ? resolve(values.data) : mkdtempSync(join(tmpdir(), 'edgefleet-demo-'));
mkdirSync(join(root, 'logs'), { recursive: true });
const say = (s: string): void => void process.stdout.write(`${s}\n`);
const modelsDir = join(REPO_ROOT, 'models');
const manifest = (name: string): { manifest: string } => ({ manifest: join(modelsDir, `${name}.manifest.json`) });

say(
  `edgefleet demo: ${nAgents} sensor gateways (machine-state ${rate} readings/s, bearing 500 Hz, spindle 2 bursts/s, line ${lineRate} readings/s), ` +
    `${nCameras} camera boxes (conveyor-parts, ${fps} frames/s); state and logs in ${root}`,
);
const models = await makeModels({ outDir: modelsDir });
for (const m of models) say(`  model ${m.name}: held-out accuracy ${(m.accuracy * 100).toFixed(1)}%`);
const modelsV2 = await makeModelsV2({ outDir: modelsDir });
for (const m of modelsV2) {
  const k = m.task === 'detection' ? ['precision', 'recall'] : m.task === 'anomaly' ? ['healthyAlarmRate', 'faultyDetectionRate', 'driftDetectionRate'] : ['maeH'];
  say(`  model ${m.name} (${m.task}): ${k.filter((x) => x in m.metrics).map((x) => `${x} ${m.metrics[x]}`).join(', ')}`);
}

if (httpPortGiven === undefined) {
  let port = DEFAULT_HTTP_PORT;
  while (port < DEFAULT_HTTP_PORT + 20 && !(await portFree(port))) port++;
  if (port !== DEFAULT_HTTP_PORT) say(`port ${DEFAULT_HTTP_PORT} is taken: the dashboard is on ${port} instead (--http-port <port> to choose)`);
  httpPort = port;
}
const hub: HubInfo = await startHubProcess({ dataDir: join(root, 'hub'), logFile: join(root, 'logs', 'hub.log'), httpPort, mqttPort }).catch((err: unknown) => {
  const taken = /EADDRINUSE/.test(String(err)) || /EADDRINUSE/.test(readLog(join(root, 'logs', 'hub.log')));
  console.error(
    taken
      ? `the hub could not listen: port ${httpPort} (dashboard) or ${mqttPort || 'its MQTT port'} is taken. Pick another: npm run demo -- --http-port 8090 (0 = any free port)`
      : `the hub did not start: ${String(err)} (log: ${join(root, 'logs', 'hub.log')})`,
  );
  process.exit(1);
});
say(`hub: mqtt ${hub.mqttUrl}, http ${hub.httpUrl}`);
say(`dashboard:        ${hub.httpUrl}/ui/`);
say(`admin token:      ${hub.adminToken}`);
say(`one-click login:  ${hub.httpUrl}/ui/#token=${encodeURIComponent(hub.adminToken)}`);

const agents: Agent[] = [];
/** The demo models being pushed as releases (name@version of each one released). */
let releasing: Promise<string[]> = Promise.resolve([]);

/** The hub's release-signing public keys, as PEM files the agents' `updates.trustedKeys` name. */
async function writeHubKeys(): Promise<string[]> {
  const { keys } = await hubApi<{ keys: { keyId: string; publicKeyPem: string }[] }>(hub, 'GET', '/v1/keys');
  mkdirSync(join(root, 'keys'), { recursive: true });
  return keys.map((k) => {
    const file = join(root, 'keys', `${k.keyId}.pem`);
    writeFileSync(file, k.publicKeyPem);
    return file;
  });
}

/** Pushes every demo model as a release, as `edgefleet model push` does: announce, test vectors, artifact; the hub probes and signs each. */
async function releaseDemoModels(): Promise<string[]> {
  const done: string[] = [];
  for (const name of readdirSync(modelsDir).filter((f) => f.endsWith('.manifest.json')).sort()) {
    const raw = JSON.parse(readFileSync(join(modelsDir, name), 'utf8')) as { artifact: { file: string }; testVectorsFile?: { file: string } };
    const announced = await hubApi<{ name: string; version: string; upload: { path: string }; vectors?: { path: string } }>(hub, 'POST', '/v1/models', { manifest: raw });
    const put = async (path: string, file: string): Promise<void> => {
      const res = await fetch(`${hub.httpUrl}${path}`, { method: 'PUT', headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/octet-stream' }, body: readFileSync(join(modelsDir, file)) });
      if (!res.ok) throw new Error(`PUT ${path}: HTTP ${res.status} ${await res.text()}`);
    };
    if (raw.testVectorsFile && announced.vectors) await put(announced.vectors.path, raw.testVectorsFile.file);
    await put(announced.upload.path, raw.artifact.file);
    done.push(`${announced.name}@${announced.version}`);
  }
  say(`releases: ${done.length} demo models pushed, probed and signed by the hub (dashboard: Models): ${done.join(', ')}`);
  return done;
}
const collector = new ResultCollector();
let stopping = false;
let exitCode = 0;

async function shutdown(): Promise<void> {
  for (const a of agents) for (const s of a.sources) await s.stop().catch(() => undefined);
  // Let the agents finish what they accepted and the hub ack it, then stop them.
  await releasing;
  await waitForDrain(20_000);
  await sleep(300); // the last results on their way to the consumer
  const metrics = new Map<string, AgentMetrics | undefined>();
  for (const a of agents) metrics.set(a.id, await agentMetrics(a.httpPort));
  await collector.stop().catch(() => undefined);
  const exits = await Promise.all(agents.map((a) => a.proc.stop()));
  const devices = await listDevices().catch(() => [] as DeviceRow[]);
  const storedInferences = new Map<string, number>();
  for (const a of agents) storedInferences.set(a.id, await inferenceRecords(a.id).catch(() => NaN));
  const hubExit = await hub.proc.stop();
  say('\nfinal summary');
  say(pad(['device', 'inputs sent', 'inferences', 'stored at hub', 'all records', 'duplicates', 'gaps', 'rejected', 'dropped', 'exit']));
  for (const [i, a] of agents.entries()) {
    const d = devices.find((x) => x.id === a.id);
    const e = exits[i]!;
    const m = metrics.get(a.id);
    say(
      pad([
        a.id,
        String(a.sources.reduce((n, s) => n + s.sent, 0)),
        String(m?.inferences ?? '?'),
        String(storedInferences.get(a.id) ?? '?'),
        String(d?.counters.stored ?? '?'),
        String(d?.counters.duplicates ?? '?'),
        String(d?.counters.gaps ?? '?'),
        String(m?.rejected ?? '?'),
        m ? Object.entries(m.dropped).map(([r, n]) => `${n} ${r}`).join(', ') || '0' : '?',
        e.code === 0 ? 'ok' : `${e.code ?? e.signal}`,
      ]),
    );
    if (e.code !== 0) exitCode = 1;
  }
  say('\nwhat the models said (results received as consumer demo-dashboard; ms: mean latencyMs the agent reported, pool queue included)');
  say(`${'device'.padEnd(12)} ${'pipeline'.padEnd(10)} ${'model'.padEnd(16)} ${'results'.padStart(7)} ${'ms'.padStart(7)}  summary`);
  for (const a of agents) {
    for (const s of collector.ofDevice(a.id, PIPELINE_ORDER)) {
      const ms = s.results ? (s.latencyMsSum / s.results).toFixed(2) : '-';
      say(`${a.id.padEnd(12)} ${s.pipeline.padEnd(10)} ${s.model.padEnd(16)} ${String(s.results).padStart(7)} ${ms.padStart(7)}  ${finalLine(a, s)}`);
    }
    if (collector.ofDevice(a.id, PIPELINE_ORDER).length === 0) say(`${a.id.padEnd(12)} (no results received)`);
  }
  if (collector.unparsed) say(`unparsed result messages: ${collector.unparsed}`);
  say(`hub exit: ${hubExit.code === 0 ? 'ok' : String(hubExit.code ?? hubExit.signal)}`);
  if (hubExit.code !== 0) exitCode = 1;
  if (!values.keep && !values.data) rmSync(root, { recursive: true, force: true });
  else say(`state and logs kept in ${root}`);
}

const pct = (n: number, d: number): string => (d > 0 ? `${((100 * n) / d).toFixed(1)}%` : '-');
const fmt = (v: number | undefined, digits = 2): string => (v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits));

function labelMix(counts: Record<string, number>, total: number): string {
  return Object.entries(counts)
    .sort((x, y) => y[1] - x[1])
    .map(([l, n]) => `${l} ${pct(n, total)}`)
    .join(' ');
}

/** One line per pipeline for the final summary, with what the simulation knows to compare. */
function finalLine(a: Agent, s: PipelineStats): string {
  switch (s.task) {
    case 'classification':
      return labelMix(s.labels, s.results);
    case 'detection': {
      let parts = 0;
      let exact = 0;
      for (const [id, n] of s.perId) {
        const truth = a.camera?.truth.get(id) ?? NaN;
        parts += truth;
        if (truth === n) exact++;
      }
      const perLabel = Object.entries(s.counts).map(([l, n]) => `${l} ${n}`).join(' ');
      return `${fmt(s.detections / s.results)} detections/frame (${fmt(parts / s.perId.size)} parts in view), count right on ${pct(exact, s.perId.size)} of frames; ${perLabel}`;
    }
    case 'anomaly': {
      const thr = `max score ${fmt(s.maxScore, 3)} / threshold ${fmt(s.threshold, 3)}`;
      // Times on the sensor's own clock, from the reading ids (`<sensor>-<index>`), not from when results arrived.
      const index = (id: string | undefined): number => Number(/-(\d+)$/.exec(id ?? '')?.[1] ?? NaN);
      if (s.pipeline === 'bearing') {
        const f = a.accelerometer?.opts.fault;
        const started = a.accelerometer?.faultStartedS;
        if (!f) return `healthy bearing: alarms ${s.alarms}/${s.results} (${pct(s.alarms, s.results)}); ${thr}`;
        if (started === undefined) return `alarms ${s.alarms} (${pct(s.alarms, s.results)}); ${f.kind} fault due at ${f.atS.toFixed(1)} s, not reached; ${thr}`;
        const at = (e: { id: string | undefined }): number => index(e.id) / 500;
        const before = s.events.filter((e) => at(e) < started);
        const after = s.events.filter((e) => at(e) >= started);
        const nb = before.filter((e) => e.alarm).length;
        const na = after.filter((e) => e.alarm).length;
        const first = Math.min(...after.filter((e) => e.alarm).map(at));
        return (
          `${f.kind} fault from ${started.toFixed(1)} s: alarms ${nb}/${before.length} (${pct(nb, before.length)}) before, ` +
          `${na}/${after.length} (${pct(na, after.length)}) after${Number.isFinite(first) ? `, first ${(first - started).toFixed(2)} s in` : ''}; ${thr}`
        );
      }
      const drag = a.drive?.opts.drag;
      if (!drag) return `healthy drive: alarms ${s.alarms}/${s.results} (${pct(s.alarms, s.results)}); ${thr}`;
      const steps = s.events.filter((e) => index(e.id) < LINE_STEPS);
      const early = steps.filter((e) => e.alarm && index(e.id) < drag.onset).length;
      const first = Math.min(...steps.filter((e) => e.alarm && index(e.id) >= drag.onset).map((e) => index(e.id)));
      return (
        `drag from log second ${drag.onset} (${(drag.onset / lineRate).toFixed(1)} s): alarms ${early} before it, ${s.alarms - early} after` +
        (Number.isFinite(first) ? `, first at log second ${first} (${first - drag.onset} s after onset)` : ', none yet') +
        `; ${thr}`
      );
    }
    case 'regression': {
      const [name] = Object.keys(s.latest);
      const unit = name ? (s.latest[name]?.unit ?? '') : '';
      const sp = a.spindle;
      if (!name || !sp) return `${name ?? '?'} ${fmt(name ? s.latest[name]?.value : undefined, 1)} ${unit}`;
      const pairs = s.ids.filter((id) => sp.truth.has(id)).map((id) => [s.perId.get(id)!, sp.truth.get(id)!] as const);
      const mean = (xs: readonly number[]): number => xs.reduce((x, y) => x + y, 0) / xs.length;
      const head = pairs.slice(0, 10);
      const tail = pairs.slice(-10);
      const mae = mean(pairs.map(([p, t]) => Math.abs(p - t)));
      return (
        `${name} (mean of 10 bursts) ${fmt(mean(head.map((x) => x[0])), 0)} → ${fmt(mean(tail.map((x) => x[0])), 0)} ${unit}, ` +
        `true ${fmt(mean(head.map((x) => x[1])), 0)} → ${fmt(mean(tail.map((x) => x[1])), 0)} ${unit}; MAE ${fmt(mae, 1)} ${unit} over ${pairs.length} bursts`
      );
    }
    default:
      return `${s.results} results`;
  }
}

/** The live line of one device: rates over the last interval, latest values. */
function liveLine(a: Agent, dtS: number): string {
  const parts: string[] = [];
  for (const s of collector.ofDevice(a.id, PIPELINE_ORDER)) {
    const d = collector.delta(s);
    switch (s.task) {
      case 'classification':
        parts.push(`${s.pipeline} ${labelMix(s.labels, s.results)}`);
        break;
      case 'detection':
        parts.push(`${s.pipeline} ${(d.results / dtS).toFixed(1)} frames/s ${fmt(d.results ? d.detections / d.results : NaN, 1)} det/frame`);
        break;
      case 'anomaly':
        parts.push(
          s.pipeline === 'line'
            ? `${s.pipeline} score ${fmt(s.lastScore, 2)}/${fmt(s.threshold, 2)}${s.alarms ? ` ALARMS ${s.alarms}` : ''}`
            : `${s.pipeline} ${(d.results / dtS).toFixed(0)} win/s alarms ${pct(d.alarms, d.results)}`,
        );
        break;
      case 'regression': {
        const v = Object.entries(s.latest)[0];
        parts.push(`${s.pipeline} ${v ? `${v[0].toUpperCase()} ${fmt(v[1].value, 0)} ${v[1].unit ?? ''}` : '-'}`.trimEnd());
        break;
      }
      default:
        break;
    }
  }
  return `  ${a.id.padEnd(11)} ${parts.join(' | ') || 'no results yet'}`;
}

async function listDevices(): Promise<DeviceRow[]> {
  // The demo registers a handful: one page holds them all.
  const res = await hubApi<{ items: DeviceRow[] }>(hub, 'GET', '/v1/devices?kind=device&limit=1000');
  return res.items;
}

/** Inference records the hub stored for a device (its per-stream statistics), not health or drift windows. */
async function inferenceRecords(id: string): Promise<number> {
  const d = await hubApi<{ streamStats: { stream: string; count: number }[] }>(hub, 'GET', `/v1/devices/${id}`);
  return d.streamStats.filter((s) => s.stream === 'inference').reduce((a, s) => a + s.count, 0);
}

interface AgentMetrics {
  inferences: number;
  rejected: number;
  dropped: Record<string, number>;
}

async function agentMetrics(port: number): Promise<AgentMetrics | undefined> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const dropped: Record<string, number> = {};
    for (const m of text.matchAll(/^edgefleet_agent_input_dropped_total\{[^}]*reason="([^"]+)"[^}]*\}\s+(\S+)/gm)) {
      const n = Number(m[2]);
      if (n > 0) dropped[m[1]!] = (dropped[m[1]!] ?? 0) + n;
    }
    return {
      inferences: scrapeCounter(text, 'edgefleet_agent_inferences_total', { outcome: 'ok' }),
      rejected: scrapeCounter(text, 'edgefleet_agent_input_rejected_total'),
      dropped,
    };
  } catch {
    return undefined;
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

/** Inputs an agent's pipelines hold (stream queues) and its ok inferences so far. */
async function agentWork(port: number): Promise<{ queued: number; inferences: number }> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return { queued: scrapeCounter(text, 'edgefleet_agent_stream_queued'), inferences: scrapeCounter(text, 'edgefleet_agent_inferences_total') };
  } catch {
    return { queued: 0, inferences: NaN };
  }
}

/** Until every agent has run what it queued (no input waiting, inferences steady) and the hub acked its outbox. */
async function waitForDrain(timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  let last = '';
  while (Date.now() - t0 < timeoutMs) {
    const work = await Promise.all(agents.map((a) => agentWork(a.httpPort)));
    const pending = await Promise.all(agents.map((a) => outboxPending(a.httpPort)));
    const now = work.map((w) => w.inferences).join(',');
    if (pending.every((p) => p === 0) && work.every((w) => w.queued === 0) && now === last) return;
    last = now;
    await sleep(300);
  }
}

function pad(cols: string[]): string {
  return cols.map((c, i) => (i === 0 ? c.padEnd(12) : c.padStart(i === 8 ? 18 : 13))).join(' ');
}

const onSignal = (): void => {
  if (stopping) process.exit(1);
  stopping = true;
  say('\nstopping…');
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

try {
  const consumer = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id: 'demo-dashboard', kind: 'consumer' });
  await collector.start({ mqttUrl: hub.mqttUrl, id: 'demo-dashboard', token: consumer.token });
  // The agents trust the hub's release key (the precondition for an install from a rollout),
  // and the demo models are pushed as signed releases while the fleet starts (Models page).
  const trustedKeys = await writeHubKeys();
  releasing = releaseDemoModels().catch((err: unknown) => {
    say(`releases: pushing the demo models failed: ${String(err)}`);
    return [] as string[];
  });

  const startAgent = async (id: string, token: string, extra: Record<string, unknown>): Promise<Omit<Agent, 'sources'>> => {
    const trust = { hub: { httpUrl: hub.httpUrl }, updates: { trustedKeys } };
    const config = writeAgentConfig({ dir: join(root, id), deviceId: id, token, mqttUrl: hub.mqttUrl, modelsDir, extra: deepMerge(trust, extra) });
    const proc = new ServiceProcess(id, ['agent', '--config', config], { logFile: join(root, 'logs', `${id}.log`) });
    const listening = await proc.waitForMsg('http listening', 60_000);
    await proc.waitForMsg('agent running', 60_000);
    return { id, proc, httpPort: Number(listening.port) };
  };
  const sensorFor = async (device: string, id: string): Promise<string> =>
    (await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, kind: 'sensor', device, group: 'line-1' })).token;

  // The scenario: which gateways' machines go wrong, and when (seconds into the run).
  const bearingFaults = [undefined, { kind: 'outer_race' as const, atS: 0.35 * horizonS }, { kind: 'looseness' as const, atS: 0.5 * horizonS }];
  const gateway = async (i: number): Promise<Agent> => {
    const id = `line1-gw${i}`;
    const dev = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, group: 'line-1', labels: { site: 'demo', slot: String(i) } });
    const a = await startAgent(id, dev.token, {
      models: [manifest('machine-state'), manifest('bearing-anomaly'), manifest('spindle-rul'), manifest('line-state')],
      pipelines: [
        { name: 'vibration', model: 'machine-state', input: { type: 'mqtt' } },
        { name: 'bearing', model: 'bearing-anomaly', input: { type: 'mqtt', format: 'json' } },
        { name: 'spindle', model: 'spindle-rul', input: { type: 'mqtt', format: 'json' } },
        { name: 'line', model: 'line-state', input: { type: 'mqtt', format: 'json' } },
      ],
    });
    const conn = { deviceId: id, mqttUrl: hub.mqttUrl };
    const vib = `line1-gw${i}-vib`;
    const acc = `line1-gw${i}-acc`;
    const spn = `line1-gw${i}-spindle`;
    const drv = `line1-gw${i}-drive`;
    const fault = bearingFaults[(i - 1) % 3];
    const accelerometer = new SimulatedAccelerometer({ ...conn, sensorId: acc, token: await sensorFor(id, acc), input: 'bearing', seed: 200 + i, ...(fault ? { fault } : {}) });
    const spindle = new SimulatedSpindle({ ...conn, sensorId: spn, token: await sensorFor(id, spn), input: 'spindle', seed: 300 + i, periodMs: 500, horizonS, replace: !Number.isFinite(durationS) });
    const drag = i % 3 === 1 ? { onset: Math.round(0.2 * LINE_STEPS), ramp: Math.round(0.35 * LINE_STEPS), magnitude: 1.3 } : undefined;
    const drive = new SimulatedLineDrive({ ...conn, sensorId: drv, token: await sensorFor(id, drv), input: 'line', seed: 400 + i, ratePerSecond: lineRate, steps: LINE_STEPS, ...(drag ? { drag } : {}) });
    const machine = new SimulatedSensor({ ...conn, sensorId: vib, token: await sensorFor(id, vib), input: 'vibration', ratePerSecond: rate, seed: i });
    return { ...a, sources: [machine, accelerometer, spindle, drive], accelerometer, spindle, drive };
  };
  const cameraBox = async (i: number): Promise<Agent> => {
    const id = `line1-cam${i}`;
    const dev = await hubApi<{ token: string }>(hub, 'POST', '/v1/devices', { id, group: 'line-1', labels: { site: 'demo', station: `inspect-${i}` } });
    const a = await startAgent(id, dev.token, {
      models: [manifest('conveyor-parts')],
      pipelines: [{ name: 'conveyor', model: 'conveyor-parts', input: { type: 'mqtt', format: 'image' } }],
    });
    const lens = `line1-cam${i}-lens`;
    const camera = new SimulatedConveyorCamera({
      deviceId: id,
      mqttUrl: hub.mqttUrl,
      sensorId: lens,
      token: await sensorFor(id, lens),
      input: 'conveyor',
      framesPerSecond: fps,
      seed: 100 + i,
      format: frames,
      ...(i === 2 ? { dim: { atS: 0.5 * horizonS, illumination: 0.7 } } : {}),
    });
    await camera.prepare();
    return { ...a, sources: [camera], camera };
  };
  // Agents start in parallel (each takes seconds to load its models); listed in order.
  const started = await Promise.allSettled([...Array.from({ length: nAgents }, (_, k) => gateway(k + 1)), ...Array.from({ length: nCameras }, (_, k) => cameraBox(k + 1))]);
  for (const r of started) if (r.status === 'fulfilled') agents.push(r.value);
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason as Error;
  const sources = agents.flatMap((a) => a.sources);
  await Promise.all(sources.map((s) => (s.connect ? s.connect() : s.start())));
  // One origin for the scenario's clock: faults, wear and drag happen when the banner says.
  const origin = performance.now();
  collector.resetClock();
  for (const s of sources) s.run?.(origin);
  const nSources = agents.reduce((n, a) => n + a.sources.length, 0);
  say(`fleet up: ${agents.length} agents, ${nSources} sensors and cameras${Number.isFinite(durationS) ? `, running ${durationS} s` : ', Ctrl-C to stop'}`);
  const g = agents.filter((a) => a.accelerometer?.opts.fault || a.drive?.opts.drag || a.camera?.opts.dim);
  for (const a of g) {
    const f = a.accelerometer?.opts.fault;
    const onset = a.drive?.dragOnsetS;
    const dim = a.camera?.opts.dim;
    say(
      `  scenario ${a.id}: ` +
        [f ? `${f.kind} bearing fault from ${f.atS.toFixed(1)} s` : '', onset !== undefined ? `drive drag from ${onset.toFixed(1)} s` : '', dim ? `lamp dims to ${dim.illumination} from ${dim.atS.toFixed(1)} s` : '']
          .filter(Boolean)
          .join(', '),
    );
  }
  say('');

  const t0 = Date.now();
  let lastStored = 0;
  let lastT = t0;
  let lastDetail = t0;
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
    if (values.quiet) continue;
    say(`[${Math.round((now - t0) / 1000)}s] online ${online}/${devices.length}  records stored/s ${perS.toFixed(1)}  stored ${stored}  telemetry lag ${lag} records`);
    if (now - lastDetail >= 5000 || now - t0 >= durationS * 1000) {
      for (const a of agents) say(liveLine(a, (now - lastDetail) / 1000));
      lastDetail = now;
    }
  }
  stopping = true;
} catch (err) {
  console.error(`demo failed: ${(err as Error).message}`);
  exitCode = 1;
} finally {
  await shutdown();
}
process.exit(exitCode);

function readLog(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/** Whether 127.0.0.1:`port` can be listened on now (the hub binds it a moment later). */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}
