/**
 * The behaviour gate of a baking wave: the devices that installed the release (candidate) are
 * compared with a control group still on the old version, over the same time (health windows
 * whose windowStart is at or after the bake start), with shared/health.ts. When no control
 * device remains (the last wave), the baseline is the candidates' own old-version windows from
 * before their dispatch, over a span as long as the bake (at least 10 minutes).
 *
 * Windows that carry a task output statistic (manifest v2 tasks other than classification) are
 * also compared on it (hub/rollouts/output-gate.ts); its verdict is the result's `output`, and
 * its breach one of `breaches` (metric output_rate or output_mean), which fails the gate. Results
 * of windows without one (classifiers, older agents) have no `output`.
 */
import { compareHealth, mergeHealth, type HealthBreach, type HealthComparison } from '../../shared/health.ts';
import type { HealthWindow } from '../../shared/updates.ts';
import type { RolloutDeviceRecord, RolloutRecord, RolloutStore } from '../store/store.ts';
import type { RolloutSpec } from './spec.ts';
import { compareOutputGate, type OutputGateResult, type OutputMetric } from './output-gate.ts';

export type GateAction = 'fail' | 'pass' | 'extend' | 'pass_insufficient' | 'check';

export interface GateBreach extends Omit<HealthBreach, 'metric'> {
  metric: HealthBreach['metric'] | OutputMetric;
}

/** One evaluation, as recorded in the rollout's status. */
export interface GateResult extends Omit<HealthComparison, 'breaches'> {
  breaches: GateBreach[];
  /** The output gate, when either side reports a task output statistic. */
  output?: OutputGateResult;
  wave: number;
  at: number;
  action: GateAction;
  baseline: 'control' | 'pre_dispatch';
  devices: { candidate: number; baseline: number };
  windows: { candidate: number; baseline: number };
}

const MIN_PRE_DISPATCH_SPAN_MS = 600_000;

export async function evaluateGate(
  store: Pick<RolloutStore, 'healthWindows'>,
  r: RolloutRecord,
  spec: RolloutSpec,
  devices: readonly RolloutDeviceRecord[],
  now: number,
): Promise<Omit<GateResult, 'action'>> {
  const bakeStart = r.bakeStartedAt ?? now;
  const candidates = devices.filter((d) => d.state === 'succeeded');
  const controls = devices.filter((d) => d.wave > r.currentWave);
  const candIds = candidates.map((d) => d.deviceId);
  const candWindows = (await store.healthWindows(candIds, r.model, bakeStart, now + 1)).filter((x) => x.window.version === r.version);

  let baseline: GateResult['baseline'];
  let baseIds: string[];
  let baseWindows: { deviceId: string; window: HealthWindow }[];
  if (controls.length > 0) {
    baseline = 'control';
    baseIds = controls.map((d) => d.deviceId);
    baseWindows = await store.healthWindows(baseIds, r.model, bakeStart, now + 1);
  } else {
    baseline = 'pre_dispatch';
    baseIds = candIds;
    const firstDispatch = Math.min(...candidates.map((d) => d.dispatchedAt ?? bakeStart), bakeStart);
    const span = Math.max(spec.bakeMs, MIN_PRE_DISPATCH_SPAN_MS);
    baseWindows = await store.healthWindows(baseIds, r.model, firstDispatch - span, firstDispatch);
  }
  baseWindows = baseWindows.filter((x) => x.window.version !== r.version);

  const cand = candWindows.map((x) => x.window);
  const base = baseWindows.map((x) => x.window);
  const cmp = compareHealth(mergeHealth(cand), mergeHealth(base), spec.gates);
  const output = compareOutputGate(cand, base, spec.gates);
  const breaches: GateBreach[] = [...cmp.breaches];
  if (output?.verdict === 'fail' && output.candidate && output.baseline && output.limit !== null) {
    breaches.push({
      metric: output.kind === 'rate' ? 'output_rate' : 'output_mean',
      candidate: output.candidate.mean,
      baseline: output.baseline.mean,
      limit: output.limit,
      detail: output.detail,
    });
  }
  return {
    ...cmp,
    verdict: breaches.length > 0 ? 'fail' : cmp.verdict,
    breaches,
    ...(output ? { output } : {}),
    wave: r.currentWave,
    at: now,
    baseline,
    devices: { candidate: new Set(candWindows.map((x) => x.deviceId)).size, baseline: new Set(baseWindows.map((x) => x.deviceId)).size },
    windows: { candidate: candWindows.length, baseline: baseWindows.length },
  };
}
