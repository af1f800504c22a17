/**
 * Signed releases and a misbehaving artifact server for the updater tests. Releases are signed
 * with a test key the agent trusts (so the tests can sign what the hub's own probe would refuse:
 * hostile models, wrong sizes); the server answers `GET /v1/artifacts/<sha256>` through the
 * hub's own Range logic (hub/models/artifact-http.ts) and can flip a byte, cut the body short
 * or stall, per artifact. Paths it does not know are forwarded to `upstream` (the real hub), so
 * one agent can take hub releases and test releases from one `hub.httpUrl`.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { serveArtifact } from '../../hub/models/artifact-http.ts';
import type { Manifest } from '../../shared/manifest.ts';
import { generateSigningKey, signRelease, type SignedRelease, type SigningKey } from '../../shared/signing.ts';
import type { InstallArgs } from '../../shared/updates.ts';

export type ServeMode =
  | 'ok'
  /** One byte of the body flipped (every request). */
  | 'flip'
  /** The connection is cut after half the body (every request). */
  | 'truncate'
  /** The first request sends half the body and then nothing; later ones are served normally. */
  | 'stall-once';

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export class ReleaseServer {
  readonly key: SigningKey = generateSigningKey();
  readonly #artifacts = new Map<string, { bytes: Buffer; mode: ServeMode; served: number }>();
  readonly requests: { sha: string; range?: string; ifRange?: string }[] = [];
  readonly #stalled = new Set<ServerResponse>();
  #server: Server | undefined;
  url = '';

  constructor(private readonly upstream?: string) {}

  /** Writes the test key's public PEM to `path` (for the agent's updates.trustedKeys). */
  writePublicKey(path: string): string {
    writeFileSync(path, this.key.publicKeyPem);
    return path;
  }

  add(bytes: Uint8Array, mode: ServeMode = 'ok'): string {
    const sha = sha256(bytes);
    this.#artifacts.set(sha, { bytes: Buffer.from(bytes), mode, served: 0 });
    return sha;
  }

  setMode(sha: string, mode: ServeMode): void {
    const a = this.#artifacts.get(sha);
    if (a) a.mode = mode;
  }

  async start(): Promise<string> {
    this.#server = createServer((req, res) => void this.#handle(req, res));
    await new Promise<void>((resolve) => this.#server!.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    for (const r of this.#stalled) r.destroy();
    this.#server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const m = /^\/v1\/artifacts\/([0-9a-f]{64})$/.exec(req.url ?? '');
    const a = m ? this.#artifacts.get(m[1]!) : undefined;
    if (!a) return this.#forward(req, res);
    this.requests.push({ sha: m![1]!, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined });
    a.served++;
    const half = Math.floor(a.bytes.length / 2);
    if (a.mode === 'stall-once' && a.served === 1) {
      res.writeHead(200, { 'content-length': a.bytes.length, etag: `"${sha256(a.bytes)}"` });
      res.write(a.bytes.subarray(0, half));
      this.#stalled.add(res); // never ends: the agent's stall timer must fire
      return;
    }
    if (a.mode === 'truncate') {
      res.writeHead(200, { 'content-length': a.bytes.length });
      res.write(a.bytes.subarray(0, half), () => res.destroy());
      return;
    }
    let body = a.bytes;
    if (a.mode === 'flip') {
      body = Buffer.from(a.bytes);
      body[half] = (body[half] as number) ^ 0x01;
    }
    await serveArtifact(req, res, { sha256: sha256(a.bytes), size: a.bytes.length }, (range) =>
      Readable.from([range ? body.subarray(range.start, range.end + 1) : body]),
    );
  }

  async #forward(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.upstream) {
      res.writeHead(404).end();
      return;
    }
    const headers: Record<string, string> = {};
    for (const h of ['authorization', 'range', 'if-range']) if (typeof req.headers[h] === 'string') headers[h] = req.headers[h];
    try {
      const up = await fetch(`${this.upstream}${req.url ?? ''}`, { headers });
      const out: Record<string, string> = {};
      up.headers.forEach((v, k) => (out[k] = v));
      res.writeHead(up.status, out);
      res.end(Buffer.from(await up.arrayBuffer()));
    } catch {
      res.destroy();
    }
  }
}

let createdAt = Date.parse('2025-01-01T00:00:00Z');

/** A signed release of `manifest` with `bytes` as its artifact (size/sha256 overridable to lie). */
export function signedRelease(
  key: SigningKey,
  manifest: Manifest,
  bytes: Uint8Array,
  opts: { counter: number; version: string; size?: number; sha256?: string; target?: { devices?: string[]; group?: string; labels?: Record<string, string> } },
): SignedRelease {
  const m: Manifest = { ...manifest, version: opts.version, artifact: { ...manifest.artifact, sha256: opts.sha256 ?? sha256(bytes), size: opts.size ?? bytes.length } };
  createdAt += 1000;
  return signRelease({ counter: opts.counter, manifest: m, createdAt: new Date(createdAt).toISOString(), ...(opts.target ? { target: opts.target } : {}) }, key);
}

export function installArgs(release: SignedRelease, extra: Partial<InstallArgs> = {}): InstallArgs {
  return { release, artifactPath: `/v1/artifacts/${release.release.manifest.artifact.sha256}`, probationMs: 0, ...extra };
}
