/**
 * Folder input: a camera drops JPEG/PNG files (or JSON readings, for a tabular model) into a
 * directory; each complete file is processed exactly once, also across restarts, then moved to
 * `done/` or `failed/` (with `<file>.error.txt` beside it).
 *
 * - Discovery: fs.watch wakes a scan; a periodic scan is the fallback (watch events get lost on
 *   network shares and when the kernel queue overflows). A file is taken once its size and
 *   mtime stayed the same for `stableMs`, so a camera still writing it is left alone; dot files
 *   (the usual temp names) are never taken.
 * - Claim: the file is renamed into `<path>/.processing/` (atomic within one file system). After
 *   a crash, whatever is in `.processing/` is resumed first.
 * - Exactly once: see folder-journal.ts for the commit order and why it survives a crash at any
 *   point without a duplicate or a loss.
 * - Back-pressure: at most `concurrency` files are claimed at a time; the rest wait on disk. Files
 *   are never dropped: OVERLOADED, a stopped pipeline and storage errors retry with backoff.
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { existsSync, renameSync } from 'node:fs';
import { extname, join } from 'node:path';
import { Backoff } from '../../shared/backoff.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { PipelineMetrics } from '../metrics.ts';
import { INFERENCE_STREAM, type InferRequest, type Pipeline } from '../pipeline.ts';
import type { FolderJournal } from './folder-journal.ts';

export const PROCESSING_DIR = '.processing';
export const DONE_DIR = 'done';
export const FAILED_DIR = 'failed';

/** What recovery needs from the outbox: the records still waiting for the hub's ack. */
export interface PendingRecords {
  readBatch(afterRowId: number, limit: number): Array<{ rowid: number; stream: string; body: Record<string, unknown> }>;
}

export interface FolderInputOptions {
  pipeline: Pipeline;
  path: string;
  pattern: string;
  stableMs: number;
  scanMs: number;
  concurrency: number;
  maxFileBytes: number;
  journal: FolderJournal;
  outbox: PendingRecords;
  metrics: PipelineMetrics;
  log: Logger;
}

/** `*`, `?` and `{a,b}` on a file name, case-insensitive. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  let depth = 0;
  for (const ch of glob) {
    if (ch === '*') re += '[^/]*';
    else if (ch === '?') re += '[^/]';
    else if (ch === '{') {
      re += '(?:';
      depth++;
    } else if (ch === '}' && depth > 0) {
      re += ')';
      depth--;
    } else if (ch === ',' && depth > 0) re += '|';
    else re += ch.replace(/[.+^$()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 'i');
}

/** Transient failures: the file stays claimed and is retried. Anything else fails the file. */
const RETRY_CODES = new Set<string>([ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.STORAGE, ErrorCode.ABORTED, ErrorCode.TIMEOUT]);
/** INFERENCE (ORT failed, a worker died) is retried this often before the file fails. */
const MAX_INFERENCE_ATTEMPTS = 3;

interface Seen {
  size: number;
  mtimeMs: number;
  since: number;
}

export class FolderInput implements Component {
  readonly name: string;
  readonly #re: RegExp;
  readonly #dirs: { inbox: string; processing: string; done: string; failed: string };
  readonly #seen = new Map<string, Seen>();
  /** Stable files found by the last scan and not yet claimed, oldest first. */
  #ready: string[] = [];
  /** Claimed file names (in `.processing/`) being worked on or waiting for a retry. */
  readonly #claimed = new Set<string>();
  readonly #attempts = new Map<string, number>();
  readonly #throttle = new LogThrottle(5000);
  readonly #backoff = new Backoff({ initialMs: 100, maxMs: 5000, factor: 2, jitter: 0.3 });
  #active = 0;
  #watcher: FSWatcher | undefined;
  #interval: NodeJS.Timeout | undefined;
  #scanTimer: NodeJS.Timeout | undefined;
  #retryTimers = new Set<NodeJS.Timeout>();
  #scanning = false;
  #rescan = false;
  #stopped = true;
  #idle: Array<() => void> = [];
  #stats = { done: 0, failed: 0, recovered: 0 };

  constructor(private readonly o: FolderInputOptions) {
    this.name = `input:folder:${o.pipeline.pipelineName}`;
    this.#re = globToRegExp(o.pattern);
    this.#dirs = { inbox: o.path, processing: join(o.path, PROCESSING_DIR), done: join(o.path, DONE_DIR), failed: join(o.path, FAILED_DIR) };
  }

  stats(): { done: number; failed: number; recovered: number; claimed: number; active: number } {
    return { ...this.#stats, claimed: this.#claimed.size, active: this.#active };
  }

  async start(signal: AbortSignal): Promise<void> {
    if (signal.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'folder input start aborted');
    for (const d of Object.values(this.#dirs)) await mkdir(d, { recursive: true });
    this.#stopped = false;
    // Files claimed before a crash or stop come first, in the order they were claimed.
    const leftovers = (await readdir(this.#dirs.processing, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
    const keys = new Set<string>();
    for (const name of leftovers) {
      const st = await stat(join(this.#dirs.processing, name)).catch(() => undefined);
      if (st) keys.add(fileKey(name, st.size, st.mtimeMs));
    }
    const pruned = this.o.journal.prune(this.o.pipeline.pipelineName, keys);
    if (leftovers.length || pruned) this.o.log.info({ pipeline: this.o.pipeline.pipelineName, resumed: leftovers.length, pruned }, 'folder input resuming claimed files');
    for (const name of leftovers) {
      this.#claimed.add(name);
      this.#stats.recovered++;
    }
    this.#fill(leftovers);
    try {
      this.#watcher = watch(this.#dirs.inbox, { persistent: false }, () => this.#scheduleScan(20));
      this.#watcher.on('error', (err) => {
        this.o.log.warn({ err, path: this.#dirs.inbox }, 'folder watch failed; periodic scan continues');
        this.#watcher?.close();
        this.#watcher = undefined;
      });
    } catch (err) {
      this.o.log.warn({ err, path: this.#dirs.inbox }, 'cannot watch folder; relying on the periodic scan');
    }
    this.#interval = setInterval(() => this.#scheduleScan(0), this.o.scanMs);
    this.#scheduleScan(0);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#watcher?.close();
    this.#watcher = undefined;
    clearInterval(this.#interval);
    clearTimeout(this.#scanTimer);
    for (const t of this.#retryTimers) clearTimeout(t);
    this.#retryTimers.clear();
    if (this.#active > 0 || this.#scanning) await new Promise<void>((r) => this.#idle.push(r));
    // Files still claimed stay in .processing/ and are resumed at the next start.
    this.#claimed.clear();
  }

  #scheduleScan(delayMs: number): void {
    if (this.#stopped) return;
    if (this.#scanTimer) {
      if (delayMs > 0) return;
      clearTimeout(this.#scanTimer);
    }
    this.#scanTimer = setTimeout(() => {
      this.#scanTimer = undefined;
      void this.#scan();
    }, delayMs);
  }

  async #scan(): Promise<void> {
    if (this.#scanning) {
      this.#rescan = true;
      return;
    }
    this.#scanning = true;
    try {
      do {
        this.#rescan = false;
        await this.#scanOnce();
      } while (this.#rescan && !this.#stopped);
    } catch (err) {
      this.#throttle.run('scan', (suppressed) => this.o.log.warn({ err, path: this.#dirs.inbox, suppressed }, 'folder scan failed'));
    } finally {
      this.#scanning = false;
      this.#settle();
    }
  }

  async #scanOnce(): Promise<void> {
    const entries = await readdir(this.#dirs.inbox, { withFileTypes: true });
    const now = Date.now();
    const present = new Set<string>();
    const ready: Array<{ name: string; mtimeMs: number }> = [];
    let unstable = false;
    for (const e of entries) {
      if (!e.isFile() || e.name.startsWith('.') || !this.#re.test(e.name)) continue;
      present.add(e.name);
      const st = await stat(join(this.#dirs.inbox, e.name)).catch(() => undefined);
      if (!st) continue;
      const prev = this.#seen.get(e.name);
      if (!prev || prev.size !== st.size || prev.mtimeMs !== st.mtimeMs) {
        this.#seen.set(e.name, { size: st.size, mtimeMs: st.mtimeMs, since: now });
        if (this.o.stableMs > 0) {
          unstable = true;
          continue;
        }
      } else if (now - prev.since < this.o.stableMs) {
        unstable = true;
        continue;
      }
      ready.push({ name: e.name, mtimeMs: st.mtimeMs });
    }
    for (const name of this.#seen.keys()) if (!present.has(name)) this.#seen.delete(name);
    // Oldest first; claim only what can run now, the rest waits on disk.
    ready.sort((a, b) => a.mtimeMs - b.mtimeMs || (a.name < b.name ? -1 : 1));
    this.#ready = ready.map((r) => r.name);
    this.#claimReady();
    if (unstable) this.#scheduleScan(Math.max(20, this.o.stableMs));
  }

  /** Claims ready files (from the last scan) while there are free slots. */
  #claimReady(): void {
    const claimed: string[] = [];
    while (!this.#stopped && this.#claimed.size < this.o.concurrency && this.#ready.length > 0) {
      const name = this.#ready.shift()!;
      if (this.#claimed.has(name) || existsSync(join(this.#dirs.processing, name))) continue;
      try {
        renameSync(join(this.#dirs.inbox, name), join(this.#dirs.processing, name));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.#throttle.run('claim', (suppressed) => this.o.log.warn({ err, file: name, suppressed }, 'cannot claim file'));
        }
        continue;
      }
      this.#seen.delete(name);
      this.#claimed.add(name);
      claimed.push(name);
    }
    this.#fill(claimed);
  }

  #fill(names: readonly string[]): void {
    for (const name of names) void this.#run(name);
  }

  async #run(name: string): Promise<void> {
    this.#active++;
    let outcome: 'finished' | 'retry';
    try {
      outcome = await this.#process(name);
    } catch (err) {
      // Only unexpected failures (file system) land here; keep the file claimed and retry.
      this.#throttle.run('process', (suppressed) => this.o.log.error({ err, file: name, suppressed }, 'folder file processing failed; will retry'));
      outcome = 'retry';
    } finally {
      this.#active--;
    }
    if (outcome === 'retry' && !this.#stopped) {
      const t = setTimeout(() => {
        this.#retryTimers.delete(t);
        if (!this.#stopped) this.#fill([name]);
      }, this.#backoff.next());
      this.#retryTimers.add(t);
    } else {
      if (outcome === 'finished') this.#backoff.reset();
      this.#claimed.delete(name);
      // A slot is free: files that were ready but not claimed can go now.
      this.#claimReady();
    }
    this.#settle();
  }

  #settle(): void {
    if (this.#active === 0 && !this.#scanning && this.#idle.length) for (const r of this.#idle.splice(0)) r();
  }

  /** One claimed file, start to finish. Returns 'retry' to keep it claimed for later. */
  async #process(name: string): Promise<'finished' | 'retry'> {
    const { pipeline, journal } = this.o;
    const pname = pipeline.pipelineName;
    const src = join(this.#dirs.processing, name);
    const st = await stat(src).catch((err: unknown) => {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    });
    if (!st) return 'finished'; // someone removed it; nothing to report
    const key = fileKey(name, st.size, st.mtimeMs);
    const row = journal.get(pname, key);
    if (row?.state === 'done') {
      this.#finish(name, key, 'done');
      return 'finished';
    }
    if (row?.state === 'appending' && row.record) {
      // A crash between journal step 1 and 3: append only if the outbox does not hold it.
      if (!this.#inOutbox(pname, key)) {
        try {
          pipeline.commitNow(row.record);
        } catch {
          return 'retry';
        }
      }
      journal.done(pname, key);
      this.#finish(name, key, 'done');
      return 'finished';
    }
    if (st.size > this.o.maxFileBytes) {
      const e = new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `file is ${st.size} bytes, limit ${this.o.maxFileBytes}`);
      pipeline.countRejected(e);
      await this.#fail(name, e);
      return 'finished';
    }
    const bytes = await readFile(src);
    const req: InferRequest =
      pipeline.inputKind === 'image' ? { kind: 'image', bytes, id: name, ts: Math.trunc(st.mtimeMs), source: 'folder' } : { kind: 'json', body: bytes, id: name, ts: Math.trunc(st.mtimeMs), source: 'folder' };
    let deferred;
    try {
      deferred = await pipeline.inferDeferred(req, { file: key });
    } catch (err) {
      const e = toEdgefleetError(err);
      if (RETRY_CODES.has(e.code)) return 'retry';
      if (e.code === ErrorCode.INFERENCE) {
        const n = (this.#attempts.get(name) ?? 0) + 1;
        this.#attempts.set(name, n);
        if (n < MAX_INFERENCE_ATTEMPTS) return 'retry';
      }
      this.#attempts.delete(name);
      await this.#fail(name, e);
      return 'finished';
    }
    this.#attempts.delete(name);
    const record = deferred.record;
    // From here to the move: synchronous, one event-loop turn (folder-journal.ts).
    if (record) {
      try {
        journal.appending(pname, key, record);
      } catch (err) {
        this.#logStorage(err);
        return 'retry'; // nothing committed anywhere yet; the inference is simply redone
      }
      try {
        pipeline.commitNow(record);
      } catch {
        return 'retry'; // journal says `appending`, outbox has nothing: recovery appends it
      }
      try {
        journal.done(pname, key);
      } catch (err) {
        this.#logStorage(err);
        return 'retry'; // `appending` + record in the outbox: recovery finds it, no duplicate
      }
    }
    this.#finish(name, key, 'done');
    return 'finished';
  }

  #inOutbox(pipeline: string, key: string): boolean {
    return pendingFileKeys(this.o.outbox).has(fileRef(pipeline, key));
  }

  /** Moves a finished file out of `.processing/` and forgets its journal row. */
  #finish(name: string, key: string, outcome: 'done' | 'failed'): void {
    const dest = freeName(outcome === 'done' ? this.#dirs.done : this.#dirs.failed, name);
    renameSync(join(this.#dirs.processing, name), dest);
    this.#stats[outcome]++;
    this.o.metrics.folderFiles.inc({ pipeline: this.o.pipeline.pipelineName, outcome });
    try {
      this.o.journal.delete(this.o.pipeline.pipelineName, key);
    } catch (err) {
      this.#logStorage(err); // a stale row is pruned at the next start
    }
  }

  async #fail(name: string, e: EdgefleetError): Promise<void> {
    const st = await stat(join(this.#dirs.processing, name));
    const dest = freeName(this.#dirs.failed, name);
    // The error file first: when the image shows up in failed/, its reason is already beside it.
    await writeFile(`${dest}.error.txt`, `${e.code}: ${e.message}\n`);
    this.#finish(name, fileKey(name, st.size, st.mtimeMs), 'failed');
    if (e.code !== ErrorCode.BAD_INPUT && e.code !== ErrorCode.BAD_PAYLOAD && e.code !== ErrorCode.PAYLOAD_TOO_LARGE) {
      this.o.log.warn({ file: name, code: e.code, err: e }, 'folder file failed');
    }
  }

  #logStorage(err: unknown): void {
    this.#throttle.run('storage', (suppressed) => this.o.log.error({ err, suppressed }, 'folder journal write failed; will retry'));
  }
}

/** Identity of one version of a file: a camera may reuse names. */
export function fileKey(name: string, size: number, mtimeMs: number): string {
  return `${name}:${size}:${Math.trunc(mtimeMs)}`;
}

/** `dir/name`, or `dir/<base>~<n><ext>` when a file of that name is already there. */
function freeName(dir: string, name: string): string {
  let dest = join(dir, name);
  if (!existsSync(dest)) return dest;
  const ext = extname(name);
  const base = name.slice(0, name.length - ext.length);
  for (let n = 1; existsSync(dest); n++) dest = join(dir, `${base}~${n}${ext}`);
  return dest;
}

const fileRef = (pipeline: string, key: string): string => `${pipeline}\u0000${key}`;

/** The (pipeline, file key) of every folder inference record still waiting in the outbox. */
function pendingFileKeys(outbox: PendingRecords): Set<string> {
  const out = new Set<string>();
  for (let after = 0; ; ) {
    const rows = outbox.readBatch(after, 1000);
    if (rows.length === 0) return out;
    for (const r of rows) if (r.stream === INFERENCE_STREAM && typeof r.body['file'] === 'string' && typeof r.body['pipeline'] === 'string') out.add(fileRef(r.body['pipeline'], r.body['file']));
    after = rows[rows.length - 1]!.rowid;
  }
}

/**
 * Settles the journal rows a crash left between step 1 (`appending`) and step 3 (`done`), before
 * the hub link starts: a record still in the outbox is kept as it is, a missing one is appended,
 * and both rows become `done` (the folder input then only moves the file). Run any later and the
 * link may already have sent the outbox's copy and had it acked (deleted): the check "is it in
 * the outbox" would then say no and append it a second time (the folder test's crash point 2
 * failed that way in CI under load). Called from agent/main.ts between the journal's start and
 * the link's. Returns how many records were appended.
 */
export function settleFolderJournal(journal: Pick<FolderJournal, 'appendingRows' | 'done'>, outbox: PendingRecords & { appendNow(stream: string, kind: string, body: Record<string, unknown>, ts: number): unknown }): { kept: number; appended: number } {
  const rows = journal.appendingRows();
  if (rows.length === 0) return { kept: 0, appended: 0 };
  const pending = pendingFileKeys(outbox);
  let appended = 0;
  for (const row of rows) {
    if (row.record && !pending.has(fileRef(row.pipeline, row.fileKey))) {
      outbox.appendNow(row.record.stream, row.record.kind, row.record.body, row.record.ts);
      appended++;
    }
    journal.done(row.pipeline, row.fileKey);
  }
  return { kept: rows.length - appended, appended };
}
