/**
 * The updater's one commit point: `<updates.dir>/state.json`, per model name the active and
 * previous installed version, the highest release counter accepted and the recent refusals.
 * Everything else on disk (version directories, .partial downloads, quarantine) is derived from
 * or garbage relative to this file, so a SIGKILL at any point of an install leaves either the
 * old state (the new version dir is garbage) or the new one (the new version dir is complete,
 * because it was fsynced and renamed into place before the state named it).
 *
 * Written atomically: tmp file + fsync + rename + fsync of the directory. A state file that does
 * not parse is kept aside as `state.json.corrupt-<ts>` and the agent starts from its config
 * models, which is safe (highestCounter then restarts at 0; the hub re-sends its release).
 */
import { readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { writeFileDurable } from '../../shared/files.ts';
import { NameSchema } from '../../shared/ids.ts';
import { BundleMemberRefSchema, FailedReleaseSchema, InstalledVersionSchema, MAX_BUNDLE, type FailedRelease, type InstalledVersion } from '../../shared/updates.ts';

export const STATE_FILE = 'state.json';
export const MAX_FAILED = 16;

export const SlotStateSchema = z.object({
  active: InstalledVersionSchema.nullable(),
  previous: InstalledVersionSchema.optional(),
  highestCounter: z.number().int().nonnegative(),
  probationUntil: z.number().int().nonnegative().optional(),
  failed: z.array(FailedReleaseSchema).max(MAX_FAILED),
  /**
   * Set when `active` was installed with other releases as one unit (InstallArgs.bundle): every
   * release of the unit, this one included. A rollback of any of them, or one that cannot start,
   * takes the others back with it while they still serve these versions.
   */
  bundle: z.array(BundleMemberRefSchema).min(2).max(MAX_BUNDLE + 1).optional(),
});
export type SlotState = z.infer<typeof SlotStateSchema>;

export const UpdaterStateSchema = z.object({
  v: z.literal(1),
  models: z.record(NameSchema, SlotStateSchema),
});
export type UpdaterState = z.infer<typeof UpdaterStateSchema>;

export const emptyState = (): UpdaterState => ({ v: 1, models: {} });

/** Directory of an installed release, relative to updates.dir (counter 0 = a config model: none). */
export const versionDirName = (v: Pick<InstalledVersion, 'version' | 'counter'>): string => `${v.version}-${v.counter}`;

export type LoadedState = { state: UpdaterState; problem?: string };

/** Reads the state; a missing file is the empty state, a corrupt one is set aside (never thrown). */
export async function loadState(dir: string, now: number = Date.now()): Promise<LoadedState> {
  const path = join(dir, STATE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: emptyState() };
    return { state: emptyState(), problem: `cannot read ${path}: ${(err as Error).message}` };
  }
  let why: string;
  try {
    const parsed = UpdaterStateSchema.safeParse(JSON.parse(text));
    if (parsed.success) return { state: parsed.data };
    why = parsed.error.issues[0]?.message ?? 'invalid';
  } catch (err) {
    why = (err as Error).message;
  }
  await rename(path, `${path}.corrupt-${now}`).catch(() => unlink(path).catch(() => undefined));
  return { state: emptyState(), problem: `${path} is corrupt (${why}); set aside` };
}

export async function saveState(dir: string, state: UpdaterState): Promise<void> {
  await writeFileDurable(join(dir, STATE_FILE), dir, `${JSON.stringify(state, null, 1)}\n`);
}

/** The failed list with `f` appended (replacing an entry for the same counter), newest last, capped. */
export function withFailed(failed: readonly FailedRelease[], f: FailedRelease): FailedRelease[] {
  return [...failed.filter((x) => x.counter !== f.counter || x.version !== f.version), f].slice(-MAX_FAILED);
}
