/**
 * The rollout engine: runs staged rollouts wave by wave (issue #3, ARCHITECTURE §4). It owns the
 * decisions (start a wave, dispatch installs, judge a wave, bake with behaviour gates, stop on a
 * breach, roll back) and keeps none of its state only in memory: every step is a guarded
 * transaction in the store (hub/store/sqlite-rollouts.ts), so a hub killed mid-rollout resumes
 * where it was on restart and counts no device twice. In memory there are only wake-up hints
 * (which models have new health data).
 *
 * Inputs, all idempotent: command results (ingest.onCommandResult), model events and health
 * windows in telemetry (ingest.onRecords, only records stored for the first time) and hellos
 * with the agent's model state (ingest.onHello → reconcile). A tick runs every
 * `rollouts.tickMs` and right after any input (a nudge); ticks and inputs run one at a time
 * through one queue, so decisions never interleave.
 *
 * Bake: a wave bakes for bakeMs after its last online device reported. A gate `fail` at any
 * point of the bake is a breach at once. An `insufficient` verdict at the end (too few
 * inferences to compare) extends the bake by another bakeMs, at most twice (3× in all); after
 * that the wave passes with a logged warning and a `pass_insufficient` gate result, because a
 * fleet whose devices see little traffic must still be updatable, and the per-device probation
 * of the agent still guards each device.
 *
 * Offline devices do not hold a wave back: their desired state is set when their wave starts
 * and they install when they reconnect (hello → reconcile), even after the rollout completed.
 * A wave completes when none of its online devices is outstanding and at least one reported, or
 * `waveTimeoutMs` after its last dispatch if at least one reported; when devices were asked and
 * none answered by then, the rollout pauses with that reason. A wave nobody could be asked in
 * (all offline, or outside their maintenance window) just waits.
 */
import { randomBytes } from 'node:crypto';
import { Counter, Gauge, type Registry } from 'prom-client';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, type Command, type CommandResult, type Hello, type TelemetryRecord } from '../../shared/protocol.ts';
import {
  HEALTH_KIND,
  INSTALL_COMMAND,
  InstallOutcomeSchema,
  MODEL_EVENT_KIND,
  ModelEventSchema,
  ROLLBACK_COMMAND,
  type InstallArgs,
  type ModelEvent,
  type RollbackArgs,
} from '../../shared/updates.ts';
import type { MessageBus } from '../broker/bus.ts';
import type { CommandSender } from '../commands/sender.ts';
import type { HistoryEntry, HistoryRecord, HubStore, RolloutCandidate, RolloutDeviceRecord, RolloutDeviceState, RolloutRecord, RolloutState } from '../store/store.ts';
import { evaluateGate, type GateAction, type GateResult } from './gates.ts';
import { assignWaves, joinerWave, planWaves } from './planner.ts';
import { matchesTarget } from './selector.ts';
import { RolloutSpecSchema, type RolloutSpec } from './spec.ts';
import { rolloutView, type RolloutStatus } from './view.ts';
import type { MaintenanceWindows } from './windows.ts';

export interface RolloutEngineOptions {
  store: HubStore;
  bus: MessageBus;
  /** Signs and publishes commands (issue #14); `bus` is still asked who is connected. */
  commands: CommandSender;
  windows: MaintenanceWindows;
  log: Logger;
  registry: Registry;
  now?: () => number;
  tickMs: number;
  /** A wave whose online devices have not all reported by then completes anyway. */
  waveTimeoutMs: number;
  /** An install without any answer is sent again (same id) after this long. */
  commandRetryMs: number;
}

export type RolloutAction = 'pause' | 'resume' | 'abort' | 'approve';

const DEVICE_STATES: readonly RolloutDeviceState[] = ['pending', 'dispatched', 'succeeded', 'failed', 'rolled_back'];
const REPORTED: readonly RolloutDeviceState[] = ['succeeded', 'failed', 'rolled_back'];
const OUTSTANDING: readonly RolloutDeviceState[] = ['pending', 'dispatched'];
const ACTIVE: readonly RolloutState[] = ['running', 'paused'];
/** The bake may be extended twice for lack of data (3× bakeMs in all). */
const MAX_BAKE_EXTENSIONS = 2;

export const installCommandId = (rolloutId: string, counter: number): string => `install-${rolloutId}-${counter}`;
export const rollbackCommandId = (rolloutId: string, counter: number): string => `rollback-${rolloutId}-${counter}`;
const COMMAND_ID = /^(install|rollback)-(.+)-(\d+)$/;

/** Key under which one model step of one device is recorded once, whoever reports it. */
const modelEventKey = (deviceId: string, name: string, version: string, counter: number, event: string): string =>
  `model:${deviceId}:${name}:${version}:${counter}:${event}`;

/** Why the wave's reporting devices fall short of the success threshold, if they do. */
function waveShortfall(r: RolloutRecord, spec: RolloutSpec, wave: readonly RolloutDeviceRecord[]): string | undefined {
  const reported = wave.filter((d) => REPORTED.includes(d.state));
  const ok = reported.filter((d) => d.state === 'succeeded').length;
  if (reported.length === 0 || ok / reported.length >= spec.successThreshold) return undefined;
  return `wave ${r.currentWave}: ${ok} of ${reported.length} reporting devices succeeded (< ${spec.successThreshold})`;
}

export function parseSpec(text: string): RolloutSpec {
  return RolloutSpecSchema.parse(JSON.parse(text));
}

export class RolloutEngine implements Component {
  readonly name = 'rollouts';
  readonly #o: RolloutEngineOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  #queue: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #nudged = false;
  /** Models with health windows stored since their last gate check (a hint only). */
  readonly #healthDirty = new Set<string>();
  readonly #commands: Counter<'command'>;
  readonly #verdicts: Counter<'verdict'>;

  constructor(opts: RolloutEngineOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    const registers = [opts.registry];
    const store = opts.store;
    new Gauge({
      name: 'edgefleet_hub_rollout_devices',
      help: 'Devices of active rollouts (and of the 10 most recent ended ones), by rollout and state.',
      labelNames: ['rollout', 'state'],
      registers,
      async collect() {
        this.reset();
        const all = await store.listRollouts();
        const shown = [...all.filter((r) => ACTIVE.includes(r.state)), ...all.filter((r) => !ACTIVE.includes(r.state)).slice(0, 10)];
        for (const r of shown) {
          const devs = await store.rolloutDevices(r.id);
          for (const s of DEVICE_STATES) this.set({ rollout: r.id, state: s }, devs.filter((d) => d.state === s).length);
        }
      },
    });
    this.#commands = new Counter({
      name: 'edgefleet_hub_rollout_commands_total',
      help: 'Commands sent to devices by rollouts, by command (install, rollback).',
      labelNames: ['command'],
      registers,
    });
    this.#verdicts = new Counter({
      name: 'edgefleet_hub_rollout_gate_verdicts_total',
      help: 'Behaviour gate evaluations that decided something, by verdict (pass, fail, insufficient).',
      labelNames: ['verdict'],
      registers,
    });
  }

  start(_signal: AbortSignal): Promise<void> {
    this.#running = true;
    this.#timer = setInterval(() => this.nudge(), this.#o.tickMs);
    this.nudge();
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.#running = false;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#queue;
    this.#o.windows.close();
  }

  // --- serialisation ---------------------------------------------------------------------------

  /** Runs `fn` after everything queued before it; failures are returned to the caller. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn);
    this.#queue = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  /** Queues a tick unless one is already queued. */
  nudge(): void {
    if (!this.#running || this.#nudged) return;
    this.#nudged = true;
    void this.#serial(async () => {
      this.#nudged = false;
      if (this.#running) await this.#tickAll();
    }).catch((err: unknown) => this.#log.error({ err: toEdgefleetError(err) }, 'rollout tick failed'));
  }

  /** One tick now (tests drive a fake clock with this); resolves when it is done. */
  tick(): Promise<void> {
    return this.#serial(() => this.#tickAll());
  }

  #input(what: string, fn: () => Promise<void>): void {
    if (!this.#running) return;
    void this.#serial(fn)
      .then(() => this.nudge())
      .catch((err: unknown) => this.#log.error({ err: toEdgefleetError(err), input: what }, 'rollout input failed'));
  }

  // --- API -------------------------------------------------------------------------------------

  async create(body: unknown): Promise<RolloutStatus> {
    const parsed = RolloutSpecSchema.safeParse(body);
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; '));
    const spec = parsed.data;
    const names = [spec.model, ...(spec.with ?? []).map((w) => w.model)];
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice !== undefined) throw new EdgefleetError(ErrorCode.BAD_INPUT, `with: model ${twice} is named twice: a rollout installs one version of each model`);
    const id = await this.#serial(async () => {
      const model = await this.#o.store.getModel(spec.model, spec.version);
      if (!model) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no release ${spec.model}@${spec.version}`);
      // Every release of the unit must exist now, and all of them fit in one install command.
      let releaseBytes = model.release.length;
      for (const w of spec.with ?? []) {
        const m = await this.#o.store.getModel(w.model, w.version);
        if (!m) throw new EdgefleetError(ErrorCode.NOT_FOUND, `with: no release ${w.model}@${w.version}`);
        releaseBytes += m.release.length;
      }
      if (releaseBytes > MAX_PAYLOAD_BYTES - 65_536) {
        throw new EdgefleetError(ErrorCode.BAD_INPUT, `with: the releases' signed manifests take ${releaseBytes} bytes, more than one install command carries (${MAX_PAYLOAD_BYTES - 65_536})`);
      }
      const matching = (await this.#o.store.listRolloutCandidates()).filter((d) => matchesTarget(spec.target, d));
      if (matching.length === 0) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'no registered device matches the target');
      const plan = planWaves(spec.waves, matching.length);
      const rolloutId = `ro-${randomBytes(5).toString('hex')}`;
      await this.#o.store.createRollout(
        { id: rolloutId, model: spec.model, version: spec.version, counter: model.counter, sha256: model.sha256, spec: JSON.stringify(spec), plan, createdAt: this.#now() },
        assignWaves(matching, plan),
      );
      this.#log.info({ rollout: rolloutId, model: spec.model, version: spec.version, with: spec.with, devices: matching.length, plan }, 'rollout created');
      return rolloutId;
    });
    this.nudge();
    return this.status(id);
  }

  async list(): Promise<RolloutStatus[]> {
    const out: RolloutStatus[] = [];
    for (const r of await this.#o.store.listRollouts()) out.push(rolloutView(r, await this.#o.store.rolloutDevices(r.id), false));
    return out;
  }

  async status(id: string): Promise<RolloutStatus> {
    const r = await this.#o.store.getRollout(id);
    if (!r) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no rollout ${id}`);
    return rolloutView(r, await this.#o.store.rolloutDevices(id), true);
  }

  async history(deviceId: string): Promise<HistoryRecord[]> {
    if (!(await this.#o.store.getDevice(deviceId))) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no device ${deviceId}`);
    return this.#o.store.deviceHistory(deviceId);
  }

  async act(id: string, action: RolloutAction): Promise<RolloutStatus> {
    await this.#serial(async () => {
      const r = await this.#o.store.getRollout(id);
      if (!r) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no rollout ${id}`);
      const spec = parseSpec(r.spec);
      const now = this.#now();
      const refuse = (why: string): never => {
        throw new EdgefleetError(ErrorCode.CONFLICT, `cannot ${action} rollout ${id}: ${why}`, { details: { state: r.state } });
      };
      let ok: unknown;
      switch (action) {
        case 'pause':
          if (r.state !== 'running') refuse(`it is ${r.state}`);
          ok = await this.#o.store.updateRollout(id, ['running'], { state: 'paused', reason: 'paused by an operator' }, now);
          break;
        case 'resume':
          if (r.state !== 'paused') refuse(`it is ${r.state}`);
          // The wave timeout counts from the resume: a paused rollout's devices were not asked.
          ok = await this.#o.store.updateRollout(id, ['paused'], { state: 'running', reason: null, waveStartedAt: now }, now);
          break;
        case 'abort':
          if (!ACTIVE.includes(r.state)) refuse(`it is ${r.state}`);
          ok = await this.#o.store.abortRollout(id, ACTIVE, now, 'aborted by an operator');
          break;
        case 'approve':
          if (!ACTIVE.includes(r.state)) refuse(`it is ${r.state}`);
          if (spec.approval !== 'each-wave') refuse('it does not need approvals (approval: none)');
          if (r.currentWave >= r.plan.length - 1) refuse('it is in its last wave');
          if (r.approvedWave > r.currentWave) refuse(`wave ${r.currentWave + 1} is already approved`);
          ok = await this.#o.store.updateRollout(id, ACTIVE, { approvedWave: r.currentWave + 1 }, now, r.currentWave);
          break;
      }
      if (!ok) refuse('its state changed meanwhile');
      this.#log.info({ rollout: id, action }, 'rollout action');
    });
    this.nudge();
    return this.status(id);
  }

  // --- inputs ----------------------------------------------------------------------------------

  onCommandResult(deviceId: string, result: CommandResult): void {
    const m = COMMAND_ID.exec(result.id);
    if (!m) return;
    const [, kind, rolloutId = '', counterText = '0'] = m;
    this.#input('command result', () => this.#commandResult(deviceId, kind === 'install' ? 'install' : 'rollback', rolloutId, Number(counterText), result));
  }

  /** Telemetry records stored for the first time (only kinds `model` and `health` matter). */
  onRecords(deviceId: string, records: readonly TelemetryRecord[]): void {
    const events: ModelEvent[] = [];
    for (const rec of records) {
      if (rec.kind === HEALTH_KIND) {
        const model = rec.body.model;
        if (typeof model === 'string') this.#healthDirty.add(model);
      } else if (rec.kind === MODEL_EVENT_KIND) {
        const e = ModelEventSchema.safeParse(rec.body);
        if (e.success) events.push(e.data);
        else this.#log.warn({ deviceId, seq: rec.seq }, 'model event does not match its schema');
      }
    }
    if (events.length) this.#input('model events', async () => {
      for (const e of events) await this.#modelEvent(deviceId, e);
    });
    else if (records.some((r) => r.kind === HEALTH_KIND)) this.nudge();
  }

  onHello(hello: Hello): void {
    this.#input('hello', () => this.#reconcile(hello.deviceId));
  }

  // --- outcomes --------------------------------------------------------------------------------

  async #outcome(deviceId: string, rolloutId: string | undefined, name: string, version: string, to: RolloutDeviceState, history: HistoryEntry, fromVersion?: { version: string; counter: number }, detail?: string): Promise<void> {
    const store = this.#o.store;
    let target = rolloutId;
    const named = target === undefined ? undefined : await store.getRollout(target);
    if (named && named.model !== name) {
      // A release installed with the rollout's own (spec `with`): the agent reports the unit's
      // outcome on the rollout's own release too, which alone moves the device's state.
      await store.appendHistory({ ...history, rolloutId: named.id });
      return;
    }
    if (target === undefined || !named) target = (await store.rolloutsOfDevice(deviceId, name, version))[0]?.rolloutId;
    if (target === undefined) {
      await store.appendHistory(history);
      return;
    }
    const from: readonly RolloutDeviceState[] = to === 'rolled_back' ? ['pending', 'dispatched', 'succeeded'] : OUTSTANDING;
    const changed = await store.transitionDevice({ rolloutId: target, deviceId, from, to, at: this.#now(), detail, fromVersion, history: { ...history, rolloutId: target } });
    if (changed) this.#log.info({ rollout: target, deviceId, state: to }, 'rollout device outcome');
  }

  async #commandResult(deviceId: string, kind: 'install' | 'rollback', rolloutId: string, counter: number, result: CommandResult): Promise<void> {
    const r = await this.#o.store.getRollout(rolloutId);
    if (!r || r.counter !== counter) return;
    const outcome = InstallOutcomeSchema.safeParse(result.result);
    const at = this.#now();
    const base = { deviceId, ts: at, name: r.model, version: r.version, counter: r.counter, rolloutId };
    if (kind === 'install') {
      if (result.ok && outcome.success && (outcome.data.state === 'active' || outcome.data.state === 'already_active')) {
        await this.#outcome(deviceId, rolloutId, r.model, r.version, 'succeeded', {
          ...base,
          event: 'installed',
          details: { source: 'command', state: outcome.data.state },
          dedupeKey: modelEventKey(deviceId, r.model, r.version, r.counter, 'installed'),
        });
      } else if (!result.ok) {
        const error = result.error ?? { code: 'UNKNOWN', message: 'no error given' };
        await this.#outcome(
          deviceId,
          rolloutId,
          r.model,
          r.version,
          'failed',
          { ...base, event: 'rejected', details: { source: 'command', ...error }, dedupeKey: modelEventKey(deviceId, r.model, r.version, r.counter, 'rejected') },
          undefined,
          `${error.code}: ${error.message}`.slice(0, 500),
        );
      }
      return;
    }
    if (result.ok && outcome.success && outcome.data.state === 'rolled_back') {
      await this.#outcome(deviceId, rolloutId, r.model, r.version, 'rolled_back', {
        ...base,
        event: 'rolled_back',
        details: { source: 'command', by: 'hub' },
        dedupeKey: modelEventKey(deviceId, r.model, r.version, r.counter, 'rolled_back'),
      });
    } else {
      await this.#o.store.appendHistory({ ...base, event: 'rollback_answered', details: { ok: result.ok, result: result.result ?? null, error: result.error ?? null } });
    }
  }

  async #modelEvent(deviceId: string, e: ModelEvent): Promise<void> {
    const at = this.#now();
    const { event: _event, name: _name, version: _version, counter: _counter, rolloutId: _rolloutId, ...rest } = e;
    const history: HistoryEntry = {
      deviceId,
      ts: at,
      event: e.event,
      name: e.name,
      version: e.version,
      counter: e.counter,
      ...(e.rolloutId ? { rolloutId: e.rolloutId } : {}),
      details: { source: 'event', ...rest },
      dedupeKey: modelEventKey(deviceId, e.name, e.version, e.counter, e.event),
    };
    const detail = e.code || e.message ? `${e.phase ?? ''} ${e.code ?? ''}: ${e.message ?? ''}`.trim().slice(0, 500) : undefined;
    switch (e.event) {
      case 'installed':
        return this.#outcome(deviceId, e.rolloutId, e.name, e.version, 'succeeded', history, e.previous && { version: e.previous.version, counter: e.previous.counter });
      case 'rejected':
        return this.#outcome(deviceId, e.rolloutId, e.name, e.version, 'failed', history, undefined, detail);
      case 'rolled_back':
        return this.#outcome(deviceId, e.rolloutId, e.name, e.version, 'rolled_back', history, undefined, detail);
      case 'probation_passed':
        await this.#o.store.appendHistory(history);
    }
  }

  /** Hello: compare the device's reported model state with its desired state (contract). */
  async #reconcile(deviceId: string): Promise<void> {
    const store = this.#o.store;
    const device = await store.getRolloutCandidate(deviceId);
    if (!device) return;
    const now = this.#now();
    const desired = await store.desiredModels(deviceId);
    for (const d of desired) {
      const slot = device.modelState.find((s) => s.name === d.name);
      const r = d.rolloutId === null ? undefined : await store.getRollout(d.rolloutId);
      const rd = r && (await store.rolloutsOfDevice(deviceId, r.model, r.version)).find((x) => x.rolloutId === r.id);
      const base = { deviceId, ts: now, name: d.name, version: d.version, counter: d.counter, ...(r ? { rolloutId: r.id } : {}) };
      if (slot?.active?.version === d.version) {
        if (r && rd && OUTSTANDING.includes(rd.state)) {
          await this.#outcome(deviceId, r.id, d.name, d.version, 'succeeded', {
            ...base,
            event: 'installed',
            details: { source: 'hello' },
            dedupeKey: modelEventKey(deviceId, d.name, d.version, d.counter, 'installed'),
          });
        }
        continue;
      }
      const failed = slot?.failed.find((f) => f.counter === d.counter);
      if (failed) {
        if (r && rd && OUTSTANDING.includes(rd.state)) {
          const event = failed.phase === 'probation' || failed.phase === 'rollback' ? 'rolled_back' : 'rejected';
          await this.#outcome(
            deviceId,
            r.id,
            d.name,
            d.version,
            event === 'rejected' ? 'failed' : 'rolled_back',
            { ...base, event, details: { source: 'hello', phase: failed.phase, code: failed.code, message: failed.message }, dedupeKey: modelEventKey(deviceId, d.name, d.version, d.counter, event) },
            undefined,
            `${failed.phase} ${failed.code}: ${failed.message}`.slice(0, 500),
          );
        }
        continue;
      }
      if (!r || !rd || d.counter <= (slot?.highestCounter ?? 0) || slot?.installing?.counter === d.counter) continue;
      if (rd.state === 'dispatched' && (r.state === 'running' || r.state === 'completed')) {
        // Sent before (maybe lost with the connection): the same id again; the agent de-duplicates.
        if (this.#o.windows.isOpen(device.group, now)) await this.#sendInstall(r, rd, device, now);
      } else if (rd.state === 'pending' && r.state === 'completed' && rd.assignedAt !== null) {
        // A device that was offline while its wave ran: its rollout is done, so no cap applies.
        if (this.#o.windows.isOpen(device.group, now)) await this.#sendInstall(r, rd, device, now);
      }
    }
    await this.#rollbackIfRolledBack(device, desired, now);
  }

  /** A device still running a version the hub rolled back gets `model.rollback`. */
  async #rollbackIfRolledBack(device: RolloutCandidate, desired: readonly { name: string; version: string }[], now: number): Promise<void> {
    for (const slot of device.modelState) {
      if (!slot.active) continue;
      const active = slot.active.version;
      if (desired.some((d) => d.name === slot.name && d.version === active)) continue;
      for (const rd of await this.#o.store.rolloutsOfDevice(device.id, slot.name, active)) {
        const r = await this.#o.store.getRollout(rd.rolloutId);
        if (r?.state !== 'rolled_back') continue;
        await this.#sendRollback(r, device.id, r.reason ?? 'rolled back by the hub', now);
        break;
      }
    }
  }

  // --- commands --------------------------------------------------------------------------------

  async #sendInstall(r: RolloutRecord, rd: RolloutDeviceRecord, device: RolloutCandidate, now: number): Promise<void> {
    const model = await this.#o.store.getModel(r.model, r.version);
    if (!model) {
      this.#log.error({ rollout: r.id, model: r.model, version: r.version }, 'the release of a rollout is gone');
      return;
    }
    const spec = parseSpec(r.spec);
    const bundle: NonNullable<InstallArgs['bundle']> = [];
    for (const w of spec.with ?? []) {
      const m = await this.#o.store.getModel(w.model, w.version);
      if (!m) {
        this.#log.error({ rollout: r.id, model: w.model, version: w.version }, 'a release the rollout installs with its own is gone');
        return;
      }
      bundle.push({ release: JSON.parse(m.release) as unknown, artifactPath: `/v1/artifacts/${m.sha256}` });
    }
    const active = device.modelState.find((s) => s.name === r.model)?.active;
    const from = active && active.version !== r.version ? { version: active.version, counter: active.counter } : null;
    const id = installCommandId(r.id, r.counter);
    // Recorded first: the hub never has a command out that its database does not know of.
    if (!(await this.#o.store.markDispatched(r.id, device.id, now, from, id))) return;
    const args: InstallArgs = {
      release: JSON.parse(model.release) as unknown,
      artifactPath: `/v1/artifacts/${model.sha256}`,
      rolloutId: r.id,
      ...(spec.probationMs === undefined ? {} : { probationMs: spec.probationMs }),
      ...(bundle.length ? { bundle } : {}),
    };
    await this.#publish(device.id, { v: PROTOCOL_VERSION, type: 'command', id, ts: now, name: INSTALL_COMMAND, args }, 'install');
  }

  async #sendRollback(r: RolloutRecord, deviceId: string, reason: string, now: number): Promise<void> {
    const id = rollbackCommandId(r.id, r.counter);
    const args: RollbackArgs = { name: r.model, version: r.version, reason: reason.slice(0, 500), rolloutId: r.id };
    await this.#o.store.appendHistory({
      deviceId,
      ts: now,
      event: 'command_sent',
      name: r.model,
      version: r.version,
      counter: r.counter,
      rolloutId: r.id,
      details: { command: ROLLBACK_COMMAND, id, reason: args.reason },
    });
    await this.#publish(deviceId, { v: PROTOCOL_VERSION, type: 'command', id, ts: now, name: ROLLBACK_COMMAND, args }, 'rollback');
  }

  async #publish(deviceId: string, cmd: Command, kind: 'install' | 'rollback'): Promise<void> {
    try {
      await this.#o.commands.send(deviceId, cmd);
      this.#commands.inc({ command: kind });
    } catch (err) {
      // Recorded as sent; the retry timer or the device's next hello sends it again.
      this.#log.warn({ err: toEdgefleetError(err), deviceId, id: cmd.id }, 'cannot publish command');
    }
  }

  // --- tick ------------------------------------------------------------------------------------

  async #tickAll(): Promise<void> {
    // Active rollouts, and per model the newest rollout if it completed: it keeps its target up
    // to date (devices that match later, devices that were offline) until the next one starts.
    const newest = new Set<string>();
    const rollouts = (await this.#o.store.listRollouts()).filter((r) => {
      const first = !newest.has(r.model);
      newest.add(r.model);
      return ACTIVE.includes(r.state) || (first && r.state === 'completed');
    });
    if (rollouts.length === 0) {
      this.#healthDirty.clear();
      return;
    }
    const candidates = await this.#o.store.listRolloutCandidates();
    const dirty = new Set(this.#healthDirty);
    this.#healthDirty.clear();
    for (const r of rollouts) {
      try {
        await this.#tickRollout(r, candidates, dirty.has(r.model));
      } catch (err) {
        this.#log.error({ err: toEdgefleetError(err), rollout: r.id }, 'rollout step failed');
      }
    }
  }

  async #tickRollout(r: RolloutRecord, candidates: readonly RolloutCandidate[], healthDirty: boolean): Promise<void> {
    const store = this.#o.store;
    const spec = parseSpec(r.spec);
    const now = this.#now();
    const byId = new Map(candidates.map((c) => [c.id, c]));
    let devices = await store.rolloutDevices(r.id);

    // Devices registered (or relabelled) after creation that now match.
    const known = new Set(devices.map((d) => d.deviceId));
    const joiners = candidates.filter((c) => !known.has(c.id) && matchesTarget(spec.target, c));
    if (joiners.length) {
      const wave = joinerWave(r.plan);
      const added = await store.addRolloutDevices(r.id, joiners.map((c) => ({ deviceId: c.id, wave })), now);
      if (added) this.#log.info({ rollout: r.id, devices: joiners.map((c) => c.id), wave }, 'devices joined the rollout');
      devices = await store.rolloutDevices(r.id);
    }
    if (r.state === 'completed') return this.#dispatch(r, spec, devices, byId, now);
    if (r.state !== 'running') return;

    // Abort threshold over the whole rollout.
    const attempted = devices.filter((d) => REPORTED.includes(d.state)).length;
    const failedAll = devices.filter((d) => d.state === 'failed' || d.state === 'rolled_back').length;
    if (attempted >= spec.minSample && failedAll / attempted > spec.abortThreshold) {
      return this.#breach(r, spec, `abort threshold: ${failedAll} of ${attempted} devices failed (> ${spec.abortThreshold})`, now);
    }

    const online = (d: RolloutDeviceRecord): boolean => byId.get(d.deviceId)?.online === true;
    const wave = devices.filter((d) => d.wave === r.currentWave);
    if (r.bakeStartedAt === null) {
      const waiting = wave.filter((d) => OUTSTANDING.includes(d.state) && online(d));
      const reported = wave.filter((d) => REPORTED.includes(d.state));
      // Measured from the wave's last dispatch: time spent waiting for a maintenance window or
      // for an offline device to come back is not the devices' fault.
      const lastActivity = Math.max(r.waveStartedAt, ...wave.map((d) => d.dispatchedAt ?? 0));
      const timedOut = now - lastActivity >= this.#o.waveTimeoutMs;
      if ((waiting.length === 0 && reported.length > 0) || (timedOut && reported.length > 0)) {
        const short = waveShortfall(r, spec, wave);
        if (short) return this.#breach(r, spec, short, now);
        const ok = reported.filter((d) => d.state === 'succeeded').length;
        const next = await store.updateRollout(r.id, ['running'], { bakeStartedAt: now, bakeUntil: now + spec.bakeMs, bakeExtensions: 0 }, now, r.currentWave);
        if (next) {
          this.#log.info({ rollout: r.id, wave: r.currentWave, succeeded: ok, reported: reported.length, timedOut, bakeMs: spec.bakeMs }, 'wave complete, baking');
          r = next;
        }
      } else if (timedOut && reported.length === 0 && wave.some((d) => d.attempts > 0)) {
        await store.updateRollout(r.id, ['running'], { state: 'paused', reason: `wave ${r.currentWave}: no device reported within ${this.#o.waveTimeoutMs} ms` }, now);
        this.#log.warn({ rollout: r.id, wave: r.currentWave }, 'rollout paused: no device of the wave reported');
        return;
      }
    }
    if (r.bakeStartedAt !== null) {
      // A device can still fail after its wave completed (a probation rollback on the device, a
      // late offline device): the wave's success ratio holds through the bake too.
      const short = waveShortfall(r, spec, wave);
      if (short) return this.#breach(r, spec, short, now);
      if (r.bakeUntil !== null) {
        const ended = now >= r.bakeUntil;
        if (!ended && !healthDirty) return this.#dispatch(r, spec, devices, byId, now);
        const g = await evaluateGate(store, r, spec, devices, now);
        if (g.verdict === 'fail') {
          await this.#recordGate(r, { ...g, action: 'fail' }, now);
          return this.#breach(r, spec, `wave ${r.currentWave}: behaviour gate failed: ${g.breaches.map((b) => b.detail).join('; ')}`, now);
        }
        if (!ended) return this.#dispatch(r, spec, devices, byId, now);
        if (g.verdict === 'insufficient' && spec.bakeMs > 0 && r.bakeExtensions < MAX_BAKE_EXTENSIONS) {
          await this.#recordGate(r, { ...g, action: 'extend' }, now, { bakeUntil: r.bakeUntil + spec.bakeMs, bakeExtensions: r.bakeExtensions + 1 });
          this.#log.info({ rollout: r.id, wave: r.currentWave, samples: g.samples }, 'gate: too little data, bake extended');
          return this.#dispatch(r, spec, devices, byId, now);
        }
        if (g.verdict === 'insufficient') {
          this.#log.warn({ rollout: r.id, wave: r.currentWave, samples: g.samples }, 'gate: still too little data after extending the bake; the wave passes without a behaviour verdict');
        }
        const passed = await this.#recordGate(r, { ...g, action: g.verdict === 'pass' ? 'pass' : 'pass_insufficient' }, now, { bakeUntil: null });
        if (!passed) return;
        r = passed;
      }
      // Bake passed (bakeUntil cleared): next wave, or done.
      if (r.currentWave >= r.plan.length - 1) {
        await store.updateRollout(r.id, ['running'], { state: 'completed', endedAt: now }, now, r.currentWave);
        this.#log.info({ rollout: r.id }, 'rollout completed');
        // Offline devices still pending install when they reconnect (reconcile).
        return this.#dispatch({ ...r, state: 'completed' }, spec, devices, byId, now);
      }
      if (spec.approval === 'each-wave' && r.approvedWave < r.currentWave + 1) return this.#dispatch(r, spec, devices, byId, now);
      if (await store.startWave(r.id, r.currentWave, r.currentWave + 1, now)) {
        this.#log.info({ rollout: r.id, wave: r.currentWave + 1 }, 'wave started');
        const fresh = await store.getRollout(r.id);
        if (fresh) return this.#dispatch(fresh, spec, await store.rolloutDevices(r.id), byId, now);
      }
      return;
    }
    return this.#dispatch(r, spec, devices, byId, now);
  }

  async #recordGate(r: RolloutRecord, g: GateResult, now: number, patch: { bakeUntil?: number | null; bakeExtensions?: number } = {}): Promise<RolloutRecord | undefined> {
    this.#verdicts.inc({ verdict: g.verdict });
    const results = [...(JSON.parse(r.gateResults) as GateResult[]), g].slice(-50);
    return this.#o.store.updateRollout(r.id, ['running'], { gateResults: JSON.stringify(results), ...patch }, now, r.currentWave);
  }

  /** Installs to online pending devices of started waves, at most maxConcurrent outstanding. */
  async #dispatch(r: RolloutRecord, spec: RolloutSpec, devices: readonly RolloutDeviceRecord[], byId: ReadonlyMap<string, RolloutCandidate>, now: number): Promise<void> {
    if (r.state !== 'running' && r.state !== 'completed') return;
    let inflight = devices.filter((d) => d.state === 'dispatched').length;
    for (const d of devices) {
      const c = byId.get(d.deviceId);
      if (!c?.online || d.assignedAt === null || !this.#o.windows.isOpen(c.group, now)) continue;
      if (d.state === 'dispatched' && d.dispatchedAt !== null && now - d.dispatchedAt >= this.#o.commandRetryMs) {
        await this.#sendInstall(r, d, c, now);
        continue;
      }
      if (d.state !== 'pending' || inflight >= spec.maxConcurrent) continue;
      const slot = c.modelState.find((s) => s.name === r.model);
      const withActive = (spec.with ?? []).every((w) => c.modelState.find((s) => s.name === w.model)?.active?.version === w.version);
      if (slot?.active?.version === r.version && withActive) {
        await this.#outcome(d.deviceId, r.id, r.model, r.version, 'succeeded', {
          deviceId: d.deviceId,
          ts: now,
          event: 'installed',
          name: r.model,
          version: r.version,
          counter: r.counter,
          rolloutId: r.id,
          details: { source: 'state', note: 'already active' },
          dedupeKey: modelEventKey(d.deviceId, r.model, r.version, r.counter, 'installed'),
        });
        continue;
      }
      await this.#sendInstall(r, d, c, now);
      inflight++;
    }
  }

  /** Abort threshold, failed wave or failed gate: pause, or roll back, by the rollout's policy. */
  async #breach(r: RolloutRecord, spec: RolloutSpec, reason: string, now: number): Promise<void> {
    if (spec.onBreach === 'pause') {
      await this.#o.store.updateRollout(r.id, ['running'], { state: 'paused', reason }, now);
      this.#log.warn({ rollout: r.id, reason }, 'rollout paused on breach');
      return;
    }
    const installed = await this.#o.store.rollbackRollout(r.id, ['running', 'paused'], now, reason);
    if (!installed) return;
    this.#log.warn({ rollout: r.id, reason, devices: installed.length }, 'rollout rolled back on breach');
    const rolled = { ...r, state: 'rolled_back' as const, reason };
    for (const d of installed) {
      // Offline devices get it on their next hello (reconcile: active version rolled back).
      if (this.#o.bus.isConnected(d.deviceId) === false) continue;
      await this.#sendRollback(rolled, d.deviceId, reason, now);
    }
  }
}

export type { GateAction };
