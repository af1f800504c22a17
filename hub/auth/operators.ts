/**
 * Operator authentication for the HTTP API: bearer tokens `<id>.<secret>` stored as scrypt
 * hashes with a role, and the bootstrap admin token. On first start the hub creates an admin
 * token and writes the plaintext to `<dataDir>/admin.token` (mode 0600); it is never logged.
 * If that file is lost (or no longer matches), the next start replaces the admin token, so
 * whoever controls the data directory can always get back in, and nobody else can.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../shared/log.ts';
import type { ApiRole, HubStore } from '../store/store.ts';
import { checkFailureBudget, type AuthFailureLimiter } from './failures.ts';
import { hashToken, newApiToken, splitApiToken, verifyOrDummy, verifyToken } from './tokens.ts';

export const ADMIN_TOKEN_FILE = 'admin.token';
const ADMIN_NAME = 'admin';

export interface Operator {
  tokenId: string;
  name: string;
  role: ApiRole;
}

/**
 * Verifies bearer tokens. A verified token is remembered for a minute under its SHA-256, so a
 * dashboard polling the API does not pay a scrypt per request.
 */
export class ApiAuth {
  readonly #cache = new Map<string, { op: Operator; until: number }>();
  constructor(
    private readonly store: HubStore,
    private readonly now: () => number = Date.now,
    private readonly cacheMs = 60_000,
    /** Failed checks per address; past its budget an uncached token is refused (429) without a scrypt. */
    private readonly failures?: AuthFailureLimiter,
  ) {}

  /** Drops cached verifications of a revoked token, so revocation takes effect at once. */
  forget(tokenId: string): void {
    for (const [k, v] of this.#cache) if (v.op.tokenId === tokenId) this.#cache.delete(k);
  }

  async authenticate(authorization: string | undefined, remote = ''): Promise<Operator | undefined> {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) return undefined;
    const token = m[1] as string;
    const key = createHash('sha256').update(token).digest('base64');
    const hit = this.#cache.get(key);
    if (hit && hit.until > this.now()) return hit.op;
    checkFailureBudget(this.failures, remote);
    const parts = splitApiToken(token);
    const rec = parts ? await this.store.getApiToken(parts.id) : undefined;
    // One scrypt on every path (unknown id, malformed, revoked, wrong secret): equal answer times.
    const ok = await verifyOrDummy(parts?.secret ?? token, rec?.token);
    if (!parts || !rec || rec.revokedAt || !ok) {
      this.failures?.fail(remote);
      return undefined;
    }
    const op = { tokenId: rec.id, name: rec.name, role: rec.role };
    if (this.#cache.size > 1000) this.#cache.clear();
    this.#cache.set(key, { op, until: this.now() + this.cacheMs });
    return op;
  }
}

/** Returns the admin token, creating (or replacing) it when admin.token is missing or stale. */
export async function ensureAdminToken(store: HubStore, dataDir: string, log: Logger, now: () => number = Date.now): Promise<string> {
  const file = join(dataDir, ADMIN_TOKEN_FILE);
  const existing = await store.findApiTokensByName(ADMIN_NAME);
  let onDisk: string | undefined;
  try {
    onDisk = (await readFile(file, 'utf8')).trim();
  } catch {
    onDisk = undefined;
  }
  if (onDisk) {
    const parts = splitApiToken(onDisk);
    const rec = parts && existing.find((t) => t.id === parts.id);
    if (parts && rec && (await verifyToken(parts.secret, rec.token))) return onDisk;
  }
  const fresh = newApiToken();
  await store.createApiToken({ id: fresh.id, name: ADMIN_NAME, role: 'admin', token: await hashToken(fresh.secret), createdAt: now() });
  // Write-then-rename so a crash never leaves a half-written token file.
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, `${fresh.token}\n`, { mode: 0o600 });
  await rename(tmp, file);
  for (const old of existing) await store.deleteApiToken(old.id);
  log.info({ file, replaced: existing.length }, existing.length ? 'admin token replaced (admin.token was missing or stale)' : 'admin token created');
  return fresh.token;
}
