/**
 * Creates a development CA plus server and client certificates for mqtts/HTTPS and mutual TLS
 * (issue #6; README "TLS"). A CA already in `--out` is reused, so running it again adds
 * certificates that the hub and the agents issued earlier still trust; `--force` starts over.
 *
 *   node --import tsx scripts/dev-ca.ts --out .data/pki --server localhost --client dev-1 --client cam-1
 *     [--host 192.168.1.20 --host hub.local] [--days 825] [--force]
 *
 * Writes <out>/ca.crt + ca.key, <out>/server.crt + server.key (CN = --server, SANs: localhost,
 * 127.0.0.1 and every --host), <out>/<client>.crt + .key per --client (CN = the id). Keys 0600.
 * For development only: a production CA key belongs in a vault, not next to the hub.
 */
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createCa, issueCert, type Ca } from './lib/pki.ts';

const USAGE = `Usage: node --import tsx scripts/dev-ca.ts --out DIR [--server CN] [--host H]... [--client ID]... [--days N] [--force]`;

export async function devCa(o: { out: string; server?: string; hosts?: string[]; clients?: string[]; days?: number; force?: boolean }): Promise<{ ca: Ca; written: string[] }> {
  const out = resolve(o.out);
  if (o.force) await rm(out, { recursive: true, force: true });
  const written: string[] = [];
  let ca: Ca;
  if (existsSync(join(out, 'ca.crt')) && existsSync(join(out, 'ca.key'))) {
    ca = { name: 'ca', certFile: join(out, 'ca.crt'), keyFile: join(out, 'ca.key') };
  } else {
    ca = await createCa(out);
    written.push(ca.certFile, ca.keyFile);
  }
  if (o.server) {
    const hosts = [...new Set(['localhost', '127.0.0.1', ...(o.hosts ?? [])])];
    const c = await issueCert(ca, out, { cn: o.server, kind: 'server', hosts, days: o.days, name: 'server' });
    written.push(c.certFile, c.keyFile);
  }
  for (const id of o.clients ?? []) {
    const c = await issueCert(ca, out, { cn: id, kind: 'client', days: o.days });
    written.push(c.certFile, c.keyFile);
  }
  return { ca, written };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: '.data/pki' },
      server: { type: 'string' },
      host: { type: 'string', multiple: true },
      client: { type: 'string', multiple: true },
      days: { type: 'string' },
      force: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const days = values.days === undefined ? undefined : Number(values.days);
  if (days !== undefined && (!Number.isInteger(days) || days < 1)) throw new Error(`--days ${values.days}: a whole number of days, at least 1`);
  const { written } = await devCa({ out: values.out, server: values.server, hosts: values.host, clients: values.client, days, force: values.force });
  for (const f of written) console.log(f);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(`dev-ca: ${(err as Error).message}\n${USAGE}`);
    process.exitCode = 1;
  });
}
