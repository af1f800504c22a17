/**
 * The outbox's group commit shares one promise per commit among its records (issue #5 hot
 * path). These tests pin what that must not change: a record's promise settles only with ITS
 * OWN commit and with its own identity, a failed commit rejects exactly its own records, a
 * group of appendNow records that fails leaves no unhandled rejection, and bad names are
 * refused even after good ones were cached. Real SQLite in a temp dir.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/log.ts';
import { Outbox, type AppendResult } from '../../agent/outbox/outbox.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-outbox-group-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

let n = 0;
async function open(): Promise<Outbox> {
  // A flush timer far away: the tests decide when each group commits.
  const o = new Outbox({ path: join(dir, `o-${n++}.db`), log: silentLogger(), flushMs: 60_000, flushMax: 1000 });
  await o.start(new AbortController().signal);
  return o;
}

/** Settled state of a promise after the microtask queue has run. */
async function state<T>(p: Promise<T>): Promise<'pending' | 'fulfilled' | 'rejected'> {
  let s: 'pending' | 'fulfilled' | 'rejected' = 'pending';
  p.then(
    () => (s = 'fulfilled'),
    () => (s = 'rejected'),
  );
  await new Promise((r) => setImmediate(r));
  return s;
}

void describe('outbox group commit', () => {
  void test("a record's promise settles with its own commit, not an earlier one", async () => {
    const o = await open();
    const first = [o.append('a', 'event', { i: 0 }), o.append('b', 'event', { i: 0 }), o.append('a', 'event', { i: 1 })];
    for (const p of first) assert.equal(await state(p), 'pending', 'nothing resolves before its commit');
    o.flush();
    const later = [o.append('a', 'event', { i: 2 }), o.append('b', 'event', { i: 1 })];
    assert.deepEqual(await Promise.all(first), [
      { epoch: 1, seq: 0 },
      { epoch: 1, seq: 0 },
      { epoch: 1, seq: 1 },
    ]);
    for (const p of later) assert.equal(await state(p), 'pending', 'the next group waits for its own commit');
    o.flush();
    assert.deepEqual(await Promise.all(later), [
      { epoch: 1, seq: 2 },
      { epoch: 1, seq: 1 },
    ]);
    assert.equal(o.readBatch(0, 10).length, 5);
    await o.stop();
  });

  void test('appendNow commits the queued group in order and returns its own seq', async () => {
    const o = await open();
    const queued = o.append('s', 'event', { i: 0 });
    assert.deepEqual(o.appendNow('s', 'event', { i: 1 }), { epoch: 1, seq: 1 });
    assert.deepEqual(await queued, { epoch: 1, seq: 0 });
    await o.stop();
  });

  void test('a failed commit rejects exactly its own records; an appendNow-only group leaves no unhandled rejection', async () => {
    const o = await open();
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const ok = [o.append('s', 'event', { i: 0 }), o.append('s', 'event', { i: 1 })];
      o.flush();
      assert.deepEqual(
        (await Promise.all(ok)).map((r: AppendResult) => r.seq),
        [0, 1],
      );
      o.checkpoint();
      o.setMaxDbBytes(1); // SQLite keeps the current size: the next new page fails with SQLITE_FULL
      const big = { pad: 'x'.repeat(8000) };
      const failing = [o.append('s', 'event', big), o.append('s', 'event', big)];
      o.flush();
      for (const p of failing) await assert.rejects(p, (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.STORAGE);
      assert.throws(
        () => o.appendNow('s', 'event', big),
        (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.STORAGE,
      );
      o.setMaxDbBytes(undefined);
      const recovered = o.append('s', 'event', big);
      o.flush();
      assert.deepEqual(await recovered, { epoch: 1, seq: 2 }, 'failed groups burn no seqs');
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await o.stop();
    }
  });

  void test('bad names are refused before and after good names were cached', async () => {
    const o = await open();
    const bad = (p: Promise<unknown>): Promise<void> => assert.rejects(p, (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.BAD_INPUT);
    await bad(o.append('bad/stream', 'event', {}));
    const good = o.append('good', 'event', {});
    o.flush();
    await good;
    await bad(o.append('good', 'bad kind', {}));
    await bad(o.append('x'.repeat(65), 'event', {}));
    await bad(o.append(42 as unknown as string, 'event', {}));
    // 58 UTF-16 units but 108 UTF-8 bytes: over the cap, though its string length is not.
    const small = new Outbox({ path: join(dir, `o-${n++}.db`), log: silentLogger(), maxBodyBytes: 100 });
    await small.start(new AbortController().signal);
    await assert.rejects(small.append('s', 'event', { t: 'é'.repeat(50) }), (e: unknown) => e instanceof EdgefleetError && e.code === ErrorCode.PAYLOAD_TOO_LARGE);
    assert.deepEqual(small.appendNow('s', 'event', { t: 'é'.repeat(30) }), { epoch: 1, seq: 0 });
    await small.stop();
    await o.stop();
  });
});
