/**
 * What an operator asks for when creating a rollout (POST /v1/rollouts): the release, the
 * devices it targets, how it proceeds (waves, bake, thresholds, concurrency, approvals) and what
 * happens on a breach. The validated spec is stored with the rollout as JSON, so a restarted hub
 * runs the rollout by the rules it was created with, whatever the defaults are by then.
 */
import { z } from 'zod';
import { GateThresholdsSchema } from '../../shared/health.ts';
import { DeviceIdSchema, NameSchema } from '../../shared/ids.ts';
import { MAX_BUNDLE } from '../../shared/updates.ts';
import { OutputGateThresholdsSchema } from './output-gate.ts';

/** The behaviour gate's thresholds: shared/health.ts's plus the output gate's (hub/rollouts/output-gate.ts). */
export const RolloutGatesSchema = GateThresholdsSchema.extend(OutputGateThresholdsSchema.shape);

/** A wave: a device count, or a percentage of the matching devices ("10%"). Cumulative. */
export const WaveSchema = z.union([
  z.number().int().positive(),
  z
    .string()
    .regex(/^\d+(\.\d+)?%$/, 'a wave is a count or a percentage like "10%"')
    .refine((s) => {
      const p = Number(s.slice(0, -1));
      return p > 0 && p <= 100;
    }, 'a wave percentage must be in (0, 100]'),
]);
export type Wave = z.infer<typeof WaveSchema>;

export const DEFAULT_WAVES: Wave[] = [1, '10%', '50%', '100%'];

/** Device ids, a group, labels (all must match); given together, a device must match each. */
export const TargetSchema = z
  .strictObject({
    devices: z.array(DeviceIdSchema).min(1).max(10_000).optional(),
    group: NameSchema.optional(),
    labels: z.record(z.string().min(1).max(63), z.string().max(256)).optional(),
  })
  .refine((t) => t.devices !== undefined || t.group !== undefined || (t.labels !== undefined && Object.keys(t.labels).length > 0), {
    message: 'target needs devices, a group or labels',
  });
export type Target = z.infer<typeof TargetSchema>;

/** A release of another model installed with the rollout's own as one unit (a chain's stages). */
export const WithReleaseSchema = z.strictObject({ model: NameSchema, version: z.string().min(1).max(64) });
export type WithRelease = z.infer<typeof WithReleaseSchema>;

export const RolloutSpecSchema = z.strictObject({
  model: NameSchema,
  version: z.string().min(1).max(64),
  /**
   * Releases of other models installed with `model@version` as one unit on each device (issue
   * #13: a chain whose stages changed their interface together). Gates, health and the rollout's
   * desired state follow `model`; a rollback of the unit on a device rolls back every release.
   */
  with: z.array(WithReleaseSchema).min(1).max(MAX_BUNDLE).optional(),
  target: TargetSchema,
  waves: z.array(WaveSchema).min(1).max(20).default(DEFAULT_WAVES),
  /** Fraction of a wave's reporting devices that must succeed. */
  successThreshold: z.number().min(0).max(1).default(0.9),
  /** Observation time after a wave completes, before the next starts (gates run here). */
  bakeMs: z.number().int().min(0).max(30 * 24 * 3600_000).default(600_000),
  /** failed / attempted over the whole rollout above this stops it (once minSample attempted). */
  abortThreshold: z.number().min(0).max(1).default(0.2),
  minSample: z.number().int().min(1).max(100_000).default(5),
  /** Devices with an install command outstanding, at most. */
  maxConcurrent: z.number().int().min(1).max(100_000).default(50),
  onBreach: z.enum(['rollback', 'pause']).default('rollback'),
  approval: z.enum(['none', 'each-wave']).default('none'),
  gates: RolloutGatesSchema.prefault({}),
  /** Passed to the agents (InstallArgs.probationMs); their default when absent. */
  probationMs: z
    .number()
    .int()
    .min(0)
    .max(7 * 24 * 3600_000)
    .optional(),
});
export type RolloutSpec = z.infer<typeof RolloutSpecSchema>;
