/**
 * Outbox on real SQLite files: epochs and per-stream seqs, group commit, exact acks, the
 * pending cap, crash recovery (a child process killed with SIGKILL) and a full disk.
 */
import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { Registry } from 'prom-client';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { Outbox, type OutboxOptions } from '../../agent/outbox/outbox.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-outbox-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
function dbPath(): string {
  return join(dir, `outbox-${n++}.db`);
}

async function open(path: string, extra: Partial<OutboxOptions> = {}): Promise<Outbox> {
  const o = new Outbox({ path, log: silentLogger(), ...extra });
  await o.start(new AbortController().signal);
  return o;
}

function isStorage(err: unknown): boolean {
  return err instanceof EdgefleetError && err.code === ErrorCode.STORAGE;
}

void describe('outbox', () => {
  void test('seq starts at 0 per stream in each epoch; the epoch grows on every start', async () => {
    const path = dbPath();
    const a = await open(path);
    assert.equal(a.epoch, 1);
    const r = await Promise.all([a.append('s1', 'event', { i: 0 }), a.append('s2', 'event', { i: 0 }), a.append('s1', 'event', { i: 1 })]);
    assert.deepEqual(r, [
      { epoch: 1, seq: 0 },
      { epoch: 1, seq: 0 },
      { epoch: 1, seq: 1 },
    ]);
    assert.deepEqual(a.appendNow('s1', 'event', { i: 2 }), { epoch: 1, seq: 2 });
    await a.stop();

    const b = await open(path);
    assert.equal(b.epoch, 2);
    assert.deepEqual(await b.append('s1', 'event', { i: 3 }), { epoch: 2, seq: 0 });
    assert.deepEqual(b.positions(), [
      { stream: 's1', epoch: 2, nextSeq: 1, pending: 4 },
      { stream: 's2', epoch: 2, nextSeq: 0, pending: 1 },
    ]);
    const rows = b.readBatch(0, 100);
    assert.deepEqual(
      rows.map((x) => [x.stream, x.epoch, x.seq, x.body.i]),
      [
        ['s1', 1, 0, 0],
        ['s2', 1, 0, 0],
        ['s1', 1, 1, 1],
        ['s1', 1, 2, 2],
        ['s1', 2, 0, 3],
      ],
    );
    await b.stop();
    const c = await open(path);
    assert.equal(c.epoch, 3);
    await c.stop();
  });

  void test('group commit: records count only once their promise resolves; flushMax forces a commit', async () => {
    const registry = new Registry();
    const o = await open(dbPath(), { flushMs: 20, flushMax: 10, registry });
    const seen: number[] = [];
    o.onAppend(() => seen.push(o.pendingCount()));
    const ps: Promise<{ epoch: number; seq: number }>[] = [];
    for (let i = 0; i < 25; i++) ps.push(o.append('s', 'event', { i }));
    // Two full groups committed at once, the last 5 wait for the timer.
    assert.equal(o.pendingCount(), 20);
    assert.equal(o.stats().queued, 5);
    const res = await Promise.all(ps);
    assert.deepEqual(
      res.map((r) => r.seq),
      Array.from({ length: 25 }, (_, i) => i),
    );
    assert.equal(o.pendingCount(), 25);
    assert.deepEqual(seen, [10, 20, 25]); // one listener call per transaction
    const metrics = await registry.getSingleMetricAsString('edgefleet_agent_outbox_commit_seconds');
    assert.match(metrics, /edgefleet_agent_outbox_commit_seconds_count 3/);
    assert.match(await registry.getSingleMetricAsString('edgefleet_agent_outbox_pending'), /edgefleet_agent_outbox_pending 25/);
    await o.stop();
  });

  void test('a checkpoint truncates the WAL', async () => {
    const path = dbPath();
    const o = await open(path, { checkpointMs: 60_000 });
    await Promise.all(Array.from({ length: 2000 }, (_, i) => o.append('s', 'event', { i, pad: 'y'.repeat(100) })));
    assert.ok(statSync(`${path}-wal`).size > 0);
    o.checkpoint();
    assert.equal(statSync(`${path}-wal`).size, 0);
    assert.equal(o.pendingCount(), 2000);
    await o.stop();
  });

  void test('stop flushes what is queued', async () => {
    const path = dbPath();
    const o = await open(path, { flushMs: 10_000 });
    const p = o.append('s', 'event', { last: true });
    await o.stop();
    assert.deepEqual(await p, { epoch: 1, seq: 0 });
    await assert.rejects(o.append('s', 'event', {}), (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.ILLEGAL_STATE);
    const again = await open(path);
    assert.equal(again.pendingCount(), 1);
    await again.stop();
  });

  void test('ack deletes exactly the acked ranges', async () => {
    const o = await open(dbPath());
    for (let i = 0; i < 10; i++) void o.append('a', 'event', { i });
    for (let i = 0; i < 5; i++) void o.append('b', 'event', { i });
    o.flush();
    assert.equal(o.pendingCount(), 15);
    const deleted = o.ack([
      { stream: 'a', epoch: 1, from: 2, to: 4 },
      { stream: 'b', epoch: 1, from: 0, to: 0 },
      { stream: 'a', epoch: 0, from: 0, to: 9 }, // other epoch: nothing
      { stream: 'c', epoch: 1, from: 0, to: 9 }, // unknown stream: nothing
    ]);
    assert.equal(deleted, 4);
    assert.equal(o.pendingCount(), 11);
    const left = o.readBatch(0, 100).map((r) => `${r.stream}${r.seq}`);
    assert.deepEqual(left, ['a0', 'a1', 'a5', 'a6', 'a7', 'a8', 'a9', 'b1', 'b2', 'b3', 'b4']);
    assert.equal(o.ack([{ stream: 'a', epoch: 1, from: 2, to: 4 }]), 0, 'acking twice deletes nothing more');
    // readBatch pages after a rowid cursor.
    const first = o.readBatch(0, 3);
    assert.equal(first.length, 3);
    const next = o.readBatch(first[2]!.rowid, 100);
    assert.deepEqual(
      [...first, ...next].map((r) => `${r.stream}${r.seq}`),
      left,
    );
    // Rowids never go back, even after everything was deleted.
    const maxRowid = next.at(-1)!.rowid;
    o.ack([
      { stream: 'a', epoch: 1, from: 0, to: 9 },
      { stream: 'b', epoch: 1, from: 0, to: 9 },
    ]);
    assert.equal(o.pendingCount(), 0);
    await o.append('a', 'event', { i: 10 });
    const fresh = o.readBatch(maxRowid, 10);
    assert.equal(fresh.length, 1);
    assert.equal(fresh[0]!.seq, 10);
    await o.stop();
  });

  void test('maxPending drops the oldest records and counts them', async () => {
    const registry = new Registry();
    const o = await open(dbPath(), { maxPending: 10, registry });
    const ps = [];
    for (let i = 0; i < 15; i++) ps.push(o.append(i % 2 ? 'odd' : 'even', 'event', { i }));
    await Promise.all(ps);
    assert.equal(o.pendingCount(), 10);
    assert.equal(o.stats().dropped, 5);
    assert.deepEqual(
      o.readBatch(0, 100).map((r) => r.body.i),
      [5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    );
    await o.append('even', 'event', { i: 15 });
    assert.equal(o.pendingCount(), 10);
    assert.equal(o.stats().dropped, 6);
    assert.match(await registry.getSingleMetricAsString('edgefleet_agent_outbox_dropped_total'), /_total 6/);
    await o.stop();
  });

  void test('refuses records the hub could never accept', async () => {
    const o = await open(dbPath(), { maxBodyBytes: 100 });
    const code = (c: string) => (e: unknown) => e instanceof EdgefleetError && e.code === c;
    await assert.rejects(o.append('bad/stream', 'event', {}), code(ErrorCode.BAD_INPUT));
    await assert.rejects(o.append('s', '', {}), code(ErrorCode.BAD_INPUT));
    await assert.rejects(o.append('s', 'event', {}, -1), code(ErrorCode.BAD_INPUT));
    await assert.rejects(o.append('s', 'event', { big: 'x'.repeat(200) }), code(ErrorCode.PAYLOAD_TOO_LARGE));
    const circular: Record<string, unknown> = {};
    circular.self = circular;
    await assert.rejects(o.append('s', 'event', circular), code(ErrorCode.BAD_INPUT));
    assert.deepEqual(await o.append('s', 'event', { ok: 1 }), { epoch: 1, seq: 0 }, 'refusals burn no seq');
    await o.stop();
  });

  void test('a crash (SIGKILL) keeps every committed record and leaves a sound database', async () => {
    const path = dbPath();
    const moduleUrl = new URL('../../agent/outbox/outbox.ts', import.meta.url).href;
    const logUrl = new URL('../../shared/log.ts', import.meta.url).href;
    const script = `
      import { Outbox } from ${JSON.stringify(moduleUrl)};
      import { silentLogger } from ${JSON.stringify(logUrl)};
      const o = new Outbox({ path: ${JSON.stringify(path)}, log: silentLogger(), flushMax: 50 });
      await o.start(new AbortController().signal);
      const ps = [];
      for (let i = 0; i < 300; i++) ps.push(o.append(i % 3 ? 'a' : 'b', 'event', { i, pad: 'x'.repeat(200) }));
      await Promise.all(ps);
      process.stdout.write('committed\\n');
      setInterval(() => void o.append('a', 'event', { more: true }), 1);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('committed')) resolve();
      });
      child.on('exit', (c) => reject(new Error(`child exited early with ${c}`)));
    });
    await new Promise((r) => setTimeout(r, 50)); // let it keep writing, then kill mid-stream
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;

    const raw = new Database(path);
    assert.equal(raw.pragma('integrity_check', { simple: true }), 'ok');
    assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
    const count = (raw.prepare('SELECT COUNT(*) AS n FROM records WHERE epoch = 1 AND body NOT LIKE ?').get('%more%') as { n: number }).n;
    assert.equal(count, 300, 'every record whose promise resolved survived');
    raw.close();

    const o = await open(path);
    assert.equal(o.epoch, 2);
    assert.ok(o.pendingCount() >= 300);
    assert.deepEqual(await o.append('a', 'event', {}), { epoch: 2, seq: 0 });
    await o.stop();
  });

  void test('a full disk (SQLITE_FULL) rejects with STORAGE, loses nothing committed, recovers', async () => {
    const registry = new Registry();
    const o = await open(dbPath(), { registry, flushMax: 20 });
    const committed = await Promise.all(Array.from({ length: 20 }, (_, i) => o.append('s', 'event', { i })));
    assert.equal(committed.length, 20);
    o.checkpoint();
    o.setMaxDbBytes(1); // clamped by SQLite to the current size: the next page allocation fails
    const big = { pad: 'x'.repeat(8000) };
    const failed = await Promise.allSettled(Array.from({ length: 20 }, () => o.append('s', 'event', big)));
    assert.ok(failed.every((r) => r.status === 'rejected' && isStorage(r.reason)), 'every record of the failed group is rejected with STORAGE');
    const first = failed[0]!;
    assert.match(first.status === 'rejected' ? (first.reason as Error).message : '', /SQLITE_FULL/);
    assert.ok(o.stats().storageErrors >= 1);
    assert.match(await registry.getSingleMetricAsString('edgefleet_agent_outbox_storage_errors_total'), /_total [1-9]/);
    assert.equal(o.pendingCount(), 20);
    assert.equal(o.readBatch(0, 100).length, 20, 'committed rows kept');
    // Still working: small records that fit in free pages are fine, and with space back all is.
    o.setMaxDbBytes(undefined);
    const recovered = await o.append('s', 'event', big);
    assert.deepEqual(recovered, { epoch: 1, seq: 20 }, 'failed groups burned no seqs');
    assert.equal(o.pendingCount(), 21);
    await o.stop();
  });

  void test('start honours an aborted signal and a second start is refused', async () => {
    const o = new Outbox({ path: dbPath(), log: silentLogger() });
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(o.start(ac.signal), (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.ABORTED);
    await o.start(new AbortController().signal);
    await assert.rejects(o.start(new AbortController().signal), (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.ILLEGAL_STATE);
    await o.stop();
    await o.stop(); // idempotent
  });
});
