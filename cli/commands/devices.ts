/**
 * `edgefleet devices [--json]`: the fleet as the hub sees it, one line per device or sensor:
 * presence, last contact, group, labels, running models, and telemetry counters (stored,
 * duplicates, gaps, backlog the agent reported).
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, runCommand, table, type CliIo } from '../command.ts';

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
  return runCommand(argv, io, { name: 'devices', usage: USAGE }, async ({ hub, show }) => {
    const { devices } = await (await hub()).request('GET', '/v1/devices', ListSchema);
    show(devices, () => (devices.length === 0 ? 'no devices registered (add one with: edgefleet device add <id>)\n' : formatTable(devices, Date.now())));
  });
}
