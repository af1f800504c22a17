/**
 * The agent's local HTTP endpoint: `/healthz` (JSON, 200 when serving, 503 when not) and
 * `/metrics` (Prometheus text). Bound to localhost by default.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';

export interface Health {
  ok: boolean;
  [k: string]: unknown;
}

export class AgentHttpServer implements Component {
  readonly name = 'http';
  #server: Server | undefined;
  #port = 0;

  constructor(
    private readonly opts: { host: string; port: number; registry: Registry; health: () => Health; log: Logger },
  ) {}

  get port(): number {
    return this.#port;
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET') {
        res.writeHead(405, { allow: 'GET' }).end();
        return;
      }
      if (path === '/healthz') {
        const h = this.opts.health();
        res.writeHead(h.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(h));
      } else if (path === '/metrics') {
        this.opts.registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': this.opts.registry.contentType }).end(text),
          (err: unknown) => {
            this.opts.log.error({ err }, 'metrics failed');
            res.writeHead(500).end();
          },
        );
      } else {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NOT_FOUND', message: 'not found' } }));
      }
    });
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    this.#port = (server.address() as AddressInfo).port;
    this.opts.log.info({ host: this.opts.host, port: this.#port }, 'http listening');
  }

  async stop(): Promise<void> {
    const s = this.#server;
    if (!s) return;
    this.#server = undefined;
    s.closeIdleConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }
}
