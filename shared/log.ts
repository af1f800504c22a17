/**
 * Structured JSON logs (pino). The composition root makes one root logger and hands each
 * component a child (`logger.child({ component })`); nothing imports a global logger.
 * Secrets are redacted by path so a token in a config or error never reaches a log.
 */
import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const REDACT_PATHS = [
  'token',
  'password',
  '*.token',
  '*.password',
  '*.*.token',
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
];

export function createLogger(opts: { name: string; level?: LogLevel; destination?: DestinationStream; base?: Record<string, unknown> }): Logger {
  return pino(
    {
      name: opts.name,
      level: opts.level ?? 'info',
      base: { pid: process.pid, ...opts.base },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      serializers: { err: pino.stdSerializers.err },
    },
    opts.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

/** A logger that drops everything: for unit tests that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/**
 * Caps how often one kind of message is logged (bad input can arrive thousands of times a
 * second); suppressed occurrences are counted and reported with the next line that gets out.
 */
export class LogThrottle {
  readonly #last = new Map<string, { at: number; suppressed: number }>();
  constructor(
    private readonly intervalMs = 1000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Calls `emit(suppressedSinceLast)` unless `key` was logged less than intervalMs ago. */
  run(key: string, emit: (suppressed: number) => void): void {
    const t = this.now();
    const e = this.#last.get(key);
    if (e && t - e.at < this.intervalMs) {
      e.suppressed++;
      return;
    }
    emit(e?.suppressed ?? 0);
    this.#last.set(key, { at: t, suppressed: 0 });
    if (this.#last.size > 1000) this.#last.clear();
  }
}
