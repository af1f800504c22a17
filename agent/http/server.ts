/**
 * The agent's local HTTP endpoint: `/healthz` (JSON, 200 when serving, 503 when not),
 * `/metrics` (Prometheus text) and, when an inference handler is given, `POST /v1/infer/<pipeline>`
 * (agent/inputs/http-infer.ts). Bound to localhost by default.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { INFER_PATH_PREFIX, type HttpInferHandler } from '../inputs/http-infer.ts';

export interface Health {
  ok: boolean;
  [k: string]: unknown;
}

export class AgentHttpServer implements Component {
  readonly name = 'http';
  #server: Server | undefined;
  #port = 0;

  constructor(
    private readonly opts: {
      host: string;
      port: number;
      registry: Registry;
      health: () => Health;
      log: Logger;
      infer?: HttpInferHandler;
      /** Time a client gets to send a whole request. Default 30 s. */
      requestTimeoutMs?: number;
    },
  ) {}

  get port(): number {
    return this.#port;
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0] ?? '/';
      if (this.opts.infer && path.startsWith(INFER_PATH_PREFIX)) {
        this.opts.infer.handle(req, res, path);
        return;
      }
      if (req.method !== 'GET') {
        // The same JSON error shape as every other refusal (the fuzz suite found a bare 405).
        res.writeHead(405, { allow: 'GET', 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'BAD_INPUT', message: `method ${req.method ?? '?'} not allowed` } }));
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
    // A client that trickles a body holds a request slot and its buffer: bound the time.
    server.requestTimeout = this.opts.requestTimeoutMs ?? 30_000;
    server.headersTimeout = Math.min(server.requestTimeout, 20_000);
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
