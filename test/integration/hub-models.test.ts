/**
 * The hub's model registry against a real hub (port 0, SQLite and artifacts in a temp dir) and
 * the real demo models: push through the CLI and the HTTP API, list/show, refusal of manifests
 * that do not describe their model, of wrong sizes and hashes and of a hostile file, release
 * counters across pushes, restarts and deletes, signatures checked against /v1/keys, and
 * device-authenticated artifact downloads with Range resume.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { run as modelCmd } from '../../cli/commands/model.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { probeModel } from '../../shared/validate/model-probe.ts';
import { HUB_DB_FILE } from '../../hub/store/sqlite-store.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { verifyRelease, type TrustedKey } from '../../shared/signing.ts';
import { makeModels } from '../../scripts/make-models.ts';
import { v1 } from '../helpers/manifest-v1.ts';

interface Model {
  onnx: string;
  bytes: Buffer;
  manifest: Manifest;
  manifestPath: string;
}

describe('hub model registry', () => {
  let dir: string;
  let dataDir: string;
  let hub: Hub;
  let deviceToken: string;
  const models: Record<string, Model> = {};

  const startHub = async (): Promise<Hub> => {
    const config = loadHubConfig({ env: {}, overrides: { dataDir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } } });
    const h = await createHub(config, { log: silentLogger() });
    await h.start(new AbortController().signal);
    return h;
  };
  const api = (path: string, init: RequestInit & { token?: string | null } = {}): Promise<Response> => {
    const token = init.token === undefined ? hub.adminToken : init.token;
    const headers: Record<string, string> = { ...(init.headers as Record<string, string> | undefined), ...(token ? { authorization: `Bearer ${token}` } : {}) };
    return fetch(`${hub.httpUrl}${path}`, { ...init, headers });
  };
  const errorOf = async (res: Response): Promise<{ code: string; message: string }> => ((await res.json()) as { error: { code: string; message: string } }).error;
  const announce = (manifest: unknown): Promise<Response> =>
    api('/v1/models', { method: 'POST', body: JSON.stringify({ manifest }), headers: { 'content-type': 'application/json' } });
  const putArtifact = (m: { name: string; version: string }, body: Buffer | ReadableStream<Uint8Array>): Promise<Response> =>
    api(`/v1/models/${m.name}/${m.version}/artifact`, { method: 'PUT', body, headers: { 'content-type': 'application/octet-stream' }, duplex: 'half' });
  /** POST + PUT through the API; returns the PUT response. */
  const push = async (manifest: Manifest, bytes: Buffer): Promise<Response> => {
    const a = await announce(manifest);
    assert.equal(a.status, 202, await a.clone().text());
    return putArtifact(manifest, bytes);
  };
  const withVersion = (m: Manifest, version: string): Manifest => ({ ...m, version });
  const download = (sha: string, headers: Record<string, string> = {}, token: string | null = `device-1:${deviceToken}`): Promise<Response> =>
    api(`/v1/artifacts/${sha}`, { token, headers });
  /** A device gets only artifacts assigned to it (issue #14): a rollout of the release to device-1. */
  const assign = async (name: string, version: string): Promise<void> => {
    const r = await api('/v1/rollouts', { method: 'POST', body: JSON.stringify({ model: name, version, target: { devices: ['device-1'] } }), headers: { 'content-type': 'application/json' } });
    assert.equal(r.status, 201, await r.text());
    await hub.rollouts.tick();
  };
  function cli(): { io: { out: (s: string) => void; err: (s: string) => void; env: NodeJS.ProcessEnv }; out: () => string; err: () => string } {
    let out = '';
    let err = '';
    return { io: { out: (s) => (out += s), err: (s) => (err += s), env: {} }, out: () => out, err: () => err };
  }
  const hubFlags = (): string[] => ['--hub', hub.httpUrl, '--token', hub.adminToken];
  const trusted = async (): Promise<TrustedKey[]> => ((await (await api('/v1/keys')).json()) as { keys: TrustedKey[] }).keys;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-hub-models-'));
    dataDir = join(dir, 'hub');
    for (const m of await makeModels({ outDir: join(dir, 'models') })) {
      const manifest = ManifestSchema.parse(JSON.parse(await readFile(m.manifestPath, 'utf8')));
      models[m.name] = { onnx: m.onnxPath, bytes: await readFile(m.onnxPath), manifest, manifestPath: m.manifestPath };
    }
    hub = await startHub();
    const res = await api('/v1/devices', { method: 'POST', body: JSON.stringify({ id: 'device-1' }), headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 201);
    deviceToken = ((await res.json()) as { token: string }).token;
  });

  after(async () => {
    if (hub) assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('model push through the CLI releases the demo model with counter 1, signed by a key in /v1/keys', async () => {
    const ms = models['machine-state']!;
    const c = cli();
    const code = await modelCmd(['push', ms.onnx, '--manifest', ms.manifestPath, ...hubFlags()], c.io);
    assert.equal(code, 0, c.err());
    assert.match(c.out(), /^released machine-state@1\.0\.0: counter 1, /);

    const keysRes = await api('/v1/keys');
    assert.equal(keysRes.status, 200);
    const keys = (await keysRes.json()) as { active: string; keys: TrustedKey[] };
    assert.equal(keys.keys[0]?.keyId, keys.active);
    assert.equal((await stat(join(dataDir, 'keys', `${keys.active}.key`))).mode & 0o777, 0o600);
    assert.equal((await api('/v1/keys', { token: null })).status, 401);

    const show = await api('/v1/models/machine-state/1.0.0');
    assert.equal(show.status, 200);
    const body = (await show.json()) as { counter: number; manifest: unknown; release: unknown; keyId: string };
    assert.equal(body.counter, 1);
    assert.equal(body.keyId, keys.active);
    const v = verifyRelease(body.release, keys.keys, { minCounter: 1 });
    assert.ok(v.ok, JSON.stringify(v));
    assert.equal(v.release.manifest.artifact.sha256, ms.manifest.artifact.sha256);
    assert.deepEqual(v.release.manifest, body.manifest);
    // Stored content-addressed.
    const sha = ms.manifest.artifact.sha256;
    assert.deepEqual(await readFile(join(dataDir, 'artifacts', sha.slice(0, 2), sha)), ms.bytes);
  });

  test('model list and show, as text and --json', async () => {
    const l = cli();
    assert.equal(await modelCmd(['list', '--json', ...hubFlags()], l.io), 0, l.err());
    const list = JSON.parse(l.out()) as { name: string; version: string; counter: number; sha256: string }[];
    assert.deepEqual(
      list.map((m) => [m.name, m.version, m.counter]),
      [['machine-state', '1.0.0', 1]],
    );
    const t = cli();
    assert.equal(await modelCmd(['list', ...hubFlags()], t.io), 0);
    assert.match(t.out(), /^NAME\s+VERSION\s+COUNTER/);
    assert.match(t.out(), /machine-state\s+1\.0\.0\s+1\s+int8-qdq/);

    const s = cli();
    assert.equal(await modelCmd(['show', 'machine-state@1.0.0', '--json', ...hubFlags()], s.io), 0, s.err());
    const shown = JSON.parse(s.out()) as { manifest: Manifest; release: { signature: { alg: string } } };
    assert.equal(shown.manifest.name, 'machine-state');
    assert.equal(shown.release.signature.alg, 'ed25519');
    const st = cli();
    assert.equal(await modelCmd(['show', 'machine-state@1.0.0', ...hubFlags()], st.io), 0);
    assert.match(st.out(), /input\s+features float32 \[N, 8\]/);
    assert.match(st.out(), /signature\s+ed25519, key [0-9a-f]{16}/);

    const missing = cli();
    assert.equal(await modelCmd(['show', 'machine-state@9.9.9', ...hubFlags()], missing.io), 1);
    assert.match(missing.err(), /no model machine-state@9\.9\.9 \(HTTP 404 NOT_FOUND\)/);
    const usage = cli();
    assert.equal(await modelCmd(['show', 'no-version', ...hubFlags()], usage.io), 2);
    assert.equal(await modelCmd(['push', models['machine-state']!.onnx, ...hubFlags()], cli().io), 2);
  });

  test('a manifest that does not describe its model is refused with the reasons', async () => {
    const ms = models['machine-state']!;
    const msV1 = v1(ms.manifest);
    const wrong: Manifest = { ...v1(withVersion(ms.manifest, '1.0.1-wrong')), inputs: [{ ...msV1.inputs[0]!, name: 'pixels' }] };
    const res = await push(wrong, ms.bytes);
    assert.equal(res.status, 422);
    const e = await errorOf(res);
    assert.equal(e.code, 'BAD_MODEL');
    assert.match(e.message, /input: named features in the model, pixels in the manifest/);

    // Another model's manifest for this file: several reasons at once, through the CLI.
    const other = { ...models['part-defect']!.manifest, artifact: ms.manifest.artifact, version: '7.0.0' };
    const file = join(dir, 'lying.manifest.json');
    await writeFile(file, JSON.stringify(other));
    const c = cli();
    assert.equal(await modelCmd(['push', ms.onnx, '--manifest', file, ...hubFlags()], c.io), 1);
    assert.match(c.err(), /part-defect@7\.0\.0 refused: .*input: named features in the model, image in the manifest.*\(HTTP 422 BAD_MODEL\)/);

    // Test vectors the model does not reproduce.
    const tv = msV1.testVectors[0]!;
    const badVectors: Manifest = { ...v1(withVersion(ms.manifest, '1.0.1-vectors')), testVectors: [{ ...tv, expected: tv.expected.map((x) => x + 1) }] };
    const r2 = await push(badVectors, ms.bytes);
    assert.equal(r2.status, 422);
    assert.match((await errorOf(r2)).message, /test vector 0: value 0 is/);

    const names = ((await (await api('/v1/models')).json()) as { models: { version: string }[] }).models.map((m) => m.version);
    assert.deepEqual(names, ['1.0.0']);
    // Invalid manifests never get as far as an upload.
    const bad = await announce({ ...ms.manifest, version: 'one' });
    assert.equal(bad.status, 400);
    assert.equal((await errorOf(bad)).code, 'BAD_MANIFEST');
    const dup = await announce(ms.manifest);
    assert.equal(dup.status, 409);
  });

  test('wrong size or sha256 is refused and leaves nothing behind', async () => {
    const ms = models['machine-state']!;
    const base = withVersion(ms.manifest, '1.0.2-bad');
    const wrongSha = { ...base, artifact: { ...base.artifact, sha256: createHash('sha256').update('other').digest('hex') } };
    const r1 = await push(wrongSha, ms.bytes);
    assert.equal(r1.status, 400);
    assert.match((await errorOf(r1)).message, /artifact sha256 is [0-9a-f]{64}, the manifest says/);

    const tooSmall = { ...base, artifact: { ...base.artifact, size: ms.bytes.length - 1 } };
    const r2 = await push(tooSmall, ms.bytes);
    assert.equal(r2.status, 400);
    assert.match((await errorOf(r2)).message, /Content-Length.*manifest says/);

    // Streamed without a Content-Length: the hub counts while it reads.
    const chunked = (buf: Buffer): ReadableStream<Uint8Array> =>
      new ReadableStream({
        start(ctl) {
          ctl.enqueue(new Uint8Array(buf.subarray(0, 1000)));
          ctl.enqueue(new Uint8Array(buf.subarray(1000)));
          ctl.close();
        },
      });
    assert.equal((await announce(tooSmall)).status, 202);
    const r3 = await putArtifact(tooSmall, chunked(ms.bytes));
    assert.equal(r3.status, 400);
    assert.match((await errorOf(r3)).message, /larger than the \d+ bytes the manifest says/);
    // A much larger body is answered with the error, not a reset connection.
    assert.equal((await announce(tooSmall)).status, 202);
    let sent = 0;
    const flood = new ReadableStream<Uint8Array>({
      pull(ctl) {
        if (sent >= 8 * 2 ** 20) return ctl.close();
        sent += 64 * 1024;
        ctl.enqueue(new Uint8Array(64 * 1024));
      },
    });
    const big = await putArtifact(tooSmall, flood);
    assert.equal(big.status, 400);
    assert.match((await errorOf(big)).message, /larger than/);
    const tooBig = { ...base, artifact: { ...base.artifact, size: ms.bytes.length + 1 } };
    assert.equal((await announce(tooBig)).status, 202);
    const r4 = await putArtifact(tooBig, chunked(ms.bytes));
    assert.equal(r4.status, 400);
    assert.match((await errorOf(r4)).message, /artifact has \d+ bytes, the manifest says/);

    assert.deepEqual(await readdir(join(dataDir, 'artifacts', 'tmp')), []);
    // An artifact with no manifest posted first.
    const r5 = await putArtifact({ name: 'machine-state', version: '3.0.0' }, ms.bytes);
    assert.equal(r5.status, 404);
    assert.equal((await api('/v1/models/machine-state/1.0.2-bad')).status, 404);
  });

  test('a hostile file (random bytes) is refused in the probe child; the hub keeps serving', async () => {
    const junk = randomBytes(4096);
    const ms = models['machine-state']!;
    const m = { ...withVersion(ms.manifest, '6.6.6'), artifact: { file: 'junk.onnx', sha256: createHash('sha256').update(junk).digest('hex'), size: junk.length } };
    const res = await push(m, junk);
    assert.equal(res.status, 422);
    const e = await errorOf(res);
    assert.equal(e.code, 'BAD_MODEL');
    // Refused by the ONNX reader before onnxruntime sees it (the data-dependent allocation guard parses the graph first).
    assert.match(e.message, /the model is not a readable ONNX file|onnxruntime cannot load the model/);
    assert.equal((await api('/healthz', { token: null })).status, 200);
    await assign(ms.manifest.name, ms.manifest.version);
    assert.equal((await download(ms.manifest.artifact.sha256)).status, 200);
    // Refused bytes are not kept, so they cannot be downloaded either.
    assert.equal((await download(m.artifact.sha256)).status, 404);
    await assert.rejects(stat(join(dataDir, 'artifacts', m.artifact.sha256.slice(0, 2), m.artifact.sha256)));
  });

  test('a memory budget below the probe child\'s own start-up is PROBE_FAILED, not a bad model (issue #12)', async () => {
    // Node + ORT need ~100 MB before the child is ready; a memory bomb after READY is still a bad
    // model (test/integration/probe-cwd.test.ts).
    const ms = models['machine-state']!;
    await assert.rejects(
      probeModel(ms.onnx, ms.manifest, { timeoutMs: 20_000, maxRssBytes: 32 * 2 ** 20, addressSpaceBudgetBytes: 2 ** 30, pollMs: 5 }, silentLogger()),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'PROBE_FAILED');
        assert.match(err.message, /more than 32 MiB allowed before it was ready/);
        return true;
      },
    );
  });

  test('release counters strictly increase across pushes, a restart and a deleted release', async () => {
    const ms = models['machine-state']!;
    const pd = models['part-defect']!;
    const counterOf = async (res: Response): Promise<number> => {
      assert.equal(res.status, 201, await res.clone().text());
      return ((await res.json()) as { counter: number }).counter;
    };
    const c2 = await counterOf(await push(pd.manifest, pd.bytes));
    // A deliberate rollback to the same bytes is a new release with a new counter.
    const c3 = await counterOf(await push(withVersion(ms.manifest, '1.1.0'), ms.bytes));
    assert.ok(c2 > 1 && c3 > c2, `${c2} ${c3}`);
    const keyBefore = (await trusted())[0]?.keyId;

    assert.deepEqual(await hub.stop(), []);
    hub = await startHub();
    assert.equal((await trusted())[0]?.keyId, keyBefore, 'the signing key survives a restart');
    const c4 = await counterOf(await push(withVersion(ms.manifest, '1.2.0'), ms.bytes));
    assert.ok(c4 > c3);

    // Delete the newest release behind the hub's back: its counter is still never handed out again.
    assert.deepEqual(await hub.stop(), []);
    const db = new Database(join(dataDir, HUB_DB_FILE));
    assert.equal(db.prepare('DELETE FROM models WHERE counter = ?').run(c4).changes, 1);
    db.close();
    hub = await startHub();
    const c5 = await counterOf(await push(withVersion(ms.manifest, '1.2.0'), ms.bytes));
    assert.ok(c5 > c4, `${c5} > ${c4}`);

    const list = ((await (await api('/v1/models')).json()) as { models: { counter: number }[] }).models.map((m) => m.counter);
    assert.deepEqual(list, [...list].sort((a, b) => b - a));
    assert.equal(new Set(list).size, list.length);
    // Every stored release verifies with the published keys.
    const keys = await trusted();
    for (const m of ((await (await api('/v1/models')).json()) as { models: { name: string; version: string }[] }).models) {
      const body = (await (await api(`/v1/models/${m.name}/${m.version}`)).json()) as { release: unknown; counter: number };
      const v = verifyRelease(body.release, keys);
      assert.ok(v.ok && v.release.counter === body.counter, `${m.name}@${m.version}`);
    }
  });

  test('artifact download: device auth, full, Range resume in two parts, 416, ETag', async () => {
    const pd = models['part-defect']!;
    const sha = pd.manifest.artifact.sha256;
    const size = pd.bytes.length;
    await assign(pd.manifest.name, pd.manifest.version);

    const full = await download(sha);
    assert.equal(full.status, 200);
    assert.equal(full.headers.get('etag'), `"${sha}"`);
    assert.equal(full.headers.get('accept-ranges'), 'bytes');
    assert.equal(Number(full.headers.get('content-length')), size);
    assert.deepEqual(Buffer.from(await full.arrayBuffer()), pd.bytes);

    const cut = 1234;
    const p1 = await download(sha, { range: `bytes=0-${cut - 1}` });
    assert.equal(p1.status, 206);
    assert.equal(p1.headers.get('content-range'), `bytes 0-${cut - 1}/${size}`);
    const part1 = Buffer.from(await p1.arrayBuffer());
    assert.equal(part1.length, cut);
    const p2 = await download(sha, { range: `bytes=${cut}-`, 'if-range': `"${sha}"` });
    assert.equal(p2.status, 206);
    assert.equal(p2.headers.get('content-range'), `bytes ${cut}-${size - 1}/${size}`);
    assert.deepEqual(Buffer.concat([part1, Buffer.from(await p2.arrayBuffer())]), pd.bytes);

    const tail = await download(sha, { range: 'bytes=-10' });
    assert.equal(tail.status, 206);
    assert.deepEqual(Buffer.from(await tail.arrayBuffer()), pd.bytes.subarray(size - 10));
    const past = await download(sha, { range: `bytes=${size}-` });
    assert.equal(past.status, 416);
    assert.equal(past.headers.get('content-range'), `bytes */${size}`);
    await past.arrayBuffer();
    // A stale If-Range gets the whole (current) file, not a splice of two versions.
    const stale = await download(sha, { range: 'bytes=0-9', 'if-range': '"0000"' });
    assert.equal(stale.status, 200);
    assert.equal((await stale.arrayBuffer()).byteLength, size);
    const cached = await download(sha, { 'if-none-match': `"${sha}"` });
    assert.equal(cached.status, 304);
    const head = await api(`/v1/artifacts/${sha}`, { method: 'HEAD', token: `device-1:${deviceToken}` });
    assert.equal(head.status, 200);
    assert.equal(Number(head.headers.get('content-length')), size);

    for (const token of [null, `device-1:${deviceToken.slice(0, -2)}xx`, `device-2:${deviceToken}`, hub.adminToken, deviceToken]) {
      const res = await download(sha, {}, token);
      assert.equal(res.status, 401, String(token));
      assert.equal((await errorOf(res)).code, 'UNAUTHORIZED');
    }
    assert.equal((await download('0'.repeat(64))).status, 404);
    assert.equal((await download('not-a-sha')).status, 404);
  });
});
