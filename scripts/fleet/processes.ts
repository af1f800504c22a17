/**
 * Runs edgefleet services as real child processes (the demo, e2e and fault tests): spawns the
 * CLI, keeps its JSON log lines, waits for a given line, stops with SIGTERM (SIGKILL after a
 * grace period) or kills with SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../../cli/main.ts', import.meta.url));
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export type LogLine = Record<string, unknown> & { msg?: string };

export class ServiceProcess {
  readonly child: ChildProcess;
  readonly lines: LogLine[] = [];
  readonly #waiters = new Set<{ test: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #stderr = '';
  #logFile: WriteStream | undefined;

  constructor(
    readonly name: string,
    args: string[],
    opts: { env?: NodeJS.ProcessEnv; logFile?: string; keepLines?: number } = {},
  ) {
    this.child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (opts.logFile) this.#logFile = createWriteStream(opts.logFile, { flags: 'a' });
    const keep = opts.keepLines ?? 5000;
    let buf = '';
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      this.#logFile?.write(chunk);
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let line: LogLine;
        try {
          line = JSON.parse(text) as LogLine;
        } catch {
          line = { msg: text, raw: true };
        }
        this.lines.push(line);
        if (this.lines.length > keep) this.lines.splice(0, this.lines.length - keep);
        for (const w of this.#waiters) if (w.test(line)) {
          this.#waiters.delete(w);
          w.resolve(line);
        }
      }
    });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.#logFile?.write(chunk);
      this.#stderr = (this.#stderr + chunk).slice(-20_000);
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    void this.exited.then(() => this.#logFile?.end());
  }

  get stderr(): string {
    return this.#stderr;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Resolves with the first log line (past or future) that passes `test`. */
  waitFor(test: (l: LogLine) => boolean, timeoutMs = 30_000, what = 'log line'): Promise<LogLine> {
    const seen = this.lines.find(test);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { test, resolve: (l: LogLine) => (clearTimeout(timer), resolve(l)) };
      const timer = setTimeout(() => {
        this.#waiters.delete(w);
        reject(new Error(`${this.name}: no ${what} within ${timeoutMs} ms; stderr: ${this.#stderr.slice(-2000)}`));
      }, timeoutMs);
      this.#waiters.add(w);
      void this.exited.then(({ code, signal }) => {
        if (!this.#waiters.has(w)) return;
        this.#waiters.delete(w);
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${code ?? signal}) before ${what}; stderr: ${this.#stderr.slice(-2000)}`));
      });
    });
  }

  waitForMsg(msg: string, timeoutMs?: number): Promise<LogLine> {
    return this.waitFor((l) => l.msg === msg, timeoutMs, `'${msg}'`);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves with the exit status. */
  async stop(graceMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    const res = await this.exited;
    clearTimeout(timer);
    return res;
  }

  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
}
