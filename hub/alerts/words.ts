/**
 * Drift findings folded into alert keys and told in words, e.g.
 * "brightness down 0.8 SD on 3 of 40 devices in line-1 (part-defect@1.0.0)".
 * Device findings are folded per (group, feature): one alert names every drifting device of
 * a group, instead of one alert per device. Fleet and group findings stay one per key.
 * Pure functions, so the sentences are unit-tested without a hub.
 */
import type { DriftFinding } from '../../shared/drift/detector.ts';

/** Devices without a group (never the case for registered devices) fold under this id. */
export const NO_GROUP = '(no group)';

export interface AlertHit {
  scope: 'fleet' | 'group' | 'device';
  /** `fleet`, the group name, or for device findings the devices' group. */
  scopeId: string;
  feature: string;
  findings: DriftFinding[];
  /** Devices with a finding (device scope only). */
  devices: string[];
  /** Devices reporting in the scope this window (fleet: all; group and device scope: the group). */
  devicesInScope: number;
  message: string;
}

const fmt = (x: number): string => (Math.abs(x) >= 0.005 || x === 0 ? x.toFixed(2) : x.toExponential(0));
const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / (xs.length || 1);

/** "brightness down 0.80 SD", or "output:class changed (PSI 0.31)" when there is no common direction. */
export function effectInWords(feature: string, findings: readonly DriftFinding[]): string {
  const dirs = new Set(findings.map((f) => f.direction));
  const shifts = findings.map((f) => f.effect.shiftSd).filter((x): x is number => x !== null);
  const dir = dirs.size === 1 ? [...dirs][0] : 'changed';
  const trend = findings.every((f) => f.kind === 'trend') ? ' (trend over windows)' : '';
  if (dir === 'changed' || dir === undefined || shifts.length === 0) return `${feature} changed (PSI ${fmt(mean(findings.map((f) => f.effect.psi)))})${trend}`;
  return `${feature} ${dir} ${fmt(Math.abs(mean(shifts)))} SD${trend}`;
}

/** Folds one window's findings into alert hits, each with its sentence. */
export function foldFindings(
  findings: readonly DriftFinding[],
  ctx: { model: string; version: string; devices: number; groupOf: (id: string) => string | undefined; groupSizes: ReadonlyMap<string, number> },
): AlertHit[] {
  const by = new Map<string, AlertHit>();
  const ref = `(${ctx.model}@${ctx.version})`;
  for (const f of findings) {
    const scopeId = f.scope === 'device' ? (ctx.groupOf(f.id) ?? NO_GROUP) : f.id;
    const k = `${f.scope}\u0000${scopeId}\u0000${f.feature}`;
    let h = by.get(k);
    if (!h) {
      const devicesInScope = f.scope === 'fleet' ? ctx.devices : (ctx.groupSizes.get(scopeId) ?? 0);
      h = { scope: f.scope, scopeId, feature: f.feature, findings: [], devices: [], devicesInScope, message: '' };
      by.set(k, h);
    }
    h.findings.push(f);
    if (f.scope === 'device') h.devices.push(f.id);
  }
  for (const h of by.values()) {
    h.devices.sort();
    const what = effectInWords(h.feature, h.findings);
    if (h.scope === 'fleet') h.message = `${what} fleet-wide on ${h.devicesInScope} devices ${ref}`;
    else if (h.scope === 'group') h.message = `${what} in ${h.scopeId} as a whole (${h.devicesInScope} devices) ${ref}`;
    else {
      const where = h.scopeId === NO_GROUP ? '' : ` in ${h.scopeId}`;
      const names = h.devices.length <= 10 ? h.devices.join(', ') : `${h.devices.slice(0, 10).join(', ')}, …`;
      h.message = `${what} on ${h.devices.length} of ${h.devicesInScope} devices${where} ${ref}: ${names}`;
    }
  }
  return [...by.values()].sort((a, b) => a.scope.localeCompare(b.scope) || a.scopeId.localeCompare(b.scopeId) || a.feature.localeCompare(b.feature));
}
