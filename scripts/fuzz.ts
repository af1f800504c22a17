/**
 * `npm run fuzz`: the fuzz suite (test/fuzz, issue #6) with a longer time budget than `npm test`
 * gives it. Each fuzz file runs for FUZZ_SECONDS (default here 60, per file) and prints one
 * summary line with its seed; FUZZ_SEED=<seed> replays a run's inputs. Extra arguments narrow
 * the files like `npm test` does: `npm run fuzz -- mqtt`.
 */
import { spawnSync } from 'node:child_process';

const filters = process.argv.slice(2);
const env: NodeJS.ProcessEnv = { ...process.env, FUZZ_SECONDS: process.env.FUZZ_SECONDS ?? '60' };
const targets = filters.length ? filters.map((f) => (f.startsWith('test/') ? f : `test/fuzz/${f}`)) : ['test/fuzz'];
console.log(`fuzz: FUZZ_SECONDS=${env.FUZZ_SECONDS} per file${env.FUZZ_SEED ? ` FUZZ_SEED=${env.FUZZ_SEED}` : ''}`);
const res = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/run-tests.ts', ...targets], { stdio: 'inherit', env });
process.exit(res.status ?? 1);
