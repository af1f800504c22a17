/**
 * The agent's composition root: builds every component from the config, passes dependencies
 * in, and runs them as one lifecycle (start in order, stop in reverse). `runAgent` is the
 * process entry (`edgefleet agent --config <file>`); `createAgent` is what tests embed.
 */
import { chainProblem, releaseFitProblem } from './models/pipeline-fit.ts';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Registry } from 'prom-client';
import { EdgefleetError, ErrorCode } from '../shared/errors.ts';
import { collectProcessMetrics } from '../shared/metrics.ts';
import { Lifecycle, type Component } from '../shared/lifecycle.ts';
import { createLogger, type Logger } from '../shared/log.ts';
import type { ModelRef } from '../shared/protocol.ts';
import { runService } from '../shared/service.ts';
import { clientTlsOptions, hasClientTls, tlsFetch } from '../shared/tls.ts';
import { INSTALL_COMMAND, ROLLBACK_COMMAND } from '../shared/updates.ts';
import { loadAgentConfig, type AgentConfig, type PipelineConfig } from './config.ts';
import { ensureCredentials } from './enroll.ts';
import { DRIFT_SAMPLE_COMMAND, DriftMonitor } from './drift/drift-monitor.ts';
import { HealthMonitor } from './health/health-monitor.ts';
import { Probation } from './health/probation.ts';
import { AgentHttpServer } from './http/server.ts';
import { COMMAND_REPLAY_FILE, CommandGuard } from './link/command-guard.ts';
import { HubLink } from './link/hub-link.ts';
import { createMemoryKillCounter, createPipelineMetrics } from './metrics.ts';
import { MemoryBreachRecovery, writeMemoryBreachMarker } from './models/memory-breach.ts';
import { ModelSet } from './models/model-set.ts';
import { Outbox } from './outbox/outbox.ts';
import { Pipeline, type InputBus } from './pipeline.ts';
import { FolderInput, settleFolderJournal } from './inputs/folder-input.ts';
import { FolderJournal } from './inputs/folder-journal.ts';
import { HttpInferHandler } from './inputs/http-infer.ts';
import { MqttBrokerInput } from './inputs/mqtt-broker-input.ts';
import { securePrivateTree } from '../shared/private-files.ts';
import { MqttInput } from './inputs/mqtt-input.ts';
import { INPUT_MARKS_FILE, RetainedReplayGuard } from './inputs/retained-guard.ts';
import { configureSharp } from './preprocess/image.ts';
import { ModelUpdater } from './updater/updater.ts';
import { loadTrustedKeys } from './updater/verify.ts';
import { WorkerPoolEngine } from './runtime/pool.ts';

import { EDGEFLEET_VERSION } from '../shared/version.ts';

export const AGENT_VERSION = EDGEFLEET_VERSION;

export interface Agent {
  readonly config: AgentConfig;
  readonly registry: Registry;
  readonly outbox: Outbox;
  readonly link: HubLink;
  readonly pipelines: readonly Pipeline[];
  /** Installs and rolls back model releases (issue #3); undefined when `updates.enabled` is false. */
  readonly updater: ModelUpdater | undefined;
  readonly models: ModelSet;
  /** Health windows of the served versions; local probation after each swap. */
  readonly health: HealthMonitor;
  readonly probation: Probation;
  /** Drift summaries, on-device warnings and the input sample ring (issue #4). */
  readonly drift: DriftMonitor;
  /** Input adapters (MQTT, folder), built when the pipelines start. */
  readonly inputs: readonly Component[];
  readonly httpPort: number;
  start(signal?: AbortSignal): Promise<void>;
  stop(): Promise<Error[]>;
}

export function createAgent(config: AgentConfig, deps: { log: Logger; registry?: Registry }): Agent {
  const log = deps.log;
  // Every agent series carries its device (deploy/prometheus.yml, the dashboard's $device): a
  // registry made here gets the label like the service's own (runAgentService below).
  const registry = deps.registry ?? new Registry();
  if (!deps.registry) registry.setDefaultLabels({ device: config.deviceId });
  // State is private (issue #14): the data dir and everything in it 0700/0600, whatever the umask.
  securePrivateTree(config.dataDir, log);
  // Process-wide and idempotent: no libvips cache, one thread per image, no document loaders.
  configureSharp();
  const lifecycle = new Lifecycle(log);
  // hub.tls (issue #6), read once here (BAD_CONFIG when unreadable): mqtts, artifact downloads
  // and sample uploads over https all use it.
  const hubTls = hasClientTls(config.hub.tls) ? clientTlsOptions(config.hub.tls, 'hub.tls') : undefined;
  const hubFetch = hubTls ? tlsFetch(hubTls) : undefined;
  // Set in the config or by enrollment before this (agent/enroll.ts ensureCredentials).
  const hubToken = config.hub.token;
  if (!hubToken) throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'no hub credential: set hub.token or enroll first (hub.enrollment)');

  const outbox = lifecycle.add(
    new Outbox({
      path: join(config.dataDir, 'outbox.db'),
      synchronous: config.outbox.synchronous,
      maxPending: config.outbox.maxPending,
      flushMs: config.outbox.flushMs,
      log: log.child({ component: 'outbox' }),
      registry,
    }),
  );
  const memoryKills = createMemoryKillCounter(registry);
  const engine = lifecycle.add(
    new WorkerPoolEngine({
      workers: config.runtime.workers,
      intraOpThreads: config.runtime.intraOpThreads,
      maxBatch: config.runtime.maxBatch,
      maxWaitMs: config.runtime.maxWaitMs,
      queueMax: config.runtime.queueMax,
      memoryWatch: {
        maxRssBytes: (config.runtime.memory.maxRssMiB ?? Math.floor(totalmem() / 2 ** 21)) * 2 ** 20,
        sampleMs: config.runtime.memory.sampleMs,
        rss: () => process.memoryUsage.rss(),
        kills: memoryKills,
        // A run inside ORT cannot be stopped, and exit() waits until it has allocated everything
        // (issue #14, checked here): record who ran, then SIGKILL; systemd restarts the agent and
        // MemoryBreachRecovery rolls the version back. The outbox (WAL) survives a kill -9.
        onExceeded: (b) => {
          try {
            writeMemoryBreachMarker(config.dataDir, { ...b, ts: Date.now() });
          } catch (err) {
            log.error({ err }, 'cannot write the memory breach marker');
          }
          log.fatal({ models: b.models, rssBytes: b.rssBytes, maxRssBytes: b.maxRssBytes }, 'memory budget exceeded by a model run: killing the agent');
          process.kill(process.pid, 'SIGKILL');
        },
      },
      log: log.child({ component: 'runtime' }),
      registry,
    }),
  );
  // Health after the outbox (its windows go there) and before the pipelines (which report to
  // it), so stop flushes the last partial window after the pipelines drained.
  const health = lifecycle.add(
    new HealthMonitor({
      windowMs: config.health.windowMs,
      keepWindows: config.health.keepWindows,
      sink: outbox,
      log: log.child({ component: 'health' }),
      // Process CPU for the hub's cost per 1,000 inferences (issue #4); process.* stays here.
      cpuTimeMs: () => {
        const u = process.cpuUsage();
        return (u.user + u.system) / 1000;
      },
    }),
  );
  const probation = lifecycle.add(
    new Probation({ health, thresholds: config.health.probation, checkMs: config.health.checkMs, log: log.child({ component: 'probation' }) }),
  );
  // Like health: after the outbox, before the pipelines, so stop flushes the partial windows last.
  const drift = lifecycle.add(
    new DriftMonitor({
      deviceId: config.deviceId,
      config: config.drift,
      sink: outbox,
      instance: () => String(outbox.epoch),
      upload: { hubHttpUrl: config.hub.httpUrl, deviceId: config.deviceId, token: hubToken, fetch: hubFetch },
      log: log.child({ component: 'drift' }),
      registry,
    }),
  );
  // The updater starts before the model set and chooses the installed version each model name
  // serves (agent/updater/updater.ts startupManifests); without updates, the config's files.
  const configManifests = config.models.map((m) => m.manifest);
  const models: ModelSet = new ModelSet({ manifests: (): readonly string[] => updater?.startupManifests() ?? configManifests, engine, log: log.child({ component: 'models' }) });
  // One trust list for releases and for hub commands (issue #14): the hub signs both with its key.
  const trustedKeys = loadTrustedKeys(config.updates.trustedKeys);
  const updater = config.updates.enabled
    ? lifecycle.add(
        new ModelUpdater({
          identity: { deviceId: config.deviceId, group: config.identity.group, labels: config.identity.labels },
          hubHttpUrl: config.hub.httpUrl,
          hubToken,
          fetch: hubFetch,
          dir: config.updates.dir ?? join(config.dataDir, 'models'),
          trustedKeys,
          probationMs: config.updates.probationMs,
          download: config.updates.download,
          validator: config.updates.validator,
          keepVersions: config.updates.keepVersions,
          configManifests,
          models,
          fits: (manifest, replacements) => releaseFitProblem(config.pipelines, manifest, (name) => models.byName(name)?.manifest, replacements),
          events: outbox,
          probation,
          onStateChange: () => link.republishHello(),
          log: log.child({ component: 'updater' }),
          registry,
        }),
      )
    : undefined;
  lifecycle.add(models);
  // After the model set, before inputs and the link: the next crafted input meets the old version.
  lifecycle.add(
    new MemoryBreachRecovery({
      dir: config.dataDir,
      rollback: updater ? (a): Promise<{ state: string }> => updater.rollback(a) : undefined,
      kills: memoryKills,
      log: log.child({ component: 'memory' }),
    }),
  );
  // The folder inputs' exactly-once journal starts, and what a crash left half-appended is
  // settled against the outbox, before the link can send (and the hub ack) the outbox's copy.
  const journal = config.pipelines.some((p) => p.input.type === 'folder')
    ? lifecycle.add(new FolderJournal({ path: join(config.dataDir, 'folder-inputs.db'), synchronous: config.outbox.synchronous }))
    : undefined;
  if (journal) {
    lifecycle.add<Component>({
      name: 'folder-journal-settle',
      start: () => {
        const r = settleFolderJournal(journal, outbox);
        if (r.kept + r.appended > 0) log.info(r, 'folder inputs: records of files claimed before a crash settled against the outbox');
        return Promise.resolve();
      },
      stop: () => Promise.resolve(),
    });
  }
  const link = lifecycle.add(
    new HubLink({
      deviceId: config.deviceId,
      url: config.hub.url,
      token: hubToken,
      tls: hubTls,
      keepaliveSeconds: config.hub.keepaliveSeconds,
      maxPacketBytes: config.hub.maxPacketBytes,
      backoff: config.hub.backoff,
      outbox,
      agentVersion: AGENT_VERSION,
      models: (): ModelRef[] => models.active().map((m) => ({ name: m.manifest.name, version: m.manifest.version })),
      modelState: updater ? () => updater.modelState() : undefined,
      batchSize: config.hub.batchSize,
      maxInflightBatches: config.hub.maxInflightBatches,
      ackTimeoutMs: config.hub.ackTimeoutMs,
      commandGuard: new CommandGuard({
        deviceId: config.deviceId,
        keys: trustedKeys,
        path: join(config.dataDir, COMMAND_REPLAY_FILE),
        skewMs: config.commands.clockSkewMs,
        allowUnsigned: config.commands.allowUnsigned,
        log: log.child({ component: 'commands' }),
        registry,
      }),
      log: log.child({ component: 'link' }),
      registry,
    }),
  );
  // Commands from the hub (idempotent by id, see HubLink). State-changing ones pass the
  // CommandGuard first (signed, in their window, once); shared/command-signing.ts classifies them.
  link.onCommand((cmd) => {
    switch (cmd.name) {
      case 'ping':
        return Promise.resolve({ pong: Date.now(), models: models.active().map((m) => m.key), outboxPending: outbox.pendingCount() });
      case INSTALL_COMMAND:
      case ROLLBACK_COMMAND:
        if (!updater) return Promise.reject(new EdgefleetError(ErrorCode.UNAVAILABLE, 'model updates are disabled on this device (updates.enabled: false)'));
        return cmd.name === INSTALL_COMMAND ? updater.install(cmd.args) : updater.rollback(cmd.args);
      case DRIFT_SAMPLE_COMMAND:
        return drift.uploadSample(cmd.args);
      default:
        return Promise.reject(new EdgefleetError(ErrorCode.NOT_FOUND, `unknown command ${cmd.name}`));
    }
  });
  // Inputs read from other brokers than the hub's: one connection per broker and client id,
  // shared by the pipelines that name it; every other MQTT input rides on the hub link.
  const brokerInputs = new Map<string, MqttBrokerInput>();
  const busByPipeline = new Map<string, InputBus>();
  for (const p of config.pipelines) {
    const b = p.input.type === 'mqtt' ? p.input.broker : undefined;
    if (!b) continue;
    const clientId = b.clientId ?? `${config.deviceId}-inputs`;
    const key = `${b.url} ${clientId}`;
    let input = brokerInputs.get(key);
    if (!input) {
      input = lifecycle.add(
        new MqttBrokerInput({
          url: b.url,
          clientId,
          username: b.username,
          password: b.password,
          cleanSession: b.cleanSession,
          qos: b.qos,
          backoff: config.hub.backoff,
          log: log.child({ component: 'input-broker' }),
        }),
      );
      brokerInputs.set(key, input);
    }
    busByPipeline.set(p.name, input);
  }
  const busFor = (p: PipelineConfig): InputBus => busByPipeline.get(p.name) ?? link;
  const pipelineMetrics = createPipelineMetrics(registry);
  // Retained readings already inferred are not inferred again at a restart (issue #14).
  const retainedGuard = config.pipelines.some((p) => p.input.type === 'mqtt')
    ? lifecycle.add(new RetainedReplayGuard({ path: join(config.dataDir, INPUT_MARKS_FILE), log: log.child({ component: 'input-marks' }) }))
    : undefined;
  const pipelines: Pipeline[] = [];
  // Pipelines need their model, known only after ModelSet started: a deferred component.
  const pipelineGroup: Component = {
    name: 'pipelines',
    start: async (signal) => {
      for (const p of config.pipelines) {
        if (!models.byName(p.model)) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `pipeline ${p.name}: no model named ${p.model}`);
        const stages = [p.model, ...p.chain].map((n) => {
          const m = models.byName(n);
          if (!m) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `pipeline ${p.name}: no model named ${n}`);
          return m.manifest;
        });
        const unfit = chainProblem(stages);
        if (unfit) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `pipeline ${p.name}: the chain ${[p.model, ...p.chain].join(' → ')} cannot run: ${unfit}`);
        const pipeline = new Pipeline({
          deviceId: config.deviceId,
          config: p,
          model: () => models.byName(p.model),
          acquire: () => models.acquire(p.model),
          acquireStage: (name) => models.acquire(name),
          health,
          drift,
          engine,
          publisher: link,
          sink: outbox,
          metrics: pipelineMetrics,
          log: log.child({ component: 'pipeline', pipeline: p.name }),
          streamDefaults: { queueMax: config.runtime.queueMax, maxInFlight: 2 * config.runtime.maxBatch * config.runtime.workers },
        });
        await pipeline.start();
        pipelines.push(pipeline);
        if (signal.aborted) return;
      }
    },
    stop: async () => {
      await Promise.all(pipelines.map((p) => p.stop()));
    },
  };
  lifecycle.add(pipelineGroup);
  // Inputs start after their pipelines and stop before them, so nothing feeds a stopped pipeline.
  const inputs: Component[] = [];
  lifecycle.add<Component>({
    name: 'inputs',
    start: async (signal) => {
      for (const pipeline of pipelines) {
        const p = config.pipelines.find((c) => c.name === pipeline.pipelineName)!;
        const input: Component =
          p.input.type === 'folder'
            ? new FolderInput({
                pipeline,
                path: p.input.path,
                pattern: p.input.pattern,
                stableMs: p.input.stableMs,
                scanMs: p.input.scanMs,
                concurrency: p.input.concurrency,
                maxFileBytes: p.input.maxFileBytes,
                journal: journal!,
                outbox,
                metrics: pipelineMetrics,
                log: log.child({ component: 'input-folder', pipeline: p.name }),
              })
            : new MqttInput({
                deviceId: config.deviceId,
                pipeline,
                bus: busFor(p),
                topic: p.input.topic,
                format: p.input.format,
                guard: retainedGuard,
                onReplay: () => pipelineMetrics.inputDropped.inc({ pipeline: p.name, reason: 'retained_replay' }),
              });
        await input.start(signal);
        inputs.push(input);
        if (signal.aborted) return;
      }
    },
    stop: async () => {
      const failures: unknown[] = [];
      for (const i of [...inputs].reverse()) await i.stop().catch((err: unknown) => failures.push(err));
      inputs.length = 0;
      if (failures.length) throw failures[0];
    },
  });
  const http = lifecycle.add(
    new AgentHttpServer({
      host: config.http.host,
      port: config.http.port,
      registry,
      log: log.child({ component: 'http' }),
      requestTimeoutMs: config.http.requestTimeoutMs,
      infer: new HttpInferHandler({
        pipelines: () => pipelines,
        maxJsonBytes: config.http.maxJsonBytes,
        maxImageBytes: config.http.maxImageBytes,
        maxConcurrent: config.http.maxConcurrent,
        metrics: pipelineMetrics,
        log: log.child({ component: 'http-infer' }),
      }),
      health: () => ({
        ok: lifecycle.state === 'running',
        state: lifecycle.state,
        deviceId: config.deviceId,
        hubConnected: link.connected,
        models: models.active().map((m) => m.key),
        outboxPending: outbox.pendingCount(),
        runtime: engine.stats(),
      }),
    }),
  );

  return {
    config,
    registry,
    outbox,
    link,
    pipelines,
    updater,
    models,
    health,
    probation,
    drift,
    inputs,
    get httpPort() {
      return http.port;
    },
    start: (signal = new AbortController().signal) => lifecycle.start(signal),
    stop: () => lifecycle.stop(),
  };
}

const USAGE = `usage: edgefleet agent --config <file> [--log-level <level>]

Runs the edge agent: inputs → preprocessing → ONNX inference → results, with telemetry
buffered in SQLite and synced to the hub over MQTT. Environment overrides:
EDGEFLEET_AGENT__<PATH>=value, e.g. EDGEFLEET_AGENT__HUB__TOKEN=... or
EDGEFLEET_AGENT__HTTP__PORT=0.`;

/** Process entry for `edgefleet agent`. */
export async function runAgent(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string', short: 'c' }, 'log-level': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (!values.config) {
    process.stderr.write(`${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  let config: AgentConfig;
  try {
    config = loadAgentConfig({
      file: values.config,
      env: process.env,
      overrides: values['log-level'] ? { log: { level: values['log-level'] } } : undefined,
    });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  const log = createLogger({ name: 'agent', level: config.log.level, base: { deviceId: config.deviceId } });
  const registry = new Registry();
  registry.setDefaultLabels({ device: config.deviceId });
  collectProcessMetrics(registry, 'agent');
  await runService({
    name: 'agent',
    log,
    start: async (signal) => {
      const hubTls = hasClientTls(config.hub.tls) ? clientTlsOptions(config.hub.tls, 'hub.tls') : undefined;
      const ready = await ensureCredentials(config, { log: log.child({ component: 'enroll' }), signal, fetch: hubTls ? tlsFetch(hubTls) : undefined });
      const agent = createAgent(ready, { log, registry });
      try {
        await agent.start(signal);
      } catch (err) {
        await agent.stop();
        throw err;
      }
      return agent;
    },
  });
}
