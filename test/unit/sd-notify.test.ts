import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino, type Logger } from 'pino';
import { createSdNotifier, notifyArgs, watchdogIntervalMs, type NotifySpawner } from '../../shared/sd-notify.ts';

interface Line {
  level: number;
  msg: string;
}

function capture(): { log: Logger; lines: Line[] } {
  const lines: Line[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Line) });
  return { log, lines };
}

interface Call {
  file: string;
  args: readonly string[];
  env: NodeJS.ProcessEnv;
}

function recorder(result: () => Promise<void> = () => Promise.resolve()): { spawn: NotifySpawner; calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    spawn: (file, args, env) => {
      calls.push({ file, args, env });
      return result();
    },
  };
}

const WARN = 40;
const DEBUG = 20;

describe('sd_notify', () => {
  it('is a no-op without NOTIFY_SOCKET, and says so once at debug level', async () => {
    const { log, lines } = capture();
    const rec = recorder();
    const n = createSdNotifier({ log, env: { WATCHDOG_USEC: '1000' }, spawn: rec.spawn, pid: 42 });
    assert.equal(n.enabled, false);
    assert.equal(n.watchdogIntervalMs, undefined);
    await n.ready('up');
    await n.status('x');
    await n.stopping();
    const stop = n.startWatchdog();
    await sleep(20);
    stop();
    assert.equal(rec.calls.length, 0);
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.level, DEBUG);
    assert.match(lines[0]!.msg, /NOTIFY_SOCKET not set/);
  });

  it('passes READY with MAINPID and STATUS, STOPPING, one-line STATUS to systemd-notify with the socket in its env', async () => {
    const { log } = capture();
    const rec = recorder();
    const env = { NOTIFY_SOCKET: '/run/systemd/notify', PATH: '/usr/bin' };
    const n = createSdNotifier({ log, env, spawn: rec.spawn, pid: 4242 });
    assert.equal(n.enabled, true);
    await n.ready('agent running');
    await n.status('two\nlines');
    await n.stopping();
    assert.deepEqual(
      rec.calls.map((c) => [c.file, ...c.args]),
      [
        ['systemd-notify', '--pid=4242', 'READY=1', 'STATUS=agent running'],
        ['systemd-notify', 'STATUS=two lines'],
        ['systemd-notify', 'STOPPING=1'],
      ],
    );
    for (const c of rec.calls) assert.equal(c.env.NOTIFY_SOCKET, '/run/systemd/notify');
    assert.deepEqual(notifyArgs(['READY=1']), ['READY=1']);
  });

  it('computes the watchdog interval as half of WATCHDOG_USEC, only for this PID', () => {
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000' }, 7), 15_000);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 7), 15_000);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '8' }, 7), undefined);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '3000' }, 7), 1);
    assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: '1' }, 7), 1, 'never a 0 ms busy loop');
    for (const bad of ['', '0', '-5', 'abc', '1e6', '10.5']) assert.equal(watchdogIntervalMs({ WATCHDOG_USEC: bad }, 7), undefined, bad);
    assert.equal(watchdogIntervalMs({}, 7), undefined);
  });

  it('pings WATCHDOG=1 on an unref’d interval while running, and stops when told', async () => {
    const { log } = capture();
    const rec = recorder();
    const n = createSdNotifier({ log, env: { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '60000' }, spawn: rec.spawn, pid: 1 });
    assert.equal(n.watchdogIntervalMs, 30);
    const stop = n.startWatchdog();
    await sleep(200);
    stop();
    const pings = rec.calls.length;
    assert.ok(pings >= 3, `expected several pings in 200 ms at 30 ms, got ${pings}`);
    assert.ok(rec.calls.every((c) => c.args.length === 1 && c.args[0] === 'WATCHDOG=1'));
    await sleep(100);
    assert.equal(rec.calls.length, pings, 'no pings after stop');
  });

  it('does not ping a watchdog addressed to another process', async () => {
    const rec = recorder();
    const n = createSdNotifier({ log: capture().log, env: { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '20000', WATCHDOG_PID: '999999' }, spawn: rec.spawn, pid: 1 });
    const stop = n.startWatchdog();
    await sleep(60);
    stop();
    assert.equal(rec.calls.length, 0);
  });

  it('never piles up pings behind one that hangs', async () => {
    const rec = recorder(() => new Promise<void>(() => {}));
    const n = createSdNotifier({ log: capture().log, env: { NOTIFY_SOCKET: '@x', WATCHDOG_USEC: '20000' }, spawn: rec.spawn, pid: 1 });
    const stop = n.startWatchdog();
    await sleep(100);
    stop();
    assert.equal(rec.calls.length, 1);
  });

  it('soft-fails: a failing notifier never throws and is logged once as a warning', async () => {
    const { log, lines } = capture();
    const rec = recorder(() => Promise.reject(new Error('exit code 1')));
    const n = createSdNotifier({ log, env: { NOTIFY_SOCKET: '@x' }, spawn: rec.spawn, pid: 1 });
    await n.ready();
    await n.status('a');
    await n.stopping();
    assert.equal(rec.calls.length, 3, 'transient failures are retried on the next message');
    const warns = lines.filter((l) => l.level === WARN);
    assert.equal(warns.length, 1);
    assert.match(warns[0]!.msg, /sd_notify failed/);
  });

  it('stops spawning once systemd-notify turns out to be missing (real spawn, ENOENT)', async () => {
    const { log, lines } = capture();
    const n = createSdNotifier({ log, env: { NOTIFY_SOCKET: '@x' }, bin: '/nonexistent/systemd-notify', pid: 1 });
    await n.ready();
    await n.stopping();
    const warns = lines.filter((l) => l.level === WARN);
    assert.equal(warns.length, 1);
    assert.match(JSON.stringify(warns[0]), /ENOENT/);

    const rec = recorder(() => Promise.reject(Object.assign(new Error('spawn systemd-notify ENOENT'), { code: 'ENOENT' })));
    const m = createSdNotifier({ log, env: { NOTIFY_SOCKET: '@x' }, spawn: rec.spawn, pid: 1 });
    await m.ready();
    await m.status('a');
    await m.stopping();
    assert.equal(rec.calls.length, 1);
  });
});

// End to end through a real AF_UNIX datagram socket. Node cannot open one, so a few lines of
// Python stand in for systemd's receiving end. Skipped where systemd-notify or python3 is absent.
const hasTools = ['systemd-notify', 'python3'].every((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0);

describe('sd_notify through systemd-notify to a real datagram socket', { skip: hasTools ? false : 'needs systemd-notify and python3' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-sdnotify-'));
  const receiverPy = join(dir, 'recv.py');
  writeFileSync(
    receiverPy,
    [
      'import json, socket, sys',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
      's.bind(sys.argv[1])',
      'print(json.dumps("listening"), flush=True)',
      'while True:',
      '    print(json.dumps(s.recv(65536).decode("utf-8", "replace")), flush=True)',
    ].join('\n'),
  );
  const children: ChildProcess[] = [];
  after(async () => {
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        const exited = new Promise((r) => c.once('exit', r));
        c.kill('SIGKILL');
        await exited;
      }
    }
    rmSync(dir, { recursive: true, force: true });
  });

  /** Starts a receiver on a fresh socket path; `messages` fills as datagrams arrive. */
  async function receiver(name: string): Promise<{ socket: string; messages: string[] }> {
    const socket = join(dir, `${name}.sock`);
    const messages: string[] = [];
    const child = spawn('python3', [receiverPy, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    let buf = '';
    let listening: () => void = () => {};
    const ready = new Promise<void>((r) => (listening = r));
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const m = JSON.parse(buf.slice(0, i)) as string;
        buf = buf.slice(i + 1);
        if (m === 'listening') listening();
        else if (m !== 'BARRIER=1') messages.push(m);
      }
    });
    await ready;
    return { socket, messages };
  }

  async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
    const t0 = Date.now();
    while (!check()) {
      if (Date.now() - t0 > ms) assert.fail(`timed out waiting for ${what}`);
      await sleep(20);
    }
  }

  it('delivers READY with MAINPID, WATCHDOG and STOPPING', async () => {
    const { socket, messages } = await receiver('direct');
    const n = createSdNotifier({ log: capture().log, env: { ...process.env, NOTIFY_SOCKET: socket, WATCHDOG_USEC: '100000' } });
    await n.ready('testing');
    assert.deepEqual(messages[0]?.split('\n').sort(), [`MAINPID=${process.pid}`, 'READY=1', 'STATUS=testing']);
    const stop = n.startWatchdog();
    await until('two watchdog pings', () => messages.filter((m) => m === 'WATCHDOG=1').length >= 2);
    stop();
    await n.stopping();
    assert.equal(messages.at(-1), 'STOPPING=1');
  });

  it('runService sends READY once started, pings, and STOPPING on SIGTERM', async () => {
    const { socket, messages } = await receiver('service');
    const serviceUrl = new URL('../../shared/service.ts', import.meta.url).href;
    const logUrl = new URL('../../shared/log.ts', import.meta.url).href;
    const script = `
      const { runService } = await import(${JSON.stringify(serviceUrl)});
      const { silentLogger } = await import(${JSON.stringify(logUrl)});
      let alive;
      await runService({ name: 'svc', log: silentLogger(), start: async () => {
        alive = setInterval(() => {}, 1000);
        return { stop: async () => { clearInterval(alive); return []; } };
      } });
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, NOTIFY_SOCKET: socket, WATCHDOG_USEC: '200000' },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    children.push(child);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await until('READY=1', () => messages.some((m) => m.includes('READY=1')));
    assert.ok(messages.some((m) => m.includes(`MAINPID=${child.pid}`)), 'MAINPID is the service process');
    await until('a watchdog ping', () => messages.includes('WATCHDOG=1'));
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    await until('STOPPING=1', () => messages.includes('STOPPING=1'));
  });
});
