/**
 * The rollout half of the SQLite HubStore (tables of migration 3): rollouts, their devices,
 * desired models per device, and the append-only device history. Kept out of sqlite-store.ts
 * only for size; it runs on the same connection, and every function here is one synchronous
 * transaction (better-sqlite3), so no transaction spans an `await` and every state change is
 * guarded by the state it leaves: an outcome seen twice, or a tick repeated after a restart,
 * changes nothing the second time.
 */
import type Database from 'better-sqlite3';
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { HEALTH_KIND, HEALTH_STREAM, HealthWindowSchema, ModelSlotSchema, type HealthWindow, type ModelSlot } from '../../shared/updates.ts';
import type {
  DesiredModel,
  DeviceTransition,
  HistoryEntry,
  HistoryRecord,
  NewRollout,
  RolloutCandidate,
  RolloutDeviceRecord,
  RolloutDeviceState,
  RolloutPatch,
  RolloutRecord,
  RolloutState,
} from './store.ts';

type Db = Database.Database;

interface RolloutRow {
  id: string;
  model: string;
  version: string;
  counter: number;
  sha256: string;
  spec: string;
  plan: string;
  state: RolloutState;
  reason: string | null;
  current_wave: number;
  wave_started_at: number;
  bake_started_at: number | null;
  bake_until: number | null;
  bake_extensions: number;
  approved_wave: number;
  gate_results: string;
  created_at: number;
  updated_at: number;
  ended_at: number | null;
}
interface RolloutDeviceRow {
  rollout_id: string;
  device_id: string;
  wave: number;
  state: RolloutDeviceState;
  assigned_at: number | null;
  from_version: string | null;
  from_counter: number | null;
  attempts: number;
  dispatched_at: number | null;
  finished_at: number | null;
  detail: string | null;
}

const PlanSchema = z.array(z.number().int().nonnegative());
export const LabelsSchema = z.record(z.string(), z.string());
const ModelStateSchema = z.array(ModelSlotSchema);
const DetailsSchema = z.record(z.string(), z.unknown());

/** Parses JSON the store wrote itself; a damaged (or absent) value degrades to the fallback, not a crash. */
export function parseStored<T>(schema: z.ZodType<T>, text: string | null, fallback: T): T {
  if (text === null) return fallback;
  try {
    const r = schema.safeParse(JSON.parse(text));
    return r.success ? r.data : fallback;
  } catch {
    return fallback;
  }
}

const toRollout = (r: RolloutRow): RolloutRecord => ({
  id: r.id,
  model: r.model,
  version: r.version,
  counter: r.counter,
  sha256: r.sha256,
  spec: r.spec,
  plan: parseStored(PlanSchema, r.plan, []),
  state: r.state,
  reason: r.reason,
  currentWave: r.current_wave,
  waveStartedAt: r.wave_started_at,
  bakeStartedAt: r.bake_started_at,
  bakeUntil: r.bake_until,
  bakeExtensions: r.bake_extensions,
  approvedWave: r.approved_wave,
  gateResults: r.gate_results,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  endedAt: r.ended_at,
});

const toRolloutDevice = (r: RolloutDeviceRow): RolloutDeviceRecord => ({
  rolloutId: r.rollout_id,
  deviceId: r.device_id,
  wave: r.wave,
  state: r.state,
  assignedAt: r.assigned_at,
  fromVersion: r.from_version,
  fromCounter: r.from_counter,
  attempts: r.attempts,
  dispatchedAt: r.dispatched_at,
  finishedAt: r.finished_at,
  detail: r.detail,
});

const ACTIVE: readonly RolloutState[] = ['running', 'paused'];
const TERMINAL_DEVICE: readonly RolloutDeviceState[] = ['succeeded', 'failed', 'rolled_back'];

function placeholders(n: number): string {
  return Array.from({ length: n }, () => '?').join(', ');
}

function rolloutRow(db: Db, id: string): RolloutRow | undefined {
  return db.prepare('SELECT * FROM rollouts WHERE id = ?').get(id) as RolloutRow | undefined;
}

export function appendHistory(db: Db, e: HistoryEntry): boolean {
  return (
    db
      .prepare(
        `INSERT OR IGNORE INTO device_history (device_id, ts, event, name, version, counter, rollout_id, details, dedupe_key)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(e.deviceId, e.ts, e.event, e.name ?? null, e.version ?? null, e.counter ?? null, e.rolloutId ?? null, JSON.stringify(e.details ?? {}), e.dedupeKey ?? null)
      .changes === 1
  );
}

/** Sets the desired model of the rollout's not-yet-assigned devices of `wave` (or of `only`). */
function assignWave(db: Db, r: RolloutRow, wave: number, at: number, only?: readonly string[]): void {
  const rows = (
    only
      ? db.prepare(`SELECT * FROM rollout_devices WHERE rollout_id = ? AND assigned_at IS NULL AND device_id IN (${placeholders(only.length)})`).all(r.id, ...only)
      : db.prepare('SELECT * FROM rollout_devices WHERE rollout_id = ? AND assigned_at IS NULL AND wave <= ?').all(r.id, wave)
  ) as RolloutDeviceRow[];
  const desired = db.prepare(
    `INSERT INTO desired_models (device_id, name, version, counter, rollout_id, updated_at) VALUES (?, ?, ?, ?, ?, ?)
     ON CONFLICT (device_id, name) DO UPDATE SET version = excluded.version, counter = excluded.counter,
       rollout_id = excluded.rollout_id, updated_at = excluded.updated_at`,
  );
  const mark = db.prepare('UPDATE rollout_devices SET assigned_at = ? WHERE rollout_id = ? AND device_id = ?');
  for (const d of rows) {
    desired.run(d.device_id, r.model, r.version, r.counter, r.id, at);
    mark.run(at, r.id, d.device_id);
    appendHistory(db, {
      deviceId: d.device_id,
      ts: at,
      event: 'assigned',
      name: r.model,
      version: r.version,
      counter: r.counter,
      rolloutId: r.id,
      details: { wave: d.wave },
      dedupeKey: `assigned:${r.id}:${d.device_id}`,
    });
  }
}

export function createRollout(db: Db, n: NewRollout, devices: readonly { deviceId: string; wave: number }[]): RolloutRecord {
  return db
    .transaction((): RolloutRecord => {
      const active = db.prepare(`SELECT id FROM rollouts WHERE model = ? AND state IN ('running', 'paused')`).get(n.model) as { id: string } | undefined;
      if (active) throw new EdgefleetError(ErrorCode.CONFLICT, `model ${n.model} already has an active rollout (${active.id})`, { details: { rollout: active.id } });
      db.prepare(
        `INSERT INTO rollouts (id, model, version, counter, sha256, spec, plan, state, current_wave, wave_started_at, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, 'running', 0, ?, ?, ?)`,
      ).run(n.id, n.model, n.version, n.counter, n.sha256, n.spec, JSON.stringify(n.plan), n.createdAt, n.createdAt, n.createdAt);
      const ins = db.prepare(`INSERT INTO rollout_devices (rollout_id, device_id, wave, state) VALUES (?, ?, ?, 'pending')`);
      for (const d of devices) ins.run(n.id, d.deviceId, d.wave);
      const row = rolloutRow(db, n.id) as RolloutRow;
      assignWave(db, row, 0, n.createdAt);
      return toRollout(row);
    })
    .immediate();
}

export function getRollout(db: Db, id: string): RolloutRecord | undefined {
  const r = rolloutRow(db, id);
  return r && toRollout(r);
}

export function listRollouts(db: Db): RolloutRecord[] {
  return (db.prepare('SELECT * FROM rollouts ORDER BY created_at DESC, rowid DESC').all() as RolloutRow[]).map(toRollout);
}

const PATCH_COLUMNS: Record<keyof RolloutPatch, string> = {
  state: 'state',
  reason: 'reason',
  currentWave: 'current_wave',
  waveStartedAt: 'wave_started_at',
  bakeStartedAt: 'bake_started_at',
  bakeUntil: 'bake_until',
  bakeExtensions: 'bake_extensions',
  approvedWave: 'approved_wave',
  gateResults: 'gate_results',
  endedAt: 'ended_at',
};

export function updateRollout(db: Db, id: string, from: readonly RolloutState[], patch: RolloutPatch, at: number, wave?: number): RolloutRecord | undefined {
  return db
    .transaction((): RolloutRecord | undefined => {
      const sets = ['updated_at = ?'];
      const args: (string | number | null)[] = [at];
      for (const [k, v] of Object.entries(patch) as [keyof RolloutPatch, string | number | null | undefined][]) {
        if (v === undefined) continue;
        sets.push(`${PATCH_COLUMNS[k]} = ?`);
        args.push(v);
      }
      const where = [`id = ?`, `state IN (${placeholders(from.length)})`];
      args.push(id, ...from);
      if (wave !== undefined) {
        where.push('current_wave = ?');
        args.push(wave);
      }
      if (db.prepare(`UPDATE rollouts SET ${sets.join(', ')} WHERE ${where.join(' AND ')}`).run(...args).changes !== 1) return undefined;
      return toRollout(rolloutRow(db, id) as RolloutRow);
    })
    .immediate();
}

export function startWave(db: Db, id: string, from: number, to: number, at: number): boolean {
  return db
    .transaction((): boolean => {
      const changed = db
        .prepare(
          `UPDATE rollouts SET current_wave = ?, wave_started_at = ?, bake_started_at = NULL, bake_until = NULL, bake_extensions = 0, updated_at = ?
           WHERE id = ? AND current_wave = ? AND state = 'running'`,
        )
        .run(to, at, at, id, from).changes;
      if (changed !== 1) return false;
      assignWave(db, rolloutRow(db, id) as RolloutRow, to, at);
      return true;
    })
    .immediate();
}

export function addRolloutDevices(db: Db, id: string, devices: readonly { deviceId: string; wave: number }[], at: number): number {
  return db
    .transaction((): number => {
      const r = rolloutRow(db, id);
      if (!r || !(ACTIVE.includes(r.state) || r.state === 'completed')) return 0;
      const ins = db.prepare(`INSERT OR IGNORE INTO rollout_devices (rollout_id, device_id, wave, state) VALUES (?, ?, ?, 'pending')`);
      let added = 0;
      const started: string[] = [];
      for (const d of devices) {
        if (ins.run(id, d.deviceId, d.wave).changes !== 1) continue;
        added++;
        if (d.wave <= r.current_wave) started.push(d.deviceId);
      }
      if (started.length) assignWave(db, r, r.current_wave, at, started);
      return added;
    })
    .immediate();
}

export function rolloutDevices(db: Db, id: string): RolloutDeviceRecord[] {
  return (db.prepare('SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id').all(id) as RolloutDeviceRow[]).map(toRolloutDevice);
}

export function rolloutsOfDevice(db: Db, deviceId: string, model: string, version?: string): RolloutDeviceRecord[] {
  const rows = db
    .prepare(
      `SELECT d.* FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id
       WHERE d.device_id = ? AND r.model = ? AND (? IS NULL OR r.version = ?) ORDER BY r.created_at DESC, r.rowid DESC`,
    )
    .all(deviceId, model, version ?? null, version ?? null) as RolloutDeviceRow[];
  return rows.map(toRolloutDevice);
}

export function transitionDevice(db: Db, t: DeviceTransition): boolean {
  return db
    .transaction((): boolean => {
      const terminal = TERMINAL_DEVICE.includes(t.to);
      const changed =
        db
          .prepare(
            `UPDATE rollout_devices SET state = ?, detail = COALESCE(?, detail), finished_at = CASE WHEN ? THEN ? ELSE finished_at END,
               from_version = COALESCE(from_version, ?), from_counter = COALESCE(from_counter, ?)
             WHERE rollout_id = ? AND device_id = ? AND state IN (${placeholders(t.from.length)})`,
          )
          .run(t.to, t.detail ?? null, terminal ? 1 : 0, t.at, t.fromVersion?.version ?? null, t.fromVersion?.counter ?? null, t.rolloutId, t.deviceId, ...t.from)
          .changes === 1;
      if (t.history) appendHistory(db, t.history);
      return changed;
    })
    .immediate();
}

export function markDispatched(db: Db, rolloutId: string, deviceId: string, at: number, from: { version: string; counter: number } | null, commandId: string): boolean {
  return db
    .transaction((): boolean => {
      const row = db.prepare('SELECT * FROM rollout_devices WHERE rollout_id = ? AND device_id = ?').get(rolloutId, deviceId) as RolloutDeviceRow | undefined;
      if (!row || (row.state !== 'pending' && row.state !== 'dispatched')) return false;
      db.prepare(
        `UPDATE rollout_devices SET state = 'dispatched', attempts = attempts + 1, dispatched_at = ?,
           from_version = COALESCE(from_version, ?), from_counter = COALESCE(from_counter, ?)
         WHERE rollout_id = ? AND device_id = ?`,
      ).run(at, from?.version ?? null, from?.counter ?? null, rolloutId, deviceId);
      const r = rolloutRow(db, rolloutId) as RolloutRow;
      appendHistory(db, {
        deviceId,
        ts: at,
        event: 'command_sent',
        name: r.model,
        version: r.version,
        counter: r.counter,
        rolloutId,
        details: { command: 'model.install', id: commandId, attempt: row.attempts + 1 },
      });
      return true;
    })
    .immediate();
}

/** Puts the desired model of the rollout's devices back to what each served before. */
function revertDesired(db: Db, r: RolloutRow, devices: readonly RolloutDeviceRow[], at: number): void {
  const put = db.prepare(
    `UPDATE desired_models SET version = ?, counter = ?, rollout_id = NULL, updated_at = ? WHERE device_id = ? AND name = ? AND rollout_id = ?`,
  );
  const del = db.prepare('DELETE FROM desired_models WHERE device_id = ? AND name = ? AND rollout_id = ?');
  for (const d of devices) {
    let prev = d.from_version !== null && d.from_counter !== null ? { version: d.from_version, counter: d.from_counter } : undefined;
    if (!prev) {
      const state = modelStateOf(db, d.device_id).find((s) => s.name === r.model);
      if (state?.active && state.active.version !== r.version) prev = state.active;
    }
    if (prev) put.run(prev.version, prev.counter, at, d.device_id, r.model, r.id);
    else del.run(d.device_id, r.model, r.id);
  }
}

export function rollbackRollout(db: Db, id: string, from: readonly RolloutState[], at: number, reason: string): RolloutDeviceRecord[] | undefined {
  return db
    .transaction((): RolloutDeviceRecord[] | undefined => {
      const changed = db
        .prepare(`UPDATE rollouts SET state = 'rolled_back', reason = ?, ended_at = ?, updated_at = ? WHERE id = ? AND state IN (${placeholders(from.length)})`)
        .run(reason, at, at, id, ...from).changes;
      if (changed !== 1) return undefined;
      const r = rolloutRow(db, id) as RolloutRow;
      const devices = db.prepare('SELECT * FROM rollout_devices WHERE rollout_id = ?').all(id) as RolloutDeviceRow[];
      revertDesired(db, r, devices, at);
      return devices.filter((d) => d.state === 'succeeded' || d.state === 'dispatched').map(toRolloutDevice);
    })
    .immediate();
}

export function abortRollout(db: Db, id: string, from: readonly RolloutState[], at: number, reason: string): RolloutRecord | undefined {
  return db
    .transaction((): RolloutRecord | undefined => {
      const changed = db
        .prepare(`UPDATE rollouts SET state = 'aborted', reason = ?, ended_at = ?, updated_at = ? WHERE id = ? AND state IN (${placeholders(from.length)})`)
        .run(reason, at, at, id, ...from).changes;
      if (changed !== 1) return undefined;
      const r = rolloutRow(db, id) as RolloutRow;
      const notInstalled = db.prepare(`SELECT * FROM rollout_devices WHERE rollout_id = ? AND state <> 'succeeded'`).all(id) as RolloutDeviceRow[];
      revertDesired(db, r, notInstalled, at);
      return toRollout(r);
    })
    .immediate();
}

export function desiredModels(db: Db, deviceId: string): DesiredModel[] {
  const rows = db.prepare('SELECT * FROM desired_models WHERE device_id = ? ORDER BY name').all(deviceId) as {
    device_id: string;
    name: string;
    version: string;
    counter: number;
    rollout_id: string | null;
  }[];
  return rows.map((r) => ({ deviceId: r.device_id, name: r.name, version: r.version, counter: r.counter, rolloutId: r.rollout_id }));
}

export function deviceHistory(db: Db, deviceId: string): HistoryRecord[] {
  const rows = db.prepare('SELECT * FROM device_history WHERE device_id = ? ORDER BY id').all(deviceId) as {
    id: number;
    device_id: string;
    ts: number;
    event: string;
    name: string | null;
    version: string | null;
    counter: number | null;
    rollout_id: string | null;
    details: string;
  }[];
  return rows.map((r) => ({
    id: r.id,
    deviceId: r.device_id,
    ts: r.ts,
    event: r.event,
    ...(r.name === null ? {} : { name: r.name }),
    ...(r.version === null ? {} : { version: r.version }),
    ...(r.counter === null ? {} : { counter: r.counter }),
    ...(r.rollout_id === null ? {} : { rolloutId: r.rollout_id }),
    details: parseStored(DetailsSchema, r.details, {}),
  }));
}

function modelStateOf(db: Db, deviceId: string): ModelSlot[] {
  const r = db.prepare('SELECT model_state FROM principals WHERE id = ?').get(deviceId) as { model_state: string | null } | undefined;
  return parseStored(ModelStateSchema, r?.model_state ?? null, []);
}

interface CandidateRow {
  id: string;
  grp: string;
  labels: string;
  online: number;
  model_state: string | null;
}
const toCandidate = (r: CandidateRow): RolloutCandidate => ({
  id: r.id,
  group: r.grp,
  labels: parseStored(LabelsSchema, r.labels, {}),
  online: r.online === 1,
  modelState: parseStored(ModelStateSchema, r.model_state, []),
});

export function listRolloutCandidates(db: Db): RolloutCandidate[] {
  return (db.prepare(`SELECT id, grp, labels, online, model_state FROM principals WHERE kind = 'device' ORDER BY id`).all() as CandidateRow[]).map(toCandidate);
}

export function getRolloutCandidate(db: Db, id: string): RolloutCandidate | undefined {
  const r = db.prepare(`SELECT id, grp, labels, online, model_state FROM principals WHERE kind = 'device' AND id = ?`).get(id) as CandidateRow | undefined;
  return r && toCandidate(r);
}

export function healthWindows(db: Db, deviceIds: readonly string[], model: string, from: number, to: number): { deviceId: string; window: HealthWindow }[] {
  // The telemetry primary key (device_id, stream, ...) narrows each device to its health
  // stream; the window filters run on that small slice.
  const q = db.prepare(
    `SELECT body FROM telemetry WHERE device_id = ? AND stream = ? AND kind = ?
       AND json_extract(body, '$.model') = ? AND json_extract(body, '$.windowStart') >= ? AND json_extract(body, '$.windowStart') < ?`,
  );
  const out: { deviceId: string; window: HealthWindow }[] = [];
  for (const id of deviceIds) {
    for (const row of q.all(id, HEALTH_STREAM, HEALTH_KIND, model, from, to) as { body: string }[]) {
      const w = parseStored(HealthWindowSchema.nullable(), row.body, null);
      if (w) out.push({ deviceId: id, window: w });
    }
  }
  return out;
}
