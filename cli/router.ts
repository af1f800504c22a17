/**
 * Which module runs which `edgefleet` command: the top-level help text and one route table.
 * It lives apart from cli/main.ts (the process entry, which runs on import) so tests can walk
 * every route in process: test/unit/cli-command.test.ts checks that each one answers `--help`
 * with exit 0 and a usage line, and that this help text names it. Command modules load lazily
 * (a dynamic import when the command runs), so `edgefleet devices` does not load onnxruntime or
 * the hub, and `--version`/`--help` load no command at all: this module imports nothing that
 * pulls in the agent or hub (sharp, SQLite, ORT), not even for the version string (issue #12;
 * test/integration/cli-lazy.test.ts records what they load).
 *
 * To add a command: a route here (longest words first where they share a prefix) and a line
 * in HELP.
 */
import { EDGEFLEET_VERSION } from '../shared/version.ts';
import { EXIT, type CliIo } from './command.ts';

export const HELP = `edgefleet ${EDGEFLEET_VERSION}: edge inference agent and fleet manager

usage: edgefleet <command> [options]

services
  agent --config <file>            run the edge agent
  hub [--data <dir>] [...]         run the hub (embedded MQTT broker, registry, API)
  agent install-service --config <file> [--dry-run]   write a systemd unit for the agent
  hub install-service [--data <dir>] [--dry-run]      write a systemd unit for the hub

operators (talk to a running hub: --hub <url> --token <t>, or --data <hub data dir>)
  device add <id> --group <g> [--label k=v]...   register a device; prints its token once
  sensor add <id> --device <deviceId>            register a sensor feeding one device
  devices [--search t] [--group g] [--all] [--json]   devices with state and counters, paged
  devices history <id> [--json]                  a device's model history (installs, rollbacks)
  device history <id> [--json]                   the same
  model init <file.onnx> [--out <m.json>]        draft a manifest v2 from the model itself (local)
  model push <file.onnx> --manifest <m.json>     upload, check, sign and release a model
  model list|show <name>@<version> [--json]      the hub's model releases
  model baseline --manifest <m> --data <f>       build a manifest's drift reference bins (local)
  rollout create <name>@<version> --target <sel> staged rollout (waves, bake, health gates)
  rollout list|status|pause|resume|abort|approve [<id>] [--json]
  rollout watch <id> [--interval 2s]             follow a rollout until it ends (exit 1 unless completed)
  feedback <inference-id>=<label>... [--device <id>]  ground truth for past inferences
  kpis [--model <m>] [--since 24h] [--json]     accuracy, latency, uptime, cost per model version
  drift [--model <m>@<v>] [--since 24h] [--json] drift findings per model version, scope, feature
  alerts [--state open] [--json]                 drift alerts; alerts ack|resolve <id>

security (admin token)
  token create <name> --role viewer|operator|admin   an operator API token; printed once
  token list | token revoke <id>                 operator tokens; revocation is immediate
  enroll-token create --group <g> [--max-uses n] [--ttl 24h]   zero-touch enrollment token
  enroll-token list | enroll-token revoke <id>   enrollment tokens and their uses
  device revoke <id>                             disconnect a device, sensor or consumer for good
  audit [--since 24h] [--actor a] [--action x] [--json]   who did what, when, with what outcome

Every command takes --help; listing and status commands take --json (stdout is then JSON only).
Long operations (model push, rollout watch) draw progress on stderr when it is a terminal
(--progress forces plain progress lines, --json turns it off).

exit codes
  0  ok
  1  the operation failed (refused by the hub, not found, rollout rolled back or aborted)
  2  usage error (unknown command or flag, missing argument)
  3  hub unreachable (no hub.json, connection refused, timeout)
  4  not authorized (no or wrong API token, HTTP 401/403)

Run 'edgefleet <command> --help' for a command's options.`;

/** What a command returns: its exit code, or nothing when it set its own (the services). */
export type CommandRun = (argv: string[], io: CliIo) => Promise<number | void>;

export interface Route {
  /** The command words, e.g. ['devices', 'history']. */
  words: readonly string[];
  /** A long-running service that owns the process (signals, exit code): tested as a child process. */
  service?: boolean;
  load: () => Promise<CommandRun>;
}

const installService =
  (kind: 'agent' | 'hub'): Route['load'] =>
  async () => {
    const { run } = await import('./commands/install-service.ts');
    return (argv, io) => run([kind, ...argv], io);
  };
const history: Route['load'] = async () => (await import('./commands/rollout.ts')).runHistory;

/** Longest match wins, so `devices history` is found before `devices`. */
export const ROUTES: readonly Route[] = [
  { words: ['agent', 'install-service'], load: installService('agent') },
  { words: ['hub', 'install-service'], load: installService('hub') },
  {
    words: ['agent'],
    service: true,
    load: async () => {
      const { runAgent } = await import('../agent/main.ts');
      return (argv) => runAgent(argv);
    },
  },
  {
    words: ['hub'],
    service: true,
    load: async () => {
      const { runHub } = await import('../hub/main.ts');
      return (argv) => runHub(argv);
    },
  },
  { words: ['device', 'add'], load: async () => (await import('./commands/device-add.ts')).run },
  { words: ['device', 'history'], load: history },
  { words: ['device', 'revoke'], load: async () => (await import('./commands/security.ts')).runDeviceRevoke },
  { words: ['token'], load: async () => (await import('./commands/security.ts')).runToken },
  { words: ['enroll-token'], load: async () => (await import('./commands/security.ts')).runEnrollToken },
  { words: ['audit'], load: async () => (await import('./commands/security.ts')).runAudit },
  { words: ['devices', 'history'], load: history },
  { words: ['sensor', 'add'], load: async () => (await import('./commands/sensor-add.ts')).run },
  { words: ['devices'], load: async () => (await import('./commands/devices.ts')).run },
  { words: ['model', 'baseline'], load: async () => (await import('./commands/model-baseline.ts')).run },
  { words: ['model'], load: async () => (await import('./commands/model.ts')).run },
  { words: ['rollout'], load: async () => (await import('./commands/rollout.ts')).run },
  { words: ['feedback'], load: async () => (await import('./commands/feedback.ts')).run },
  { words: ['kpis'], load: async () => (await import('./commands/kpis.ts')).run },
  { words: ['drift'], load: async () => (await import('./commands/drift.ts')).run },
  { words: ['alerts'], load: async () => (await import('./commands/alerts.ts')).run },
];

/** The route for argv and the arguments after its words. */
export function findRoute(argv: readonly string[]): { route: Route; rest: string[] } | undefined {
  let best: Route | undefined;
  for (const r of ROUTES) {
    if (r.words.every((w, i) => argv[i] === w) && (!best || r.words.length > best.words.length)) best = r;
  }
  return best && { route: best, rest: argv.slice(best.words.length) };
}

/** Runs `edgefleet <argv>`; undefined when a service set the process exit code itself. */
export async function dispatch(argv: string[], io: CliIo): Promise<number | undefined> {
  const [cmd] = argv;
  if (cmd === undefined || cmd === 'help' || cmd === '--help' || cmd === '-h') {
    io.out(HELP);
    return EXIT.OK;
  }
  if (cmd === 'version' || cmd === '--version') {
    io.out(EDGEFLEET_VERSION);
    return EXIT.OK;
  }
  const found = findRoute(argv);
  if (!found) {
    io.err(`edgefleet: unknown command '${argv.join(' ')}'\n\n${HELP}`);
    return EXIT.USAGE;
  }
  const run = await found.route.load();
  return (await run(found.rest, io)) ?? undefined;
}
