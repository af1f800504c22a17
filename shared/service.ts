/**
 * Process plumbing for the two services' main.ts files, the only code that touches `process`:
 * SIGINT/SIGTERM stop the service gracefully; a second signal or the grace timeout forces exit.
 * Start-up is abortable: a signal during a slow start aborts it and exits cleanly.
 * Under systemd (Type=notify) it reports READY=1 once started, STOPPING=1 on a signal, and pings
 * the watchdog while running (shared/sd-notify.ts); without systemd those are no-ops.
 */
import type { Logger } from './log.ts';
import { createSdNotifier, type SdNotifier } from './sd-notify.ts';

export interface Service {
  stop(): Promise<Error[]>;
}

export async function runService(opts: {
  name: string;
  log: Logger;
  graceMs?: number;
  start: (signal: AbortSignal) => Promise<Service>;
  /** systemd notifications; built from process.env by default. */
  notifier?: SdNotifier;
}): Promise<void> {
  const grace = opts.graceMs ?? 20_000;
  const notifier = opts.notifier ?? createSdNotifier({ log: opts.log, env: process.env });
  let stopWatchdog = (): void => {};
  const abort = new AbortController();
  let service: Service | undefined;
  let stopping = false;

  const forceExit = (why: string): void => {
    opts.log.error({ why }, 'forced exit');
    opts.log.flush();
    process.exit(1);
  };

  const onSignal = (sig: NodeJS.Signals): void => {
    if (stopping) return forceExit(`second ${sig}`);
    stopping = true;
    opts.log.info({ signal: sig }, 'stopping');
    void notifier.stopping();
    abort.abort(new Error(`${sig} during start-up`));
    const timer = setTimeout(() => forceExit(`grace period of ${grace} ms exceeded`), grace);
    timer.unref();
    if (!service) return; // start() sees the abort and the code below exits
    void service.stop().then((failures) => {
      clearTimeout(timer);
      stopWatchdog();
      opts.log.info({ failures: failures.length }, 'stopped');
      opts.log.flush();
      process.exitCode = failures.length ? 1 : 0;
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    service = await opts.start(abort.signal);
  } catch (err) {
    if (abort.signal.aborted) {
      opts.log.info('start-up aborted');
      process.exitCode = 0;
    } else {
      opts.log.fatal({ err }, `${opts.name} failed to start`);
      process.exitCode = 1;
    }
    opts.log.flush();
    return;
  }
  if (stopping) {
    const failures = await service.stop();
    process.exitCode = failures.length ? 1 : 0;
    return;
  }
  opts.log.info(`${opts.name} running`);
  void notifier.ready(`${opts.name} running`);
  // Pings keep going through a slow stop (cleared when it ends): systemd's watchdog may still be
  // armed until it has processed STOPPING=1.
  stopWatchdog = notifier.startWatchdog();
}
