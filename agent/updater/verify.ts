/**
 * The verify phase of an install, pure: is this signed release one this device may install?
 * Signature against the trusted keys, the counter against the highest accepted for the name
 * (a replayed older release is refused, ARCHITECTURE §6), the failed list, and the release's
 * target against this device's identity. Returns a verdict rather than throwing, because each
 * refusal becomes a `rejected` event with its own code.
 */
import { readFileSync } from 'node:fs';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { trustedKeyFromPem, verifyRelease, type ReleaseBody, type TrustedKey } from '../../shared/signing.ts';
import type { SlotState } from './state.ts';

export interface Identity {
  deviceId: string;
  group?: string;
  labels?: Readonly<Record<string, string>>;
}

export type Verdict =
  | { kind: 'install'; release: ReleaseBody }
  | { kind: 'already_active'; release: ReleaseBody }
  | { kind: 'refuse'; code: string; message: string; release?: ReleaseBody };

/** Reads the trusted key files (config `updates.trustedKeys`); a bad file is a config error. */
export function loadTrustedKeys(files: readonly string[]): TrustedKey[] {
  return files.map((f) => {
    let pem: string;
    try {
      pem = readFileSync(f, 'utf8');
    } catch (err) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `updates.trustedKeys: cannot read ${f}: ${(err as Error).message}`, { cause: err });
    }
    try {
      return trustedKeyFromPem(pem);
    } catch (err) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `updates.trustedKeys: ${f}: ${(err as Error).message}`, { cause: err });
    }
  });
}

/** Why the release's target excludes this device, or undefined when it is included. */
export function targetMismatch(release: ReleaseBody, id: Identity): string | undefined {
  const t = release.target;
  if (!t) return undefined;
  if (t.devices && !t.devices.includes(id.deviceId)) return `release targets other devices, not ${id.deviceId}`;
  if (t.group !== undefined && t.group !== id.group) return `release targets group ${t.group}, this device is in ${id.group ?? 'no group'}`;
  for (const [k, v] of Object.entries(t.labels ?? {})) {
    if (id.labels?.[k] !== v) return `release targets label ${k}=${v}, this device has ${k}=${id.labels?.[k] ?? '(unset)'}`;
  }
  return undefined;
}

export function verifyInstall(signed: unknown, keys: readonly TrustedKey[], slot: SlotState | undefined, id: Identity): Verdict {
  if (keys.length === 0) {
    return { kind: 'refuse', code: 'NO_TRUSTED_KEYS', message: 'no trusted release keys configured (updates.trustedKeys): every install is refused' };
  }
  const v = verifyRelease(signed, keys);
  if (!v.ok) return { kind: 'refuse', code: v.code, message: v.message };
  const release = v.release;
  const m = release.manifest;
  const active = slot?.active;
  // Same bytes under the same version: a re-sent release, or a config model the hub also released.
  if (active && active.version === m.version && active.sha256 === m.artifact.sha256) {
    return { kind: 'already_active', release };
  }
  const failed = slot?.failed.find((f) => f.counter === release.counter);
  if (failed) return { kind: 'refuse', code: 'FAILED_BEFORE', message: `release ${m.name}@${m.version} (counter ${release.counter}) failed here before: ${failed.message}`, release };
  const highest = slot?.highestCounter ?? 0;
  if (release.counter <= highest) {
    return { kind: 'refuse', code: 'REPLAY', message: `release counter ${release.counter} is not newer than ${highest} already accepted for ${m.name}: refusing a replayed release`, release };
  }
  if (active && active.version === m.version) {
    return { kind: 'refuse', code: 'CONFLICT', message: `version ${m.version} of ${m.name} is already active with other content; a release needs a new version`, release };
  }
  const why = targetMismatch(release, id);
  if (why) return { kind: 'refuse', code: 'NOT_TARGETED', message: why, release };
  return { kind: 'install', release };
}
