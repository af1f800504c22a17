/**
 * `edgefleet drift [--model m@v] [--scope s] [--id x] [--feature f] [--since 24h] [--json]`:
 * what the hub's drift monitoring found, over its HTTP API (GET /v1/drift): the tested windows
 * with their headlines, and each finding per model version, scope, id and feature with its
 * effect told in words.
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, UsageError, runCommand, type CliIo } from '../command.ts';
import { parseDuration } from './rollout.ts';
import { esc, safe } from '../render.ts';

const USAGE = `usage: edgefleet drift [--model <name>@<version>] [--scope fleet|group|device] [--id <id>]
                      [--feature <f>] [--since <duration>] [--limit <n>] [--json]

Drift findings of the hub's tested windows: effect size and significance both passed (or a
CUSUM trend), per model version, scope (fleet, group, device) and feature, told in words.

Options:
  --model <m@v>        one model version (or just a name: every version of it)
  --scope <s>          fleet, group or device
  --id <id>            a group name or device id
  --feature <f>        an input feature, or output:class|confidence|margin|entropy
  --since <duration>   only windows that started this long ago or later, e.g. 2h, 7d
  --limit <n>          most windows and findings (default 200)
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const DriftSchema = z.object({
  windows: z.array(
    z.looseObject({
      model: z.string(),
      version: z.string(),
      windowStart: z.string(),
      devices: z.number().optional(),
      tests: z.number().optional(),
      headlines: z.array(z.string()).optional(),
      skipped: z.string().optional(),
    }),
  ),
  findings: z.array(z.looseObject({ model: z.string(), version: z.string(), windowStart: z.string(), scope: z.string(), id: z.string(), feature: z.string(), message: z.string() })),
});

export interface DriftFlags {
  model?: string;
  scope?: string;
  id?: string;
  feature?: string;
  since?: string;
  limit?: string;
}

/** The GET /v1/drift path for the flags (`now` for --since). */
export function driftPath(f: DriftFlags, now: number): string {
  const q = new URLSearchParams();
  if (f.model !== undefined) {
    const at = f.model.lastIndexOf('@');
    if (at === 0 || at === f.model.length - 1) throw new UsageError(`--model expects <name> or <name>@<version>, got "${f.model}"`);
    q.set('model', at > 0 ? f.model.slice(0, at) : f.model);
    if (at > 0) q.set('version', f.model.slice(at + 1));
  }
  if (f.scope !== undefined) {
    if (!['fleet', 'group', 'device'].includes(f.scope)) throw new UsageError(`--scope expects fleet, group or device, got "${f.scope}"`);
    q.set('scope', f.scope);
  }
  if (f.id !== undefined) q.set('id', f.id);
  if (f.feature !== undefined) q.set('feature', f.feature);
  if (f.since !== undefined) q.set('from', String(now - parseDuration(f.since, '--since')));
  if (f.limit !== undefined) {
    if (!/^\d+$/.test(f.limit)) throw new UsageError(`--limit expects a number, got "${f.limit}"`);
    q.set('limit', f.limit);
  }
  const s = q.toString();
  return `/v1/drift${s ? `?${s}` : ''}`;
}

function formatDrift(d: z.infer<typeof DriftSchema>): string {
  if (d.windows.length === 0) return 'no tested drift windows yet (windows are tested after they close, plus drift.graceMs)\n';
  const lines: string[] = [];
  for (const w of d.windows) {
    const head = esc`${w.windowStart}  ${w.model}@${w.version}`;
    if (w.skipped) lines.push(`${head}  not tested: ${safe(w.skipped)}`);
    else lines.push(`${head}  ${w.devices ?? 0} device(s), ${w.tests ?? 0} tests${w.headlines?.length ? '' : ', no drift'}`, ...(w.headlines ?? []).map((h) => `    ${safe(h)}`));
  }
  if (d.findings.length) {
    lines.push('', 'findings:');
    for (const f of d.findings) lines.push(esc`  ${f.windowStart}  ${f.model}@${f.version}  ${f.scope}/${f.id}  ${f.message}`);
  }
  return `${lines.join('\n')}\n`;
}

export function run(argv: string[], io: CliIo): Promise<number> {
  const options = {
    model: { type: 'string' },
    scope: { type: 'string' },
    id: { type: 'string' },
    feature: { type: 'string' },
    since: { type: 'string' },
    limit: { type: 'string' },
  } as const;
  return runCommand(argv, io, { name: 'drift', usage: USAGE, options }, async ({ values, hub, show }) => {
    const path = driftPath(values, Date.now());
    const d = await (await hub()).request('GET', path, DriftSchema);
    show(d, () => formatDrift(d));
  });
}
