/**
 * Checks a principal's id and token against the stored hash: the one credential check behind
 * MQTT CONNECT and device HTTP requests. Device, sensor and consumer tokens are `newSecret()`s,
 * hashed with HMAC-SHA256 (hub/auth/tokens.ts says why that is enough for 256 random bits): a
 * whole fleet reconnecting after a hub restart costs microseconds per login, not a scrypt each
 * (issue #15). A row still hashed with scrypt (created before #15) is rehashed to HMAC on its
 * first successful login, so the next restart is fast for it too.
 *
 * Every refusal costs one scrypt, whatever the row: unknown ids are checked against a dummy HMAC
 * hash (the kdf a real principal has) and then padded with a scrypt, as is a wrong token for an
 * HMAC row; a scrypt row pays its own. So timing tells neither which ids exist (issue #14) nor
 * which are not upgraded yet. Store errors propagate (the caller decides between "refused" and
 * "unavailable"); a failed upgrade does not fail the login (the next login tries again).
 */
import type { HubStore, PrincipalCredentials } from '../store/store.ts';
import { hashToken, needsRehash, verifyOrDummy, type TokenHash } from './tokens.ts';

/**
 * A store that can rewrite a principal's hash (SqliteHubStore). Optional: with a store that
 * cannot, scrypt rows keep verifying and are never upgraded.
 */
export interface PrincipalTokenRehash {
  /** Replaces the hash when it still is `from`; false when the row is gone or changed meanwhile. */
  replacePrincipalToken(id: string, from: TokenHash, to: TokenHash): Promise<boolean>;
}

export type VerifierStore = Pick<HubStore, 'getCredentials'> & Partial<PrincipalTokenRehash>;

export interface VerifierStats {
  /** Scrypt rows rehashed to the fast kdf on login. */
  upgraded: number;
  /** Upgrades that failed (store error) or lost a race; the row still verifies. */
  upgradeFailed: number;
}

export class PrincipalVerifier {
  readonly #stats: VerifierStats = { upgraded: 0, upgradeFailed: 0 };

  constructor(
    private readonly store: VerifierStore,
    private readonly onUpgradeError: (id: string, err: unknown) => void = () => {},
  ) {}

  /** The principal's credentials when `token` is its token, else undefined. Revoked principals are returned (with `revokedAt`) so callers can say why they refuse. */
  async verify(id: string, token: string): Promise<PrincipalCredentials | undefined> {
    const creds = await this.store.getCredentials(id);
    // One dummy and one scrypt pad on every refusal: the same path as operator tokens (tokens.ts).
    if (!(await verifyOrDummy(token, creds?.token)) || !creds) return undefined;
    if (creds.revokedAt === null && needsRehash(token, creds.token)) await this.#upgrade(creds, token);
    return creds;
  }

  stats(): VerifierStats {
    return { ...this.#stats };
  }

  async #upgrade(creds: PrincipalCredentials, token: string): Promise<void> {
    const replace = this.store.replacePrincipalToken?.bind(this.store);
    if (!replace) return;
    try {
      const next = await hashToken(token);
      if (await replace(creds.id, creds.token, next)) {
        this.#stats.upgraded++;
        creds.token = next;
      } else {
        this.#stats.upgradeFailed++;
      }
    } catch (err) {
      this.#stats.upgradeFailed++;
      this.onUpgradeError(creds.id, err);
    }
  }
}
