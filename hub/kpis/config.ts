/**
 * The hub config's `kpis` section (hub/config.ts): retention of the inference index, how often
 * the Prometheus KPI gauges are recomputed and over what period, the labels of models the hub
 * has no release of, and the operator's cost matrix per model.
 *
 * Cost matrix: `costs.<model>.matrix.<true label>.<predicted label> = cost` (any unit, e.g.
 * euros). A pair not listed costs 0, so a matrix lists only mistakes that matter: a missed
 * defect { defect: { ok: 50 } } and a false reject { ok: { defect: 2 } }. Costs are per
 * prediction; the KPIs report them per 1,000 inferences.
 */
import { z } from 'zod';
import { NameSchema } from '../../shared/protocol.ts';

const LabelSchema = z.string().min(1).max(64);

export const CostMatrixSchema = z.record(LabelSchema, z.record(LabelSchema, z.number().finite().min(0)));
export type CostMatrix = z.infer<typeof CostMatrixSchema>;

export const KpisConfigSchema = z.object({
  /** Indexed inferences, health windows and presence changes older than this are deleted. */
  retentionDays: z.number().min(1).max(3650).default(30),
  /** How often retention runs. */
  pruneEveryMs: z.number().int().min(1000).default(3600_000),
  /** The Prometheus KPI gauges describe the last `gaugePeriodMs`, recomputed every `gaugeEveryMs`. */
  gaugePeriodMs: z.number().int().min(60_000).default(3600_000),
  gaugeEveryMs: z.number().int().min(1000).default(60_000),
  /**
   * Labels of models the hub holds no release of (models an agent loads from its own config):
   * feedback labels are checked against the release's manifest, else against this list.
   */
  labels: z.record(NameSchema, z.array(LabelSchema).min(2).max(10_000)).default({}),
  /** Per model name: the business cost of each (true, predicted) pair. */
  costs: z.record(NameSchema, z.object({ matrix: CostMatrixSchema })).default({}),
});
export type KpisConfig = z.infer<typeof KpisConfigSchema>;
