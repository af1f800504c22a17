/**
 * The stream overload policy on its own (agent/inputs/stream-queue.ts): a full queue drops the
 * oldest waiting item, an OVERLOADED run goes back to the head after a pause (not lost), the
 * byte cap drops the oldest too, and close() drops what waits and waits for what runs.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { StreamQueue } from '../../agent/inputs/stream-queue.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

void describe('stream queue', () => {
  it('full queue: the oldest waiting item is dropped, the newest kept, order preserved', async () => {
    const ran: number[] = [];
    const dropped: number[] = [];
    const g = gate();
    const q = new StreamQueue<number>({
      queueMax: 3,
      maxInFlight: 1,
      run: async (n) => {
        ran.push(n);
        await g.promise;
      },
      onDrop: (n, reason) => {
        assert.equal(reason, 'overload');
        dropped.push(n);
      },
    });
    for (let i = 0; i < 8; i++) q.push(i);
    assert.deepEqual(ran, [0], 'one in flight');
    assert.deepEqual(dropped, [1, 2, 3, 4], 'oldest waiting dropped first');
    g.open();
    await sleep(10);
    assert.deepEqual(ran, [0, 5, 6, 7]);
    assert.equal(q.depth, 0);
  });

  it('OVERLOADED: the item goes back to the head and is retried after a pause', async () => {
    const attempts: number[] = [];
    let overloaded = 2;
    const q = new StreamQueue<number>({
      queueMax: 10,
      maxInFlight: 1,
      retryMs: 5,
      run: (n) => {
        attempts.push(n);
        if (n === 0 && overloaded-- > 0) return Promise.reject(new EdgefleetError(ErrorCode.OVERLOADED, 'full'));
        return Promise.resolve();
      },
      onDrop: () => assert.fail('nothing may be dropped'),
    });
    q.push(0);
    q.push(1);
    await sleep(50);
    assert.deepEqual(attempts, [0, 0, 0, 1], 'retried in place, order kept');
  });

  it('byte cap drops the oldest; close() drops the waiting ones as shutdown and waits for the running one', async () => {
    const drops: Array<[string, string]> = [];
    const g = gate();
    let finished = false;
    const q = new StreamQueue<string>({
      queueMax: 100,
      maxInFlight: 1,
      maxBytes: 10,
      sizeOf: (s) => s.length,
      run: async () => {
        await g.promise;
        finished = true;
      },
      onDrop: (s, reason) => drops.push([s, reason]),
    });
    q.push('running');
    q.push('aaaa');
    q.push('bbbb');
    q.push('cccc'); // 12 bytes waiting > 10: 'aaaa' goes
    assert.deepEqual(drops, [['aaaa', 'overload']]);
    const closing = q.close();
    assert.deepEqual(drops.slice(1), [['bbbb', 'shutdown'], ['cccc', 'shutdown']]);
    q.push('late');
    assert.deepEqual(drops.at(-1), ['late', 'shutdown']);
    g.open();
    await closing;
    assert.ok(finished, 'close waited for the item in flight');
  });
});
