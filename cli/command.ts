/**
 * What every `edgefleet` operator command shares, so each command file holds only its own
 * flags, request and output: parsing (node:util parseArgs, strict), `--help` (usage on stdout,
 * exit 0), usage errors (message and usage on stderr, exit 2), the positional count check, the
 * hub location flags, `--json`, and one mapping from what was thrown to an exit code:
 *
 *   0 ok, 1 the operation failed (refused, rolled back, not found), 2 usage,
 *   3 hub unreachable (no hub.json, connection refused, timeout), 4 auth (401/403, no token).
 *
 * Scripts branch on these (README "Exit codes"), so 3 and 4 exist apart from 1: a cron job
 * retries on 3, pages someone on 4, and gives up on 1. `--help` is looked for before strict
 * parsing, so `edgefleet rollout create --help` works even without the required flags.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { HUB_OPTIONS, HubClient, HubError, UsageError, resolveHub, type CliIo, type HubTarget } from './commands/http-client.ts';
import { safe, safeBlock, safeJson } from './render.ts';

export { HUB_OPTIONS_HELP, UsageError, type CliIo } from './commands/http-client.ts';

export const EXIT = { OK: 0, FAILED: 1, USAGE: 2, UNREACHABLE: 3, AUTH: 4 } as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** Options every hub command accepts: --hub, --token, --data, --help, --json. */
type ParseArgsOptionsConfig = NonNullable<ParseArgsConfig['options']>;

const COMMON = { ...HUB_OPTIONS, json: { type: 'boolean' } } as const;
type Common = typeof COMMON;

type Config<O extends ParseArgsOptionsConfig> = { args: string[]; options: O & Common; allowPositionals: true; strict: true };
export type Values<O extends ParseArgsOptionsConfig> = ReturnType<typeof parseArgs<Config<O>>>['values'];

export interface CommandSpec<O extends ParseArgsOptionsConfig> {
  /** Shown in error messages: `rollout status`. */
  name: string;
  usage: string;
  /** The command's own flags (the common ones are added). */
  options?: O;
  /** Positional argument count and what they are called ("a device id"); default none. */
  positionals?: { min?: number; max?: number; what?: string };
}

export interface CommandContext<O extends ParseArgsOptionsConfig> {
  values: Values<O>;
  positionals: string[];
  io: CliIo;
  json: boolean;
  /** Where the hub is (flags, environment, then the data directory). */
  target: () => Promise<HubTarget>;
  /** A client for the hub, resolved as `target()`. */
  hub: (timeoutMs?: number) => Promise<HubClient>;
  /** Prints `value` as JSON with --json, else `text()` (a function: the text is not built for --json). */
  show: (value: unknown, text: () => string) => void;
}

const isParseArgsError = (err: unknown): err is Error => err instanceof Error && 'code' in err && String((err as { code: unknown }).code).startsWith('ERR_PARSE_ARGS');

/** The exit code for what a command threw. */
export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof UsageError || isParseArgsError(err)) return EXIT.USAGE;
  if (err instanceof HubError) {
    if (err.status === 401 || err.status === 403 || (err.status === 0 && (err.code === 'UNAUTHORIZED' || err.code === 'FORBIDDEN'))) return EXIT.AUTH;
    if (err.status === 0 && err.code === 'UNAVAILABLE') return EXIT.UNREACHABLE;
  }
  return EXIT.FAILED;
}

/** Prints an error the way every command does and returns its exit code. */
export function failure(io: CliIo, command: string, err: unknown, usage: string): ExitCode {
  const code = exitCodeOf(err);
  // One line whatever the hub (or an id in it) said: a newline in a message cannot forge output.
  const message = safe(err instanceof Error ? err.message : String(err));
  if (code === EXIT.USAGE) io.err(`${command}: ${message}\n\n${usage}`);
  else if (err instanceof HubError) {
    const text = err.status === 401 ? 'the hub refused the API token' : message;
    io.err(`${command}: ${text}${err.status ? ` (HTTP ${err.status} ${err.code})` : ''}\n`);
  } else io.err(`${command}: ${message}\n`);
  return code;
}

/** True when argv asks for help before any `--` (so it works whatever else is missing). */
function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}

function checkPositionals(positionals: readonly string[], spec: CommandSpec<ParseArgsOptionsConfig>['positionals']): void {
  const min = spec?.min ?? 0;
  const max = spec?.max ?? min;
  const what = spec?.what ?? 'argument';
  if (positionals.length < min) throw new UsageError(min === 1 ? `${what} is required` : `expected at least ${min} arguments (${what})`);
  if (positionals.length > max) throw new UsageError(max === 0 ? `unexpected argument ${positionals.join(' ')}` : `unexpected argument ${positionals.slice(max).join(' ')} (expected ${what})`);
}

/** Parses argv for `spec`, runs `body`, and turns anything thrown into a message and an exit code. */
export async function runCommand<O extends ParseArgsOptionsConfig = Record<never, never>>(
  argv: string[],
  rawIo: CliIo,
  spec: CommandSpec<O>,
  body: (ctx: CommandContext<O>) => Promise<number | void>,
): Promise<number> {
  // The last net (cli/render.ts): whatever a command prints, a hub-supplied string in it cannot
  // drive the terminal; cells and values are escaped where they are rendered.
  const io: CliIo = { ...rawIo, out: (s) => rawIo.out(safeBlock(s)), err: (s) => rawIo.err(safeBlock(s)) };
  try {
    if (wantsHelp(argv)) {
      io.out(spec.usage);
      return EXIT.OK;
    }
    const parsed = parseArgs({ args: argv, options: { ...COMMON, ...spec.options } as O & Common, allowPositionals: true, strict: true });
    const { positionals } = parsed;
    const values: Values<O> = parsed.values;
    checkPositionals(positionals, spec.positionals);
    const flags = values as { hub?: string; token?: string; data?: string; json?: boolean };
    const json = flags.json === true;
    const target = (): Promise<HubTarget> => resolveHub(flags, io.env);
    const ctx: CommandContext<O> = {
      values,
      positionals,
      io,
      json,
      target,
      hub: async (timeoutMs) => new HubClient(await target(), timeoutMs),
      show: (value, text) => (json ? printJson(io, value) : io.out(text())),
    };
    return (await body(ctx)) ?? EXIT.OK;
  } catch (err) {
    return failure(io, spec.name, err, spec.usage);
  }
}

/**
 * `edgefleet <cmd> <sub> ...`: dispatches on the first argument. No subcommand is a usage error
 * (or runs `fallback`, e.g. `alerts` alone lists); `help`/`--help` prints the usage.
 */
export async function runSubcommands(
  argv: string[],
  io: CliIo,
  spec: { name: string; usage: string; commands: Record<string, (argv: string[], io: CliIo) => Promise<number>>; fallback?: (argv: string[], io: CliIo) => Promise<number> },
): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'help' || sub === '--help' || sub === '-h') {
    io.out(spec.usage);
    return EXIT.OK;
  }
  const run = sub === undefined ? undefined : Object.hasOwn(spec.commands, sub) ? spec.commands[sub] : undefined;
  if (run) return run(rest, io);
  if (spec.fallback && (sub === undefined || sub.startsWith('-'))) return spec.fallback(argv, io);
  return failure(io, spec.name, new UsageError(sub === undefined ? `a command is required (${Object.keys(spec.commands).join(', ')})` : `unknown ${spec.name} command '${sub}'`), spec.usage);
}

/** `value` as indented JSON on stdout (bidi overrides and C1 controls \u-escaped: same JSON value). */
export function printJson(io: CliIo, value: unknown): void {
  io.out(`${safeJson(value)}\n`);
}

/**
 * A plain text table: one column per entry of `columns` (header → cell), padded to the widest
 * cell, two spaces apart, no trailing blanks, ending in a newline. Cells are escaped
 * (cli/render.ts `safe`): a value with a newline or an escape sequence stays in its cell.
 */
export function table<R>(rows: readonly R[], columns: Record<string, (row: R) => string>): string {
  const head = Object.keys(columns);
  const cells = rows.map((r) => Object.values(columns).map((cell) => safe(cell(r))));
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: readonly string[]): string =>
    c
      .map((x, i) => x.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return `${[line(head), ...cells.map(line)].join('\n')}\n`;
}

/** `<name>@<version>` → its parts; anything else is a usage error. */
export function parseRef(ref: string | undefined, what = '<name>@<version>'): { name: string; version: string } {
  const at = ref?.lastIndexOf('@') ?? -1;
  if (!ref || at <= 0 || at === ref.length - 1) throw new UsageError(`expected one ${what}${ref ? `, got "${ref}"` : ''}`);
  return { name: ref.slice(0, at), version: ref.slice(at + 1) };
}

/** Bytes for people: 512 B, 1.5 KiB, 5.4 MiB. */
export function humanBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}
