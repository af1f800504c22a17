/**
 * Signed releases (shared/signing.ts): round trip, tampering, unknown keys, key rotation,
 * replay of an older counter, canonical JSON, key files.
 */
import assert from 'node:assert/strict';
import { sign } from 'node:crypto';
import { describe, test } from 'node:test';
import { ManifestSchema, type ManifestV1 } from '../../shared/manifest.ts';
import {
  canonicalJson,
  generateSigningKey,
  keyIdOf,
  privateKeyPem,
  ReleaseSchema,
  signingKeyFromPem,
  signRelease,
  trustedKeyFromPem,
  verifyRelease,
  type SigningKey,
  type TrustedKey,
} from '../../shared/signing.ts';
import { v1 } from '../helpers/manifest-v1.ts';

const manifest: ManifestV1 = v1(ManifestSchema.parse({
  manifestVersion: 1,
  name: 'machine-state',
  version: '1.2.3',
  task: 'classification',
  quantization: 'int8-qdq',
  artifact: { file: 'machine-state.onnx', sha256: '6629936e9eed7031cffc5b6f048d1e7841f33525c2caeb95e0d9e1e3f6871d22', size: 2224 },
  inputs: [{ name: 'features', dtype: 'float32', shape: ['N', 3] }],
  outputs: [{ name: 'logits', dtype: 'float32', shape: ['N', 2] }],
  preprocessing: { kind: 'tabular', features: [{ name: 'a', mean: 0.5, std: 1.25 }, { name: 'b', mean: -3, std: 2 }, { name: 'c', mean: 1e-7, std: 0.1 }] },
  postprocessing: { output: 'logits', labels: ['ok', 'bad'] },
  testVectors: [{ input: [0.7315, -1.5, 3.25], shape: [1, 3], expected: [0.125, -0.875], tolerance: 0.001 }],
}));
const trust = (...keys: SigningKey[]): TrustedKey[] => keys.map((k) => ({ keyId: k.keyId, publicKeyPem: k.publicKeyPem }));
const body = (counter: number): unknown => ({ counter, manifest, createdAt: '2025-01-02T03:04:05.000Z' });
/** What travels: JSON text, parsed by the receiver. */
const wire = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

describe('signed releases', () => {
  const a = generateSigningKey();
  const b = generateSigningKey();

  test('sign → JSON → verify round trip returns the release', () => {
    const signed = signRelease(body(7), a);
    assert.ok(ReleaseSchema.safeParse(signed).success);
    assert.equal(signed.signature.keyId, a.keyId);
    assert.equal(signed.signature.alg, 'ed25519');
    const r = verifyRelease(wire(signed), trust(a));
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.release.counter, 7);
    assert.equal(r.keyId, a.keyId);
    assert.deepEqual(r.release.manifest, manifest);
  });

  test('a flipped byte anywhere in the manifest is BAD_SIGNATURE', () => {
    const text = JSON.stringify(signRelease(body(1), a));
    // A digit in the sha256, a letter in the name, a digit in a test vector.
    for (const needle of [manifest.artifact.sha256.slice(0, 10), '"machine-state"', String(manifest.testVectors[0]!.input[1])]) {
      const at = text.indexOf(needle) + (needle.startsWith('"') ? 2 : 1);
      assert.ok(at > 1, needle);
      const ch = text[at]!;
      const flipped = `${text.slice(0, at)}${ch === '1' ? '2' : ch === 'a' ? 'b' : '1'}${text.slice(at + 1)}`;
      assert.notEqual(flipped, text);
      const r = verifyRelease(JSON.parse(flipped), trust(a));
      assert.equal(r.ok, false);
      assert.equal(!r.ok && r.code, 'BAD_SIGNATURE', needle);
    }
  });

  test('an added field, a changed counter or a signature from the wrong key is BAD_SIGNATURE', () => {
    const signed = wire(signRelease(body(3), a)) as { release: Record<string, unknown>; signature: { sig: string } };
    const extra = { ...signed, release: { ...signed.release, target: { group: 'all' } } };
    assert.equal(verifyRelease(extra, trust(a)).ok, false);
    const bumped = { ...signed, release: { ...signed.release, counter: 99 } };
    const r1 = verifyRelease(bumped, trust(a));
    assert.equal(!r1.ok && r1.code, 'BAD_SIGNATURE');
    // b's signature presented under a's key id.
    const forged = { ...signed, signature: { ...signRelease(body(3), b).signature, keyId: a.keyId } };
    const r2 = verifyRelease(forged, trust(a, b));
    assert.equal(!r2.ok && r2.code, 'BAD_SIGNATURE');
  });

  test('an own __proto__ key added to the signed body (as JSON.parse makes one) is BAD_SIGNATURE, not dropped and verified', () => {
    // Found by test/fuzz/config-manifest.fuzz.test.ts (FUZZ_SEED=1647322528): the signature was
    // checked over zod's copy of the body, which loses an own `__proto__` key.
    const text = JSON.stringify(signRelease(body(4), a));
    const tampered: unknown = JSON.parse(text.replace('"release":{', '"release":{"__proto__":[[[1]]],'));
    assert.ok(Object.keys((tampered as { release: object }).release).includes('__proto__'), 'an own key, as on the wire');
    const r = verifyRelease(tampered, trust(a));
    assert.equal(r.ok, false);
    assert.equal(!r.ok && r.code, 'BAD_SIGNATURE');
    assert.ok(verifyRelease(JSON.parse(text), trust(a)).ok, 'the untouched release still verifies');
  });

  test('a key that is not trusted is UNKNOWN_KEY; a trust entry with a lying id trusts nothing', () => {
    const signed = wire(signRelease(body(1), b));
    const r = verifyRelease(signed, trust(a));
    assert.equal(!r.ok && r.code, 'UNKNOWN_KEY');
    assert.match(!r.ok ? r.message : '', new RegExp(b.keyId));
    const lying = [{ keyId: b.keyId, publicKeyPem: a.publicKeyPem }];
    const r2 = verifyRelease(signed, lying);
    assert.equal(!r2.ok && r2.code, 'BAD_SIGNATURE');
  });

  test('rotation: with both keys trusted, releases from either verify; dropping the old key refuses its releases', () => {
    const old = wire(signRelease(body(10), a));
    const fresh = wire(signRelease(body(11), b));
    for (const s of [old, fresh]) assert.ok(verifyRelease(s, trust(a, b)).ok);
    assert.ok(verifyRelease(fresh, trust(b)).ok);
    const r = verifyRelease(old, trust(b));
    assert.equal(!r.ok && r.code, 'UNKNOWN_KEY');
  });

  test('an older counter than the receiver has seen is REPLAY, even though validly signed', () => {
    const v5 = wire(signRelease(body(5), a));
    const r = verifyRelease(v5, trust(a), { minCounter: 6 });
    assert.equal(!r.ok && r.code, 'REPLAY');
    // minCounter is inclusive: re-checking the running release passes.
    assert.ok(verifyRelease(v5, trust(a), { minCounter: 5 }).ok);
    assert.ok(verifyRelease(wire(signRelease(body(6), a)), trust(a), { minCounter: 6 }).ok);
  });

  test('garbage and broken envelopes are BAD_RELEASE, never a throw', () => {
    for (const x of [null, 'x', 42, {}, { release: {}, signature: {} }, { release: [], signature: { keyId: a.keyId, alg: 'ed25519', sig: 'AA==' } }]) {
      const r = verifyRelease(x, trust(a));
      assert.equal(!r.ok && r.code, 'BAD_RELEASE', JSON.stringify(x));
    }
    // A valid signature over something that is not a release body.
    const notARelease = { counter: 2, createdAt: 'yesterday' };
    const sig = sign(null, Buffer.from(canonicalJson(notARelease)), a.privateKey).toString('base64');
    const r = verifyRelease({ release: notARelease, signature: { keyId: a.keyId, alg: 'ed25519', sig } }, trust(a));
    assert.equal(!r.ok && r.code, 'BAD_RELEASE');
  });

  test('signRelease refuses an invalid body and a key id that is not the key', () => {
    assert.throws(() => signRelease({ counter: 0, manifest, createdAt: '2025-01-01T00:00:00Z' }, a), /counter/);
    assert.throws(() => signRelease({ counter: 1, manifest: { ...manifest, name: '' }, createdAt: '2025-01-01T00:00:00Z' }, a), /manifest/);
    assert.throws(() => signRelease(body(1), { keyId: b.keyId, privateKey: a.privateKey }), /does not belong/);
  });

  test('canonical JSON: sorted keys, no whitespace, independent of key order', () => {
    const x = { b: 1, a: { d: [3, { z: 1, y: 'é' }], c: null }, e: 'x' };
    const y = { e: 'x', a: { c: null, d: [3, { y: 'é', z: 1 }] }, b: 1 };
    assert.equal(canonicalJson(x), '{"a":{"c":null,"d":[3,{"y":"é","z":1}]},"b":1,"e":"x"}');
    assert.equal(canonicalJson(x), canonicalJson(y));
    assert.equal(canonicalJson({ a: undefined, b: 1 }), '{"b":1}');
    assert.throws(() => canonicalJson({ a: NaN }));
    assert.throws(() => canonicalJson({ a: 1n }));
    // A release whose keys arrive in another order still verifies.
    const signed = wire(signRelease(body(4), a)) as { release: Record<string, unknown>; signature: unknown };
    const reordered = { signature: signed.signature, release: Object.fromEntries(Object.entries(signed.release).reverse()) };
    assert.ok(verifyRelease(reordered, trust(a)).ok);
  });

  test('keys: id is 16 hex of sha256(raw public key), stable through PEM', () => {
    assert.match(a.keyId, /^[0-9a-f]{16}$/);
    assert.notEqual(a.keyId, b.keyId);
    const again = signingKeyFromPem(privateKeyPem(a));
    assert.equal(again.keyId, a.keyId);
    assert.equal(trustedKeyFromPem(a.publicKeyPem).keyId, a.keyId);
    assert.equal(keyIdOf(a.privateKey), a.keyId);
    const raw = Buffer.from(a.publicKey.export({ format: 'jwk' }).x as string, 'base64url');
    assert.equal(raw.length, 32);
    assert.ok(verifyRelease(wire(signRelease(body(1), again)), [trustedKeyFromPem(a.publicKeyPem)]).ok);
    assert.throws(() => signingKeyFromPem('not a pem'), /not a private key/);
  });
});
