/**
 * `npm test`: runs every test/**\/*.test.ts file with node's test runner (Node 20's --test
 * does not glob TypeScript files). `npm test -- test/unit` narrows to paths under a prefix.
 *
 * Two lanes run side by side, each one file at a time: the heavy lane (test/fault, test/e2e,
 * test/stats: agent child processes, outages, long fleets — mostly waiting on timers and
 * sockets) and the light lane (everything else). A heavy file never shares the machine with
 * another heavy file, so the fault tests see the load they were written for, while the light
 * files use the CPU the heavy ones leave idle: on this 2-core machine the suite took 1,170 s
 * in one lane. Each lane's output is printed as it comes, every line prefixed with its lane;
 * the exit code is non-zero when either lane fails. `EDGEFLEET_TEST_LANES=1` runs one lane
 * (one file at a time, as before); a narrowed run (`npm test -- <prefix>`) is one lane too,
 * unless `EDGEFLEET_TEST_LANES=2`.
 */
import { spawn } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from './fleet/processes.ts';
import { makeModels, makeModelsV2 } from './make-models.ts';

function find(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...find(p));
    else if (name.endsWith('.test.ts')) out.push(p);
  }
  return out;
}

const HEAVY = [join('test', 'fault'), join('test', 'e2e'), join('test', 'stats')];

const filters = process.argv.slice(2);
const files = find('test').filter((f) => filters.length === 0 || filters.some((x) => f.startsWith(x) || f.includes(x)));
if (files.length === 0) {
  console.error(`no test files match ${filters.join(' ')}`);
  process.exit(1);
}

interface LaneResult {
  name: string;
  code: number;
  counts: Record<string, number>;
  failing: string[];
}

/** Runs `laneFiles` one at a time in a node --test child; lines go to stdout prefixed with `name`. */
function lane(name: string, laneFiles: string[], prefix: boolean): Promise<LaneResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...laneFiles], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const counts: Record<string, number> = {};
    const failing: string[] = [];
    let inFailing = false;
    const onLine = (line: string, to: NodeJS.WriteStream): void => {
      to.write(prefix ? `[${name}] ${line}\n` : `${line}\n`);
      const m = /^ℹ (tests|pass|fail|cancelled|skipped|todo|duration_ms) ([\d.]+)$/.exec(line);
      if (m) counts[m[1]!] = Number(m[2]);
      if (line.startsWith('✖ failing tests:')) inFailing = true;
      else if (inFailing && line.startsWith('✖ ')) failing.push(line.slice(2));
    };
    createInterface({ input: child.stdout }).on('line', (l) => onLine(l, process.stdout));
    createInterface({ input: child.stderr }).on('line', (l) => onLine(l, process.stderr));
    child.on('close', (code, signal) => resolve({ name, code: code ?? (signal ? 1 : 0), counts, failing }));
  });
}

// The demo models (v1 and v2) are generated once here, before any lane starts: tests read them
// from models/, and two lanes generating them at once would each train their own copies (the
// dashboard test found line-state missing on a fresh clone where no demo had run first).
const t00 = Date.now();
await makeModels({ outDir: join(REPO_ROOT, 'models') });
await makeModelsV2({ outDir: join(REPO_ROOT, 'models') });
console.log(`ℹ demo models ready in models/ (${((Date.now() - t00) / 1000).toFixed(1)} s)`);

const oneLane = process.env.EDGEFLEET_TEST_LANES === '1' || (filters.length > 0 && process.env.EDGEFLEET_TEST_LANES !== '2');
const heavy = files.filter((f) => HEAVY.some((h) => f.startsWith(h)));
const light = files.filter((f) => !heavy.includes(f));
const lanes = oneLane || heavy.length === 0 || light.length === 0 ? [lane('all', files, false)] : [lane('heavy', heavy, true), lane('light', light, true)];
const t0 = Date.now();
const results = await Promise.all(lanes);
if (results.length > 1) {
  const sum = (k: string): number => results.reduce((a, r) => a + (r.counts[k] ?? 0), 0);
  const lines = [
    '',
    `ℹ all lanes: tests ${sum('tests')}, pass ${sum('pass')}, fail ${sum('fail')}, cancelled ${sum('cancelled')}, skipped ${sum('skipped')}; wall ${((Date.now() - t0) / 1000).toFixed(0)} s (${results.map((r) => `${r.name} ${((r.counts.duration_ms ?? 0) / 1000).toFixed(0)} s`).join(', ')})`,
    ...results.flatMap((r) => r.failing.map((f) => `✖ [${r.name}] ${f}`)),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}
process.exit(results.some((r) => r.code !== 0) ? 1 : 0);
