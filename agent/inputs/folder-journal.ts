/**
 * The folder input's journal: a small SQLite table of files between "result computed" and
 * "moved to done/", keyed by pipeline + file key (name, size, mtime). It is what makes a folder
 * file's telemetry exactly-once across crashes, together with the order in folder-input.ts:
 *
 *   1. journal row `appending` with the telemetry record       (commit)
 *   2. outbox.appendNow(record)                                  (commit)
 *   3. journal row `done`                                        (commit)
 *   4. rename .processing/<file> → done/<file>, delete the row
 *
 * Steps 1–4 run synchronously in one event-loop turn. A crash after 2 and before 3 leaves
 * `appending`; the record is then either still in the outbox (the link sends only on a later
 * turn, so the hub cannot have acked and deleted it) or it was never committed. Recovery looks
 * for it in the outbox and appends it only if absent: never twice, never lost. A crash after 3
 * only has the move left to do. Rows live only while a file sits in `.processing/`.
 *
 * Durability follows the outbox's `synchronous` setting (WAL survives kill -9 either way).
 */
import Database from 'better-sqlite3';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { privateSqlite } from '../../shared/private-files.ts';
import type { PendingRecord } from '../pipeline.ts';

export type JournalState = 'appending' | 'done';

export interface JournalRow {
  pipeline: string;
  fileKey: string;
  state: JournalState;
  record: PendingRecord | undefined;
}

const SCHEMA = `CREATE TABLE IF NOT EXISTS folder_files (
  pipeline TEXT NOT NULL,
  file_key TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('appending', 'done')),
  record TEXT,
  updated INTEGER NOT NULL,
  PRIMARY KEY (pipeline, file_key)
) STRICT;`;

export class FolderJournal implements Component {
  readonly name = 'folder-journal';
  #db: Database.Database | undefined;

  constructor(private readonly o: { path: string; synchronous: 'NORMAL' | 'FULL' }) {}

  start(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new EdgefleetError(ErrorCode.ABORTED, 'folder journal start aborted'));
    try {
      const db = new Database(this.o.path, { timeout: 1000 });
      privateSqlite(this.o.path); // before WAL mode creates -wal and -shm with its mode (issue #14)
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${this.o.synchronous}`);
      db.exec(SCHEMA);
      this.#db = db;
    } catch (err) {
      return Promise.reject(toEdgefleetError(err, ErrorCode.STORAGE));
    }
    return Promise.resolve();
  }

  stop(): Promise<void> {
    this.#db?.close();
    this.#db = undefined;
    return Promise.resolve();
  }

  get(pipeline: string, fileKey: string): JournalRow | undefined {
    const row = this.#require()
      .prepare<[string, string], { state: JournalState; record: string | null }>('SELECT state, record FROM folder_files WHERE pipeline = ? AND file_key = ?')
      .get(pipeline, fileKey);
    if (!row) return undefined;
    return { pipeline, fileKey, state: row.state, record: row.record ? (JSON.parse(row.record) as PendingRecord) : undefined };
  }

  /** Rows left in step 1 or 2 (a crash before `done`), every pipeline's, oldest first. */
  appendingRows(): JournalRow[] {
    const rows = this.#require()
      .prepare<[], { pipeline: string; file_key: string; record: string | null }>("SELECT pipeline, file_key, record FROM folder_files WHERE state = 'appending' ORDER BY updated")
      .all();
    return rows.map((r) => ({ pipeline: r.pipeline, fileKey: r.file_key, state: 'appending' as const, record: r.record ? (JSON.parse(r.record) as PendingRecord) : undefined }));
  }

  /** Step 1: the record about to be appended, committed before the outbox sees it. */
  appending(pipeline: string, fileKey: string, record: PendingRecord): void {
    this.#run('INSERT INTO folder_files (pipeline, file_key, state, record, updated) VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline, file_key) DO UPDATE SET state = excluded.state, record = excluded.record, updated = excluded.updated', pipeline, fileKey, 'appending', JSON.stringify(record), Date.now());
  }

  /** Step 3: the record is in the outbox; only the move is left. */
  done(pipeline: string, fileKey: string): void {
    this.#run('INSERT INTO folder_files (pipeline, file_key, state, record, updated) VALUES (?, ?, ?, NULL, ?) ON CONFLICT (pipeline, file_key) DO UPDATE SET state = excluded.state, record = NULL, updated = excluded.updated', pipeline, fileKey, 'done', Date.now());
  }

  delete(pipeline: string, fileKey: string): void {
    this.#run('DELETE FROM folder_files WHERE pipeline = ? AND file_key = ?', pipeline, fileKey);
  }

  /** Drops rows of files no longer in `.processing/` (a crash between the move and the delete). */
  prune(pipeline: string, keep: ReadonlySet<string>): number {
    const db = this.#require();
    const rows = db.prepare<[string], { file_key: string }>('SELECT file_key FROM folder_files WHERE pipeline = ?').all(pipeline);
    const del = db.prepare('DELETE FROM folder_files WHERE pipeline = ? AND file_key = ?');
    let n = 0;
    db.transaction(() => {
      for (const r of rows) if (!keep.has(r.file_key)) n += del.run(pipeline, r.file_key).changes;
    })();
    return n;
  }

  #run(sql: string, ...args: unknown[]): void {
    try {
      this.#require().prepare(sql).run(...args);
    } catch (err) {
      throw toEdgefleetError(err, ErrorCode.STORAGE);
    }
  }

  #require(): Database.Database {
    if (!this.#db) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'folder journal is not running');
    return this.#db;
  }
}
