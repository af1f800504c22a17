/**
 * Folder input in process, with the real hub: what is taken and what is left alone, failed
 * files with their reason, back-pressure instead of drops when the engine is overloaded, and
 * recovery from every crash point of the exactly-once sequence (folder-journal.ts), staged
 * directly in the journal and the outbox before the agent starts: a record journaled but never
 * committed is appended once from the journal; one already in the outbox is not appended again;
 * a file journaled `done` is only moved; a claimed file without a row is processed normally.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import type { Agent } from '../../agent/main.ts';
import { fileKey } from '../../agent/inputs/folder-input.ts';
import { FolderJournal } from '../../agent/inputs/folder-journal.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { silentLogger } from '../../shared/log.ts';
import { createRng, encodePartPng, partDataset } from '../../scripts/lib/synthetic.ts';
import { corruptJpeg } from '../helpers/hostile-images.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';

const fleet = new InProcessFleet();
const DEV = 'folder-box';
let agent: Agent;
let inbox: string;
const images = partDataset(createRng(55), 40).images;
const png = (i: number): Promise<Buffer> => encodePartPng(images[i % images.length]!);
const ls = (dir: string): string[] => readdirSync(dir).sort();

async function metric(name: string, labels: Record<string, string>): Promise<number> {
  const m = await agent.registry.getSingleMetric(name)?.get();
  let sum = 0;
  for (const v of m?.values ?? []) if (Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want)) sum += v.value;
  return sum;
}

before(async () => {
  await fleet.startHub();
  inbox = join(fleet.root, 'camera');
  const processing = join(inbox, '.processing');
  mkdirSync(processing, { recursive: true });
  const dataDir = join(fleet.root, DEV, 'data');
  mkdirSync(dataDir, { recursive: true });

  // Stage the state a crash leaves behind, at each point of the sequence.
  const keyOf = async (name: string, i: number): Promise<string> => {
    writeFileSync(join(processing, name), await png(i));
    const st = statSync(join(processing, name));
    return fileKey(name, st.size, st.mtimeMs);
  };
  const record = (id: string, key: string, label: string) => ({
    stream: 'inference',
    kind: 'inference',
    ts: Date.now(),
    body: { id, pipeline: 'camera', model: 'part-defect', version: '1.0.0', label, confidence: 0.99, source: 'folder', file: key },
  });
  const journal = new FolderJournal({ path: join(dataDir, 'folder-inputs.db'), synchronous: 'NORMAL' });
  await journal.start(new AbortController().signal);
  const outbox = new Outbox({ path: join(dataDir, 'outbox.db'), log: silentLogger() });
  await outbox.start(new AbortController().signal);
  // Crash after step 1: journaled, never committed to the outbox.
  const a = await keyOf('staged-a.png', 0);
  journal.appending('camera', a, record('staged-a.png', a, 'from-journal'));
  // Crash after step 2: journaled and in the outbox, journal not yet `done`.
  const b = await keyOf('staged-b.png', 1);
  const rb = record('staged-b.png', b, 'from-outbox');
  journal.appending('camera', b, rb);
  outbox.appendNow(rb.stream, rb.kind, rb.body, rb.ts);
  // Crash after step 3: only the move is left.
  const c = await keyOf('staged-c.png', 2);
  journal.done('camera', c);
  // Crash after the claim: no row at all.
  await keyOf('staged-d.png', 3);
  // Crash after the move, before the row was deleted: the file is gone, the row is stale.
  journal.done('camera', 'gone.png:1:1');
  await outbox.stop();
  await journal.stop();

  writeFileSync(join(inbox, 'broken.jpg'), await corruptJpeg());
  writeFileSync(join(inbox, 'readme.txt'), 'not an image');
  writeFileSync(join(inbox, '.partial.png'), await png(4));

  agent = await fleet.startAgent(DEV, {
    models: [{ manifest: `${MODELS_DIR}/part-defect.manifest.json` }],
    // One sample may wait in the engine: the folder's 6 parallel files overload it.
    runtime: { queueMax: 1, maxBatch: 1 },
    pipelines: [{ name: 'camera', model: 'part-defect', input: { type: 'folder', path: inbox, stableMs: 100, scanMs: 200, concurrency: 6 } }],
  });
});

after(async () => {
  await fleet.stop();
});

void describe('folder input', () => {
  it('recovers every crash point: nothing twice, nothing lost', async () => {
    const done = join(inbox, 'done');
    await until(() => ['staged-a.png', 'staged-b.png', 'staged-c.png', 'staged-d.png'].every((n) => ls(done).includes(n)), 20_000, 'staged files in done/');
    await until(async () => (await fleet.telemetry(DEV)).filter((r) => String(r.body['id']).startsWith('staged-')).length >= 3, 20_000, 'staged telemetry at the hub');
    await sleep(300); // a duplicate, were there one, would arrive now
    const rows = (await fleet.telemetry(DEV)).filter((r) => String(r.body['id']).startsWith('staged-'));
    const byId = new Map(rows.map((r) => [r.body['id'] as string, r]));
    assert.equal(rows.length, 3, `ids: ${rows.map((r) => String(r.body['id'])).join(', ')}`);
    assert.equal(byId.get('staged-a.png')?.body['label'], 'from-journal', 'appended from the journal, not re-inferred');
    assert.equal(byId.get('staged-b.png')?.body['label'], 'from-outbox', 'already in the outbox: not appended again');
    assert.ok(!byId.has('staged-c.png'), 'journaled done: only moved');
    assert.ok(['good', 'defective'].includes(byId.get('staged-d.png')?.body['label'] as string), 'claimed without a row: processed');
    assert.deepEqual(readdirSync(join(inbox, '.processing')), []);
  });

  it('takes complete matching files, leaves others, fails corrupt ones with a reason, never drops under overload', async () => {
    const names: string[] = [];
    for (let i = 0; i < 24; i++) {
      const name = `img-${String(i).padStart(2, '0')}.png`;
      writeFileSync(join(inbox, name), await png(i));
      names.push(name);
    }
    const done = join(inbox, 'done');
    await until(() => names.every((n) => ls(done).includes(n)), 30_000, 'all 24 files in done/');
    await until(() => ls(join(inbox, 'failed')).length === 2, 10_000, 'the corrupt file in failed/');
    assert.deepEqual(ls(join(inbox, 'failed')), ['broken.jpg', 'broken.jpg.error.txt']);
    assert.match(readFileSync(join(inbox, 'failed', 'broken.jpg.error.txt'), 'utf8'), /^BAD_INPUT: /);
    assert.deepEqual(ls(inbox), ['.partial.png', '.processing', 'done', 'failed', 'readme.txt'], 'dot files and non-matching names are left alone');
    assert.ok((await metric('edgefleet_agent_inferences_total', { pipeline: 'camera', outcome: 'overloaded' })) > 0, 'the engine was overloaded');
    assert.equal(await metric('edgefleet_agent_input_dropped_total', { pipeline: 'camera' }), 0, 'folder files are never dropped');
    assert.equal(await metric('edgefleet_agent_folder_files_total', { pipeline: 'camera', outcome: 'failed' }), 1);
    await until(async () => (await fleet.telemetry(DEV)).filter((r) => String(r.body['id']).startsWith('img-')).length >= 24, 20_000, 'telemetry at the hub');
    const ids = (await fleet.telemetry(DEV)).map((r) => String(r.body['id'])).filter((id) => id.startsWith('img-'));
    assert.deepEqual(ids.sort(), names, 'each file reported once');
  });

  it('a file still being written is taken only once it is stable', async () => {
    const bytes = await png(7);
    const name = 'slow.png';
    writeFileSync(join(inbox, name), bytes.subarray(0, 40));
    for (let i = 1; i <= 5; i++) {
      await sleep(60); // less than stableMs between writes
      writeFileSync(join(inbox, name), bytes.subarray(0, Math.min(bytes.length, 40 + i * Math.ceil(bytes.length / 5))), { flag: 'w' });
      assert.ok(ls(inbox).includes(name), 'not taken while it grows');
    }
    await until(() => ls(join(inbox, 'done')).includes(name), 10_000, 'slow.png in done/');
    assert.ok(!ls(join(inbox, 'failed')).includes(name), 'taken complete, not as a truncated image');
  });
});
