/**
 * A real Mosquitto 2 with the dynamic-security plugin, in a temp dir on a free loopback port,
 * for the external-broker tests (issue #15). `findMosquitto()` says what is missing when it
 * cannot run; `startMosquitto()` initialises the dynsec file with an admin client and waits
 * until the listener accepts connections; `stop()` kills it and removes the dir.
 */
import { spawn, spawnSync } from 'node:child_process';
import { pbkdf2Sync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitListening } from './ports.ts';

const PLUGIN_PATHS = [
  '/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so',
  '/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so',
  '/usr/lib/mosquitto_dynamic_security.so',
  '/usr/local/lib/mosquitto_dynamic_security.so',
];

export interface MosquittoInstall {
  broker: string;
  plugin: string;
  /** mosquitto_ctrl, when installed: it writes the initial dynsec file. */
  ctrl: string | undefined;
}

function which(name: string, extra: string[] = []): string | undefined {
  for (const p of extra) if (existsSync(p)) return p;
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const found = r.stdout.trim();
  return r.status === 0 && found ? found : undefined;
}

/** The install, or why there is none. */
export function findMosquitto(): MosquittoInstall | { missing: string } {
  const broker = which('mosquitto', ['/usr/sbin/mosquitto', '/usr/local/sbin/mosquitto']);
  if (!broker) return { missing: 'mosquitto is not installed (Debian: apt-get install mosquitto)' };
  const plugin = PLUGIN_PATHS.find((p) => existsSync(p));
  if (!plugin) return { missing: `mosquitto_dynamic_security.so not found in ${PLUGIN_PATHS.join(', ')}` };
  return { broker, plugin, ctrl: which('mosquitto_ctrl') };
}

export interface Mosquitto {
  port: number;
  url: string;
  admin: { username: string; password: string };
  dir: string;
  /** What the broker printed (for assertion messages). */
  log(): string;
  stop(): Promise<void>;
}


/** The file `mosquitto_ctrl dynsec init` writes: one admin client with the admin role. */
async function writeDynsecFile(file: string, install: MosquittoInstall, username: string, password: string): Promise<void> {
  if (install.ctrl) {
    const r = spawnSync(install.ctrl, ['dynsec', 'init', file, username, password], { encoding: 'utf8' });
    if (r.status === 0) return;
    throw new Error(`mosquitto_ctrl dynsec init failed: ${r.stderr}${r.stdout}`);
  }
  // Same shape and hash as mosquitto_ctrl's: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, 64-byte hash.
  const salt = randomBytes(12);
  const admin = (acltype: string, topic: string): Record<string, unknown> => ({ acltype, topic, allow: true });
  const json = {
    clients: [
      {
        username,
        textName: 'Dynsec admin user',
        password: pbkdf2Sync(password, salt, 101, 64, 'sha512').toString('base64'),
        salt: salt.toString('base64'),
        iterations: 101,
        roles: [{ rolename: 'admin' }],
      },
    ],
    roles: [
      {
        rolename: 'admin',
        acls: [
          admin('publishClientSend', '$CONTROL/dynamic-security/#'),
          admin('publishClientReceive', '$CONTROL/dynamic-security/#'),
          admin('subscribePattern', '$CONTROL/dynamic-security/#'),
          admin('publishClientReceive', '$SYS/#'),
          admin('subscribePattern', '$SYS/#'),
          admin('publishClientReceive', '#'),
          admin('subscribePattern', '#'),
          admin('unsubscribePattern', '#'),
        ],
      },
    ],
    defaultACLAccess: { publishClientSend: false, publishClientReceive: true, subscribe: false, unsubscribe: true },
  };
  await writeFile(file, JSON.stringify(json, null, 2), { mode: 0o600 });
}


export async function startMosquitto(install: MosquittoInstall): Promise<Mosquitto> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-mosquitto-'));
  const admin = { username: 'admin', password: randomBytes(18).toString('base64url') };
  const dynsec = join(dir, 'dynamic-security.json');
  await writeDynsecFile(dynsec, install, admin.username, admin.password);
  // Started as root, mosquitto drops to the `mosquitto` user: it must still write its dynsec file.
  if (process.getuid?.() === 0) {
    const r = spawnSync('id', ['-u', 'mosquitto'], { encoding: 'utf8' });
    const g = spawnSync('id', ['-g', 'mosquitto'], { encoding: 'utf8' });
    if (r.status === 0 && g.status === 0) {
      await chown(dir, Number(r.stdout), Number(g.stdout));
      await chown(dynsec, Number(r.stdout), Number(g.stdout));
    } else {
      await chmod(dir, 0o777);
      await chmod(dynsec, 0o666);
    }
  }
  let lastError: unknown;
  // A port found free can be taken before mosquitto binds it: try a few.
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    const conf = join(dir, 'mosquitto.conf');
    await writeFile(
      conf,
      [
        `listener ${port} 127.0.0.1`,
        'allow_anonymous false',
        'persistence false',
        `plugin ${install.plugin}`,
        `plugin_opt_config_file ${dynsec}`,
        'log_dest stderr',
        'log_type error',
        'log_type warning',
        'log_type notice',
        '',
      ].join('\n'),
    );
    let out = '';
    const child = spawn(install.broker, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await waitListening('mosquitto', port, child, () => out, 5000);
    } catch (err) {
      lastError = err;
      child.kill('SIGKILL');
      await exited;
      continue;
    }
    return {
      port,
      url: `mqtt://127.0.0.1:${port}`,
      admin,
      dir,
      log: () => out,
      stop: async () => {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 3000);
          await exited;
          clearTimeout(t);
        }
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  throw lastError instanceof Error ? lastError : new Error(String(lastError));
}

/** The dynsec file as the broker last saved it (to check that provisioning persists). */
export async function readDynsecFile(m: Mosquitto): Promise<unknown> {
  return JSON.parse(await readFile(join(m.dir, 'dynamic-security.json'), 'utf8')) as unknown;
}
