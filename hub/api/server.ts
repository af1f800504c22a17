/**
 * The hub's HTTP JSON API on node:http (no framework): operator bearer-token auth, zod-validated
 * bodies and queries, one error shape. Routes:
 *   GET  /healthz                 liveness, no auth
 *   GET  /metrics                 Prometheus text of the hub registry
 *   POST /v1/devices              register a device or sensor → 201 {id, kind, token} (token shown once)
 *   GET  /v1/devices              list devices and sensors with state and counters
 *   GET  /v1/devices/:id          one, with stream positions and per-(stream, epoch) stats
 *   GET  /v1/telemetry            stored records, paged by cursor (`after`, `next`)
 *   GET  /v1/fleet                totals and records/s over the last minute
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { DeviceIdSchema, NameSchema } from '../../shared/protocol.ts';
import type { ApiAuth, Operator } from '../auth/operators.ts';
import { hashToken, newSecret } from '../auth/tokens.ts';
import type { DeviceRecord, HubStore } from '../store/store.ts';
import { readJson, sendError, sendJson } from './http.ts';

export interface ApiOptions {
  host: string;
  port: number;
  maxBodyBytes: number;
  publicMetrics: boolean;
  store: HubStore;
  auth: ApiAuth;
  registry: Registry;
  log: Logger;
  /** Records stored per second over the last minute (from ingest). */
  recordsPerSecond: () => number;
  now?: () => number;
}

const LabelKeySchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, 'label key: 1-63 of [A-Za-z0-9._/-]');
export const GroupSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'group: 1-64 of [A-Za-z0-9._-]');
export const LabelsSchema = z
  .record(LabelKeySchema, z.string().max(256))
  .refine((l) => Object.keys(l).length <= 32, 'at most 32 labels');

export const CreateDeviceSchema = z
  .strictObject({
    id: DeviceIdSchema,
    group: GroupSchema.default('default'),
    labels: LabelsSchema.default({}),
    kind: z.enum(['device', 'sensor', 'consumer']).default('device'),
    /** For sensors: the device whose `in/` topics the sensor feeds. */
    device: DeviceIdSchema.optional(),
  })
  .superRefine((b, ctx) => {
    if (b.kind === 'sensor' && !b.device) ctx.addIssue({ code: 'custom', path: ['device'], message: 'a sensor needs the device it feeds' });
    if (b.kind !== 'sensor' && b.device) ctx.addIssue({ code: 'custom', path: ['device'], message: 'only sensors belong to a device' });
  });

const TelemetryQuerySchema = z.strictObject({
  device: DeviceIdSchema.optional(),
  stream: NameSchema.optional(),
  kind: NameSchema.optional(),
  after: z.coerce.number().int().nonnegative().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

/** The API's view of a principal; also what `edgefleet devices --json` prints. */
export function deviceView(d: DeviceRecord): Record<string, unknown> {
  return {
    id: d.id,
    kind: d.kind,
    group: d.group,
    labels: d.labels,
    ...(d.deviceId ? { device: d.deviceId } : {}),
    online: d.online,
    lastSeen: d.lastSeen === null ? null : new Date(d.lastSeen).toISOString(),
    createdAt: new Date(d.createdAt).toISOString(),
    agentVersion: d.agentVersion,
    bootEpoch: d.bootEpoch,
    models: d.models,
    counters: d.counters,
  };
}

type Handler = (req: IncomingMessage, res: ServerResponse, params: { id?: string; query: URLSearchParams; op: Operator | undefined }) => Promise<void>;
interface Route {
  method: string;
  pattern: RegExp;
  auth: 'none' | 'read' | 'write';
  handler: Handler;
}

export class ApiServer implements Component {
  readonly name = 'api';
  readonly #o: ApiOptions;
  readonly #routes: Route[];
  readonly #now: () => number;
  #server: Server | undefined;
  #port = 0;

  constructor(opts: ApiOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#routes = [
      { method: 'GET', pattern: /^\/healthz$/, auth: 'none', handler: (_q, res) => this.#healthz(res) },
      { method: 'GET', pattern: /^\/metrics$/, auth: opts.publicMetrics ? 'none' : 'read', handler: (_q, res) => this.#metrics(res) },
      { method: 'POST', pattern: /^\/v1\/devices$/, auth: 'write', handler: (req, res) => this.#createDevice(req, res) },
      { method: 'GET', pattern: /^\/v1\/devices$/, auth: 'read', handler: (_q, res) => this.#listDevices(res) },
      { method: 'GET', pattern: /^\/v1\/devices\/([^/]+)$/, auth: 'read', handler: (_q, res, p) => this.#getDevice(res, p.id ?? '') },
      { method: 'GET', pattern: /^\/v1\/telemetry$/, auth: 'read', handler: (_q, res, p) => this.#telemetry(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/fleet$/, auth: 'read', handler: (_q, res) => this.#fleet(res) },
    ];
  }

  get port(): number {
    return this.#port;
  }

  async start(signal: AbortSignal): Promise<void> {
    const server = createServer((req, res) => void this.#handle(req, res));
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    server.keepAliveTimeout = 5_000;
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(new EdgefleetError(ErrorCode.ABORTED, 'api start aborted'));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      server.once('error', (err) => reject(new EdgefleetError(ErrorCode.UNAVAILABLE, `http listen on ${this.#o.host}:${this.#o.port}: ${err.message}`, { cause: err })));
      server.listen({ host: this.#o.host, port: this.#o.port }, () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    }).catch(async (err: unknown) => {
      await this.stop();
      throw err;
    });
    const addr = server.address();
    this.#port = typeof addr === 'object' && addr ? addr.port : this.#o.port;
    this.#o.log.info({ host: this.#o.host, port: this.#port }, 'http listening');
  }

  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    // In-flight requests are short; give them a moment, then cut what is left.
    const timer = setTimeout(() => server.closeAllConnections(), 2000);
    await closed;
    clearTimeout(timer);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const t0 = performance.now();
    try {
      const url = new URL(req.url ?? '/', 'http://hub');
      const allowed: string[] = [];
      for (const r of this.#routes) {
        const m = r.pattern.exec(url.pathname);
        if (!m) continue;
        allowed.push(r.method);
        if (r.method !== req.method) continue;
        let op: Operator | undefined;
        if (r.auth !== 'none') {
          op = await this.#o.auth.authenticate(req.headers.authorization);
          if (!op) throw new EdgefleetError(ErrorCode.UNAUTHORIZED, 'a valid bearer token is required');
          if (r.auth === 'write' && op.role === 'viewer') throw new EdgefleetError(ErrorCode.FORBIDDEN, 'this token may only read');
        }
        let id: string | undefined;
        try {
          id = m[1] === undefined ? undefined : decodeURIComponent(m[1]);
        } catch {
          throw new EdgefleetError(ErrorCode.BAD_INPUT, 'malformed path');
        }
        await r.handler(req, res, { id, query: url.searchParams, op });
        return;
      }
      if (allowed.length) {
        const message = `method ${req.method ?? '?'} not allowed on ${url.pathname}`;
        sendJson(res, 405, { error: { code: ErrorCode.BAD_INPUT, message } }, { allow: allowed.join(', ') });
        return;
      }
      throw new EdgefleetError(ErrorCode.NOT_FOUND, `no route ${url.pathname}`);
    } catch (err) {
      const e = sendError(res, err);
      const level = e.code === ErrorCode.INTERNAL || e.code === ErrorCode.STORAGE ? 'error' : 'debug';
      this.#o.log[level]({ err: e, method: req.method, url: req.url?.slice(0, 256) }, 'api request failed');
    } finally {
      this.#o.log.trace({ method: req.method, url: req.url?.slice(0, 256), status: res.statusCode, ms: Math.round(performance.now() - t0) }, 'api request');
    }
  }

  #healthz(res: ServerResponse): Promise<void> {
    sendJson(res, 200, { ok: true });
    return Promise.resolve();
  }

  async #metrics(res: ServerResponse): Promise<void> {
    const text = await this.#o.registry.metrics();
    res.writeHead(200, { 'content-type': this.#o.registry.contentType });
    res.end(text);
  }

  async #createDevice(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJson(req, CreateDeviceSchema, this.#o.maxBodyBytes);
    const token = newSecret();
    await this.#o.store.createPrincipal({
      id: body.id,
      kind: body.kind,
      group: body.group,
      labels: body.labels,
      deviceId: body.device,
      token: await hashToken(token),
      createdAt: this.#now(),
    });
    this.#o.log.info({ id: body.id, kind: body.kind, group: body.group }, 'principal registered');
    // The token exists in plaintext only in this response.
    sendJson(res, 201, { id: body.id, kind: body.kind, group: body.group, ...(body.device ? { device: body.device } : {}), token }, { 'cache-control': 'no-store' });
  }

  async #listDevices(res: ServerResponse): Promise<void> {
    const devices = await this.#o.store.listDevices();
    sendJson(res, 200, { devices: devices.map(deviceView) });
  }

  async #getDevice(res: ServerResponse, id: string): Promise<void> {
    const d = await this.#o.store.getDevice(id);
    if (!d) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no device ${id}`);
    sendJson(res, 200, { ...deviceView(d), streams: d.streams, streamStats: await this.#o.store.streamStats(id) });
  }

  async #telemetry(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const parsed = TelemetryQuerySchema.safeParse(Object.fromEntries(query));
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
    const q = parsed.data;
    const records = await this.#o.store.queryTelemetry({ deviceId: q.device, stream: q.stream, kind: q.kind, after: q.after, limit: q.limit });
    const last = records[records.length - 1];
    sendJson(res, 200, { records, next: records.length === q.limit && last ? last.cursor : null });
  }

  async #fleet(res: ServerResponse): Promise<void> {
    const t = await this.#o.store.fleetTotals();
    sendJson(res, 200, {
      devices: { total: t.devices, online: t.devicesOnline },
      sensors: { total: t.sensors, online: t.sensorsOnline },
      records: { stored: t.recordsStored, perSecondLastMinute: Math.round(this.#o.recordsPerSecond() * 100) / 100 },
    });
  }
}
