import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { run } from '../../cli/commands/install-service.ts';

const execFileP = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin', 'edgefleet.mjs');
const dir = mkdtempSync(join(tmpdir(), 'ef-install-service-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const units = join(dir, 'units');
mkdirSync(units);
const cameraDir = join(dir, 'camera drop %x');
const agentConfig = join(dir, 'agent.json');
writeFileSync(
  agentConfig,
  JSON.stringify({
    deviceId: 'dev-1',
    dataDir: 'state',
    hub: { url: 'mqtt://127.0.0.1:1883', token: 'secret-token-123' },
    models: [{ manifest: 'm.manifest.json' }],
    pipelines: [{ name: 'cam', model: 'm', input: { type: 'folder', path: cameraDir } }],
  }),
);

function io(env: NodeJS.ProcessEnv = {}): { out: string[]; err: string[]; io: { out: (s: string) => void; err: (s: string) => void; env: NodeJS.ProcessEnv } } {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, io: { out: (s) => void out.push(s), err: (s) => void err.push(s), env } };
}

type Unit = Map<string, Map<string, string[]>>;

/** A minimal unit-file reader: sections → key → values (repeated keys kept in order). */
function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) {
      section = new Map();
      unit.set(head[1]!, section);
      continue;
    }
    assert.ok(section, `setting outside a section: ${line}`);
    const eq = line.indexOf('=');
    assert.ok(eq > 0, `not key=value: ${line}`);
    const key = line.slice(0, eq);
    section.set(key, [...(section.get(key) ?? []), line.slice(eq + 1)]);
  }
  return unit;
}

/** Splits a space-separated unit value into words, honouring double quotes and backslashes. */
function words(value: string): string[] {
  const out: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(value); m; m = re.exec(value)) out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!);
  return out;
}

const REQUIRED: Record<string, Record<string, string | RegExp>> = {
  Unit: { Description: /edgefleet/, After: /network-online\.target/, Wants: /network-online\.target/ },
  Service: {
    Type: 'notify',
    NotifyAccess: 'all',
    ExecStart: /^\//,
    Restart: 'always',
    RestartSec: '2',
    WatchdogSec: '30',
    TimeoutStopSec: '30',
    User: 'edgefleet',
    Group: 'edgefleet',
    StateDirectory: /^edgefleet(-hub)?$/,
    WorkingDirectory: /^\/var\/lib\/edgefleet(-hub)?$/,
    Environment: 'NODE_ENV=production',
    LimitNOFILE: /^\d+$/,
    NoNewPrivileges: 'yes',
    ProtectSystem: 'strict',
    ProtectHome: 'yes',
    PrivateTmp: 'yes',
    PrivateDevices: 'yes',
    ProtectKernelTunables: 'yes',
    ProtectKernelModules: 'yes',
    ProtectControlGroups: 'yes',
    RestrictAddressFamilies: 'AF_UNIX AF_INET AF_INET6',
    RestrictNamespaces: 'yes',
    LockPersonality: 'yes',
    MemoryDenyWriteExecute: 'no',
    SystemCallArchitectures: 'native',
    ReadWritePaths: /\/var\/lib\/edgefleet/,
  },
  Install: { WantedBy: 'multi-user.target' },
};

/** The structural check that runs everywhere, systemd or not. Returns the problems found. */
function structuralProblems(text: string): string[] {
  const problems: string[] = [];
  let unit: Unit;
  try {
    unit = parseUnit(text);
  } catch (err) {
    return [(err as Error).message];
  }
  for (const [sectionName, keys] of Object.entries(REQUIRED)) {
    const section = unit.get(sectionName);
    if (!section) {
      problems.push(`missing [${sectionName}]`);
      continue;
    }
    for (const [key, want] of Object.entries(keys)) {
      const values = section.get(key);
      if (!values) problems.push(`[${sectionName}] ${key} missing`);
      else if (values.length !== 1) problems.push(`[${sectionName}] ${key} set ${values.length} times`);
      else if (typeof want === 'string' ? values[0] !== want : !want.test(values[0]!)) problems.push(`[${sectionName}] ${key}=${values[0]} (want ${String(want)})`);
    }
  }
  const exec = words(unit.get('Service')?.get('ExecStart')?.[0] ?? '');
  if (exec.length < 3) problems.push('ExecStart has no node, shim and command');
  for (const w of exec.slice(0, 2)) if (!isAbsolute(w) || !existsSync(w)) problems.push(`ExecStart path ${w} is not an absolute existing path`);
  for (const p of words(unit.get('Service')?.get('ReadWritePaths')?.[0] ?? '')) if (!isAbsolute(p.replace(/%%/g, '%'))) problems.push(`ReadWritePaths ${p} is not absolute`);
  return problems;
}

const analyze = spawnSync('sh', ['-c', 'command -v systemd-analyze']).status === 0;

/** `systemd-analyze verify` diagnostics that name our unit files (it may also chatter about the host's units). */
async function verify(files: string[]): Promise<{ code: number; diagnostics: string[] }> {
  let code = 0;
  let stderr: string;
  try {
    ({ stderr } = await execFileP('systemd-analyze', ['verify', ...files], { timeout: 30_000 }));
  } catch (err) {
    const e = err as { code?: number; stderr?: string };
    code = typeof e.code === 'number' ? e.code : 1;
    stderr = e.stderr ?? '';
  }
  const names = files.map((f) => f.split('/').at(-1)!);
  return { code, diagnostics: stderr.split('\n').filter((l) => names.some((n) => l.includes(n))) };
}

describe('edgefleet <agent|hub> install-service', () => {
  it('writes the agent unit through the real CLI, with the config checked and its writable paths derived', async () => {
    const { stdout } = await execFileP(process.execPath, [bin, 'agent', 'install-service', '--config', agentConfig, '--unit-dir', units, '--node', process.execPath, '--json'], {
      cwd: root,
      timeout: 60_000,
    });
    const res = JSON.parse(stdout) as { unit: string; path: string; written: boolean; content: string; commands: string[]; warnings: string[] };
    assert.equal(res.unit, 'edgefleet-agent.service');
    assert.equal(res.path, join(units, 'edgefleet-agent.service'));
    assert.equal(res.written, true);
    const text = readFileSync(res.path, 'utf8');
    assert.equal(text, res.content);
    assert.equal((statSync(res.path).mode & 0o777).toString(8), '644');
    assert.deepEqual(readdirSync(units), ['edgefleet-agent.service'], 'no temporary file left behind');
    assert.deepEqual(structuralProblems(text), []);

    const service = parseUnit(text).get('Service')!;
    assert.deepEqual(words(service.get('ExecStart')![0]!), [process.execPath, bin, 'agent', '--config', agentConfig]);
    assert.deepEqual(words(service.get('ReadWritePaths')![0]!), ['/var/lib/edgefleet', join(dir, 'state'), cameraDir.replace(/%/g, '%%')]);

    assert.ok(res.commands.some((c) => /useradd --system .*edgefleet$/.test(c)), 'prints the useradd command');
    assert.ok(res.commands.includes('systemctl enable --now edgefleet-agent.service'));
    assert.ok(res.commands.some((c) => c.startsWith('install -d -o edgefleet') && c.includes(join(dir, 'state'))));
    // The config lives under the temp dir, which PrivateTmp=yes hides from the service.
    assert.ok(res.warnings.some((w) => w.includes(agentConfig) && /PrivateTmp/.test(w)), JSON.stringify(res.warnings));
  });

  it('writes the hub unit with its data directory as the state directory', async () => {
    const c = io();
    assert.equal(await run(['hub', '--unit-dir', units, '--node', process.execPath], c.io), 0);
    const text = readFileSync(join(units, 'edgefleet-hub.service'), 'utf8');
    assert.deepEqual(structuralProblems(text), []);
    const service = parseUnit(text).get('Service')!;
    assert.deepEqual(words(service.get('ExecStart')![0]!), [process.execPath, bin, 'hub', '--data', '/var/lib/edgefleet-hub']);
    assert.equal(service.get('StateDirectory')![0], 'edgefleet-hub');
    assert.match(c.out.join(''), /wrote .*edgefleet-hub\.service[\s\S]*useradd --system[\s\S]*systemctl enable --now edgefleet-hub\.service/);
  });

  it('passes systemd-analyze verify', { skip: analyze ? false : 'systemd-analyze not installed: the structural checks above stand in' }, async () => {
    const files = ['edgefleet-agent.service', 'edgefleet-hub.service'].map((f) => join(units, f));
    for (const f of files) assert.ok(existsSync(f), `${f} was written by the tests above`);
    const res = await verify(files);
    assert.deepEqual(res.diagnostics, []);
    assert.equal(res.code, 0);

    // And the check can fail: a broken copy is reported.
    const badDir = join(dir, 'bad');
    mkdirSync(badDir, { recursive: true });
    const bad = join(badDir, 'edgefleet-agent.service');
    writeFileSync(bad, readFileSync(files[0]!, 'utf8').replace('Type=notify', 'Type=notifyy').replace(process.execPath, join(dir, 'no-such-node')));
    const broken = await verify([bad]);
    assert.ok(broken.diagnostics.some((l) => /notifyy/.test(l)), broken.diagnostics.join('\n'));
    assert.notEqual(broken.code, 0);
  });

  it('the structural check rejects a unit missing what the issue requires', () => {
    const good = readFileSync(join(units, 'edgefleet-agent.service'), 'utf8');
    assert.deepEqual(structuralProblems(good.replace(/^ProtectSystem=strict\n/m, '')), ['[Service] ProtectSystem missing']);
    assert.deepEqual(structuralProblems(good.replace('Type=notify', 'Type=simple')), ['[Service] Type=simple (want notify)']);
    assert.ok(structuralProblems(good.replace(/ExecStart=\S+/, 'ExecStart=node')).length > 0);
  });

  it('--dry-run prints the unit to stdout and writes nothing', async () => {
    const dry = join(dir, 'dry');
    mkdirSync(dry);
    const c = io();
    assert.equal(await run(['agent', '--config', agentConfig, '--unit-dir', dry, '--dry-run'], c.io), 0);
    assert.deepEqual(readdirSync(dry), []);
    assert.deepEqual(structuralProblems(c.out.join('')), []);
    assert.match(c.err.join(''), /dry run: nothing written[\s\S]*systemctl enable --now edgefleet-agent\.service/);
  });

  it('quotes paths with spaces and escapes % so systemd reads them back unchanged', async () => {
    const c = io();
    const odd = join(dir, 'odd', 'with space', '50%');
    assert.equal(await run(['hub', '--data', odd, '--rw-path', '/srv/a"b', '--dry-run', '--json'], c.io), 0);
    const content = (JSON.parse(c.out.join('')) as { content: string }).content;
    const service = parseUnit(content).get('Service')!;
    assert.deepEqual(words(service.get('ExecStart')![0]!).slice(2), ['hub', '--data', odd.replace('%', '%%')]);
    assert.deepEqual(words(service.get('ReadWritePaths')![0]!), ['/var/lib/edgefleet-hub', '/srv/a"b', odd.replace('%', '%%')]);
  });

  it('exits 2 on usage errors and 1 on a bad config, with a message', async () => {
    const cases: [string[], number, RegExp][] = [
      [['agent'], 2, /--config <file> is required/],
      [['agent', '--config', agentConfig, '--bogus'], 2, /bogus/],
      [['agent', '--config', agentConfig, '--unit-dir', join(dir, 'missing')], 2, /not an existing directory/],
      [['agent', '--config', agentConfig, '--user', 'root;rm'], 2, /not a valid user/],
      [['hub', '--rw-path', '/srv/x\n[Service]\nExecStartPre=/bin/sh', '--dry-run'], 2, /newlines/],
      [['hub', '--node', join(dir, 'no-such-node'), '--dry-run'], 2, /not an executable/],
      [['agent', '--config', join(dir, 'nope.json')], 1, /nope\.json/],
    ];
    for (const [argv, code, message] of cases) {
      const c = io();
      assert.equal(await run(argv, c.io), code, argv.join(' '));
      assert.match(c.err.join(''), message, argv.join(' '));
    }
    const help = io();
    assert.equal(await run(['hub', '--help'], help.io), 0);
    assert.match(help.out.join(''), /usage: edgefleet hub install-service/);
  });
});
