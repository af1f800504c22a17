/**
 * Splits the matching devices into waves. Waves are cumulative (a count or a percentage of the
 * devices matching at creation, rounded up); waves that would add nobody are dropped, and the
 * last wave always takes every remaining device, so a rollout never ends half-way by accident.
 * Online devices come first, so the canary is a device that can answer now.
 * Devices that match only later join the last wave: they never become an unplanned canary.
 */
import type { RolloutCandidate } from '../store/store.ts';
import type { Wave } from './spec.ts';

/** Cumulative device count per wave for `n` devices (empty when n = 0). */
export function planWaves(waves: readonly Wave[], n: number): number[] {
  const plan: number[] = [];
  for (const w of waves) {
    const want = typeof w === 'number' ? w : Math.ceil((Number(w.slice(0, -1)) / 100) * n);
    const cum = Math.min(n, Math.max(1, want));
    if (cum > (plan[plan.length - 1] ?? 0)) plan.push(cum);
  }
  if (n > 0 && plan[plan.length - 1] !== n) plan.push(n);
  return plan;
}

/** The wave of each device, in planning order (online first, then by id). */
export function assignWaves(devices: readonly Pick<RolloutCandidate, 'id' | 'online'>[], plan: readonly number[]): { deviceId: string; wave: number }[] {
  const ordered = [...devices].sort((a, b) => Number(b.online) - Number(a.online) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return ordered.map((d, i) => ({ deviceId: d.id, wave: Math.max(0, plan.findIndex((cum) => i < cum)) }));
}

/** The wave a device joining after creation goes to. */
export function joinerWave(plan: readonly number[]): number {
  return Math.max(0, plan.length - 1);
}
