/**
 * `edgefleet devices [--json]`: the fleet as the hub sees it, one line per device or sensor:
 * presence, last contact, group, labels, running models, and telemetry counters (stored,
 * duplicates, gaps, backlog the agent reported).
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS, HUB_OPTIONS_HELP, HubClient, UsageError, failure, resolveHub, type CliIo } from './http-client.ts';

const USAGE = `usage: edgefleet devices [--json]

Lists registered devices and sensors with their state and telemetry counters.

Options:
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

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
const ListSchema = z.object({ devices: z.array(DeviceSchema) });
type DeviceRow = z.infer<typeof DeviceSchema>;

function ago(iso: string | null, now: number): string {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

/** Plain text table, columns padded to their widest cell. */
export function formatTable(devices: DeviceRow[], now: number): string {
  const head = ['ID', 'KIND', 'ONLINE', 'LAST SEEN', 'GROUP', 'LABELS', 'MODELS', 'STORED', 'DUPES', 'GAPS', 'BACKLOG'];
  const rows = devices.map((d) => [
    d.id,
    d.kind === 'sensor' && d.device ? `sensor→${d.device}` : d.kind,
    d.online ? 'yes' : 'no',
    ago(d.lastSeen, now),
    d.group,
    Object.entries(d.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(',') || '-',
    d.models.map((m) => `${m.name}@${m.version}`).join(',') || '-',
    String(d.counters.stored),
    String(d.counters.duplicates),
    String(d.counters.gaps),
    String(d.counters.backlog),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return `${[line(head), ...rows.map(line)].join('\n')}\n`;
}

export async function run(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values, positionals } = parseArgs({ args: argv, options: { ...HUB_OPTIONS, json: { type: 'boolean' } }, allowPositionals: true, strict: true });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (positionals.length) throw new UsageError(`unexpected argument ${positionals.join(' ')}`);
    const client = new HubClient(await resolveHub(values, io.env));
    const list = await client.request('GET', '/v1/devices', ListSchema);
    if (values.json) io.out(`${JSON.stringify(list.devices, null, 2)}\n`);
    else if (list.devices.length === 0) io.out('no devices registered (add one with: edgefleet device add <id>)\n');
    else io.out(formatTable(list.devices, Date.now()));
    return EXIT.OK;
  } catch (err) {
    return failure(io, 'devices', err, USAGE);
  }
}
