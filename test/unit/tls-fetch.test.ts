/**
 * shared/tls.ts `tlsFetch`, the agent's fetch over node:https (custom CA, client certificate):
 * the parts of fetch's Response the artifact downloader and the sample upload rely on, against
 * a real HTTPS server with certificates from scripts/lib/pki.ts: status, headers, a streamed
 * body, null bodies (HEAD, 304), a request body, and an abort in the middle of a body.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createCa, issueCert } from '../../scripts/lib/pki.ts';
import { clientTlsOptions, readTlsFiles, tlsFetch, type FetchLike } from '../../shared/tls.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';

describe('tlsFetch', () => {
  let dir: string;
  let server: Server;
  let base: string;
  let f: FetchLike;
  let caFile: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ef-tlsfetch-'));
    const ca = await createCa(dir);
    caFile = ca.certFile;
    const cert = await issueCert(ca, dir, { cn: 'localhost', kind: 'server', name: 'server' });
    server = createServer({ cert: readFileSync(cert.certFile), key: readFileSync(cert.keyFile) }, (req, res) => {
      if (req.url === '/304') return void res.writeHead(304).end();
      if (req.url === '/echo') {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => res.writeHead(201, { 'x-method': req.method ?? '' }).end(Buffer.concat(chunks)));
        return;
      }
      if (req.url === '/stall') {
        res.writeHead(200).write('part');
        return; // and nothing more
      }
      res.writeHead(206, { 'content-range': 'bytes 2-4/5', etag: '"abc"' }).end('cde');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    f = tlsFetch(clientTlsOptions({ caFile }, 'test'));
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });

  test('status, headers and body of a 206; HEAD and 304 have null bodies', async () => {
    const r = await f(`${base}/x`, { headers: { range: 'bytes=2-' } });
    assert.equal(r.status, 206);
    assert.equal(r.headers.get('content-range'), 'bytes 2-4/5');
    assert.equal(await r.text(), 'cde');
    const head = await f(`${base}/x`, { method: 'HEAD' });
    assert.equal(head.headers.get('etag'), '"abc"');
    assert.equal(head.body, null);
    assert.equal((await f(`${base}/304`)).body, null);
  });

  test('a request body is sent', async () => {
    const r = await f(`${base}/echo`, { method: 'POST', body: JSON.stringify({ a: 1 }), headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 201);
    assert.equal(r.headers.get('x-method'), 'POST');
    assert.deepEqual(await r.json(), { a: 1 });
  });

  test('an abort in the middle of a body ends the read with an error', async () => {
    const ac = new AbortController();
    const r = await f(`${base}/stall`, { signal: ac.signal });
    const reading = (async () => {
      for await (const _ of r.body!) ac.abort(new Error('stalled'));
    })();
    await assert.rejects(reading);
  });

  test('a server the CA does not vouch for is refused; unreadable files are BAD_CONFIG', async () => {
    await assert.rejects(tlsFetch(clientTlsOptions({}, 'test'))(`${base}/x`), /self.signed|issuer|verify/i);
    assert.throws(
      () => readTlsFiles({ caFile: join(dir, 'nope.crt') }, 'hub.tls'),
      (e: EdgefleetError) => e.code === ErrorCode.BAD_CONFIG && /hub\.tls\.caFile: cannot read/.test(e.message),
    );
    assert.throws(() => readTlsFiles({ certFile: caFile, keyFile: join(dir, 'server.key') }, 'tls'), /is not the key of/);
  });
});
