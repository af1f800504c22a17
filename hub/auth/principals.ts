/**
 * Checks a principal's id and token against the stored scrypt hash: the one credential check
 * behind MQTT CONNECT and device HTTP requests. Unknown ids are verified against a dummy hash,
 * so timing does not reveal which ids exist. Store errors propagate (the caller decides
 * between "refused" and "unavailable").
 */
import type { HubStore, PrincipalCredentials } from '../store/store.ts';
import { hashToken, newSecret, verifyToken, type TokenHash } from './tokens.ts';

export class PrincipalVerifier {
  #dummy: Promise<TokenHash> | undefined;

  constructor(private readonly store: HubStore) {}

  /** The principal's credentials when `token` is its token, else undefined. Revoked principals are returned (with `revokedAt`) so callers can say why they refuse. */
  async verify(id: string, token: string): Promise<PrincipalCredentials | undefined> {
    const creds = await this.store.getCredentials(id);
    this.#dummy ??= hashToken(newSecret());
    const ok = await verifyToken(token, creds ? creds.token : await this.#dummy);
    return ok && creds ? creds : undefined;
  }
}
