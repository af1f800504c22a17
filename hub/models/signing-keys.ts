/**
 * The hub's release signing keys in `<dataDir>/keys/`: `<keyId>.key` (PKCS#8 PEM, mode 0600)
 * and `<keyId>.pub` (SPKI PEM) per key, and `active` naming the key that signs new releases.
 * On first start a key is generated. Rotation: put a new key pair in the directory (or let
 * `generateKey()` make one) and name it in `models.signing.activeKeyId`; every `.pub` stays
 * trusted, plus the PEM files listed in `models.signing.trustedKeyFiles`, so agents holding
 * the old key id keep verifying earlier releases while they learn the new one from /v1/keys.
 */
import { chmod, mkdir, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import { generateSigningKey, KeyIdSchema, privateKeyPem, signingKeyFromPem, trustedKeyFromPem, type SigningKey, type TrustedKey } from '../../shared/signing.ts';

export const KEYS_DIR = 'keys';
const ACTIVE_FILE = 'active';

async function writeAtomic(path: string, text: string, mode: number): Promise<void> {
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, text, { mode });
  await rename(tmp, path);
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

export interface KeyRingOptions {
  dataDir: string;
  /** Key that signs new releases; default: the one named in keys/active (created on first start). */
  activeKeyId?: string;
  /** Extra public key PEM files to trust (keys of other or earlier hubs). */
  trustedKeyFiles: readonly string[];
  log: Logger;
}

export class KeyRing {
  readonly dir: string;
  #active: SigningKey | undefined;
  #trusted: TrustedKey[] = [];

  constructor(private readonly opts: KeyRingOptions) {
    this.dir = join(opts.dataDir, KEYS_DIR);
  }

  get active(): SigningKey {
    if (!this.#active) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'signing keys are not loaded');
    return this.#active;
  }

  /** Public keys agents should trust: the active one first. */
  get trusted(): readonly TrustedKey[] {
    return this.#trusted;
  }

  async load(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    let id = this.opts.activeKeyId ?? (await readText(join(this.dir, ACTIVE_FILE)))?.trim();
    if (id === undefined || id === '') {
      id = (await this.generateKey()).keyId;
      await writeAtomic(join(this.dir, ACTIVE_FILE), `${id}\n`, 0o600);
      this.opts.log.info({ keyId: id, dir: this.dir }, 'release signing key created');
    }
    if (!KeyIdSchema.safeParse(id).success) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `signing key id "${id}" is not 16 hex digits`);
    this.#active = await this.#loadPrivate(id);
    this.#trusted = await this.#loadTrusted();
  }

  /** Generates a key pair in the key directory; does not make it active. */
  async generateKey(): Promise<SigningKey> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const key = generateSigningKey();
    await writeAtomic(join(this.dir, `${key.keyId}.key`), privateKeyPem(key), 0o600);
    // Public, but state like the rest of the data dir (issue #14): 0600.
    await writeAtomic(join(this.dir, `${key.keyId}.pub`), key.publicKeyPem, 0o600);
    return key;
  }

  async #loadPrivate(id: string): Promise<SigningKey> {
    const file = join(this.dir, `${id}.key`);
    const pem = await readText(file);
    if (pem === undefined) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `signing key ${id}: ${file} is missing`);
    const key = signingKeyFromPem(pem);
    if (key.keyId !== id) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${file} holds key ${key.keyId}, not ${id}`);
    const mode = (await stat(file)).mode & 0o777;
    if (mode & 0o077) {
      await chmod(file, 0o600);
      this.opts.log.warn({ file, mode: mode.toString(8) }, 'signing key was readable by others; set to 0600');
    }
    return key;
  }

  async #loadTrusted(): Promise<TrustedKey[]> {
    const active = this.active;
    const byId = new Map<string, TrustedKey>([[active.keyId, { keyId: active.keyId, publicKeyPem: active.publicKeyPem }]]);
    const files = (await readdir(this.dir)).filter((f) => f.endsWith('.pub')).map((f) => join(this.dir, f));
    for (const file of [...files, ...this.opts.trustedKeyFiles]) {
      const pem = await readText(file);
      if (pem === undefined) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `trusted key file ${file} cannot be read`);
      let key: TrustedKey;
      try {
        key = trustedKeyFromPem(pem);
      } catch (err) {
        throw new EdgefleetError(ErrorCode.BAD_CONFIG, `trusted key file ${file}: ${(err as Error).message}`, { cause: err });
      }
      if (!byId.has(key.keyId)) byId.set(key.keyId, key);
    }
    return [...byId.values()];
  }
}
