/**
 * The lint rules the architecture relies on really fire: no imports between agent/ and hub/
 * (nor from shared/ into either), and no floating promises. Lints source text through stdin
 * as if it were a file of each tree. One ESLint instance in process (its API, the project's
 * config): the typed program is built once, not once per sample (5 CLI runs took 45 s in CI).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ESLint } from 'eslint';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';

const eslint = new ESLint({ cwd: REPO_ROOT });

/** Lints `source` as if it were `asFile`: exit code 1 when it has errors, and the rule ids. */
async function lint(asFile: string, source: string): Promise<{ code: number; out: string }> {
  const [r] = await eslint.lintText(source, { filePath: join(REPO_ROOT, asFile) });
  const errors = r?.messages.filter((m) => m.severity === 2) ?? [];
  return { code: errors.length ? 1 : 0, out: errors.map((m) => `${m.ruleId ?? 'fatal'}: ${m.message}`).join('\n') };
}

describe('lint walls', () => {
  it('agent/ may not import hub/, hub/ may not import agent/, shared/ neither', async () => {
    for (const [file, src] of [
      ['agent/config.ts', "import { createHub } from '../hub/main.ts';\nexport const x = createHub;\n"],
      ['hub/config.ts', "import { createAgent } from '../agent/main.ts';\nexport const x = createAgent;\n"],
      ['shared/errors.ts', "import { createAgent } from '../agent/main.ts';\nexport const x = createAgent;\n"],
    ] as const) {
      const r = await lint(file, src);
      assert.equal(r.code, 1, `${file}: ${r.out}`);
      assert.match(r.out, /no-restricted-imports/);
    }
    const ok = await lint('agent/config.ts', "import { topics } from '../shared/protocol.ts';\nexport const x = topics;\n");
    assert.equal(ok.code, 0, ok.out);
  });

  it('a floating promise fails lint', async () => {
    const r = await lint('shared/errors.ts', 'export async function f(): Promise<void> {}\nexport function g(): void {\n  f();\n}\n');
    assert.equal(r.code, 1);
    assert.match(r.out, /no-floating-promises/);
  });
});
