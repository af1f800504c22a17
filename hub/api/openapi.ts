/**
 * The OpenAPI 3.1 document of the hub's HTTP API (issue #7), served at GET /openapi.json and
 * committed as docs/openapi.json (`npm run openapi` regenerates it).
 *
 * One declarative list of operations (`apiOperations()`), generated into JSON Schema by zod 4's
 * own `z.toJSONSchema`. Request bodies and queries are the VERY zod schemas the server validates
 * with, imported from where they live, so the document cannot drift from validation; replies use
 * hub/api/schemas.ts. test/unit/openapi.test.ts holds the document to the server: every route of
 * ApiServer has exactly one operation here and every operation a route, the document is
 * structurally valid, documented `required` fields equal the zod schemas', live replies match,
 * and docs/openapi.json is current.
 *
 * Adding a route: one entry in `apiOperations()` (the test names routes that have none), e.g.
 *     { method: 'POST', path: '/v1/tokens/{id}/revoke', operationId: 'revokeOperatorToken', tags: ['security'],
 *       summary: 'Revoke an operator token at once', auth: 'admin', errors: [404],
 *       responses: { 200: json('Revoked', S.OperatorTokenSchema) } },
 * with `body:` / `query:` set to the zod schema the handler (or the service it calls) parses,
 * a reply schema in hub/api/schemas.ts, then `npm run openapi` and commit docs/openapi.json.
 * Path parameters are written `{name}` and described in PATH_PARAMS (add the name if new).
 *
 * Why things are as they are:
 * - The operations are built inside a function, not at module level: hub/api/server.ts imports
 *   this module (to serve the document) and this module imports server.ts's schemas, an ES
 *   module cycle that is harmless only while neither side touches the other at load time.
 * - Requests are converted with `io: 'input'` (defaults are optional to send, coerced query
 *   numbers), replies with `io: 'output'` (what the hub actually sends). A schema used on both
 *   sides (the release manifest) therefore gets two components: `Manifest` and `StoredManifest`.
 * - zod refinements (`superRefine`, `refine`) have no JSON Schema form: the document states the
 *   shape, the server still enforces the cross-field rules (e.g. a sensor needs `device`).
 * - Operator roles are not expressible in an HTTP bearer scheme: each operation carries
 *   `x-edgefleet-role` (viewer < operator < admin) and says it in its description.
 */
import { z } from 'zod';
import { ManifestSchema } from '../../shared/manifest.ts';
import { CreateEnrollmentTokenSchema, CreateOperatorTokenSchema, EnrollRequestSchema } from '../auth/security.ts';
import { AlertQuerySchema, DriftQuerySchema, SampleQuerySchema, SampleUploadQuerySchema } from '../drift/api.ts';
import { SampleUploadSchema } from '../drift/samples.ts';
import { FeedbackBatchSchema } from '../feedback/feedback.ts';
import { KpiQuerySchema } from '../kpis/service.ts';
import { RolloutSpecSchema } from '../rollouts/spec.ts';
import { DeviceListQuerySchema } from './device-list.ts';
import * as S from './schemas.ts';
import { RABBITMQ_CHECKS, VERNEMQ_HOOKS } from '../auth/broker-auth-http.ts';
import { AuditQuerySchema, AuditVerifyQuerySchema, CreateDeviceSchema, ModelAnnounceSchema, TelemetryQuerySchema } from './server.ts';

export type HttpMethod = 'GET' | 'HEAD' | 'POST' | 'PUT' | 'DELETE' | 'PATCH';
/** Who may call: nobody in particular, an operator token of at least that role, or a device. */
export type OperationAuth = 'none' | 'viewer' | 'operator' | 'admin' | 'device';

export interface ReplySpec {
  description: string;
  /** A JSON reply; omitted for replies without a body. */
  schema?: z.ZodType;
  /** A non-JSON reply: media type → JSON Schema of the body. */
  raw?: Record<string, Record<string, unknown>>;
}

export interface Operation {
  method: HttpMethod;
  /** Path template with `{param}`s, e.g. `/v1/devices/{id}`. */
  path: string;
  operationId: string;
  summary: string;
  description?: string;
  tags: string[];
  auth: OperationAuth;
  /** The zod schema the handler parses the query string with (a z.object). */
  query?: z.ZodObject;
  /** The zod schema the handler parses the JSON body with. */
  body?: z.ZodType;
  /** A non-JSON body (the raw artifact). */
  rawBody?: { mediaType: string; description: string };
  /** Success replies by status. */
  responses: Record<number, ReplySpec>;
  /** Error statuses beyond those implied by auth, query and body (401, 403, 400, 413). */
  errors?: number[];
}

export type OpenApiDocument = Record<string, unknown> & {
  openapi: string;
  paths: Record<string, Record<string, Record<string, unknown>>>;
  components: { schemas: Record<string, unknown>; securitySchemes: Record<string, unknown> };
};

/** Path parameters by name: the server matches each as one path segment (`[^/]+`). */
const PATH_PARAMS: Record<string, { description: string; schema: Record<string, unknown> }> = {
  id: { description: 'The resource id', schema: { type: 'string' } },
  deviceId: { description: 'The uploading device; must be the authenticated device', schema: { type: 'string' } },
  name: { description: 'Model name', schema: { type: 'string' } },
  version: { description: 'Model version (semver)', schema: { type: 'string' } },
  sha256: { description: 'The artifact sha256 (lowercase hex)', schema: { type: 'string', pattern: '^[0-9a-f]{64}$' } },
};

const ROLE_NOTE: Record<OperationAuth, string> = {
  none: 'No authentication.',
  viewer: 'Operator token, any role (viewer, operator, admin).',
  operator: 'Operator token with role operator or admin.',
  admin: 'Operator token with role admin.',
  device: 'Device credentials: `Authorization: Bearer <deviceId>:<token>`.',
};

const ERROR_TEXT: Record<number, string> = {
  400: 'Malformed or invalid input (`BAD_INPUT`, `BAD_MANIFEST`)',
  401: 'Missing or invalid credentials (`UNAUTHORIZED`)',
  403: 'Authenticated, but not allowed (`FORBIDDEN`)',
  404: 'No such resource, or the feature is disabled on this hub (`NOT_FOUND`)',
  409: 'Conflicts with the current state (`CONFLICT`, `ILLEGAL_STATE`)',
  413: 'Body too large (`PAYLOAD_TOO_LARGE`)',
  429: 'Too many requests; retry later (`OVERLOADED`)',
  422: 'The model does not load or does not match its manifest (`BAD_MODEL`)',
  507: 'Storage failure (`STORAGE`)',
};

const json = (description: string, schema: z.ZodType): ReplySpec => ({ description, schema });

/** Every operation of the HTTP API, in the order of ApiServer's route table. */
export function apiOperations(): Operation[] {
  return [
    { method: 'GET', path: '/healthz', operationId: 'healthz', summary: 'Liveness', tags: ['meta'], auth: 'none', responses: { 200: json('The hub is up', S.HealthzSchema) } },
    {
      method: 'GET',
      path: '/metrics',
      operationId: 'metrics',
      summary: 'Prometheus metrics of the hub',
      description: 'Needs no token when the hub runs with `http.publicMetrics: true`.',
      tags: ['meta'],
      auth: 'viewer',
      responses: { 200: { description: 'Prometheus text exposition format', raw: { 'text/plain': { type: 'string' } } } },
    },
    {
      method: 'GET',
      path: '/openapi.json',
      operationId: 'openapi',
      summary: 'This document',
      tags: ['meta'],
      auth: 'none',
      responses: { 200: { description: 'The OpenAPI 3.1 document of the API', raw: { 'application/json': { type: 'object' } } } },
    },
    {
      method: 'POST',
      path: '/v1/devices',
      operationId: 'createDevice',
      summary: 'Register a device, sensor or consumer',
      description: 'The reply holds the principal\'s MQTT/HTTP token; it is shown only here (`cache-control: no-store`). A sensor names the device whose inputs it feeds.',
      tags: ['devices'],
      auth: 'admin',
      body: CreateDeviceSchema,
      errors: [409],
      responses: { 201: json('Registered', S.CreatedPrincipalSchema) },
    },
    {
      method: 'GET',
      path: '/v1/devices',
      operationId: 'listDevices',
      summary: 'A page of devices, sensors and consumers with state and counters',
      description:
        'In id order, paged by an opaque cursor (keyset on the id, not an offset): pass `nextCursor` back as `cursor` with the same filters until it is null. ' +
        'Principals registered meanwhile with ids after the cursor are still reached; none is repeated. `total` counts every principal matching the filters. ' +
        'Filters combine (AND); a parameter other than `label` given twice is refused.',
      tags: ['devices'],
      auth: 'viewer',
      query: DeviceListQuerySchema,
      responses: { 200: json('One page of principals', S.DevicePageSchema) },
    },
    {
      method: 'GET',
      path: '/v1/devices/{id}',
      operationId: 'getDevice',
      summary: 'One device with stream positions and per-(stream, epoch) stats',
      tags: ['devices'],
      auth: 'viewer',
      errors: [404],
      responses: { 200: json('The device', S.DeviceDetailSchema) },
    },
    {
      method: 'POST',
      path: '/v1/devices/{id}/revoke',
      operationId: 'revokeDevice',
      summary: 'Revoke a device, sensor or consumer: refused from now on, disconnected at once',
      tags: ['security'],
      auth: 'admin',
      errors: [404],
      responses: { 200: json('Revoked', S.RevokedPrincipalSchema) },
    },
    { method: 'GET', path: '/v1/whoami', operationId: 'whoami', summary: "The caller's token name and role", tags: ['security'], auth: 'viewer', responses: { 200: json('The caller', S.WhoamiSchema) } },
    {
      method: 'POST',
      path: '/v1/tokens',
      operationId: 'createOperatorToken',
      summary: 'Create an operator API token with a role',
      description: 'The reply holds the token; it is shown only here (`cache-control: no-store`).',
      tags: ['security'],
      auth: 'admin',
      body: CreateOperatorTokenSchema,
      errors: [409],
      responses: { 201: json('Created', S.CreatedOperatorTokenSchema) },
    },
    { method: 'GET', path: '/v1/tokens', operationId: 'listOperatorTokens', summary: 'Operator tokens (never their secrets)', tags: ['security'], auth: 'admin', responses: { 200: json('Tokens', S.OperatorTokenListSchema) } },
    {
      method: 'POST',
      path: '/v1/tokens/{id}/revoke',
      operationId: 'revokeOperatorToken',
      summary: 'Revoke an operator token at once',
      tags: ['security'],
      auth: 'admin',
      errors: [404],
      responses: { 200: json('Revoked', S.OperatorTokenSchema) },
    },
    {
      method: 'POST',
      path: '/v1/enrollment-tokens',
      operationId: 'createEnrollmentToken',
      summary: 'Create an enrollment token that lets new devices of a group register themselves',
      description: 'One-time by default (`maxUses`), expiring (`ttlSeconds`). The reply holds the token; it is shown only here.',
      tags: ['security'],
      auth: 'admin',
      body: CreateEnrollmentTokenSchema,
      responses: { 201: json('Created', S.CreatedEnrollmentTokenSchema) },
    },
    { method: 'GET', path: '/v1/enrollment-tokens', operationId: 'listEnrollmentTokens', summary: 'Enrollment tokens with uses and state (never their secrets)', tags: ['security'], auth: 'admin', responses: { 200: json('Tokens', S.EnrollmentTokenListSchema) } },
    {
      method: 'POST',
      path: '/v1/enrollment-tokens/{id}/revoke',
      operationId: 'revokeEnrollmentToken',
      summary: 'Revoke an enrollment token',
      tags: ['security'],
      auth: 'admin',
      errors: [404],
      responses: { 200: json('Revoked', S.EnrollmentTokenSchema) },
    },
    {
      method: 'POST',
      path: '/v1/enroll',
      operationId: 'enroll',
      summary: 'A new device registers itself with an enrollment token and gets its own credential',
      description: 'Any refusal of the token is 401 without saying why; repeated failures from one address are 429 for a minute. The reply holds the device token; it is shown only here.',
      tags: ['security'],
      auth: 'none',
      body: EnrollRequestSchema,
      errors: [401, 409, 429],
      responses: { 201: json('Registered', S.CreatedPrincipalSchema) },
    },
    {
      method: 'GET',
      path: '/v1/audit',
      operationId: 'queryAudit',
      summary: 'The audit log of operator actions, enrollments and revocations, newest first',
      description: '`since`/`until`: ISO 8601 times; page with `before` = the previous page\'s `next`.',
      tags: ['security'],
      auth: 'admin',
      query: AuditQuerySchema,
      responses: { 200: json('A page of entries', S.AuditPageSchema) },
    },
    {
      method: 'GET',
      path: '/v1/audit/verify',
      operationId: 'verifyAudit',
      summary: "Checks the audit log's hash chain and reports ok or the first broken row and why",
      description: 'A deleted row shows as a gap in ids, an edited one as a hash mismatch. With `anchorId` and `anchorHash` (the head of an earlier export) the hub also checks that row still carries that hash, which catches a chain recomputed end to end.',
      tags: ['security'],
      auth: 'admin',
      query: AuditVerifyQuerySchema,
      responses: { 200: json('The verdict (200 also when the chain is broken: see ok)', S.AuditVerifySchema) },
    },
    {
      method: 'GET',
      path: '/v1/audit/export',
      operationId: 'exportAudit',
      summary: 'The whole audit log as JSON lines with its hashes, to verify offline',
      description: 'The first line is a header `{format, exportedAt, rows, head}`; each further line one row exactly as stored (`details` is the stored JSON text the hash covers). `edgefleet audit verify --file` checks it.',
      tags: ['security'],
      auth: 'admin',
      responses: { 200: { description: 'JSON lines', raw: { 'application/x-ndjson': { type: 'string' } } } },
    },
    { method: 'GET', path: '/v1/devices/{id}/history', operationId: 'getDeviceHistory', summary: "The device's append-only model history", tags: ['devices'], auth: 'viewer', responses: { 200: json('History, oldest first', S.DeviceHistorySchema) } },
    {
      method: 'POST',
      path: '/v1/rollouts',
      operationId: 'createRollout',
      summary: 'Start a staged rollout of a release',
      description: 'With `with`, further releases (other models, such as the stages of a chain) are installed with the release on each device as one unit: fitted and validated together, activated together, rolled back together. Gates and health follow `model`.',
      tags: ['rollouts'],
      auth: 'operator',
      body: RolloutSpecSchema,
      errors: [404],
      responses: { 201: json('Created; `Location` names it', S.RolloutStatusSchema) },
    },
    { method: 'GET', path: '/v1/rollouts', operationId: 'listRollouts', summary: 'Rollouts, newest first, with counts', tags: ['rollouts'], auth: 'viewer', responses: { 200: json('Rollouts', S.RolloutListSchema) } },
    {
      method: 'GET',
      path: '/v1/rollouts/{id}',
      operationId: 'getRollout',
      summary: 'Rollout status: state, waves, per-device states, gate results',
      tags: ['rollouts'],
      auth: 'viewer',
      errors: [404],
      responses: { 200: json('The rollout', S.RolloutStatusSchema) },
    },
    {
      method: 'POST',
      path: '/v1/rollouts/{id}/{action}',
      operationId: 'actOnRollout',
      summary: 'Pause, resume, abort or approve the next wave',
      tags: ['rollouts'],
      auth: 'operator',
      errors: [404, 409],
      responses: { 200: json('The rollout after the action', S.RolloutStatusSchema) },
    },
    {
      method: 'POST',
      path: '/v1/feedback',
      operationId: 'submitFeedback',
      summary: 'Ground truth for inference ids: a label, boxes (detection), values (regression) or alarm (anomaly)',
      tags: ['feedback'],
      auth: 'operator',
      body: FeedbackBatchSchema,
      errors: [404],
      responses: { 200: json('Outcome per item', S.FeedbackResultSchema) },
    },
    {
      method: 'GET',
      path: '/v1/kpis',
      operationId: 'getKpis',
      summary: 'KPIs per model version: accuracy, latency, error rate, uptime, CPU, cost; precision/recall, MAE/RMSE, alarm rate per task',
      description: '`from`/`to`: epoch ms or ISO 8601 (default: the last 24 h); `window`: accuracy window in ms (default 1 h).',
      tags: ['kpis'],
      auth: 'viewer',
      query: KpiQuerySchema,
      errors: [404],
      responses: { 200: json('KPIs', S.KpisSchema) },
    },
    {
      method: 'GET',
      path: '/v1/drift',
      operationId: 'getDrift',
      summary: 'Tested drift windows and findings per model version, scope and feature',
      tags: ['drift'],
      auth: 'viewer',
      query: DriftQuerySchema,
      errors: [404],
      responses: { 200: json('Windows and findings', S.DriftSchema) },
    },
    { method: 'GET', path: '/v1/alerts', operationId: 'listAlerts', summary: 'Drift alerts, newest first', tags: ['alerts'], auth: 'viewer', query: AlertQuerySchema, errors: [404], responses: { 200: json('Alerts', S.AlertListSchema) } },
    { method: 'GET', path: '/v1/alerts/{id}', operationId: 'getAlert', summary: 'One alert with its webhook deliveries', tags: ['alerts'], auth: 'viewer', errors: [404], responses: { 200: json('The alert', S.AlertDetailSchema) } },
    {
      method: 'POST',
      path: '/v1/alerts/{id}/{action}',
      operationId: 'actOnAlert',
      summary: 'Acknowledge or resolve an alert',
      tags: ['alerts'],
      auth: 'operator',
      errors: [404, 409],
      responses: { 200: json('The alert after the action', S.AlertSchema) },
    },
    {
      method: 'POST',
      path: '/v1/samples/{deviceId}',
      operationId: 'uploadSample',
      summary: "A device's input sample, after a `drift.sample` command",
      description: 'Only against the open sample request the command carries (`request`, in the query and/or the body): 403 without one (none, expired, already answered), 413 over the request\'s or the device\'s daily byte quota (issue #14).',
      tags: ['samples'],
      auth: 'device',
      query: SampleUploadQuerySchema,
      body: SampleUploadSchema,
      errors: [403, 404, 413],
      responses: { 201: json('Stored', S.SampleStoredSchema) },
    },
    { method: 'GET', path: '/v1/samples', operationId: 'listSamples', summary: 'Stored input samples, newest first', tags: ['samples'], auth: 'viewer', query: SampleQuerySchema, errors: [404], responses: { 200: json('Samples', S.SampleListSchema) } },
    {
      method: 'GET',
      path: '/v1/telemetry',
      operationId: 'listTelemetry',
      summary: 'Stored telemetry records, paged by cursor',
      tags: ['telemetry'],
      auth: 'viewer',
      query: TelemetryQuerySchema,
      responses: { 200: json('A page of records; pass `next` as `after`', S.TelemetryPageSchema) },
    },
    { method: 'GET', path: '/v1/fleet', operationId: 'getFleet', summary: 'Fleet totals and records/s over the last minute', tags: ['telemetry'], auth: 'viewer', responses: { 200: json('Totals', S.FleetSchema) } },
    { method: 'GET', path: '/v1/keys', operationId: 'listSigningKeys', summary: 'Public keys that sign model releases (agents trust these)', tags: ['models'], auth: 'viewer', responses: { 200: json('Keys', S.KeysSchema) } },
    {
      method: 'POST',
      path: '/v1/models',
      operationId: 'announceModel',
      summary: 'Announce a release by its manifest; PUT its artifact next',
      tags: ['models'],
      auth: 'operator',
      body: ModelAnnounceSchema.extend({ manifest: ManifestSchema }),
      errors: [409],
      responses: { 202: json('Accepted; `upload` (and `Location`) say where to PUT the artifact', S.AnnouncedModelSchema) },
    },
    { method: 'GET', path: '/v1/models', operationId: 'listModels', summary: 'Released model versions, newest first', tags: ['models'], auth: 'viewer', responses: { 200: json('Releases', S.ModelListSchema) } },
    {
      method: 'GET',
      path: '/v1/models/{name}/{version}',
      operationId: 'getModel',
      summary: 'A release: manifest and signed release envelope',
      tags: ['models'],
      auth: 'viewer',
      errors: [404],
      responses: { 200: json('The release', S.ModelDetailSchema) },
    },
    {
      method: 'PUT',
      path: '/v1/models/{name}/{version}/vectors',
      operationId: 'uploadModelTestVectors',
      summary: 'Upload the test-vector sidecar (.npz) the announced manifest names in testVectorsFile; before the artifact',
      tags: ['models'],
      auth: 'operator',
      rawBody: { mediaType: 'application/octet-stream', description: 'The .npz bytes; size and sha256 must match the manifest\'s testVectorsFile' },
      errors: [400, 404, 409, 413],
      responses: { 201: json('Stored', S.StoredVectorsSchema) },
    },
    {
      method: 'PUT',
      path: '/v1/models/{name}/{version}/artifact',
      operationId: 'uploadModelArtifact',
      summary: 'Upload the announced ONNX artifact (streamed); the hub checks, probes, signs and stores it',
      tags: ['models'],
      auth: 'operator',
      rawBody: { mediaType: 'application/octet-stream', description: 'The raw ONNX bytes; size and sha256 must match the announced manifest' },
      errors: [400, 404, 409, 413, 422],
      responses: { 201: json('Released; `Location` names it', S.ReleasedModelSchema) },
    },
    {
      method: 'GET',
      path: '/v1/artifacts/{sha256}',
      operationId: 'downloadArtifact',
      summary: 'Artifact bytes for devices, with Range / If-Range / If-None-Match',
      description: 'Only the files (model, test-vector sidecar) of releases assigned to the device: its rollout wave, its installed versions. Any other is the 404 of an unknown artifact (issue #14).',
      tags: ['artifacts'],
      auth: 'device',
      errors: [404],
      responses: {
        200: { description: 'The whole artifact', raw: { 'application/octet-stream': {} } },
        206: { description: 'The requested byte range (`Content-Range`)', raw: { 'application/octet-stream': {} } },
        304: { description: 'Not modified (the ETag is the sha256)' },
        416: { description: 'Range not satisfiable' },
      },
    },
    {
      method: 'HEAD',
      path: '/v1/artifacts/{sha256}',
      operationId: 'headArtifact',
      summary: 'Artifact headers (size, ETag) without the bytes',
      tags: ['artifacts'],
      auth: 'device',
      errors: [404],
      responses: { 200: { description: 'Headers of the whole artifact' } },
    },
    ...brokerAuthOperations(),
  ];
}

const BROKER_SECRET_NOTE =
  'For external MQTT brokers (issue #15; README "External brokers: HTTP auth endpoint"), not operators: the shared secret of hub config `brokerAuth.secretFile` as ' +
  '`Authorization: Bearer <secret>`, as the password of `Authorization: Basic`, or as the query parameter `key`. Without it: 401 with a refusal in the broker\'s shape. ' +
  'A malformed body is a refusal with 400; 404 when brokerAuth is disabled. Decisions come from the hub\'s principals and ACL (hub/broker/acl.ts).';

/** The broker auth endpoint (hub/auth/broker-auth-http.ts): request bodies are the brokers' own, described rather than schema'd (brokers add fields between versions). */
function brokerAuthOperations(): Operation[] {
  const refusals = { 401: { description: 'Wrong or missing broker secret (a refusal in the broker\'s shape)' }, 400: { description: 'Malformed request (a refusal in the broker\'s shape)' }, 404: { description: 'brokerAuth is disabled on this hub' } };
  const jsonReply = (description: string): ReplySpec => ({ description, raw: { 'application/json': { type: 'object' } } });
  const rabbit = (method: HttpMethod): Operation => ({
    method,
    path: '/v1/broker-auth/rabbitmq/{check}',
    operationId: method === 'GET' ? 'rabbitmqAuthGet' : 'rabbitmqAuthPost',
    summary: `RabbitMQ rabbitmq_auth_backend_http (auth_http.http_method = ${method.toLowerCase()})`,
    description: `${BROKER_SECRET_NOTE} Parameters as rabbitmq_auth_backend_http sends them (${method === 'GET' ? 'query string' : 'form body'}): user (username, password, client_id), vhost (username, vhost, ip), resource (username, vhost, resource, name, permission), topic (… routing_key, variable_map.client_id).`,
    tags: ['broker-auth'],
    auth: 'none',
    ...(method === 'POST' ? { rawBody: { mediaType: 'application/x-www-form-urlencoded', description: 'The check\'s parameters' } } : {}),
    responses: { 200: { description: '`allow` or `deny` (text)', raw: { 'text/plain': { type: 'string', enum: ['allow', 'deny'] } } }, ...refusals },
  });
  return [
    {
      method: 'POST',
      path: '/v1/broker-auth/emqx/{check}',
      operationId: 'emqxAuth',
      summary: 'EMQX 5 HTTP authentication (authn) and authorization (authz)',
      description: `${BROKER_SECRET_NOTE} authn: {clientid, username, password, peerhost} → {result: allow|deny, is_superuser: false}; authz: {clientid, username, topic, action: publish|subscribe, qos, retain} → {result: allow|deny}.`,
      tags: ['broker-auth'],
      auth: 'none',
      rawBody: { mediaType: 'application/json', description: 'The body template of the EMQX authenticator or authorization source' },
      responses: { 200: jsonReply('The decision'), ...refusals },
    },
    {
      method: 'POST',
      path: '/v1/broker-auth/vernemq/{hook}',
      operationId: 'vernemqWebhook',
      summary: 'VerneMQ webhooks (vmq_webhooks): auth_on_register, auth_on_publish, auth_on_subscribe and their _m5 forms',
      description: `${BROKER_SECRET_NOTE} {result: "ok"} or {result: {error: "not_allowed"}}; a subscribe with refused filters is ok with those filters at qos 128 (135 for _m5).`,
      tags: ['broker-auth'],
      auth: 'none',
      rawBody: { mediaType: 'application/json', description: 'The webhook payload VerneMQ posts' },
      responses: { 200: jsonReply('The decision'), ...refusals },
    },
    rabbit('GET'),
    rabbit('POST'),
  ];
}

/** Path parameters with a fixed set of values (the route regex alternatives). */
const ENUM_PARAMS: Record<string, Record<string, string[]>> = {
  '/v1/rollouts/{id}/{action}': { action: ['pause', 'resume', 'abort', 'approve'] },
  '/v1/alerts/{id}/{action}': { action: ['ack', 'resolve'] },
  '/v1/broker-auth/emqx/{check}': { check: ['authn', 'authz'] },
  '/v1/broker-auth/vernemq/{hook}': { hook: [...VERNEMQ_HOOKS] },
  '/v1/broker-auth/rabbitmq/{check}': { check: [...RABBITMQ_CHECKS] },
};

/** `{name}`s of a path template, in order. */
export function pathParams(path: string): string[] {
  return [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1] as string);
}

/**
 * Drops what only adds noise for a reader: the ±MAX_SAFE_INTEGER bounds zod puts on every
 * `.int()`, and the long regex beside `format: date-time` (the format says it).
 */
function tidy(ctx: { jsonSchema: Record<string, unknown> }): void {
  const j = ctx.jsonSchema;
  if (j.minimum === Number.MIN_SAFE_INTEGER) delete j.minimum;
  if (j.maximum === Number.MAX_SAFE_INTEGER) delete j.maximum;
  if (j.format === 'date-time') delete j.pattern;
}

/** Components a conversion pass produced, without the per-document keys OpenAPI does not want. */
function convertRegistry(registry: z.core.$ZodRegistry<{ id: string }>, io: 'input' | 'output'): Record<string, unknown> {
  const out = z.toJSONSchema(registry, { io, uri: (id) => `#/components/schemas/${id}`, unrepresentable: 'any', override: tidy });
  const schemas: Record<string, unknown> = {};
  for (const [id, s] of Object.entries(out.schemas)) {
    const { $schema: _schema, $id: _id, ...rest } = s as Record<string, unknown>;
    schemas[id] = rest;
  }
  return schemas;
}

const cap = (s: string): string => s.charAt(0).toUpperCase() + s.slice(1);

/** Builds the whole document from `apiOperations()`; deterministic (docs/openapi.json is compared byte for byte). */
export function buildOpenApiDocument(operations: Operation[] = apiOperations()): OpenApiDocument {
  const requests = z.registry<{ id: string }>();
  const replies = z.registry<{ id: string }>();
  // Named components first, so nested uses become $refs rather than copies.
  requests.add(ManifestSchema, { id: 'Manifest' });
  const named: [z.ZodType, string][] = [
    [S.ErrorReplySchema, 'Error'],
    [S.DeviceSchema, 'Device'],
    [S.ModelSchema, 'Model'],
    [S.RolloutStatusSchema, 'RolloutStatus'],
    [S.AlertSchema, 'Alert'],
    [ManifestSchema, 'StoredManifest'],
  ];
  for (const [schema, id] of named) replies.add(schema, { id });
  const refOf = (registry: typeof requests, schema: z.ZodType, fallback: string): { $ref: string } => {
    let id = registry.get(schema)?.id;
    if (id === undefined) {
      id = fallback;
      registry.add(schema, { id });
    }
    return { $ref: `#/components/schemas/${id}` };
  };

  const paths: OpenApiDocument['paths'] = {};
  for (const op of operations) {
    const o: Record<string, unknown> = {
      operationId: op.operationId,
      summary: op.summary,
      description: [op.description, ROLE_NOTE[op.auth]].filter(Boolean).join('\n\n'),
      tags: op.tags,
    };
    if (op.auth === 'none') o.security = [];
    else if (op.auth === 'device') o.security = [{ deviceToken: [] }];
    else o.security = [{ operatorToken: [] }];
    o['x-edgefleet-role'] = op.auth;

    const parameters: Record<string, unknown>[] = pathParams(op.path).map((name) => {
      const values = ENUM_PARAMS[op.path]?.[name];
      const p = PATH_PARAMS[name];
      if (!values && !p) throw new Error(`openapi: path parameter {${name}} of ${op.path} is not described in PATH_PARAMS`);
      return { name, in: 'path', required: true, description: p?.description ?? `One of ${values?.join(', ')}`, schema: values ? { type: 'string', enum: values } : p?.schema };
    });
    if (op.query) {
      const q = z.toJSONSchema(op.query, { io: 'input', unrepresentable: 'any', override: tidy }) as { properties?: Record<string, unknown>; required?: string[] };
      for (const [name, schema] of Object.entries(q.properties ?? {})) {
        parameters.push({ name, in: 'query', required: (q.required ?? []).includes(name), schema });
      }
    }
    if (parameters.length) o.parameters = parameters;

    if (op.body) o.requestBody = { required: true, content: { 'application/json': { schema: refOf(requests, op.body, `${cap(op.operationId)}Request`) } } };
    else if (op.rawBody) o.requestBody = { required: true, description: op.rawBody.description, content: { [op.rawBody.mediaType]: {} } };

    const responses: Record<string, unknown> = {};
    for (const [status, r] of Object.entries(op.responses)) {
      const content = r.schema ? { 'application/json': { schema: refOf(replies, r.schema, `${cap(op.operationId)}Reply`) } } : r.raw ? Object.fromEntries(Object.entries(r.raw).map(([t, schema]) => [t, Object.keys(schema).length ? { schema } : {}])) : undefined;
      responses[status] = { description: r.description, ...(content ? { content } : {}) };
    }
    const errors = new Set(op.errors ?? []);
    if (op.auth !== 'none') errors.add(401);
    if (op.auth === 'operator' || op.auth === 'admin' || op.auth === 'device') errors.add(403);
    if (op.query || op.body) errors.add(400);
    if (op.body || op.rawBody) errors.add(413);
    for (const status of [...errors].sort((a, b) => a - b)) {
      responses[status] = { description: ERROR_TEXT[status] ?? 'Error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
    }
    o.responses = responses;

    const item = (paths[op.path] ??= {});
    const method = op.method.toLowerCase();
    if (item[method]) throw new Error(`openapi: ${op.method} ${op.path} is listed twice`);
    item[method] = o;
  }

  const requestSchemas = convertRegistry(requests, 'input');
  const replySchemas = convertRegistry(replies, 'output');
  for (const id of Object.keys(requestSchemas)) if (id in replySchemas) throw new Error(`openapi: component ${id} is both a request and a reply schema`);
  const schemas = Object.fromEntries(Object.entries({ ...requestSchemas, ...replySchemas }).sort(([a], [b]) => a.localeCompare(b)));

  const tags = [...new Set(operations.flatMap((op) => op.tags))].sort().map((name) => ({ name }));
  return {
    openapi: '3.1.0',
    info: {
      title: 'edgefleet hub API',
      version: '1',
      description:
        'HTTP API of the edgefleet hub: device registry, telemetry, model releases, staged rollouts, feedback and KPIs, drift and alerts. ' +
        'Errors are `{ "error": { "code", "message" } }` with the status of the code. Generated from the zod schemas the server validates with (hub/api/openapi.ts).',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    tags,
    paths,
    components: {
      schemas,
      securitySchemes: {
        operatorToken: { type: 'http', scheme: 'bearer', bearerFormat: '<tokenId>.<secret>', description: 'Operator API token; its role (viewer, operator, admin) decides what it may do.' },
        deviceToken: { type: 'http', scheme: 'bearer', bearerFormat: '<deviceId>:<token>', description: 'A registered device\'s id and token (the token from POST /v1/devices).' },
      },
    },
  };
}

/** The committed form of the document (docs/openapi.json). */
export function formatOpenApi(doc: OpenApiDocument): string {
  return `${JSON.stringify(doc, null, 2)}\n`;
}
