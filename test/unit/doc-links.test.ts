/**
 * Every relative link in the repository's Markdown (README.md, the other top-level *.md and
 * docs/*.md) names a file inside the repository, and a `#fragment` names a heading of its
 * target (GitHub's anchors). README once linked ../shared/ARCHITECTURE.md, a file outside the
 * repo that exists only in one workspace (issue #12).
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function markdownFiles(): string[] {
  const top = readdirSync(ROOT).filter((f) => f.endsWith('.md')).map((f) => join(ROOT, f));
  const docs = existsSync(join(ROOT, 'docs')) ? readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => join(ROOT, 'docs', f)) : [];
  return [...top, ...docs].sort();
}

/** Markdown without fenced code blocks (a `#` line in a shell block is no heading). */
function withoutFences(text: string): string {
  return text.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
}

/** ... and without inline code spans (their brackets are not links). */
function prose(text: string): string {
  return withoutFences(text).replace(/`[^`\n]*`/g, '');
}

/** Inline links `[text](target "title")`, images included, and reference definitions `[id]: target`. */
export function linksOf(text: string): string[] {
  const body = prose(text);
  const out: string[] = [];
  for (const m of body.matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) out.push(m[1]!);
  for (const m of body.matchAll(/^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$/gm)) out.push(m[1]!);
  return out;
}

/** GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens. */
export function anchorOf(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[`*_]/g, '')
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/[^\p{L}\p{N}\s-]/gu, '')
    .replace(/\s/g, '-');
}

function anchorsOf(file: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const m of withoutFences(readFileSync(file, 'utf8')).matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const base = anchorOf(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** Why `target`, linked from `file`, does not resolve; undefined when it does. */
function problemOf(file: string, target: string): string | undefined {
  if (/^[a-z][a-z0-9+.-]*:/i.test(target)) return undefined; // https:, mailto:, file: ...
  const [pathPart, fragment] = target.split('#', 2) as [string, string | undefined];
  const path = pathPart === '' ? file : resolve(dirname(file), decodeURIComponent(pathPart));
  if (path !== ROOT.replace(/\/$/, '') && !path.startsWith(ROOT.endsWith(sep) ? ROOT : ROOT + sep)) return 'points outside the repository';
  if (!existsSync(path)) return 'no such file';
  if (fragment && statSync(path).isFile() && path.endsWith('.md') && !anchorsOf(path).has(fragment.toLowerCase())) return `no heading #${fragment}`;
  return undefined;
}

describe('documentation links', () => {
  it('finds the docs the code cites (ARCHITECTURE §n, PITFALLS) inside the repository', () => {
    const files = markdownFiles().map((f) => relative(ROOT, f));
    for (const f of ['README.md', join('docs', 'ARCHITECTURE.md'), join('docs', 'PITFALLS.md')]) assert.ok(files.includes(f), `${f} missing`);
    const arch = readFileSync(join(ROOT, 'docs', 'ARCHITECTURE.md'), 'utf8');
    for (let n = 1; n <= 10; n++) assert.match(arch, new RegExp(`^### ${n}\\. `, 'm'), `ARCHITECTURE §${n} (cited in code comments) has no heading`);
  });

  it('every relative link in README.md, the top-level docs and docs/*.md resolves to a file in the repository', () => {
    const problems: string[] = [];
    let checked = 0;
    for (const file of markdownFiles()) {
      for (const target of linksOf(readFileSync(file, 'utf8'))) {
        checked++;
        const p = problemOf(file, target);
        if (p) problems.push(`${relative(ROOT, file)}: (${target}) ${p}`);
      }
    }
    assert.deepEqual(problems, []);
    assert.ok(checked >= 5, `only ${checked} links found: is the link parser broken?`);
  });

  it('the checker itself: outside the repository, missing files and missing headings are caught', () => {
    const readme = join(ROOT, 'README.md');
    assert.equal(problemOf(readme, '../shared/ARCHITECTURE.md'), 'points outside the repository');
    assert.equal(problemOf(readme, 'docs/NOPE.md'), 'no such file');
    assert.equal(problemOf(readme, 'docs/ARCHITECTURE.md#no-such-heading'), 'no heading #no-such-heading');
    assert.equal(problemOf(readme, 'docs/ARCHITECTURE.md#decisions'), undefined);
    assert.equal(problemOf(readme, 'RELIABILITY.md#2-agent-killed-with-sigkill-while-writing--testfaultcrashtestts'), undefined);
    assert.equal(problemOf(readme, 'https://example.com/x'), undefined);
    assert.deepEqual(linksOf('see [a](b.md) and `[c](d.md)`\n```\n[e](f.md)\n```\n[g]: h.md "t"\n'), ['b.md', 'h.md']);
    assert.equal(anchorOf('Running as a service'), 'running-as-a-service');
    assert.equal(anchorOf('1. Link partition and hub restart — `test/fault/partition.test.ts`'), '1-link-partition-and-hub-restart--testfaultpartitiontestts');
  });
});
