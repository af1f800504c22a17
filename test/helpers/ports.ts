/**
 * Free loopback ports and waiting for a spawned server to listen, for the tests that run real
 * brokers (test/helpers/mosquitto.ts, test/helpers/rabbitmq.ts).
 */
import type { ChildProcess } from 'node:child_process';
import { createServer, connect as tcpConnect } from 'node:net';

/** A port free on 127.0.0.1 right now (another process may still take it before it is bound). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** Resolves once 127.0.0.1:`port` accepts a connection; rejects when `child` exits first or after `ms`. */
export function waitListening(name: string, port: number, child: ChildProcess, log: () => string, ms: number, retryMs = 50): Promise<void> {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      if (child.exitCode !== null || child.signalCode !== null) return reject(new Error(`${name} exited (${child.exitCode ?? child.signalCode}): ${log().slice(-4000)}`));
      const s = tcpConnect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve();
      });
      s.once('error', () => {
        s.destroy();
        if (Date.now() > deadline) return reject(new Error(`${name} did not listen on ${port} in ${ms} ms: ${log().slice(-4000)}`));
        setTimeout(attempt, retryMs);
      });
    };
    attempt();
  });
}
