/**
 * The retained-replay guard (agent/inputs/retained-guard.ts) on real files in a temp dir: it
 * never keeps a delivery's payload (it used to hold every frame of the last second until its
 * write, ~90 MB of RSS in the 10x overload test where each frame has its own topic), its marks
 * are bounded by maxTopics however many distinct topics arrive, and replays are still told
 * apart from new readings after a restart.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { after, describe, it } from 'node:test';
import { RetainedReplayGuard } from '../../agent/inputs/retained-guard.ts';
import { silentLogger } from '../../shared/log.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

describe('retained-replay guard', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-retained-guard-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('keeps no payload between writes: a delivered frame can be collected before the flush', async () => {
    const guard = new RetainedReplayGuard({ path: join(dir, 'marks-gc.json'), log: silentLogger(), flushMs: 60_000 });
    await guard.start();
    const refs: WeakRef<Buffer>[] = [];
    // In a function of its own, so no frame stays referenced from this frame's locals.
    const deliver = (i: number): boolean => {
      const frame = Buffer.alloc(64 * 1024, i);
      refs.push(new WeakRef(frame));
      return guard.isReplay(`edgefleet/v1/cam/in/camera/f${i}`, frame, false);
    };
    for (let i = 0; i < 50; i++) assert.equal(deliver(i), false);
    await new Promise((r) => setImmediate(r));
    gc();
    const alive = refs.filter((r) => r.deref() !== undefined).length;
    assert.equal(alive, 0, `${alive} of 50 frames still held by the guard before its write`);
    await guard.stop();
  });

  it('bounds its marks by maxTopics over many distinct topics, and still recognises replays after a restart', async () => {
    const path = join(dir, 'marks-bound.json');
    const guard = new RetainedReplayGuard({ path, log: silentLogger(), flushMs: 60_000, maxTopics: 100 });
    await guard.start();
    for (let i = 0; i < 1000; i++) guard.isReplay(`in/t${i}`, Buffer.from(`frame ${i}`), false);
    await guard.stop();
    const topics = Object.keys((JSON.parse(readFileSync(path, 'utf8')) as { topics: Record<string, unknown> }).topics);
    assert.equal(topics.length, 100);
    assert.ok(topics.includes('in/t999') && !topics.includes('in/t899'), 'the newest topics are kept');

    const again = new RetainedReplayGuard({ path, log: silentLogger(), maxTopics: 100 });
    await again.start();
    assert.equal(again.isReplay('in/t999', Buffer.from('frame 999'), true), true, 'the same retained frame is a replay');
    assert.equal(again.isReplay('in/t998', Buffer.from('frame 998 v2'), true), false, 'a different retained frame is new');
    assert.equal(again.isReplay('in/t998', Buffer.from('frame 998 v2'), true), true, 'and then a replay itself');
    assert.equal(again.isReplay('in/t0', Buffer.from('frame 0'), true), false, 'a forgotten topic is inferred again (at-least-once)');
    const json = Buffer.from(JSON.stringify({ id: 'r1', ts: 1000, values: [1] }));
    assert.equal(again.isReplay('in/json', json, false), false);
    assert.equal(again.isReplay('in/json', Buffer.from(JSON.stringify({ id: 'r0', ts: 999, values: [2] })), true), true, 'an older retained reading is a replay');
    await again.stop();
  });
});
