/**
 * A private RabbitMQ (Debian's rabbitmq-server) with the MQTT plugin and the HTTP auth backend,
 * for the external-broker tests (issue #15). Everything lives in a temp dir: node name, mnesia,
 * logs, config, enabled plugins, HOME (the Erlang cookie); its own epmd on a free port
 * (ERL_EPMD_PORT), so it never meets another node or a system epmd. `stop()` kills the node's
 * process group and that epmd, then removes the dir.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitListening } from './ports.ts';

const SERVER_PATHS = ['/usr/lib/rabbitmq/bin/rabbitmq-server', '/usr/sbin/rabbitmq-server'];

/** The rabbitmq-server script, or why there is none. */
export function findRabbitmq(): { server: string } | { missing: string } {
  const server = SERVER_PATHS.find((p) => existsSync(p));
  if (!server) return { missing: 'rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)' };
  return { server };
}

export interface RabbitMq {
  mqttPort: number;
  mqttUrl: string;
  /** Milliseconds from spawn until MQTT accepted connections. */
  bootMs: number;
  log(): string;
  stop(): Promise<void>;
}



/** Kills what epmd runs on `port` (the one this node started), found by its command line. */
function killEpmd(port: number): void {
  const r = spawnSync('sh', ['-c', `for p in /proc/[0-9]*; do if tr '\\0' ' ' < $p/environ 2>/dev/null | grep -q "ERL_EPMD_PORT=${port} " && grep -q epmd $p/comm 2>/dev/null; then echo \${p#/proc/}; fi; done`], { encoding: 'utf8' });
  for (const pid of r.stdout.split(/\s+/).filter(Boolean)) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * Starts RabbitMQ with MQTT on a free port and every auth decision asked of `authBase`
 * (e.g. `http://127.0.0.1:8080/v1/broker-auth/rabbitmq`), with `?key=<secret>`.
 */
export async function startRabbitmq(install: { server: string }, authBase: string, secret: string): Promise<RabbitMq> {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-rabbitmq-'));
  const [mqttPort, nodePort, distPort, epmdPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const url = (check: string): string => `${authBase}/${check}?key=${encodeURIComponent(secret)}`;
  await writeFile(
    join(dir, 'rabbitmq.conf'),
    [
      `listeners.tcp.default = 127.0.0.1:${nodePort}`,
      `mqtt.listeners.tcp.default = 127.0.0.1:${mqttPort}`,
      'mqtt.allow_anonymous = false',
      'mqtt.vhost = /',
      'mqtt.exchange = amq.topic',
      'auth_backends.1 = http',
      'auth_http.http_method = post',
      `auth_http.user_path = ${url('user')}`,
      `auth_http.vhost_path = ${url('vhost')}`,
      `auth_http.resource_path = ${url('resource')}`,
      `auth_http.topic_path = ${url('topic')}`,
      'loopback_users = none',
      'log.console = false',
      'log.file.level = info',
      '',
    ].join('\n'),
  );
  await writeFile(join(dir, 'enabled_plugins'), '[rabbitmq_mqtt,rabbitmq_auth_backend_http].\n');
  const node = `edgefleet-${process.pid}-${mqttPort}@localhost`;
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: dir,
    LANG: 'C.UTF-8',
    RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
    RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
    RABBITMQ_ADVANCED_CONFIG_FILE: join(dir, 'advanced.config'),
    RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
    RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: join(dir, 'log'),
    RABBITMQ_PID_FILE: join(dir, 'rabbit.pid'),
    RABBITMQ_NODENAME: node,
    RABBITMQ_USE_LONGNAME: 'false',
    RABBITMQ_NODE_PORT: String(nodePort),
    RABBITMQ_DIST_PORT: String(distPort),
    ERL_EPMD_PORT: String(epmdPort),
  };
  let out = '';
  const t0 = Date.now();
  const child = spawn(install.server, [], { env, cwd: dir, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.on('data', (c: Buffer) => void (out = (out + c.toString()).slice(-20_000)));
  child.stderr?.on('data', (c: Buffer) => void (out = (out + c.toString()).slice(-20_000)));
  const log = (): string => out;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      try {
        process.kill(-(child.pid as number), 'SIGTERM');
      } catch {
        // gone
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-(child.pid as number), 'SIGKILL');
        } catch {
          // gone
        }
      }, 10_000);
      await exited;
      clearTimeout(timer);
    }
    // The beam may outlive the script's shell for a moment; its group is gone with SIGKILL.
    try {
      process.kill(-(child.pid as number), 'SIGKILL');
    } catch {
      // gone
    }
    killEpmd(epmdPort);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitListening('rabbitmq-server', mqttPort, child, log, 120_000, 200);
  } catch (err) {
    await stop();
    throw err;
  }
  return { mqttPort, mqttUrl: `mqtt://127.0.0.1:${mqttPort}`, bootMs: Date.now() - t0, log, stop };
}
