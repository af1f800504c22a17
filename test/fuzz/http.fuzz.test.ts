/**
 * Fuzz (issue #6): the hub's HTTP API on a live hub, over raw TCP so requests can lie, for a
 * time budget (FUZZ_SECONDS, default 8). Mutated JSON bodies for every POST route (devices,
 * tokens, enrollment, models announce, rollouts and their actions, feedback, alert actions,
 * device samples, revocations) and PUT artifact; bad content-length (larger or smaller than
 * sent, non-numeric, duplicated, huge), chunked bodies with bad chunk sizes, huge and many
 * headers, bad paths and percent-encoding, bad query strings on the GET routes.
 *
 * The contract: never a 5xx, never a hang; every 4xx our handler sends has the JSON error shape
 * `{ error: { code, message } }`. Node's own HTTP parser refuses some requests before the
 * handler (400/431 with no body, or a closed connection): those are counted apart. Requests that
 * promise more body than they send are half-closed and may end without a reply. Hub alive and
 * /healthz answering at the end. Prints one summary line with the seed.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MODELS_DIR } from '../helpers/fleet-in-process.ts';
import { HealthPoller, healthy, startFuzzHub, type FuzzHub } from './fuzz-hub.ts';
import { HANG_MS, judge, send, type RawRequest } from './http-raw.ts';
import { deepJsonText, fuzzBudgetMs, fuzzRun, INTERESTING_STRINGS, jsonText, mutateBytes, mutateJson, mutateText, Outcomes, randomBytes, randomJson, runWorkers, summaryLine, type Rng } from './gen.ts';

/** Default time budget of this file in `npm test` (FUZZ_SECONDS overrides). */
const SECONDS = 8;

const WORKERS = 4;

interface Ctx {
  admin: string;
  operator: string;
  viewer: string;
  device: { id: string; token: string };
  manifest: unknown;
}

function auth(rng: Rng, c: Ctx): [string, string][] {
  const r = rng.int(20);
  if (r < 15) return [['authorization', `Bearer ${c.admin}`]];
  if (r === 15) return [['authorization', `Bearer ${c.operator}`]];
  if (r === 16) return [['authorization', `Bearer ${c.viewer}`]];
  if (r === 17) return [];
  if (r === 18) return [['authorization', `Bearer ${c.device.id}:${c.device.token}`]];
  return [['authorization', rng.pick(['Bearer', 'Basic YTpi', `Bearer ${c.admin}x`, `bearer  ${c.admin}`, 'Bearer \u00ff', `Bearer ${'a'.repeat(5000)}`])]];
}

/** POST routes with a valid body each (the mutation seeds). */
function postRoutes(c: Ctx): { path: string; body: unknown; device?: boolean }[] {
  const id = c.device.id;
  return [
    { path: '/v1/devices', body: { id: 'dev-new', group: 'fuzz', labels: { line: '1' }, kind: 'device' } },
    { path: '/v1/devices', body: { id: 'sensor-new', kind: 'sensor', device: id } },
    { path: '/v1/tokens', body: { name: 'op-new', role: 'viewer' } },
    { path: '/v1/enrollment-tokens', body: { group: 'fuzz', labels: { a: 'b' }, maxUses: 2, ttlSeconds: 600 } },
    { path: '/v1/enroll', body: { token: `enr_${'0'.repeat(16)}.${'a'.repeat(32)}`, id: 'dev-enrolled', labels: {} } },
    { path: '/v1/models', body: { manifest: c.manifest } },
    { path: '/v1/rollouts', body: { model: 'machine-state', version: '1.0.0', target: { group: 'fuzz' }, waves: [1, '50%'], bakeMs: 0 } },
    { path: '/v1/rollouts/r-1/pause', body: {} },
    { path: '/v1/feedback', body: { v: 1, feedback: [{ id: 'inf-1', label: 'ok', ts: 1 }] } },
    { path: '/v1/alerts/a-1/ack', body: {} },
    { path: `/v1/samples/${id}`, body: { pipeline: 'vibration', model: 'machine-state', version: '1.0.0', items: [{ values: [1, 2] }], request: 'c-1' }, device: true },
    { path: '/v1/devices/dev-nope/revoke', body: {} },
    { path: '/v1/tokens/tok-nope/revoke', body: {} },
  ];
}

const GETS = ['/v1/telemetry', '/v1/kpis', '/v1/drift', '/v1/alerts', '/v1/samples', '/v1/audit', '/v1/devices', '/v1/rollouts', '/v1/models', '/v1/fleet', '/v1/whoami'];
const QUERY_KEYS = ['device', 'stream', 'after', 'limit', 'from', 'to', 'model', 'version', 'window', 'state', 'scope', 'id', 'action', '__proto__', 'constructor'];

/** encodeURIComponent, with lone surrogates (which it refuses) sent as raw bad escapes. */
function enc(s: string): string {
  try {
    return encodeURIComponent(s);
  } catch {
    return '%ED%A0%80';
  }
}

function badPath(rng: Rng): string | Buffer {
  return rng.pick<string | Buffer>([
    '/v1/devices/%',
    '/v1/devices/%E0%A4%A',
    '/v1/devices/%C0%AF',
    '/v1/devices/%00',
    '/v1/devices/%2e%2e%2f%2e%2e',
    `/v1/devices/${'a'.repeat(rng.pick([100, 8000]))}`,
    '//v1//devices',
    '/v1/../../etc/passwd',
    '*',
    'http://evil/v1/devices',
    '/v1/models/%ZZ/1.0.0',
    '/v1/models/a/b/c/d/e/f',
    `/v1/artifacts/${'f'.repeat(64)}`,
    '/v1/rollouts/%FF%FE/abort',
    '/v1/alerts/%F0%9F%92%A5/resolve',
    Buffer.from([0x2f, 0x76, 0x31, 0x2f, 0xff, 0xfe]),
    '/v1/devices?'.padEnd(12_000, 'x'),
    '/ui/%2e%2e/%2e%2e/package.json',
    '/ui/..%2f..%2fpackage.json',
    '/openapi.json?x=%',
  ]);
}

function request(rng: Rng, c: Ctx): { kind: string; req: RawRequest } {
  const routes = postRoutes(c);
  const r = rng.int(20);
  if (r < 9) {
    const route = rng.pick(routes);
    const headers: [string, string][] = [...(route.device ? [['authorization', `Bearer ${c.device.id}:${c.device.token}`] as [string, string]] : auth(rng, c)), ['content-type', 'application/json']];
    const m = rng.int(10);
    const body = m < 6 ? jsonText(mutateJson(route.body, rng)) : m < 9 ? mutateText(jsonText(route.body), rng) : jsonText(randomJson(rng, 4));
    return { kind: 'post_mutated', req: { method: 'POST', path: route.path, headers, body: Buffer.from(body) } };
  }
  if (r < 10) {
    // Deep nesting where the schemas take anything (sample items, manifest).
    const route = rng.pick(routes.filter((x) => x.path.startsWith('/v1/samples') || x.path === '/v1/models'));
    const deep = deepJsonText(rng.pick([1000, 20_000, 100_000]), rng.next() < 0.5 ? 'array' : 'object');
    const body = route.path === '/v1/models' ? `{"manifest":${deep}}` : jsonText(route.body).replace('"items":[', `"items":[${deep},`);
    const headers: [string, string][] = route.device ? [['authorization', `Bearer ${c.device.id}:${c.device.token}`]] : [['authorization', `Bearer ${c.admin}`]];
    return { kind: 'post_deep', req: { method: 'POST', path: route.path, headers, body: Buffer.from(body) } };
  }
  if (r < 12) {
    const route = rng.pick(routes);
    const body = Buffer.from(jsonText(route.body));
    const v = rng.int(8);
    const headers: [string, string][] = [['authorization', `Bearer ${c.admin}`]];
    if (v === 0) return { kind: 'length_larger', req: { method: 'POST', path: route.path, headers: [...headers, ['content-length', String(body.length + 1 + rng.int(5000))]], body, lies: true } };
    if (v === 1) return { kind: 'length_smaller', req: { method: 'POST', path: route.path, headers: [...headers, ['content-length', String(rng.int(body.length))]], body } };
    if (v === 2) return { kind: 'length_bad', req: { method: 'POST', path: route.path, headers: [...headers, ['content-length', rng.pick(['-1', 'abc', '1e3', '0x10', ' 5', '99999999999999999999', ''])]], body } };
    if (v === 3) return { kind: 'length_duplicate', req: { method: 'POST', path: route.path, headers: [...headers, ['content-length', String(body.length)], ['content-length', String(body.length + 1)]], body } };
    if (v === 4) return { kind: 'length_huge', req: { method: 'POST', path: route.path, headers: [...headers, ['content-length', String(rng.pick([2 ** 31, 2 ** 40, 70 * 1024 * 1024]))]], body, lies: true } };
    if (v === 5) {
      const size = rng.pick(['zz', 'fffffffffffffff', '-1', '5;ext=1', '1']);
      const chunked = Buffer.from(`${size}\r\n${body.toString('utf8')}\r\n0\r\n\r\n`);
      return { kind: 'chunked_bad', req: { method: 'POST', path: route.path, headers: [...headers, ['transfer-encoding', 'chunked']], body: chunked, noLength: true, lies: true } };
    }
    if (v === 6) return { kind: 'length_and_chunked', req: { method: 'POST', path: route.path, headers: [...headers, ['transfer-encoding', 'chunked'], ['content-length', '5']], body, noLength: true } };
    return { kind: 'body_over_limit', req: { method: 'POST', path: route.path, headers, body: Buffer.alloc(rng.pick([1024 * 1024 + 1, 9 * 1024 * 1024]), 0x20) } };
  }
  if (r < 13) {
    const v = rng.int(5);
    const base: [string, string][] = [['authorization', `Bearer ${c.admin}`]];
    if (v === 0) return { kind: 'header_huge', req: { method: 'GET', path: '/v1/devices', headers: [...base, ['x-big', 'a'.repeat(rng.pick([8000, 20_000, 100_000]))]] } };
    if (v === 1) return { kind: 'header_many', req: { method: 'GET', path: '/v1/devices', headers: [...base, ...Array.from({ length: rng.pick([200, 3000]) }, (_, i) => [`x-h${i}`, 'v'] as [string, string])] } };
    if (v === 2) return { kind: 'header_bad_bytes', req: { method: 'GET', path: '/v1/devices', headers: [...base, ['x-bad', Buffer.from([0x61, 0x00, 0x0d, 0x62, 0xff])]] } };
    if (v === 3) return { kind: 'header_bad_name', req: { method: 'GET', path: '/v1/devices', headers: [...base, [rng.pick(['x y', 'x:y', '\u00e9', '']), 'v']] } };
    return { kind: 'auth_bad', req: { method: 'GET', path: '/v1/devices', headers: [['authorization', rng.pick(['Bearer \u0000', `Bearer ${'x'.repeat(9000)}`, 'Bearer a:b:c', 'Bearer :', `Bearer ${c.device.id}:`])]] } };
  }
  if (r < 15) return { kind: 'path_bad', req: { method: rng.pick(['GET', 'POST', 'HEAD', 'DELETE', 'PUT']), path: badPath(rng), headers: auth(rng, c) } };
  if (r < 17) {
    const parts = Array.from({ length: 1 + rng.int(4) }, () => {
      const k = rng.next() < 0.8 ? rng.pick(QUERY_KEYS) : enc(rng.pick(INTERESTING_STRINGS));
      const v = rng.pick([...INTERESTING_STRINGS.map(enc), '%', '%zz', '-1', '1e309', '9007199254740993', 'NaN', '2026-13-45T99:99:99Z', '']);
      return `${k}=${v}`;
    });
    return { kind: 'query_bad', req: { method: 'GET', path: `${rng.pick(GETS)}?${parts.join(rng.pick(['&', ';', '&&']))}`, headers: auth(rng, c) } };
  }
  if (r < 18) {
    const body = rng.next() < 0.5 ? randomBytes(rng, rng.int(4096)) : mutateBytes(readFileSync(join(MODELS_DIR, 'machine-state.onnx')), rng);
    return { kind: 'put_artifact', req: { method: 'PUT', path: `/v1/models/machine-state/${rng.pick(['1.0.0', '9.9.9', '%', 'x'])}/artifact`, headers: [['authorization', `Bearer ${c.admin}`], ['content-type', 'application/octet-stream']], body } };
  }
  if (r < 19) return { kind: 'method_odd', req: { method: rng.pick(['PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'FOO', 'GET\u0000']), path: rng.pick(['/v1/devices', '/healthz', '/v1/models']), headers: auth(rng, c) } };
  return { kind: 'random_request', req: { method: 'POST', path: rng.pick(postRoutes(c)).path, headers: auth(rng, c), body: mutateBytes(randomBytes(rng, rng.int(200)), rng) } };
}


describe('fuzz: hub HTTP API', () => {
  let fh: FuzzHub;
  let ctx: Ctx;

  before(async () => {
    fh = await startFuzzHub();
    const token = async (role: string): Promise<string> => (await fh.api<{ token: string }>('POST', '/v1/tokens', { name: `fuzz-${role}`, role })).token;
    const manifest = JSON.parse(readFileSync(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')) as Record<string, unknown>;
    ctx = {
      admin: fh.hub.adminToken,
      operator: await token('operator'),
      viewer: await token('viewer'),
      device: { id: 'fuzz-dev', token: await fh.addPrincipal('fuzz-dev') },
      manifest: { ...manifest, version: '9.0.0' },
    };
  });

  after(async () => {
    await fh?.stop();
  });

  test('regression: concurrent sample uploads of one device are all stored; deep JSON is a 400', async () => {
    // Both found by this suite. Uploads in the same millisecond shared a temp file name and
    // rename()d over each other: 500s (23 of 30 here) and lost samples.
    const id = 'race-dev';
    const token = await fh.addPrincipal(id);
    const post = async (body: string): Promise<number> => {
      const res = await fetch(`${fh.hub.httpUrl}/v1/samples/${id}`, { method: 'POST', headers: { authorization: `Bearer ${id}:${token}`, 'content-type': 'application/json' }, body });
      await res.arrayBuffer();
      return res.status;
    };
    // Each upload answers its own sample request (issue #14: none is accepted without one).
    const requests = await Promise.all(Array.from({ length: 31 }, () => fh.hub.sampleRequests.open(id, { pipeline: 'vibration' })));
    const bodyFor = (i: number): string => jsonText({ pipeline: 'vibration', model: 'machine-state', version: '1.0.0', items: [{ values: [1] }], request: requests[i]!.request });
    const body = bodyFor(30);
    const statuses = await Promise.all(Array.from({ length: 30 }, (_, i) => post(bodyFor(i))));
    assert.deepEqual(statuses, Array.from({ length: 30 }, () => 201));
    const list = await fh.api<{ samples: unknown[] }>('GET', `/v1/samples?device=${id}`);
    assert.equal(list.samples.length, 30);
    // A 20,000-deep item passed SampleUploadSchema (items are free-form) and overflowed the
    // stack in JSON.stringify when stored: a 500.
    assert.equal(await post(body.replace('"items":[', `"items":[${deepJsonText(20_000, 'array')},`)), 400);
  });

  test('every response is below 500, every handler refusal has the JSON error shape, nothing hangs', { timeout: fuzzBudgetMs(SECONDS) + 120_000 }, async () => {
    const { seed, budget, out, mem } = fuzzRun(SECONDS);
    const byKind = new Outcomes();
    const health = new HealthPoller(fh.hub.httpUrl, 500);
    const violations: string[] = [];
    try {
      await runWorkers(seed, budget, WORKERS, async (rng) => {
        const { kind, req } = request(rng, ctx);
        const res = await send(fh.hub.httpPort, req, HANG_MS);
        out.inputs++;
        const j = judge(kind, req, res);
        out.count(j.outcome);
        byKind.count(`${kind}:${j.outcome}`);
        if (j.violation && violations.length < 20) violations.push(`${kind} ${req.method} ${String(req.path).slice(0, 80)}: ${j.violation}`);
      });
    } finally {
      await health.stop();
      mem.stop();
    }
    const alive = await healthy(fh.hub.httpUrl);
    const fivexx = out.sumWhere(/^http_5/);
    summaryLine('http', { seed, inputs: out.inputs, crashes: 0, hub_alive: alive ? 'yes' : 'no', '5xx': fivexx, violations: violations.length, healthz_failed: health.failed, peak_rss: `${mem.peakRssMB}MB`, peak_heap: `${mem.peakHeapMB}MB` }, out);
    console.log(`fuzz http kinds: ${byKind.toString()}`);
    assert.ok(alive, 'hub /healthz after the run');
    assert.deepEqual(violations, [], `seed=${seed}`);
    assert.equal(health.failed, 0);
    assert.ok(out.get('accepted') + out.get('http_400') > 0);
  });
});
