/**
 * shared/npz.ts: .npy/.npz round trips for every dtype, files written by real NumPy (and ours
 * read by NumPy) when python3 has numpy, a hand-assembled .npy per the format spec either way,
 * and hostile archives — truncated, lying sizes, zip bombs, overlapping entries, path tricks,
 * bad headers, huge shapes, random corruption — each refused with BAD_MANIFEST, fast.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { deflateRawSync } from 'node:zlib';
import { EdgefleetError } from '../../shared/errors.ts';
import { decodeNpy, encodeNpy, entryNameProblem, NPY_DTYPES, readNpz, writeNpz, type NpyArray, type NpyDtype } from '../../shared/npz.ts';

const LIMITS = { maxEntries: 64, maxBytes: 64 * 1024 * 1024 };

function sample(dtype: NpyDtype, dims: number[]): NpyArray {
  const n = dims.reduce((a, b) => a * b, 1);
  const vals = Array.from({ length: n }, (_, i) => i * 7 - 5);
  switch (dtype) {
    case 'float32':
      return { dtype, dims, data: Float32Array.from(vals, (v) => v / 3) };
    case 'float64':
      return { dtype, dims, data: Float64Array.from(vals, (v) => v / 3) };
    case 'float16':
      return { dtype, dims, data: Uint16Array.from(vals, (v) => (v * 977) & 0x7bff) };
    case 'uint8':
      return { dtype, dims, data: Uint8Array.from(vals, (v) => v & 0xff) };
    case 'int8':
      return { dtype, dims, data: Int8Array.from(vals, (v) => ((v & 0xff) << 24) >> 24) };
    case 'int32':
      return { dtype, dims, data: Int32Array.from(vals, (v) => v * 100_003) };
    case 'int64':
      return { dtype, dims, data: BigInt64Array.from(vals, (v) => BigInt(v) * 3_000_000_000n) };
    case 'bool':
      return { dtype, dims, data: Uint8Array.from(vals, (v) => v & 1) };
  }
}

/** Asserts `fn` throws BAD_MANIFEST (and nothing else) with a message matching `re`. */
function refused(fn: () => unknown, re?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof EdgefleetError, `expected an EdgefleetError, got ${String(e)}`);
    assert.equal(e.code, 'BAD_MANIFEST');
    if (re) assert.match(e.message, re);
    return true;
  });
}

// --------------------------------------------------------------- a hand-rolled zip writer

interface RawEntry {
  name: string | Buffer;
  data: Buffer;
  method?: number;
  flags?: number;
  /** What the central directory declares; default the truth. */
  size?: number;
  compressedSize?: number;
  crc?: number;
  localOffset?: number;
  cdExtra?: Buffer;
  /** Bytes stored for the entry; default `data` deflated for method 8, else `data`. */
  stored?: Buffer;
}

const CRC = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = (CRC[(c ^ (b[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function zip(entries: RawEntry[], opts: { count?: number; cdOffset?: number; comment?: Buffer } = {}): Buffer {
  const locals: Buffer[] = [];
  const cds: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = typeof e.name === 'string' ? Buffer.from(e.name) : e.name;
    const method = e.method ?? 0;
    const stored = e.stored ?? (method === 8 ? deflateRawSync(e.data) : e.data);
    const crc = e.crc ?? crc32(e.data);
    const l = Buffer.alloc(30);
    l.writeUInt32LE(0x04034b50, 0);
    l.writeUInt16LE(20, 4);
    l.writeUInt16LE(e.flags ?? 0, 6);
    l.writeUInt16LE(method, 8);
    l.writeUInt32LE(crc, 14);
    l.writeUInt32LE(stored.length, 18);
    l.writeUInt32LE(e.data.length, 22);
    l.writeUInt16LE(name.length, 26);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(e.flags ?? 0, 8);
    c.writeUInt16LE(method, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(e.compressedSize ?? stored.length, 20);
    c.writeUInt32LE(e.size ?? e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt16LE(e.cdExtra?.length ?? 0, 30);
    c.writeUInt32LE(e.localOffset ?? offset, 42);
    locals.push(l, name, stored);
    cds.push(c, name, e.cdExtra ?? Buffer.alloc(0));
    offset += 30 + name.length + stored.length;
  }
  const cd = Buffer.concat(cds);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(opts.count ?? entries.length, 8);
  end.writeUInt16LE(opts.count ?? entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(opts.cdOffset ?? offset, 16);
  end.writeUInt16LE(opts.comment?.length ?? 0, 20);
  return Buffer.concat([...locals, cd, end, opts.comment ?? Buffer.alloc(0)]);
}

/** A .npy by hand, per the format spec: magic, version 1.0, header length, dict padded to 64. */
function handNpy(dict: string, data: Buffer, version: [number, number] = [1, 0]): Buffer {
  const prelude = version[0] === 1 ? 10 : 12;
  let header = `${dict}`;
  const total = Math.ceil((prelude + header.length + 1) / 64) * 64;
  header = `${header}${' '.repeat(total - prelude - header.length - 1)}\n`;
  const head = Buffer.alloc(prelude);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, version[0], version[1]]).copy(head);
  if (prelude === 10) head.writeUInt16LE(header.length, 8);
  else head.writeUInt32LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), data]);
}

const f32le = (...v: number[]): Buffer => Buffer.from(Float32Array.from(v).buffer);

describe('npy/npz round trip', () => {
  test('every dtype, scalar, empty and 5-D arrays survive writeNpz → readNpz and encodeNpy → decodeNpy', () => {
    const arrays: Record<string, NpyArray> = {};
    for (const dtype of NPY_DTYPES) {
      arrays[`${dtype}_2x3`] = sample(dtype, [2, 3]);
      arrays[`${dtype}_scalar`] = sample(dtype, []);
      arrays[`${dtype}_empty`] = sample(dtype, [0, 4]);
      arrays[`${dtype}_5d`] = sample(dtype, [1, 2, 1, 3, 2]);
    }
    arrays['0.in.image'] = sample('float32', [1, 3, 8, 8]);
    arrays['ünïcode name'] = sample('int8', [3]);
    const back = readNpz(writeNpz(arrays), { maxEntries: 64, maxBytes: 1 << 20 });
    assert.deepEqual(Object.keys(back), Object.keys(arrays));
    for (const [k, a] of Object.entries(arrays)) {
      assert.equal(back[k]!.dtype, a.dtype, k);
      assert.deepEqual(back[k]!.dims, a.dims, k);
      assert.deepEqual(back[k]!.data, a.data, k);
      assert.deepEqual(decodeNpy(encodeNpy(a), { maxBytes: 1 << 20 }), a, k);
    }
  });

  test('the archive is deterministic, deflated, and its .npy headers are 64-byte aligned', () => {
    const a = { x: sample('float32', [100, 10]) };
    const z1 = writeNpz(a);
    assert.ok(z1.equals(writeNpz({ x: sample('float32', [100, 10]) })));
    assert.equal(z1.readUInt16LE(8), 8, 'method deflate');
    const npy = encodeNpy(a.x);
    assert.equal((10 + npy.readUInt16LE(8)) % 64, 0);
  });

  test('writers refuse data that does not match its dtype or dims', () => {
    assert.throws(() => encodeNpy({ dtype: 'float32', dims: [3], data: new Float64Array(3) }), TypeError);
    assert.throws(() => encodeNpy({ dtype: 'int8', dims: [2, 2], data: new Int8Array(3) }), RangeError);
    assert.throws(() => writeNpz({ '../up': sample('uint8', [1]) }), RangeError);
  });

  test('a hand-assembled .npy (format spec, independent of NumPy) reads back, v1.0 and v2.0', () => {
    for (const v of [[1, 0], [2, 0]] as [number, number][]) {
      const npy = handNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", f32le(1.5, -2, 0.25, 1e10), v);
      const a = decodeNpy(npy, { maxBytes: 1024 });
      assert.equal(a.dtype, 'float32');
      assert.deepEqual(a.dims, [2, 2]);
      assert.deepEqual(Array.from(a.data as Float32Array), [1.5, -2, 0.25, 1e10]);
    }
    // Key order, quotes and spacing as other writers produce them; 1-byte types with '<'.
    const odd = handNpy('{"shape": (3,), "fortran_order": False, "descr": "<u1"}', Buffer.from([1, 2, 255]));
    assert.deepEqual(Array.from(decodeNpy(odd, { maxBytes: 16 }).data as Uint8Array), [1, 2, 255]);
  });
});

const hasNumpy = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' }).status === 0;

describe('interop with NumPy', { skip: hasNumpy ? false : 'python3 has no numpy here (the hand-assembled .npy test covers the format)' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-npz-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const py = (code: string): string => {
    const r = spawnSync('python3', ['-c', code], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };

  test('reads np.savez and np.savez_compressed archives and np.save files (v1.0 and v2.0)', () => {
    py(`
import numpy as np, json
a = {
  'f32': np.arange(12, dtype='<f4').reshape(3, 4) / 7,
  'f64': np.linspace(-1, 1, 5),
  'f16': np.array([0.5, -2.25, 65504, 6e-5], dtype='<f2'),
  'u8': np.arange(250, 256, dtype='u1'),
  'i8': np.array([-128, 0, 127], dtype='i1'),
  'i32': np.array([[-2**31, 2**31 - 1]], dtype='<i4'),
  'i64': np.array([-2**62, 5, 2**53], dtype='<i8'),
  'b': np.array([True, False, True]),
  'scalar': np.float32(3.5),
  'empty': np.zeros((0, 3), dtype='<f4'),
  '0.in.x': np.ones((1, 2, 2, 2), dtype='<f4'),
}
np.savez('${dir}/plain.npz', **a)
np.savez_compressed('${dir}/compressed.npz', **a)
np.save('${dir}/one.npy', a['f32'])
with open('${dir}/v2.npy', 'wb') as f:
    np.lib.format.write_array(f, a['i64'], version=(2, 0))
json.dump({k: {'dtype': str(v.dtype), 'shape': list(np.shape(v)), 'values': np.asarray(v).astype('f8').ravel().tolist(), 'raw': np.asarray(v).view('u1').ravel().tolist() if np.asarray(v).dtype == np.float16 else None} for k, v in a.items()}, open('${dir}/expect.json', 'w'))
`);
    const expect = JSON.parse(readFileSync(join(dir, 'expect.json'), 'utf8')) as Record<string, { dtype: string; shape: number[]; values: number[]; raw: number[] | null }>;
    const names: Record<string, NpyDtype> = { float32: 'float32', float64: 'float64', float16: 'float16', uint8: 'uint8', int8: 'int8', int32: 'int32', int64: 'int64', bool: 'bool' };
    for (const file of ['plain.npz', 'compressed.npz']) {
      const got = readNpz(readFileSync(join(dir, file)), LIMITS);
      assert.deepEqual(Object.keys(got).sort(), Object.keys(expect).sort(), file);
      for (const [k, e] of Object.entries(expect)) {
        const a = got[k]!;
        assert.equal(a.dtype, names[e.dtype], `${file} ${k}`);
        assert.deepEqual(a.dims, e.shape, `${file} ${k}`);
        if (e.raw) assert.deepEqual(Array.from(new Uint8Array(a.data.buffer)), e.raw, `${file} ${k}`);
        else assert.deepEqual(Array.from(a.data as ArrayLike<number | bigint>, Number), e.values, `${file} ${k}`);
      }
    }
    const one = decodeNpy(readFileSync(join(dir, 'one.npy')), { maxBytes: 1024 });
    assert.deepEqual(Array.from(one.data as Float32Array), expect.f32!.values.map(Math.fround));
    const v2 = decodeNpy(readFileSync(join(dir, 'v2.npy')), { maxBytes: 1024 });
    assert.equal(readFileSync(join(dir, 'v2.npy'))[6], 2, 'written as format 2.0');
    assert.deepEqual(Array.from(v2.data as BigInt64Array), [-(2n ** 62n), 5n, 2n ** 53n]);
  });

  test('NumPy reads what writeNpz writes, every dtype', () => {
    const arrays: Record<string, NpyArray> = {};
    for (const dtype of NPY_DTYPES) arrays[dtype] = sample(dtype, [2, 3]);
    arrays.scalar = sample('int64', []);
    writeFileSync(join(dir, 'ours.npz'), writeNpz(arrays));
    const out = py(`
import numpy as np, json, zipfile
assert zipfile.ZipFile('${dir}/ours.npz').testzip() is None
d = np.load('${dir}/ours.npz')
print(json.dumps({k: [str(d[k].dtype), list(d[k].shape), d[k].astype('f8').ravel().tolist() if d[k].dtype != np.float16 else d[k].view('<u2').ravel().tolist()] for k in d.files}))
`);
    const got = JSON.parse(out) as Record<string, [string, number[], number[]]>;
    for (const [k, a] of Object.entries(arrays)) {
      assert.equal(got[k]![0], a.dtype, k);
      assert.deepEqual(got[k]![1], a.dims, k);
      assert.deepEqual(got[k]![2], Array.from(a.data as ArrayLike<number | bigint>, Number), k);
    }
  });
});

describe('hostile archives are refused with BAD_MANIFEST', () => {
  const good = writeNpz({ a: sample('float32', [4, 4]), b: sample('int64', [3]), c: sample('bool', [5]) });

  test('every truncation of a valid archive', () => {
    for (let n = 0; n < good.length; n++) refused(() => readNpz(good.subarray(0, n), LIMITS));
  });

  test('random corruption: 3000 mutated archives either read or are refused, never crash', () => {
    let seed = 12345;
    const rand = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
    const t0 = performance.now();
    let read = 0;
    for (let i = 0; i < 3000; i++) {
      const b = Buffer.from(good);
      for (let k = 1 + Math.floor(rand() * 4); k > 0; k--) b[Math.floor(rand() * b.length)] = Math.floor(rand() * 256);
      try {
        readNpz(b, LIMITS);
        read++;
      } catch (err) {
        assert.ok(err instanceof EdgefleetError && err.code === 'BAD_MANIFEST', `mutation ${i}: ${String(err)}`);
      }
    }
    assert.ok(performance.now() - t0 < 10_000, 'bounded time');
    assert.ok(read < 3000);
  });

  test('not a zip; a central directory outside the file; more entries than allowed', () => {
    refused(() => readNpz(Buffer.alloc(0), LIMITS), /not a zip/);
    refused(() => readNpz(Buffer.from('PK\x03\x04 garbage garbage garbage'), LIMITS), /not a zip/);
    const npy = encodeNpy(sample('uint8', [2]));
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy }], { cdOffset: 0x7fffffff }), LIMITS), /outside the file/);
    const many = zip(Array.from({ length: 10 }, (_, i) => ({ name: `a${i}.npy`, data: npy })));
    assert.equal(Object.keys(readNpz(many, LIMITS)).length, 10);
    refused(() => readNpz(many, { ...LIMITS, maxEntries: 9 }), /10 entries, more than 9/);
    // An EOCD signature inside a comment is not taken for the record.
    const tricked = zip([{ name: 'a.npy', data: npy }], { comment: Buffer.from('PK\x05\x06') });
    assert.equal(Object.keys(readNpz(tricked, LIMITS)).length, 1);
  });

  test('lying sizes: declared larger, declared smaller, stored sizes that disagree, CRC mismatch', () => {
    const npy = encodeNpy(sample('float32', [64]));
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, method: 8, size: npy.length + 100 }]), LIMITS), /holds \d+ bytes, declares/);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, method: 8, size: npy.length - 100 }]), LIMITS), /inflates to more than/);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, size: npy.length - 1 }]), LIMITS), /stored entry/);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, compressedSize: npy.length + 5000 }]), LIMITS));
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, crc: 1234 }]), LIMITS), /CRC/);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, method: 8, stored: Buffer.from('not deflate at all') }]), LIMITS), /inflate/);
  });

  test('zip bombs: a declared total over the limit, and a small declared size that inflates to 64 MiB', () => {
    const bomb = handNpy(`{'descr': '|u1', 'fortran_order': False, 'shape': (${64 * 1024 * 1024},), }`, Buffer.alloc(64 * 1024 * 1024));
    const packed = deflateRawSync(bomb, { level: 9 });
    assert.ok(packed.length < 200_000, `the bomb is ${packed.length} bytes packed`);
    const limits = { maxEntries: 4, maxBytes: 8 * 1024 * 1024 };
    const crc = crc32(bomb);
    const declared = zip([{ name: 'a.npy', data: bomb, method: 8, stored: packed, crc }]);
    const lying = zip([{ name: 'a.npy', data: bomb, method: 8, stored: packed, crc, size: 1000 }]);
    const mb = encodeNpy({ dtype: 'uint8', dims: [1 << 20], data: new Uint8Array(1 << 20) });
    const ten = zip(Array.from({ length: 10 }, (_, i) => ({ name: `m${i}.npy`, data: mb, method: 8 })));
    const t0 = performance.now();
    refused(() => readNpz(declared, limits), /unpacks to more than 8388608 bytes/);
    refused(() => readNpz(lying, limits), /inflates to more than the 1000 bytes/);
    // Ten entries of 1 MiB each over an 8 MiB total.
    refused(() => readNpz(ten, { maxEntries: 16, maxBytes: 8 * 1024 * 1024 }), /unpacks to more than/);
    assert.ok(performance.now() - t0 < 500, `refused without inflating them (${Math.round(performance.now() - t0)} ms)`);
  });

  test('overlapping entries (one stream behind two names)', () => {
    const npyB = encodeNpy(sample('uint8', [4]));
    const bLocal = zip([{ name: 'b.npy', data: npyB }]).subarray(0, 30 + 5 + npyB.length);
    // a.npy's data is b.npy's whole local record; the directory points b.npy inside it.
    const z = zip([{ name: 'a.npy', data: bLocal }, { name: 'b.npy', data: npyB, localOffset: 30 + 5 }]);
    refused(() => readNpz(z, LIMITS), /overlaps entry "a.npy"/);
  });

  test('names: path tricks, non-.npy entries, duplicates, bad encodings', () => {
    const npy = encodeNpy(sample('uint8', [1]));
    for (const name of ['../x.npy', '/abs.npy', 'a\\b.npy', 'a/../b.npy', 'a/./b.npy', 'a//b.npy', 'C:/x.npy', 'x\u0000.npy', 'x\n.npy']) {
      refused(() => readNpz(zip([{ name, data: npy }]), LIMITS), /refused name/);
      assert.ok(entryNameProblem(name), name);
    }
    assert.equal(entryNameProblem('0.in.model/input:0.npy'), undefined, 'a hierarchical tensor name is no path trick');
    refused(() => readNpz(zip([{ name: 'notes.txt', data: Buffer.from('hi') }]), LIMITS), /not a .npy array/);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy }, { name: 'a.npy', data: npy }]), LIMITS), /repeated entry/);
    refused(() => readNpz(zip([{ name: Buffer.from([0x61, 0xe9, 0x2e, 0x6e, 0x70, 0x79]), data: npy }]), LIMITS), /non-ASCII/);
    refused(() => readNpz(zip([{ name: Buffer.from([0x61, 0xff, 0x2e, 0x6e, 0x70, 0x79]), data: npy, flags: 0x0800 }]), LIMITS), /not UTF-8/);
    refused(() => readNpz(zip([{ name: 'x'.repeat(2000) + '.npy', data: npy }]), LIMITS), /name of \d+ bytes/);
  });

  test('encryption and unsupported compression methods', () => {
    const npy = encodeNpy(sample('uint8', [1]));
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, flags: 1 }]), LIMITS), /encrypted/);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, method: 12 }]), LIMITS), /compression method 12/);
  });

  test('zip64 sizes are read from the zip64 extra field (as NumPy writes local headers), and refused without one', () => {
    const npy = encodeNpy(sample('float32', [3]));
    const extra = Buffer.alloc(20);
    extra.writeUInt16LE(1, 0);
    extra.writeUInt16LE(16, 2);
    extra.writeBigUInt64LE(BigInt(npy.length), 4);
    extra.writeBigUInt64LE(BigInt(npy.length), 12);
    const ok = readNpz(zip([{ name: 'a.npy', data: npy, size: 0xffffffff, compressedSize: 0xffffffff, cdExtra: extra }]), LIMITS);
    assert.deepEqual(ok.a!.dims, [3]);
    refused(() => readNpz(zip([{ name: 'a.npy', data: npy, size: 0xffffffff, compressedSize: 0xffffffff }]), LIMITS), /zip64/);
  });
});

describe('hostile .npy headers are refused with BAD_MANIFEST', () => {
  const lim = { maxBytes: 1 << 20 };
  const d = (dict: string, data = f32le(1, 2)): Buffer => handNpy(dict, data);

  test('magic, version, header length', () => {
    refused(() => decodeNpy(Buffer.from('not a numpy file at all'), lim), /magic/);
    const v9 = d("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
    v9[6] = 9;
    refused(() => decodeNpy(v9, lim), /version 9.0/);
    const long = d("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
    long.writeUInt16LE(60_000, 8);
    refused(() => decodeNpy(long, lim), /header of 60000 bytes/);
    const v2 = handNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", f32le(1, 2), [2, 0]);
    v2.writeUInt32LE(0xfffffff0, 8);
    refused(() => decodeNpy(v2, lim), /header of/);
    const cut = d("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
    cut.writeUInt16LE(cut.length, 8);
    refused(() => decodeNpy(cut, { maxBytes: 1 << 20, maxHeaderBytes: 1 << 20 }), /truncated/);
  });

  test('dict syntax and keys', () => {
    for (const dict of [
      'descr: <f4',
      "{'descr': '<f4', 'fortran_order': False}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
      "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
      "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} trailing",
      "{'descr': 4, 'fortran_order': False, 'shape': (2,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': '2'}",
      "{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2,",
    ]) {
      refused(() => decodeNpy(d(dict), lim), /bad npy header/);
    }
  });

  test('fortran order, big-endian, object, structured and other dtypes', () => {
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }"), lim), /fortran/);
    refused(() => decodeNpy(d("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }"), lim), /big-endian/);
    refused(() => decodeNpy(d("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"), lim), /object arrays/);
    refused(() => decodeNpy(d("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }"), lim), /structured/);
    refused(() => decodeNpy(d("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }"), lim), /dtype <c8 is not supported/);
    refused(() => decodeNpy(d("{'descr': '<U3', 'fortran_order': False, 'shape': (1,), }"), lim), /not supported/);
  });

  test('shapes: negative, fractional, too many dims, huge (refused without allocating), lying about the data', () => {
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }"), lim), /non-negative integer/);
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }"), lim), /bad npy header/);
    refused(() => decodeNpy(d(`{'descr': '<f4', 'fortran_order': False, 'shape': (${'1, '.repeat(33)}), }`), lim), /33 dimensions/);
    const t0 = performance.now();
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }"), lim), /needs more than the 8 bytes/);
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }"), lim), /bad npy header/);
    assert.ok(performance.now() - t0 < 100);
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"), lim), /needs more than the 8 bytes|needs 12/);
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }"), lim), /8 bytes of data, shape \(1\) of float32 needs 4/);
    refused(() => decodeNpy(d("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"), { maxBytes: 4 }), /more than 4 allowed/);
  });

  test('bool arrays hold 0 and 1 only', () => {
    refused(() => decodeNpy(d("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }", Buffer.from([0, 1, 2])), lim), /bool array holds the byte 2/);
  });
});
