/**
 * The OpenAPI check (issue #7): hub/api/openapi.ts against the server it documents.
 *  (a) every route of a live hub's ApiServer has exactly one operation, every operation hits a
 *      route (its template filled with sample values, run through the route regexes in table
 *      order, as the router does), with the same auth and as many path parameters as captures;
 *  (b) the document is structurally valid OpenAPI 3.1 (required fields, unique operationIds,
 *      declared path parameters, resolvable $refs, known security schemes and tags);
 *  (c) request schemas are the server's: the very zod objects, the same required fields and
 *      query names, and sample bodies refused by zod are refused by the document's JSON Schema
 *      (a small validator below: no JSON Schema library is a dependency of this project);
 *  (d) the live hub serves /openapi.json without a token, equal to the generated document;
 *      live replies (successes and errors) validate against the document, which refuses fields
 *      it does not list; docs/openapi.json is current.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { z } from 'zod';
import { apiOperations, buildOpenApiDocument, formatOpenApi, pathParams, type OpenApiDocument } from '../../hub/api/openapi.ts';
import { AuditQuerySchema, CreateDeviceSchema, TelemetryQuerySchema } from '../../hub/api/server.ts';
import { CreateEnrollmentTokenSchema, CreateOperatorTokenSchema, EnrollRequestSchema } from '../../hub/auth/security.ts';
import { SampleUploadSchema } from '../../hub/drift/samples.ts';
import { FeedbackBatchSchema } from '../../hub/feedback/feedback.ts';
import { KpiQuerySchema } from '../../hub/kpis/service.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { RolloutSpecSchema } from '../../hub/rollouts/spec.ts';
import { silentLogger } from '../../shared/log.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { makeModels } from '../../scripts/make-models.ts';

/**
 * Routes that are not part of the JSON API and so not in the document: the dashboard's page and
 * static assets (hub/ui). A route is excluded when it matches one of these requests.
 */
const NON_API_REQUESTS: { method: string; path: string }[] = [
  { method: 'GET', path: '/' },
  { method: 'HEAD', path: '/' },
  { method: 'GET', path: '/ui' },
  { method: 'GET', path: '/ui/' },
  { method: 'GET', path: '/ui/app.js' },
  { method: 'HEAD', path: '/ui/app.js' },
];

/** Route auth before roles (read/write) maps onto the document's roles. */
const LEGACY_AUTH: Record<string, string> = { read: 'viewer', write: 'operator' };

const doc = buildOpenApiDocument();
type Json = Record<string, unknown>;
type Op = Json & { operationId: string; parameters?: Json[]; responses: Record<string, Json>; security?: Json[]; tags?: string[] };
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

function operations(d: OpenApiDocument): { method: string; path: string; op: Op }[] {
  return Object.entries(d.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([m]) => METHODS.includes(m))
      .map(([m, op]) => ({ method: m.toUpperCase(), path, op: op as Op })),
  );
}

function resolveRef(ref: string): Json {
  assert.ok(ref.startsWith('#/'), `only local $refs: ${ref}`);
  let node: unknown = doc;
  for (const part of ref.slice(2).split('/')) node = (node as Json | undefined)?.[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  assert.ok(node && typeof node === 'object', `$ref ${ref} does not resolve`);
  return node as Json;
}

// ---- a small JSON Schema (2020-12) validator for the keywords zod emits ------------------------

const ANNOTATIONS = new Set(['description', 'default', 'title', 'examples', 'format', '$comment', 'readOnly', 'writeOnly', 'deprecated', 'contentMediaType']);
const ASSERTIONS = new Set([
  '$ref', 'type', 'enum', 'const', 'properties', 'required', 'additionalProperties', 'propertyNames', 'items', 'prefixItems', 'minItems', 'maxItems',
  'minLength', 'maxLength', 'pattern', 'minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'anyOf', 'oneOf', 'allOf', 'not', 'multipleOf',
]);

function typeOk(t: string, v: unknown): boolean {
  switch (t) {
    case 'null': return v === null;
    case 'boolean': return typeof v === 'boolean';
    case 'string': return typeof v === 'string';
    case 'number': return typeof v === 'number' && Number.isFinite(v);
    case 'integer': return Number.isInteger(v);
    case 'array': return Array.isArray(v);
    case 'object': return typeof v === 'object' && v !== null && !Array.isArray(v);
    default: throw new Error(`unknown type ${t}`);
  }
}

/** Errors of `v` against `s` (empty: valid). Throws on a keyword it does not know, so nothing is skipped silently. */
function validate(s: unknown, v: unknown, at = '$'): string[] {
  if (s === true || (typeof s === 'object' && s !== null && Object.keys(s).length === 0)) return [];
  if (s === false) return [`${at}: nothing is allowed here`];
  const schema = s as Json;
  for (const k of Object.keys(schema)) if (!ANNOTATIONS.has(k) && !ASSERTIONS.has(k)) throw new Error(`validator does not know keyword ${k} (at ${at})`);
  const errs: string[] = [];
  if (typeof schema.$ref === 'string') errs.push(...validate(resolveRef(schema.$ref), v, at));
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? (schema.type as string[]) : [schema.type as string];
    if (!types.some((t) => typeOk(t, v))) return [...errs, `${at}: expected ${types.join('|')}, got ${JSON.stringify(v)?.slice(0, 60)}`];
  }
  if (schema.enum !== undefined && !(schema.enum as unknown[]).some((e) => JSON.stringify(e) === JSON.stringify(v))) errs.push(`${at}: not one of ${JSON.stringify(schema.enum)}`);
  if ('const' in schema && JSON.stringify(schema.const) !== JSON.stringify(v)) errs.push(`${at}: must be ${JSON.stringify(schema.const)}`);
  if (schema.format === 'date-time' && typeof v === 'string' && !(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(v) && Number.isFinite(Date.parse(v)))) errs.push(`${at}: not a date-time`);
  if (typeof v === 'string') {
    if (typeof schema.minLength === 'number' && [...v].length < schema.minLength) errs.push(`${at}: shorter than ${schema.minLength}`);
    if (typeof schema.maxLength === 'number' && [...v].length > schema.maxLength) errs.push(`${at}: longer than ${schema.maxLength}`);
    if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern, 'u').test(v)) errs.push(`${at}: does not match ${schema.pattern}`);
  }
  if (typeof v === 'number') {
    if (typeof schema.minimum === 'number' && v < schema.minimum) errs.push(`${at}: < ${schema.minimum}`);
    if (typeof schema.maximum === 'number' && v > schema.maximum) errs.push(`${at}: > ${schema.maximum}`);
    if (typeof schema.exclusiveMinimum === 'number' && v <= schema.exclusiveMinimum) errs.push(`${at}: <= ${schema.exclusiveMinimum}`);
    if (typeof schema.exclusiveMaximum === 'number' && v >= schema.exclusiveMaximum) errs.push(`${at}: >= ${schema.exclusiveMaximum}`);
    if (typeof schema.multipleOf === 'number' && !Number.isInteger(v / schema.multipleOf)) errs.push(`${at}: not a multiple of ${schema.multipleOf}`);
  }
  if (Array.isArray(v)) {
    if (typeof schema.minItems === 'number' && v.length < schema.minItems) errs.push(`${at}: fewer than ${schema.minItems} items`);
    if (typeof schema.maxItems === 'number' && v.length > schema.maxItems) errs.push(`${at}: more than ${schema.maxItems} items`);
    const prefix = (schema.prefixItems as unknown[] | undefined) ?? [];
    v.forEach((item, i) => {
      if (i < prefix.length) errs.push(...validate(prefix[i], item, `${at}[${i}]`));
      else if (schema.items !== undefined) errs.push(...validate(schema.items, item, `${at}[${i}]`));
    });
  }
  if (typeOk('object', v)) {
    const obj = v as Json;
    const props = (schema.properties as Json | undefined) ?? {};
    for (const r of (schema.required as string[] | undefined) ?? []) if (!(r in obj)) errs.push(`${at}: missing ${r}`);
    for (const [k, x] of Object.entries(obj)) {
      if (schema.propertyNames !== undefined) errs.push(...validate(schema.propertyNames, k, `${at} key ${k}`));
      if (k in props) errs.push(...validate(props[k], x, `${at}.${k}`));
      else if (schema.additionalProperties !== undefined) errs.push(...validate(schema.additionalProperties, x, `${at}.${k}`));
    }
  }
  if (Array.isArray(schema.allOf)) for (const sub of schema.allOf) errs.push(...validate(sub, v, at));
  if (Array.isArray(schema.anyOf) && !schema.anyOf.some((sub) => validate(sub, v, at).length === 0)) errs.push(`${at}: matches none of anyOf`);
  if (Array.isArray(schema.oneOf) && schema.oneOf.filter((sub) => validate(sub, v, at).length === 0).length !== 1) errs.push(`${at}: does not match exactly one of oneOf`);
  if (schema.not !== undefined && validate(schema.not, v, at).length === 0) errs.push(`${at}: matches not`);
  return errs;
}

function findOp(operationId: string): { method: string; path: string; op: Op } {
  const found = operations(doc).find((o) => o.op.operationId === operationId);
  assert.ok(found, `no operation ${operationId}`);
  return found;
}

function bodySchema(operationId: string): Json {
  const rb = findOp(operationId).op.requestBody as { content: Record<string, { schema: Json }> } | undefined;
  const schema = rb?.content['application/json']?.schema;
  assert.ok(schema, `${operationId} has no JSON body`);
  return schema;
}

/** Sample value of a path parameter, enum alternatives expanded. */
function sampleValues(param: Json | undefined): string[] {
  const schema = (param?.schema ?? {}) as { enum?: string[]; pattern?: string };
  if (schema.enum) return schema.enum;
  if (schema.pattern === '^[0-9a-f]{64}$') return ['ab'.repeat(32)];
  return ['sample-1'];
}

function samplePaths(path: string, params: Json[]): string[] {
  let out = [path];
  for (const name of pathParams(path)) {
    const values = sampleValues(params.find((p) => p.in === 'path' && p.name === name));
    out = out.flatMap((p) => values.map((v) => p.replace(`{${name}}`, encodeURIComponent(v))));
  }
  return out;
}

/** The demo tabular model's manifest and ONNX bytes (models/, generated when missing). */
async function demoModel(): Promise<{ manifest: Json; bytes: Buffer }> {
  const dir = join(REPO_ROOT, 'models');
  await makeModels({ outDir: dir });
  return { manifest: JSON.parse(readFileSync(join(dir, 'machine-state.manifest.json'), 'utf8')) as Json, bytes: readFileSync(join(dir, 'machine-state.onnx')) };
}

describe('OpenAPI document', () => {
  let hub: Hub;
  let root: string;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'ef-openapi-'));
    const config = loadHubConfig({ overrides: { dataDir: join(root, 'hub'), mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } } });
    hub = await createHub(config, { log: silentLogger() });
    await hub.start(new AbortController().signal);
  });

  after(async () => {
    if (hub) await hub.stop();
    rmSync(root, { recursive: true, force: true });
  });

  test('(a) every API route has exactly one operation and every operation a route, with the same auth', () => {
    const isApi = (r: { method: string; pattern: RegExp }): boolean => !NON_API_REQUESTS.some((q) => q.method === r.method && r.pattern.test(q.path));
    const routes = hub.api.routes.filter(isApi);
    assert.ok(routes.length >= 25, `expected the whole route table, got ${routes.length}`);
    const hits = new Map<number, string[]>();
    for (const { method, path, op } of operations(doc)) {
      const chosen = new Set<number>();
      for (const sample of samplePaths(path, op.parameters ?? [])) {
        // The router takes the first route whose pattern and method match.
        const i = hub.api.routes.findIndex((r) => r.method === method && r.pattern.test(sample));
        assert.ok(i >= 0, `${method} ${path} (${op.operationId}): no route serves ${method} ${sample}`);
        chosen.add(i);
      }
      assert.equal(chosen.size, 1, `${op.operationId}: its samples reach ${chosen.size} different routes`);
      const i = [...chosen][0] as number;
      const route = hub.api.routes[i]!;
      assert.ok(isApi(route), `${op.operationId} documents a non-API route`);
      hits.set(i, [...(hits.get(i) ?? []), op.operationId]);
      const auth = LEGACY_AUTH[route.auth] ?? route.auth;
      assert.equal(op['x-edgefleet-role'], auth, `${op.operationId}: documented auth differs from the route's`);
      const captures = (new RegExp(`${route.pattern.source}|`).exec('')?.length ?? 1) - 1;
      assert.equal(pathParams(path).length, captures, `${op.operationId}: ${pathParams(path).length} path parameters, the route captures ${captures}`);
    }
    // Every problem at once: a new route table usually adds several routes.
    const problems = [...hub.api.routes.entries()]
      .filter(([i, r]) => isApi(r) && (hits.get(i) ?? []).length !== 1)
      .map(([i, r]) => `route ${r.method} ${String(r.pattern)} has ${(hits.get(i) ?? []).length} operations (${hits.get(i)?.join(', ') ?? 'none: add it to apiOperations() in hub/api/openapi.ts'})`);
    assert.deepEqual(problems, []);
  });

  test('(b) the document is structurally valid OpenAPI 3.1', () => {
    assert.equal(doc.openapi, '3.1.0');
    const info = doc.info as Json;
    assert.equal(typeof info.title, 'string');
    assert.equal(typeof info.version, 'string');
    const schemes = doc.components.securitySchemes;
    const tags = new Set(((doc.tags as Json[] | undefined) ?? []).map((t) => t.name));
    const ids = new Set<string>();
    for (const { method, path, op } of operations(doc)) {
      const where = `${method} ${path}`;
      assert.ok(path.startsWith('/'), `${where}: path must start with /`);
      assert.match(op.operationId, /^[A-Za-z][A-Za-z0-9]*$/, where);
      assert.ok(!ids.has(op.operationId), `duplicate operationId ${op.operationId}`);
      ids.add(op.operationId);
      const params = op.parameters ?? [];
      const keys = params.map((p) => `${String(p.in)}:${String(p.name)}`);
      assert.equal(new Set(keys).size, keys.length, `${where}: duplicate parameters`);
      for (const p of params) {
        assert.ok(['path', 'query', 'header', 'cookie'].includes(p.in as string), `${where}: parameter in ${String(p.in)}`);
        assert.ok(p.schema || p.content, `${where}: parameter ${String(p.name)} has no schema`);
      }
      const declared = params.filter((p) => p.in === 'path');
      assert.deepEqual(declared.map((p) => p.name).sort(), pathParams(path).sort(), `${where}: path parameters must be exactly the template's`);
      for (const p of declared) assert.equal(p.required, true, `${where}: path parameter ${String(p.name)} must be required`);
      assert.ok(Object.keys(op.responses).length > 0, `${where}: no responses`);
      for (const [status, r] of Object.entries(op.responses)) {
        assert.match(status, /^([1-5]\d\d|[1-5]XX|default)$/, `${where}: status ${status}`);
        assert.equal(typeof r.description, 'string', `${where} ${status}: description is required`);
      }
      for (const req of op.security ?? []) for (const name of Object.keys(req)) assert.ok(name in schemes, `${where}: unknown security scheme ${name}`);
      for (const t of op.tags ?? []) assert.ok(tags.has(t), `${where}: tag ${t} not declared`);
    }
    // Every $ref anywhere resolves.
    let refs = 0;
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node && typeof node === 'object') {
        for (const [k, v] of Object.entries(node)) {
          if (k === '$ref' && typeof v === 'string') {
            refs++;
            resolveRef(v);
          } else walk(v);
        }
      }
    };
    walk(doc);
    assert.ok(refs > 50, `expected shared components to be referenced, found ${refs} $refs`);
  });

  test('(c) request schemas are the server\'s: same objects, required fields and query names; refused samples are refused by the document too', async () => {
    const ops = new Map(apiOperations().map((o) => [o.operationId, o]));
    // The very schemas the server parses with (not copies).
    assert.equal(ops.get('createDevice')?.body, CreateDeviceSchema);
    assert.equal(ops.get('createRollout')?.body, RolloutSpecSchema);
    assert.equal(ops.get('submitFeedback')?.body, FeedbackBatchSchema);
    assert.equal(ops.get('uploadSample')?.body, SampleUploadSchema);
    assert.equal(ops.get('listTelemetry')?.query, TelemetryQuerySchema);
    assert.equal(ops.get('getKpis')?.query, KpiQuerySchema);
    assert.equal(ops.get('queryAudit')?.query, AuditQuerySchema);
    assert.equal(ops.get('createOperatorToken')?.body, CreateOperatorTokenSchema);
    assert.equal(ops.get('createEnrollmentToken')?.body, CreateEnrollmentTokenSchema);
    assert.equal(ops.get('enroll')?.body, EnrollRequestSchema);

    for (const o of ops.values()) {
      if (o.body instanceof z.ZodObject) {
        // A field is required iff zod refuses it absent (optional and defaulted fields accept undefined).
        const shape = o.body.shape as Record<string, z.ZodType>;
        const required = Object.keys(shape).filter((k) => !shape[k]!.safeParse(undefined).success).sort();
        const documented = resolveRef((bodySchema(o.operationId).$ref as string) ?? '');
        assert.deepEqual(((documented.required as string[] | undefined) ?? []).slice().sort(), required, `${o.operationId}: required body fields`);
        assert.deepEqual(Object.keys(documented.properties as Json).sort(), Object.keys(shape).sort(), `${o.operationId}: body fields`);
      }
      if (o.query) {
        const shape = o.query.shape as Record<string, z.ZodType>;
        const params = (findOp(o.operationId).op.parameters ?? []).filter((p) => p.in === 'query');
        assert.deepEqual(params.map((p) => p.name).sort(), Object.keys(shape).sort(), `${o.operationId}: query parameters`);
        assert.deepEqual(params.filter((p) => p.required).map((p) => p.name).sort(), Object.keys(shape).filter((k) => !shape[k]!.safeParse(undefined).success).sort(), `${o.operationId}: required query parameters`);
      }
    }

    const { manifest } = await demoModel();
    const rollout = { model: 'machine-state', version: '1.0.0', target: { group: 'line-1' } };
    const samples: [operationId: string, body: unknown, ok: boolean][] = [
      ['createDevice', { id: 'cam-1' }, true],
      ['createDevice', { id: 'cam-1', group: 'line-1', labels: { site: 'a' }, kind: 'sensor', device: 'gw-1' }, true],
      ['createDevice', {}, false],
      ['createDevice', { id: 'bad id' }, false],
      ['createDevice', { id: 'cam-1', extra: 1 }, false],
      ['createDevice', { id: 'cam-1', kind: 'robot' }, false],
      ['createDevice', { id: 'cam-1', labels: { 'bad key!': 'x' } }, false],
      ['createRollout', rollout, true],
      ['createRollout', { ...rollout, waves: [1, '50%'], onBreach: 'pause', gates: { minSamples: 10 } }, true],
      ['createRollout', { model: 'machine-state', version: '1.0.0' }, false],
      ['createRollout', { ...rollout, waves: [0] }, false],
      ['createRollout', { ...rollout, successThreshold: 2 }, false],
      ['createRollout', { ...rollout, onBreach: 'explode' }, false],
      ['createRollout', { ...rollout, target: { group: 'g', extra: true } }, false],
      ['createRollout', { ...rollout, bakeMs: 1.5 }, false],
      ['submitFeedback', { feedback: [{ id: 'inf-1', label: 'ok' }] }, true],
      ['submitFeedback', { feedback: [] }, false],
      ['submitFeedback', { feedback: [{ id: 'inf-1' }] }, false],
      ['submitFeedback', { v: 2, feedback: [{ id: 'inf-1', label: 'ok' }] }, false],
      ['uploadSample', { pipeline: 'p', model: 'm', version: '1', items: [{ x: 1 }] }, true],
      ['uploadSample', { pipeline: 'p', model: 'm', version: '1' }, false],
      ['announceModel', { manifest }, true],
      ['announceModel', { manifest: { ...manifest, quantization: 'int4' } }, false],
      ['announceModel', { manifest: { ...manifest, version: 'latest' } }, false],
      ['announceModel', { manifest, extra: 1 }, false],
      ['announceModel', {}, false],
      ['createOperatorToken', { name: 'ci@line-1', role: 'viewer' }, true],
      ['createOperatorToken', { name: 'ci', role: 'root' }, false],
      ['createEnrollmentToken', { group: 'line-1', maxUses: 10 }, true],
      ['createEnrollmentToken', { group: 'line-1', ttlSeconds: 5 }, false],
      ['enroll', { token: 'enr_x', id: 'cam-9' }, true],
      ['enroll', { id: 'cam-9' }, false],
    ];
    for (const [operationId, body, ok] of samples) {
      const zodSchema = ops.get(operationId)?.body;
      assert.ok(zodSchema);
      const label = `${operationId} ${JSON.stringify(body).slice(0, 100)}`;
      assert.equal(zodSchema.safeParse(body).success, ok, `zod: ${label}`);
      const errs = validate(bodySchema(operationId), body);
      assert.equal(errs.length === 0, ok, `document: ${label}: ${errs.join('; ')}`);
    }
  });

  test('(d) a live hub serves the document without a token; live replies match it; docs/openapi.json is current', async () => {
    const res = await fetch(`${hub.httpUrl}/openapi.json`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(await res.json(), JSON.parse(JSON.stringify(doc)));

    const committed = readFileSync(join(REPO_ROOT, 'docs', 'openapi.json'), 'utf8');
    assert.ok(committed === formatOpenApi(doc), 'docs/openapi.json is stale: run `npm run openapi` and commit it');

    /** Calls the live hub and checks the reply against the operation's documented reply for that status. */
    const call = async (operationId: string, path: string, opts: { auth?: string; body?: unknown; raw?: Buffer; expect: number }): Promise<unknown> => {
      const { method, op } = findOp(operationId);
      const contentType = opts.raw ? 'application/octet-stream' : opts.body !== undefined ? 'application/json' : undefined;
      const r = await fetch(`${hub.httpUrl}${path}`, {
        method,
        headers: { ...(opts.auth ? { authorization: `Bearer ${opts.auth}` } : {}), ...(contentType ? { 'content-type': contentType } : {}) },
        body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)),
      });
      const bytes = Buffer.from(await r.arrayBuffer());
      const text = bytes.toString('utf8');
      assert.equal(r.status, opts.expect, `${operationId} ${path}: ${text.slice(0, 300)}`);
      const documented = op.responses[String(r.status)];
      assert.ok(documented, `${operationId}: status ${r.status} is not documented`);
      const content = (documented.content as Record<string, { schema?: Json }> | undefined) ?? {};
      const mediaType = (r.headers.get('content-type') ?? '').split(';')[0]!.trim();
      assert.ok(mediaType in content, `${operationId} ${r.status}: ${mediaType} is not a documented media type (${Object.keys(content).join(', ')})`);
      if (mediaType !== 'application/json') return bytes;
      const schema = content[mediaType]?.schema;
      assert.ok(schema, `${operationId} ${r.status}: no JSON schema documented`);
      const value = JSON.parse(text) as unknown;
      const errs = validate(schema, value);
      assert.deepEqual(errs, [], `${operationId} ${r.status} reply does not match the document: ${text.slice(0, 300)}`);
      return value;
    };
    const admin = hub.adminToken;
    await call('healthz', '/healthz', { expect: 200 });
    const created = (await call('createDevice', '/v1/devices', { auth: admin, body: { id: 'gw-1', group: 'line-1', labels: { site: 'a' } }, expect: 201 })) as { token: string };
    await call('createDevice', '/v1/devices', { auth: admin, body: { id: 'temp-1', kind: 'sensor', device: 'gw-1' }, expect: 201 });
    await call('createDevice', '/v1/devices', { auth: admin, body: { id: 'bad id' }, expect: 400 });
    await call('createDevice', '/v1/devices', { body: { id: 'gw-2' }, expect: 401 });
    await call('listDevices', '/v1/devices', { auth: admin, expect: 200 });
    await call('getDevice', '/v1/devices/gw-1', { auth: admin, expect: 200 });
    await call('getDevice', '/v1/devices/nope', { auth: admin, expect: 404 });
    await call('getDeviceHistory', '/v1/devices/gw-1/history', { auth: admin, expect: 200 });
    // Uploads only against a sample request the hub opened (issue #14; drift.sample carries it).
    await call('uploadSample', '/v1/samples/gw-1', { auth: `gw-1:${created.token}`, body: { pipeline: 'p', model: 'm', version: '1', items: [{ x: 1 }] }, expect: 403 });
    const { request } = await hub.sampleRequests.open('gw-1', { pipeline: 'p' });
    await call('uploadSample', `/v1/samples/gw-1?request=${request}`, { auth: `gw-1:${created.token}`, body: { pipeline: 'p', model: 'm', version: '1', items: [{ x: 1 }], request }, expect: 201 });
    await call('uploadSample', '/v1/samples/gw-1', { auth: 'gw-1:wrong', body: { pipeline: 'p', model: 'm', version: '1', items: [] }, expect: 401 });
    const samples = (await call('listSamples', '/v1/samples', { auth: admin, expect: 200 })) as { samples: unknown[] };
    assert.equal(samples.samples.length, 1);
    await call('listTelemetry', '/v1/telemetry?limit=5', { auth: admin, expect: 200 });
    await call('listTelemetry', '/v1/telemetry?limit=0', { auth: admin, expect: 400 });
    await call('getFleet', '/v1/fleet', { auth: admin, expect: 200 });
    await call('listSigningKeys', '/v1/keys', { auth: admin, expect: 200 });
    await call('listModels', '/v1/models', { auth: admin, expect: 200 });
    await call('getModel', '/v1/models/nope/1.0.0', { auth: admin, expect: 404 });
    await call('listRollouts', '/v1/rollouts', { auth: admin, expect: 200 });
    await call('createRollout', '/v1/rollouts', { auth: admin, body: { model: 'nope', version: '1.0.0', target: { group: 'line-1' } }, expect: 404 });
    await call('submitFeedback', '/v1/feedback', { auth: admin, body: { feedback: [{ id: 'inf-1', label: 'ok' }] }, expect: 200 });
    await call('getKpis', '/v1/kpis', { auth: admin, expect: 200 });
    await call('getDrift', '/v1/drift', { auth: admin, expect: 200 });
    await call('listAlerts', '/v1/alerts', { auth: admin, expect: 200 });
    await call('getAlert', '/v1/alerts/nope', { auth: admin, expect: 404 });
    await call('metrics', '/metrics', { auth: admin, expect: 200 });

    // A release and a rollout of it, so the model and rollout replies are checked with content.
    const { manifest, bytes } = await demoModel();
    const version = manifest.version as string;
    const sha = (manifest.artifact as { sha256: string }).sha256;
    await call('announceModel', '/v1/models', { auth: admin, body: { manifest }, expect: 202 });
    await call('uploadModelArtifact', `/v1/models/machine-state/${version}/artifact`, { auth: admin, raw: bytes, expect: 201 });
    const models = (await call('listModels', '/v1/models', { auth: admin, expect: 200 })) as { models: unknown[] };
    assert.equal(models.models.length, 1);
    await call('getModel', `/v1/models/machine-state/${version}`, { auth: admin, expect: 200 });
    // Only artifacts assigned to the device (issue #14): after its rollout wave started.
    await call('downloadArtifact', `/v1/artifacts/${sha}`, { auth: `gw-1:${created.token}`, expect: 404 });
    const rollout = (await call('createRollout', '/v1/rollouts', { auth: admin, body: { model: 'machine-state', version, target: { devices: ['gw-1'] } }, expect: 201 })) as { id: string };
    await hub.rollouts.tick();
    const artifact = await call('downloadArtifact', `/v1/artifacts/${sha}`, { auth: `gw-1:${created.token}`, expect: 200 });
    assert.equal((artifact as Buffer).length, bytes.length);
    await call('getRollout', `/v1/rollouts/${rollout.id}`, { auth: admin, expect: 200 });
    await call('actOnRollout', `/v1/rollouts/${rollout.id}/pause`, { auth: admin, expect: 200 });
    await call('actOnRollout', `/v1/rollouts/${rollout.id}/approve`, { auth: admin, expect: 409 });
    const rollouts = (await call('listRollouts', '/v1/rollouts', { auth: admin, expect: 200 })) as { rollouts: unknown[] };
    assert.equal(rollouts.rollouts.length, 1);

    // Security routes (issue #6): tokens, enrollment, revocation, audit.
    await call('whoami', '/v1/whoami', { auth: admin, expect: 200 });
    const viewer = (await call('createOperatorToken', '/v1/tokens', { auth: admin, body: { name: 'dash', role: 'viewer' }, expect: 201 })) as { id: string; token: string };
    await call('createDevice', '/v1/devices', { auth: viewer.token, body: { id: 'gw-3' }, expect: 403 });
    await call('listOperatorTokens', '/v1/tokens', { auth: admin, expect: 200 });
    await call('revokeOperatorToken', `/v1/tokens/${viewer.id}/revoke`, { auth: admin, expect: 200 });
    const enr = (await call('createEnrollmentToken', '/v1/enrollment-tokens', { auth: admin, body: { group: 'line-1' }, expect: 201 })) as { id: string; token: string };
    await call('enroll', '/v1/enroll', { body: { token: enr.token, id: 'cam-9' }, expect: 201 });
    await call('enroll', '/v1/enroll', { body: { token: enr.token, id: 'cam-10' }, expect: 401 });
    await call('listEnrollmentTokens', '/v1/enrollment-tokens', { auth: admin, expect: 200 });
    await call('revokeEnrollmentToken', `/v1/enrollment-tokens/${enr.id}/revoke`, { auth: admin, expect: 200 });
    await call('revokeDevice', '/v1/devices/cam-9/revoke', { auth: admin, expect: 200 });
    const audit = (await call('queryAudit', '/v1/audit?limit=50', { auth: admin, expect: 200 })) as { entries: unknown[] };
    assert.ok(audit.entries.length > 0);
  });
});
