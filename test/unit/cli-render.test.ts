/**
 * The CLI's one sanitizer (cli/render.ts, issue #14): hostile strings in table cells, free-form
 * lines, error messages and JSON output reach the terminal escaped, and never as extra rows.
 * Prints `security: cli rendering: ...`.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { failure, printJson, runCommand, table, type CliIo } from '../../cli/command.ts';
import { esc, safe, safeBlock, safeJson } from '../../cli/render.ts';

const RAW = /[^\P{Cc}\n\t]|[\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\u2028\u2029\ufeff]/u;

const HOSTILE: Record<string, string> = {
  csi: '\u001b[2J\u001b[31mred',
  osc: '\u001b]0;pwned\u0007title',
  osc8: '\u001b]8;;http://evil\u001b\\link\u001b]8;;\u001b\\',
  newline: 'dev-1\nFAKE  admin  ok',
  cr: 'dev-1\roverwritten',
  c1csi: 'x\u009b31my',
  nul: 'a\u0000b',
  del: 'a\u007fb',
  rlo: '\u202etxt.exe',
  isolate: '\u2066hidden\u2069',
  zwsp: 'ad\u200bmin',
  lsep: 'a\u2028b',
  bom: '\ufeffid',
};

function capture(): { io: CliIo; out: () => string; err: () => string } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s) => out.push(s), err: (s) => err.push(s), env: {} }, out: () => out.join(''), err: () => err.join('') };
}

test('safe escapes every control, newline and format character visibly; printable text is untouched', () => {
  for (const [name, s] of Object.entries(HOSTILE)) assert.ok(!RAW.test(safe(s)) && !safe(s).includes('\n'), `${name}: ${JSON.stringify(safe(s))}`);
  assert.equal(safe('\u001b[31mred'), '\\x1b[31mred');
  assert.equal(safe('a\nb\tc\rd'), 'a\\nb\\tc\\rd');
  assert.equal(safe('\u202eevil'), '\\u{202e}evil');
  assert.equal(safe('x\u009by'), 'x\\x9by');
  for (const ok of ['cam-1', 'line/3 ü 日本 😀', 'a\\b "q"']) assert.equal(safe(ok), ok);
});

test('table: one line per row whatever the cells hold; columns stay aligned', () => {
  const rows = Object.entries(HOSTILE).map(([name, id]) => ({ name, id }));
  const out = table(rows, { ID: (r) => r.id, NAME: (r) => r.name });
  const lines = out.trimEnd().split('\n');
  assert.equal(lines.length, rows.length + 1);
  assert.ok(!RAW.test(out), JSON.stringify(out));
  const col = lines[0]?.indexOf('NAME') ?? -1;
  for (const [i, l] of lines.slice(1).entries()) assert.equal(l.slice(col), rows[i]?.name, l);
});

test('esc lines, failures and everything printed through runCommand are escaped; JSON stays the same value', async () => {
  const line = esc`alert ${HOSTILE.newline} opened ${HOSTILE.csi}\n`;
  assert.equal(line.split('\n').length, 2, 'only the literal newline');
  assert.ok(!RAW.test(line));

  const c = capture();
  failure(c.io, 'devices', new Error(`no device ${HOSTILE.newline}${HOSTILE.osc}`), 'usage');
  assert.equal(c.err().trimEnd().split('\n').length, 1);
  assert.ok(!RAW.test(c.err()));

  // A command that forgets to escape: the last net still stops escape sequences.
  const r = capture();
  await runCommand([], r.io, { name: 'x', usage: 'u' }, (ctx) => {
    ctx.io.out(`raw ${HOSTILE.csi} ${HOSTILE.rlo} ${HOSTILE.c1csi}\nsecond line\n`);
    return Promise.resolve();
  });
  assert.ok(!RAW.test(r.out()), JSON.stringify(r.out()));
  assert.equal(r.out().split('\n').length, 3);

  const j = capture();
  printJson(j.io, HOSTILE);
  assert.ok(!RAW.test(j.out()));
  assert.deepEqual(JSON.parse(j.out()), HOSTILE);
  assert.deepEqual(JSON.parse(safeJson({ k: '\u{e0001}tag' })), { k: '\u{e0001}tag' });
  assert.equal(safeBlock('a\n\tb'), 'a\n\tb');
  console.log(`security: cli rendering: ${Object.keys(HOSTILE).length} hostile strings (CSI, OSC, OSC 8, newline, CR, C1, NUL, DEL, U+202E, isolates, ZWSP, U+2028, BOM) → 0 raw controls and 0 extra lines in tables, lines, errors and JSON`);
});
