/**
 * Resolves a sibling module for worker threads and child processes. The code runs both as
 * TypeScript (through tsx, in tests and scripts) and compiled to dist/ as JavaScript, and
 * tsc does not rewrite paths inside `new URL(...)`.
 */
import { Worker } from 'node:worker_threads';

export function siblingModule(importMetaUrl: string, relativeNoExt: string): URL {
  const ext = importMetaUrl.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`${relativeNoExt}${ext}`, importMetaUrl);
}

/**
 * execArgv a child Node process needs to run a module of this code base. Under tsx the loader is
 * named by its resolved file URL, not as `tsx`: Node resolves a bare `--import` specifier from
 * the child's working directory, so a service started elsewhere (systemd's
 * `WorkingDirectory=/var/lib/...`) could not find it and every model probe failed (issue #12).
 */
export function childExecArgv(moduleUrl: URL): string[] {
  return moduleUrl.pathname.endsWith('.ts') ? ['--import', import.meta.resolve('tsx')] : [];
}

/**
 * Starts a worker thread on a module of this code base. Under tsx, a worker given
 * `execArgv: ['--import', 'tsx']` still cannot load `.ts` on Node 20 (ERR_UNKNOWN_FILE_EXTENSION,
 * nodejs/node#47747, fixed in 22), so an eval worker registers tsx itself, then imports the module.
 */
export function newWorker(url: URL, opts: { workerData?: unknown; name?: string }): Worker {
  if (!url.pathname.endsWith('.ts')) return new Worker(url, opts);
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(url.href)}); });`;
  return new Worker(boot, { ...opts, eval: true });
}
