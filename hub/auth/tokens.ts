/**
 * Secrets for devices, sensors and operators: generation, hashing (salted) and constant-time
 * verification. Only hashes are stored; the plaintext is shown once. Two kdfs, named in each
 * stored hash (`kdf`), so old rows keep verifying and parameters can change later:
 *
 * - `hmac-sha256`: HMAC-SHA256 of the token keyed with the hash's own 16-byte random salt, for
 *   tokens in our 256-bit random format (`newSecret()`: 43 base64url characters that decode to
 *   32 bytes). A slow kdf only helps where the secret can be guessed: it multiplies the cost of
 *   each guess. Nobody can enumerate 2^256 candidates, at one HMAC or at one scrypt each, so for
 *   these tokens scrypt buys nothing against a stolen database and costs ~15 ms of a libuv
 *   thread per login: 10,000 devices reconnecting after a hub restart took ~121 CPU-seconds and
 *   ~89 s on 2 cores (issue #15). One HMAC is a few microseconds. The salt still makes each row's
 *   hash unique (equal tokens do not show as equal hashes, no precomputed table helps).
 * - `scrypt:N=…,r=…,p=…,len=…`: everything else. A token that is not our random format may be
 *   weak (a human-chosen or imported secret), so it is never hashed, nor verified, with the fast
 *   kdf: `hashToken` picks scrypt for it and `verifyToken` refuses it against an HMAC row. The
 *   async `crypto.scrypt` runs on the libuv thread pool, so a burst never blocks the event loop;
 *   N=2^12 (~15 ms here) rather than Node's 2^14 (~57 ms on this box).
 *
 * Rows hashed with scrypt before issue #15 are upgraded when their owner next logs in
 * (`needsRehash`; hub/auth/principals.ts does it for devices, sensors and consumers).
 *
 * Refusals always cost one scrypt (`verifyOrDummy`, PrincipalVerifier): an unknown id, a wrong
 * token for an HMAC row and a wrong token for a not-yet-upgraded scrypt row must take the same
 * time, or answer times tell which ids exist (issue #14) and which are not upgraded yet. Only
 * successful logins are fast, which is what a reconnecting fleet does; the failed-login budget
 * (hub/auth/failures.ts) keeps bounding what refusals cost.
 */
import { createHmac, randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

export interface TokenHash {
  /** `hmac-sha256`, or e.g. `scrypt:N=4096,r=8,p=1,len=32` */
  kdf: string;
  salt: Buffer;
  hash: Buffer;
}

export const FAST_KDF = 'hmac-sha256';
const FAST_LEN = 32;
const SCRYPT = { N: 4096, r: 8, p: 1, len: 32 } as const;

function scryptAsync(secret: string, salt: Buffer, len: number, opts: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(secret, salt, len, opts, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

function parseScrypt(kdf: string): { N: number; r: number; p: number; len: number } | undefined {
  const m = /^scrypt:N=(\d+),r=(\d+),p=(\d+),len=(\d+)$/.exec(kdf);
  if (!m) return undefined;
  const [N, r, p, len] = [Number(m[1]), Number(m[2]), Number(m[3]), Number(m[4])];
  if (N > 2 ** 20 || r > 32 || p > 16 || len > 128) return undefined;
  return { N, r, p, len };
}

function hmac(token: string, salt: Buffer): Buffer {
  return createHmac('sha256', salt).update(token, 'utf8').digest();
}

/** A fresh random secret: 32 bytes, base64url (43 characters, no padding). */
export function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

/**
 * Whether `token` is in `newSecret()`'s format: 43 base64url characters that decode to exactly
 * 32 bytes and encode back to themselves (so the last character carries no stray bits). Only
 * such tokens may use the fast kdf.
 */
export function isRandomSecret(token: string): boolean {
  if (!/^[A-Za-z0-9_-]{43}$/.test(token)) return false;
  const bytes = Buffer.from(token, 'base64url');
  return bytes.length === 32 && bytes.toString('base64url') === token;
}

/** HMAC-SHA256 for a token in our random format, scrypt for anything else. */
export async function hashToken(token: string): Promise<TokenHash> {
  const salt = randomBytes(16);
  if (isRandomSecret(token)) return { kdf: FAST_KDF, salt, hash: hmac(token, salt) };
  const { N, r, p, len } = SCRYPT;
  const hash = await scryptAsync(token, salt, len, { N, r, p });
  return { kdf: `scrypt:N=${N},r=${r},p=${p},len=${len}`, salt, hash };
}

/** Whether the hash is one scrypt (the cost of a refusal, see verifyOrDummy). */
export function isScryptHash(stored: TokenHash): boolean {
  return parseScrypt(stored.kdf) !== undefined;
}

export async function verifyToken(token: string, stored: TokenHash): Promise<boolean> {
  if (stored.kdf === FAST_KDF) {
    // Never the fast path for a token that is not our random format (see the header).
    if (!isRandomSecret(token) || stored.hash.length !== FAST_LEN) return false;
    return timingSafeEqual(hmac(token, stored.salt), stored.hash);
  }
  const params = parseScrypt(stored.kdf);
  if (!params || stored.hash.length !== params.len) return false;
  const { N, r, p, len } = params;
  const candidate = await scryptAsync(token, stored.salt, len, { N, r, p });
  return timingSafeEqual(candidate, stored.hash);
}

/** True when `token` just verified against `stored` and could be stored with the fast kdf instead. */
export function needsRehash(token: string, stored: TokenHash): boolean {
  return stored.kdf !== FAST_KDF && isRandomSecret(token);
}

let scryptDummy: Promise<TokenHash> | undefined;
let fastDummy: Promise<TokenHash> | undefined;

/**
 * Verifies `secret` against `stored` (undefined: unknown id or malformed token), paying exactly
 * one scrypt on every refusal. An unknown id is checked against a dummy of the kdf a current
 * row has (HMAC), then padded; a wrong secret for an HMAC row is padded; a scrypt row already
 * paid one. So unknown and known ids, upgraded or not, answer in the same time (issue #14: an
 * unknown operator-token id used to answer ~8x faster than a known one). The dummies never
 * verify: their secrets are discarded.
 */
export async function verifyOrDummy(secret: string, stored: TokenHash | undefined): Promise<boolean> {
  fastDummy ??= hashToken(newSecret());
  const against = stored ?? (await fastDummy);
  const ok = (await verifyToken(secret, against)) && stored !== undefined;
  if (!ok && !isScryptHash(against)) await padRefusal(secret);
  return ok;
}

/** One scrypt against a dummy hash: what a refusal costs whichever kdf the row had. */
export async function padRefusal(secret: string): Promise<void> {
  scryptDummy ??= hashToken(`not-a-random-secret:${newSecret()}`);
  await verifyToken(secret, await scryptDummy);
}

/** Operator API tokens are `<id>.<secret>`: the id finds the row, the secret is verified. */
export function splitApiToken(token: string): { id: string; secret: string } | undefined {
  const m = /^([a-f0-9]{16})\.([A-Za-z0-9_-]{20,128})$/.exec(token);
  return m ? { id: m[1] as string, secret: m[2] as string } : undefined;
}

export function newApiToken(): { id: string; secret: string; token: string } {
  const id = randomBytes(8).toString('hex');
  const secret = newSecret();
  return { id, secret, token: `${id}.${secret}` };
}
