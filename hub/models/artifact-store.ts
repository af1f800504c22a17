/**
 * Model artifacts on disk, content-addressed: `<root>/<sha256[0:2]>/<sha256>`. An upload streams
 * into a temp file under `<root>/tmp/` while its sha256 and size are checked against what the
 * manifest promises; a body larger than promised is cut off at once. Only a complete, matching
 * file is fsynced and renamed into place (and its directory fsynced), so a crash never leaves a
 * half-written artifact under a valid name. The same bytes uploaded twice are stored once.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat, readdir, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from '../../shared/private-files.ts';

export const SHA256_RE = /^[0-9a-f]{64}$/;

export interface ArtifactInfo {
  sha256: string;
  size: number;
  path: string;
}

/** A verified upload sitting in a temp file: commit() moves it into place, discard() drops it. */
export interface StagedArtifact {
  readonly path: string;
  readonly sha256: string;
  readonly size: number;
  commit(): Promise<ArtifactInfo>;
  discard(): Promise<void>;
}

async function fsyncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // Some filesystems refuse fsync on directories; the rename is still atomic.
  } finally {
    await fh?.close();
  }
}

/**
 * Feeds each chunk of `body` to `write`, one at a time (the stream is paused meanwhile). When
 * `write` throws, the rest of the body is drained and dropped rather than the stream destroyed:
 * destroying a request resets the socket and the client never sees the error reply.
 */
function consume(body: Readable, write: (chunk: Buffer) => Promise<void>): Promise<void> {
  return new Promise((resolve, reject) => {
    let failed = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      body.off('data', onData);
      body.off('end', onEnd);
      body.resume();
      reject(err instanceof Error ? err : new Error(String(err)));
    };
    let pending: Promise<void> = Promise.resolve();
    const onData = (chunk: Buffer): void => {
      body.pause();
      pending = write(chunk).then(() => {
        if (!failed) body.resume();
      }, fail);
    };
    // 'end' can fire while the last write is still pending (pause does not hold it back).
    const onEnd = (): void => {
      void pending.then(() => {
        if (!failed) resolve();
      });
    };
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('error', fail);
    body.once('aborted', () => fail(new Error('client aborted the upload')));
  });
}

export class ArtifactStore {
  readonly root: string;
  readonly #tmp: string;

  constructor(root: string) {
    this.root = root;
    this.#tmp = join(root, 'tmp');
  }

  /** Creates the directories and removes temp files left by a crash. */
  async init(): Promise<void> {
    await mkdir(this.#tmp, { recursive: true, mode: PRIVATE_DIR_MODE });
    for (const f of await readdir(this.#tmp)) await rm(join(this.#tmp, f), { force: true });
  }

  pathOf(sha256: string): string {
    if (!SHA256_RE.test(sha256)) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'sha256: 64 lowercase hex digits');
    return join(this.root, sha256.slice(0, 2), sha256);
  }

  /** The stored file, or undefined. Size comes from the file itself. */
  async get(sha256: string): Promise<ArtifactInfo | undefined> {
    const path = this.pathOf(sha256);
    try {
      const s = await stat(path);
      return s.isFile() ? { sha256, size: s.size, path } : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Streams `body` into a temp file, checking it against `expect`. Rejects BAD_INPUT when the
   * size or sha256 differ (a body longer than `expect.size` is refused at the first extra byte)
   * and leaves nothing behind; resolves with a staged file the caller validates, then commits.
   */
  async stage(body: Readable, expect: { sha256: string; size: number }): Promise<StagedArtifact> {
    const tmpPath = join(this.#tmp, `${randomBytes(8).toString('hex')}.part`);
    const hash = createHash('sha256');
    let size = 0;
    const fh = await open(tmpPath, 'wx', PRIVATE_FILE_MODE);
    try {
      try {
        await consume(body, async (buf) => {
          size += buf.length;
          if (size > expect.size) {
            throw new EdgefleetError(ErrorCode.BAD_INPUT, `artifact is larger than the ${expect.size} bytes the manifest says`);
          }
          hash.update(buf);
          await fh.write(buf);
        });
      } catch (err) {
        if (err instanceof EdgefleetError) throw err;
        throw new EdgefleetError(ErrorCode.BAD_INPUT, `upload interrupted after ${size} bytes: ${(err as Error).message}`, { cause: err });
      }
      if (size !== expect.size) throw new EdgefleetError(ErrorCode.BAD_INPUT, `artifact has ${size} bytes, the manifest says ${expect.size}`);
      const sha256 = hash.digest('hex');
      if (sha256 !== expect.sha256) throw new EdgefleetError(ErrorCode.BAD_INPUT, `artifact sha256 is ${sha256}, the manifest says ${expect.sha256}`);
      await fh.sync();
      await fh.close();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await rm(tmpPath, { force: true });
      throw err;
    }
    return this.#staged(tmpPath, expect.sha256, size);
  }

  #staged(tmpPath: string, sha256: string, size: number): StagedArtifact {
    let done = false;
    return {
      path: tmpPath,
      sha256,
      size,
      commit: async () => {
        if (done) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'staged artifact already committed or discarded');
        done = true;
        const final = this.pathOf(sha256);
        const dir = join(this.root, sha256.slice(0, 2));
        await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
        // Same name = same bytes (content address): replacing an existing file is harmless.
        await rename(tmpPath, final);
        await fsyncDir(dir);
        return { sha256, size, path: final };
      },
      discard: async () => {
        done = true;
        await rm(tmpPath, { force: true });
      },
    };
  }

  /** A read stream over bytes [start, end] (inclusive) of a stored artifact. */
  read(sha256: string, range?: { start: number; end: number }): Readable {
    return createReadStream(this.pathOf(sha256), range ? { start: range.start, end: range.end } : {});
  }
}
