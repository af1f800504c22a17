/**
 * `edgefleet`: one command, with subcommands. Services (`agent`, `hub`) run until signalled;
 * operator commands talk to the hub's HTTP API and exit with 0 (ok), 1 (failed) or 2 (usage).
 */
import { AGENT_VERSION } from '../agent/main.ts';

const HELP = `edgefleet ${AGENT_VERSION}: edge inference agent and fleet manager

usage: edgefleet <command> [options]

services
  agent --config <file>            run the edge agent
  hub [--data <dir>] [...]         run the hub (embedded MQTT broker, registry, API)
  agent install-service --config <file> [--dry-run]   write a systemd unit for the agent
  hub install-service [--data <dir>] [--dry-run]      write a systemd unit for the hub

operators (talk to a running hub: --hub <url> --token <t>, or --data <hub data dir>)
  device add <id> --group <g> [--label k=v]...   register a device; prints its token once
  sensor add <id> --device <deviceId>            register a sensor feeding one device
  devices [--json]                               list devices with state and counters
  devices history <id> [--json]                  a device's model history (installs, rollbacks)
  model push <file.onnx> --manifest <m.json>     upload, check, sign and release a model
  model list|show <name>@<version> [--json]      the hub's model releases
  model baseline --manifest <m> --data <f>       build a manifest's drift reference bins (local)
  rollout create <name>@<version> --target <sel> staged rollout (waves, bake, health gates)
  rollout list|status|pause|resume|abort|approve [<id>] [--json]
  feedback <inference-id>=<label>... [--device <id>]  ground truth for past inferences
  kpis [--model <m>] [--since 24h] [--json]     accuracy, latency, uptime, cost per model version
  drift [--model <m>@<v>] [--since 24h] [--json] drift findings per model version, scope, feature
  alerts [--state open] [--json]                 drift alerts; alerts ack|resolve <id>

Run 'edgefleet <command> --help' for a command's options.`;

type CommandModule = { run(argv: string[], io: Io): Promise<number> };
interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
  env: NodeJS.ProcessEnv;
}

const io: Io = {
  out: (s) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`),
  err: (s) => process.stderr.write(s.endsWith('\n') ? s : `${s}\n`),
  env: process.env,
};

async function operator(load: () => Promise<CommandModule>, argv: string[]): Promise<void> {
  const mod = await load();
  process.exitCode = await mod.run(argv, io);
}

async function main(argv: string[]): Promise<void> {
  const [cmd, sub, ...rest] = argv;
  switch (cmd) {
    case 'agent':
      if (sub === 'install-service') return operator(() => import('./commands/install-service.ts'), [cmd, ...rest]);
      return (await import('../agent/main.ts')).runAgent(argv.slice(1));
    case 'hub':
      if (sub === 'install-service') return operator(() => import('./commands/install-service.ts'), [cmd, ...rest]);
      return (await import('../hub/main.ts')).runHub(argv.slice(1));
    case 'device':
      if (sub === 'add') return operator(() => import('./commands/device-add.ts'), rest);
      if (sub === 'history') return operator(async () => ({ run: (await import('./commands/rollout.ts')).runHistory }), rest);
      break;
    case 'sensor':
      if (sub === 'add') return operator(() => import('./commands/sensor-add.ts'), rest);
      break;
    case 'devices':
      if (sub === 'history') return operator(async () => ({ run: (await import('./commands/rollout.ts')).runHistory }), rest);
      return operator(() => import('./commands/devices.ts'), argv.slice(1));
    case 'rollout':
      return operator(() => import('./commands/rollout.ts'), argv.slice(1));
    case 'feedback':
      return operator(() => import('./commands/feedback.ts'), argv.slice(1));
    case 'kpis':
      return operator(() => import('./commands/kpis.ts'), argv.slice(1));
    case 'drift':
      return operator(() => import('./commands/drift.ts'), argv.slice(1));
    case 'alerts':
      return operator(() => import('./commands/alerts.ts'), argv.slice(1));
    case 'model':
      if (sub === 'baseline') return operator(() => import('./commands/model-baseline.ts'), rest);
      return operator(() => import('./commands/model.ts'), argv.slice(1));
    case 'version':
    case '--version':
      io.out(AGENT_VERSION);
      return;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      io.out(HELP);
      return;
  }
  io.err(`edgefleet: unknown command '${argv.join(' ')}'\n\n${HELP}`);
  process.exitCode = 2;
}

await main(process.argv.slice(2));
