/**
 * HTTP input: `POST /v1/infer/<pipeline>` on the agent's local HTTP server. The body is a JSON
 * reading (`Content-Type: application/json`) or an encoded image (`image/*`, or
 * `application/octet-stream`); the reply carries the result. Correlation id: the reading's `id`,
 * else the `X-Correlation-Id` header or `?id=`, else generated.
 *
 * Replies: 200 result; 400 {error:{code,message}} for bad input; 404 unknown pipeline; 413 body
 * over the cap (refused from Content-Length before reading, or as soon as the stream passes the
 * cap: never buffered whole); 415 other content types; 429 + Retry-After when the engine queue
 * is full or too many requests are in progress (counted in edgefleet_agent_http_rejected_total);
 * 503 pipeline not running.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { EdgefleetError, ErrorCode, httpStatusOf, toEdgefleetError } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { PipelineMetrics } from '../metrics.ts';
import type { InferRequest, Pipeline } from '../pipeline.ts';

export const INFER_PATH_PREFIX = '/v1/infer/';

export interface HttpInferOptions {
  pipelines: () => readonly Pipeline[];
  maxJsonBytes: number;
  maxImageBytes: number;
  maxConcurrent: number;
  metrics: PipelineMetrics;
  log: Logger;
  /** Seconds a client is told to wait after a 429. Default 1. */
  retryAfterSeconds?: number;
}

/** After a 413 the rest of the body is read and discarded up to this multiple of the cap, so the client sees the reply; beyond it the socket is cut. */
const DRAIN_FACTOR = 4;

export class HttpInferHandler {
  #active = 0;
  readonly #throttle = new LogThrottle(5000);

  constructor(private readonly o: HttpInferOptions) {}

  /** Handles a request whose path starts with INFER_PATH_PREFIX. */
  handle(req: IncomingMessage, res: ServerResponse, path: string): void {
    const name = decodeURIComponent(path.slice(INFER_PATH_PREFIX.length));
    const pipeline = this.o.pipelines().find((p) => p.pipelineName === name);
    const label = pipeline ? name : '(unknown)';
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return this.#error(req, res, label, new EdgefleetError(ErrorCode.BAD_INPUT, `use POST ${INFER_PATH_PREFIX}<pipeline>`), 405);
    }
    if (!pipeline) return this.#error(req, res, label, new EdgefleetError(ErrorCode.NOT_FOUND, `no pipeline named ${name}`));
    if (this.#active >= this.o.maxConcurrent) {
      this.o.metrics.httpRejected.inc({ pipeline: name, reason: 'concurrency' });
      return this.#error(req, res, name, new EdgefleetError(ErrorCode.OVERLOADED, `more than ${this.o.maxConcurrent} inference requests in progress`));
    }
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    const kind = type === 'application/json' || type.endsWith('+json') ? 'json' : type.startsWith('image/') || type === 'application/octet-stream' ? 'image' : undefined;
    if (!kind) {
      return this.#error(req, res, name, new EdgefleetError(ErrorCode.BAD_INPUT, `unsupported content type '${type || '(none)'}': send application/json or image/*`), 415);
    }
    const cap = kind === 'json' ? this.o.maxJsonBytes : this.o.maxImageBytes;
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > cap) {
      return this.#tooLarge(req, res, pipeline, `body of ${declared} bytes exceeds the ${kind} limit of ${cap}`, cap);
    }
    const url = new URL(req.url ?? '/', 'http://agent');
    const headerId = req.headers['x-correlation-id'];
    const id = (Array.isArray(headerId) ? headerId[0] : headerId) ?? url.searchParams.get('id') ?? undefined;

    this.#active++;
    let released = false;
    const release = (): void => {
      if (!released) {
        released = true;
        this.#active--;
      }
    };
    res.once('close', release);
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      if (over) return;
      size += chunk.length;
      if (size > cap) {
        over = true;
        chunks.length = 0;
        release();
        this.#tooLarge(req, res, pipeline, `body exceeds the ${kind} limit of ${cap} bytes`, cap, size);
        return;
      }
      chunks.push(chunk);
    });
    req.once('error', () => release());
    req.once('end', () => {
      if (over) return;
      const body = Buffer.concat(chunks, size);
      chunks.length = 0;
      let request: InferRequest;
      if (kind === 'image') request = { kind: 'image', bytes: body, id, source: 'http' };
      else {
        let parsed: unknown;
        try {
          parsed = JSON.parse(body.toString('utf8'));
        } catch (err) {
          const e = new EdgefleetError(ErrorCode.BAD_PAYLOAD, `malformed JSON: ${(err as Error).message}`);
          pipeline.countRejected(e);
          release();
          return this.#error(req, res, name, e);
        }
        request = { kind: 'json', body: parsed, id, source: 'http' };
      }
      pipeline.infer(request).then(
        (result) => {
          release();
          this.#reply(res, name, 200, result);
        },
        (err: unknown) => {
          release();
          const e = toEdgefleetError(err);
          if (e.code === ErrorCode.OVERLOADED) this.o.metrics.httpRejected.inc({ pipeline: name, reason: 'overloaded' });
          this.#error(req, res, name, e);
        },
      );
    });
  }

  /** 413 now; then swallow (bounded) or cut the rest of the body. Memory holds none of it. */
  #tooLarge(req: IncomingMessage, res: ServerResponse, pipeline: Pipeline, message: string, cap: number, seen = 0): void {
    const e = new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, message, { details: { limit: cap } });
    pipeline.countRejected(e);
    res.setHeader('connection', 'close');
    this.#error(req, res, pipeline.pipelineName, e);
    let drained = seen;
    req.on('data', (chunk: Buffer) => {
      drained += chunk.length;
      if (drained > cap * DRAIN_FACTOR) req.socket.destroy();
    });
    req.resume();
  }

  #error(req: IncomingMessage, res: ServerResponse, pipeline: string, e: EdgefleetError, status = httpStatusOf[e.code]): void {
    if (e.code === ErrorCode.OVERLOADED) res.setHeader('retry-after', String(this.o.retryAfterSeconds ?? 1));
    if (status >= 500) {
      this.#throttle.run(`http:${e.code}`, (suppressed) => this.o.log.warn({ pipeline, code: e.code, err: e, suppressed }, 'inference request failed'));
    }
    // Unread request bodies (404, 415, 429 before reading) are discarded, not buffered.
    if (!req.readableEnded && req.listenerCount('data') === 0) req.resume();
    this.#reply(res, pipeline, status, { error: { code: e.code, message: e.message } });
  }

  #reply(res: ServerResponse, pipeline: string, status: number, body: unknown): void {
    this.o.metrics.httpResponses.inc({ pipeline, status: String(status) });
    if (res.headersSent || res.writableEnded || res.destroyed) return;
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  }
}
