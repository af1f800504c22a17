/**
 * Signed hub commands (issue #14): which commands change what runs on a device, how the hub
 * signs a command for one device and one validity window, and the stateless half of the agent's
 * check (signature, device, window, high-water mark). The stateful half (nonces seen, the
 * persisted high-water mark) is the agent's (agent/link/command-guard.ts).
 *
 * What is signed: `COMMAND_DOMAIN` followed by canonicalJson (shared/signing.ts) of the whole
 * command with its `auth` minus `auth.sig`, as received (not zod's copy, see verifyRelease).
 * The domain prefix keeps a command signature and a release signature (same key, body starts
 * with `{`) from ever standing for one another.
 *
 * Replays: within its window a command is refused a second time by its nonce (the agent
 * remembers nonces across restarts until they are past the high-water mark); after its window
 * by the clock; and, independently of the device's clock, once the device has accepted a
 * command issued more than the skew after this one expired (the high-water mark: hub time that
 * has certainly passed). A hub re-send of a command id is signed afresh (new nonce and window),
 * so it is told from a replay and still gets the first result (HubLink de-duplicates by id).
 *
 * Clock skew: the agent accepts `issuedAt - skew <= now <= expiresAt + skew` (default skew
 * 5 min, agent `commands.clockSkewMs`); a device whose clock is further off refuses every
 * signed command as `expired`, with both times in the message. The hub signs for
 * DEFAULT_COMMAND_TTL_MS (10 min); the agent refuses any window longer than MAX_COMMAND_TTL_MS.
 */
import { createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { CommandSchema, type Command, type CommandAuth } from './protocol.ts';
import { canonicalJson, keyIdOf, type TrustedKey } from './signing.ts';

export const COMMAND_DOMAIN = 'edgefleet-command-v1\n';
/** How long a command the hub signs may run. The hub re-signs when it sends a command again. */
export const DEFAULT_COMMAND_TTL_MS = 10 * 60_000;
/** Longest validity window an agent accepts: it bounds how long nonces are remembered. */
export const MAX_COMMAND_TTL_MS = 60 * 60_000;
export const DEFAULT_CLOCK_SKEW_MS = 5 * 60_000;

export type CommandClass = 'read_only' | 'state_changing';

/**
 * Every command the hub sends or the agent handles. Read-only ones change nothing that runs on
 * the device and need no signature: `ping` answers state, `drift.sample` uploads recent inputs
 * to the agent's own configured hub (never to an address the command names). Any name not
 * listed here counts as state-changing, so a command added later is refused unsigned until it
 * is classified; probation, pinning or config commands, when they come, stay state-changing.
 */
export const COMMAND_CLASSES: Readonly<Record<string, CommandClass>> = Object.freeze({
  ping: 'read_only',
  'drift.sample': 'read_only',
  'model.install': 'state_changing',
  'model.rollback': 'state_changing',
});

export function commandClass(name: string): CommandClass {
  return Object.hasOwn(COMMAND_CLASSES, name) ? (COMMAND_CLASSES[name] as CommandClass) : 'state_changing';
}

export const REFUSAL_REASONS = ['bad_signature', 'replay', 'expired', 'wrong_device', 'unsigned'] as const;
export type CommandRefusalReason = (typeof REFUSAL_REASONS)[number];

export type CommandCheck =
  /** `auth` is set when the command was signed and verified: the caller must admit its nonce. */
  | { ok: true; auth?: CommandAuth }
  | { ok: false; reason: CommandRefusalReason; message: string };

/** Parsed public keys of trusted-key entries (a memo, not state: the entries are immutable). */
const publicKeys = new WeakMap<TrustedKey, KeyObject | undefined>();

/** The entry's key, undefined when its id does not match its key (such an entry trusts nothing). */
function publicKeyOf(k: TrustedKey): KeyObject | undefined {
  if (!publicKeys.has(k)) {
    let pub: KeyObject | undefined;
    try {
      pub = createPublicKey(k.publicKeyPem);
      if (keyIdOf(pub) !== k.keyId) pub = undefined;
    } catch {
      pub = undefined;
    }
    publicKeys.set(k, pub);
  }
  return publicKeys.get(k);
}

function bytesToSign(commandWithAuth: unknown): Buffer {
  const c = commandWithAuth as { auth: Record<string, unknown> };
  // Spread keeps an own `__proto__` key (JSON.parse makes one), so junk there fails to verify.
  return Buffer.from(COMMAND_DOMAIN + canonicalJson({ ...c, auth: { ...c.auth, sig: undefined } }));
}

/**
 * Signs `cmd` for `deviceId`, valid from `now` for `ttlMs`; any `auth` it had is replaced.
 * Normalized through CommandSchema first, so the signed value is what the agent parses back.
 */
export function signCommand(cmd: Command, deviceId: string, key: { keyId: string; privateKey: KeyObject }, opts: { now: number; ttlMs?: number }): Command {
  const { auth: _old, ...body } = CommandSchema.parse(cmd);
  const unsigned = {
    deviceId,
    issuedAt: opts.now,
    expiresAt: opts.now + (opts.ttlMs ?? DEFAULT_COMMAND_TTL_MS),
    nonce: randomBytes(16).toString('hex'),
    keyId: key.keyId,
    alg: 'ed25519' as const,
  };
  const sig = sign(null, bytesToSign({ ...body, auth: unsigned }), key.privateKey).toString('base64');
  return { ...body, auth: { ...unsigned, sig } };
}

export interface VerifyCommandOptions {
  deviceId: string;
  keys: readonly TrustedKey[];
  /** The agent's wall clock, epoch ms. */
  now: number;
  skewMs: number;
  /** INSECURE: unsigned state-changing commands run (a signed one is still verified). */
  allowUnsigned: boolean;
  /** High-water mark: a command that expired before this (hub time) is a replay. */
  floor: number;
}

/**
 * The stateless check of a command received on this device's cmd topic. `raw` is the JSON
 * value as received, `cmd` its parse. Read-only commands pass without looking at `auth`.
 * Never throws.
 */
export function verifyCommand(raw: unknown, cmd: Command, o: VerifyCommandOptions): CommandCheck {
  if (commandClass(cmd.name) === 'read_only') return { ok: true };
  const auth = cmd.auth;
  if (!auth) {
    if (o.allowUnsigned) return { ok: true };
    return { ok: false, reason: 'unsigned', message: `${cmd.name} changes what runs on this device and must be signed by the hub` };
  }
  if (o.keys.length === 0) return { ok: false, reason: 'bad_signature', message: 'no trusted keys configured (updates.trustedKeys): a signed command cannot be verified' };
  const trusted = o.keys.find((k) => k.keyId === auth.keyId);
  if (!trusted) return { ok: false, reason: 'bad_signature', message: `command signed with key ${auth.keyId}, which is not trusted` };
  let good: boolean;
  try {
    const pub = publicKeyOf(trusted);
    good = pub !== undefined && verify(null, bytesToSign(raw), pub, Buffer.from(auth.sig, 'base64'));
  } catch {
    good = false;
  }
  if (!good) return { ok: false, reason: 'bad_signature', message: `signature by key ${auth.keyId} does not match the command` };
  if (auth.deviceId !== o.deviceId) return { ok: false, reason: 'wrong_device', message: `command signed for device ${auth.deviceId}, not ${o.deviceId}` };
  const life = auth.expiresAt - auth.issuedAt;
  if (life < 0 || life > MAX_COMMAND_TTL_MS) return { ok: false, reason: 'expired', message: `validity window of ${life} ms is outside 0..${MAX_COMMAND_TTL_MS}` };
  const times = `issued ${new Date(auth.issuedAt).toISOString()}, expires ${new Date(auth.expiresAt).toISOString()}, device clock ${new Date(o.now).toISOString()}, skew allowed ${o.skewMs} ms`;
  if (o.now > auth.expiresAt + o.skewMs) return { ok: false, reason: 'expired', message: `command expired (${times})` };
  if (auth.issuedAt > o.now + o.skewMs) return { ok: false, reason: 'expired', message: `command not valid yet: is the device clock behind the hub's? (${times})` };
  if (auth.expiresAt < o.floor) {
    return { ok: false, reason: 'replay', message: `command expired before ${new Date(o.floor).toISOString()}, hub time this device has seen pass: a replay (${times})` };
  }
  return { ok: true, auth };
}
