/**
 * `edgefleet alerts [--state open|acknowledged|resolved] [--json]` and
 * `edgefleet alerts ack|resolve <id>`: drift alerts over the hub's HTTP API (GET /v1/alerts,
 * POST /v1/alerts/<id>/{ack,resolve}).
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS, HUB_OPTIONS_HELP, HubClient, UsageError, failure, resolveHub, type CliIo } from './http-client.ts';

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

const line = (a: Alert): string => `${a.id}  ${a.state.padEnd(12)} ${a.openedAt ?? ''}  ${a.message}${a.resolvedBy ? `  [resolved by ${a.resolvedBy}]` : ''}`;

export async function run(argv: string[], io: CliIo): Promise<number> {
  const sub = argv[0] === 'ack' || argv[0] === 'resolve' ? argv[0] : undefined;
  try {
    const { values, positionals } = parseArgs({
      args: sub ? argv.slice(1) : argv,
      options: { ...HUB_OPTIONS, json: { type: 'boolean' }, ...(sub ? {} : { state: { type: 'string' } }) },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (sub) {
      const id = positionals[0];
      if (positionals.length !== 1 || !id) throw new UsageError('expected one alert id');
      const client = new HubClient(await resolveHub(values, io.env));
      const a = await client.request('POST', `/v1/alerts/${encodeURIComponent(id)}/${sub}`, AlertSchema);
      io.out(values.json ? `${JSON.stringify(a, null, 2)}\n` : `${line(a)}\n`);
      return EXIT.OK;
    }
    if (positionals.length) throw new UsageError(`unknown alerts command '${positionals.join(' ')}'`);
    const path = alertsPath({ state: (values as { state?: string }).state });
    const client = new HubClient(await resolveHub(values, io.env));
    const { alerts } = await client.request('GET', path, ListSchema);
    if (values.json) io.out(`${JSON.stringify(alerts, null, 2)}\n`);
    else if (alerts.length === 0) io.out('no alerts\n');
    else io.out(`${alerts.map(line).join('\n')}\n`);
    return EXIT.OK;
  } catch (err) {
    return failure(io, `alerts${sub ? ` ${sub}` : ''}`, err, USAGE);
  }
}
