/**
 * `edgefleet`: the process entry. The commands, their help text and exit codes are in
 * ./router.ts (importable without running anything); this file only binds them to the process:
 * stdout/stderr, the environment, and the exit code. Services (`agent`, `hub`) set their own
 * exit code and run until signalled.
 */
import { dispatch } from './router.ts';
import type { CliIo } from './command.ts';

const io: CliIo = {
  out: (s) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`),
  err: (s) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`),
  env: process.env,
  stderr: { isTTY: process.stderr.isTTY === true, write: (s) => process.stderr.write(s), columns: process.stderr.columns },
};

const code = await dispatch(process.argv.slice(2), io);
if (code !== undefined) process.exitCode = code;
