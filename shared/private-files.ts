/**
 * State files are private to the service's user (issue #14: `hub.db` and its WAL were
 * world-readable): files 0600, directories 0700, whatever the umask. Writers pass these modes
 * when they create; `securePrivateTree` fixes what an earlier version (or an operator's copy)
 * left wider, at start, and `privateSqlite` narrows a database file before SQLite creates its
 * -wal and -shm (which it creates with the database file's mode).
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from './log.ts';

export const PRIVATE_FILE_MODE = 0o600;
export const PRIVATE_DIR_MODE = 0o700;

/**
 * Creates `dir` (0700) if missing and narrows it and everything under it that group or others
 * may access: files to 0600, directories to 0700 (symlinks are left alone). Logs (warn) and
 * returns the paths it changed.
 */
export function securePrivateTree(dir: string, log: Logger): string[] {
  mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  const fixed: string[] = [];
  const visit = (path: string): void => {
    const st = lstatSync(path);
    if (st.isSymbolicLink()) return;
    const want = st.isDirectory() ? PRIVATE_DIR_MODE : PRIVATE_FILE_MODE;
    if ((st.mode & 0o777) !== want && (st.mode & 0o077) !== 0) {
      chmodSync(path, want);
      fixed.push(path);
    }
    if (st.isDirectory()) for (const name of readdirSync(path)) visit(join(path, name));
  };
  visit(dir);
  if (fixed.length) log.warn({ dir, fixed: fixed.length, first: fixed.slice(0, 5) }, 'narrowed state file modes to 0600 (directories 0700)');
  return fixed;
}

/** Narrows a SQLite database file and its -wal/-shm (those present) to 0600. */
export function privateSqlite(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`, `${file}-journal`]) if (existsSync(f)) chmodSync(f, PRIVATE_FILE_MODE);
}
