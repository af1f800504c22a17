/**
 * The lint rules the architecture relies on really fire: no imports between agent/ and hub/
 * (nor from shared/ into either), and no floating promises. Lints source text through stdin
 * as if it were a file of each tree.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';

const eslintBin = join(REPO_ROOT, 'node_modules', 'eslint', 'bin', 'eslint.js');

function lint(asFile: string, source: string): { code: number | null; out: string } {
  const r = spawnSync(process.execPath, [eslintBin, '--stdin', '--stdin-filename', asFile], { cwd: REPO_ROOT, input: source, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout + r.stderr };
}

describe('lint walls', () => {
  it('agent/ may not import hub/, hub/ may not import agent/, shared/ neither', () => {
    for (const [file, src] of [
      ['agent/config.ts', "import { createHub } from '../hub/main.ts';\nexport const x = createHub;\n"],
      ['hub/config.ts', "import { createAgent } from '../agent/main.ts';\nexport const x = createAgent;\n"],
      ['shared/errors.ts', "import { createAgent } from '../agent/main.ts';\nexport const x = createAgent;\n"],
    ] as const) {
      const r = lint(file, src);
      assert.equal(r.code, 1, `${file}: ${r.out}`);
      assert.match(r.out, /no-restricted-imports/);
    }
    const ok = lint('agent/config.ts', "import { topics } from '../shared/protocol.ts';\nexport const x = topics;\n");
    assert.equal(ok.code, 0, ok.out);
  });

  it('a floating promise fails lint', () => {
    const r = lint('shared/errors.ts', 'export async function f(): Promise<void> {}\nexport function g(): void {\n  f();\n}\n');
    assert.equal(r.code, 1);
    assert.match(r.out, /no-floating-promises/);
  });
});
