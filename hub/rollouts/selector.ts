/**
 * Which devices a rollout targets. A pure function of the device's id, group and labels, so the
 * engine can apply it again on every tick to pick up devices registered after creation.
 */
import type { RolloutCandidate } from '../store/store.ts';
import type { Target } from './spec.ts';

export function matchesTarget(t: Target, d: Pick<RolloutCandidate, 'id' | 'group' | 'labels'>): boolean {
  if (t.devices !== undefined && !t.devices.includes(d.id)) return false;
  if (t.group !== undefined && d.group !== t.group) return false;
  for (const [k, v] of Object.entries(t.labels ?? {})) if (d.labels[k] !== v) return false;
  return true;
}
