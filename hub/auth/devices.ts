/**
 * Device authentication for HTTP (artifact downloads): `Authorization: Bearer <deviceId>:<token>`
 * with the same credentials the device uses for MQTT, checked by PrincipalVerifier (HMAC for
 * current rows, scrypt for rows not upgraded yet; every refusal costs one scrypt, so timing does
 * not reveal which ids exist). A verified pair is remembered for a minute under its SHA-256: a
 * resumed download is many Range requests, and a not-yet-upgraded row would pay a scrypt for
 * each. Revocation evicts the device's entries (`forget`), so the cache never outlives a
 * revocation.
 */
import { createHash } from 'node:crypto';
import { DeviceIdSchema } from '../../shared/protocol.ts';
import type { HubStore } from '../store/store.ts';
import { checkFailureBudget, type AuthFailureLimiter } from './failures.ts';
import { PrincipalVerifier } from './principals.ts';

export class DeviceAuth {
  readonly #cache = new Map<string, { deviceId: string; until: number }>();

  readonly #verifier: PrincipalVerifier;

  constructor(
    store: HubStore,
    private readonly now: () => number = Date.now,
    private readonly cacheMs = 60_000,
    /** Failed checks per address; past its budget an uncached credential is refused (429) without a check. */
    private readonly failures?: AuthFailureLimiter,
  ) {
    this.#verifier = new PrincipalVerifier(store);
  }

  /** Drops cached verifications of a revoked device: its next request is checked again (and refused). */
  forget(deviceId: string): void {
    for (const [k, v] of this.#cache) if (v.deviceId === deviceId) this.#cache.delete(k);
  }

  /** The device id when the header carries valid device credentials, else undefined. */
  async authenticate(authorization: string | undefined, remote = ''): Promise<string | undefined> {
    const m = /^Bearer\s+([^:\s]+):(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) return undefined;
    const id = m[1] as string;
    const token = m[2] as string;
    if (!DeviceIdSchema.safeParse(id).success || token.length > 256) return undefined;
    const key = createHash('sha256').update(`${id}\u0000${token}`).digest('base64');
    const hit = this.#cache.get(key);
    if (hit && hit.until > this.now()) return hit.deviceId;
    checkFailureBudget(this.failures, remote);
    const creds = await this.#verifier.verify(id, token);
    if (creds?.kind !== 'device' || creds.revokedAt !== null) {
      this.failures?.fail(remote);
      return undefined;
    }
    if (this.#cache.size > 10_000) this.#cache.clear();
    this.#cache.set(key, { deviceId: id, until: this.now() + this.cacheMs });
    return id;
  }
}
