/**
 * `edgefleet sensor add <id> --device <deviceId> [--json]`: registers a sensor that may only
 * publish readings into `edgefleet/v1/<deviceId>/in/...`, and prints its token once.
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, UsageError, runCommand, type CliIo } from '../command.ts';
import { parseLabels } from './http-client.ts';

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

export function run(argv: string[], io: CliIo): Promise<number> {
  const spec = {
    name: 'sensor add',
    usage: USAGE,
    options: { device: { type: 'string' }, group: { type: 'string' }, label: { type: 'string', multiple: true } },
    positionals: { min: 1, what: 'a sensor id' },
  } as const;
  return runCommand(argv, io, spec, async ({ values, positionals, hub, show }) => {
    if (!values.device) throw new UsageError('--device <deviceId> is required');
    const labels = parseLabels(values.label);
    const body = { id: positionals[0], kind: 'sensor', device: values.device, group: values.group, labels };
    const created = await (await hub()).request('POST', '/v1/devices', CreatedSchema, body);
    show(
      created,
      () =>
        `sensor ${created.id} registered for device ${created.device}\n` +
        `token (shown only now):\n  ${created.token}\n` +
        `publish readings to edgefleet/v1/${created.device}/in/<input> as username/client id ${created.id}\n`,
    );
  });
}
