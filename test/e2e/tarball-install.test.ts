/**
 * edgefleet installed the way an operator installs it, then run the way systemd runs it
 * (issue #12): `npm pack` (prepack builds dist/) in a copy of this working tree, `npm install
 * <tarball>` into a fresh prefix, tsx removed from that prefix (the package must not need it),
 * and from directories that are not the checkout: the units `edgefleet hub|agent
 * install-service` generate, checked with `systemd-analyze verify` when it is installed, and
 * their ExecStart run with their WorkingDirectory (a stand-in for /var/lib/...) and Environment
 * plus an EnvironmentFile's settings; then `edgefleet device add`, `model push` (probed at the
 * hub from dist/, outside the checkout), `rollout create` + `rollout watch` (probed again at
 * the agent), `POST /v1/infer/<pipeline>` on the new version, and GET /ui/.
 *
 * Speed: the install reuses npm's cache (--prefer-offline), and better-sqlite3's native module
 * comes from a local prebuild made of this checkout's own build (prebuild-install's
 * `npm_config_better_sqlite3_local_prebuilds`), not a ~2-6 min compile from source:
 * EDGEFLEET_E2E_FROM_SOURCE=1 compiles it instead. Figures go to stdout (`tarball-e2e:` lines).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { makeModels } from '../../scripts/make-models.ts';
import { until } from '../helpers/fleet-in-process.ts';

const CHECKOUT = fileURLToPath(new URL('../..', import.meta.url));
const MODELS = join(CHECKOUT, 'models');
const FROM_SOURCE = process.env['EDGEFLEET_E2E_FROM_SOURCE'] === '1';
/** Not copied for `npm pack`: what is neither shipped nor needed to build. */
const NOT_COPIED = new Set(['node_modules', '.git', 'dist', 'models', '.data', 'test', 'test-artifacts', '.scratch', 'var', '.ci']);
/** What systemd gives a service: its own PATH, no NODE_OPTIONS, no npm_* variables. */
const SERVICE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const root = mkdtempSync(join(tmpdir(), 'ef-tarball-'));
const figures: Record<string, string> = {};
const seconds = (t0: number): number => Math.round((performance.now() - t0) / 100) / 10;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (async: the services' stdout pipes keep being read meanwhile). */
function run(file: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

type LogLine = Record<string, unknown> & { msg?: string };

/** A long-running service child: its JSON log lines, and waiting for one. */
class Service {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly name: string,
    argv: string[],
    opts: { cwd: string; env: NodeJS.ProcessEnv },
  ) {
    this.child = spawn(argv[0]!, argv.slice(1), { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '';
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          this.lines.push(JSON.parse(text) as LogLine);
        } catch {
          this.lines.push({ msg: text, raw: true });
        }
      }
    });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.stderr = (this.stderr + chunk).slice(-20_000)));
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  async waitForMsg(msg: string, timeoutMs = 60_000): Promise<LogLine> {
    let line: LogLine | undefined;
    const done = { exited: false };
    void this.exited.then(() => (done.exited = true));
    await until(
      () => {
        line = this.lines.find((l) => l.msg === msg);
        if (!line && done.exited) throw new Error(`${this.name} exited before '${msg}': ${this.stderr.slice(-2000)} ${JSON.stringify(this.lines.slice(-5))}`);
        return line !== undefined;
      },
      timeoutMs,
      `${this.name}: '${msg}' (stderr: ${this.stderr.slice(-500)})`,
    );
    return line!;
  }

  async stop(graceMs = 20_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
      void this.exited.then(() => clearTimeout(timer));
    }
    return this.exited;
  }
}

/** [Service] settings of a unit file: key → values in order. */
function serviceSection(unit: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let inService = false;
  for (const raw of unit.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('[')) inService = line === '[Service]';
    else if (inService && line && !line.startsWith('#')) {
      const eq = line.indexOf('=');
      out.set(line.slice(0, eq), [...(out.get(line.slice(0, eq)) ?? []), line.slice(eq + 1)]);
    }
  }
  return out;
}

/** ExecStart= words (double quotes, `$$` and `%%` unescaped as systemd does). */
function execWords(value: string): string[] {
  const words: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m = re.exec(value); m; m = re.exec(value)) words.push((m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]!).replace(/\$\$/g, '$').replace(/%%/g, '%'));
  return words;
}

const analyzeAvailable = (): boolean => {
  try {
    return readdirSync('/usr/bin').includes('systemd-analyze');
  } catch {
    return false;
  }
};

describe('the npm tarball, installed in a fresh prefix and run as its systemd units would', { timeout: 15 * 60_000 }, () => {
  const runDir = join(root, 'elsewhere'); // the cwd of every operator command: not the checkout
  const prefix = join(root, 'opt', 'edgefleet');
  const etc = join(root, 'etc', 'edgefleet');
  const stateHub = join(root, 'var', 'lib', 'edgefleet-hub');
  const stateAgent = join(root, 'var', 'lib', 'edgefleet');
  const units = join(root, 'units');
  const services: Service[] = [];
  /** The installed package's bin shim (what ExecStart names) and the command on the operator's PATH. */
  let edgefleet: string;
  const command = join(root, 'usr', 'local', 'bin', 'edgefleet');
  let tarFiles: string[] = [];
  let hub: { httpUrl: string; mqttUrl: string; adminToken: string };
  let agentPort = 0;
  /** The same environment for every operator command: no tsx, no npm, no checkout on any path. */
  const operatorEnv = (): NodeJS.ProcessEnv => ({ PATH: `${dirname(command)}:${dirname(process.execPath)}:${SERVICE_PATH}`, HOME: root });
  /** `edgefleet ...` as README "Running as a service" installs it: a symlink on PATH to the package's bin. */
  const cli = (args: string[], timeoutMs?: number): Promise<Run> => run(command, args, { cwd: runDir, env: operatorEnv(), timeoutMs });

  before(async () => {
    for (const d of [runDir, prefix, etc, stateHub, stateAgent, units]) mkdirSync(d, { recursive: true });
    await makeModels({ outDir: MODELS });

    // 1. npm pack from a copy of the working tree (prepack builds its dist/; the checkout's own
    //    bin/edgefleet.mjs would otherwise prefer a dist/ left in the checkout).
    let t0 = performance.now();
    const src = join(root, 'src');
    cpSync(CHECKOUT, src, { recursive: true, filter: (from) => !NOT_COPIED.has(from.slice(CHECKOUT.length).split('/').find((s) => s !== '') ?? '') && !from.endsWith('.tgz') });
    symlinkSync(join(CHECKOUT, 'node_modules'), join(src, 'node_modules'));
    // Types are not checked again here (a third of the build's CPU): `npm run typecheck` checks
    // this tree, and CI runs it before the tests.
    // npm's own variables (set when this runs under `npm test`) would leak the checkout's config.
    const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== 'NODE_OPTIONS'));
    const packed = await run('npm', ['pack', '--pack-destination', root], { cwd: src, env: { ...env, EDGEFLEET_BUILD_NO_CHECK: '1' }, timeoutMs: 10 * 60_000 });
    assert.equal(packed.code, 0, `npm pack: ${packed.stderr.slice(-3000)}`);
    figures['build+pack'] = `${seconds(t0)} s`;
    const tgz = readdirSync(root).find((f) => f.endsWith('.tgz'));
    assert.ok(tgz, `no tarball in ${root}`);
    const listed = await run('tar', ['tzf', join(root, tgz)], { cwd: root });
    tarFiles = listed.stdout.split('\n').filter(Boolean);

    // 2. npm install <tarball> into a fresh prefix, from elsewhere, as an operator would.
    env['ONNXRUNTIME_NODE_INSTALL'] = 'skip'; // README: onnxruntime-node's CUDA download is unreachable
    const bsq = JSON.parse(readFileSync(join(CHECKOUT, 'node_modules', 'better-sqlite3', 'package.json'), 'utf8')) as { version: string };
    if (!FROM_SOURCE) {
      const prebuilds = join(root, 'prebuilds');
      mkdirSync(join(prebuilds, 'stage', 'build', 'Release'), { recursive: true });
      cpSync(join(CHECKOUT, 'node_modules', 'better-sqlite3', 'build', 'Release', 'better_sqlite3.node'), join(prebuilds, 'stage', 'build', 'Release', 'better_sqlite3.node'));
      const name = `better-sqlite3-v${bsq.version}-node-v${process.versions.modules}-${process.platform}-${process.arch}.tar.gz`;
      const tar = await run('tar', ['czf', join(prebuilds, name), '-C', join(prebuilds, 'stage'), 'build'], { cwd: root });
      assert.equal(tar.code, 0, tar.stderr);
      env['npm_config_better_sqlite3_local_prebuilds'] = prebuilds;
    }
    t0 = performance.now();
    const installed = await run('npm', ['install', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', join(root, tgz)], { cwd: runDir, env, timeoutMs: 12 * 60_000 });
    assert.equal(installed.code, 0, `npm install: ${installed.stderr.slice(-3000)}`);
    const got = JSON.parse(readFileSync(join(prefix, 'node_modules', 'better-sqlite3', 'package.json'), 'utf8')) as { version: string };
    figures['npm install'] = `${seconds(t0)} s (better-sqlite3 ${got.version} ${FROM_SOURCE || got.version !== bsq.version ? 'compiled from source' : 'from the local prebuild'})`;
    edgefleet = join(prefix, 'node_modules', 'edgefleet', 'bin', 'edgefleet.mjs');
    mkdirSync(dirname(command), { recursive: true });
    symlinkSync(join(prefix, 'node_modules', '.bin', 'edgefleet'), command);
    // The compiled package must not need tsx (a dependency still, for the sources in a checkout).
    rmSync(join(prefix, 'node_modules', 'tsx'), { recursive: true, force: true });

    // The operator's files: the demo models and the release public key the agent will trust.
    mkdirSync(join(etc, 'models'));
    for (const f of ['machine-state.onnx', 'machine-state.manifest.json']) cpSync(join(MODELS, f), join(etc, 'models', f));
    const manifest = JSON.parse(readFileSync(join(etc, 'models', 'machine-state.manifest.json'), 'utf8')) as { version: string };
    writeFileSync(join(etc, 'models', 'machine-state-1.1.0.manifest.json'), JSON.stringify({ ...manifest, version: '1.1.0' }, null, 2));
  });

  after(async () => {
    for (const s of services.reverse()) await s.stop(5000);
    process.stdout.write(`tarball-e2e: ${Object.entries(figures).map(([k, v]) => `${k} ${v}`).join('; ')}\n`);
    rmSync(root, { recursive: true, force: true });
  });

  it('the tarball ships the compiled package with the dashboard, the docs and no tests or sources', () => {
    const has = (p: string): boolean => tarFiles.includes(`package/${p}`);
    for (const p of ['bin/edgefleet.mjs', 'dist/cli/main.js', 'dist/hub/ui/index.html', 'dist/hub/ui/app.js', 'dist/hub/ui/style.css', 'dist/shared/validate/probe-child.js', 'dist/agent/runtime/worker.js', 'README.md', 'docs/ARCHITECTURE.md', 'docs/PITFALLS.md']) {
      assert.ok(has(p), `${p} missing from the tarball`);
    }
    assert.deepEqual(tarFiles.filter((f) => /^package\/(dist\/)?test\//.test(f) || f.endsWith('.ts') || f.endsWith('.onnx') || f.endsWith('.tgz')), [], 'no tests, TypeScript sources, models or tarballs');
    figures['tarball'] = `${tarFiles.length} files`;
  });

  it('hub: the unit install-service writes passes systemd-analyze verify, and its ExecStart serves from its WorkingDirectory', async () => {
    const r = await cli(['hub', 'install-service', '--data', stateHub, '--unit-dir', units, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const unit = readFileSync(join(units, 'edgefleet-hub.service'), 'utf8');
    if (analyzeAvailable()) {
      const v = await run('systemd-analyze', ['verify', join(units, 'edgefleet-hub.service')], { cwd: runDir });
      assert.deepEqual(v.stderr.split('\n').filter((l) => l.includes('edgefleet-hub.service')), [], v.stderr);
    } else process.stdout.write('tarball-e2e: systemd-analyze not installed, unit verification skipped\n');
    const s = serviceSection(unit);
    const exec = execWords(s.get('ExecStart')![0]!);
    assert.deepEqual(exec.slice(1), [edgefleet, 'hub', '--data', stateHub], 'ExecStart runs the installed package');
    assert.equal(realpathSync(exec[0]!), realpathSync(process.execPath), 'with the node that ran install-service');
    assert.equal(s.get('WorkingDirectory')?.[0], '/var/lib/edgefleet-hub');
    // What /etc/edgefleet/hub.env (EnvironmentFile=) would hold on a test machine: free ports.
    const envFile = { EDGEFLEET_HUB__MQTT__HOST: '127.0.0.1', EDGEFLEET_HUB__MQTT__PORT: '0', EDGEFLEET_HUB__HTTP__HOST: '127.0.0.1', EDGEFLEET_HUB__HTTP__PORT: '0' };
    const unitEnv = Object.fromEntries((s.get('Environment') ?? []).map((e) => e.split('=') as [string, string]));
    const t0 = performance.now();
    const proc = new Service('hub', exec, { cwd: stateHub, env: { PATH: SERVICE_PATH, HOME: stateHub, ...unitEnv, ...envFile } });
    services.push(proc);
    await proc.waitForMsg('hub running', 60_000);
    figures['hub ready'] = `${seconds(t0)} s`;
    const info = JSON.parse(readFileSync(join(stateHub, 'hub.json'), 'utf8')) as { httpUrl: string; mqttUrl: string };
    hub = { ...info, adminToken: readFileSync(join(stateHub, 'admin.token'), 'utf8').trim() };

    const page = await fetch(`${hub.httpUrl}/ui/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(await page.text(), /<html/i);
    const app = await fetch(`${hub.httpUrl}/ui/app.js`);
    assert.equal(app.status, 200);
    assert.match(app.headers.get('content-type') ?? '', /javascript/);
    // The compiled server module sits beside the dashboard's files in dist/hub/ui/: not served.
    const self = await fetch(`${hub.httpUrl}/ui/static.js`);
    assert.equal(self.status, 404, 'the hub does not serve its own compiled module');
    await self.body?.cancel();
  });

  it('model push: probed at the hub from dist/, outside the checkout, and released', async () => {
    const pushed = await cli(['model', 'push', join(etc, 'models', 'machine-state.onnx'), '--manifest', join(etc, 'models', 'machine-state-1.1.0.manifest.json'), '--data', stateHub]);
    assert.equal(pushed.code, 0, `${pushed.stdout}\n${pushed.stderr}`);
    assert.match(pushed.stdout, /^released machine-state@1\.1\.0: counter 1/);
  });

  it('agent: device add, its unit verified and its ExecStart run from its WorkingDirectory; rollout installs the release; inference answers on it', async () => {
    const added = await cli(['device', 'add', 'tb-1', '--group', 'tarball', '--json', '--data', stateHub]);
    assert.equal(added.code, 0, added.stderr);
    const token = (JSON.parse(added.stdout) as { token: string }).token;
    const activeKey = readFileSync(join(stateHub, 'keys', 'active'), 'utf8').trim();
    cpSync(join(stateHub, 'keys', `${activeKey}.pub`), join(etc, 'hub-release.pem'));
    // Relative paths in the config are relative to the config file, not to the cwd.
    const config = join(etc, 'agent.yaml');
    writeFileSync(
      config,
      [
        'deviceId: tb-1',
        `dataDir: ${stateAgent}`,
        'hub:',
        `  url: ${hub.mqttUrl}`,
        `  httpUrl: ${hub.httpUrl}`,
        'http: { host: 127.0.0.1, port: 0 }',
        'models:',
        '  - manifest: models/machine-state.manifest.json',
        'pipelines:',
        '  - name: vibration',
        '    model: machine-state',
        '    input: { type: mqtt }',
        'updates:',
        '  trustedKeys: [hub-release.pem]',
        '  probationMs: 0',
        'log: { level: info }',
        '',
      ].join('\n'),
    );
    const r = await cli(['agent', 'install-service', '--config', config, '--unit-dir', units, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const unit = readFileSync(join(units, 'edgefleet-agent.service'), 'utf8');
    if (analyzeAvailable()) {
      const v = await run('systemd-analyze', ['verify', join(units, 'edgefleet-agent.service')], { cwd: runDir });
      assert.deepEqual(v.stderr.split('\n').filter((l) => l.includes('edgefleet-agent.service')), [], v.stderr);
    }
    const s = serviceSection(unit);
    const exec = execWords(s.get('ExecStart')![0]!);
    assert.deepEqual(exec.slice(1), [edgefleet, 'agent', '--config', config]);
    assert.equal(s.get('WorkingDirectory')?.[0], '/var/lib/edgefleet');
    const unitEnv = Object.fromEntries((s.get('Environment') ?? []).map((e) => e.split('=') as [string, string]));
    const t0 = performance.now();
    // The token through the environment, as /etc/edgefleet/agent.env would give it.
    const proc = new Service('agent', exec, { cwd: stateAgent, env: { PATH: SERVICE_PATH, HOME: stateAgent, ...unitEnv, EDGEFLEET_AGENT__HUB__TOKEN: token } });
    services.push(proc);
    agentPort = (await proc.waitForMsg('http listening', 90_000))['port'] as number;
    await proc.waitForMsg('agent running', 90_000);
    figures['agent ready'] = `${seconds(t0)} s`;

    const infer = async (id: string): Promise<{ status: number; body: { model?: { name: string; version: string }; label?: string } }> => {
      const res = await fetch(`http://127.0.0.1:${agentPort}/v1/infer/vibration`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id, values: [1, 2, 3, 4, 0.5, 0.3, 0.2, 40] }),
      });
      return { status: res.status, body: (await res.json()) as { model?: { name: string; version: string }; label?: string } };
    };
    const first = await infer('before');
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.deepEqual(first.body.model, { name: 'machine-state', version: '1.0.0' });

    const t1 = performance.now();
    const created = await cli(['rollout', 'create', 'machine-state@1.1.0', '--target', 'devices=tb-1', '--waves', '1', '--bake', '2s', '--json', '--data', stateHub]);
    assert.equal(created.code, 0, created.stderr);
    const id = (JSON.parse(created.stdout) as { id: string }).id;
    let n = 0;
    const traffic = setInterval(() => void infer(`during-${n++}`).catch(() => undefined), 100);
    let watched: Run;
    try {
      watched = await cli(['rollout', 'watch', id, '--interval', '500ms', '--timeout', '3m', '--json', '--data', stateHub], 200_000);
    } finally {
      clearInterval(traffic);
    }
    assert.equal(watched.code, 0, `rollout watch: ${watched.stdout}\n${watched.stderr}\nagent: ${JSON.stringify(proc.lines.filter((l) => Number(l['level']) >= 40).slice(-5))}`);
    figures['rollout'] = `${seconds(t1)} s`;
    const after = await infer('after');
    assert.equal(after.status, 200, JSON.stringify(after.body));
    assert.deepEqual(after.body.model, { name: 'machine-state', version: '1.1.0' });
    assert.ok(proc.lines.some((l) => l.msg === 'model release installed'), 'installed through the updater (validated in its probe child)');
    assert.ok(!existsSync(join(stateAgent, 'models', '.quarantine')) || readdirSync(join(stateAgent, 'models', '.quarantine')).length === 0, 'nothing quarantined');
  });

  it('both stop cleanly on SIGTERM', async () => {
    for (const s of [...services].reverse()) {
      const { code, signal } = await s.stop();
      assert.equal(code, 0, `${s.name} exited ${code ?? signal}: ${s.stderr.slice(-1000)}`);
    }
  });
});
