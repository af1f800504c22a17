/**
 * Optional systemd integration (sd_notify protocol): READY=1 once started, STOPPING=1 on the
 * way down, STATUS= text, and WATCHDOG=1 pings at half of WATCHDOG_USEC. Everything soft-fails:
 * without systemd (no NOTIFY_SOCKET) each call is a no-op, and a failed notification is logged
 * once and never thrown.
 *
 * Why a `systemd-notify` child process and not a socket: NOTIFY_SOCKET is an AF_UNIX datagram
 * socket, and Node has no unix datagram sockets (node:dgram is UDP only). zigbee2mqtt uses the
 * native `unix-dgram` addon for it; we keep native dependencies to the ones we cannot avoid, and
 * `systemd-notify` ships wherever systemd does. Its costs, and how the unit accounts for them:
 * - it sends from its own PID, not ours, so the unit needs NotifyAccess=all (it first tries to
 *   send with our PID, which only works with CAP_SYS_ADMIN, then falls back to its own);
 * - it then waits (BARRIER=1) until the manager has processed the message, which closes the race
 *   where a short-lived sender exits before systemd can attribute it to the unit (systemd ≥ 246);
 * - one process spawn per watchdog ping (every WatchdogSec/2 = 15 s by default) is negligible.
 * Messages are sent as VARIABLE=VALUE arguments rather than --ready/--stopping flags because
 * `--stopping` only exists since systemd 253.
 */
import { execFile } from 'node:child_process';
import type { Logger } from './log.ts';

/** Runs `systemd-notify` with `args` and `env`; rejects when it cannot run or exits non-zero. */
export type NotifySpawner = (file: string, args: readonly string[], env: NodeJS.ProcessEnv) => Promise<void>;

export interface SdNotifier {
  /** True when NOTIFY_SOCKET is set, i.e. a service manager listens. */
  readonly enabled: boolean;
  /** The watchdog ping interval in ms, or undefined when systemd asked for no watchdog (for us). */
  readonly watchdogIntervalMs: number | undefined;
  /** READY=1 (with MAINPID, and STATUS= when given). */
  ready(statusText?: string): Promise<void>;
  stopping(): Promise<void>;
  status(text: string): Promise<void>;
  /** Starts WATCHDOG=1 pings; returns the function that stops them. A no-op without a watchdog. */
  startWatchdog(): () => void;
}

export interface SdNotifierOptions {
  log: Logger;
  env: NodeJS.ProcessEnv;
  /** Our PID, compared with WATCHDOG_PID and sent as MAINPID with READY. */
  pid?: number;
  /** The notifier binary; resolved through PATH by default. */
  bin?: string;
  spawn?: NotifySpawner;
}

/** A spawned notifier gets this long, barrier wait included, before it is killed. */
const SPAWN_TIMEOUT_MS = 10_000;

export const defaultSpawner: NotifySpawner = (file, args, env) =>
  new Promise((resolve, reject) => {
    execFile(file, [...args], { env, timeout: SPAWN_TIMEOUT_MS, killSignal: 'SIGKILL', windowsHide: true }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      const detail = String(stderr).trim();
      reject(new Error(detail ? `${err.message.split('\n')[0]}: ${detail}` : err.message));
    });
  });

/**
 * Watchdog interval in ms: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, or
 * undefined when there is no valid watchdog request or it is addressed to another process
 * (WATCHDOG_PID set to a PID that is not ours, e.g. inherited by a child process).
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid: number): number | undefined {
  const usecText = env.WATCHDOG_USEC;
  if (usecText === undefined || !/^\d+$/.test(usecText)) return undefined;
  const usec = Number(usecText);
  if (!Number.isSafeInteger(usec) || usec <= 0) return undefined;
  const pidText = env.WATCHDOG_PID;
  if (pidText !== undefined && pidText !== '' && pidText !== String(pid)) return undefined;
  // At least 1 ms so a tiny WATCHDOG_USEC cannot become a busy loop; setInterval caps at 2^31-1.
  return Math.min(Math.max(1, Math.floor(usec / 2000)), 2 ** 31 - 1);
}

function statusLine(text: string): string {
  return `STATUS=${text.replace(/\n/g, ' ')}`;
}

/** The argv passed to `systemd-notify` for one message. */
export function notifyArgs(assignments: readonly string[], mainPid?: number): string[] {
  return [...(mainPid === undefined ? [] : [`--pid=${mainPid}`]), ...assignments];
}

export function createSdNotifier(opts: SdNotifierOptions): SdNotifier {
  const { log, env } = opts;
  const pid = opts.pid ?? process.pid;
  const bin = opts.bin ?? 'systemd-notify';
  const spawn = opts.spawn ?? defaultSpawner;
  const socket = env.NOTIFY_SOCKET;
  const enabled = socket !== undefined && socket !== '';
  const interval = enabled ? watchdogIntervalMs(env, pid) : undefined;
  let warned = false;
  let unavailable = false;

  if (!enabled) log.debug('sd_notify: NOTIFY_SOCKET not set (not run by systemd as Type=notify); notifications are off');
  else if (env.WATCHDOG_USEC !== undefined && interval === undefined) {
    log.debug({ WATCHDOG_USEC: env.WATCHDOG_USEC, WATCHDOG_PID: env.WATCHDOG_PID }, 'sd_notify: watchdog not for this process or invalid; not pinging');
  }

  const send = async (assignments: readonly string[], mainPid?: number): Promise<void> => {
    if (!enabled || unavailable) return;
    try {
      await spawn(bin, notifyArgs(assignments, mainPid), env);
    } catch (err) {
      // A missing binary will not appear later: stop trying instead of spawning every ping.
      if ((err as { code?: unknown }).code === 'ENOENT') unavailable = true;
      if (warned) return;
      warned = true;
      // warn, not debug: under Type=notify a lost READY=1 fails the unit after TimeoutStartSec,
      // and a lost WATCHDOG=1 gets the service killed, so the operator needs this one line.
      log.warn({ err, message: assignments.join(' ') }, 'sd_notify failed (logged once; the service keeps running)');
    }
  };

  return {
    enabled,
    watchdogIntervalMs: interval,
    ready: (text) => send(text === undefined ? ['READY=1'] : ['READY=1', statusLine(text)], pid),
    stopping: () => send(['STOPPING=1']),
    status: (text) => send([statusLine(text)]),
    startWatchdog: () => {
      if (interval === undefined) return () => {};
      let inFlight = false;
      const timer = setInterval(() => {
        // A ping that is still waiting for its barrier must not pile up processes behind it.
        if (inFlight) return;
        inFlight = true;
        void send(['WATCHDOG=1']).finally(() => {
          inFlight = false;
        });
      }, interval);
      // The ping only fires while the event loop turns, which is what the watchdog should prove;
      // unref so the timer alone never keeps a stopping process alive.
      timer.unref();
      return () => clearInterval(timer);
    },
  };
}
