/**
 * Progress output for long CLI operations (model push, rollout watch), always on stderr so
 * stdout stays the command's answer. Three modes:
 *
 * - `tty`: stderr is a terminal: one line redrawn in place (`\r` + erase line), at most every
 *   `minIntervalMs` (a 5 MB upload reads ~80 chunks: redrawing on each would flood a slow SSH
 *   session), with milestones (`step`) kept as their own lines above it;
 * - `lines`: `--progress` without a terminal (CI logs, `| tee`): no redraws, a plain line per
 *   milestone only, since `\r` turns a log file into one huge line;
 * - `off`: not a terminal and no `--progress`, or `--json` (scripts parse stdout and may read
 *   stderr for errors: progress would only be noise).
 *
 * The clock is injectable so the throttle is tested without sleeping.
 */
import type { CliIo } from './command.ts';

export type ProgressMode = 'tty' | 'lines' | 'off';

/** The mode for a command: `--json` wins, then a terminal, then `--progress`. */
export function progressMode(io: CliIo, flags: { json?: boolean; progress?: boolean }): ProgressMode {
  if (flags.json === true || !io.stderr) return 'off';
  if (io.stderr.isTTY) return 'tty';
  return flags.progress === true ? 'lines' : 'off';
}

/** `[#########...........]` for a fraction in 0..1. */
export function bar(fraction: number, width = 24): string {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  const full = Math.round(f * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}

export class Progress {
  readonly mode: ProgressMode;
  readonly #write: (s: string) => void;
  readonly #columns: number;
  readonly #now: () => number;
  readonly #minIntervalMs: number;
  #lastDraw = -Infinity;
  #pending: string | undefined;
  /** The text of the line currently drawn (tty), so a step can clear it and redraw it below. */
  #drawn: string | undefined;

  constructor(io: CliIo, mode: ProgressMode, opts: { now?: () => number; minIntervalMs?: number } = {}) {
    this.mode = io.stderr ? mode : 'off';
    this.#write = io.stderr ? (s) => io.stderr?.write(s) : () => undefined;
    this.#columns = io.stderr?.columns ?? 80;
    this.#now = opts.now ?? Date.now;
    this.#minIntervalMs = opts.minIntervalMs ?? 100;
  }

  /** The live status line (tty only): redrawn at most every minIntervalMs unless `force`. */
  update(text: string, force = false): void {
    if (this.mode !== 'tty') return;
    if (text === this.#drawn) {
      this.#pending = undefined;
      return;
    }
    const now = this.#now();
    if (!force && now - this.#lastDraw < this.#minIntervalMs) {
      this.#pending = text;
      return;
    }
    this.#draw(text);
    this.#lastDraw = now;
  }

  /** A milestone: its own line in tty and lines mode; the live line, if any, is redrawn under it. */
  step(text: string): void {
    if (this.mode === 'off') return;
    if (this.mode === 'lines') {
      this.#write(`${text}\n`);
      return;
    }
    const live = this.#pending ?? this.#drawn;
    this.#write(`\r\x1b[2K${text}\n`);
    this.#drawn = undefined;
    if (live !== undefined) this.#draw(live);
  }

  /** Draws what a throttled update left pending, then ends the live line. */
  done(): void {
    if (this.mode !== 'tty') return;
    if (this.#pending !== undefined) this.#draw(this.#pending);
    if (this.#drawn !== undefined) this.#write('\n');
    this.#drawn = undefined;
  }

  #draw(text: string): void {
    const fit = text.length >= this.#columns ? `${text.slice(0, Math.max(0, this.#columns - 2))}…` : text;
    this.#write(`\r\x1b[2K${fit}`);
    this.#drawn = text;
    this.#pending = undefined;
  }
}
