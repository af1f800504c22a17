/**
 * Serving an artifact over HTTP with single byte ranges (RFC 9110 §14), so a device on a flaky
 * link resumes a download instead of starting over: `Range: bytes=a-b`, `bytes=a-`, `bytes=-n`
 * → 206 with Content-Range; unsatisfiable → 416 with `Content-Range: bytes *\/size`. The strong
 * ETag is the sha256 (content address), so `If-Range` and `If-None-Match` work unchanged.
 * Multiple ranges are answered with the whole file (the RFC allows ignoring Range).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';

export type RangeResult = { kind: 'full' } | { kind: 'partial'; start: number; end: number } | { kind: 'unsatisfiable' };

/** Interprets a Range header for a representation of `size` bytes (size > 0). */
export function parseRange(header: string | undefined, size: number): RangeResult {
  if (header === undefined) return { kind: 'full' };
  const m = /^\s*bytes\s*=\s*(.*)$/i.exec(header);
  if (!m) return { kind: 'full' };
  const specs = (m[1] as string).split(',').map((s) => s.trim());
  if (specs.length !== 1) return { kind: 'full' };
  const spec = /^(\d*)-(\d*)$/.exec(specs[0] as string);
  if (!spec || (spec[1] === '' && spec[2] === '')) return { kind: 'full' };
  const [first, last] = [spec[1] as string, spec[2] as string];
  if (first === '') {
    const n = Number(last);
    if (!Number.isSafeInteger(n)) return { kind: 'full' };
    if (n === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? Infinity : Number(last);
  if (!Number.isSafeInteger(start) || (last !== '' && !Number.isSafeInteger(end)) || end < start) return { kind: 'full' };
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'partial', start, end: Math.min(end, size - 1) };
}

function etagMatches(header: string | undefined, etag: string): boolean {
  if (!header) return false;
  return header.split(',').some((t) => {
    const v = t.trim().replace(/^W\//, '');
    return v === '*' || v === etag;
  });
}

/**
 * Answers a GET or HEAD for an artifact; `open(range)` makes the file stream. Errors while
 * streaming cut the connection (the client sees a short body and resumes with a Range).
 */
export async function serveArtifact(
  req: IncomingMessage,
  res: ServerResponse,
  artifact: { sha256: string; size: number },
  open: (range?: { start: number; end: number }) => Readable,
): Promise<void> {
  const etag = `"${artifact.sha256}"`;
  const common = {
    etag,
    'accept-ranges': 'bytes',
    // Content-addressed: the bytes behind this URL never change.
    'cache-control': 'private, max-age=31536000, immutable',
  };
  if (etagMatches(req.headers['if-none-match'], etag)) {
    res.writeHead(304, common);
    res.end();
    return;
  }
  const ifRange = req.headers['if-range'];
  const range = typeof ifRange === 'string' && ifRange.trim() !== etag ? { kind: 'full' as const } : parseRange(req.headers.range, artifact.size);
  if (range.kind === 'unsatisfiable') {
    res.writeHead(416, { ...common, 'content-range': `bytes */${artifact.size}`, 'content-length': 0 });
    res.end();
    return;
  }
  const head = req.method === 'HEAD';
  if (range.kind === 'full') {
    res.writeHead(200, { ...common, 'content-type': 'application/octet-stream', 'content-length': artifact.size });
    if (head) return void res.end();
    await stream(open(), res);
    return;
  }
  res.writeHead(206, {
    ...common,
    'content-type': 'application/octet-stream',
    'content-range': `bytes ${range.start}-${range.end}/${artifact.size}`,
    'content-length': range.end - range.start + 1,
  });
  if (head) return void res.end();
  await stream(open({ start: range.start, end: range.end }), res);
}

async function stream(src: Readable, res: ServerResponse): Promise<void> {
  try {
    await pipeline(src, res);
  } catch {
    // Client went away, or the file could not be read after the headers went out: the only
    // honest signal left is a cut connection, and pipeline has already destroyed both ends.
    res.destroy();
  }
}
