/**
 * The wire protocol between agents and the hub: one map from topic kind to zod schema, used by
 * both ends. MQTT 3.1.1, JSON payloads, every message carries `v` (ARCHITECTURE §5).
 *
 * Topics live under `edgefleet/v1/<deviceId>/...`:
 *   hello        agent → hub   QoS 1   sent on every (re)connect; reports actual state
 *   status       agent → hub   QoS 1, retained; `offline` is the agent's last-will
 *   telemetry    agent → hub   QoS 1   a batch of outbox records
 *   ack          hub → agent   QoS 1   sent only after the hub committed the batch
 *   cmd          hub → agent   QoS 1   an idempotent command with an id
 *   cmd/result   agent → hub   QoS 1   ok/error envelope for a command id
 *   in/<input>   sensor → agent        sensor readings (schema per pipeline, see agent/)
 *   out/<pipe>   agent → anyone        inference results (see agent/)
 */
import { z } from 'zod';
import { DeviceIdSchema, ModelRefSchema, NameSchema } from './ids.ts';
import { ModelSlotSchema } from './updates.ts';

export { DeviceIdSchema, ModelRefSchema, NameSchema, type DeviceId, type ModelRef } from './ids.ts';

export const PROTOCOL_VERSION = 1 as const;
export const TOPIC_ROOT = 'edgefleet/v1';

const v = z.literal(PROTOCOL_VERSION);
const ts = z.number().int().nonnegative(); // epoch milliseconds

/** Per-stream outbox position an agent reports in hello, so the hub can see backlog and gaps. */
export const StreamPositionSchema = z.object({
  stream: NameSchema,
  epoch: z.number().int().nonnegative(),
  /** Next sequence number the agent will assign in `epoch`. */
  nextSeq: z.number().int().nonnegative(),
  /** Records committed locally and not yet acked by the hub. */
  pending: z.number().int().nonnegative(),
});

export const HelloSchema = z.object({
  v,
  type: z.literal('hello'),
  deviceId: DeviceIdSchema,
  ts,
  agentVersion: z.string().max(64),
  bootEpoch: z.number().int().nonnegative(),
  models: z.array(ModelRefSchema).max(64),
  streams: z.array(StreamPositionSchema).max(64),
  /** Actual model state per model name (shared/updates.ts), reconciled by the hub's rollouts. */
  modelState: z.array(ModelSlotSchema).max(64).optional(),
});
export type Hello = z.infer<typeof HelloSchema>;

export const StatusSchema = z.object({
  v,
  type: z.literal('status'),
  deviceId: DeviceIdSchema,
  ts,
  state: z.enum(['online', 'offline']),
  bootEpoch: z.number().int().nonnegative().optional(),
});
export type Status = z.infer<typeof StatusSchema>;

/** One outbox record. (deviceId, stream, epoch, seq) is its identity at the hub. */
export const TelemetryRecordSchema = z.object({
  stream: NameSchema,
  epoch: z.number().int().nonnegative(),
  seq: z.number().int().nonnegative(),
  ts,
  /** What the body holds, e.g. `inference`, `event`. */
  kind: NameSchema,
  body: z.record(z.string(), z.unknown()),
});
export type TelemetryRecord = z.infer<typeof TelemetryRecordSchema>;

export const MAX_BATCH_RECORDS = 2000;

export const TelemetryBatchSchema = z.object({
  v,
  type: z.literal('telemetry'),
  deviceId: DeviceIdSchema,
  batchId: z.string().min(1).max(64),
  records: z.array(TelemetryRecordSchema).min(1).max(MAX_BATCH_RECORDS),
});
export type TelemetryBatch = z.infer<typeof TelemetryBatchSchema>;

/** Inclusive range of sequence numbers of one (stream, epoch). */
export const SeqRangeSchema = z.object({
  stream: NameSchema,
  epoch: z.number().int().nonnegative(),
  from: z.number().int().nonnegative(),
  to: z.number().int().nonnegative(),
});
export type SeqRange = z.infer<typeof SeqRangeSchema>;

/**
 * The hub's reply to a telemetry batch, published only after the batch is committed.
 * `ranges` cover every record of the batch (newly stored or already known); the agent may
 * delete exactly those. `ok: false` means nothing was stored and the agent must retry later.
 */
export const AckSchema = z.object({
  v,
  type: z.literal('ack'),
  batchId: z.string().min(1).max(64),
  ok: z.boolean(),
  ranges: z.array(SeqRangeSchema),
  stored: z.number().int().nonnegative(),
  duplicates: z.number().int().nonnegative(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type Ack = z.infer<typeof AckSchema>;

/**
 * The hub's signature on a command (issue #14, shared/command-signing.ts): ed25519 by the hub's
 * release signing key over the whole command (this object without `sig` included), so the
 * device, the validity window and the args cannot be changed or the command moved to another
 * device. Agents require it on state-changing commands (model.install, model.rollback).
 */
export const CommandAuthSchema = z.object({
  /** The only device the command may run on. */
  deviceId: DeviceIdSchema,
  /** Hub wall-clock epoch ms of signing, and the end of the window in which it may run. */
  issuedAt: ts,
  expiresAt: ts,
  /** 16 random bytes, hex: every signing is distinct, so a replay is told from a re-send. */
  nonce: z.string().regex(/^[0-9a-f]{32}$/, 'nonce: 32 lowercase hex digits'),
  // Same shapes as shared/signing.ts KeyIdSchema / SignatureSchema (which imports this module).
  keyId: z.string().regex(/^[0-9a-f]{16}$/, 'keyId: 16 lowercase hex digits'),
  alg: z.literal('ed25519'),
  sig: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, 'sig: base64 of 64 bytes'),
});
export type CommandAuth = z.infer<typeof CommandAuthSchema>;

export const CommandSchema = z.object({
  v,
  type: z.literal('command'),
  /** Idempotency key: an agent that sees an id again replies with the first result. */
  id: z.string().min(1).max(64),
  ts,
  name: NameSchema,
  args: z.record(z.string(), z.unknown()).default({}),
  auth: CommandAuthSchema.optional(),
});
export type Command = z.infer<typeof CommandSchema>;

export const CommandResultSchema = z.object({
  v,
  type: z.literal('command_result'),
  id: z.string().min(1).max(64),
  ts,
  ok: z.boolean(),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export type CommandResult = z.infer<typeof CommandResultSchema>;

/** Request id of a hub sample request (hub/drift/sample-requests.ts). */
export const SampleRequestIdSchema = z.string().regex(/^sr-[0-9a-f]{24}$/);

/**
 * Args of the `drift.sample` command (hub → agent): upload the newest kept inputs of a pipeline.
 * The hub accepts the upload only with `request`, an open request it issued to this device, and
 * only up to `maxBytes` (issue #14); `expiresAt` is when the request closes (hub clock).
 */
export const SampleCommandArgsSchema = z.object({
  pipeline: z.string().min(1).max(64),
  /** Most items to upload (the newest). Default: all kept. */
  max: z.number().int().min(1).max(100_000).optional(),
  request: SampleRequestIdSchema.optional(),
  maxBytes: z.number().int().positive().optional(),
  expiresAt: ts.optional(),
});
export type SampleCommandArgs = z.infer<typeof SampleCommandArgsSchema>;

/** Topic kinds an agent publishes or receives, with the schema for each. */
export const Messages = {
  hello: HelloSchema,
  status: StatusSchema,
  telemetry: TelemetryBatchSchema,
  ack: AckSchema,
  cmd: CommandSchema,
  'cmd/result': CommandResultSchema,
} as const;
export type MessageKind = keyof typeof Messages;
export type MessageOf<K extends MessageKind> = z.infer<(typeof Messages)[K]>;

export const topics = {
  root: (deviceId: string): string => `${TOPIC_ROOT}/${deviceId}`,
  of: (deviceId: string, kind: MessageKind): string => `${TOPIC_ROOT}/${deviceId}/${kind}`,
  /** Sensor readings for one agent input. */
  input: (deviceId: string, input: string): string => `${TOPIC_ROOT}/${deviceId}/in/${input}`,
  /** Inference results of one agent pipeline. */
  output: (deviceId: string, pipeline: string): string => `${TOPIC_ROOT}/${deviceId}/out/${pipeline}`,
  /** Wildcard the hub subscribes to for one kind across the fleet. */
  fleet: (kind: MessageKind): string => `${TOPIC_ROOT}/+/${kind}`,
} as const;

/** Splits `edgefleet/v1/<deviceId>/<rest>`; undefined for topics outside the tree. */
export function parseTopic(topic: string): { deviceId: string; rest: string } | undefined {
  const prefix = `${TOPIC_ROOT}/`;
  if (!topic.startsWith(prefix)) return undefined;
  const tail = topic.slice(prefix.length);
  const slash = tail.indexOf('/');
  if (slash <= 0) return undefined;
  const deviceId = tail.slice(0, slash);
  if (!DeviceIdSchema.safeParse(deviceId).success) return undefined;
  return { deviceId, rest: tail.slice(slash + 1) };
}

/** Largest MQTT payload either end accepts on protocol topics. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;
