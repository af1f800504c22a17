/**
 * Maintenance windows per device group (config `rollouts.windows`): cron expressions (node-cron)
 * that match every minute inside a window, e.g. `* 22-23 * * 1-5` = weekdays 22:00-23:59.
 * A group without windows is always open. Evaluated against the engine's injected clock,
 * truncated to the minute (5-field expressions only: a seconds field would match one second a
 * minute). node-cron keeps every task it creates in a process-wide registry, so the tasks are
 * created once here and destroyed in close().
 */
import cron from 'node-cron';

type Task = ReturnType<typeof cron.createTask>;

/** Why a window expression is refused, or undefined when it is usable. */
export function windowExpressionProblem(expr: string): string | undefined {
  if (expr.trim().split(/\s+/).length !== 5) return `"${expr}": use 5 fields (minute hour day-of-month month day-of-week)`;
  if (!cron.validate(expr)) return `"${expr}" is not a valid cron expression`;
  return undefined;
}

export function timezoneProblem(tz: string): string | undefined {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return undefined;
  } catch {
    return `unknown time zone "${tz}"`;
  }
}

export class MaintenanceWindows {
  readonly #tasks = new Map<string, Task[]>();

  constructor(windows: Readonly<Record<string, readonly string[]>>, timezone: string) {
    for (const [group, exprs] of Object.entries(windows)) {
      this.#tasks.set(
        group,
        exprs.map((e) => cron.createTask(e, () => undefined, { timezone, name: `window:${group}` })),
      );
    }
  }

  /** Whether devices of `group` may start an install at `at` (epoch ms). */
  isOpen(group: string, at: number): boolean {
    const tasks = this.#tasks.get(group);
    if (!tasks || tasks.length === 0) return true;
    const minute = new Date(Math.floor(at / 60_000) * 60_000);
    return tasks.some((t) => t.match(minute));
  }

  hasWindows(group: string): boolean {
    return (this.#tasks.get(group)?.length ?? 0) > 0;
  }

  close(): void {
    for (const tasks of this.#tasks.values()) for (const t of tasks) void t.destroy();
    this.#tasks.clear();
  }
}
