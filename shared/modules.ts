/**
 * Resolves a sibling module for worker threads and child processes. The code runs both as
 * TypeScript (through tsx, in tests and scripts) and compiled to dist/ as JavaScript, and
 * tsc does not rewrite paths inside `new URL(...)`.
 */
export function siblingModule(importMetaUrl: string, relativeNoExt: string): URL {
  const ext = importMetaUrl.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`${relativeNoExt}${ext}`, importMetaUrl);
}

/** execArgv a child Node process needs to run a module of this code base. */
export function childExecArgv(moduleUrl: URL): string[] {
  return moduleUrl.pathname.endsWith('.ts') ? ['--import', 'tsx'] : [];
}
