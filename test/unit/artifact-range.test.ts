/**
 * Range header interpretation for artifact downloads (hub/models/artifact-http.ts), RFC 9110 §14.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseRange } from '../../hub/models/artifact-http.ts';

test('single byte ranges: closed, open, suffix, clamped', () => {
  assert.deepEqual(parseRange('bytes=0-99', 1000), { kind: 'partial', start: 0, end: 99 });
  assert.deepEqual(parseRange('bytes=500-', 1000), { kind: 'partial', start: 500, end: 999 });
  assert.deepEqual(parseRange('bytes=900-5000', 1000), { kind: 'partial', start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=-100', 1000), { kind: 'partial', start: 900, end: 999 });
  assert.deepEqual(parseRange('bytes=-5000', 1000), { kind: 'partial', start: 0, end: 999 });
  assert.deepEqual(parseRange('bytes=999-999', 1000), { kind: 'partial', start: 999, end: 999 });
});

test('unsatisfiable: start at or past the end, empty suffix', () => {
  for (const h of ['bytes=1000-', 'bytes=1000-2000', 'bytes=-0']) assert.deepEqual(parseRange(h, 1000), { kind: 'unsatisfiable' }, h);
});

test('ignored (whole file): absent, other units, malformed, reversed, several ranges', () => {
  for (const h of [undefined, 'items=0-1', 'bytes=', 'bytes=-', 'bytes=abc', 'bytes=5-1', 'bytes=0-1,5-9', 'bytes=99999999999999999999-']) {
    assert.deepEqual(parseRange(h, 1000), { kind: 'full' }, String(h));
  }
});
