/**
 * Signed model releases (ARCHITECTURE §6): the envelope the hub signs with ed25519 and agents
 * verify against a list of trusted public keys (several, so keys can rotate), and the release
 * counter that stops replay of an older, validly signed release.
 *
 * What is signed is `canonicalJson(release)`: keys sorted, no whitespace, so any JSON encoder on
 * any side reproduces the same bytes. `signRelease` normalizes the release through its schema
 * first (zod fills defaults), so the signed value is exactly what a receiver parses back.
 * Verification checks the signature over the raw `release` value as received, before the full
 * schema, so a tampered body is reported as BAD_SIGNATURE rather than as a schema error.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { z } from 'zod';
import { formatIssues } from './codec.ts';
import { EdgefleetError, ErrorCode } from './errors.ts';
import { ManifestSchema } from './manifest.ts';
import { DeviceIdSchema } from './protocol.ts';

export const KeyIdSchema = z.string().regex(/^[0-9a-f]{16}$/, 'keyId: 16 lowercase hex digits');

/** Which devices a release is meant for; informational for now, rollouts (issue #3) refine it. */
export const ReleaseTargetSchema = z.object({
  group: z.string().min(1).max(64).optional(),
  labels: z.record(z.string(), z.string()).optional(),
  devices: z.array(DeviceIdSchema).max(10_000).optional(),
});

export const ReleaseBodySchema = z.object({
  /** Strictly increasing per hub, never reused: a receiver refuses one lower than it has seen. */
  counter: z.number().int().positive(),
  manifest: ManifestSchema,
  /** ISO 8601 time of signing. */
  createdAt: z.iso.datetime(),
  target: ReleaseTargetSchema.optional(),
});
export type ReleaseBody = z.infer<typeof ReleaseBodySchema>;

export const SignatureSchema = z.object({
  keyId: KeyIdSchema,
  alg: z.literal('ed25519'),
  /** base64 of the 64-byte ed25519 signature over canonicalJson(release). */
  sig: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, 'sig: base64 of 64 bytes'),
});

export const ReleaseSchema = z.object({ release: ReleaseBodySchema, signature: SignatureSchema });
export type SignedRelease = z.infer<typeof ReleaseSchema>;

/** Envelope shape checked before the signature; the body is checked after it. */
const EnvelopeSchema = z.object({ release: z.record(z.string(), z.unknown()), signature: SignatureSchema });

export interface TrustedKey {
  keyId: string;
  publicKeyPem: string;
}

export interface SigningKey {
  keyId: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicKeyPem: string;
}

export type VerifyCode = 'UNKNOWN_KEY' | 'BAD_SIGNATURE' | 'REPLAY' | 'BAD_RELEASE';
export type VerifyResult = { ok: true; release: ReleaseBody; keyId: string } | { ok: false; code: VerifyCode; message: string };

/**
 * JSON with object keys sorted (by UTF-16 code units) and no whitespace. Throws on values JSON
 * cannot carry faithfully (NaN, Infinity, bigint, functions), instead of silently signing `null`.
 */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `canonicalJson: ${value} has no JSON form`);
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort();
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
    }
    default:
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `canonicalJson: a ${typeof value} has no JSON form`);
  }
}

function toPublicKey(key: KeyObject | string): KeyObject {
  const k = typeof key === 'string' ? createPublicKey(key) : key.type === 'private' ? createPublicKey(key) : key;
  if (k.asymmetricKeyType !== 'ed25519') throw new EdgefleetError(ErrorCode.BAD_CONFIG, `expected an ed25519 key, got ${k.asymmetricKeyType ?? 'unknown'}`);
  return k;
}

/** First 16 hex digits of sha256 over the raw 32-byte public key. */
export function keyIdOf(key: KeyObject | string): string {
  const jwk = toPublicKey(key).export({ format: 'jwk' });
  if (typeof jwk.x !== 'string') throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'ed25519 key without a public part');
  return createHash('sha256').update(Buffer.from(jwk.x, 'base64url')).digest('hex').slice(0, 16);
}

export function publicKeyPem(key: KeyObject | string): string {
  return toPublicKey(key).export({ type: 'spki', format: 'pem' }).toString();
}

export function generateSigningKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { keyId: keyIdOf(publicKey), privateKey, publicKey, publicKeyPem: publicKeyPem(publicKey) };
}

/** PKCS#8 PEM of the private key, for a 0600 file. */
export function privateKeyPem(key: SigningKey): string {
  return key.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/** Loads a signing key from its PKCS#8 PEM; refuses anything but ed25519. */
export function signingKeyFromPem(pem: string): SigningKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `not a private key PEM: ${(err as Error).message}`, { cause: err });
  }
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `signing key must be ed25519, got ${privateKey.asymmetricKeyType ?? 'unknown'}`);
  }
  const publicKey = createPublicKey(privateKey);
  return { keyId: keyIdOf(publicKey), privateKey, publicKey, publicKeyPem: publicKeyPem(publicKey) };
}

/** A trusted key from a public key PEM, with its id computed (never taken on trust). */
export function trustedKeyFromPem(pem: string): TrustedKey {
  let key: KeyObject;
  try {
    key = toPublicKey(pem);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `not an ed25519 public key PEM: ${(err as Error).message}`, { cause: err });
  }
  return { keyId: keyIdOf(key), publicKeyPem: publicKeyPem(key) };
}

/** Validates and signs a release body. Throws BAD_MANIFEST when the body does not parse. */
export function signRelease(release: unknown, key: { keyId: string; privateKey: KeyObject }): SignedRelease {
  const parsed = ReleaseBodySchema.safeParse(release);
  if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `release: ${formatIssues(parsed.error)}`);
  if (key.keyId !== keyIdOf(key.privateKey)) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `keyId ${key.keyId} does not belong to this private key`);
  const sig = sign(null, Buffer.from(canonicalJson(parsed.data)), key.privateKey).toString('base64');
  return { release: parsed.data, signature: { keyId: key.keyId, alg: 'ed25519', sig } };
}

/**
 * Verifies a signed release received from anywhere. `minCounter` is inclusive: a receiver that
 * has accepted counter c passes c + 1 to accept only newer releases, or c to re-check the one it
 * runs. Never throws.
 */
export function verifyRelease(signed: unknown, trustedKeys: readonly TrustedKey[], opts: { minCounter?: number } = {}): VerifyResult {
  const env = EnvelopeSchema.safeParse(signed);
  if (!env.success) return { ok: false, code: 'BAD_RELEASE', message: `not a signed release: ${formatIssues(env.error)}` };
  const { keyId, sig } = env.data.signature;
  const trusted = trustedKeys.find((k) => k.keyId === keyId);
  if (!trusted) return { ok: false, code: 'UNKNOWN_KEY', message: `release signed with key ${keyId}, which is not trusted` };
  let good: boolean;
  try {
    const pub = toPublicKey(trusted.publicKeyPem);
    // The id is recomputed: a trust list entry whose id does not match its key trusts nothing.
    // Over the release exactly as received, not zod's copy of it: a copy drops an own
    // `__proto__` key (JSON.parse makes one; assignment into the copy sets the prototype
    // instead), so junk under that key verified (found by the config/manifest fuzz suite).
    const raw = (signed as { release: unknown }).release;
    good = keyIdOf(pub) === keyId && verify(null, Buffer.from(canonicalJson(raw)), pub, Buffer.from(sig, 'base64'));
  } catch {
    good = false;
  }
  if (!good) return { ok: false, code: 'BAD_SIGNATURE', message: `signature by key ${keyId} does not match the release` };
  const body = ReleaseBodySchema.safeParse(env.data.release);
  if (!body.success) return { ok: false, code: 'BAD_RELEASE', message: `signed release does not parse: ${formatIssues(body.error)}` };
  const min = opts.minCounter;
  if (min !== undefined && body.data.counter < min) {
    return { ok: false, code: 'REPLAY', message: `release counter ${body.data.counter} is older than ${min}: refusing a replayed release` };
  }
  return { ok: true, release: body.data, keyId };
}
