/**
 * Agent configuration: one zod schema with typed defaults. Loaded from YAML or JSON, with
 * environment overrides `EDGEFLEET_AGENT__<PATH>` (e.g. EDGEFLEET_AGENT__HUB__TOKEN) derived
 * from the schema, every problem reported at once, then frozen (shared/config.ts).
 */
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { BackoffSchema } from '../shared/backoff.ts';
import { DEFAULT_CLOCK_SKEW_MS } from '../shared/command-signing.ts';
import { loadConfig } from '../shared/config.ts';
import { ProbationThresholdsSchema } from './health/probation.ts';
import { DriftConfigSchema } from './drift/drift-monitor.ts';
import { LOG_LEVELS } from '../shared/log.ts';
import { DeviceIdSchema, MAX_PAYLOAD_BYTES, NameSchema } from '../shared/protocol.ts';
import { ClientTlsSchema } from '../shared/tls.ts';

export const ENV_PREFIX = 'EDGEFLEET_AGENT';

const MqttInputSchema = z.object({
  type: z.literal('mqtt'),
  /**
   * `json`: a reading per message (tabular models). `image`: the payload is an encoded image
   * (JPEG, PNG, ...) and the correlation id is the topic level after the input topic
   * (`.../in/<pipeline>/<id>`), or generated. Default: from the model's preprocessing kind.
   */
  format: z.enum(['json', 'image']).optional(),
  /** Topic filter; default `edgefleet/v1/<deviceId>/in/<pipeline>`. Must lie in the device's subtree. */
  topic: z.string().min(1).max(256).optional(),
  /** Default 64 KiB for JSON, 1 MiB (the hub broker's payload cap) for images. */
  maxPayloadBytes: z.number().int().positive().max(16 * 1024 * 1024).optional(),
  /**
   * Read this input from another broker (e.g. a local Mosquitto the sensors publish to) instead
   * of the hub connection, so inputs keep flowing while the hub is unreachable.
   */
  broker: z
    .object({
      url: z.string().regex(/^mqtts?:\/\/[^/]+$/, 'broker.url: mqtt://host:port'),
      /** Default `<deviceId>-inputs`. Unique per broker: two clients with one id kick each other off. */
      clientId: z.string().min(1).max(128).optional(),
      username: z.string().optional(),
      password: z.string().optional(),
      /** false (default): a persistent session, so the broker keeps readings while the agent restarts. */
      cleanSession: z.boolean().default(false),
      qos: z.union([z.literal(0), z.literal(1)]).default(1),
    })
    .optional(),
});

/**
 * A folder a camera drops files into. Each complete file is claimed (renamed into
 * `<path>/.processing/`), processed exactly once, also across restarts, then moved to `done/` or
 * `failed/` (with a `.error.txt` beside it). Files wait on disk while the agent is busy.
 */
const FolderInputSchema = z.object({
  type: z.literal('folder'),
  /** Relative paths resolve against the config file. */
  path: z.string().min(1),
  /** Glob on the file name (`*`, `?`, `{a,b}`), case-insensitive. Dot files are never taken. */
  pattern: z.string().min(1).max(256).default('*.{jpg,jpeg,png}'),
  /** A file is taken once its size and mtime have not changed for this long. */
  stableMs: z.number().int().min(0).max(60_000).default(500),
  /** Periodic scan, the fallback for fs.watch events that never come (network shares, overflow). */
  scanMs: z.number().int().min(50).max(600_000).default(2000),
  /** Files processed at the same time. */
  concurrency: z.number().int().min(1).max(64).default(2),
  /** Larger files are moved to failed/ unread. */
  maxFileBytes: z.number().int().positive().max(256 * 1024 * 1024).default(32 * 1024 * 1024),
});

export const PipelineSchema = z.object({
  name: NameSchema,
  /** Name of a model listed under `models`. */
  model: NameSchema,
  /**
   * Further models run after `model`, in order (manifest v2 chains: feature extractor →
   * embedding → head): each takes `upstream` inputs from the one before; the last one's task
   * makes the result. Each is its own release and can be rolled out on its own.
   */
  chain: z.array(NameSchema).max(8).default([]),
  /** Streams (sensors) a windowed or stateful model keeps windows and state for. */
  maxStreams: z.number().int().min(1).max(100_000).default(1024),
  input: z.discriminatedUnion('type', [MqttInputSchema, FolderInputSchema]),
  /** Labels with scores reported per result (`topK`). */
  topK: z.number().int().min(1).max(100).default(3),
  /**
   * Per-label thresholds. The result's `decision` is the best-scoring label whose score is above
   * its threshold (labels without one always qualify), e.g. `{ defective: 0.7 }` flags a part
   * defective only above 0.7; null when no label qualifies.
   */
  thresholds: z.record(z.string().min(1).max(64), z.number().min(0).max(1)).optional(),
  /**
   * Stream inputs (MQTT): items waiting for inference and at most `maxInFlight` in inference.
   * When the queue is full the OLDEST waiting item is dropped and counted
   * (`edgefleet_agent_input_dropped_total{reason="overload"}`); an OVERLOADED engine makes the
   * queue pause and retry, so a persistent overload ends in the same drop-oldest policy.
   * Defaults: `queueMax` = runtime.queueMax, `maxInFlight` = 2 × runtime.maxBatch × workers
   * (enough to keep every worker's batches full).
   */
  stream: z
    .object({
      queueMax: z.number().int().min(1).max(1_000_000).optional(),
      maxInFlight: z.number().int().min(1).max(4096).optional(),
      /** Payload bytes waiting in the queue (images are large); beyond it the oldest are dropped too. */
      maxBytes: z.number().int().min(1024).max(4 * 1024 * 1024 * 1024).default(64 * 1024 * 1024),
      /**
       * Ids of the last this-many MQTT readings (their own `id`, or the topic's for images) are
       * remembered: a QoS 1 redelivery of one is dropped and counted
       * (`edgefleet_agent_input_dropped_total{reason="duplicate"}`). 0 turns it off.
       */
      dedupeIds: z.number().int().min(0).max(1_000_000).default(10_000),
    })
    .prefault({}),
  output: z
    .object({
      /** Topic for results; default `edgefleet/v1/<deviceId>/out/<pipeline>`. */
      topic: z.string().min(1).max(256).optional(),
      qos: z.union([z.literal(0), z.literal(1)]).default(0),
      /** Also keep every result in the outbox as telemetry (stream `inference`). */
      telemetry: z.boolean().default(true),
    })
    .prefault({}),
});
export type PipelineConfig = z.infer<typeof PipelineSchema>;

export const AgentConfigSchema = z
  .object({
    deviceId: DeviceIdSchema,
    /** Where the outbox and state live. Relative paths resolve against the config file. */
    dataDir: z.string().min(1),
    hub: z.object({
      url: z.string().regex(/^mqtts?:\/\/[^/]+$/, 'hub.url: mqtt://host:port or mqtts://host:port'),
      /**
       * The device's credential. Optional when the agent enrolls itself: then it comes from
       * `<dataDir>/credentials.json`, written at the first start by enrollment (agent/enroll.ts).
       */
      token: z.string().min(8).optional(),
      /**
       * Zero-touch enrollment: a group's enrollment token (`enr_...`, from `edgefleet enroll-token
       * create`), inline or in a file (relative to the config file). Used once, when no token is
       * configured and no credentials.json exists yet; needs hub.httpUrl.
       */
      enrollment: z
        .object({ token: z.string().min(8).max(256).optional(), tokenFile: z.string().min(1).optional() })
        .refine((e) => (e.token === undefined) !== (e.tokenFile === undefined), 'hub.enrollment: exactly one of token and tokenFile')
        .optional(),
      keepaliveSeconds: z.number().int().min(5).max(3600).default(30),
      backoff: BackoffSchema.prefault({}),
      batchSize: z.number().int().min(1).max(2000).default(500),
      maxInflightBatches: z.number().int().min(1).max(64).default(4),
      ackTimeoutMs: z.number().int().min(100).default(10_000),
      /**
       * Largest MQTT packet (PUBLISH as encoded: header, topic and payload) sent on the hub link.
       * The hub disconnects a client whose payload exceeds its `limits.maxPayloadBytes`, so set
       * this to the hub's value (default: the hub's default, 1 MiB); any packet within it has a
       * smaller payload. A live result over it is not sent (counted in
       * edgefleet_agent_publish_oversize_total) and telemetry batches are split to fit (issue #12).
       */
      maxPacketBytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(MAX_PAYLOAD_BYTES),
      /**
       * http(s)://host:port of the hub's HTTP API, where model artifacts are downloaded from.
       * Required for model installs: an install command without it fails with BAD_CONFIG.
       */
      httpUrl: z.string().regex(/^https?:\/\/[^/]+$/, 'hub.httpUrl: http(s)://host:port').optional(),
      /** CA, client certificate and key for mqtts:// and https:// (README "TLS"); relative to the config file. */
      tls: ClientTlsSchema.prefault({}),
    }),
    /** Who this device is, for releases that target a group or labels (issue #3). */
    identity: z
      .object({
        group: z.string().min(1).max(64).optional(),
        labels: z.record(z.string(), z.string()).optional(),
      })
      .prefault({}),
    /** Model installs rolled out by the hub (agent/updater, issue #3). */
    updates: z
      .object({
        enabled: z.boolean().default(true),
        /** Installed versions, state.json, downloads; default `<dataDir>/models`. Relative to the config file. */
        dir: z.string().min(1).optional(),
        /**
         * Public key PEM files (ed25519) whose signatures are trusted, relative to the config file.
         * Empty: every install is refused with a clear error.
         */
        trustedKeys: z.array(z.string().min(1)).max(64).default([]),
        /** Probation after each activation unless the command says otherwise (ms; 0 = none). */
        probationMs: z.number().int().min(0).max(7 * 24 * 3600_000).default(600_000),
        download: z
          .object({
            /** No byte for this long: abort, back off and resume with a Range request. */
            stallTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
            maxBytes: z.number().int().positive().default(512 * 1024 * 1024),
            attempts: z.number().int().min(1).max(100).default(5),
            backoff: BackoffSchema.prefault({ initialMs: 500, maxMs: 10_000 }),
          })
          .prefault({}),
        /** The memory-capped child process that loads a candidate before the workers do. */
        validator: z
          .object({
            timeoutMs: z.number().int().min(1000).max(3_600_000).default(60_000),
            maxRssBytes: z.number().int().min(64 * 1024 * 1024).default(1024 * 1024 * 1024),
            addressSpaceBudgetBytes: z.number().int().min(64 * 1024 * 1024).default(2 * 1024 * 1024 * 1024),
          })
          .prefault({}),
        /** Version directories kept on disk per model (active and previous always count). */
        keepVersions: z.number().int().min(2).max(16).default(2),
      })
      .prefault({}),
    /**
     * Hub commands (issue #14): model.install and model.rollback run only when signed for this
     * device by a key in updates.trustedKeys, within their window, once (agent/link/command-guard.ts).
     */
    commands: z
      .object({
        /** Largest difference between the hub's clock and this device's tolerated in a command's validity window. */
        clockSkewMs: z.number().int().min(0).max(3_600_000).default(DEFAULT_CLOCK_SKEW_MS),
        /** INSECURE, for a hub older than issue #14: unsigned state-changing commands run (signed ones are still verified). */
        allowUnsigned: z.boolean().default(false),
      })
      .prefault({}),
    http: z
      .object({
        host: z.string().default('127.0.0.1'),
        /** 0 = any free port (the bound port is logged as `http listening`). */
        port: z.number().int().min(0).max(65535).default(9100),
        /** `POST /v1/infer/<pipeline>` body caps: larger bodies get 413 without being buffered. */
        maxJsonBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(256 * 1024),
        maxImageBytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(8 * 1024 * 1024),
        /** Inference requests handled at once; more get 429 (each holds a body and a decoded image). */
        maxConcurrent: z.number().int().min(1).max(10_000).default(16),
        /** A request whose body has not arrived within this time gets 408. */
        requestTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
      })
      .prefault({}),
    runtime: z
      .object({
        workers: z.number().int().min(1).max(64).default(1),
        /** ORT intra-op threads per worker. Set explicitly: on 2 cores workers and ORT's pool fight. */
        intraOpThreads: z.number().int().min(1).max(64).default(1),
        /**
         * Largest batch per ORT run. 64, not 16: under load the main thread's cost per request
         * falls with the batch (fewer messages, splits and metric updates per sample), and a lone
         * request still runs alone after at most maxWaitMs (BENCHMARKS.md "npm run bench", #5).
         */
        maxBatch: z.number().int().min(1).max(1024).default(64),
        maxWaitMs: z.number().min(0).max(1000).default(2),
        queueMax: z.number().int().min(1).max(1_000_000).default(1000),
        /**
         * Memory watchdog (issue #14): agent RSS past which a running model is blamed, the process
         * killed (systemd restarts it) and the model rolled back. Default: half the device's memory.
         */
        memory: z
          .object({ maxRssMiB: z.number().int().min(64).optional(), sampleMs: z.number().int().min(1).max(1000).default(10) })
          .prefault({}),
      })
      .prefault({}),
    outbox: z
      .object({
        /**
         * NORMAL (default): WAL survives a process crash or kill -9 with no loss; power loss may
         * lose the last commits. FULL: survives power loss at the cost of an fsync per commit.
         */
        synchronous: z.enum(['NORMAL', 'FULL']).default('NORMAL'),
        maxPending: z.number().int().min(100).default(1_000_000),
        flushMs: z.number().min(0).max(1000).default(5),
      })
      .prefault({}),
    models: z
      .array(z.object({ manifest: z.string().min(1) }))
      .min(1)
      .max(64),
    pipelines: z.array(PipelineSchema).min(1).max(64),
    log: z.object({ level: z.enum(LOG_LEVELS).default('info') }).prefault({}),
    /** Health windows of the served model versions (stream `health`) and local probation (issue #3). */
    health: z
      .object({
        /** UTC-aligned window length; one record per model version with activity per window. */
        windowMs: z.number().int().min(100).max(3_600_000).default(60_000),
        /** Closed windows kept in memory per version: the probation baseline of the version replaced. */
        keepWindows: z.number().int().min(1).max(1440).default(30),
        /** How often a version on probation is compared with the one it replaced. */
        checkMs: z.number().int().min(50).max(600_000).default(5_000),
        /** Breach thresholds (shared/health.ts GateThresholds, with probation defaults). */
        probation: ProbationThresholdsSchema.prefault({}),
      })
      .prefault({}),
    /**
     * Drift summaries per model version and window (stream `drift`), the on-device Page-Hinkley
     * warning (stream `events`) and the ring of recent inputs `drift.sample` uploads (issue #4).
     */
    drift: DriftConfigSchema.prefault({}),
  })
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    for (const [i, p] of c.pipelines.entries()) {
      if (names.has(p.name)) ctx.addIssue({ code: 'custom', path: ['pipelines', i, 'name'], message: `duplicate pipeline ${p.name}` });
      names.add(p.name);
    }
    const folders = new Set<string>();
    for (const [i, p] of c.pipelines.entries()) {
      if (p.input.type !== 'folder') continue;
      if (folders.has(p.input.path)) ctx.addIssue({ code: 'custom', path: ['pipelines', i, 'input', 'path'], message: `two pipelines watch ${p.input.path}` });
      folders.add(p.input.path);
    }
    if (c.hub.enrollment && !c.hub.httpUrl) ctx.addIssue({ code: 'custom', path: ['hub', 'httpUrl'], message: 'hub.enrollment needs hub.httpUrl (enrollment is an HTTPS request)' });
  });
export type AgentConfig = z.infer<typeof AgentConfigSchema>;

/** Loads and validates the agent config; relative paths become relative to the config file. */
export function loadAgentConfig(opts: { file?: string; env?: NodeJS.ProcessEnv; overrides?: Record<string, unknown> }): AgentConfig {
  const cfg = loadConfig(AgentConfigSchema, { ...opts, envPrefix: ENV_PREFIX });
  const base = opts.file ? dirname(resolve(opts.file)) : process.cwd();
  return Object.freeze({
    ...cfg,
    dataDir: resolve(base, cfg.dataDir),
    hub: Object.freeze({
      ...cfg.hub,
      ...(cfg.hub.enrollment?.tokenFile ? { enrollment: Object.freeze({ tokenFile: resolve(base, cfg.hub.enrollment.tokenFile) }) } : {}),
      tls: Object.freeze(Object.fromEntries(Object.entries(cfg.hub.tls).map(([k, v]) => [k, k === 'servername' ? v : resolve(base, v)]))) }),
    updates: Object.freeze({
      ...cfg.updates,
      dir: resolve(base, cfg.updates.dir ?? join(cfg.dataDir, 'models')),
      trustedKeys: Object.freeze(cfg.updates.trustedKeys.map((k) => resolve(base, k))),
    }),
    models: Object.freeze(cfg.models.map((m) => Object.freeze({ manifest: resolve(base, m.manifest) }))),
    pipelines: Object.freeze(
      cfg.pipelines.map((p) => (p.input.type === 'folder' ? Object.freeze({ ...p, input: Object.freeze({ ...p.input, path: resolve(base, p.input.path) }) }) : p)),
    ),
  }) as AgentConfig;
}
