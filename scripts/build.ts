/**
 * `npm run build` (and `prepack`): compiles the shipped trees (agent, hub, shared, cli) to dist/
 * with tsconfig.build.json, copies every file of those trees that is not TypeScript (the
 * dashboard's html/js/css under hub/ui/, read at run time next to its module) to the same place
 * under dist/, and checks the result runs on its own: the CLI entry, each copied asset, and no
 * test/ or scripts/ inside (issue #12: dist/ had no dashboard files, /ui/ answered 404).
 * `--out <dir>` builds somewhere else. `--no-check` (or EDGEFLEET_BUILD_NO_CHECK=1, for
 * `npm pack`, which passes no flags to prepack) emits without type checking: a third of the CPU
 * time, for the tarball test, where `npm run typecheck` has checked the same tree (CI runs it
 * before the tests).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

/** The trees that ship; tsconfig.build.json includes the same list. */
export const SHIPPED_TREES = ['agent', 'hub', 'shared', 'cli'] as const;

/** Files of `dir` (recursively) that tsc does not emit: everything but .ts sources. */
export function assetsOf(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...assetsOf(p));
    else if (!name.endsWith('.ts')) out.push(p);
  }
  return out;
}

export function build(root: string, outDir = join(root, 'dist'), opts: { check?: boolean } = {}): { assets: string[]; ms: number } {
  const t0 = performance.now();
  rmSync(outDir, { recursive: true, force: true });
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  const args = [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', outDir, ...(opts.check === false ? ['--noCheck'] : [])];
  const res = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (res.status !== 0) throw new Error(`tsc -p tsconfig.build.json failed (exit ${res.status ?? res.signal})`);

  const assets: string[] = [];
  for (const tree of SHIPPED_TREES) {
    for (const src of assetsOf(join(root, tree))) {
      const rel = relative(root, src);
      mkdirSync(dirname(join(outDir, rel)), { recursive: true });
      copyFileSync(src, join(outDir, rel));
      assets.push(rel);
    }
  }

  const problems: string[] = [];
  if (!existsSync(join(outDir, 'cli', 'main.js'))) problems.push('dist/cli/main.js is missing');
  if (!existsSync(join(outDir, 'hub', 'ui', 'index.html'))) problems.push('dist/hub/ui/index.html is missing');
  // tsc follows imports out of the included trees; the lint walls forbid these, this checks it.
  for (const notShipped of ['test', 'scripts']) if (existsSync(join(outDir, notShipped))) problems.push(`dist/${notShipped}/ exists: shipped code imports ${notShipped}/, which is not shipped`);
  if (problems.length) throw new Error(`build incomplete: ${problems.join('; ')}`);
  return { assets, ms: performance.now() - t0 };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({ options: { out: { type: 'string' }, 'no-check': { type: 'boolean' } } });
  const check = !(values['no-check'] ?? process.env['EDGEFLEET_BUILD_NO_CHECK'] === '1');
  const root = fileURLToPath(new URL('..', import.meta.url));
  try {
    const { assets, ms } = build(root, values.out, { check });
    console.log(`built ${values.out ?? 'dist'}/ in ${(ms / 1000).toFixed(1)} s${check ? '' : ' (types not checked)'} (${assets.length} assets copied: ${assets.join(', ')})`);
  } catch (err) {
    console.error((err as Error).message);
    process.exit(1);
  }
}
