/**
 * Agent configuration: one zod schema with typed defaults. Loaded from YAML or JSON, with
 * environment overrides `EDGEFLEET_AGENT__<PATH>` (e.g. EDGEFLEET_AGENT__HUB__TOKEN) derived
 * from the schema, every problem reported at once, then frozen (shared/config.ts).
 */
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { BackoffSchema } from '../shared/backoff.ts';
import { loadConfig } from '../shared/config.ts';
import { LOG_LEVELS } from '../shared/log.ts';
import { DeviceIdSchema, NameSchema } from '../shared/protocol.ts';

export const ENV_PREFIX = 'EDGEFLEET_AGENT';

const MqttInputSchema = z.object({
  type: z.literal('mqtt'),
  /** Topic filter; default `edgefleet/v1/<deviceId>/in/<pipeline>`. Must lie in the device's subtree. */
  topic: z.string().min(1).max(256).optional(),
  maxPayloadBytes: z.number().int().positive().max(16 * 1024 * 1024).default(64 * 1024),
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

export const PipelineSchema = z.object({
  name: NameSchema,
  /** Name of a model listed under `models`. */
  model: NameSchema,
  input: z.discriminatedUnion('type', [MqttInputSchema]),
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
      token: z.string().min(8),
      keepaliveSeconds: z.number().int().min(5).max(3600).default(30),
      backoff: BackoffSchema.prefault({}),
      batchSize: z.number().int().min(1).max(2000).default(500),
      maxInflightBatches: z.number().int().min(1).max(64).default(4),
      ackTimeoutMs: z.number().int().min(100).default(10_000),
    }),
    http: z
      .object({
        host: z.string().default('127.0.0.1'),
        /** 0 = any free port (the bound port is logged as `http listening`). */
        port: z.number().int().min(0).max(65535).default(9100),
      })
      .prefault({}),
    runtime: z
      .object({
        workers: z.number().int().min(1).max(64).default(1),
        /** ORT intra-op threads per worker. Set explicitly: on 2 cores workers and ORT's pool fight. */
        intraOpThreads: z.number().int().min(1).max(64).default(1),
        maxBatch: z.number().int().min(1).max(1024).default(16),
        maxWaitMs: z.number().min(0).max(1000).default(2),
        queueMax: z.number().int().min(1).max(1_000_000).default(1000),
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
  })
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    for (const [i, p] of c.pipelines.entries()) {
      if (names.has(p.name)) ctx.addIssue({ code: 'custom', path: ['pipelines', i, 'name'], message: `duplicate pipeline ${p.name}` });
      names.add(p.name);
    }
  });
export type AgentConfig = z.infer<typeof AgentConfigSchema>;

/** Loads and validates the agent config; relative paths become relative to the config file. */
export function loadAgentConfig(opts: { file?: string; env?: NodeJS.ProcessEnv; overrides?: Record<string, unknown> }): AgentConfig {
  const cfg = loadConfig(AgentConfigSchema, { ...opts, envPrefix: ENV_PREFIX });
  const base = opts.file ? dirname(resolve(opts.file)) : process.cwd();
  return Object.freeze({
    ...cfg,
    dataDir: resolve(base, cfg.dataDir),
    models: Object.freeze(cfg.models.map((m) => Object.freeze({ manifest: resolve(base, m.manifest) }))),
  }) as AgentConfig;
}
