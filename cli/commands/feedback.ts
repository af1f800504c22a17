/**
 * `edgefleet feedback <id>=<label>... [--device <id>] [--file <json>] [--json]`: posts ground
 * truth for inference ids to the hub (`POST /v1/feedback`, hub/feedback/feedback.ts) and prints
 * what became of each item: matched, unknown id, ambiguous id, or a label the model does not
 * have. Exit code 1 when any item was refused, so a script notices. Truth of other tasks
 * (detection boxes, regression values, anomaly alarm) comes in a --file (issue #13).
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS_HELP, UsageError, runCommand, type CliIo } from '../command.ts';

const USAGE = `usage: edgefleet feedback <inference-id>=<true-label>... [--device <id>] [--json]
       edgefleet feedback --file <feedback.json> [--json]

Posts ground-truth labels for inferences (by their correlation id) to the hub; realized
accuracy and business cost (edgefleet kpis) are computed from them by prediction time.

Options:
  --device <id>    the device that made the inferences (needed when ids repeat across devices)
  --file <path>    a JSON file: [{"id", "label", "ts"?, "device"?}, ...] or {"feedback": [...]};
                   instead of label, per the model's task: "boxes": [{"label", "box": {"x1","y1",
                   "x2","y2"}}] (detection), "values": {"<target>": n} (regression),
                   "alarm": true|false (anomaly; or label anomaly|normal)
  --json           print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const ResultSchema = z.object({
  received: z.number(),
  matched: z.number(),
  unknown: z.number(),
  ambiguous: z.number(),
  invalidLabel: z.number(),
  refused: z.array(z.object({ id: z.string(), label: z.string(), reason: z.string(), detail: z.string().optional() })),
});

/** Items from `id=label` arguments (the id may contain `=`; the label is after the last one). */
export function parsePairs(pairs: readonly string[], device: string | undefined): { id: string; label: string; device?: string }[] {
  return pairs.map((p) => {
    const i = p.lastIndexOf('=');
    if (i <= 0 || i === p.length - 1) throw new UsageError(`expected <inference-id>=<label>, got "${p}"`);
    return { id: p.slice(0, i), label: p.slice(i + 1), ...(device ? { device } : {}) };
  });
}

async function readItems(file: string): Promise<unknown[]> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  const list = Array.isArray(raw) ? raw : (raw as { feedback?: unknown } | null)?.feedback;
  if (!Array.isArray(list)) throw new UsageError(`${file}: expected an array of feedback items or {"feedback": [...]}`);
  return list as unknown[];
}

export function run(argv: string[], io: CliIo): Promise<number> {
  const spec = { name: 'feedback', usage: USAGE, options: { device: { type: 'string' }, file: { type: 'string' } }, positionals: { max: Infinity, what: '<inference-id>=<label>' } } as const;
  return runCommand(argv, io, spec, async ({ values, positionals, hub, show }) => {
    const items: unknown[] = [...parsePairs(positionals, values.device), ...(values.file === undefined ? [] : await readItems(values.file))];
    if (items.length === 0) throw new UsageError('no feedback given');
    const r = await (await hub()).request('POST', '/v1/feedback', ResultSchema, { feedback: items });
    show(r, () =>
      [
        `${r.matched} of ${r.received} matched; unknown ${r.unknown}, ambiguous ${r.ambiguous}, invalid label ${r.invalidLabel}\n`,
        ...r.refused.map((x) => `  ${x.id}=${x.label}: ${x.reason}${x.detail ? ` (${x.detail})` : ''}\n`),
      ].join(''),
    );
    return r.matched === r.received ? EXIT.OK : EXIT.FAILED;
  });
}
