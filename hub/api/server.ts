/**
 * The hub's HTTP JSON API on node:http (no framework): operator bearer-token auth, zod-validated
 * bodies and queries, one error shape. HTTPS with hub config `tls` (issue #6); on device routes
 * a verified client certificate's CN must equal the device id of the bearer credentials (401).
 * Routes:
 *   GET  /healthz                 liveness, no auth
 *   GET  /, /ui/, /ui/<file>      the operator dashboard's static files, no auth (hub/ui/static.ts)
 *   GET  /v1/whoami               the caller's token name and role (the dashboard hides what it may not do)
 *   GET  /metrics                 Prometheus text of the hub registry
 *   GET  /openapi.json            the OpenAPI 3.1 document of this API, no auth (hub/api/openapi.ts)
 *   POST /v1/devices              register a device or sensor → 201 {id, kind, token} (token shown once)
 *   GET  /v1/devices              a page of devices, sensors and consumers with state and counters:
 *                                 ?limit=&cursor=&q=&group=&kind=&status=&label=k=v → {items, nextCursor, total}
 *                                 (hub/api/device-list.ts; keyset on id)
 *   GET  /v1/devices/:id          one, with stream positions and per-(stream, epoch) stats
 *   GET  /v1/telemetry            stored records, paged by cursor (`after`, `next`)
 *   GET  /v1/fleet                totals and records/s over the last minute
 *   GET  /v1/keys                 public keys that sign model releases (agents trust these)
 *   POST /v1/models               announce a release: {manifest} → 202, then PUT its artifact
 *   PUT  /v1/models/:name/:version/vectors    its test-vector sidecar (.npz), when the manifest names one
 *   PUT  /v1/models/:name/:version/artifact   the raw ONNX bytes, streamed → 201 signed release
 *   GET  /v1/models               releases, newest first
 *   GET  /v1/models/:name/:version             manifest and signed release
 *   GET  /v1/artifacts/:sha256    artifact bytes for devices (`Bearer <deviceId>:<token>`),
 *                                 with Range/If-Range/ETag; HEAD too; only the device's assigned
 *                                 releases' artifacts, 404 for any other
 *   POST /v1/rollouts             start a staged rollout (hub/rollouts/spec.ts) → 201 status
 *   GET  /v1/rollouts             rollouts, newest first, with counts
 *   GET  /v1/rollouts/:id         status: state, waves, per-device states, gate results
 *   POST /v1/rollouts/:id/{pause,resume,abort,approve}   → 200 status; 409 when not allowed now
 *   GET  /v1/devices/:id/history  the device's append-only model history
 *   POST /v1/feedback             ground truth for inference ids: {feedback: [{id, label, ts?, device?}]}
 *                                 → 200 per-item outcomes (hub/feedback/feedback.ts)
 *   GET  /v1/kpis                 KPIs per model version: ?model=&version=&from=&to=&window= (hub/kpis/)
 *   GET  /v1/drift, GET /v1/alerts[/:id], POST /v1/alerts/:id/{ack,resolve},
 *   POST /v1/samples/:deviceId (device auth), GET /v1/samples     drift and alerts (hub/drift/api.ts)
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { DeviceIdSchema, NameSchema } from '../../shared/protocol.ts';
import { enforceClientCerts, peerCertificate, readTlsFiles, serverTlsOptions, type ClientCertMode, type TlsFiles } from '../../shared/tls.ts';
import { DashboardAssets } from '../ui/static.ts';
import { GroupSchema, LabelsSchema } from '../../shared/ids.ts';
import type { DeviceAuth } from '../auth/devices.ts';
import { RABBITMQ_CHECKS, redactBrokerSecret, VERNEMQ_HOOKS, type BrokerAuthHttp, type BrokerEndpoint } from '../auth/broker-auth-http.ts';
import type { DriftApi } from '../drift/api.ts';
import { FeedbackBatchSchema, type FeedbackService } from '../feedback/feedback.ts';
import type { KpiService } from '../kpis/service.ts';
import type { ApiAuth, Operator } from '../auth/operators.ts';
import type { AuditLog } from '../auth/audit.ts';
import { allows, type Role } from '../auth/roles.ts';
import type { SecurityService } from '../auth/security.ts';
import { hashToken, newSecret } from '../auth/tokens.ts';
import type { ArtifactAccess } from '../models/artifact-access.ts';
import { serveArtifact } from '../models/artifact-http.ts';
import { storedRelease, type ModelRegistry } from '../models/registry.ts';
import type { RolloutEngine } from '../rollouts/engine.ts';
import type { DeviceRecord, HubStore, ModelRecord } from '../store/store.ts';
import { encodeDeviceCursor, parseDeviceListQuery } from './device-list.ts';
import { drainBounded, readJson, sendError, sendJson } from './http.ts';
import { buildOpenApiDocument } from './openapi.ts';
import { rawSocket, type Conn, type ConnectionLimiter } from '../net/conn-limits.ts';

export interface ApiOptions {
  host: string;
  port: number;
  maxBodyBytes: number;
  publicMetrics: boolean;
  /** HTTPS when certFile and keyFile are set (read at start); clientCerts as in hub config `tls`. */
  tls?: TlsFiles & { clientCerts: ClientCertMode };
  store: HubStore;
  auth: ApiAuth;
  deviceAuth: DeviceAuth;
  /** Operator tokens, enrollment, revocation (hub/auth/security.ts). */
  security: SecurityService;
  /** Every operator action and enrollment is recorded here. */
  audit: AuditLog;
  models: ModelRegistry;
  /** Which artifacts each device may fetch (issue #14): those of releases assigned to it. */
  artifactAccess: Pick<ArtifactAccess, 'allows'>;
  rollouts: Pick<RolloutEngine, 'create' | 'list' | 'status' | 'act' | 'history'>;
  /** Feedback and KPIs (issue #4); their routes answer 404 without them. */
  feedback?: Pick<FeedbackService, 'submit'>;
  kpis?: Pick<KpiService, 'parseQuery' | 'query'>;
  /** Drift, alerts and device samples (issue #4); their routes answer 404 without it. */
  drift?: DriftApi;
  /** The HTTP auth endpoint for external brokers (issue #15); its routes answer 404 without it or when disabled. */
  brokerAuth?: BrokerAuthHttp;
  /** Largest manifest accepted by POST /v1/models (bigger than maxBodyBytes: test vectors). */
  maxManifestBytes: number;
  registry: Registry;
  log: Logger;
  /** Records stored per second over the last minute (from ingest). */
  recordsPerSecond: () => number;
  /** Connection caps, shedding and header/body deadlines (hub/net/conn-limits.ts); none without it. */
  connections?: ConnectionLimiter;
  now?: () => number;
}

/** How much of a refused request's body is read and dropped before the connection is cut. */
const REFUSED_BODY_DRAIN_BYTES = 64 * 1024 * 1024;

export { GroupSchema, LabelsSchema };

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

export const TelemetryQuerySchema = z.strictObject({
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
    revokedAt: d.revokedAt === null ? null : new Date(d.revokedAt).toISOString(),
    enrolledBy: d.enrolledBy,
    online: d.online,
    lastSeen: d.lastSeen === null ? null : new Date(d.lastSeen).toISOString(),
    createdAt: new Date(d.createdAt).toISOString(),
    agentVersion: d.agentVersion,
    bootEpoch: d.bootEpoch,
    models: d.models,
    counters: d.counters,
  };
}

/** The API's view of a model release; also what `edgefleet model list --json` prints. */
export function modelView(m: ModelRecord): Record<string, unknown> {
  const manifest = JSON.parse(m.manifest) as { quantization?: unknown; description?: unknown };
  return {
    name: m.name,
    version: m.version,
    counter: m.counter,
    sha256: m.sha256,
    size: m.size,
    keyId: m.keyId,
    quantization: manifest.quantization,
    ...(typeof manifest.description === 'string' ? { description: manifest.description } : {}),
    createdAt: new Date(m.createdAt).toISOString(),
    artifactPath: `/v1/artifacts/${m.sha256}`,
  };
}

/** The manifest itself is checked by ModelRegistry.announce (shared/manifest.ts ManifestSchema). */
export const ModelAnnounceSchema = z.strictObject({ manifest: z.unknown() });

const isoTime = z.string().refine((v) => Number.isFinite(Date.parse(v)), 'an ISO 8601 time');
export const AuditQuerySchema = z.strictObject({
  since: isoTime.optional(),
  until: isoTime.optional(),
  actor: z.string().max(128).optional(),
  action: z.string().max(64).optional(),
  outcome: z.enum(['ok', 'denied', 'failed']).optional(),
  /** Paging: entries with ids below this (the `next` of the previous page). */
  before: z.coerce.number().int().positive().optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

export const AuditVerifyQuerySchema = z
  .strictObject({
    /** An earlier export's head (its header `head`): that row must still carry that hash. */
    anchorId: z.coerce.number().int().positive().optional(),
    anchorHash: z.string().regex(/^[0-9a-f]{64}$/, '64 lowercase hex digits').optional(),
  })
  .refine((q) => (q.anchorId === undefined) === (q.anchorHash === undefined), 'anchorId and anchorHash go together');

function requireOp(op: Operator | undefined): Operator {
  if (!op) throw new EdgefleetError(ErrorCode.UNAUTHORIZED, 'a valid bearer token is required');
  return op;
}

type Handler = (
  req: IncomingMessage,
  res: ServerResponse,
  params: {
    id?: string;
    ids: string[];
    query: URLSearchParams;
    op: Operator | undefined;
    device: string | undefined;
    /** Adds facts (ids, names; never secrets) to this request's audit entry. */
    note: (details: Record<string, unknown>) => void;
  },
) => Promise<void>;
interface Route {
  method: string;
  pattern: RegExp;
  /**
   * viewer/operator/admin: an operator token with at least that role (hub/auth/roles.ts);
   * device: `Bearer <deviceId>:<token>` of a registered, unrevoked device.
   */
  auth: 'none' | Role | 'device';
  /** Audit action name; every route that changes something has one (and is audited). */
  action?: string;
  handler: Handler;
}

export class ApiServer implements Component {
  readonly name = 'api';
  readonly #o: ApiOptions;
  readonly #routes: Route[];
  readonly #now: () => number;
  readonly #ui = new DashboardAssets();
  #server: Server | undefined;
  #port = 0;
  #openapiText: string | undefined;

  constructor(opts: ApiOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#routes = [
      { method: 'GET', pattern: /^\/healthz$/, auth: 'none', handler: (_q, res) => this.#healthz(res) },
      { method: 'GET', pattern: /^\/(?:ui)?$/, auth: 'none', handler: (_q, res) => this.#ui.redirect(res) },
      { method: 'GET', pattern: /^\/ui\/([^/]*)$/, auth: 'none', handler: (req, res, p) => this.#ui.serve(req, res, p.id ?? '') },
      { method: 'GET', pattern: /^\/v1\/whoami$/, auth: 'viewer', handler: (_q, res, p) => Promise.resolve(sendJson(res, 200, { name: p.op?.name, role: p.op?.role })) },
      { method: 'GET', pattern: /^\/metrics$/, auth: opts.publicMetrics ? 'none' : 'viewer', handler: (_q, res) => this.#metrics(res) },
      { method: 'GET', pattern: /^\/openapi\.json$/, auth: 'none', handler: (_q, res) => this.#openapi(res) },
      { method: 'POST', pattern: /^\/v1\/devices$/, auth: 'admin', action: 'device.create', handler: (req, res) => this.#createDevice(req, res) },
      { method: 'GET', pattern: /^\/v1\/devices$/, auth: 'viewer', handler: (_q, res, p) => this.#listDevices(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/devices\/([^/]+)$/, auth: 'viewer', handler: (_q, res, p) => this.#getDevice(res, p.id ?? '') },
      { method: 'POST', pattern: /^\/v1\/devices\/([^/]+)\/revoke$/, auth: 'admin', action: 'device.revoke', handler: async (_q, res, p) => sendJson(res, 200, await opts.security.revokePrincipal(p.id ?? '')) },
      { method: 'POST', pattern: /^\/v1\/tokens$/, auth: 'admin', action: 'token.create', handler: (req, res, p) => this.#createToken(req, res, p.op, p.note) },
      { method: 'GET', pattern: /^\/v1\/tokens$/, auth: 'admin', handler: async (_q, res) => sendJson(res, 200, { tokens: await opts.security.listOperatorTokens() }) },
      { method: 'POST', pattern: /^\/v1\/tokens\/([^/]+)\/revoke$/, auth: 'admin', action: 'token.revoke', handler: async (_q, res, p) => sendJson(res, 200, await opts.security.revokeOperatorToken(p.id ?? '')) },
      { method: 'POST', pattern: /^\/v1\/enrollment-tokens$/, auth: 'admin', action: 'enrollment-token.create', handler: (req, res, p) => this.#createEnrollmentToken(req, res, p.op, p.note) },
      { method: 'GET', pattern: /^\/v1\/enrollment-tokens$/, auth: 'admin', handler: async (_q, res) => sendJson(res, 200, { tokens: await opts.security.listEnrollmentTokens() }) },
      { method: 'POST', pattern: /^\/v1\/enrollment-tokens\/([^/]+)\/revoke$/, auth: 'admin', action: 'enrollment-token.revoke', handler: async (_q, res, p) => sendJson(res, 200, await opts.security.revokeEnrollmentToken(p.id ?? '')) },
      { method: 'POST', pattern: /^\/v1\/enroll$/, auth: 'none', action: 'device.enroll', handler: (req, res, p) => this.#enroll(req, res, p.note) },
      { method: 'GET', pattern: /^\/v1\/audit$/, auth: 'admin', handler: (_q, res, p) => this.#auditQuery(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/audit\/verify$/, auth: 'admin', handler: (_q, res, p) => this.#auditVerify(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/audit\/export$/, auth: 'admin', handler: (_q, res) => this.#auditExport(res) },
      { method: 'GET', pattern: /^\/v1\/devices\/([^/]+)\/history$/, auth: 'viewer', handler: (_q, res, p) => this.#deviceHistory(res, p.id ?? '') },
      { method: 'POST', pattern: /^\/v1\/rollouts$/, auth: 'operator', action: 'rollout.create', handler: (req, res) => this.#createRollout(req, res) },
      { method: 'GET', pattern: /^\/v1\/rollouts$/, auth: 'viewer', handler: async (_q, res) => sendJson(res, 200, { rollouts: await opts.rollouts.list() }) },
      { method: 'GET', pattern: /^\/v1\/rollouts\/([^/]+)$/, auth: 'viewer', handler: async (_q, res, p) => sendJson(res, 200, await opts.rollouts.status(p.id ?? '')) },
      {
        method: 'POST',
        pattern: /^\/v1\/rollouts\/([^/]+)\/(pause|resume|abort|approve)$/,
        auth: 'operator',
        action: 'rollout.act',
        handler: async (_q, res, p) => sendJson(res, 200, await opts.rollouts.act(p.ids[0] ?? '', p.ids[1] as 'pause' | 'resume' | 'abort' | 'approve')),
      },
      { method: 'POST', pattern: /^\/v1\/feedback$/, auth: 'operator', action: 'feedback.submit', handler: (req, res) => this.#feedback(req, res) },
      { method: 'GET', pattern: /^\/v1\/kpis$/, auth: 'viewer', handler: (_q, res, p) => this.#kpis(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/drift$/, auth: 'viewer', handler: (_q, res, p) => this.#drift.drift(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/alerts$/, auth: 'viewer', handler: (_q, res, p) => this.#drift.alerts(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/alerts\/([^/]+)$/, auth: 'viewer', handler: (_q, res, p) => this.#drift.alert(res, p.id ?? '') },
      { method: 'POST', pattern: /^\/v1\/alerts\/([^/]+)\/(ack|resolve)$/, auth: 'operator', action: 'alert.act', handler: (_q, res, p) => this.#drift.act(res, p.ids[0] ?? '', p.ids[1] ?? '', p.op?.name ?? 'operator') },
      { method: 'POST', pattern: /^\/v1\/samples\/([^/]+)$/, auth: 'device', handler: (req, res, p) => this.#drift.upload(req, res, p.id ?? '', p.device ?? '', p.query) },
      { method: 'GET', pattern: /^\/v1\/samples$/, auth: 'viewer', handler: (_q, res, p) => this.#drift.samples(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/telemetry$/, auth: 'viewer', handler: (_q, res, p) => this.#telemetry(res, p.query) },
      { method: 'GET', pattern: /^\/v1\/fleet$/, auth: 'viewer', handler: (_q, res) => this.#fleet(res) },
      { method: 'GET', pattern: /^\/v1\/keys$/, auth: 'viewer', handler: (_q, res) => this.#keys(res) },
      { method: 'POST', pattern: /^\/v1\/models$/, auth: 'operator', action: 'model.announce', handler: (req, res) => this.#announceModel(req, res) },
      { method: 'GET', pattern: /^\/v1\/models$/, auth: 'viewer', handler: (_q, res) => this.#listModels(res) },
      { method: 'GET', pattern: /^\/v1\/models\/([^/]+)\/([^/]+)$/, auth: 'viewer', handler: (_q, res, p) => this.#getModel(res, p.ids) },
      { method: 'PUT', pattern: /^\/v1\/models\/([^/]+)\/([^/]+)\/artifact$/, auth: 'operator', action: 'model.upload', handler: (req, res, p) => this.#uploadArtifact(req, res, p.ids) },
      { method: 'PUT', pattern: /^\/v1\/models\/([^/]+)\/([^/]+)\/vectors$/, auth: 'operator', action: 'model.upload', handler: (req, res, p) => this.#uploadVectors(req, res, p.ids) },
      { method: 'GET', pattern: /^\/v1\/artifacts\/([^/]+)$/, auth: 'device', handler: (req, res, p) => this.#artifact(req, res, p.id ?? '', p.device ?? '') },
      { method: 'HEAD', pattern: /^\/v1\/artifacts\/([^/]+)$/, auth: 'device', handler: (req, res, p) => this.#artifact(req, res, p.id ?? '', p.device ?? '') },
      // External brokers (issue #15): their own shared secret, checked by BrokerAuthHttp; not audited (one call per login, publish, subscribe).
      { method: 'POST', pattern: /^\/v1\/broker-auth\/emqx\/(authn|authz)$/, auth: 'none', handler: (req, res, p) => this.#brokerAuth(req, res, { broker: 'emqx', kind: p.id as 'authn' | 'authz' }) },
      { method: 'POST', pattern: new RegExp(`^/v1/broker-auth/vernemq/(${VERNEMQ_HOOKS.join('|')})$`), auth: 'none', handler: (req, res, p) => this.#brokerAuth(req, res, { broker: 'vernemq', kind: p.id as (typeof VERNEMQ_HOOKS)[number] }) },
      { method: 'GET', pattern: new RegExp(`^/v1/broker-auth/rabbitmq/(${RABBITMQ_CHECKS.join('|')})$`), auth: 'none', handler: (req, res, p) => this.#brokerAuth(req, res, { broker: 'rabbitmq', kind: p.id as (typeof RABBITMQ_CHECKS)[number] }) },
      { method: 'POST', pattern: new RegExp(`^/v1/broker-auth/rabbitmq/(${RABBITMQ_CHECKS.join('|')})$`), auth: 'none', handler: (req, res, p) => this.#brokerAuth(req, res, { broker: 'rabbitmq', kind: p.id as (typeof RABBITMQ_CHECKS)[number] }) },
    ];
  }

  get port(): number {
    return this.#port;
  }

  /** Method, path pattern and auth of every route, read-only: test/unit/openapi.test.ts holds hub/api/openapi.ts to it. */
  get routes(): readonly { method: string; pattern: RegExp; auth: string }[] {
    return this.#routes.map(({ method, pattern, auth }) => ({ method, pattern, auth }));
  }

  #brokerAuth(req: IncomingMessage, res: ServerResponse, ep: BrokerEndpoint): Promise<void> {
    if (!this.#o.brokerAuth?.enabled) throw new EdgefleetError(ErrorCode.NOT_FOUND, 'broker authentication is not enabled on this hub (brokerAuth.enabled)');
    return this.#o.brokerAuth.handle(req, res, ep);
  }

  get #drift(): DriftApi {
    if (!this.#o.drift) throw new EdgefleetError(ErrorCode.NOT_FOUND, 'drift monitoring is not enabled on this hub');
    return this.#o.drift;
  }

  async start(signal: AbortSignal): Promise<void> {
    const tls = this.#o.tls?.certFile ? this.#o.tls : undefined;
    const onRequest = (req: IncomingMessage, res: ServerResponse): void => void this.#handle(req, res);
    const server = tls ? createHttpsServer(serverTlsOptions(readTlsFiles(tls, 'tls'), tls.clientCerts), onRequest) : createServer(onRequest);
    if (tls) enforceClientCerts(server, tls.clientCerts, (reason, detail) => this.#o.log.debug({ reason, detail }, 'https client certificate refused; connection closed'));
    server.headersTimeout = 10_000;
    // No deadline for a whole request: a model artifact upload (up to models.maxArtifactBytes)
    // over a slow link takes minutes. A socket idle this long is closed instead, which still
    // ends stalled uploads and downloads; it covers the model probe (models.probe.timeoutMs).
    server.requestTimeout = 0;
    server.timeout = 120_000;
    server.keepAliveTimeout = 5_000;
    if (this.#o.connections) this.#limitConnections(server, this.#o.connections);
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

  /**
   * Admission at accept, before the HTTP (or TLS) layer sees the socket; a request head moves the
   * connection to `started` and its complete body to `established`; a finished response makes a
   * kept-alive connection sheddable again (issue #14).
   */
  #limitConnections(server: Server, limiter: ConnectionLimiter): void {
    const conns = new WeakMap<Socket, Conn>();
    server.prependListener('connection', (socket: Socket) => {
      const conn = limiter.admit(socket, socket.remoteAddress ?? '');
      if (conn) conns.set(socket, conn);
    });
    server.prependListener('request', (req: IncomingMessage, res: ServerResponse) => {
      const conn = conns.get(rawSocket(req.socket));
      if (!conn) return;
      conn.start({ complete: () => req.complete, reader: req.socket });
      res.once('finish', () => conn.idle());
    });
    limiter.start();
  }

  async stop(): Promise<void> {
    this.#o.connections?.stop();
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
    // Filled in as the request is understood; written to the audit log at the end when the
    // route changes something (`action`), whatever the outcome.
    const audit: { action?: string; op?: Operator; target?: string; details: Record<string, unknown>; err?: EdgefleetError } = { details: {} };
    try {
      const url = new URL(req.url ?? '/', 'http://hub');
      const allowed: string[] = [];
      for (const r of this.#routes) {
        const m = r.pattern.exec(url.pathname);
        if (!m) continue;
        allowed.push(r.method);
        if (r.method !== req.method) continue;
        audit.action = r.action;
        let ids: string[];
        try {
          ids = m.slice(1).map((x) => decodeURIComponent(x));
        } catch {
          throw new EdgefleetError(ErrorCode.BAD_INPUT, 'malformed path');
        }
        if (ids.length) audit.target = ids.join('/').slice(0, 256);
        let op: Operator | undefined;
        let device: string | undefined;
        if (r.auth === 'device') {
          device = await this.#o.deviceAuth.authenticate(req.headers.authorization, req.socket.remoteAddress ?? '');
          if (!device) throw new EdgefleetError(ErrorCode.UNAUTHORIZED, 'device credentials are required: Bearer <deviceId>:<token>');
          const peer = peerCertificate(req.socket);
          if (peer.verified && peer.cn !== device) throw new EdgefleetError(ErrorCode.UNAUTHORIZED, 'the client certificate CN must equal the device id');
        } else if (r.auth !== 'none') {
          op = await this.#o.auth.authenticate(req.headers.authorization, req.socket.remoteAddress ?? '');
          if (!op) throw new EdgefleetError(ErrorCode.UNAUTHORIZED, 'a valid bearer token is required');
          audit.op = op;
          if (!allows(op.role, r.auth)) throw new EdgefleetError(ErrorCode.FORBIDDEN, `this needs the ${r.auth} role; the token is ${op.role}`);
        }
        const note = (d: Record<string, unknown>): void => void Object.assign(audit.details, d);
        await r.handler(req, res, { id: ids[0], ids, query: url.searchParams, op, device, note });
        return;
      }
      if (allowed.length) {
        const message = `method ${req.method ?? '?'} not allowed on ${url.pathname}`;
        sendJson(res, 405, { error: { code: ErrorCode.BAD_INPUT, message } }, { allow: allowed.join(', ') });
        return;
      }
      throw new EdgefleetError(ErrorCode.NOT_FOUND, `no route ${url.pathname}`);
    } catch (err) {
      // A refused upload whose body is still arriving: drain a bounded amount so the client can
      // read the error; past the bound, cutting the connection beats reading it all.
      if (!req.complete) drainBounded(req, REFUSED_BODY_DRAIN_BYTES);
      const e = sendError(res, err);
      audit.err = e;
      const level = e.code === ErrorCode.INTERNAL || e.code === ErrorCode.STORAGE ? 'error' : 'debug';
      this.#o.log[level]({ err: e, method: req.method, url: redactBrokerSecret(req.url)?.slice(0, 256) }, 'api request failed');
    } finally {
      this.#o.log.trace({ method: req.method, url: redactBrokerSecret(req.url)?.slice(0, 256), status: res.statusCode, ms: Math.round(performance.now() - t0) }, 'api request');
      if (audit.action) await this.#audit(req, res.statusCode, audit);
    }
  }

  async #audit(req: IncomingMessage, status: number, a: { action?: string; op?: Operator; target?: string; details: Record<string, unknown>; err?: EdgefleetError }): Promise<void> {
    const denied = status === 401 || status === 403;
    const errDetails = a.err?.details && typeof a.err.details === 'object' ? a.err.details : {};
    // Routes without an operator token (enrollment) name their actor through note({ actor }).
    const { actor: noted, ...details } = a.details;
    await this.#o.audit.record({
      ts: this.#now(),
      actor: a.op?.name ?? (typeof noted === 'string' ? noted : 'anonymous'),
      actorId: a.op?.tokenId ?? null,
      role: a.op?.role ?? null,
      action: a.action ?? 'unknown',
      target: a.target ?? null,
      outcome: denied ? 'denied' : status < 400 ? 'ok' : 'failed',
      status,
      remote: req.socket.remoteAddress ?? null,
      details: { ...details, ...(a.err ? { error: a.err.message.slice(0, 256), ...errDetails } : {}) },
    });
  }

  async #createToken(req: IncomingMessage, res: ServerResponse, op: Operator | undefined, note: (d: Record<string, unknown>) => void): Promise<void> {
    const body = await readJson(req, z.unknown(), this.#o.maxBodyBytes);
    const t = await this.#o.security.createOperatorToken(requireOp(op), body);
    note({ tokenId: t.id, name: t.name, role: t.role });
    sendJson(res, 201, t, { 'cache-control': 'no-store' });
  }

  async #createEnrollmentToken(req: IncomingMessage, res: ServerResponse, op: Operator | undefined, note: (d: Record<string, unknown>) => void): Promise<void> {
    const body = await readJson(req, z.unknown(), this.#o.maxBodyBytes);
    const t = await this.#o.security.createEnrollmentToken(requireOp(op), body);
    note({ tokenId: t.id, group: t.group, maxUses: t.maxUses, expiresAt: t.expiresAt });
    sendJson(res, 201, t, { 'cache-control': 'no-store' });
  }

  async #enroll(req: IncomingMessage, res: ServerResponse, note: (d: Record<string, unknown>) => void): Promise<void> {
    const body = await readJson(req, z.unknown(), this.#o.maxBodyBytes);
    const claimed = (body as { id?: unknown } | null)?.id;
    const id = typeof claimed === 'string' ? claimed.slice(0, 64) : undefined;
    note({ actor: 'enrollment', ...(id ? { device: id } : {}) });
    const out = await this.#o.security.enroll(body, req.socket.remoteAddress ?? 'unknown');
    note({ actor: `enrollment:${out.tokenId}`, device: out.id, group: out.group });
    // The device's credential exists in plaintext only in this response.
    sendJson(res, 201, { id: out.id, kind: 'device', group: out.group, token: out.token }, { 'cache-control': 'no-store' });
  }

  async #auditQuery(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const parsed = AuditQuerySchema.safeParse(Object.fromEntries(query));
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
    const q = parsed.data;
    const entries = await this.#o.audit.query({
      since: q.since === undefined ? undefined : Date.parse(q.since),
      until: q.until === undefined ? undefined : Date.parse(q.until),
      actor: q.actor,
      action: q.action,
      outcome: q.outcome,
      before: q.before,
      limit: q.limit,
    });
    const last = entries[entries.length - 1];
    sendJson(res, 200, {
      entries: entries.map((e) => ({ ...e, at: new Date(e.ts).toISOString() })),
      next: entries.length === q.limit && last ? last.id : null,
    });
  }

  async #auditVerify(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const parsed = AuditVerifyQuerySchema.safeParse(Object.fromEntries(query));
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
    const { anchorId, anchorHash } = parsed.data;
    const result = await this.#o.audit.verify(anchorId === undefined || anchorHash === undefined ? undefined : { id: anchorId, hash: anchorHash });
    sendJson(res, 200, result);
  }

  /** JSON lines (shared/audit-chain.ts): a header, then every row with its hashes; written page by page, waiting for drain. */
  async #auditExport(res: ServerResponse): Promise<void> {
    res.writeHead(200, { 'content-type': 'application/x-ndjson; charset=utf-8', 'cache-control': 'no-store' });
    await this.#o.audit.export(async (chunk) => {
      if (res.destroyed) throw new EdgefleetError(ErrorCode.ABORTED, 'the client went away during the audit export');
      if (!res.write(chunk)) await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.once('drain', done);
        res.once('close', done);
      });
    });
    res.end();
  }

  #healthz(res: ServerResponse): Promise<void> {
    sendJson(res, 200, { ok: true });
    return Promise.resolve();
  }

  #openapi(res: ServerResponse): Promise<void> {
    // Built on first request (tens of ms of zod → JSON Schema), then kept for this server's life.
    this.#openapiText ??= JSON.stringify(buildOpenApiDocument());
    res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(this.#openapiText) });
    res.end(this.#openapiText);
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
    // On an external broker the principal is provisioned there first (issue #15).
    await this.#o.security.register({ id: body.id, kind: body.kind, deviceId: body.device ?? null }, token, async () =>
      this.#o.store.createPrincipal({
        id: body.id,
        kind: body.kind,
        group: body.group,
        labels: body.labels,
        deviceId: body.device,
        token: await hashToken(token),
        createdAt: this.#now(),
      }),
    );
    this.#o.log.info({ id: body.id, kind: body.kind, group: body.group }, 'principal registered');
    // The token exists in plaintext only in this response.
    sendJson(res, 201, { id: body.id, kind: body.kind, group: body.group, ...(body.device ? { device: body.device } : {}), token }, { 'cache-control': 'no-store' });
  }

  async #listDevices(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const q = parseDeviceListQuery(query);
    const page = await this.#o.store.queryDevices(q);
    const last = page.items[page.items.length - 1];
    sendJson(res, 200, { items: page.items.map(deviceView), nextCursor: page.more && last ? encodeDeviceCursor(last.id) : null, total: page.total });
  }

  async #getDevice(res: ServerResponse, id: string): Promise<void> {
    const d = await this.#o.store.getDevice(id);
    if (!d) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no device ${id}`);
    sendJson(res, 200, { ...deviceView(d), streams: d.streams, streamStats: await this.#o.store.streamStats(id) });
  }

  async #deviceHistory(res: ServerResponse, id: string): Promise<void> {
    const history = await this.#o.rollouts.history(id);
    sendJson(res, 200, { device: id, history: history.map((h) => ({ ...h, at: new Date(h.ts).toISOString() })) });
  }

  async #createRollout(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJson(req, z.unknown(), this.#o.maxBodyBytes);
    const status = await this.#o.rollouts.create(body);
    sendJson(res, 201, status, { location: `/v1/rollouts/${status.id}` });
  }

  async #telemetry(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const parsed = TelemetryQuerySchema.safeParse(Object.fromEntries(query));
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
    const q = parsed.data;
    const records = await this.#o.store.queryTelemetry({ deviceId: q.device, stream: q.stream, kind: q.kind, after: q.after, limit: q.limit });
    const last = records[records.length - 1];
    sendJson(res, 200, { records, next: records.length === q.limit && last ? last.cursor : null });
  }

  async #feedback(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.#o.feedback) throw new EdgefleetError(ErrorCode.NOT_FOUND, 'feedback is not enabled on this hub');
    const body = await readJson(req, FeedbackBatchSchema, this.#o.maxBodyBytes);
    sendJson(res, 200, await this.#o.feedback.submit(body.feedback, 'http'));
  }

  async #kpis(res: ServerResponse, query: URLSearchParams): Promise<void> {
    if (!this.#o.kpis) throw new EdgefleetError(ErrorCode.NOT_FOUND, 'KPIs are not enabled on this hub');
    const q = this.#o.kpis.parseQuery(query);
    const kpis = await this.#o.kpis.query(q);
    sendJson(res, 200, { from: new Date(q.from).toISOString(), to: new Date(q.to).toISOString(), windowMs: q.windowMs, kpis });
  }

  async #fleet(res: ServerResponse): Promise<void> {
    const t = await this.#o.store.fleetTotals();
    sendJson(res, 200, {
      devices: { total: t.devices, online: t.devicesOnline },
      sensors: { total: t.sensors, online: t.sensorsOnline },
      records: { stored: t.recordsStored, perSecondLastMinute: Math.round(this.#o.recordsPerSecond() * 100) / 100 },
    });
  }

  #keys(res: ServerResponse): Promise<void> {
    const { active, keys } = this.#o.models.trustedKeys();
    sendJson(res, 200, { active, keys: keys.map((k) => ({ keyId: k.keyId, alg: 'ed25519', publicKeyPem: k.publicKeyPem })) });
    return Promise.resolve();
  }

  async #announceModel(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readJson(
      req,
      ModelAnnounceSchema,
      this.#o.maxManifestBytes,
      'the manifest cap, hub config models.maxManifestBytes; large test vectors belong in a testVectorsFile (.npz) sidecar',
    );
    const p = await this.#o.models.announce(body.manifest);
    const base = `/v1/models/${encodeURIComponent(p.name)}/${encodeURIComponent(p.version)}`;
    const path = `${base}/artifact`;
    const vectors = p.testVectors ? { vectors: { method: 'PUT', path: `${base}/vectors`, ...p.testVectors } } : {};
    sendJson(res, 202, { name: p.name, version: p.version, artifact: { sha256: p.sha256, size: p.size }, upload: { method: 'PUT', path }, ...vectors }, { location: path });
  }

  async #uploadArtifact(req: IncomingMessage, res: ServerResponse, [name = '', version = '']: string[]): Promise<void> {
    const rec = await this.#o.models.upload(name, version, req, contentLength(req));
    sendJson(res, 201, { ...modelView(rec), release: storedRelease(rec) }, { location: `/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}` });
  }

  async #uploadVectors(req: IncomingMessage, res: ServerResponse, [name = '', version = '']: string[]): Promise<void> {
    sendJson(res, 201, await this.#o.models.uploadTestVectors(name, version, req, contentLength(req)));
  }

  async #listModels(res: ServerResponse): Promise<void> {
    sendJson(res, 200, { models: (await this.#o.models.list()).map(modelView) });
  }

  async #getModel(res: ServerResponse, [name = '', version = '']: string[]): Promise<void> {
    const m = await this.#o.models.get(name, version);
    if (!m) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no model ${name}@${version}`);
    sendJson(res, 200, { ...modelView(m), manifest: JSON.parse(m.manifest) as unknown, release: storedRelease(m) });
  }

  /**
   * Only artifacts of releases assigned to the device (hub/models/artifact-access.ts); any other
   * gets the same 404 as an unknown one, so a device cannot learn what exists.
   */
  async #artifact(req: IncomingMessage, res: ServerResponse, sha256: string, deviceId: string): Promise<void> {
    const a = (await this.#o.artifactAccess.allows(deviceId, sha256)) ? await this.#o.models.artifact(sha256) : undefined;
    if (!a) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no released artifact ${sha256.slice(0, 64)}`);
    await serveArtifact(req, res, a, (range) => this.#o.models.readArtifact(a.sha256, range));
  }
}

/** A request's declared Content-Length: undefined when absent; BAD_INPUT when malformed. */
function contentLength(req: IncomingMessage): number | undefined {
  const declared = req.headers['content-length'];
  const length = declared === undefined ? undefined : /^\d+$/.test(declared) ? Number(declared) : NaN;
  if (length !== undefined && !Number.isSafeInteger(length)) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'malformed Content-Length');
  return length;
}
