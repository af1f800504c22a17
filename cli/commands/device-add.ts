/**
 * `edgefleet device add <id> [--group <g>] [--label k=v]... [--json]`: registers a device at
 * the hub and prints its MQTT token, which exists in plaintext only in this output.
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, runCommand, type CliIo } from '../command.ts';
import { parseLabels } from './http-client.ts';

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

export function run(argv: string[], io: CliIo): Promise<number> {
  const spec = {
    name: 'device add',
    usage: USAGE,
    options: { group: { type: 'string' }, label: { type: 'string', multiple: true } },
    positionals: { min: 1, what: 'a device id' },
  } as const;
  return runCommand(argv, io, spec, async ({ values, positionals, hub, show }) => {
    const labels = parseLabels(values.label);
    const created = await (await hub()).request('POST', '/v1/devices', CreatedSchema, { id: positionals[0], kind: 'device', group: values.group, labels });
    show(
      created,
      () =>
        `device ${created.id} registered (group ${created.group})\n` +
        `token (shown only now; store it with the device):\n  ${created.token}\n` +
        `agent config: hub.token, or EDGEFLEET_AGENT__HUB__TOKEN=${created.token}\n`,
    );
  });
}
