/**
 * `edgefleet alerts [--state open|acknowledged|resolved] [--json]` and
 * `edgefleet alerts ack|resolve <id>`: drift alerts over the hub's HTTP API (GET /v1/alerts,
 * POST /v1/alerts/<id>/{ack,resolve}).
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, UsageError, runCommand, runSubcommands, type CliIo } from '../command.ts';
import { esc } from '../render.ts';

const USAGE = `usage: edgefleet alerts [--state open|acknowledged|resolved] [--json]
       edgefleet alerts ack|resolve <id> [--json]

Drift alerts, newest first: open → acknowledged → resolved (by an operator, or by itself after
alerts.autoResolveWindows clean windows).

Options:
  --state <s>          only alerts in this state
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const AlertSchema = z.looseObject({
  id: z.string(),
  model: z.string(),
  version: z.string(),
  state: z.string(),
  message: z.string(),
  openedAt: z.string().nullable(),
  resolvedBy: z.string().nullable(),
});
type Alert = z.infer<typeof AlertSchema>;
const ListSchema = z.object({ alerts: z.array(AlertSchema) });
const STATES = ['open', 'acknowledged', 'resolved'];

/** The GET /v1/alerts path for the flags. */
export function alertsPath(f: { state?: string }): string {
  if (f.state === undefined) return '/v1/alerts';
  if (!STATES.includes(f.state)) throw new UsageError(`--state expects ${STATES.join(', ')}, got "${f.state}"`);
  return `/v1/alerts?state=${f.state}`;
}

const line = (a: Alert): string => esc`${a.id}  ${a.state.padEnd(12)} ${a.openedAt ?? ''}  ${a.message}${a.resolvedBy ? `  [resolved by ${a.resolvedBy}]` : ''}`;

function list(argv: string[], io: CliIo): Promise<number> {
  return runCommand(argv, io, { name: 'alerts', usage: USAGE, options: { state: { type: 'string' } } }, async ({ values, hub, show }) => {
    const { alerts } = await (await hub()).request('GET', alertsPath(values), ListSchema);
    show(alerts, () => (alerts.length === 0 ? 'no alerts\n' : `${alerts.map(line).join('\n')}\n`));
  });
}

function change(sub: 'ack' | 'resolve'): (argv: string[], io: CliIo) => Promise<number> {
  return (argv, io) =>
    runCommand(argv, io, { name: `alerts ${sub}`, usage: USAGE, positionals: { min: 1, what: 'an alert id' } }, async ({ positionals, hub, show }) => {
      const a = await (await hub()).request('POST', `/v1/alerts/${encodeURIComponent(positionals[0] ?? '')}/${sub}`, AlertSchema);
      show(a, () => `${line(a)}\n`);
    });
}

export function run(argv: string[], io: CliIo): Promise<number> {
  return runSubcommands(argv, io, { name: 'alerts', usage: USAGE, commands: { ack: change('ack'), resolve: change('resolve') }, fallback: list });
}
