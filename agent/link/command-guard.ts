/**
 * The agent's gate for hub commands (issue #14): state-changing commands (shared/command-signing.ts
 * COMMAND_CLASSES) run only when signed by a key in `updates.trustedKeys` for this device, inside
 * their validity window, and never twice. Unsigned, tampered, expired, wrong-device and replayed
 * commands are refused: counted in edgefleet_agent_commands_refused_total{reason}, logged
 * (throttled), and answered with a FORBIDDEN command result (HubLink).
 *
 * Replay memory, in `<dataDir>/command-replay.json` (0600, written durably before the command
 * runs): the nonces of admitted commands until they are past the high-water mark, and the mark
 * itself (`floor`: a command that expired before it is refused). Accepting a command issued at
 * hub time T raises the floor to T - skew. At most MAX_NONCES nonces are kept; dropping the one
 * expiring first raises the floor past it, so forgetting never re-opens a replay. A corrupt file
 * is set aside and the floor starts at the device's clock (nothing already expired passes).
 *
 * No trusted key configured (the demo fleet): read-only commands run, state-changing ones are
 * refused (an install was refused anyway: no key to verify a release). `commands.allowUnsigned`
 * (INSECURE, for a hub older than issue #14) runs unsigned state-changing commands; signed ones
 * are still verified.
 */
import { readFileSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { commandClass, REFUSAL_REASONS, verifyCommand, type CommandCheck, type CommandRefusalReason } from '../../shared/command-signing.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { Command, CommandAuth } from '../../shared/protocol.ts';
import type { TrustedKey } from '../../shared/signing.ts';
import { writeFileDurable } from '../../shared/files.ts';

export const COMMAND_REPLAY_FILE = 'command-replay.json';
/** Nonces remembered at most (commands are rare: a few per rollout per device). */
export const MAX_NONCES = 4096;

const ReplayStateSchema = z.object({
  v: z.literal(1),
  floor: z.number().int().nonnegative(),
  nonces: z.array(z.object({ nonce: z.string().max(64), expiresAt: z.number().int().nonnegative() })).max(MAX_NONCES),
});
type ReplayState = z.infer<typeof ReplayStateSchema>;

export type Refusal = { ok: false; reason: CommandRefusalReason; message: string };
export type Admission = { ok: true; persisted: Promise<void> } | Refusal;

export interface CommandGuardOptions {
  deviceId: string;
  keys: readonly TrustedKey[];
  /** The replay memory file (COMMAND_REPLAY_FILE in the data directory). */
  path: string;
  skewMs: number;
  allowUnsigned: boolean;
  log: Logger;
  registry?: Registry;
  now?: () => number;
}

export class CommandGuard {
  readonly #o: CommandGuardOptions;
  readonly #now: () => number;
  readonly #throttle = new LogThrottle(5000);
  readonly #refused: Counter<'reason'> | undefined;
  #floor: number;
  /** nonce → expiresAt, in admission order. */
  readonly #nonces = new Map<string, number>();
  #writing: Promise<void> = Promise.resolve();

  constructor(opts: CommandGuardOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    const loaded = this.#load();
    this.#floor = loaded.floor;
    for (const n of loaded.nonces) this.#nonces.set(n.nonce, n.expiresAt);
    if (opts.registry) {
      this.#refused = new Counter({
        name: 'edgefleet_agent_commands_refused_total',
        help: 'Hub commands refused before running, by reason (bad_signature, replay, expired, wrong_device, unsigned).',
        labelNames: ['reason'],
        registers: [opts.registry],
      });
      for (const reason of REFUSAL_REASONS) this.#refused.inc({ reason }, 0);
    }
    if (opts.allowUnsigned) opts.log.warn('commands.allowUnsigned is set: unsigned model.install / model.rollback commands run (INSECURE)');
    else if (opts.keys.length === 0) opts.log.warn('no trusted keys (updates.trustedKeys): state-changing hub commands are refused');
  }

  /** The high-water mark (tests and diagnostics). */
  get floor(): number {
    return this.#floor;
  }

  /** Signature, device, window and high-water mark of a command as received. */
  verify(cmd: Command, payload: Buffer): CommandCheck {
    let raw: unknown = cmd;
    if (cmd.auth && commandClass(cmd.name) === 'state_changing') {
      try {
        raw = JSON.parse(payload.toString('utf8'));
      } catch {
        // Unreachable: the payload already parsed once (HubLink decoded it).
      }
    }
    const check = verifyCommand(raw, cmd, {
      deviceId: this.#o.deviceId,
      keys: this.#o.keys,
      now: this.#now(),
      skewMs: this.#o.skewMs,
      allowUnsigned: this.#o.allowUnsigned,
      floor: this.#floor,
    });
    if (!check.ok) this.#refuse(cmd, check);
    return check;
  }

  /**
   * Admits a verified command once: refuses a nonce seen before (also before a restart), else
   * records it and raises the high-water mark. `persisted` settles when the memory is on disk;
   * run the command only after it resolved.
   */
  admit(cmd: Command, auth: CommandAuth): Admission {
    if (this.#nonces.has(auth.nonce)) {
      const r: Refusal = { ok: false, reason: 'replay', message: `command ${cmd.id} (nonce ${auth.nonce}) already ran on this device` };
      this.#refuse(cmd, r);
      return r;
    }
    this.#nonces.set(auth.nonce, auth.expiresAt);
    this.#floor = Math.max(this.#floor, auth.issuedAt - this.#o.skewMs);
    for (const [nonce, expiresAt] of this.#nonces) if (expiresAt < this.#floor) this.#nonces.delete(nonce);
    while (this.#nonces.size > MAX_NONCES) {
      let first: [string, number] | undefined;
      for (const e of this.#nonces) if (!first || e[1] < first[1]) first = e;
      if (!first) break;
      this.#nonces.delete(first[0]);
      this.#floor = Math.max(this.#floor, first[1] + 1);
    }
    return { ok: true, persisted: this.#save() };
  }

  #refuse(cmd: Command, r: Refusal): void {
    this.#refused?.inc({ reason: r.reason });
    this.#throttle.run(`refused:${r.reason}`, (suppressed) =>
      this.#o.log.warn({ command: cmd.name, id: cmd.id, reason: r.reason, suppressed }, `hub command refused: ${r.message}`),
    );
  }

  #save(): Promise<void> {
    const state: ReplayState = { v: 1, floor: this.#floor, nonces: [...this.#nonces].map(([nonce, expiresAt]) => ({ nonce, expiresAt })) };
    const text = `${JSON.stringify(state)}\n`;
    // One write at a time (writeFileDurable uses one tmp name); each writes the state at its call.
    const next = this.#writing.then(() => writeFileDurable(this.#o.path, dirname(this.#o.path), text, 0o600));
    this.#writing = next.catch(() => undefined);
    return next;
  }

  #load(): ReplayState {
    const path = this.#o.path;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { v: 1, floor: 0, nonces: [] };
      return this.#corrupt(`cannot read it: ${(err as Error).message}`);
    }
    try {
      const parsed = ReplayStateSchema.safeParse(JSON.parse(text));
      if (parsed.success) return parsed.data;
      return this.#corrupt(parsed.error.issues[0]?.message ?? 'invalid');
    } catch (err) {
      return this.#corrupt((err as Error).message);
    }
  }

  #corrupt(why: string): ReplayState {
    const now = this.#now();
    try {
      renameSync(this.#o.path, `${this.#o.path}.corrupt-${now}`);
    } catch {
      // Unreadable and not movable: the next save replaces it.
    }
    this.#o.log.error({ path: this.#o.path, why }, 'command replay memory is corrupt; set aside, commands that expired before now are refused');
    return { v: 1, floor: now, nonces: [] };
  }
}
