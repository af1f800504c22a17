/**
 * `edgefleet sensor add <id> --device <deviceId> [--json]`: registers a sensor that may only
 * publish readings into `edgefleet/v1/<deviceId>/in/...`, and prints its token once.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS, HUB_OPTIONS_HELP, HubClient, UsageError, failure, parseLabels, resolveHub, type CliIo } from './http-client.ts';

const USAGE = `usage: edgefleet sensor add <id> --device <deviceId> [--group <group>] [--label key=value]... [--json]

Registers a sensor feeding one device and prints its token once. The sensor connects with
username = client id = <id>, password = the token, and may publish only to
edgefleet/v1/<deviceId>/in/<input>.

Options:
  --device <deviceId>  the device whose inputs the sensor feeds (required)
  --group <group>      fleet group (default "default")
  --label key=value    a label; repeatable
  --json               print {id, kind, group, device, token} as JSON
${HUB_OPTIONS_HELP}
`;

const CreatedSchema = z.object({ id: z.string(), kind: z.string(), group: z.string(), device: z.string(), token: z.string() });

export async function run(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options: {
        ...HUB_OPTIONS,
        device: { type: 'string' },
        group: { type: 'string' },
        label: { type: 'string', multiple: true },
        json: { type: 'boolean' },
      },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (positionals.length !== 1) throw new UsageError(positionals.length ? `one sensor id expected, got ${positionals.join(' ')}` : 'a sensor id is required');
    if (!values.device) throw new UsageError('--device <deviceId> is required');
    const labels = parseLabels(values.label);
    const client = new HubClient(await resolveHub(values, io.env));
    const created = await client.request('POST', '/v1/devices', CreatedSchema, {
      id: positionals[0],
      kind: 'sensor',
      device: values.device,
      group: values.group,
      labels,
    });
    if (values.json) io.out(`${JSON.stringify(created)}\n`);
    else {
      io.out(
        `sensor ${created.id} registered for device ${created.device}\n` +
          `token (shown only now):\n  ${created.token}\n` +
          `publish readings to edgefleet/v1/${created.device}/in/<input> as username/client id ${created.id}\n`,
      );
    }
    return EXIT.OK;
  } catch (err) {
    return failure(io, 'sensor add', err, USAGE);
  }
}
