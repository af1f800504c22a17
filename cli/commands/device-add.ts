/**
 * `edgefleet device add <id> [--group <g>] [--label k=v]... [--json]`: registers a device at
 * the hub and prints its MQTT token, which exists in plaintext only in this output.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS, HUB_OPTIONS_HELP, HubClient, UsageError, failure, parseLabels, resolveHub, type CliIo } from './http-client.ts';

const USAGE = `usage: edgefleet device add <id> [--group <group>] [--label key=value]... [--json]

Registers a device and prints its token once. The device connects to the hub's MQTT broker
with username = client id = <id> and password = the token.

Options:
  --group <group>      fleet group (default "default")
  --label key=value    a label; repeatable
  --json               print {id, kind, group, token} as JSON
${HUB_OPTIONS_HELP}
`;

const CreatedSchema = z.object({ id: z.string(), kind: z.string(), group: z.string(), token: z.string() });

export async function run(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options: { ...HUB_OPTIONS, group: { type: 'string' }, label: { type: 'string', multiple: true }, json: { type: 'boolean' } },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (positionals.length !== 1) throw new UsageError(positionals.length ? `one device id expected, got ${positionals.join(' ')}` : 'a device id is required');
    const labels = parseLabels(values.label);
    const client = new HubClient(await resolveHub(values, io.env));
    const created = await client.request('POST', '/v1/devices', CreatedSchema, { id: positionals[0], kind: 'device', group: values.group, labels });
    if (values.json) io.out(`${JSON.stringify(created)}\n`);
    else {
      io.out(
        `device ${created.id} registered (group ${created.group})\n` +
          `token (shown only now; store it with the device):\n  ${created.token}\n` +
          `agent config: hub.token, or EDGEFLEET_AGENT__HUB__TOKEN=${created.token}\n`,
      );
    }
    return EXIT.OK;
  } catch (err) {
    return failure(io, 'device add', err, USAGE);
  }
}
