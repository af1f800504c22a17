/**
 * A development PKI for mqtts/HTTPS and mutual TLS (issue #6): a CA, server certificates with
 * DNS/IP subject alternative names, and client certificates whose subject CN is a device or
 * sensor id (the hub binds CN = MQTT client id). Used by scripts/dev-ca.ts and by the TLS tests.
 *
 * Why openssl (Debian's /usr/bin/openssl 3.0, through execFile, no shell) and not node:crypto:
 * node can sign bytes and parse certificates but cannot issue them; a hand-written DER builder
 * would be more code to trust than the tool every operator already has. Tests need certificates
 * that are wrong on purpose, and openssl makes them directly: `days < 0` gives a notAfter in the
 * past (an EXPIRED certificate), a second `createCa` gives a certificate from a DIFFERENT CA,
 * and the CN is whatever the caller asks for.
 *
 * Keys are P-256 EC (fast to make, accepted by every TLS stack here) and written 0600. Serial
 * numbers are random (no .srl state files next to the CA).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const OPENSSL = '/usr/bin/openssl';

export interface CertFiles {
  certFile: string;
  keyFile: string;
}

export interface Ca extends CertFiles {
  name: string;
}

export interface IssueOptions {
  /** Subject CN: the device or sensor id for client certificates, a host name for servers. */
  cn: string;
  kind: 'server' | 'client';
  /** Server only: host names and IP addresses for subjectAltName (default localhost, 127.0.0.1). */
  hosts?: readonly string[];
  /** Validity from now; negative gives an already expired certificate (notAfter in the past). */
  days?: number;
  /** File base name in `dir` (default: the CN). */
  name?: string;
}

/** A CN or host may only hold characters that need no escaping in an openssl subject or SAN list. */
const SAFE = /^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$/;

function checkName(what: string, v: string): void {
  if (!SAFE.test(v)) throw new Error(`${what} ${JSON.stringify(v)}: use 1-64 of [A-Za-z0-9._ -]`);
}

async function openssl(args: string[]): Promise<void> {
  try {
    await run(OPENSSL, args, { timeout: 30_000 });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`openssl ${args[0] ?? ''} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
}

const keyArgs = (keyFile: string): string[] => ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile];

/** A self-signed CA certificate and key in `dir` (`<name>.crt`, `<name>.key`). */
export async function createCa(dir: string, opts: { name?: string; cn?: string; days?: number } = {}): Promise<Ca> {
  const name = opts.name ?? 'ca';
  const cn = opts.cn ?? 'edgefleet dev CA';
  checkName('CA CN', cn);
  await mkdir(dir, { recursive: true });
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  await openssl([
    'req', '-x509', ...keyArgs(keyFile), '-out', certFile, '-subj', `/CN=${cn}`, '-days', String(opts.days ?? 3650),
    '-set_serial', `0x${randomBytes(16).toString('hex')}`,
    '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  await chmod(keyFile, 0o600);
  return { name, certFile, keyFile };
}

/** A server or client certificate signed by `ca`, written to `dir` as `<name>.crt` / `<name>.key`. */
export async function issueCert(ca: CertFiles, dir: string, o: IssueOptions): Promise<CertFiles> {
  checkName('CN', o.cn);
  const name = o.name ?? o.cn;
  checkName('file name', name);
  await mkdir(dir, { recursive: true });
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr.tmp`);
  const ext = join(dir, `${name}.ext.tmp`);
  const lines = ['basicConstraints=critical,CA:FALSE'];
  if (o.kind === 'server') {
    const hosts = o.hosts ?? ['localhost', '127.0.0.1'];
    for (const h of hosts) if (!isIP(h)) checkName('host', h);
    lines.push('keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth');
    lines.push(`subjectAltName=${hosts.map((h) => (isIP(h) ? `IP:${h}` : `DNS:${h}`)).join(',')}`);
  } else {
    lines.push('keyUsage=critical,digitalSignature', 'extendedKeyUsage=clientAuth');
  }
  try {
    await writeFile(ext, `${lines.join('\n')}\n`);
    await openssl(['req', '-new', ...keyArgs(keyFile), '-out', csr, '-subj', `/CN=${o.cn}`]);
    await chmod(keyFile, 0o600);
    await openssl([
      'x509', '-req', '-in', csr, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-set_serial', `0x${randomBytes(16).toString('hex')}`,
      '-days', String(o.days ?? 825), '-sha256', '-extfile', ext, '-out', certFile,
    ]);
  } finally {
    await rm(csr, { force: true });
    await rm(ext, { force: true });
  }
  return { certFile, keyFile };
}
