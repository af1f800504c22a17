/**
 * cli/progress.ts: which mode a command gets (--json wins, then a terminal, then --progress),
 * the throttled redraw on a fake clock, milestones above the live line, and model push's byte
 * counter over a stream of several chunks (a line per quarter with --progress).
 */
import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, test } from 'node:test';
import type { CliIo } from '../../cli/command.ts';
import { uploadProgress } from '../../cli/commands/model.ts';
import { Progress, bar, progressMode } from '../../cli/progress.ts';

function io(isTTY: boolean | undefined, columns = 200): { io: CliIo; raw: () => string } {
  let raw = '';
  return {
    io: { out: () => undefined, err: () => undefined, env: {}, ...(isTTY === undefined ? {} : { stderr: { isTTY, columns, write: (s: string) => void (raw += s) } }) },
    raw: () => raw,
  };
}

describe('CLI progress', () => {
  test('mode: --json off, terminal tty, --progress lines, otherwise off', () => {
    assert.equal(progressMode(io(true).io, { json: true, progress: true }), 'off');
    assert.equal(progressMode(io(true).io, {}), 'tty');
    assert.equal(progressMode(io(false).io, { progress: true }), 'lines');
    assert.equal(progressMode(io(false).io, {}), 'off');
    assert.equal(progressMode(io(undefined).io, { progress: true }), 'off', 'no stderr stream given');
  });

  test('bar', () => {
    assert.equal(bar(0, 4), '[....]');
    assert.equal(bar(0.5, 4), '[##..]');
    assert.equal(bar(2, 4), '[####]');
    assert.equal(bar(Number.NaN, 4), '[....]');
  });

  test('tty: redraws at most every minIntervalMs; the last pending text is drawn by done()', () => {
    let t = 0;
    const o = io(true);
    const p = new Progress(o.io, 'tty', { now: () => t, minIntervalMs: 100 });
    p.update('a');
    t = 50;
    p.update('b');
    p.update('c');
    assert.equal(o.raw(), '\r\x1b[2Ka', 'b and c came too soon');
    t = 150;
    p.update('d');
    assert.equal(o.raw(), '\r\x1b[2Ka\r\x1b[2Kd');
    t = 160;
    p.update('e');
    p.done();
    assert.equal(o.raw(), '\r\x1b[2Ka\r\x1b[2Kd\r\x1b[2Ke\n');
  });

  test('tty: a step goes above the live line, which is redrawn under it; long lines are cut to the width', () => {
    const o = io(true, 10);
    const p = new Progress(o.io, 'tty', { now: () => 0 });
    p.update('live');
    p.step('milestone');
    assert.equal(o.raw(), '\r\x1b[2Klive\r\x1b[2Kmilestone\n\r\x1b[2Klive');
    p.update('0123456789abc', true);
    assert.ok(o.raw().endsWith('\r\x1b[2K01234567…'));
  });

  test('lines: steps only, no control characters; off: nothing', () => {
    const l = io(false);
    const p = new Progress(l.io, 'lines');
    p.update('x');
    p.step('one');
    p.step('two');
    p.done();
    assert.equal(l.raw(), 'one\ntwo\n');
    const o = io(true);
    const off = new Progress(o.io, 'off');
    off.update('x', true);
    off.step('y');
    off.done();
    assert.equal(o.raw(), '');
  });

  test('model push counter: every byte passes through, a line per quarter, then the checking line', async () => {
    const l = io(false);
    const chunks = Array.from({ length: 8 }, (_, i) => Buffer.alloc(1024, i));
    let received = 0;
    await pipeline(
      Readable.from(chunks),
      uploadProgress(new Progress(l.io, 'lines'), 8 * 1024),
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          received += chunk.length;
          cb();
        },
      }),
    );
    assert.equal(received, 8 * 1024);
    assert.deepEqual(
      l.raw().trimEnd().split('\n'),
      [
        'uploading [######..................] 25%  2.0 KiB / 8.0 KiB',
        'uploading [############............] 50%  4.0 KiB / 8.0 KiB',
        'uploading [##################......] 75%  6.0 KiB / 8.0 KiB',
        'uploaded 8.0 KiB; the hub is checking the model (test vectors in a sandbox)...',
      ],
    );
  });
});
