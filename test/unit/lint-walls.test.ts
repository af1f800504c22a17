/**
 * The lint rules the architecture relies on really fire: no imports between agent/ and hub/
 * (nor from shared/ into either), none from shipped code into scripts/ or test/, and no
 * floating promises. Lints source text through stdin
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

  it('shipped code (agent/, hub/, shared/, cli/) may not import scripts/ or test/ (issue #12)', async () => {
    for (const [file, src] of [
      ['cli/commands/devices.ts', "import { referenceBins } from '../../scripts/lib/models.ts';\nexport const x = referenceBins;\n"],
      ['cli/router.ts', "import { until } from '../test/helpers/fleet.ts';\nexport const x = until;\n"],
      ['agent/config.ts', "import { REPO_ROOT } from '../scripts/fleet/processes.ts';\nexport const x = REPO_ROOT;\n"],
      ['hub/config.ts', "import { until } from '../test/helpers/fleet.ts';\nexport const x = until;\n"],
      // A dynamic import (how cli/router.ts loads commands) is caught too.
      ['shared/errors.ts', "export const x = (): Promise<unknown> => import('../scripts/lib/models.ts');\n"],
      ['cli/router.ts', "export const x = (): Promise<unknown> => import('../test/helpers/fleet.ts');\n"],
    ] as const) {
      const r = await lint(file, src);
      assert.equal(r.code, 1, `${file} importing scripts/ or test/ passed lint`);
      assert.match(r.out, /no-restricted-(imports|syntax): .*is shipped and must not import (scripts|test)\//);
    }
    // What they need lives in shared/; scripts/ and tests keep importing from there.
    const ok = await lint('cli/commands/devices.ts', "import { referenceBins } from '../../shared/drift/reference.ts';\nexport const x = referenceBins;\n");
    assert.equal(ok.code, 0, ok.out);
    const scripts = await lint('scripts/bench-drift.ts', "import { referenceBins } from '../shared/drift/reference.ts';\nexport const x = referenceBins;\n");
    assert.equal(scripts.code, 0, scripts.out);
  });

  it('a floating promise fails lint', async () => {
    const r = await lint('shared/errors.ts', 'export async function f(): Promise<void> {}\nexport function g(): void {\n  f();\n}\n');
    assert.equal(r.code, 1);
    assert.match(r.out, /no-floating-promises/);
  });
});
