/**
 * Safe rendering of untrusted strings on the operator's terminal (issue #14). Device ids,
 * labels, audit targets, alert messages and hub error messages come from devices and anonymous
 * clients; a newline in one would forge a table row, and ESC / CSI / OSC sequences, C0/C1
 * controls or bidi overrides (U+202E) would reach the terminal, which can recolour, retitle,
 * hide or reorder what the operator reads. Every table cell and interpolated value goes through
 * `safe`, which escapes them visibly (`\x1b`, `\n`, `\u{202e}`); everything a command prints goes
 * through `safeBlock` as a last net (cli/command.ts), which keeps only the newlines and tabs the
 * command itself wrote.
 */

/** C0 and C1 controls, DEL, format characters (bidi overrides and isolates, zero-width), line and paragraph separators. */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;
const UNSAFE_IN_BLOCK = /[^\P{Cc}\n\t]|[\p{Cf}\p{Zl}\p{Zp}]/gu;

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

function escapeChar(c: string): string {
  const named = NAMED[c];
  if (named) return named;
  const cp = c.codePointAt(0) ?? 0;
  return cp <= 0xff ? `\\x${cp.toString(16).padStart(2, '0')}` : `\\u{${cp.toString(16)}}`;
}

/** One value for one cell or one line: every control, newline and format character escaped. */
export function safe(value: string): string {
  return value.replace(UNSAFE, escapeChar);
}

/** Text a command prints: controls escaped except its own newlines and tabs. */
export function safeBlock(text: string): string {
  return text.replace(UNSAFE_IN_BLOCK, escapeChar);
}

/**
 * JSON for stdout: JSON.stringify escapes C0 controls but leaves DEL, C1 controls, bidi
 * overrides and U+2028/9 raw; those become \uXXXX escapes, so the output is the same JSON value.
 */
export function safeJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(UNSAFE_IN_BLOCK, (c) => Array.from({ length: c.length }, (_, i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`).join(''));
}

/** A template tag: each interpolated value escaped with `safe`, the literal text kept (a line of free-form output). */
export function esc(strings: TemplateStringsArray, ...values: unknown[]): string {
  return strings.reduce((out, s, i) => out + s + (i < values.length ? safe(String(values[i])) : ''), '');
}
