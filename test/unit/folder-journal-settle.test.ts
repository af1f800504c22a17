/**
 * settleFolderJournal (agent/inputs/folder-input.ts) on a real journal and a real outbox
 * (SQLite files in a temp dir): the rows a crash left `appending` are settled before the hub
 * link starts, so an outbox copy the hub acks (deletes) afterwards is never appended again. The
 * folder test's crash point 2 produced a duplicate in a CI-style run when the link's ack won the
 * race against the folder input's "is it in the outbox" check.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { settleFolderJournal } from '../../agent/inputs/folder-input.ts';
import { FolderJournal } from '../../agent/inputs/folder-journal.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { silentLogger } from '../../shared/log.ts';

describe('folder journal settled before the link starts', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-folder-settle-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const record = (id: string, key: string, label: string) => ({
    stream: 'inference',
    kind: 'inference',
    ts: 1_700_000_000_000,
    body: { id, pipeline: 'camera', model: 'm', version: '1.0.0', label, source: 'folder', file: key },
  });
  const inferenceBodies = (o: Outbox): Record<string, unknown>[] => o.readBatch(0, 1000).map((r) => r.body);

  it('keeps a record already in the outbox, appends a missing one, marks both done; an ack afterwards does not bring it back', async () => {
    const journal = new FolderJournal({ path: join(dir, 'journal.db'), synchronous: 'NORMAL' });
    await journal.start(new AbortController().signal);
    const outbox = new Outbox({ path: join(dir, 'outbox.db'), log: silentLogger() });
    await outbox.start(new AbortController().signal);
    try {
      // Crash after step 1 (journaled only) and after step 2 (journaled and in the outbox).
      journal.appending('camera', 'a.png:10:1', record('a.png', 'a.png:10:1', 'from-journal'));
      const b = record('b.png', 'b.png:10:2', 'from-outbox');
      journal.appending('camera', 'b.png:10:2', b);
      const sent = outbox.appendNow(b.stream, b.kind, b.body, b.ts);
      journal.done('camera', 'c.png:10:3'); // step 3 already: nothing to settle
      assert.deepEqual(journal.appendingRows().map((r) => r.fileKey), ['a.png:10:1', 'b.png:10:2']);

      assert.deepEqual(settleFolderJournal(journal, outbox), { kept: 1, appended: 1 });
      assert.deepEqual(inferenceBodies(outbox).map((x) => [x['id'], x['label']]), [['b.png', 'from-outbox'], ['a.png', 'from-journal']]);
      assert.equal(journal.get('camera', 'a.png:10:1')?.state, 'done');
      assert.equal(journal.get('camera', 'b.png:10:2')?.state, 'done');
      assert.deepEqual(journal.appendingRows(), []);

      // The link sends b and the hub acks it: deleted from the outbox. Settling again (a second
      // start) finds nothing to do, so b is not appended a second time.
      assert.equal(outbox.ack([{ stream: 'inference', epoch: sent.epoch, from: sent.seq, to: sent.seq }]), 1);
      assert.deepEqual(settleFolderJournal(journal, outbox), { kept: 0, appended: 0 });
      assert.deepEqual(inferenceBodies(outbox).map((x) => x['id']), ['a.png']);
    } finally {
      await outbox.stop();
      await journal.stop();
    }
  });
});
