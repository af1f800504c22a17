/**
 * `edgefleet devices [--json]`: the fleet as the hub sees it, one line per device or sensor:
 * presence, last contact, group, labels, running models, and telemetry counters (stored,
 * duplicates, gaps, backlog the agent reported). One page by default (GET /v1/devices is paged,
 * issue #15), filtered on the hub; `--all` follows the cursor to the end.
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, UsageError, runCommand, table, type CliIo } from '../command.ts';

const USAGE = `usage: edgefleet devices [--search <text>] [--group <g>] [--kind <k>] [--status <s>] [--label k=v]...
                        [--limit <n>] [--cursor <c>] [--all] [--json]

Lists registered devices and sensors with their state and telemetry counters, in id order, one
page at a time. When more match, stderr says how many and the --cursor of the next page.

Options:
  --search <text>      ids or label values containing this (case-insensitive)
  --group <g>          only this group
  --kind <k>           device, sensor or consumer
  --status <s>         online, offline or revoked
  --label k=v          with this label (repeatable, or k=v,k2=v2: all must match)
  --limit <n>          page size (default 100, at most 1000)
  --cursor <c>         continue after the page that printed this cursor
  --all                every matching one, page after page
  --json               print the devices as a JSON array
${HUB_OPTIONS_HELP}
`;

const OPTIONS = {
  search: { type: 'string' },
  group: { type: 'string' },
  kind: { type: 'string' },
  status: { type: 'string' },
  label: { type: 'string', multiple: true },
  limit: { type: 'string' },
  cursor: { type: 'string' },
  all: { type: 'boolean' },
} as const;

const DeviceSchema = z.looseObject({
  id: z.string(),
  kind: z.string(),
  group: z.string(),
  labels: z.record(z.string(), z.string()),
  device: z.string().optional(),
  online: z.boolean(),
  lastSeen: z.string().nullable(),
  agentVersion: z.string().nullable(),
  models: z.array(z.object({ name: z.string(), version: z.string() })),
  counters: z.object({ stored: z.number(), duplicates: z.number(), badMessages: z.number(), gaps: z.number(), backlog: z.number() }),
});
const PageSchema = z.object({ items: z.array(DeviceSchema), nextCursor: z.string().nullable(), total: z.number() });
type DeviceRow = z.infer<typeof DeviceSchema>;

function ago(iso: string | null, now: number): string {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

/** Plain text table, one line per device or sensor. */
export function formatTable(devices: DeviceRow[], now: number): string {
  return table(devices, {
    ID: (d) => d.id,
    KIND: (d) => (d.kind === 'sensor' && d.device ? `sensor→${d.device}` : d.kind),
    ONLINE: (d) => (d.online ? 'yes' : 'no'),
    'LAST SEEN': (d) => ago(d.lastSeen, now),
    GROUP: (d) => d.group,
    LABELS: (d) =>
      Object.entries(d.labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(',') || '-',
    MODELS: (d) => d.models.map((m) => `${m.name}@${m.version}`).join(',') || '-',
    STORED: (d) => String(d.counters.stored),
    DUPES: (d) => String(d.counters.duplicates),
    GAPS: (d) => String(d.counters.gaps),
    BACKLOG: (d) => String(d.counters.backlog),
  });
}

export function run(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'devices', usage: USAGE, options: OPTIONS }, async ({ values, hub, show }) => {
    if (values.all && values.cursor !== undefined) throw new UsageError('--all starts at the first page: give --all or --cursor, not both');
    const q = new URLSearchParams();
    for (const key of ['search', 'group', 'kind', 'status', 'limit'] as const) {
      const v = values[key];
      if (v !== undefined) q.set(key === 'search' ? 'q' : key, v);
    }
    for (const l of values.label ?? []) q.append('label', l);
    const filtered = [...q.keys()].some((k) => k !== 'limit');
    if (values.all && values.limit === undefined) q.set('limit', '1000');
    const client = await hub();
    const devices: DeviceRow[] = [];
    let cursor = values.cursor;
    let page: z.infer<typeof PageSchema>;
    do {
      if (cursor !== undefined) q.set('cursor', cursor);
      page = await client.request('GET', `/v1/devices?${q.toString()}`, PageSchema);
      devices.push(...page.items);
      cursor = page.nextCursor ?? undefined;
    } while (values.all && cursor !== undefined);
    show(devices, () => (devices.length === 0 ? (filtered ? 'no device matches\n' : 'no devices registered (add one with: edgefleet device add <id>)\n') : formatTable(devices, Date.now())));
    // On stderr, so stdout stays one line per device (and pure JSON with --json).
    if (page.nextCursor !== null && !values.all) io.err(`${devices.length} of ${page.total} shown; next page: --cursor ${page.nextCursor} (or --all)\n`);
  });
}
