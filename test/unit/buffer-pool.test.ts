/**
 * BufferPool (agent/runtime/buffer-pool.ts): frame buffers handed back by the engine are reused
 * by size, bounded per size and in bytes, and detached buffers are never kept.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BufferPool } from '../../agent/runtime/buffer-pool.ts';

describe('BufferPool', () => {
  it('reuses a given buffer for the next array of the same byte length, and only that length', () => {
    const pool = new BufferPool();
    const a = new Float32Array(1000);
    pool.give(a.buffer);
    assert.equal(pool.bytes, 4000);
    assert.notEqual(pool.float32(999).buffer, a.buffer, 'another size: a new buffer');
    assert.equal(pool.float32(1000).buffer, a.buffer, 'same size: the given buffer');
    assert.equal(pool.bytes, 0);
    assert.notEqual(pool.float32(1000).buffer, a.buffer, 'taken once: the pool is empty again');
  });

  it('keeps at most maxPerSize per length and maxBytes in all; ignores detached buffers', () => {
    const pool = new BufferPool({ maxPerSize: 2, maxBytes: 10_000 });
    for (let i = 0; i < 5; i++) pool.give(new ArrayBuffer(1000));
    assert.equal(pool.bytes, 2000);
    for (let i = 0; i < 20; i++) pool.give(new ArrayBuffer(400 + 4 * i));
    assert.ok(pool.bytes <= 10_000, `${pool.bytes} bytes idle`);
    const gone = new ArrayBuffer(64);
    structuredClone(gone, { transfer: [gone] });
    const before = pool.bytes;
    pool.give(gone);
    assert.equal(pool.bytes, before, 'a detached buffer is not kept');
  });
});
