/**
 * Issue #14, classes "anonymous writes" and "audit truth", against a real hub (aedes on port 0,
 * SQLite in a temp dir, fetch, the real CLI through `dispatch`). Tampering is done the way an
 * intruder with the database file would: better-sqlite3 on the hub's hub.db, triggers dropped,
 * rows edited or deleted behind the hub's back. Each test prints `security: <class>: <figure>`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { CliIo } from '../../cli/command.ts';
import { dispatch } from '../../cli/router.ts';
import type { Hub } from '../../hub/main.ts';
import { migrate } from '../../hub/store/sqlite-store.ts';
import { MIGRATIONS } from '../../hub/store/migrations.ts';
import { toChained, type AuditRow } from '../../hub/store/sqlite-security.ts';
import { auditRowHash, type ChainedAuditRow } from '../../shared/audit-chain.ts';
import { silentLogger } from '../../shared/log.ts';
import { until } from '../helpers/fleet-in-process.ts';
import { startHub } from '../helpers/mqtt-clients.ts';

const row = (name: string, outcome: string): void => console.log(`security: ${name}: ${outcome}`);
/** Any raw control, C1 control, bidi override/isolate or line separator: nothing of it may reach the terminal. */
const RAW_CONTROL = /[^\P{Cc}\n\t]|[\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/u;

interface Entry {
  id: number;
  actor: string;
  action: string;
  outcome: string;
  remote: string | null;
  target: string | null;
  details: Record<string, unknown>;
}
interface Verdict {
  ok: boolean;
  rows: number;
  firstId: number | null;
  head: { id: number; hash: string } | null;
  start: string | null;
  broken?: { id: number; reason: string; message: string };
}

async function api<T>(hub: Hub, path: string, init: RequestInit = {}, token: string | null = hub.adminToken): Promise<{ status: number; json: T }> {
  const res = await fetch(`${hub.httpUrl}${path}`, { ...init, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(init.body ? { 'content-type': 'application/json' } : {}) } });
  const text = await res.text();
  return { status: res.status, json: (text ? JSON.parse(text) : {}) as T };
}

const audit = async (hub: Hub, q: string): Promise<Entry[]> => (await api<{ entries: Entry[] }>(hub, `/v1/audit?limit=1000&${q}`)).json.entries;
const verify = async (hub: Hub, q = ''): Promise<Verdict> => (await api<Verdict>(hub, `/v1/audit/verify${q}`)).json;

async function metric(hub: Hub, name: string): Promise<number> {
  const text = await hub.registry.metrics();
  return text
    .split('\n')
    .filter((l) => l.startsWith(name) && !l.startsWith('#'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

function capture(env: NodeJS.ProcessEnv): { io: CliIo; out: () => string; err: () => string } {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s) => out.push(s), err: (s) => err.push(s), env }, out: () => out.join(''), err: () => err.join('') };
}

/** The hub's database, opened behind its back with every audit trigger dropped. */
function intruder(dir: string): Database.Database {
  const db = new Database(join(dir, 'hub.db'));
  db.pragma('busy_timeout = 5000');
  for (const { name } of db.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' AND (tbl_name = 'audit_log' OR tbl_name = 'audit_prune_cut')").all() as { name: string }[]) db.exec(`DROP TRIGGER ${name}`);
  return db;
}

type RawRow = AuditRow & { prev_hash: string; hash: string };
const chained = toChained;

describe('audit log: anonymous writes are folded, retention, tamper evidence, safe rendering', () => {
  let dir: string;
  let hub: Hub;
  const cli = async (argv: string[]): Promise<{ code: number | undefined; out: string; err: string }> => {
    const c = capture({ EDGEFLEET_HUB: hub.httpUrl, EDGEFLEET_TOKEN: hub.adminToken });
    const code = await dispatch(argv, c.io);
    return { code, out: c.out(), err: c.err() };
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-audit-chain-'));
    // A short fold window so the test sees the aggregated rows; retention at its smallest.
    // synchronous NORMAL: the 1500 rows the retention test appends need no fsync each.
    hub = await startHub(dir, { store: { synchronous: 'NORMAL' }, audit: { anonymousWindowMs: 500, maxRows: 1000, pruneIntervalMs: 1000, pruneBatch: 400 } });
  });
  after(async () => {
    await hub.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test('anonymous writes: thousands of refused requests without credentials cost one audit row per address per window', async () => {
    const before = (await audit(hub, '')).length;
    const n = 3000;
    const t0 = performance.now();
    // No credentials at all, on audited routes (each used to add a row); 50 in flight.
    const paths = ['/v1/devices', '/v1/tokens', '/v1/rollouts', '/v1/enrollment-tokens'];
    let sent = 0;
    const statuses = new Map<number, number>();
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        while (sent < n) {
          const i = sent++;
          const r = await api(hub, paths[i % paths.length] ?? '/v1/devices', { method: 'POST', body: '{}' }, null);
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    assert.deepEqual([...statuses], [[401, n]]);
    let folded: Entry[] = [];
    await until(
      async () => {
        folded = await audit(hub, 'action=auth.refused');
        return folded.reduce((s, e) => s + Number(e.details.count), 0) >= n;
      },
      5000,
      'the folded rows',
    );
    const rows = (await audit(hub, '')).length - before;
    const windows = Math.ceil((seconds * 1000 + 1000) / 500) + 1;
    assert.ok(folded.every((e) => e.actor === 'anonymous' && e.outcome === 'denied' && e.remote === '127.0.0.1'), JSON.stringify(folded[0]));
    assert.equal(rows, folded.length, 'no row of its own for any refused request');
    assert.ok(rows <= windows, `${rows} rows for ${windows} windows`);
    assert.equal(await metric(hub, 'edgefleet_hub_audit_anonymous_refusals_total'), n);
    const actions = folded.reduce<Record<string, number>>((acc, e) => {
      for (const [k, v] of Object.entries(e.details.actions as Record<string, number>)) acc[k] = (acc[k] ?? 0) + v;
      return acc;
    }, {});
    assert.deepEqual(actions, { 'device.create': n / 4, 'token.create': n / 4, 'rollout.create': n / 4, 'enrollment-token.create': n / 4 });
    row('anonymous writes', `${n} refused requests without credentials in ${seconds.toFixed(1)} s → ${rows} audit rows (one per address per 0.5 s window, counts sum to ${n}; edgefleet_hub_audit_anonymous_refusals_total ${n})`);
  });

  test('audit truth: retention prunes behind a checkpoint and the chain still verifies from the first kept row', async () => {
    // 1500 rows more, the first 300 older than maxAgeDays (365 by default).
    const old = Date.now() - 400 * 86_400_000;
    for (let i = 0; i < 1500; i++) {
      await hub.store.appendAudit({ ts: i < 300 ? old : Date.now(), actor: 'admin', actorId: 't1', role: 'admin', action: 'device.create', target: `dev-${i}`, outcome: 'ok', status: 201, remote: '127.0.0.1', details: {} });
    }
    let v = await verify(hub);
    await until(
      async () => {
        v = await verify(hub);
        return v.rows <= 1000;
      },
      8000,
      'the prune',
    );
    assert.equal(v.ok, true, JSON.stringify(v));
    assert.equal(v.start, 'checkpoint');
    const checkpoints = await audit(hub, 'action=audit.prune');
    assert.ok(checkpoints.length >= 1);
    const pruned = await metric(hub, 'edgefleet_hub_audit_pruned_rows_total');
    assert.ok(pruned >= 500, String(pruned));
    // Plain deletes and updates are refused by the database itself.
    const db = new Database(join(dir, 'hub.db'));
    try {
      assert.throws(() => db.prepare('DELETE FROM audit_log WHERE id = ?').run(v.head?.id), /deleted only by the retention prune/);
      assert.throws(() => db.prepare("UPDATE audit_log SET target = 'x' WHERE id = ?").run(v.head?.id), /append-only/);
      assert.throws(() => db.prepare('UPDATE audit_prune_cut SET through = ?').run(v.head?.id), /checkpoint/);
    } finally {
      db.close();
    }
    row('audit retention', `1500 rows over maxRows 1000 → ${v.rows} kept after the prune (${pruned} pruned behind ${checkpoints.length} checkpoint row(s)); verify ok from row ${v.firstId ?? '?'}; raw DELETE/UPDATE refused by trigger`);
  });

  test('audit truth: an edited, deleted, re-hashed or truncated row is found by verify, live and in an export', async () => {
    const exportFile = join(dir, 'audit.jsonl');
    const exp = await cli(['audit', 'export', '--out', exportFile]);
    assert.equal(exp.code, 0, exp.err);
    const offline = await cli(['audit', 'verify', '--file', exportFile]);
    assert.equal(offline.code, 0, offline.out + offline.err);
    assert.match(offline.out, /ok, \d+ rows/);
    assert.equal((await cli(['audit', 'verify'])).code, 0);

    const db = intruder(dir);
    const found: string[] = [];
    try {
      const v0 = await verify(hub);
      const first = v0.firstId ?? 0;
      const k = first + 10;
      const get = (id: number): RawRow => db.prepare('SELECT * FROM audit_log WHERE id = ?').get(id) as RawRow;
      const put = (r: RawRow): void => void db.prepare('INSERT INTO audit_log (id, ts, actor, actor_id, role, action, target, outcome, status, remote, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').run(r.id, r.ts, r.actor, r.actor_id, r.role, r.action, r.target, r.outcome, r.status, r.remote, r.details, r.prev_hash, r.hash);
      const original = get(k);
      const expectBroken = async (what: string, id: number, reason: string): Promise<void> => {
        const v = await verify(hub);
        assert.equal(v.ok, false, `${what}: ${JSON.stringify(v)}`);
        assert.deepEqual([v.broken?.id, v.broken?.reason], [id, reason], `${what}: ${JSON.stringify(v.broken)}`);
        const c = await cli(['audit', 'verify']);
        assert.equal(c.code, 1, `${what}: the CLI exits 1`);
        assert.match(c.out, new RegExp(`BROKEN at row ${id} \\(${reason}\\)`));
        found.push(`${what} → ${reason} at ${id}`);
      };

      // Edited in place: its hash no longer matches.
      db.prepare("UPDATE audit_log SET actor = 'someone-else' WHERE id = ?").run(k);
      await expectBroken('edited row', k, 'hash_mismatch');
      db.prepare('UPDATE audit_log SET actor = ? WHERE id = ?').run(original.actor, k);
      assert.equal((await verify(hub)).ok, true);

      // Edited and re-hashed: the next row no longer links to it.
      const forged = { ...chained(original), outcome: 'denied' };
      db.prepare("UPDATE audit_log SET outcome = 'denied', hash = ? WHERE id = ?").run(auditRowHash(forged, original.prev_hash), k);
      await expectBroken('edited and re-hashed row', k + 1, 'prev_hash_mismatch');
      db.prepare('UPDATE audit_log SET outcome = ?, hash = ? WHERE id = ?').run(original.outcome, original.hash, k);

      // Deleted: a gap in ids.
      db.prepare('DELETE FROM audit_log WHERE id = ?').run(k);
      await expectBroken('deleted row', k + 1, 'gap');
      put(original);

      // The oldest kept rows deleted (not by the prune): the checkpoint no longer accounts for them.
      const head = [get(first), get(first + 1)];
      db.prepare('DELETE FROM audit_log WHERE id <= ?').run(first + 1);
      await expectBroken('oldest rows deleted', first + 2, 'gap');
      for (const r of head) put(r);
      assert.equal((await verify(hub)).ok, true, 'restored');

      // Rewritten end to end (every hash recomputed): consistent on its own, but not with the
      // earlier export's head.
      const rows = db.prepare('SELECT * FROM audit_log ORDER BY id').all() as RawRow[];
      const originals = rows.map((r) => ({ ...r }));
      let prev = rows[0]?.prev_hash ?? '';
      db.transaction(() => {
        for (const r of rows) {
          const target = r.id === k ? 'nothing-happened' : r.target;
          const hash = auditRowHash({ ...chained(r), target }, prev);
          db.prepare('UPDATE audit_log SET target = ?, prev_hash = ?, hash = ? WHERE id = ?').run(target, prev, hash, r.id);
          prev = hash;
        }
      })();
      assert.equal((await verify(hub)).ok, true, 'a full rewrite is consistent with itself');
      const against = await cli(['audit', 'verify', '--against', exportFile]);
      assert.equal(against.code, 1, against.out + against.err);
      assert.match(against.out, /head_mismatch/);
      found.push('whole chain rewritten → head_mismatch against the earlier export');
      db.transaction(() => {
        for (const r of originals) db.prepare('UPDATE audit_log SET target = ?, prev_hash = ?, hash = ? WHERE id = ?').run(r.target, r.prev_hash, r.hash, r.id);
      })();
      assert.equal((await cli(['audit', 'verify', '--against', exportFile])).code, 0);
    } finally {
      db.close();
    }

    // The export itself edited offline: verify --file finds the row.
    const lines = (await readFile(exportFile, 'utf8')).split('\n');
    const i = 20;
    const edited = JSON.parse(lines[i] ?? '{}') as ChainedAuditRow;
    lines[i] = JSON.stringify({ ...edited, target: 'forged' });
    await writeFile(exportFile, lines.join('\n'));
    const tampered = await cli(['audit', 'verify', '--file', exportFile]);
    assert.equal(tampered.code, 1);
    assert.match(tampered.out, new RegExp(`BROKEN at row ${edited.id} \\(hash_mismatch\\)`));
    found.push(`export file edited → hash_mismatch at ${edited.id}`);
    row('audit tampering', `all detected: ${found.join('; ')}`);
  });

  test('safe rendering: hostile ids in audit, devices and history never reach the terminal raw nor forge rows', async () => {
    const hostile = ['\u001b[31mRED\u001b[0m', 'a\nFAKE admin device.create - ok 201 10.0.0.1', '\u001b]0;owned\u0007', '\u202eevil', 'c1\u009bx', 'bell\u0007'];
    // Through the API: the decoded path becomes the audit target (each a 404, audited as failed).
    for (const h of hostile) assert.equal((await api(hub, `/v1/devices/${encodeURIComponent(h)}/revoke`, { method: 'POST' })).status, 404);
    // Device ids the API refuses, put straight into the store as an intruder would.
    const db = new Database(join(dir, 'hub.db'));
    try {
      const ins = db.prepare("INSERT INTO principals (id, kind, grp, labels, token_kdf, token_salt, token_hash, created_at) VALUES (?, 'device', ?, ?, 'scrypt', x'00', x'00', ?)");
      hostile.forEach((h, i) => ins.run(`dev-${i}-${h}`, `g\n${h}`, JSON.stringify({ [`k${h}`]: h }), Date.now()));
    } finally {
      db.close();
    }
    const checked: string[] = [];
    for (const argv of [['audit', '--action', 'device.revoke', '--limit', '50'], ['devices'], ['devices', '--json'], ['audit', '--json', '--limit', '20'], ['devices', 'history', hostile[1] ?? '']]) {
      const r = await cli(argv);
      assert.ok(!RAW_CONTROL.test(r.out) && !RAW_CONTROL.test(r.err), `${argv.join(' ')}: ${JSON.stringify(r.out.slice(0, 400))}`);
      if (argv[0] === 'audit' && argv[1] === '--action') {
        const body = r.out.trimEnd().split('\n').slice(1);
        assert.equal(body.length, hostile.length, `one line per entry: ${r.out}`);
        assert.ok(r.out.includes('\\x1b[31mRED') && r.out.includes('a\\nFAKE') && r.out.includes('\\u{202e}evil'), r.out);
      }
      if (argv[0] === 'devices' && argv.length === 1) {
        const body = r.out.trimEnd().split('\n').slice(1);
        assert.equal(body.length, hostile.length, `one line per device: ${r.out}`);
      }
      if (argv.includes('--json')) JSON.parse(r.out);
      checked.push(argv.slice(0, 2).join(' '));
    }
    row('safe rendering', `${hostile.length} hostile ids (ESC/CSI, OSC, newline row forgery, U+202E, C1, BEL) → 0 raw control characters and 0 forged rows in ${checked.join(', ')}`);
  });
});

describe('audit log written before the hash chain', () => {
  test('rows from before migration 8 are sealed at start and verify', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'edgefleet-audit-legacy-'));
    try {
      const db = new Database(join(dir, 'hub.db'));
      migrate(db, MIGRATIONS.filter((m) => m.version <= 7), silentLogger());
      const ins = db.prepare("INSERT INTO audit_log (ts, actor, action, outcome, details) VALUES (?, 'admin', 'device.create', 'ok', '{}')");
      for (let i = 0; i < 5; i++) ins.run(Date.now());
      db.close();
      const hub = await startHub(dir);
      try {
        const v = (await api<Verdict>(hub, '/v1/audit/verify')).json;
        assert.equal(v.ok, true, JSON.stringify(v));
        assert.ok(v.rows >= 5);
        row('audit legacy rows', `5 rows from before the chain sealed at start; verify ok over ${v.rows} rows from ${v.start ?? '?'}`);
      } finally {
        await hub.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
