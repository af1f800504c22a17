/**
 * `edgefleet --version` and `--help` load no command module (issue #12): not the agent's or the
 * hub's main module, and so not sharp, better-sqlite3 or onnxruntime-node. Each runs as a real
 * child process (bin/edgefleet.mjs, from a directory outside the checkout) with
 * test/helpers/record-modules.mjs imported first, which logs every module URL the ESM loader
 * resolves and every native addon opened. A positive control (`edgefleet agent --help`, which
 * does load the agent) shows the recorder sees those packages. Start-up times are printed, not
 * asserted (2 shared cores).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { EDGEFLEET_VERSION } from '../../shared/version.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(ROOT, 'bin/edgefleet.mjs');
const RECORDER = join(ROOT, 'test/helpers/record-modules.mjs');
const dir = mkdtempSync(join(tmpdir(), 'ef-cli-lazy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const HEAVY = ['sharp', 'better-sqlite3', 'onnxruntime-node'];
const HEAVY_URL = new RegExp(`/node_modules/(${HEAVY.join('|')}|@img)/`);
// .ts from the sources, .js from dist/ when it was built (bin/edgefleet.mjs prefers it).
const MAINS = /\/(agent|hub)\/main\.(ts|js)$/;

let runs = 0;

/** Runs `edgefleet <args>` with the recorder; returns its output and the modules it loaded. */
function record(args: string[]): { status: number | null; stdout: string; stderr: string; loaded: string[] } {
  const log = join(dir, `modules-${runs++}.log`);
  const r = spawnSync(process.execPath, ['--import', RECORDER, BIN, ...args], {
    cwd: dir,
    env: { ...process.env, EF_RECORD_MODULES: log },
    encoding: 'utf8',
    timeout: 60_000,
  });
  let loaded: string[] = [];
  try {
    loaded = readFileSync(log, 'utf8').split('\n').filter(Boolean);
  } catch {
    // no module resolved at all: the assertions below say so
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, loaded };
}

/** Median wall time of `n` plain runs (no recorder). */
function timeMs(args: string[], n = 3): number {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const r = spawnSync(process.execPath, args, { cwd: dir, encoding: 'utf8', timeout: 60_000 });
    times.push(performance.now() - t0);
    assert.equal(r.status, 0, r.stderr);
  }
  return times.sort((a, b) => a - b)[Math.floor(n / 2)]!;
}

const heavyIn = (loaded: readonly string[]): string[] => loaded.filter((l) => HEAVY_URL.test(l) || l.startsWith('dlopen ') || MAINS.test(l));

describe('edgefleet --version and --help load nothing heavy', () => {
  it('the recorder sees sharp and better-sqlite3 when the agent does load (positive control)', () => {
    const r = record(['agent', '--help']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /usage: edgefleet agent/);
    const heavy = heavyIn(r.loaded);
    for (const p of ['sharp', 'better-sqlite3']) assert.ok(heavy.some((l) => l.includes(`/node_modules/${p}/`)), `recorded ${p}:\n${heavy.join('\n')}`);
    assert.ok(heavy.some((l) => MAINS.test(l) && l.includes('/agent/')), 'recorded agent/main');
  });

  // (`version` and `help` take the same path in dispatch as `--version` and `--help`.)
  for (const args of [['--version'], ['--help'], ['devices', '--help']]) {
    it(`edgefleet ${args.join(' ')}`, () => {
      const r = record(args);
      assert.equal(r.status, 0, r.stderr);
      if (args[0]?.includes('version')) assert.equal(r.stdout.trim(), EDGEFLEET_VERSION);
      else assert.match(r.stdout, /usage: edgefleet/);
      assert.ok(r.loaded.some((l) => /\/cli\/main\.(ts|js)$/.test(l)), `the recorder ran: ${r.loaded.length} lines`);
      assert.deepEqual(heavyIn(r.loaded), [], `edgefleet ${args.join(' ')} loaded heavy modules`);
    });
  }

  it('the version is the package version and the one the agent reports', async () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(EDGEFLEET_VERSION, pkg.version);
    const { AGENT_VERSION } = await import('../../agent/main.ts');
    assert.equal(AGENT_VERSION, EDGEFLEET_VERSION);
  });

  it('start-up times (printed, not asserted)', (t) => {
    const version = timeMs([BIN, '--version']);
    const agentHelp = timeMs([BIN, 'agent', '--help']);
    const bare = timeMs(['-e', '0']);
    const line = `cli start-up (median of 3): --version ${version.toFixed(0)} ms, agent --help ${agentHelp.toFixed(0)} ms (loads the agent), bare node ${bare.toFixed(0)} ms`;
    t.diagnostic(line);
    console.log(line);
  });
});
