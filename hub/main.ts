/**
 * The hub's composition root: builds every component (store, operator auth, ingest, broker,
 * model registry, HTTP API, hub.json), passes each its dependencies, starts them in order and stops them in
 * reverse (shared/lifecycle.ts). `runHub` is the `edgefleet hub` command: flags → config →
 * `runService`, which owns signals and the exit code.
 *
 * Rollouts: ingest hands the rollout engine command results, newly stored model/health records
 * and hellos; the engine answers with commands on the bus.
 *
 * Feedback and KPIs: ingest hands the KPI indexer newly stored inference and health records;
 * ground truth comes in through the API and MQTT feedback (hub/feedback/); the KPI service
 * answers queries and keeps Prometheus gauges (hub/kpis/).
 *
 * Drift: ingest hands the drift aggregator newly stored drift records (merged per device and
 * window); the drift monitor tests closed windows and hands reports to the alert manager, whose
 * events go out through alert delivery (MQTT topic, webhooks, retraining hook).
 *
 * Start order: the store first; ingest subscribes on the broker's bus before the broker
 * listens, so the first hello of a fleet reconnecting after a restart is not missed; the model
 * registry (signing keys, artifact directory) before the API that serves it; the API last,
 * then hub.json tells the CLI where everything is.
 */
import { rm, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { EdgefleetError, ErrorCode } from '../shared/errors.ts';
import { collectProcessMetrics } from '../shared/metrics.ts';
import { Lifecycle, type Component } from '../shared/lifecycle.ts';
import { createLogger, LOG_LEVELS, type Logger } from '../shared/log.ts';
import { runService, type Service } from '../shared/service.ts';
import { ApiServer } from './api/server.ts';
import { DeviceAuth } from './auth/devices.ts';
import { AuditLog } from './auth/audit.ts';
import { BrokerAuthHttp } from './auth/broker-auth-http.ts';
import { AuthFailureLimiter } from './auth/failures.ts';
import { SecurityService } from './auth/security.ts';
import { ApiAuth, ensureAdminToken } from './auth/operators.ts';
import type { EmbeddedBroker } from './broker/broker.ts';
import { openBroker } from './broker/open-bus.ts';
import { AlertManager } from './alerts/alerts.ts';
import { AlertDelivery } from './alerts/delivery.ts';
import { CommandSender } from './commands/sender.ts';
import { DriftAggregator } from './drift/aggregator.ts';
import { DriftApi } from './drift/api.ts';
import { DriftMonitor } from './drift/monitor.ts';
import { registerFleetMetrics } from './fleet-metrics.ts';
import { SampleRequests } from './drift/sample-requests.ts';
import { SampleStore } from './drift/samples.ts';
import { FeedbackService } from './feedback/feedback.ts';
import { MqttFeedback } from './feedback/mqtt-feedback.ts';
import { loadHubConfig, type HubConfig } from './config.ts';
import { Ingest } from './ingest/ingest.ts';
import { KpiIndexer } from './kpis/indexer.ts';
import { KpiService } from './kpis/service.ts';
import { ArtifactAccess } from './models/artifact-access.ts';
import { ArtifactStore } from './models/artifact-store.ts';
import { ModelRegistry } from './models/registry.ts';
import { KeyRing } from './models/signing-keys.ts';
import { RolloutEngine } from './rollouts/engine.ts';
import { MaintenanceWindows } from './rollouts/windows.ts';
import { ConnectionBudget } from './net/conn-limits.ts';
import { SqliteHubStore } from './store/sqlite-store.ts';
import type { HubStore } from './store/store.ts';

export type { HubConfig } from './config.ts';
export { loadHubConfig } from './config.ts';

export const HUB_INFO_FILE = 'hub.json';

export interface Hub extends Service {
  readonly config: HubConfig;
  readonly store: HubStore;
  readonly registry: Registry;
  /** Signs and sends commands to devices, as the rollout engine and alert delivery do (issue #14). */
  readonly commands: CommandSender;
  /** The rollout engine (tests call `tick()` after moving a fake clock). */
  readonly rollouts: RolloutEngine;
  /** KPIs and their gauges (tests call `refreshGauges()`); `kpiIndex.idle()` waits for indexing. */
  readonly kpis: KpiService;
  readonly kpiIndex: KpiIndexer;
  /** Broker quotas (issue #14): what a principal holds (`quotaUsage`), `expireSessions()` after moving a fake clock; `publish` as the hub itself. */
  readonly broker: Pick<EmbeddedBroker, 'quotaUsage' | 'expireSessions' | 'publish'>;
  /** Drift: `drift.tick()` tests due windows (tests move a fake clock first), `driftAggregator.idle()` waits for merging. */
  readonly drift: DriftMonitor;
  readonly driftAggregator: DriftAggregator;
  /** Alerts (lifecycle) and their delivery (`alertDelivery.flush()` attempts due webhooks now). */
  readonly alerts: AlertManager;
  readonly alertDelivery: AlertDelivery;
  /** Device sample requests and upload quotas (issue #14; tests open requests with `open()`). */
  readonly sampleRequests: SampleRequests;
  /** Which artifacts each device may fetch (issue #14; `forget()` drops cached decisions). */
  readonly artifactAccess: ArtifactAccess;
  /** The HTTP API (test/unit/openapi.test.ts reads its route table). */
  readonly api: ApiServer;
  /** Bound ports: valid after start() (configured 0 → the port the OS chose). */
  readonly mqttPort: number;
  readonly httpPort: number;
  /** `mqtt://host:port` and `http://host:port`, with a wildcard bind address shown as 127.0.0.1. */
  readonly mqttUrl: string;
  readonly httpUrl: string;
  /** The operator admin token (also in `<dataDir>/admin.token`); valid after start(). */
  readonly adminToken: string;
  start(signal: AbortSignal): Promise<void>;
  /** Stops everything in reverse order; returns the failures (also logged). */
  stop(): Promise<Error[]>;
}

export interface HubDeps {
  log: Logger;
  registry?: Registry;
  now?: () => number;
}

function urlHost(host: string): string {
  if (host === '0.0.0.0' || host === '::' || host === '') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

export function createHub(config: HubConfig, deps: HubDeps): Promise<Hub> {
  const { log } = deps;
  const now = deps.now ?? Date.now;
  const registry = deps.registry ?? new Registry();
  const lifecycle = new Lifecycle(log.child({ component: 'lifecycle' }));

  const store = new SqliteHubStore({
    dataDir: config.dataDir,
    synchronous: config.store.synchronous,
    busyTimeoutMs: config.store.busyTimeoutMs,
    walLimitBytes: config.store.walLimitBytes,
    log: log.child({ component: 'store' }),
  });
  // One failed-login budget per address for MQTT, the API and enrollment (each failure costs a scrypt).
  const failures = new AuthFailureLimiter(config.limits.maxAuthFailuresPerMinutePerIp, now, { registry });
  // Descriptors shared out between the listeners, with caps and deadlines on both (issue #14).
  // Socket deadlines run on the process's real clock, never on `now`: an injected clock moves
  // business time (bakes, windows) and a jump of it must not close every idle keep-alive socket
  // and every MQTT client still authenticating (test/integration/conn-deadlines-clock.test.ts).
  const connections = new ConnectionBudget({ settings: config.limits.connections, registry, log: log.child({ component: 'connections' }), now: () => performance.now() });
  // Embedded aedes or an external broker (issue #15; hub/broker/open-bus.ts).
  const { broker, externalUrl, provisioning } = openBroker(config, { failures, connections: connections.mqtt, store, log: log.child({ component: 'broker' }), registry, now });
  const ingest = new Ingest({ bus: broker, store, log: log.child({ component: 'ingest' }), registry, maxPayloadBytes: config.limits.maxPayloadBytes, now });
  registerFleetMetrics({ registry, fleetTotals: () => store.fleetTotals(), log: log.child({ component: 'metrics' }) });
  const keys = new KeyRing({
    dataDir: config.dataDir,
    activeKeyId: config.models.signing.activeKeyId,
    trustedKeyFiles: config.models.signing.trustedKeyFiles,
    log: log.child({ component: 'keys' }),
  });
  // Commands are signed with the release key (issue #14): agents already trust it. Loaded by
  // the registry's start, which runs before the engine and alert delivery start.
  const commands = new CommandSender({ bus: broker, key: () => keys.active });
  const models = new ModelRegistry({
    store,
    keys,
    artifacts: new ArtifactStore(join(config.dataDir, 'artifacts')),
    probe: config.models.probe,
    maxArtifactBytes: config.models.maxArtifactBytes,
    log: log.child({ component: 'models' }),
    registry,
    now,
  });
  const rollouts = new RolloutEngine({
    store,
    bus: broker,
    commands,
    windows: new MaintenanceWindows(config.rollouts.windows, config.rollouts.timezone),
    log: log.child({ component: 'rollouts' }),
    registry,
    now,
    tickMs: config.rollouts.tickMs,
    waveTimeoutMs: config.rollouts.waveTimeoutMs,
    commandRetryMs: config.rollouts.commandRetryMs,
  });
  ingest.onCommandResult((deviceId, result) => rollouts.onCommandResult(deviceId, result));
  ingest.onRecords((deviceId, records) => rollouts.onRecords(deviceId, records));
  ingest.onHello((hello) => rollouts.onHello(hello));
  // Feedback and KPIs (issue #4): inference and health records feed the KPI index.
  const kpiIndexer = new KpiIndexer({ store, log: log.child({ component: 'kpi-index' }), registry });
  ingest.onRecords((deviceId, records) => kpiIndexer.onRecords(deviceId, records));
  const feedback = new FeedbackService({ store, configLabels: config.kpis.labels, log: log.child({ component: 'feedback' }), registry, now });
  const mqttFeedback = new MqttFeedback({ bus: broker, feedback, log: log.child({ component: 'feedback' }), registry, maxPayloadBytes: config.limits.maxPayloadBytes });
  const kpis = new KpiService({ store, config: config.kpis, log: log.child({ component: 'kpis' }), registry, now });
  // Drift (issue #4): drift records → per-device window rows; windows tested → alerts → delivery.
  const driftAggregator = new DriftAggregator({
    store,
    log: log.child({ component: 'drift' }),
    registry,
    windowMs: config.drift.windowMs,
    graceMs: config.drift.graceMs,
    retentionMs: config.drift.retentionDays * 86_400_000,
    now,
  });
  ingest.onRecords((deviceId, records) => driftAggregator.onRecords(deviceId, records));
  // Device uploads only against a request the hub issued (drift.sample), within quotas (issue #14).
  const samples = new SampleStore(join(config.dataDir, 'samples'), now);
  const sampleRequests = new SampleRequests({ store, samples, limits: config.drift.samples, log: log.child({ component: 'samples' }), registry, now });
  const alertDelivery = new AlertDelivery({
    store,
    bus: broker,
    commands,
    log: log.child({ component: 'alerts' }),
    registry,
    config: config.alerts,
    now,
    pipelineOf: (deviceId, model) => driftAggregator.pipelineOf(deviceId, model),
    openSampleRequest: (deviceId, pipeline, alertId) => sampleRequests.open(deviceId, { pipeline, alertId }),
  });
  const alerts = new AlertManager({ store, delivery: alertDelivery, log: log.child({ component: 'alerts' }), registry, config: config.alerts, now });
  const drift = new DriftMonitor({ store, log: log.child({ component: 'drift' }), registry, config: config.drift, onReport: (r, ctx) => alerts.onReport(r, ctx), now });
  const driftApi = new DriftApi({
    store,
    alerts,
    samples,
    requests: sampleRequests,
    maxSampleBytes: config.drift.samples.maxBytes,
    maxSampleItems: config.drift.samples.maxItems,
    log: log.child({ component: 'drift' }),
  });
  // Security (issue #6): operator tokens, enrollment, revocation, audit. A revocation evicts
  // the verification caches and disconnects a connected client at once.
  const apiAuth = new ApiAuth(store, now, undefined, failures);
  const deviceAuth = new DeviceAuth(store, now, undefined, failures);
  const security = new SecurityService({ store, log: log.child({ component: 'security' }), now, failures, registry, provisioning });
  security.onPrincipalRevoked((id) => {
    deviceAuth.forget(id);
    broker.disconnect(id, 'revoked');
    broker.forgetSession(id);
  });
  security.onOperatorTokenRevoked((tokenId) => apiAuth.forget(tokenId));
  const artifactAccess = new ArtifactAccess({ store, log: log.child({ component: 'artifacts' }), registry });
  const audit = new AuditLog(store, log.child({ component: 'audit' }), registry, { config: config.audit, now });
  // External brokers ask here (issue #15). VerneMQ's auth_on_publish carries the payload in base64.
  const brokerAuth = new BrokerAuthHttp({
    config: config.brokerAuth,
    store,
    failures,
    maxTopicBytes: config.limits.maxTopicBytes,
    maxBodyBytes: Math.ceil((config.limits.maxPayloadBytes * 4) / 3) + 65_536,
    log: log.child({ component: 'broker-auth' }),
    registry,
  });
  const api = new ApiServer({
    host: config.http.host,
    port: config.http.port,
    maxBodyBytes: config.http.maxBodyBytes,
    publicMetrics: config.http.publicMetrics,
    tls: { ...config.tls, clientCerts: config.tls.httpClientCerts ?? config.tls.clientCerts },
    store,
    auth: apiAuth,
    deviceAuth,
    security,
    audit,
    models,
    artifactAccess,
    rollouts,
    feedback,
    kpis,
    drift: driftApi,
    brokerAuth,
    maxManifestBytes: config.models.maxManifestBytes,
    registry,
    log: log.child({ component: 'api' }),
    recordsPerSecond: () => ingest.recordsPerSecond(),
    connections: connections.http,
    now,
  });

  let adminToken: string | undefined;
  const infoFile = join(config.dataDir, HUB_INFO_FILE);

  const hub: Hub = {
    config,
    store,
    registry,
    commands,
    rollouts,
    kpis,
    kpiIndex: kpiIndexer,
    broker,
    drift,
    driftAggregator,
    alerts,
    alertDelivery,
    sampleRequests,
    artifactAccess,
    api,
    get mqttPort() {
      return broker.port;
    },
    get httpPort() {
      return api.port;
    },
    get mqttUrl() {
      return externalUrl ?? `${config.tls.certFile ? 'mqtts' : 'mqtt'}://${urlHost(config.mqtt.host)}:${broker.port}`;
    },
    get httpUrl() {
      return `${config.tls.certFile ? 'https' : 'http'}://${urlHost(config.http.host)}:${api.port}`;
    },
    get adminToken() {
      if (adminToken === undefined) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'the hub has not started');
      return adminToken;
    },
    async start(signal) {
      try {
        await lifecycle.start(signal);
      } catch (err) {
        await lifecycle.stop();
        throw err;
      }
    },
    stop: () => lifecycle.stop(),
  };

  const step = (name: string, start: (signal: AbortSignal) => Promise<void>, stop: () => Promise<void> = () => Promise.resolve()): Component => ({ name, start, stop });

  lifecycle.add(store);
  // Right after the store: seals pre-chain rows at start; stops just before the store, writing
  // the anonymous refusals folded so far.
  lifecycle.add(audit);
  lifecycle.add(
    step('admin-token', async () => {
      adminToken = await ensureAdminToken(store, config.dataDir, log.child({ component: 'auth' }), now);
    }),
  );
  // The embedded broker starts empty: whatever the database says, nobody is connected.
  // (On an external broker the devices' retained status brings presence back.)
  lifecycle.add(step('presence-reset', () => store.markAllOffline(now())));
  // Mosquitto dynsec (issue #15): the hub's own user and the principals, before the bus connects.
  if (provisioning) lifecycle.add(provisioning);
  // Before ingest: drift records a crash left stored but unmerged are merged again (those of
  // windows that may still be untested). Stops after ingest: merges finish before the store closes.
  lifecycle.add(
    step(
      'drift-merge',
      async () => void (await driftAggregator.recover(now() - 2 * config.drift.windowMs - config.drift.graceMs)),
      () => driftAggregator.idle(),
    ),
  );
  lifecycle.add(ingest);
  // Subscribes on the bus before the broker listens, like ingest.
  lifecycle.add(mqttFeedback);
  lifecycle.add(broker);
  lifecycle.add(models);
  // After the broker (it publishes commands), before the API (which creates rollouts).
  lifecycle.add(rollouts);
  lifecycle.add(kpis);
  // After the broker: alerts are published on it, sample commands too.
  lifecycle.add(alertDelivery);
  lifecycle.add(step('alert-metrics', () => alerts.refreshMetrics()));
  lifecycle.add(drift);
  lifecycle.add(brokerAuth);
  lifecycle.add(api);
  lifecycle.add(
    step(
      'hub-info',
      async () => {
        const tmp = `${infoFile}.tmp`;
        await writeFile(tmp, `${JSON.stringify({ mqttUrl: hub.mqttUrl, httpUrl: hub.httpUrl, pid: process.pid }, null, 2)}\n`, { mode: 0o600 });
        await rename(tmp, infoFile);
        log.info({ mqttUrl: hub.mqttUrl, httpUrl: hub.httpUrl, adminTokenFile: join(config.dataDir, 'admin.token') }, 'hub ready');
      },
      () => rm(infoFile, { force: true }),
    ),
  );
  return Promise.resolve(hub);
}

const USAGE = `Usage: edgefleet hub [options]

Runs the hub: embedded MQTT broker, device registry, telemetry ingest and HTTP API.

Options:
  --data <dir>         data directory (default .data/hub); holds hub.db, admin.token, hub.json,
                       keys/ (release signing keys) and artifacts/ (model files)
  --config <file>      YAML or JSON config file
  --mqtt-port <n>      MQTT port (default 1883; 0 = any free port)
  --http-port <n>      HTTP API port (default 8080; 0 = any free port)
  --host <addr>        bind address for MQTT and HTTP (default 0.0.0.0)
  --log-level <level>  ${LOG_LEVELS.join(', ')}
  -h, --help           show this help

Environment: EDGEFLEET_HUB__<PATH>=value overrides a config setting,
e.g. EDGEFLEET_HUB__MQTT__PORT=1884, EDGEFLEET_HUB__STORE__SYNCHRONOUS=FULL.
`;

/** `edgefleet hub ...`: parses flags, loads the config and runs the hub until a signal. */
export async function runHub(argv: string[]): Promise<void> {
  let config: HubConfig;
  try {
    const { values } = parseArgs({
      args: argv,
      options: {
        data: { type: 'string' },
        config: { type: 'string' },
        'mqtt-port': { type: 'string' },
        'http-port': { type: 'string' },
        host: { type: 'string' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
    if (values.help) {
      process.stdout.write(USAGE);
      return;
    }
    const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : /^\d+$/.test(v) ? Number(v) : NaN);
    const overrides: Record<string, unknown> = {
      dataDir: values.data,
      mqtt: { port: num(values['mqtt-port']), host: values.host },
      http: { port: num(values['http-port']), host: values.host },
      log: { level: values['log-level'] },
    };
    config = loadHubConfig({ file: values.config, overrides, env: process.env });
  } catch (err) {
    const usage = !(err instanceof EdgefleetError);
    process.stderr.write(`edgefleet hub: ${(err as Error).message}\n${usage ? `\n${USAGE}` : ''}`);
    process.exitCode = 2;
    return;
  }
  const log = createLogger({ name: 'hub', level: config.log.level });
  const registry = new Registry();
  collectProcessMetrics(registry, 'hub');
  await runService({
    name: 'hub',
    log,
    start: async (signal) => {
      const hub = await createHub(config, { log, registry });
      await hub.start(signal);
      return hub;
    },
  });
}
