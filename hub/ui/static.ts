/**
 * Serves the operator dashboard (the static files next to this module: index.html, *.js, *.css)
 * under /ui/ of the hub's HTTP API. Every asset comes from the hub, so the dashboard works on a
 * plant network with no internet (issue #7): no CDN, no web fonts, no build step.
 *
 * Why it is shaped this way:
 * - The files are read once, when the API server is built, into a fixed map keyed by file name.
 *   A request can only name a key of that map, so no path from a URL ever reaches the file
 *   system (no traversal to guard), and TypeScript sources in this folder are never served
 *   (only the listed extensions are).
 * - No auth for the files: they hold no data; every API call the page makes carries the
 *   operator's bearer token.
 * - Security headers on every reply: the CSP allows scripts and styles from the hub only (no
 *   inline script or style anywhere in the dashboard), and the page may not be framed.
 * - ETag (SHA-256 of the bytes) with `no-cache`: browsers revalidate, so a hub upgrade is seen
 *   at once, and an unchanged file costs a 304.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { basename, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';

export const UI_PATH = '/ui/';

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

/** `connect-src 'self'`: the page talks to its own hub's API and nothing else. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

/** The dashboard's files, loaded once; `dir` defaults to this module's folder. */
export class DashboardAssets {
  readonly #files = new Map<string, Asset>();

  constructor(dir: string = fileURLToPath(new URL('.', import.meta.url))) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      names = []; // not installed with the hub: /ui/ answers 404
    }
    // Compiled to dist/, this module is static.js beside the dashboard's own .js files: never serve it.
    const self = basename(fileURLToPath(import.meta.url));
    for (const name of names) {
      const type = CONTENT_TYPES[extname(name)];
      if (!type || name === self) continue;
      const body = readFileSync(join(dir, name));
      this.#files.set(name, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` });
    }
  }

  /** File names served, for tests and the OpenAPI document. */
  get files(): string[] {
    return [...this.#files.keys()].sort();
  }

  /** GET /ui/<name> (`''` is index.html). Throws NOT_FOUND for any other name. */
  serve(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    const asset = this.#files.get(name === '' ? 'index.html' : name);
    if (!asset) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no dashboard file ${name.slice(0, 64)}`);
    const headers = { ...SECURITY_HEADERS, 'content-type': asset.type, etag: asset.etag, 'cache-control': 'no-cache' };
    if (req.headers['if-none-match'] === asset.etag) {
      res.writeHead(304, headers);
      res.end();
    } else {
      res.writeHead(200, { ...headers, 'content-length': asset.body.length });
      res.end(asset.body);
    }
    return Promise.resolve();
  }

  /** GET / and /ui: to the dashboard. */
  redirect(res: ServerResponse): Promise<void> {
    res.writeHead(302, { location: UI_PATH, 'content-length': 0 });
    res.end();
    return Promise.resolve();
  }
}
