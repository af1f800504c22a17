/**
 * Benchmark (not a test), issue #15 "reconnect storms": can 10,000 devices come back after a hub
 * restart in <= 20 s on this 2-core machine, and can the hub answer one telemetry batch from
 * every device at once in <= 10 s?
 *
 *   npm run bench:scale -- [--devices 10000] [--workers 4] [--records 10] [--json]
 *
 * Real parts: the hub runs as its own process (the CLI, as in production) on a real SQLite
 * database in a temp dir. The N devices are registered through the hub's own store before it
 * starts (SqliteHubStore.createPrincipal with one fresh token and hashToken() each, exactly what
 * POST /v1/devices stores; the API would only add N HTTP round trips). They are real mqtt.js
 * clients (MQTT 3.1.1, their own id and token) spread over `--workers` child processes and over
 * 127.1.x.y source addresses, 40 devices an address (the hub's per-address limits are meant for
 * a NAT site, not for a whole fleet on one address). They reconnect as the agent does: mqtt.js'
 * own reconnect off, the agent's jittered exponential backoff (shared/backoff.ts defaults:
 * 500 ms doubling to 30 s, jitter 0.5), reset on connect, and subscribe to their ack topic in the
 * connect handler.
 *
 * Phases, all in one run:
 * 1. bare: a vanilla aedes (no auth, no hooks, in-memory persistence) in its own process; N
 *    clients connect cold; then a QoS 1 publish rate from 100 of them (one in flight each).
 * 2. hub cold: N devices connect to a fresh hub; hub CPU-seconds and RSS.
 * 3. hub broker: the same QoS 1 publish rate, devices publishing to their own `out/` topic.
 * 4. restart: SIGTERM the hub, start it again on the same port; time until all N reconnected,
 *    from the new hub listening and from the SIGTERM; CPU-seconds of the new hub process.
 * 5. telemetry: every device publishes one batch (`--records` records) at once; time until each
 *    is acked (`ok: true`) or refused (`ok: false`); anything unanswered after 30 s is counted.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Aedes } from 'aedes';
import { MqttClient } from 'mqtt';
import { hashToken, newSecret } from '../hub/auth/tokens.ts';
import { SqliteHubStore } from '../hub/store/sqlite-store.ts';
import { Backoff, BackoffSchema } from '../shared/backoff.ts';
import { silentLogger } from '../shared/log.ts';
import { PROTOCOL_VERSION, topics } from '../shared/protocol.ts';
import { startHubProcess, type HubInfo } from './fleet/hub-process.ts';

interface Device {
  id: string;
  token: string;
  address: string;
}

type ToWorker =
  | { cmd: 'init'; devices: Device[] }
  | { cmd: 'connect'; port: number; auth: boolean; subscribeAcks: boolean }
  | { cmd: 'watch' }
  | { cmd: 'rate'; clients: number; seconds: number; payloadBytes: number; hub: boolean }
  | { cmd: 'telemetry'; records: number; timeoutMs: number }
  | { cmd: 'close' };

type FromWorker =
  | { type: 'ready' }
  | { type: 'connected'; lastAt: number; attempts: number; refused: number }
  | { type: 'rate'; acked: number; failed: number }
  | { type: 'telemetry'; acked: number; refused: number; unanswered: number; lastAt: number }
  | { type: 'closed' };

const PER_ADDRESS = 40;
const ADDRESS_BATCH_SIZE = 64;

function addressOf(i: number): string {
  const a = Math.floor(i / PER_ADDRESS) + 1;
  return `127.1.${a >> 8}.${a & 255}`;
}

// ------------------------------------------------------------------------------ worker process

function workerMain(): void {
  let devices: Device[] = [];
  const clients = new Map<string, MqttClient>();
  const send = (m: FromWorker): void => void process.send?.(m);
  let waiting: Set<string> | undefined;
  let lastAt = 0;
  let attempts = 0;
  let refused = 0;
  const acks = new Map<string, (ok: boolean) => void>();

  const checkWatch = (): void => {
    if (waiting && waiting.size === 0) {
      waiting = undefined;
      send({ type: 'connected', lastAt, attempts, refused });
    }
  };

  function open(d: Device, port: number, auth: boolean, subscribeAcks: boolean): MqttClient {
    const backoff = new Backoff(BackoffSchema.parse({}));
    const c = new MqttClient(() => netConnect({ host: '127.0.0.1', port, localAddress: d.address }), {
      protocolId: 'MQTT',
      protocolVersion: 4,
      clientId: d.id,
      ...(auth ? { username: d.id, password: d.token } : {}),
      clean: true,
      keepalive: 60,
      reconnectPeriod: 0,
      reconnectOnConnackError: true,
      connectTimeout: 10_000,
      resubscribe: false,
    });
    let timer: NodeJS.Timeout | undefined;
    c.on('connect', () => {
      backoff.reset();
      lastAt = Date.now();
      if (subscribeAcks) c.subscribe(topics.of(d.id, 'ack'), { qos: 1 });
      waiting?.delete(d.id);
      checkWatch();
    });
    c.on('error', (err: Error & { code?: unknown }) => {
      if (typeof err.code === 'number') refused++;
    });
    c.on('close', () => {
      if (c.disconnecting || timer) return;
      timer = setTimeout(() => {
        timer = undefined;
        attempts++;
        if (!c.disconnecting) c.reconnect();
      }, backoff.next());
    });
    c.on('message', (topic, payload) => {
      const ack = JSON.parse(payload.toString()) as { batchId: string; ok: boolean };
      acks.get(`${d.id}/${ack.batchId}`)?.(ack.ok);
    });
    return c;
  }

  async function rate(m: Extract<ToWorker, { cmd: 'rate' }>): Promise<void> {
    const payload = Buffer.alloc(m.payloadBytes, 'x');
    const until = Date.now() + m.seconds * 1000;
    let acked = 0;
    let failed = 0;
    const chosen = [...clients.entries()].slice(0, m.clients);
    await Promise.all(
      chosen.map(async ([id, c]) => {
        const topic = m.hub ? topics.output(id, 'bench') : `bench/${id}`;
        while (Date.now() < until) {
          // A PUBACK that does not come within 5 s counts as failed (and ends this client's loop).
          const ok = await Promise.race([c.publishAsync(topic, payload, { qos: 1 }).then(() => true, () => false), sleep(5000).then(() => false)]);
          if (ok) acked++;
          else {
            failed++;
            if (Date.now() >= until) break;
            await sleep(10);
          }
        }
      }),
    );
    send({ type: 'rate', acked, failed });
  }

  async function telemetry(m: Extract<ToWorker, { cmd: 'telemetry' }>): Promise<void> {
    let acked = 0;
    let refusedBatches = 0;
    let last = 0;
    const ts = Date.now();
    const answers = [...clients.entries()].map(
      ([id, c]) =>
        new Promise<void>((resolve) => {
          const batchId = `scale-${ts}`;
          const key = `${id}/${batchId}`;
          const timer = setTimeout(() => (acks.delete(key), resolve()), m.timeoutMs);
          acks.set(key, (ok) => {
            clearTimeout(timer);
            acks.delete(key);
            if (ok) acked++;
            else refusedBatches++;
            last = Date.now();
            resolve();
          });
          const records = Array.from({ length: m.records }, (_, seq) => ({ stream: 'inference', epoch: 1, seq, ts, kind: 'inference', body: { score: seq / m.records, label: 'ok' } }));
          c.publish(topics.of(id, 'telemetry'), JSON.stringify({ v: PROTOCOL_VERSION, type: 'telemetry', deviceId: id, batchId, records }), { qos: 1 });
        }),
    );
    await Promise.all(answers);
    send({ type: 'telemetry', acked, refused: refusedBatches, unanswered: clients.size - acked - refusedBatches, lastAt: last });
  }

  process.on('message', (m: ToWorker) => {
    switch (m.cmd) {
      case 'init':
        devices = m.devices;
        send({ type: 'ready' });
        break;
      case 'connect':
        waiting = new Set(devices.map((d) => d.id));
        for (const d of devices) clients.set(d.id, open(d, m.port, m.auth, m.subscribeAcks));
        break;
      case 'watch':
        waiting = new Set(devices.map((d) => d.id));
        break;
      case 'rate':
        void rate(m);
        break;
      case 'telemetry':
        void telemetry(m);
        break;
      case 'close':
        void Promise.all([...clients.values()].map((c) => c.endAsync(true).catch(() => undefined))).then(() => {
          clients.clear();
          send({ type: 'closed' });
        });
        break;
    }
  });
}

/** A vanilla aedes on port 0: what the same clients cost without the hub's hooks. */
async function bareBrokerMain(): Promise<void> {
  const aedes = new Aedes();
  await aedes.listen();
  const server = createServer((s) => aedes.handle(s));
  server.listen(0, '127.0.0.1', () => {
    const addr = server.address();
    process.send?.({ port: typeof addr === 'object' && addr ? addr.port : 0 });
  });
  process.on('message', () => {
    server.close();
    aedes.close(() => process.exit(0));
  });
}

// ------------------------------------------------------------------------------ parent

class Workers {
  readonly #procs: ChildProcess[] = [];
  readonly #inbox = new Map<ChildProcess, FromWorker[]>();
  readonly #waiters = new Map<ChildProcess, ((m: FromWorker) => void)[]>();

  constructor(slices: Device[][]) {
    for (const slice of slices) {
      const p = fork(new URL(import.meta.url).pathname, ['--worker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
      p.send({ cmd: 'init', devices: slice } satisfies ToWorker);
      this.#procs.push(p);
      this.#inbox.set(p, []);
      this.#waiters.set(p, []);
      p.on('message', (m: FromWorker) => {
        const w = this.#waiters.get(p)?.shift();
        if (w) w(m);
        else this.#inbox.get(p)?.push(m);
      });
    }
  }

  #next(p: ChildProcess): Promise<FromWorker> {
    const queued = this.#inbox.get(p)?.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiters.get(p)?.push(resolve));
  }

  send(m: ToWorker): void {
    for (const p of this.#procs) p.send(m);
  }

  /** The next message of every worker. */
  all<T extends FromWorker['type']>(type: T, timeoutMs: number): Promise<Extract<FromWorker, { type: T }>[]> {
    return Promise.race([
      Promise.all(
        this.#procs.map(async (p) => {
          const m = await this.#next(p);
          if (m.type !== type) throw new Error(`worker said ${m.type}, expected ${type}`);
          return m as Extract<FromWorker, { type: T }>;
        }),
      ),
      sleep(timeoutMs).then(() => {
        throw new Error(`workers: no ${type} within ${timeoutMs} ms`);
      }),
    ]);
  }

  kill(): void {
    for (const p of this.#procs) p.kill('SIGKILL');
  }
}

/** user+system CPU seconds and RSS of a process, from /proc. */
function procStats(pid: number): { cpuSeconds: number; rssMb: number; hwmMb: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string): number => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { cpuSeconds: ticks / 100, rssMb: kb('VmRSS') / 1024, hwmMb: kb('VmHWM') / 1024 };
}

async function register(dataDir: string, n: number): Promise<Device[]> {
  const store = new SqliteHubStore({ dataDir, synchronous: 'NORMAL', busyTimeoutMs: 5000, walLimitBytes: 64 << 20, log: silentLogger() });
  await store.start(new AbortController().signal);
  const devices: Device[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const d: Device = { id: `scale-${String(i).padStart(5, '0')}`, token: newSecret(), address: addressOf(i) };
      await store.createPrincipal({ id: d.id, kind: 'device', group: `line-${i % 10}`, labels: {}, token: await hashToken(d.token), createdAt: Date.now() });
      devices.push(d);
    }
  } finally {
    await store.stop();
  }
  return devices;
}

function slices<T>(xs: T[], k: number): T[][] {
  // Whole addresses per worker, so each worker's clients share few source addresses.
  const out: T[][] = Array.from({ length: k }, () => []);
  xs.forEach((x, i) => out[Math.floor(i / ADDRESS_BATCH_SIZE) % k]?.push(x));
  return out.filter((s) => s.length > 0);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string', default: '10000' },
      workers: { type: 'string', default: '4' },
      records: { type: 'string', default: '10' },
      'rate-clients': { type: 'string', default: '100' },
      'rate-seconds': { type: 'string', default: '5' },
      json: { type: 'boolean', default: false },
      /** Where the hub's log goes (default: the temp dir, removed at the end). */
      'hub-log': { type: 'string' },
    },
  });
  const n = Number(values.devices);
  const workerCount = Number(values.workers);
  const records = Number(values.records);
  const rateClients = Number(values['rate-clients']);
  const rateSeconds = Number(values['rate-seconds']);
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-bench-scale-'));
  const dataDir = join(dir, 'hub');
  const hubLog = values['hub-log'] ?? join(dir, 'hub.log');
  const log = (s: string): void => void process.stderr.write(`bench-scale: ${s}\n`);
  let hub: HubInfo | undefined;
  let bare: ChildProcess | undefined;
  let workers: Workers | undefined;
  const t = (): number => Date.now();
  try {
    const t0 = t();
    const devices = await register(dataDir, n);
    const registerSeconds = (t() - t0) / 1000;
    log(`${n} devices registered through the store in ${registerSeconds.toFixed(1)} s`);
    const payloadBytes = Buffer.byteLength(
      JSON.stringify({ v: PROTOCOL_VERSION, type: 'telemetry', deviceId: devices[0]?.id, batchId: 'scale-1764800000000', records: Array.from({ length: records }, (_, seq) => ({ stream: 'inference', epoch: 1, seq, ts: 1764800000000, kind: 'inference', body: { score: 0.5, label: 'ok' } })) }),
    );

    // 1. bare aedes
    bare = fork(new URL(import.meta.url).pathname, ['--bare-broker'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const barePort = await new Promise<number>((resolve) => bare?.once('message', (m: { port: number }) => resolve(m.port)));
    workers = new Workers(slices(devices, workerCount));
    await workers.all('ready', 60_000);
    const rateShare = Math.ceil(rateClients / workerCount);
    let s = t();
    workers.send({ cmd: 'connect', port: barePort, auth: false, subscribeAcks: false });
    const bareConn = await workers.all('connected', 300_000);
    const bareConnectSeconds = (Math.max(...bareConn.map((m) => m.lastAt)) - s) / 1000;
    log(`bare aedes: ${n} connected in ${bareConnectSeconds.toFixed(2)} s`);
    workers.send({ cmd: 'rate', clients: rateShare, seconds: rateSeconds, payloadBytes, hub: false });
    const bareRate = (await workers.all('rate', 60_000 + rateSeconds * 1000)).reduce((a, m) => a + m.acked, 0) / rateSeconds;
    log(`bare aedes: ${bareRate.toFixed(0)} QoS 1 publishes/s`);
    workers.send({ cmd: 'close' });
    await workers.all('closed', 120_000);
    bare.send('stop');
    await new Promise((resolve) => bare?.once('exit', resolve));
    bare = undefined;

    // 2. hub, cold
    hub = await startHubProcess({ dataDir, logFile: hubLog, timeoutMs: 60_000 });
    const mqttPort = Number(new URL(hub.mqttUrl).port);
    const cpuBefore = procStats(hub.proc.pid).cpuSeconds;
    s = t();
    workers.send({ cmd: 'connect', port: mqttPort, auth: true, subscribeAcks: true });
    const cold = await workers.all('connected', 600_000);
    const coldSeconds = (Math.max(...cold.map((m) => m.lastAt)) - s) / 1000;
    const coldStats = procStats(hub.proc.pid);
    const coldCpu = coldStats.cpuSeconds - cpuBefore;
    const coldRetries = cold.reduce((a, m) => a + m.attempts, 0);
    log(`hub cold: ${n} connected in ${coldSeconds.toFixed(2)} s, hub CPU ${coldCpu.toFixed(1)} s, RSS ${coldStats.rssMb.toFixed(0)} MB, ${coldRetries} reconnect attempts`);
    await sleep(2000); // presence writes and subscriptions settle

    // 3. hub broker publish rate
    workers.send({ cmd: 'rate', clients: rateShare, seconds: rateSeconds, payloadBytes, hub: true });
    const hubRateReplies = await workers.all('rate', 60_000 + rateSeconds * 1000);
    const hubRate = hubRateReplies.reduce((a, m) => a + m.acked, 0) / rateSeconds;
    log(`hub broker: ${hubRate.toFixed(0)} QoS 1 publishes/s (${hubRateReplies.reduce((a, m) => a + m.failed, 0)} failed)`);

    // 4. restart
    workers.send({ cmd: 'watch' });
    const stopAt = t();
    hub.proc.child.kill('SIGTERM');
    await hub.proc.exited;
    const downAt = t();
    const spawnAt = t();
    hub = await startHubProcess({ dataDir, mqttPort, logFile: hubLog, timeoutMs: 60_000 });
    const listeningAt = t();
    const re = await workers.all('connected', 600_000);
    const lastRe = Math.max(...re.map((m) => m.lastAt));
    const reStats = procStats(hub.proc.pid);
    const reRetries = re.reduce((a, m) => a + m.attempts, 0) - coldRetries;
    const restart = {
      stopSeconds: (downAt - stopAt) / 1000,
      startSeconds: (listeningAt - spawnAt) / 1000,
      fromListeningSeconds: (lastRe - listeningAt) / 1000,
      fromSigtermSeconds: (lastRe - stopAt) / 1000,
      hubCpuSeconds: reStats.cpuSeconds,
      rssMb: reStats.rssMb,
      reconnectAttempts: reRetries,
    };
    log(
      `restart: old hub stopped in ${restart.stopSeconds.toFixed(1)} s, new one listening after ${restart.startSeconds.toFixed(1)} s; all ${n} back ${restart.fromListeningSeconds.toFixed(2)} s after that (${restart.fromSigtermSeconds.toFixed(2)} s after SIGTERM); new hub CPU ${restart.hubCpuSeconds.toFixed(1)} s (start-up included), RSS ${restart.rssMb.toFixed(0)} MB, ${reRetries} reconnect attempts`,
    );
    await sleep(2000);

    // 5. telemetry storm
    const cpuT = procStats(hub.proc.pid).cpuSeconds;
    s = t();
    workers.send({ cmd: 'telemetry', records, timeoutMs: 30_000 });
    const tel = await workers.all('telemetry', 120_000);
    const telStats = procStats(hub.proc.pid);
    const telemetry = {
      acked: tel.reduce((a, m) => a + m.acked, 0),
      refused: tel.reduce((a, m) => a + m.refused, 0),
      unanswered: tel.reduce((a, m) => a + m.unanswered, 0),
      seconds: (Math.max(...tel.map((m) => m.lastAt)) - s) / 1000,
      hubCpuSeconds: telStats.cpuSeconds - cpuT,
      hwmMb: telStats.hwmMb,
    };
    log(`telemetry: ${telemetry.acked} acked, ${telemetry.refused} refused, ${telemetry.unanswered} unanswered, last answer after ${telemetry.seconds.toFixed(2)} s, hub CPU ${telemetry.hubCpuSeconds.toFixed(1)} s, peak RSS ${telemetry.hwmMb.toFixed(0)} MB`);

    workers.send({ cmd: 'close' });
    await workers.all('closed', 120_000);
    const figures = {
      devices: n,
      workers: workerCount,
      registerSeconds,
      bare: { connectSeconds: bareConnectSeconds, publishesPerSecond: bareRate },
      cold: { connectSeconds: coldSeconds, hubCpuSeconds: coldCpu, rssMb: coldStats.rssMb, reconnectAttempts: coldRetries },
      hubBroker: { publishesPerSecond: hubRate },
      restart,
      telemetry: { ...telemetry, batchBytes: payloadBytes, records },
    };
    if (values.json) console.log(JSON.stringify(figures));
    else {
      const rows: [string, string, string, string][] = [
        ['phase', 'hub', 'bare aedes', 'hub / bare'],
        [`${n} clients connect, cold (s)`, coldSeconds.toFixed(2), bareConnectSeconds.toFixed(2), (coldSeconds / bareConnectSeconds).toFixed(2)],
        [`QoS 1 publishes/s (${rateClients} clients, ${payloadBytes} B)`, hubRate.toFixed(0), bareRate.toFixed(0), (hubRate / bareRate).toFixed(2)],
        [`all ${n} back after restart, from listening (s)`, restart.fromListeningSeconds.toFixed(2), bareConnectSeconds.toFixed(2), (restart.fromListeningSeconds / bareConnectSeconds).toFixed(2)],
        [`all ${n} back after restart, from SIGTERM (s)`, restart.fromSigtermSeconds.toFixed(2), '', ''],
        [`telemetry: ${n} batches answered (s)`, telemetry.seconds.toFixed(2), (n / bareRate).toFixed(2), (telemetry.seconds / (n / bareRate)).toFixed(2)],
      ];
      for (const r of rows) console.log(`${r[0].padEnd(58)} ${r[1].padStart(9)} ${r[2].padStart(11)} ${r[3].padStart(11)}`);
      console.log(
        `hub CPU: cold connect ${coldCpu.toFixed(1)} s, new hub until all back ${restart.hubCpuSeconds.toFixed(1)} s (start-up included), telemetry ${telemetry.hubCpuSeconds.toFixed(1)} s; hub RSS ${coldStats.rssMb.toFixed(0)} MB cold, ${restart.rssMb.toFixed(0)} MB after restart, peak ${telemetry.hwmMb.toFixed(0)} MB`,
      );
      console.log(`telemetry: ${telemetry.acked} acked, ${telemetry.refused} refused, ${telemetry.unanswered} unanswered (targets: restart <= 20 s, telemetry <= 10 s, nothing unanswered)`);
    }
  } finally {
    workers?.kill();
    bare?.kill('SIGKILL');
    if (hub) {
      hub.proc.child.kill('SIGTERM');
      await hub.proc.exited;
    }
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv.includes('--worker')) workerMain();
else if (process.argv.includes('--bare-broker')) void bareBrokerMain();
else
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
