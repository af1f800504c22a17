/**
 * The API's view of a rollout (GET /v1/rollouts[/<id>], `edgefleet rollout status --json`):
 * state and phase, per-wave and per-device counts, the bake, and the gate results with their
 * figures. Derived from the stored records only.
 */
import type { RolloutDeviceRecord, RolloutDeviceState, RolloutRecord } from '../store/store.ts';
import type { GateResult } from './gates.ts';

export type Counts = Record<RolloutDeviceState, number> & { total: number };

export type RolloutPhase = 'dispatching' | 'baking' | 'awaiting_approval' | 'paused' | 'ended';

export interface RolloutStatus {
  id: string;
  model: string;
  version: string;
  /** Releases installed with model@version as one unit (spec `with`); empty for one release. */
  with: { model: string; version: string }[];
  counter: number;
  state: RolloutRecord['state'];
  phase: RolloutPhase;
  reason: string | null;
  currentWave: number;
  waves: { index: number; cumulative: number; devices: number; counts: Counts; status: 'done' | 'current' | 'waiting' }[];
  counts: Counts;
  bake: { startedAt: string | null; until: string | null; extensions: number };
  spec: unknown;
  gates: GateResult[];
  createdAt: string;
  updatedAt: string;
  endedAt: string | null;
  devices?: { id: string; wave: number; state: RolloutDeviceState; attempts: number; from: string | null; detail: string | null }[];
}

function count(devices: readonly RolloutDeviceRecord[]): Counts {
  const c: Counts = { pending: 0, dispatched: 0, succeeded: 0, failed: 0, rolled_back: 0, total: devices.length };
  for (const d of devices) c[d.state]++;
  return c;
}

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

export function rolloutView(r: RolloutRecord, devices: readonly RolloutDeviceRecord[], withDevices: boolean): RolloutStatus {
  const spec = JSON.parse(r.spec) as { approval?: string; with?: { model: string; version: string }[] };
  const ended = r.state === 'completed' || r.state === 'aborted' || r.state === 'rolled_back';
  const phase: RolloutPhase = ended
    ? 'ended'
    : r.state === 'paused'
      ? 'paused'
      : r.bakeStartedAt === null
        ? 'dispatching'
        : r.bakeUntil !== null
          ? 'baking'
          : spec.approval === 'each-wave' && r.approvedWave <= r.currentWave
            ? 'awaiting_approval'
            : 'dispatching';
  return {
    id: r.id,
    model: r.model,
    version: r.version,
    with: (spec.with ?? []).map((w) => ({ model: w.model, version: w.version })),
    counter: r.counter,
    state: r.state,
    phase,
    reason: r.reason,
    currentWave: r.currentWave,
    waves: r.plan.map((cumulative, index) => {
      const inWave = devices.filter((d) => d.wave === index);
      const status = index < r.currentWave || (index === r.currentWave && r.state === 'completed') ? 'done' : index === r.currentWave ? 'current' : 'waiting';
      return { index, cumulative, devices: inWave.length, counts: count(inWave), status };
    }),
    counts: count(devices),
    bake: { startedAt: iso(r.bakeStartedAt), until: iso(r.bakeUntil), extensions: r.bakeExtensions },
    spec,
    gates: JSON.parse(r.gateResults) as GateResult[],
    createdAt: new Date(r.createdAt).toISOString(),
    updatedAt: new Date(r.updatedAt).toISOString(),
    endedAt: iso(r.endedAt),
    ...(withDevices
      ? { devices: devices.map((d) => ({ id: d.deviceId, wave: d.wave, state: d.state, attempts: d.attempts, from: d.fromVersion, detail: d.detail })) }
      : {}),
  };
}
