/**
 * `edgefleet agent install-service` and `edgefleet hub install-service`: write a hardened systemd
 * unit (Type=notify with watchdog, Restart=always, a dedicated user, a state directory) and print
 * the commands that create the user and enable the unit. It never runs those commands itself:
 * creating users and starting services on someone's machine stays the operator's decision.
 */
import { existsSync } from 'node:fs';
import { access, rename, stat, writeFile, constants as fsConstants } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadAgentConfig } from '../../agent/config.ts';
import { loadHubConfig } from '../../hub/config.ts';
import { EXIT, UsageError, failure, type CliIo } from '../command.ts';

export type ServiceKind = 'agent' | 'hub';

export const DEFAULT_UNIT_DIR = '/etc/systemd/system';
export const DEFAULT_USER = 'edgefleet';

/** Everything a unit file is rendered from; paths are absolute. */
export interface UnitSpec {
  kind: ServiceKind;
  node: string;
  /** The `edgefleet` bin shim (bin/edgefleet.mjs), which runs dist/ when built, else the sources via tsx. */
  bin: string;
  /** Arguments after the shim, e.g. ['agent', '--config', '/etc/edgefleet/agent.yaml']. */
  args: string[];
  user: string;
  group: string;
  /** Directory name under /var/lib that systemd creates and owns for the user (StateDirectory=). */
  stateDirectory: string;
  /** Paths the service writes besides the state directory (ProtectSystem=strict makes all else read-only). */
  readWritePaths: string[];
  /** Package root, for Documentation= (its README). */
  packageDir: string;
}

export function unitName(kind: ServiceKind): string {
  return `edgefleet-${kind}.service`;
}

export function stateDirectoryOf(kind: ServiceKind): string {
  return kind === 'agent' ? 'edgefleet' : 'edgefleet-hub';
}

/** `%` starts a specifier in every unit setting. */
function escapeSpecifiers(value: string): string {
  return value.replace(/%/g, '%%');
}

/**
 * One word of a space-separated setting (ExecStart=, ReadWritePaths=), quoted when it holds
 * anything beyond a plain path. `exec`: ExecStart= also expands `$VAR`, so `$` becomes `$$`.
 */
export function quoteWord(word: string, exec = false): string {
  const specifiers = escapeSpecifiers(word);
  const escaped = exec ? specifiers.replace(/\$/g, '$$$$') : specifiers;
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(escaped)) return escaped;
  return `"${escaped.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

/** Values go into a line-based file: a newline would start a new (attacker-chosen) setting. */
function assertOneLine(what: string, value: string): void {
  if (/[\n\r\0]/.test(value)) throw new UsageError(`${what} must not contain newlines or NUL`);
}

export function renderUnit(spec: UnitSpec): string {
  for (const [what, v] of [
    ['node', spec.node],
    ['bin', spec.bin],
    ['user', spec.user],
    ['group', spec.group],
    ['packageDir', spec.packageDir],
    ...spec.args.map((a) => ['argument', a] as const),
    ...spec.readWritePaths.map((p) => ['read-write path', p] as const),
  ] as const) {
    assertOneLine(what, v);
  }
  const state = `/var/lib/${spec.stateDirectory}`;
  const rw = [...new Set([state, ...spec.readWritePaths])];
  const what = spec.kind === 'agent' ? 'edge inference agent' : 'hub (MQTT broker, registry, rollouts, API)';
  const devices =
    spec.kind === 'agent'
      ? [
          '# Cameras and other devices read directly (not through a folder, MQTT or HTTP) need an',
          '# override, e.g. `systemctl edit edgefleet-agent` with:',
          '#   [Service]',
          '#   PrivateDevices=no',
          '#   DevicePolicy=closed',
          '#   DeviceAllow=/dev/video0 r',
          '#   SupplementaryGroups=video',
          '# and folders written outside the state directory need ReadWritePaths=<dir>.',
        ]
      : ['# Paths written outside the state directory need an override (`systemctl edit edgefleet-hub`):', '#   [Service]', '#   ReadWritePaths=<dir>'];
  const lines = [
    `# Written by \`edgefleet ${spec.kind} install-service\`. Re-run it to regenerate; put local`,
    `# changes in a drop-in (\`systemctl edit ${unitName(spec.kind)}\`) so they survive that.`,
    '[Unit]',
    `Description=edgefleet ${what}`,
    `Documentation=${escapeSpecifiers(`file://${encodeURI(join(spec.packageDir, 'README.md'))}`)}`,
    'Wants=network-online.target',
    'After=network-online.target',
    // An unattended device should keep coming back; RestartSec spaces the attempts instead of
    // systemd's default start limit giving up for good after 5 failures in 10 s.
    'StartLimitIntervalSec=0',
    '',
    '[Service]',
    // The process says when it is ready (shared/sd-notify.ts). The notification comes from a
    // spawned `systemd-notify`, not from the main PID, hence NotifyAccess=all.
    'Type=notify',
    'NotifyAccess=all',
    `ExecStart=${[spec.node, spec.bin, ...spec.args].map((w) => quoteWord(w, true)).join(' ')}`,
    'Restart=always',
    'RestartSec=2',
    // Exit code 2 is a configuration or usage error: restarting cannot fix it.
    'RestartPreventExitStatus=2',
    // WATCHDOG=1 is sent every 15 s from the event loop; 30 s of silence means it is stuck.
    'WatchdogSec=30',
    // Longer than the service's own 20 s grace period, so it exits by itself before SIGKILL.
    'TimeoutStopSec=30',
    // SIGTERM to the main process only: it stops its own children (model validators) in order.
    'KillMode=mixed',
    `User=${spec.user}`,
    `Group=${spec.group}`,
    `StateDirectory=${spec.stateDirectory}`,
    'StateDirectoryMode=0750',
    `WorkingDirectory=${escapeSpecifiers(state)}`,
    'Environment=NODE_ENV=production',
    // Secrets (e.g. EDGEFLEET_AGENT__HUB__TOKEN) belong here, mode 0600, not in the unit.
    `EnvironmentFile=-/etc/edgefleet/${spec.kind}.env`,
    'UMask=0027',
    'LimitNOFILE=65536',
    '',
    '# Hardening (`systemd-analyze security ' + unitName(spec.kind) + '` scores it).',
    'NoNewPrivileges=yes',
    'CapabilityBoundingSet=',
    'ProtectSystem=strict',
    `ReadWritePaths=${rw.map((w) => quoteWord(w)).join(' ')}`,
    'ProtectHome=yes',
    'PrivateTmp=yes',
    'PrivateMounts=yes',
    // Hides other users' processes only; the agent still sees its own model-validator children.
    'ProtectProc=invisible',
    'RemoveIPC=yes',
    'PrivateDevices=yes',
    ...devices,
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6',
    'RestrictNamespaces=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    '# V8 compiles JavaScript to machine code at run time (JIT) and needs writable+executable',
    '# memory: MemoryDenyWriteExecute=yes would crash node.',
    'MemoryDenyWriteExecute=no',
    'SystemCallArchitectures=native',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ];
  return lines.join('\n');
}

/** Walks up from this module to the package root (the directory with bin/edgefleet.mjs), so it works from cli/ and dist/cli/. */
export function findPackageDir(from: string = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'bin', 'edgefleet.mjs'))) return dir;
    if (dirname(dir) === dir) throw new Error(`cannot find bin/edgefleet.mjs above ${from}`);
  }
}

const USAGE = {
  agent: `usage: edgefleet agent install-service --config <file> [options]

Writes ${unitName('agent')}: a systemd unit that runs the agent as a dedicated user with
Type=notify, a watchdog, Restart=always, and hardening. The config is validated first; its
dataDir and folder inputs become the unit's writable paths. Prints the commands to create the
user and enable the unit (it does not run them).
`,
  hub: `usage: edgefleet hub install-service [--data <dir>] [--config <file>] [options]

Writes ${unitName('hub')}: a systemd unit that runs the hub as a dedicated user with
Type=notify, a watchdog, Restart=always, and hardening. Prints the commands to create the user
and enable the unit (it does not run them).
`,
};

const OPTIONS_HELP = {
  agent: `  --config <file>      agent config file (required); readable by the service user`,
  hub: `  --data <dir>         hub data directory (default /var/lib/${stateDirectoryOf('hub')}, the unit's state directory)
  --config <file>      hub config file (optional)`,
};

function usage(kind: ServiceKind): string {
  return `${USAGE[kind]}
Options:
${OPTIONS_HELP[kind]}
  --user <name>        service user (default ${DEFAULT_USER}); --group defaults to it
  --group <name>       service group
  --rw-path <dir>      another directory the service may write; repeatable
  --unit-dir <dir>     where to write the unit (default ${DEFAULT_UNIT_DIR})
  --node <path>        node binary for ExecStart (default: this node, ${process.execPath})
  --dry-run            print the unit to stdout and write nothing
  --json               print {unit, path, written, content, commands, warnings} as JSON
  -h, --help           show this help
`;
}

/** Directories the unit's sandbox hides or replaces: a path below them is not what the service sees. */
const HIDDEN = [
  { prefixes: ['/home/', '/root/', '/run/user/'], why: 'ProtectHome=yes hides it from the service' },
  { prefixes: ['/tmp/', '/var/tmp/'], why: 'PrivateTmp=yes gives the service its own empty /tmp and /var/tmp' },
];

interface Result {
  unit: string;
  path: string;
  written: boolean;
  content: string;
  commands: string[];
  warnings: string[];
}

const NAME = /^[a-z_][a-z0-9_-]*[$]?$/;

/** argv: ['agent' | 'hub', ...options]. */
export async function run(argv: string[], io: CliIo, deps: { packageDir?: string } = {}): Promise<number> {
  const [kindArg, ...rest] = argv;
  const kind: ServiceKind = kindArg === 'hub' ? 'hub' : 'agent';
  const command = `${kind} install-service`;
  try {
    if (kindArg !== 'agent' && kindArg !== 'hub') throw new UsageError(`expected agent or hub, got ${kindArg ?? 'nothing'}`);
    const { values, positionals } = parseArgs({
      args: rest,
      options: {
        config: { type: 'string' },
        data: { type: 'string' },
        user: { type: 'string' },
        group: { type: 'string' },
        'rw-path': { type: 'string', multiple: true },
        'unit-dir': { type: 'string' },
        node: { type: 'string' },
        'dry-run': { type: 'boolean' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      io.out(usage(kind));
      return EXIT.OK;
    }
    if (positionals.length) throw new UsageError(`unexpected argument ${positionals.join(' ')}`);
    if (kind === 'agent' && values.data !== undefined) throw new UsageError('--data is a hub option; the agent keeps its state in its config dataDir');
    if (kind === 'agent' && !values.config) throw new UsageError('--config <file> is required');
    const user = values.user ?? DEFAULT_USER;
    const group = values.group ?? user;
    for (const [flag, name] of [
      ['--user', user],
      ['--group', group],
    ] as const) {
      if (!NAME.test(name) || name.length > 32) throw new UsageError(`${flag} ${JSON.stringify(name)} is not a valid user/group name`);
    }
    const node = resolve(values.node ?? process.execPath);
    const unitDir = resolve(values['unit-dir'] ?? DEFAULT_UNIT_DIR);
    const packageDir = deps.packageDir ?? findPackageDir();
    const bin = join(packageDir, 'bin', 'edgefleet.mjs');
    const stateDirectory = stateDirectoryOf(kind);
    const state = `/var/lib/${stateDirectory}`;
    const warnings: string[] = [];
    const readWritePaths = (values['rw-path'] ?? []).map((p) => resolve(p));
    let args: string[];
    let configFile: string | undefined;
    const envPrefix = kind === 'agent' ? 'EDGEFLEET_AGENT__' : 'EDGEFLEET_HUB__';

    if (kind === 'agent') {
      configFile = resolve(values.config ?? '');
      // The same validation the service runs at start: a unit that cannot start helps nobody.
      const cfg = loadAgentConfig({ file: configFile, env: io.env });
      readWritePaths.push(cfg.dataDir);
      for (const p of cfg.pipelines) if (p.input.type === 'folder') readWritePaths.push(p.input.path);
      args = ['agent', '--config', configFile];
    } else {
      const data = resolve(values.data ?? state);
      configFile = values.config === undefined ? undefined : resolve(values.config);
      loadHubConfig({ file: configFile, overrides: { dataDir: data }, env: io.env });
      readWritePaths.push(data);
      args = ['hub', '--data', data, ...(configFile ? ['--config', configFile] : [])];
    }

    try {
      if (!(await stat(node)).isFile()) throw new Error('not a file');
      await access(node, fsConstants.X_OK);
    } catch {
      throw new UsageError(`--node ${node} is not an executable file`);
    }
    for (const [what, p] of [
      ['node', node],
      ['the edgefleet package', bin],
      ...(configFile ? [['the config file', configFile] as const] : []),
      ...readWritePaths.map((p) => ['a writable path', p] as const),
    ] as const) {
      const hidden = HIDDEN.find((h) => h.prefixes.some((prefix) => `${p}/`.startsWith(prefix)));
      if (hidden) warnings.push(`${what} (${p}): ${hidden.why}; move it (e.g. /opt/edgefleet, /etc/edgefleet, /var/lib/${stateDirectory}) or override that setting in a drop-in`);
    }
    if (Object.keys(io.env).some((k) => k.startsWith(envPrefix))) {
      warnings.push(`${envPrefix}* variables in this shell were applied while checking the config, but the service does not see them: put them in /etc/edgefleet/${kind}.env (mode 0600)`);
    }

    const content = renderUnit({ kind, node, bin, args, user, group, stateDirectory, readWritePaths, packageDir });
    const name = unitName(kind);
    const path = join(unitDir, name);
    const q = (s: string): string => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
    const commands = [
      group === user
        ? `id -u ${user} >/dev/null 2>&1 || useradd --system --user-group --home-dir ${state} --no-create-home --shell /usr/sbin/nologin ${user}`
        : `getent group ${group} >/dev/null || groupadd --system ${group}; id -u ${user} >/dev/null 2>&1 || useradd --system --gid ${group} --home-dir ${state} --no-create-home --shell /usr/sbin/nologin ${user}`,
      ...[...new Set(readWritePaths)].filter((p) => p !== state && !p.startsWith(`${state}/`)).map((p) => `install -d -o ${user} -g ${group} -m 0750 ${q(p)}`),
      ...(configFile ? [`chgrp ${group} ${q(configFile)} && chmod 0640 ${q(configFile)}`] : []),
      'systemctl daemon-reload',
      `systemctl enable --now ${name}`,
      `journalctl -u ${name} -f`,
    ];

    let written = false;
    if (!values['dry-run']) {
      try {
        if (!(await stat(unitDir)).isDirectory()) throw new Error('not a directory');
      } catch {
        throw new UsageError(`--unit-dir ${unitDir} is not an existing directory`);
      }
      // Write then rename, so systemd never reads a half-written unit.
      const tmp = join(unitDir, `.${name}.${process.pid}.tmp`);
      await writeFile(tmp, content, { mode: 0o644 });
      await rename(tmp, path);
      written = true;
    }

    const result: Result = { unit: name, path, written, content, commands, warnings };
    if (values.json) {
      io.out(`${JSON.stringify(result, null, 2)}\n`);
    } else if (!written) {
      io.out(content);
      io.err(`# dry run: nothing written. To install, write it to ${path}, then run:\n${commands.map((c) => `  ${c}`).join('\n')}\n`);
    } else {
      io.out(`wrote ${path}\nnow run (as root):\n${commands.map((c) => `  ${c}`).join('\n')}\n`);
    }
    if (!values.json) for (const w of warnings) io.err(`warning: ${w}\n`);
    return EXIT.OK;
  } catch (err) {
    return failure(io, command, err, usage(kind));
  }
}
