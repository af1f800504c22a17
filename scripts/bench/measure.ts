/**
 * The measuring and reporting core of `npm run bench` (scripts/bench.ts): every figure is a
 * subject measured next to its bare baseline, both repeated and INTERLEAVED (A B, then B A, ...)
 * so that a noisy neighbour on a shared machine, a CPU frequency change or a GC pause hits both
 * sides alike. A figure keeps every sample; the report shows the median and min–max of each side,
 * the ratio of the medians, and the target (if the issue names one) with PASS/MISS.
 */

export interface Summary {
  median: number;
  min: number;
  max: number;
  samples: number[];
}

/** How a figure is judged: a bound on subject/baseline, or on the subject's own value. */
export type Target =
  | { kind: 'minRatio'; value: number }
  | { kind: 'maxRatio'; value: number }
  | { kind: 'maxValue'; value: number };

export interface Figure {
  section: string;
  name: string;
  unit: string;
  subjectLabel: string;
  baselineLabel: string;
  subject: Summary;
  baseline: Summary;
  /** subject median / baseline median. */
  ratio: number;
  target?: Target;
  /** Undefined when the figure has no target. */
  pass?: boolean;
  /** What the figure's setup was (batch, concurrency, sizes), shown under the table. */
  note?: string;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export function summarize(xs: readonly number[]): Summary {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), samples: [...xs] };
}

/**
 * Runs `subject` and `baseline` `repeats` times each, alternating which goes first, so that
 * drift over the run (thermal, neighbours) does not favour one side.
 */
export async function interleave(repeats: number, subject: () => Promise<number>, baseline: () => Promise<number>): Promise<{ subject: number[]; baseline: number[] }> {
  const s: number[] = [];
  const b: number[] = [];
  for (let r = 0; r < repeats; r++) {
    if (r % 2 === 0) {
      s.push(await subject());
      b.push(await baseline());
    } else {
      b.push(await baseline());
      s.push(await subject());
    }
  }
  return { subject: s, baseline: b };
}

export function judge(target: Target | undefined, subject: Summary, ratio: number): boolean | undefined {
  if (!target) return undefined;
  switch (target.kind) {
    case 'minRatio':
      return ratio >= target.value;
    case 'maxRatio':
      return ratio <= target.value;
    case 'maxValue':
      return subject.median <= target.value;
  }
}

export function figure(f: Omit<Figure, 'subject' | 'baseline' | 'ratio' | 'pass'> & { subject: number[]; baseline: number[] }): Figure {
  const subject = summarize(f.subject);
  const baseline = summarize(f.baseline);
  const ratio = subject.median / baseline.median;
  const out: Figure = { ...f, subject, baseline, ratio };
  const pass = judge(f.target, subject, ratio);
  if (pass !== undefined) out.pass = pass;
  return out;
}

export function targetText(t: Target): string {
  switch (t.kind) {
    case 'minRatio':
      return `ratio >= ${t.value}`;
    case 'maxRatio':
      return `ratio <= ${t.value}`;
    case 'maxValue':
      return `subject <= ${t.value}`;
  }
}

/** Three significant figures without exponent noise: 12345 → "12345", 0.012345 → "0.0123". */
export function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  if (a === 0) return '0';
  return x.toPrecision(3);
}

const cell = (s: Summary): string => `${num(s.median)} (${num(s.min)}–${num(s.max)})`;

/** A Markdown table (also readable on a terminal). */
export function table(rows: readonly string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  const line = (r: readonly string[]): string => `| ${r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  const [head, ...body] = rows;
  if (!head) return '';
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...body.map(line)].join('\n');
}

/** Per-section detail: both sides, median (min–max), ratio. */
export function formatSection(figures: readonly Figure[]): string {
  const rows = [['figure', 'unit', 'subject median (min–max)', 'baseline median (min–max)', 'ratio']];
  for (const f of figures) rows.push([f.name, f.unit, `${f.subjectLabel}: ${cell(f.subject)}`, `${f.baselineLabel}: ${cell(f.baseline)}`, num(f.ratio)]);
  const notes = figures.filter((f) => f.note).map((f) => `  ${f.name}: ${f.note}`);
  return [table(rows), ...notes].join('\n');
}

/** The final table: every figure that has a target, PASS/MISS. */
export function formatTargets(figures: readonly Figure[]): string {
  const rows = [['section', 'figure', 'target', 'measured', 'result']];
  for (const f of figures) {
    if (!f.target) continue;
    const measured = f.target.kind === 'maxValue' ? `${num(f.subject.median)} ${f.unit}` : `ratio ${num(f.ratio)}`;
    rows.push([f.section, f.name, targetText(f.target), measured, f.pass ? 'PASS' : 'MISS']);
  }
  return table(rows);
}

/** Counts how many times `step` completes within `ms`, with up to `concurrency` in flight. */
export async function closedLoop(ms: number, concurrency: number, step: (i: number) => Promise<unknown>): Promise<{ done: number; elapsedMs: number }> {
  const t0 = performance.now();
  const end = t0 + ms;
  let done = 0;
  let next = 0;
  const lane = async (): Promise<void> => {
    while (performance.now() < end) {
      await step(next++);
      done++;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  return { done, elapsedMs: performance.now() - t0 };
}

/** Items per second of a closed loop. */
export async function rate(ms: number, concurrency: number, step: (i: number) => Promise<unknown>): Promise<number> {
  const r = await closedLoop(ms, concurrency, step);
  return (r.done * 1000) / r.elapsedMs;
}
