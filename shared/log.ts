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
