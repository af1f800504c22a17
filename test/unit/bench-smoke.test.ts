/**
 * Smoke test of `npm run bench` (scripts/bench.ts): the real CLI as a child process with
 * `--quick --repeats 1` on two cheap sections, checking the structure of its JSON and of its
 * tables. Figures are never asserted here (performance belongs in the bench, not in tests).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';

const run = promisify(execFile);

async function bench(args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'scripts/bench.ts', '--quick', '--repeats', '1', ...args], {
    cwd: REPO_ROOT,
    maxBuffer: 16 * 1024 * 1024,
    timeout: 120_000,
  });
  return stdout;
}

interface Side {
  median: number;
  min: number;
  max: number;
  samples: number[];
}

void describe('npm run bench (smoke)', () => {
  it('--json: machine, options and one figure per measured pair with both sides, ratio and verdict', { timeout: 150_000 }, async () => {
    const report = JSON.parse(await bench(['--only', 'outbox,pipeline', '--json'])) as {
      machine: { cores: number; node: string; loadStart: number[]; loadEnd: number[] };
      options: { repeats: number; quick: boolean; sections: string[] };
      figures: { section: string; name: string; unit: string; subject: Side; baseline: Side; ratio: number; target?: { kind: string; value: number }; pass?: boolean }[];
    };
    assert.ok(report.machine.cores >= 1);
    assert.equal(report.machine.node, process.version);
    assert.equal(report.machine.loadStart.length, 3);
    assert.deepEqual(report.options, { repeats: 1, quick: true, sections: ['outbox', 'pipeline'] });
    assert.deepEqual([...new Set(report.figures.map((f) => f.section))], ['outbox', 'pipeline']);
    for (const f of report.figures) {
      for (const side of [f.subject, f.baseline]) {
        assert.equal(side.samples.length, 1, `${f.name}: one sample per side at --repeats 1`);
        assert.ok(side.min <= side.median && side.median <= side.max, `${f.name}: min ≤ median ≤ max`);
        assert.ok(Number.isFinite(side.median) && side.median > 0, `${f.name}: a positive figure`);
      }
      assert.ok(Math.abs(f.ratio - f.subject.median / f.baseline.median) < 1e-9, `${f.name}: ratio of the medians`);
      assert.equal(typeof f.pass === 'boolean', f.target !== undefined, `${f.name}: a verdict exactly when there is a target`);
    }
    const targets = report.figures.filter((f) => f.target).map((f) => `${f.section}:${f.target!.kind}:${f.target!.value}`);
    assert.deepEqual(targets.sort(), ['outbox:minRatio:0.8', 'pipeline:maxRatio:1.1', 'pipeline:maxValue:20', 'pipeline:minRatio:2']);
  });

  it('tables: a section per --only entry and the target table with PASS/MISS; unknown sections refused', { timeout: 150_000 }, async () => {
    const text = await bench(['--only', 'outbox']);
    assert.match(text, /^machine: .*cores.*load average/m);
    assert.match(text, /^## outbox$/m);
    assert.doesNotMatch(text, /^## pipeline$/m);
    assert.match(text, /^## targets$/m);
    assert.match(text, /^\| outbox +\| .* \| ratio >= 0\.8 +\| ratio [\d.]+ +\| (PASS|MISS) +\|$/m);
    await assert.rejects(bench(['--only', 'nope']), /unknown section\(s\) nope/);
  });
});
