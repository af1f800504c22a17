/**
 * GET /v1/devices at fleet scale (issues #15, #16) on a real hub (port 0, SQLite in a temp dir)
 * with 10,000 devices and 100 sensors registered through its store:
 *
 *   - one page is bounded (limit, default 100, max 1000) and carries the filter's total;
 *   - paging to the end visits every matching principal exactly once, in id order, unfiltered
 *     and with each filter (group, kind, status, label, search and combinations), checked
 *     against the seeded facts filtered here;
 *   - the cursor is stable while principals are registered between pages;
 *   - malformed parameters are refused with 400 naming the parameter;
 *   - a database from before migration 11 gets its labels indexed;
 *   - `edgefleet devices` pages (--limit, --cursor hint on stderr, --all with filters).
 *
 * Timings are printed (store call and HTTP round trip, median and p95), never asserted.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { run as devicesCmd } from '../../cli/commands/devices.ts';
import { encodeDeviceCursor } from '../../hub/api/device-list.ts';
import { hashToken, newSecret } from '../../hub/auth/tokens.ts';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { MIGRATIONS } from '../../hub/store/migrations.ts';
import { HUB_DB_FILE, migrate, SqliteHubStore } from '../../hub/store/sqlite-store.ts';
import type { DeviceQuery } from '../../hub/store/store.ts';
import { silentLogger } from '../../shared/log.ts';
import { seedFleet, type SeededPrincipal } from '../helpers/many-devices.ts';

const DEVICES = 10_000;

interface Page {
  items: { id: string; kind: string; group: string; labels: Record<string, string>; online: boolean; revokedAt: string | null }[];
  nextCursor: string | null;
  total: number;
}

const quantile = (xs: number[], q: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
};
const ms = (x: number): string => x.toFixed(2);

describe('device listing at 10,000 devices', { timeout: 180_000 }, () => {
  let dir: string;
  let hub: Hub;
  let seeded: SeededPrincipal[];

  const get = async (query: string): Promise<{ status: number; body: unknown }> => {
    const res = await fetch(`${hub.httpUrl}/v1/devices${query ? `?${query}` : ''}`, { headers: { authorization: `Bearer ${hub.adminToken}` } });
    return { status: res.status, body: await res.json() };
  };
  const page = async (query: string): Promise<Page> => {
    const r = await get(query);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body as Page;
  };
  /** Follows nextCursor to the end; every page within the limit. */
  const walk = async (filter: URLSearchParams, limit: number): Promise<{ ids: string[]; totals: Set<number>; pages: number }> => {
    const ids: string[] = [];
    const totals = new Set<number>();
    let cursor: string | null = null;
    let pages = 0;
    do {
      const q = new URLSearchParams(filter);
      q.set('limit', String(limit));
      if (cursor) q.set('cursor', cursor);
      const p = await page(q.toString());
      assert.ok(p.items.length <= limit, `page of ${p.items.length} > limit ${limit}`);
      if (p.nextCursor !== null) assert.equal(p.items.length, limit, 'only the last page is short');
      ids.push(...p.items.map((d) => d.id));
      totals.add(p.total);
      cursor = p.nextCursor;
      pages++;
    } while (cursor !== null);
    return { ids, totals, pages };
  };
  const statusOf = (d: Page['items'][number]): string => (d.revokedAt !== null ? 'revoked' : d.online ? 'online' : 'offline');

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-device-list-'));
    // NORMAL: the 10,000 registrations need no fsync each (what is measured is the listing).
    const config = loadHubConfig({ env: {}, overrides: { dataDir: dir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, store: { synchronous: 'NORMAL' } } });
    hub = await createHub(config, { log: silentLogger() });
    await hub.start(new AbortController().signal);
    const t0 = performance.now();
    seeded = await seedFleet(hub.store, DEVICES);
    process.stdout.write(`device-list: registered ${seeded.length} principals through the store in ${Math.round(performance.now() - t0)} ms\n`);
  });

  after(async () => {
    assert.deepEqual(await hub.stop(), []);
    await rm(dir, { recursive: true, force: true });
  });

  test('one page is bounded and carries the total; the timings of a page', async () => {
    const first = await page('');
    assert.equal(first.items.length, 100, 'default page size');
    assert.equal(first.total, seeded.length);
    assert.ok(first.nextCursor);
    assert.deepEqual(
      first.items.map((d) => d.id),
      seeded.slice(0, 100).map((p) => p.id),
    );
    const max = await page('limit=1000');
    assert.equal(max.items.length, 1000);

    // Timings: the store call alone and the HTTP round trip (auth, JSON), first/middle/last page and filtered.
    const cases: { name: string; store: DeviceQuery; http: string }[] = [
      { name: 'first page, 100', store: { limit: 100 }, http: 'limit=100' },
      { name: 'middle page, 100', store: { limit: 100, after: 'dev-05000' }, http: `limit=100&cursor=${encodeDeviceCursor('dev-05000')}` },
      { name: 'last page', store: { limit: 100, after: 'dev-09950' }, http: `limit=100&cursor=${encodeDeviceCursor('dev-09950')}` },
      { name: 'page of 1000', store: { limit: 1000 }, http: 'limit=1000' },
      { name: 'group+status', store: { limit: 100, group: 'line-3', status: 'online' }, http: 'limit=100&group=line-3&status=online' },
      { name: 'label site+rack', store: { limit: 100, labels: [['site', 'porto'], ['rack', 'r7']] }, http: 'limit=100&label=site=porto,rack=r7' },
      { name: 'search "0042" (substring)', store: { limit: 100, search: '0042' }, http: 'limit=100&q=0042' },
      { name: 'search, no match (full scan)', store: { limit: 100, search: 'nothing-like-this' }, http: 'limit=100&q=nothing-like-this' },
    ];
    process.stdout.write(`device-list: GET /v1/devices at ${seeded.length} principals (30 runs each; median / p95 ms)\n`);
    for (const c of cases) {
      const storeMs: number[] = [];
      const httpMs: number[] = [];
      let items = 0;
      for (let i = 0; i < 30; i++) {
        let t = performance.now();
        items = (await hub.store.queryDevices(c.store)).items.length;
        storeMs.push(performance.now() - t);
        t = performance.now();
        await page(c.http);
        httpMs.push(performance.now() - t);
      }
      assert.ok(items <= c.store.limit);
      process.stdout.write(
        `device-list:   ${c.name.padEnd(30)} items ${String(items).padStart(4)}  store ${ms(quantile(storeMs, 0.5))} / ${ms(quantile(storeMs, 0.95))}  http ${ms(quantile(httpMs, 0.5))} / ${ms(quantile(httpMs, 0.95))}\n`,
      );
    }
  });

  test('paging to the end visits every principal exactly once, in id order, with and without filters', async () => {
    const filters: { query: Record<string, string | string[]>; keep: (p: SeededPrincipal) => boolean; limit: number }[] = [
      { query: {}, keep: () => true, limit: 1000 },
      { query: {}, keep: () => true, limit: 333 },
      { query: { group: 'line-3' }, keep: (p) => p.group === 'line-3', limit: 100 },
      { query: { kind: 'sensor' }, keep: (p) => p.kind === 'sensor', limit: 7 },
      { query: { status: 'online' }, keep: (p) => p.status === 'online', limit: 500 },
      { query: { status: 'revoked' }, keep: (p) => p.status === 'revoked', limit: 50 },
      { query: { status: 'offline', kind: 'device' }, keep: (p) => p.status === 'offline' && p.kind === 'device', limit: 1000 },
      { query: { label: 'site=lyon' }, keep: (p) => p.labels.site === 'lyon', limit: 400 },
      { query: { label: ['site=porto', 'rack=r7'] }, keep: (p) => p.labels.site === 'porto' && p.labels.rack === 'r7', limit: 10 },
      { query: { group: 'line-1', label: 'site=berlin' }, keep: (p) => p.group === 'line-1' && p.labels.site === 'berlin', limit: 100 },
      { query: { q: '00-v' }, keep: (p) => p.id.includes('00-v'), limit: 30 },
      { query: { q: 'VIB' }, keep: (p) => p.id.toLowerCase().includes('vib'), limit: 30 },
      // A label value matches too: rack r42 on the devices whose index is 42 mod 50.
      { query: { q: 'r42' }, keep: (p) => p.id.includes('r42') || Object.values(p.labels).some((v) => v.includes('r42')), limit: 100 },
      { query: { q: '%' }, keep: () => false, limit: 100 },
      { query: { group: 'line-2', status: 'online', label: 'site=berlin', q: '5' }, keep: (p) => p.group === 'line-2' && p.status === 'online' && p.labels.site === 'berlin' && p.id.includes('5'), limit: 20 },
    ];
    for (const f of filters) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(f.query)) for (const x of [v].flat()) params.append(k, x);
      const expected = seeded.filter(f.keep).map((p) => p.id);
      const t0 = performance.now();
      const { ids, totals, pages } = await walk(params, f.limit);
      const label = params.toString() || '(none)';
      assert.equal(new Set(ids).size, ids.length, `${label}: no principal twice`);
      assert.deepEqual(ids, expected, `${label}: every match once, in id order`);
      assert.deepEqual([...totals], [expected.length], `${label}: total on every page`);
      process.stdout.write(`device-list: walk ${label.padEnd(48)} ${String(expected.length).padStart(5)} in ${String(pages).padStart(4)} pages of ${f.limit}, ${Math.round(performance.now() - t0)} ms\n`);
    }
    // What the page says of each principal is what was seeded.
    const facts = new Map(seeded.map((p) => [p.id, p]));
    for (const d of (await page('limit=1000&group=line-0')).items) {
      const p = facts.get(d.id);
      assert.ok(p, d.id);
      assert.equal(statusOf(d), p.status, d.id);
      assert.deepEqual(d.labels, p.labels);
      assert.equal(d.kind, p.kind);
    }
  });

  test('the cursor is stable while principals are registered between pages', async () => {
    const token = await hashToken(newSecret());
    const before = seeded.filter((p) => p.group === 'line-5').map((p) => p.id);
    const added = { ahead: [] as string[], behind: [] as string[] };
    const ids: string[] = [];
    let cursor: string | null = null;
    for (let n = 0; ; n++) {
      const p: Page = await page(`group=line-5&limit=150${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      ids.push(...p.items.map((d) => d.id));
      cursor = p.nextCursor;
      const last = p.items[p.items.length - 1]?.id ?? '';
      // One registered before the cursor (not this walk's business any more) and one after it
      // (between rows still to come), each time.
      if (cursor === null) break;
      const behind = `aaa-${String(n).padStart(3, '0')}`;
      const ahead = `${last}-late`;
      for (const id of [behind, ahead]) await hub.store.createPrincipal({ id, kind: 'device', group: 'line-5', labels: {}, token, createdAt: Date.now() });
      added.behind.push(behind);
      added.ahead.push(ahead);
    }
    assert.equal(new Set(ids).size, ids.length, 'no principal twice');
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => (a < b ? -1 : 1)),
      'strictly in id order',
    );
    for (const id of before) assert.ok(ids.includes(id), `${id} existed before the walk and was visited`);
    for (const id of added.ahead) assert.ok(ids.includes(id), `${id}, registered after the cursor, was visited`);
    for (const id of added.behind) assert.ok(!ids.includes(id), `${id}, registered behind the cursor, was not`);
    assert.equal(ids.length, before.length + added.ahead.length);
    process.stdout.write(`device-list: walk while registering: ${before.length} existing + ${added.ahead.length} added ahead visited once each; ${added.behind.length} added behind skipped\n`);
    seeded.push(...[...added.ahead, ...added.behind].map((id) => ({ id, kind: 'device' as const, group: 'line-5', labels: {}, status: 'offline' as const })));
    seeded.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  });

  test('malformed parameters: 400 naming the parameter', async () => {
    const bad: [string, RegExp][] = [
      ['limit=0', /^limit: /],
      ['limit=1001', /^limit: .*1000/],
      ['limit=ten', /^limit: /],
      ['limit=1.5', /^limit: /],
      ['limit=10&limit=20', /^limit: given 2 times/],
      ['cursor=not*base64', /^cursor: not a cursor this hub gave out/],
      [`cursor=${Buffer.from('{"after":').toString('base64url')}`, /^cursor: /],
      [`cursor=${Buffer.from('{"offset":5}').toString('base64url')}`, /^cursor: /],
      [`cursor=${'A'.repeat(600)}`, /^cursor: /],
      ['status=broken', /^status: /],
      ['kind=robot', /^kind: /],
      ['group=a/b', /^group: /],
      ['label=site', /^label: expected key=value/],
      ['label==x', /^label: expected key=value/],
      ['label=site=a,', /^label: expected key=value/],
      [`label=${Array.from({ length: 9 }, (_, i) => `k${i}=v`).join(',')}`, /^label: at most 8/],
      [`q=${'x'.repeat(129)}`, /^q: /],
      ['q=a&q=b', /^q: given 2 times/],
      ['sort=id', /^unknown parameter "sort" \(limit, cursor, q, group, kind, status, label\)$/],
      [`${'x'.repeat(5000)}=1`, /^unknown parameter "x{64}" /],
    ];
    for (const [query, message] of bad) {
      const r = await get(query);
      assert.equal(r.status, 400, `${query}: ${JSON.stringify(r.body)}`);
      const e = (r.body as { error: { code: string; message: string } }).error;
      assert.equal(e.code, 'BAD_INPUT', query);
      assert.match(e.message, message, query);
    }
    // Empty search is no search; a cursor past the last id is an empty last page.
    assert.equal((await page('q=')).total, seeded.length);
    const past = await page(`cursor=${encodeDeviceCursor('zzzz')}`);
    assert.deepEqual(past, { items: [], nextCursor: null, total: seeded.length });
    // A viewer may list; no token may not.
    assert.equal((await fetch(`${hub.httpUrl}/v1/devices?limit=1`)).status, 401);
  });

  test('edgefleet devices: one page with the next cursor on stderr, --cursor, --all with filters', async () => {
    const io = (): { io: { out: (s: string) => void; err: (s: string) => void; env: NodeJS.ProcessEnv }; out: () => string; err: () => string } => {
      let out = '';
      let err = '';
      return { io: { out: (s) => (out += s), err: (s) => (err += s), env: { EDGEFLEET_HUB: hub.httpUrl, EDGEFLEET_TOKEN: hub.adminToken } }, out: () => out, err: () => err };
    };
    let c = io();
    assert.equal(await devicesCmd(['--limit', '5'], c.io), 0, c.err());
    const lines = c.out().trimEnd().split('\n');
    assert.equal(lines.length, 6, 'header and 5 devices');
    assert.match(lines[1] ?? '', /^aaa-000\s/);
    const hint = /^5 of (\d+) shown; next page: --cursor (\S+) \(or --all\)$/m.exec(c.err());
    assert.ok(hint, c.err());
    assert.equal(Number(hint[1]), seeded.length);
    c = io();
    assert.equal(await devicesCmd(['--limit', '2', '--cursor', hint[2] ?? '', '--json'], c.io), 0, c.err());
    assert.deepEqual(
      (JSON.parse(c.out()) as { id: string }[]).map((d) => d.id),
      seeded.slice(5, 7).map((p) => p.id),
    );
    c = io();
    assert.equal(await devicesCmd(['--all', '--group', 'line-4', '--label', 'site=berlin', '--status', 'online', '--json'], c.io), 0, c.err());
    const all = (JSON.parse(c.out()) as { id: string }[]).map((d) => d.id);
    assert.deepEqual(
      all,
      seeded.filter((p) => p.group === 'line-4' && p.labels.site === 'berlin' && p.status === 'online').map((p) => p.id),
    );
    assert.equal(c.err(), '', 'no next-page hint with --all');
    c = io();
    assert.equal(await devicesCmd(['--all', '--search', 'dev-0'], c.io), 0, c.err());
    assert.equal(c.out().trimEnd().split('\n').length, 1 + seeded.filter((p) => p.id.includes('dev-0')).length, '--all pages through 1000 at a time');
    c = io();
    assert.equal(await devicesCmd(['--search', 'no-such-device'], c.io), 0, c.err());
    assert.equal(c.out(), 'no device matches\n');
    c = io();
    assert.equal(await devicesCmd(['--status', 'sleeping'], c.io), 1, 'the hub refuses it: exit 1');
    assert.match(c.err(), /status: .*\(HTTP 400 BAD_INPUT\)/);
    c = io();
    assert.equal(await devicesCmd(['--all', '--cursor', 'x'], c.io), 2);
  });
});

test('migration 11 indexes the labels of principals registered before it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-device-list-mig-'));
  try {
    const db = new Database(join(dir, HUB_DB_FILE));
    migrate(
      db,
      MIGRATIONS.filter((m) => m.version < 11),
      silentLogger(),
    );
    const token = await hashToken(newSecret());
    const insert = db.prepare("INSERT INTO principals (id, kind, grp, labels, token_kdf, token_salt, token_hash, created_at) VALUES (?, 'device', 'g', ?, ?, ?, ?, 0)");
    insert.run('old-1', JSON.stringify({ site: 'berlin' }), token.kdf, token.salt, token.hash);
    insert.run('old-2', JSON.stringify({ site: 'porto' }), token.kdf, token.salt, token.hash);
    insert.run('old-3', 'not json', token.kdf, token.salt, token.hash);
    db.close();
    const store = new SqliteHubStore({ dataDir: dir, synchronous: 'NORMAL', busyTimeoutMs: 1000, walLimitBytes: 1 << 20, log: silentLogger() });
    await store.start(new AbortController().signal);
    try {
      const page = await store.queryDevices({ limit: 10, labels: [['site', 'berlin']] });
      assert.deepEqual(
        page.items.map((d) => d.id),
        ['old-1'],
      );
      assert.equal(page.total, 1);
      assert.equal((await store.queryDevices({ limit: 10, search: 'PORTO' })).items[0]?.id, 'old-2', 'label values are searched');
      assert.equal((await store.queryDevices({ limit: 10 })).total, 3, 'a principal with unreadable labels is still listed');
    } finally {
      await store.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
