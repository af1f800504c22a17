/**
 * Resumable artifact download for the updater: `GET <hub.httpUrl><artifactPath>` into
 * `<partialDir>/<sha256>.part`, device-authenticated. What the download trusts is only the
 * SIGNED manifest's size and sha256, never the server's headers:
 *   - resume with `Range: bytes=<n>-` and `If-Range: "<sha256>"` (the hub's strong ETag is the
 *     content address, hub/models/artifact-http.ts); a 200 answer to a Range restarts from 0,
 *     a 206 whose Content-Range does not start at n is refused;
 *   - a stall timer (no byte for `stallTimeoutMs`) aborts the request, and the next attempt
 *     resumes after a jittered backoff; an attempt that made progress does not use up the
 *     attempt budget, so a slow but moving link finishes;
 *   - the moment the file would exceed the signed size the download is aborted (a hostile or
 *     broken server cannot fill the disk);
 *   - the finished file's size and sha256 must equal the signed ones, else it is deleted.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, stat, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { Backoff, type BackoffOptions } from '../../shared/backoff.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import type { FetchLike } from '../../shared/tls.ts';

export interface DownloadRequest {
  url: string;
  authorization: string;
  path: string;
  sha256: string;
  size: number;
}

export interface DownloadOptions {
  stallTimeoutMs: number;
  maxBytes: number;
  attempts: number;
  backoff: BackoffOptions;
  log: Logger;
  signal?: AbortSignal;
  /** Bytes received (for the download counter). */
  onBytes?: (n: number) => void;
  /** https with the agent's hub.tls (CA, client certificate): shared/tls.ts tlsFetch. Default: global fetch. */
  fetch?: FetchLike;
}

/** A failure of the artifact itself (not of the transport): retrying cannot help. */
export class ArtifactMismatch extends EdgefleetError {}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** One HTTP attempt from the current size of the .part file. Returns when the body ended. */
async function attempt(req: DownloadRequest, o: DownloadOptions): Promise<void> {
  let have = await sizeOf(req.path);
  if (have > req.size) {
    await unlink(req.path);
    have = 0;
  }
  if (have === req.size) return;
  const ac = new AbortController();
  const onOuter = (): void => ac.abort(o.signal?.reason);
  o.signal?.addEventListener('abort', onOuter, { once: true });
  let stalled = false;
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      stalled = true;
      ac.abort(new Error('stalled'));
    }, o.stallTimeoutMs);
  };
  arm();
  try {
    const headers: Record<string, string> = { authorization: req.authorization };
    if (have > 0) Object.assign(headers, { range: `bytes=${have}-`, 'if-range': `"${req.sha256}"` });
    const res = await (o.fetch ?? fetch)(req.url, { headers, signal: ac.signal, redirect: 'error' });
    let start: number;
    if (res.status === 206) {
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get('content-range') ?? '');
      if (!m || Number(m[1]) !== have) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `artifact server answered range ${res.headers.get('content-range') ?? 'none'} to bytes=${have}-`);
      start = have;
    } else if (res.status === 200) {
      start = 0; // the server ignored or refused the Range: start over
    } else if (res.status === 416 && have > 0) {
      await res.body?.cancel();
      await unlink(req.path); // what we have cannot be resumed: start over next attempt
      throw new EdgefleetError(ErrorCode.UNAVAILABLE, 'artifact server refused the resume range (416)');
    } else {
      await res.body?.cancel();
      const code = res.status === 401 || res.status === 403 ? ErrorCode.UNAUTHORIZED : res.status === 404 ? ErrorCode.NOT_FOUND : ErrorCode.UNAVAILABLE;
      throw new EdgefleetError(code, `artifact download: HTTP ${res.status}`);
    }
    if (!res.body) throw new EdgefleetError(ErrorCode.UNAVAILABLE, 'artifact download: no body');
    const fh = await open(req.path, start === 0 ? 'w' : 'a', 0o600);
    let pos = start;
    try {
      arm();
      for await (const chunk of res.body) {
        const buf = chunk as Uint8Array;
        if (pos + buf.byteLength > req.size || pos + buf.byteLength > o.maxBytes) {
          ac.abort(new Error('too large'));
          throw new ArtifactMismatch(ErrorCode.BAD_MODEL, `artifact is larger than the signed size ${req.size} bytes: download aborted`);
        }
        await fh.write(buf);
        pos += buf.byteLength;
        o.onBytes?.(buf.byteLength);
        arm();
      }
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (pos < req.size) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `artifact download ended early at ${pos} of ${req.size} bytes`);
  } catch (err) {
    if (err instanceof EdgefleetError) throw err;
    if (o.signal?.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'artifact download aborted', { cause: err });
    if (stalled) throw new EdgefleetError(ErrorCode.TIMEOUT, `artifact download stalled: no byte for ${o.stallTimeoutMs} ms`, { cause: err });
    throw new EdgefleetError(ErrorCode.UNAVAILABLE, `artifact download failed: ${(err as Error).message}`, { cause: err });
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', onOuter);
  }
}

/**
 * Downloads until the .part file holds exactly the signed bytes. Throws ArtifactMismatch when
 * the artifact is not what was signed (size or sha256; the .part is deleted), EdgefleetError
 * UNAVAILABLE/TIMEOUT/... when the transport failed `attempts` times without progress.
 */
export async function downloadArtifact(req: DownloadRequest, o: DownloadOptions): Promise<void> {
  if (req.size > o.maxBytes) {
    throw new ArtifactMismatch(ErrorCode.PAYLOAD_TOO_LARGE, `artifact of ${req.size} bytes exceeds updates.download.maxBytes ${o.maxBytes}`);
  }
  const backoff = new Backoff(o.backoff);
  let failures = 0;
  // Progress = a size never reached before; a server that keeps serving the same short prefix
  // (signed size larger than the real artifact) must use up the attempts, not loop forever.
  let best = await sizeOf(req.path);
  for (;;) {
    try {
      await attempt(req, o);
      break;
    } catch (err) {
      if (err instanceof ArtifactMismatch) {
        await unlink(req.path).catch(() => undefined);
        throw err;
      }
      const e = err as EdgefleetError;
      if (e.code === ErrorCode.ABORTED || e.code === ErrorCode.UNAUTHORIZED || e.code === ErrorCode.NOT_FOUND) throw e;
      const now = await sizeOf(req.path);
      if (now > best) {
        best = now;
        backoff.reset();
      } else failures++;
      if (failures >= o.attempts) throw new EdgefleetError(e.code, `${e.message} (gave up after ${failures} attempts without progress)`, { cause: e });
      const delay = backoff.next();
      o.log.warn({ err: e, failures, have: now, size: req.size, retryInMs: delay }, 'artifact download interrupted; resuming');
      await sleep(delay, undefined, { signal: o.signal }).catch(() => undefined);
      if (o.signal?.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'artifact download aborted');
    }
  }
  const size = await sizeOf(req.path);
  const digest = await hashFile(req.path);
  if (size !== req.size || digest !== req.sha256) {
    await unlink(req.path).catch(() => undefined);
    throw new ArtifactMismatch(ErrorCode.BAD_MODEL, `downloaded artifact (${size} bytes, sha256 ${digest}) does not match the signed manifest (${req.size} bytes, sha256 ${req.sha256})`);
  }
}
