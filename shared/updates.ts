/**
 * The model-update contract between the hub's rollouts and the agent's updater (issue #3,
 * ARCHITECTURE §4): what the hub commands, what the agent reports in its hello (actual model
 * state, reconciled against the hub's desired state on every reconnect), and the outbox records
 * the agent writes about installs (stream `events`, kind `model`) and about the health of each
 * model version it serves (stream `health`, kind `health`). Both record kinds travel the outbox,
 * so they survive restarts and partitions and the hub stores each exactly once.
 */
import { z } from 'zod';
import { ModelRefSchema, NameSchema } from './ids.ts';

const Sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, 'sha256: 64 lowercase hex digits');
const VersionSchema = ModelRefSchema.shape.version;

// ---------------------------------------------------------------------------------------------
// Commands (hub → agent, on `cmd`, idempotent by command id)

export const INSTALL_COMMAND = 'model.install';
export const ROLLBACK_COMMAND = 'model.rollback';
/** Releases a rollout may install together with its own (`with`, InstallArgs.bundle). */
export const MAX_BUNDLE = 8;

const ArtifactPathSchema = z.string().regex(/^\/v1\/artifacts\/[0-9a-f]{64}$/);

/**
 * `model.install`: install and activate a signed release. The agent trusts nothing here but what
 * it verifies itself: the signature against its trusted keys, the counter against the highest it
 * has accepted for this model name, the target against its own identity, and the artifact
 * against the signed sha256 and size. `artifactPath` is resolved against the agent's
 * `hub.httpUrl`.
 */
export const InstallArgsSchema = z.object({
  /** The signed release envelope (shared/signing.ts), as stored at the hub. */
  release: z.unknown(),
  /** e.g. `/v1/artifacts/<sha256>`: a path on the hub's HTTP API, device-authenticated. */
  artifactPath: ArtifactPathSchema,
  /**
   * Further releases (of other model names) installed with `release` as one unit (issue #13
   * chains): all verified, fitted together, downloaded and validated before any is activated;
   * if one fails none stays active, and a rollback of any rolls back all. An agent older than
   * this field strips it (z.object) and installs `release` alone, which its chain check refuses
   * when the stages only fit together.
   */
  bundle: z
    .array(z.object({ release: z.unknown(), artifactPath: ArtifactPathSchema }))
    .min(1)
    .max(MAX_BUNDLE)
    .optional(),
  /** The rollout this install belongs to, echoed in the agent's events. */
  rolloutId: z.string().min(1).max(64).optional(),
  /** Probation after activation, overriding the agent's default (ms; 0 = none). */
  probationMs: z.number().int().min(0).max(7 * 24 * 3600_000).optional(),
});
export type InstallArgs = z.infer<typeof InstallArgsSchema>;

/**
 * `model.rollback`: the hub's health gate found `version` of `name` worse than the control
 * group. If that version is active the agent re-activates its previous version (kept on disk and
 * already verified) and refuses `version` from now on (it records it as failed). A no-op when
 * `version` is not active.
 */
export const RollbackArgsSchema = z.object({
  name: NameSchema,
  version: VersionSchema,
  reason: z.string().max(500),
  rolloutId: z.string().min(1).max(64).optional(),
});
export type RollbackArgs = z.infer<typeof RollbackArgsSchema>;

/** One release of a bundle (installed or rolled back as one unit). */
export const BundleMemberRefSchema = z.object({ name: NameSchema, version: VersionSchema, counter: z.number().int().nonnegative() });
export type BundleMemberRef = z.infer<typeof BundleMemberRefSchema>;

/** What the agent answers to `model.install` / `model.rollback` (CommandResult.result). */
export const InstallOutcomeSchema = z.object({
  name: NameSchema,
  version: VersionSchema,
  counter: z.number().int().nonnegative(),
  /** `active`: now serving; `already_active`: was serving; `rolled_back`: previous re-activated. */
  state: z.enum(['active', 'already_active', 'rolled_back', 'not_active']),
  /** A bundle: every release of the unit (the first is `name`) and what happened to each. */
  bundle: z
    .array(BundleMemberRefSchema.extend({ state: z.enum(['active', 'already_active', 'rolled_back']) }))
    .max(MAX_BUNDLE + 1)
    .optional(),
});
export type InstallOutcome = z.infer<typeof InstallOutcomeSchema>;

// ---------------------------------------------------------------------------------------------
// Actual state (agent → hub, inside every hello)

/** One installed version. `counter` 0 = a model from the agent's own config (not a release). */
export const InstalledVersionSchema = z.object({
  version: VersionSchema,
  counter: z.number().int().nonnegative(),
  sha256: Sha256Schema,
});
export type InstalledVersion = z.infer<typeof InstalledVersionSchema>;

/** Phases an install goes through; a failure names the phase it failed in. */
export const InstallPhaseSchema = z.enum(['verify', 'download', 'validate', 'activate', 'probation', 'rollback']);
export type InstallPhase = z.infer<typeof InstallPhaseSchema>;

export const FailedReleaseSchema = z.object({
  version: VersionSchema,
  counter: z.number().int().nonnegative(),
  phase: InstallPhaseSchema,
  /** An ErrorCode, or a verify code (BAD_SIGNATURE, UNKNOWN_KEY, REPLAY, ...). */
  code: z.string().max(64),
  message: z.string().max(500),
  ts: z.number().int().nonnegative(),
});
export type FailedRelease = z.infer<typeof FailedReleaseSchema>;

/** The agent's state for one model name. */
export const ModelSlotSchema = z.object({
  name: NameSchema,
  active: InstalledVersionSchema.nullable(),
  /** Kept on disk, verified, the target of a local rollback. */
  previous: InstalledVersionSchema.optional(),
  /** Highest release counter accepted for this name: anything lower is a replay. */
  highestCounter: z.number().int().nonnegative(),
  /** Set while the active version is on probation (epoch ms when it ends). */
  probationUntil: z.number().int().nonnegative().optional(),
  /** An install in progress (its counter and phase). */
  installing: z.object({ version: VersionSchema, counter: z.number().int().nonnegative(), phase: InstallPhaseSchema }).optional(),
  /** Most recent refusals and rollbacks, newest last (the hub does not re-send these). */
  failed: z.array(FailedReleaseSchema).max(16),
});
export type ModelSlot = z.infer<typeof ModelSlotSchema>;

// ---------------------------------------------------------------------------------------------
// Outbox records (agent → hub as telemetry; identity (device, stream, epoch, seq))

export const EVENTS_STREAM = 'events';
export const MODEL_EVENT_KIND = 'model';

/**
 * One step of a model's life on a device: the append-only history the hub keeps per device.
 *   installed        activated (after verify, download, validate, load)
 *   rejected         refused before activation; the old version kept serving
 *   rolled_back      `version` was replaced by `restored` (probation breach or hub command)
 *   probation_passed `version` served its probation without a breach
 */
export const ModelEventSchema = z.object({
  event: z.enum(['installed', 'rejected', 'rolled_back', 'probation_passed']),
  name: NameSchema,
  version: VersionSchema,
  counter: z.number().int().nonnegative(),
  rolloutId: z.string().max(64).optional(),
  /** The version that served before (installed) or serves again (rolled_back). */
  restored: InstalledVersionSchema.optional(),
  previous: InstalledVersionSchema.optional(),
  phase: InstallPhaseSchema.optional(),
  code: z.string().max(64).optional(),
  message: z.string().max(500).optional(),
  /** Wall time of the install (verify → active), for `installed`. */
  durationMs: z.number().nonnegative().optional(),
  /** The releases installed, refused or rolled back with this one as one unit (this one included). */
  bundle: z.array(BundleMemberRefSchema).max(MAX_BUNDLE + 1).optional(),
});
export type ModelEvent = z.infer<typeof ModelEventSchema>;

export const HEALTH_STREAM = 'health';
export const HEALTH_KIND = 'health';

/**
 * Latency histogram edges (ms), fixed for every device and version so windows merge by adding
 * counts. Bucket i counts latencies in (edge[i-1], edge[i]]; one extra bucket counts the rest.
 */
export const LATENCY_EDGES_MS = [0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000] as const;
/** Top-1 confidence histogram: 10 equal bins over [0, 1]. */
export const CONFIDENCE_BINS = 10;

/** The task output statistic of a HealthWindow (see `output` there). */
export const HealthOutputSchema = z.object({
  /** TaskOutcome.values key: `alarm`, `count`, a regression target's name. */
  name: z.string().min(1).max(64),
  kind: z.enum(['rate', 'mean']),
  n: z.number().int().nonnegative(),
  sum: z.number(),
  sumSq: z.number().nonnegative(),
});
export type HealthOutput = z.infer<typeof HealthOutputSchema>;

/**
 * What one device saw of one model version in one window: enough to compare a canary with its
 * control group (error rate, p95 latency, class rates, confidence) and to run probation locally.
 * All fields are counts, so windows of many devices merge exactly (shared/health.ts).
 */
export const HealthWindowSchema = z.object({
  model: NameSchema,
  version: VersionSchema,
  /** UTC-aligned start of the window (epoch ms) and its length. */
  windowStart: z.number().int().nonnegative(),
  windowMs: z.number().int().positive(),
  /** Inferences that produced a result. */
  ok: z.number().int().nonnegative(),
  /** Inferences that failed in the engine (INFERENCE, worker death); bad input is not counted. */
  errors: z.number().int().nonnegative(),
  /** LATENCY_EDGES_MS.length + 1 counts of engine latency. */
  latency: z.array(z.number().int().nonnegative()),
  /** Predicted (top-1) class counts, in label order. */
  classCounts: z.array(z.number().int().nonnegative()).max(10_000),
  /** CONFIDENCE_BINS counts of top-1 confidence. */
  confidence: z.array(z.number().int().nonnegative()),
  /**
   * Process CPU time (user + system, ms, all threads) attributed to this window: the CPU used
   * while the window was open, split between the versions open at the same time by their share
   * of engine latency (agent/health/health-monitor.ts). Optional: older agents do not send it.
   * The hub turns it into CPU-seconds per 1,000 inferences (hub/kpis/).
   */
  cpuMs: z.number().nonnegative().optional(),
  /**
   * Manifest v2 tasks other than classification (issue #13): count, sum and sum of squares of
   * the window's one task output statistic (shared/drift/tasks.ts `probationStatistic`: `alarm`
   * for anomaly, a 0/1 `rate`; `count` per frame for detection and the first regression target,
   * a `mean`), for the hub's output gate (hub/rollouts/output-gate.ts). Optional: classifiers
   * and older agents send none. A malformed value is dropped, not the window with it.
   */
  output: HealthOutputSchema.optional().catch(undefined),
});
export type HealthWindow = z.infer<typeof HealthWindowSchema>;
