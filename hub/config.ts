/**
 * Hub configuration: one zod schema with typed defaults. Loaded from YAML or JSON, with
 * environment overrides `EDGEFLEET_HUB__<PATH>` (e.g. EDGEFLEET_HUB__MQTT__PORT=1884) derived
 * from the schema, explicit overrides (CLI flags) last, every problem reported at once as one
 * BAD_CONFIG error, then frozen (shared/config.ts). Relative paths (dataDir, trusted key
 * files, TLS files) resolve against the config file's directory.
 */
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { deepFreeze, loadConfig } from '../shared/config.ts';
import { LOG_LEVELS } from '../shared/log.ts';
import { MAX_PAYLOAD_BYTES, NameSchema } from '../shared/protocol.ts';
import { ClientCertModeSchema } from '../shared/tls.ts';
import { AuditConfigSchema } from './auth/audit.ts';
import { BrokerAuthConfigSchema } from './auth/broker-auth-http.ts';
import { BrokerConfigSchema, resolveBrokerFiles } from './broker/broker-config.ts';
import { KpisConfigSchema } from './kpis/config.ts';
import { AlertsConfigSchema } from './alerts/config.ts';
import { DriftConfigSchema } from './drift/config.ts';
import { timezoneProblem, windowExpressionProblem } from './rollouts/windows.ts';

export const ENV_PREFIX = 'EDGEFLEET_HUB';

const port = z.number().int().min(0).max(65535);

export const HubConfigSchema = z.object({
  /** SQLite database, admin.token and hub.json live here. Relative paths resolve against the config file. */
  dataDir: z.string().min(1).default('.data/hub'),
  mqtt: z
    .object({
      host: z.string().min(1).default('0.0.0.0'),
      /** 0 = any free port (tests); the bound port is in hub.json and `Hub.mqttPort`. */
      port: port.default(1883),
    })
    .prefault({}),
  /** Embedded aedes (default) or an existing MQTT broker (issue #15; hub/broker/broker-config.ts, README). */
  broker: BrokerConfigSchema,
  http: z
    .object({
      host: z.string().min(1).default('0.0.0.0'),
      port: port.default(8080),
      /** Largest accepted request body. */
      maxBodyBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(1024 * 1024),
      /** Serve /metrics without a bearer token (for scrapers that cannot send one). */
      publicMetrics: z.boolean().default(false),
    })
    .prefault({}),
  /**
   * TLS for both listeners (issue #6; README "TLS"): with certFile and keyFile MQTT is mqtts
   * and the API is HTTPS. clientCerts asks clients for a certificate signed by caFile: 'optional'
   * lets clients without one in (a presented certificate must still verify), 'required' refuses
   * the handshake without one. A verified certificate's CN must equal the MQTT client id (and,
   * on the API, the device id of device credentials); the token is still required: the
   * certificate binds the identity, the token proves it, either alone is not enough.
   * Relative paths resolve against the config file.
   */
  tls: z
    .object({
      certFile: z.string().min(1).optional(),
      keyFile: z.string().min(1).optional(),
      caFile: z.string().min(1).optional(),
      clientCerts: ClientCertModeSchema.default('none'),
      /** The API's own mode, e.g. 'optional' when operators' browsers and CLIs have no certificate; default: clientCerts. */
      httpClientCerts: ClientCertModeSchema.optional(),
    })
    .superRefine((t, ctx) => {
      if (!!t.certFile !== !!t.keyFile) ctx.addIssue({ code: 'custom', path: [t.certFile ? 'keyFile' : 'certFile'], message: 'tls.certFile and tls.keyFile go together' });
      const asks = t.clientCerts !== 'none' || (t.httpClientCerts ?? 'none') !== 'none';
      if (asks && !t.caFile) ctx.addIssue({ code: 'custom', path: ['caFile'], message: 'client certificates need tls.caFile (the CA that signs them)' });
      if (asks && !t.certFile) ctx.addIssue({ code: 'custom', path: ['certFile'], message: 'client certificates need TLS: set tls.certFile and tls.keyFile' });
    })
    .prefault({}),
  store: z
    .object({
      /**
       * SQLite `synchronous` in WAL mode. FULL (default): an fsync per commit, i.e. per
       * telemetry batch of up to 2000 records, so an ack always means the batch survives a power
       * loss. NORMAL survives a crash or kill -9 but a power loss can roll back the last commits;
       * their acks were already sent and the agents deleted those records, so they would be
       * lost. An ack is a promise the agent acts on by deleting data: the default keeps it.
       * NORMAL is for hubs on protected power that need more ingest commits per second.
       */
      synchronous: z.enum(['NORMAL', 'FULL']).default('FULL'),
      /** How long a writer waits on a locked database before SQLITE_BUSY. */
      busyTimeoutMs: z.number().int().min(0).max(60_000).default(5000),
      /** WAL file size kept after a checkpoint (journal_size_limit). */
      walLimitBytes: z.number().int().min(1024 * 1024).default(64 * 1024 * 1024),
    })
    .prefault({}),
  limits: z
    .object({
      /** Largest MQTT payload accepted from any client; larger publishes are refused and counted. */
      maxPayloadBytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(MAX_PAYLOAD_BYTES),
      /** Deepest topic accepted (aedes clamps to 1..100). Protocol topics use at most 5 levels. */
      maxTopicDepth: z.number().int().min(5).max(100).default(8),
      /**
       * aedes disconnects a client whose socket stays unwritable this long. Short, because one
       * stalled reader delays delivery to everyone sharing the broker's concurrency slots.
       */
      drainTimeoutMs: z.number().int().min(100).max(120_000).default(5000),
      /** Longest topic (bytes) in a publish, will or subscription; protocol topics stay under 200. */
      maxTopicBytes: z.number().int().min(64).max(65_535).default(512),
      /**
       * QoS 2 publishes one connection may leave unreleased (no PUBREL yet). aedes keeps each in
       * memory until released; past this the connection is cut. The protocol itself uses QoS 1.
       */
      maxInflight: z.number().int().min(1).max(65_535).default(64),
      /**
       * What one principal may make the broker hold (issue #14; hub/broker/quotas.ts). Devices use
       * clean sessions and queue nothing; a persistent session (clean: false) keeps the first
       * queuedMessages / queuedBytes messages while offline and drops the rest (the hub's own get
       * a tenth more). Past the retained caps a message is delivered but not retained; past
       * subscriptions SUBACK 128. A session offline longer than sessionExpiryMs is dropped.
       */
      brokerQuotas: z
        .object({
          queuedMessages: z.number().int().min(10).max(1_000_000).default(1000),
          queuedBytes: z.number().int().min(64 * 1024).default(16 * 1024 * 1024),
          queuedBytesTotal: z.number().int().min(1024 * 1024).default(256 * 1024 * 1024),
          retainedMessages: z.number().int().min(1).max(1_000_000).default(100),
          retainedBytes: z.number().int().min(1024).default(4 * 1024 * 1024),
          subscriptions: z.number().int().min(4).max(100_000).default(100),
          sessionExpiryMs: z.number().int().min(1000).default(24 * 3_600_000),
        })
        .prefault({}),
      /**
       * New MQTT connections per second from one address (burst: two seconds' worth). A whole
       * fleet behind one NAT reconnecting after a hub restart must fit: raise it for large sites.
       */
      maxConnectsPerSecondPerIp: z.number().int().min(1).max(100_000).default(100),
      /**
       * Failed credential checks (MQTT CONNECT, API and device bearer tokens, enrollment) per
       * address per minute. Each costs a scrypt; past the budget further checks from that address
       * are refused at once until the minute ends (CONNACK 3, HTTP 429). Verified, cached API
       * tokens keep working.
       */
      maxAuthFailuresPerMinutePerIp: z.number().int().min(1).max(1_000_000).default(60),
      /**
       * Connection caps and deadlines for both listeners (issue #14; hub/net/conn-limits.ts). The
       * caps come from the descriptor limit read at start (soft RLIMIT_NOFILE, which Node raises
       * to the hard limit): less reservedFds, HTTP gets httpShare (each HTTP connection counted
       * twice: it may hold an artifact file too), MQTT the rest. 10,000 devices need a limit of
       * about 13,000 (systemd: LimitNOFILE=).
       */
      connections: z
        .object({
          /** Used where /proc/self/limits cannot be read (not Linux). */
          fallbackFdLimit: z.number().int().min(128).max(1_048_576).default(1024),
          /** Descriptors kept back for SQLite (db, WAL, shm), artifact and sample files, model probe pipes, logs. */
          reservedFds: z.number().int().min(16).max(1_048_576).default(64),
          /** Share of the descriptors left that HTTP connections may hold; MQTT (devices) keeps the rest. */
          httpShare: z.number().min(0.02).max(0.8).default(0.2),
          /** Share of MQTT's connections that may be unauthenticated (no CONNECT yet, or authenticating). */
          mqttPendingShare: z.number().min(0.01).max(1).default(0.25),
          /** HTTP connections from one address; past it new ones from that address are refused at accept. */
          httpMaxPerAddress: z.number().int().min(1).default(256),
          /** Unauthenticated MQTT connections from one address (a NAT site's reconnect storm is also paced by maxConnectsPerSecondPerIp). */
          mqttMaxPendingPerAddress: z.number().int().min(1).default(128),
          /** All MQTT connections from one address: a whole site behind one NAT must fit. */
          mqttMaxPerAddress: z.number().int().min(1).default(10_000),
          /** A connection must send a whole request head within this (and again after each response: keep it above the 5 s keep-alive timeout). */
          headersTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
          /** A request body must move minBodyBytesPerSecond over each window this long, or the connection is closed. */
          bodyTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
          minBodyBytesPerSecond: z.number().int().min(1).default(1024),
          /** An MQTT connection must send CONNECT within this, and be authenticated within this again. */
          connectTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
          /** How often deadlines are checked. */
          sweepMs: z.number().int().min(10).max(10_000).default(500),
        })
        .prefault({}),
    })
    .prefault({}),
  models: z
    .object({
      /** Largest model artifact accepted by PUT /v1/models/:name/:version/artifact. */
      maxArtifactBytes: z.number().int().min(1024).max(16 * 1024 ** 3).default(512 * 1024 * 1024),
      /** Largest manifest body accepted by POST /v1/models (test vectors and drift bins add up). */
      maxManifestBytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(8 * 1024 * 1024),
      /**
       * The child process that loads an uploaded model to check it against its manifest: killed
       * past the timeout, past the RSS budget, and refused address space beyond its start-up
       * baseline plus the budget (a crafted model can allocate gigabytes at load, PITFALLS).
       */
      probe: z
        .object({
          timeoutMs: z.number().int().min(1000).max(600_000).default(30_000),
          maxRssBytes: z.number().int().min(64 * 1024 * 1024).default(1024 * 1024 * 1024),
          addressSpaceBudgetBytes: z.number().int().min(64 * 1024 * 1024).default(2 * 1024 ** 3),
        })
        .prefault({}),
      signing: z
        .object({
          /** Key in <dataDir>/keys that signs new releases; default: keys/active, created on first start. */
          activeKeyId: z.string().regex(/^[0-9a-f]{16}$/, 'activeKeyId: 16 lowercase hex digits').optional(),
          /** Further ed25519 public key PEM files to trust (and publish on /v1/keys), e.g. a previous hub's. */
          trustedKeyFiles: z.array(z.string().min(1)).max(64).default([]),
        })
        .prefault({}),
    })
    .prefault({}),
  rollouts: z
    .object({
      /** How often the rollout engine checks its rollouts (events also wake it at once). */
      tickMs: z.number().int().min(10).max(60_000).default(1000),
      /** A wave whose online devices have not all answered by then completes with those that did. */
      waveTimeoutMs: z.number().int().min(1000).default(30 * 60_000),
      /** An install command with no answer at all is sent again (same id) after this long. */
      commandRetryMs: z.number().int().min(1000).default(5 * 60_000),
      /** Time zone the maintenance window expressions are read in. */
      timezone: z
        .string()
        .default('UTC')
        .superRefine((tz, ctx) => {
          const p = timezoneProblem(tz);
          if (p) ctx.addIssue({ code: 'custom', message: p });
        }),
      /**
       * Maintenance windows per device group: cron expressions (5 fields) matching every minute
       * inside a window, e.g. { "line-1": ["* 22-23 * * 1-5"] }. Installs start only inside a
       * window of the device's group; groups without windows are always open.
       */
      windows: z
        .record(
          NameSchema,
          z.array(
            z.string().superRefine((e, ctx) => {
              const p = windowExpressionProblem(e);
              if (p) ctx.addIssue({ code: 'custom', message: p });
            }),
          ).min(1).max(32),
        )
        .default({}),
    })
    .prefault({}),
  kpis: KpisConfigSchema.prefault({}),
  drift: DriftConfigSchema,
  alerts: AlertsConfigSchema,
  /** Audit log retention and anonymous-refusal folding (issue #14; hub/auth/audit.ts). */
  audit: AuditConfigSchema.prefault({}),
  log: z.object({ level: z.enum(LOG_LEVELS).default('info') }).prefault({}),
  /** HTTP auth endpoint for external brokers: EMQX, VerneMQ, RabbitMQ (issue #15; hub/auth/broker-auth-http.ts, README). */
  brokerAuth: BrokerAuthConfigSchema.prefault({}),
});
export type HubConfig = z.infer<typeof HubConfigSchema>;

/**
 * Loads and validates the hub config: defaults < file < env < overrides. A relative dataDir
 * resolves against the config file's directory (or the working directory without one).
 */
export function loadHubConfig(opts: { file?: string; overrides?: Record<string, unknown>; env?: NodeJS.ProcessEnv } = {}): HubConfig {
  const cfg = loadConfig(HubConfigSchema, { file: opts.file, overrides: opts.overrides, env: opts.env ?? {}, envPrefix: ENV_PREFIX });
  const base = opts.file ? dirname(resolve(opts.file)) : process.cwd();
  const signing = { ...cfg.models.signing, trustedKeyFiles: cfg.models.signing.trustedKeyFiles.map((f) => resolve(base, f)) };
  const file = (f: string | undefined): string | undefined => (f === undefined ? undefined : resolve(base, f));
  const tls = { ...cfg.tls, certFile: file(cfg.tls.certFile), keyFile: file(cfg.tls.keyFile), caFile: file(cfg.tls.caFile) };
  const brokerAuth = { ...cfg.brokerAuth, secretFile: file(cfg.brokerAuth.secretFile) };
  const broker = resolveBrokerFiles(cfg.broker, file);
  return deepFreeze({ ...cfg, dataDir: resolve(base, cfg.dataDir), tls, broker, models: { ...cfg.models, signing }, brokerAuth });
}
