/**
 * NumPy `.npy` arrays and `.npz` archives (a zip of .npy files), pure TypeScript over node:zlib,
 * for manifest v2's test-vector sidecars (issue #13): `edgefleet model init` writes them, the hub
 * and the agent read them. Formats: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
 * and PKWARE's APPNOTE.TXT (zip, zip64).
 *
 * The reader parses untrusted bytes (a sidecar that arrived with a release: its sha256 is checked
 * first, but a hub may have signed a hostile upload), so every size it acts on is bounded before
 * memory is allocated: entry count, name length, .npy header length, rank, total decompressed
 * bytes (checked on the declared sizes before inflating, and enforced while inflating with
 * zlib's `maxOutputLength`, so a zip bomb stops at the limit), and each array's byte count must
 * equal what its shape says. Sizes come from the central directory, never from local headers
 * (NumPy's savez writes 0xFFFFFFFF there with a zip64 extra); entries must not overlap, CRCs must
 * match. Refused: fortran order, big-endian, object/structured/other dtypes, encryption, methods
 * other than stored and deflate, and entry names that would be path tricks if anyone extracted
 * the file (absolute, backslashes, `.`/`..` segments, drive prefixes, control characters).
 * Every refusal is an EdgefleetError BAD_MANIFEST naming the entry; nothing else is thrown for
 * any input.
 *
 * Arrays are C order, little-endian (the host must be little-endian, as every edge target is).
 * float16 stays raw IEEE half bits in a Uint16Array (what onnxruntime-node takes); bool is a
 * Uint8Array of 0/1. Reading copies each array into its own aligned buffer.
 */
import { endianness } from 'node:os';
import * as zlib from 'node:zlib';
import { EdgefleetError, ErrorCode } from './errors.ts';

export type NpyDtype = 'float32' | 'float64' | 'float16' | 'uint8' | 'int8' | 'int32' | 'int64' | 'bool';
export type NpyData = Float32Array | Float64Array | Uint16Array | Uint8Array | Int8Array | Int32Array | BigInt64Array;
export interface NpyArray {
  dtype: NpyDtype;
  /** C-order shape; [] for a scalar. */
  dims: number[];
  data: NpyData;
}

export interface NpyLimits {
  /** Largest array, in bytes of data. */
  maxBytes: number;
  /** Largest .npy header (NumPy's own reader stops at 10000). Default 10000. */
  maxHeaderBytes?: number;
  /** Most dimensions. Default 32. */
  maxRank?: number;
}

export interface NpzLimits extends NpyLimits {
  /** Most entries (arrays) in the archive. */
  maxEntries: number;
  /** `maxBytes` here bounds the total decompressed size of all entries. */
}

const DESCR: Record<NpyDtype, string> = {
  float32: '<f4',
  float64: '<f8',
  float16: '<f2',
  uint8: '|u1',
  int8: '|i1',
  int32: '<i4',
  int64: '<i8',
  bool: '|b1',
};
const ITEMSIZE: Record<NpyDtype, number> = { float32: 4, float64: 8, float16: 2, uint8: 1, int8: 1, int32: 4, int64: 8, bool: 1 };
const ARRAY_TYPE = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  uint8: Uint8Array,
  int8: Int8Array,
  int32: Int32Array,
  int64: BigInt64Array,
  bool: Uint8Array,
} as const;

export const NPY_DTYPES: readonly NpyDtype[] = Object.keys(DESCR) as NpyDtype[];

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const DEFAULT_MAX_HEADER = 10_000;
const DEFAULT_MAX_RANK = 32;
const MAX_NAME_BYTES = 1024;

function bad(message: string, entry?: string): EdgefleetError {
  return new EdgefleetError(ErrorCode.BAD_MANIFEST, entry === undefined ? message : `npz entry "${entry}": ${message}`, {
    details: entry === undefined ? undefined : { entry },
  });
}

function assertLittleEndianHost(): void {
  if (endianness() !== 'LE') throw new EdgefleetError(ErrorCode.INTERNAL, 'npy/npz: big-endian hosts are not supported');
}

// ------------------------------------------------------------------------------------ .npy

/** A header value; `STRUCTURED` stands for a list (a structured dtype's descr), which is refused. */
const STRUCTURED = Symbol('structured');
type HeaderValue = string | boolean | number[] | typeof STRUCTURED;

/** Parses NumPy's header, a Python dict literal: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`. */
function parseHeader(text: string): Map<string, HeaderValue> {
  let i = 0;
  const ws = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t')) i++;
  };
  const expect = (c: string): void => {
    ws();
    if (text[i] !== c) throw new Error(`expected '${c}' at ${i}`);
    i++;
  };
  const str = (): string => {
    ws();
    const q = text[i];
    if (q !== "'" && q !== '"') throw new Error(`expected a string at ${i}`);
    const end = text.indexOf(q, i + 1);
    if (end < 0 || end - i > 256) throw new Error('unterminated string');
    const s = text.slice(i + 1, end);
    if (s.includes('\\')) throw new Error('escapes in strings are not supported');
    i = end + 1;
    return s;
  };
  const int = (): number => {
    ws();
    const m = /^\d{1,16}L?/.exec(text.slice(i, i + 18));
    if (!m) throw new Error(`expected a non-negative integer at ${i}`);
    i += m[0].length;
    const n = Number(m[0].replace('L', ''));
    if (!Number.isSafeInteger(n)) throw new Error(`dimension ${m[0]} is too large`);
    return n;
  };
  const value = (): HeaderValue => {
    ws();
    if (text.startsWith('True', i)) {
      i += 4;
      return true;
    }
    if (text.startsWith('False', i)) {
      i += 5;
      return false;
    }
    if (text[i] === '[') return STRUCTURED;
    if (text[i] === '(') {
      i++;
      const dims: number[] = [];
      for (;;) {
        ws();
        if (text[i] === ')') break;
        if (dims.length > 64) throw new Error('too many dimensions');
        dims.push(int());
        ws();
        if (text[i] === ',') i++;
        else if (text[i] !== ')') throw new Error(`expected ',' or ')' at ${i}`);
      }
      i++;
      return dims;
    }
    return str();
  };
  const out = new Map<string, HeaderValue>();
  expect('{');
  for (;;) {
    ws();
    if (text[i] === '}') break;
    const key = str();
    expect(':');
    const v = value();
    if (v === STRUCTURED) return out.set(key, v); // structured dtype: refused by the caller
    if (out.has(key)) throw new Error(`key '${key}' repeated`);
    out.set(key, v);
    ws();
    if (text[i] === ',') i++;
    else if (text[i] !== '}') throw new Error(`expected ',' or '}' at ${i}`);
  }
  i++;
  if (!/^[ \t]*\n?[ \t]*$/.test(text.slice(i))) throw new Error('unexpected text after the header');
  return out;
}

function dtypeOf(descr: string): NpyDtype {
  for (const [dtype, d] of Object.entries(DESCR) as [NpyDtype, string][]) {
    if (descr === d) return dtype;
    // One-byte types carry no byte order; accept '<'/'=' spellings some writers use.
    if (d.startsWith('|') && (descr === `<${d.slice(1)}` || descr === `=${d.slice(1)}`)) return dtype;
  }
  if (descr.startsWith('>') && /^>[fiub]\d$/.test(descr)) throw new Error(`big-endian arrays (${descr}) are not supported`);
  if (/^[|<>=]?O/.test(descr)) throw new Error('object arrays are not supported (they are pickles)');
  throw new Error(`dtype ${descr} is not supported (supported: ${Object.values(DESCR).join(', ')})`);
}

/** Elements of `dims`, or undefined once they exceed `max`. */
function elementsWithin(dims: readonly number[], max: number): number | undefined {
  let n = 1;
  for (const d of dims) {
    n *= d;
    if (n > max) return undefined;
  }
  return n;
}

/**
 * Decodes one .npy file. `what` names it in errors (the npz entry). Throws BAD_MANIFEST for
 * anything that is not a supported, well-formed array within `limits`.
 */
export function decodeNpy(buf: Uint8Array, limits: NpyLimits, what?: string): NpyArray {
  assertLittleEndianHost();
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 10 || !b.subarray(0, 6).equals(MAGIC)) throw bad('not a .npy file (no \\x93NUMPY magic)', what);
  const major = b[6] as number;
  const minor = b[7] as number;
  if (![1, 2, 3].includes(major) || minor !== 0) throw bad(`npy format version ${major}.${minor} is not supported`, what);
  const lenBytes = major === 1 ? 2 : 4;
  if (b.length < 8 + lenBytes) throw bad('truncated npy header', what);
  const headerLen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const maxHeader = limits.maxHeaderBytes ?? DEFAULT_MAX_HEADER;
  if (headerLen > maxHeader) throw bad(`npy header of ${headerLen} bytes, more than ${maxHeader} allowed`, what);
  const dataStart = 8 + lenBytes + headerLen;
  if (dataStart > b.length) throw bad('truncated npy header', what);
  const headerBytes = b.subarray(8 + lenBytes, dataStart);
  let header: ReturnType<typeof parseHeader>;
  let dtype: NpyDtype;
  let dims: number[];
  try {
    const text = major === 3 ? new TextDecoder('utf-8', { fatal: true }).decode(headerBytes) : headerBytes.toString('latin1');
    header = parseHeader(text);
    const descr = header.get('descr');
    if (descr === STRUCTURED) throw new Error('structured dtypes are not supported');
    const keys = [...header.keys()].sort().join(',');
    if (keys !== 'descr,fortran_order,shape') throw new Error(`header keys are ${keys || 'none'}, expected descr, fortran_order, shape`);
    if (typeof descr !== 'string') throw new Error('descr is not a string');
    dtype = dtypeOf(descr);
    const fortran = header.get('fortran_order');
    if (typeof fortran !== 'boolean') throw new Error('fortran_order is not True or False');
    if (fortran) throw new Error('fortran-order arrays are not supported (save with np.ascontiguousarray)');
    const shape = header.get('shape');
    if (!Array.isArray(shape)) throw new Error('shape is not a tuple');
    dims = shape;
  } catch (err) {
    if (err instanceof EdgefleetError) throw err;
    throw bad(`bad npy header: ${(err as Error).message}`, what);
  }
  const maxRank = limits.maxRank ?? DEFAULT_MAX_RANK;
  if (dims.length > maxRank) throw bad(`${dims.length} dimensions, more than ${maxRank} allowed`, what);
  const itemsize = ITEMSIZE[dtype];
  const dataBytes = b.length - dataStart;
  const n = elementsWithin(dims, Math.floor(Math.min(limits.maxBytes, dataBytes) / itemsize));
  if (n === undefined) {
    throw bad(
      dataBytes > limits.maxBytes
        ? `${dataBytes} bytes of data, more than ${limits.maxBytes} allowed`
        : `shape (${dims.join(', ')}) needs more than the ${dataBytes} bytes of data present`,
      what,
    );
  }
  if (n * itemsize !== dataBytes) throw bad(`${dataBytes} bytes of data, shape (${dims.join(', ')}) of ${dtype} needs ${n * itemsize}`, what);
  const data = new ARRAY_TYPE[dtype](n);
  new Uint8Array(data.buffer).set(b.subarray(dataStart));
  if (dtype === 'bool') {
    for (let i = 0; i < n; i++) if ((data[i] as number) > 1) throw bad(`bool array holds the byte ${data[i]} at element ${i}`, what);
  }
  return { dtype, dims, data };
}

function checkArray(a: NpyArray, what: string): number {
  const Ctor = ARRAY_TYPE[a.dtype] as unknown;
  if (Ctor === undefined) throw new RangeError(`${what}: dtype ${String(a.dtype)} cannot be written`);
  if (!(a.data instanceof (Ctor as typeof Uint8Array))) throw new TypeError(`${what}: ${a.dtype} data must be a ${(Ctor as typeof Uint8Array).name}`);
  if (!a.dims.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new RangeError(`${what}: dims (${a.dims.join(', ')}) must be non-negative integers`);
  const n = a.dims.reduce((x, y) => x * y, 1);
  if (n !== a.data.length) throw new RangeError(`${what}: dims (${a.dims.join(', ')}) need ${n} elements, data has ${a.data.length}`);
  return n;
}

/** Encodes one array as a .npy file (format 1.0, or 2.0 should the header not fit). */
export function encodeNpy(a: NpyArray): Buffer {
  assertLittleEndianHost();
  checkArray(a, 'npy');
  const shape = a.dims.length === 1 ? `(${a.dims[0]},)` : `(${a.dims.join(', ')})`;
  const dict = `{'descr': '${DESCR[a.dtype]}', 'fortran_order': False, 'shape': ${shape}, }`;
  // NumPy pads the header with spaces and a newline so the data starts 64-byte aligned.
  const v1 = dict.length + 64 < 0xffff;
  const prelude = v1 ? 10 : 12;
  const total = Math.ceil((prelude + dict.length + 1) / 64) * 64;
  const header = `${dict}${' '.repeat(total - prelude - dict.length - 1)}\n`;
  const head = Buffer.alloc(prelude);
  MAGIC.copy(head, 0);
  head[6] = v1 ? 1 : 2;
  head[7] = 0;
  if (v1) head.writeUInt16LE(header.length, 8);
  else head.writeUInt32LE(header.length, 8);
  const body = Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), body]);
}

// ------------------------------------------------------------------------------------ .npz

const CRC_TABLE = ((): Uint32Array => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 of zip; node:zlib has crc32 only from Node 20.15, the project supports 20.10. */
function crc32(b: Uint8Array): number {
  const native = (zlib as { crc32?: (d: Uint8Array) => number }).crc32;
  if (native) return native(b) >>> 0;
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = (CRC_TABLE[(c ^ (b[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * Why an entry name is refused, or undefined. Names are only ever used as keys, never as paths,
 * but a sidecar someone unpacks with `unzip` must not write outside its directory.
 */
export function entryNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'empty name';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'control characters in the name';
  if (name.includes('\\')) return 'backslash in the name';
  if (name.startsWith('/')) return 'absolute path';
  if (/^[A-Za-z]:\//.test(name)) return 'drive prefix';
  if (name.split('/').some((s) => s === '' || s === '.' || s === '..')) return 'empty, . or .. path segment';
  return undefined;
}

interface CdEntry {
  name: string;
  method: number;
  crc: number;
  compressedSize: number;
  size: number;
  localOffset: number;
  dataStart: number;
}

const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_LOC64 = 0x07064b50;
const SIG_CD = 0x02014b50;
const SIG_LOCAL = 0x04034b50;

function u64(b: Buffer, at: number, what: string): number {
  const v = b.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`zip: ${what} ${v} is out of range`);
  return Number(v);
}

/** Finds the end-of-central-directory record and the central directory it points to. */
function centralDirectory(b: Buffer, limits: NpzLimits): { count: number; offset: number; size: number; end: number } {
  if (b.length < 22) throw bad('not a zip file (too short for an end-of-central-directory record)');
  let eocd = -1;
  for (let at = b.length - 22; at >= Math.max(0, b.length - 22 - 0xffff); at--) {
    // The comment length must reach exactly to the end, or a signature inside a comment would match.
    if (b.readUInt32LE(at) === SIG_EOCD && at + 22 + b.readUInt16LE(at + 20) === b.length) {
      eocd = at;
      break;
    }
  }
  if (eocd < 0) throw bad('not a zip file (no end-of-central-directory record)');
  const disk = b.readUInt16LE(eocd + 4);
  const cdDisk = b.readUInt16LE(eocd + 6);
  let onDisk = b.readUInt16LE(eocd + 8);
  let count = b.readUInt16LE(eocd + 10);
  let size = b.readUInt32LE(eocd + 12);
  let offset = b.readUInt32LE(eocd + 16);
  let end = eocd;
  if (count === 0xffff || onDisk === 0xffff || size === 0xffffffff || offset === 0xffffffff) {
    const loc = eocd - 20;
    if (loc < 0 || b.readUInt32LE(loc) !== SIG_LOC64) throw bad('zip: zip64 end-of-central-directory locator missing');
    const at = u64(b, loc + 8, 'zip64 record offset');
    if (at + 56 > loc || b.readUInt32LE(at) !== SIG_EOCD64) throw bad('zip: zip64 end-of-central-directory record missing');
    onDisk = u64(b, at + 24, 'entry count');
    count = u64(b, at + 32, 'entry count');
    size = u64(b, at + 40, 'central directory size');
    offset = u64(b, at + 48, 'central directory offset');
    end = at;
  }
  if (disk !== 0 || cdDisk !== 0 || onDisk !== count) throw bad('zip: multi-disk archives are not supported');
  if (count > limits.maxEntries) throw bad(`zip: ${count} entries, more than ${limits.maxEntries} allowed`);
  if (offset + size > end) throw bad('zip: the central directory lies outside the file');
  return { count, offset, size, end };
}

function readEntries(b: Buffer, limits: NpzLimits): CdEntry[] {
  const cd = centralDirectory(b, limits);
  const entries: CdEntry[] = [];
  let p = cd.offset;
  const cdEnd = cd.offset + cd.size;
  for (let i = 0; i < cd.count; i++) {
    if (p + 46 > cdEnd || b.readUInt32LE(p) !== SIG_CD) throw bad(`zip: central directory entry ${i} is malformed`);
    const flags = b.readUInt16LE(p + 8);
    const method = b.readUInt16LE(p + 10);
    const crc = b.readUInt32LE(p + 16);
    let compressedSize = b.readUInt32LE(p + 20);
    let size = b.readUInt32LE(p + 24);
    const nameLen = b.readUInt16LE(p + 28);
    const extraLen = b.readUInt16LE(p + 30);
    const commentLen = b.readUInt16LE(p + 32);
    let localOffset = b.readUInt32LE(p + 42);
    const next = p + 46 + nameLen + extraLen + commentLen;
    if (next > cdEnd) throw bad(`zip: central directory entry ${i} runs past the directory`);
    if (nameLen > MAX_NAME_BYTES) throw bad(`zip: entry ${i} has a name of ${nameLen} bytes, more than ${MAX_NAME_BYTES} allowed`);
    const nameBytes = b.subarray(p + 46, p + 46 + nameLen);
    let name: string;
    if (flags & 0x0800) {
      try {
        name = new TextDecoder('utf-8', { fatal: true }).decode(nameBytes);
      } catch {
        throw bad(`zip: entry ${i} has a name that is not UTF-8`);
      }
    } else {
      if (nameBytes.some((c) => c >= 0x80)) throw bad(`zip: entry ${i} has a non-ASCII name without the UTF-8 flag`);
      name = nameBytes.toString('latin1');
    }
    const problem = entryNameProblem(name);
    if (problem) throw bad(`refused name: ${problem}`, name);
    if (flags & 0x0041 || flags & 0x2000) throw bad('encrypted entries are not supported', name);
    if (method !== 0 && method !== 8) throw bad(`compression method ${method} is not supported (stored or deflate only)`, name);
    // zip64 extra field: 64-bit values for the 32-bit fields that read 0xFFFFFFFF, in this order.
    if (size === 0xffffffff || compressedSize === 0xffffffff || localOffset === 0xffffffff) {
      let e = p + 46 + nameLen;
      const extraEnd = e + extraLen;
      let found = false;
      while (e + 4 <= extraEnd) {
        const id = b.readUInt16LE(e);
        const len = b.readUInt16LE(e + 2);
        if (e + 4 + len > extraEnd) break;
        if (id === 0x0001) {
          let q = e + 4;
          const take = (): number => {
            if (q + 8 > e + 4 + len) throw bad('zip: zip64 extra field is too short', name);
            const v = u64(b, q, 'zip64 size');
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = take();
          if (compressedSize === 0xffffffff) compressedSize = take();
          if (localOffset === 0xffffffff) localOffset = take();
          found = true;
          break;
        }
        e += 4 + len;
      }
      if (!found) throw bad('zip: zip64 sizes without a zip64 extra field', name);
    }
    if (method === 0 && compressedSize !== size) throw bad(`stored entry of ${compressedSize} bytes says it holds ${size}`, name);
    if (localOffset + 30 > cd.offset || b.readUInt32LE(localOffset) !== SIG_LOCAL) throw bad('zip: local header missing', name);
    const localNameLen = b.readUInt16LE(localOffset + 26);
    const localExtraLen = b.readUInt16LE(localOffset + 28);
    if ((b.readUInt16LE(localOffset + 6) & 0x0041) !== 0) throw bad('encrypted entries are not supported', name);
    if (localNameLen !== nameLen || !b.subarray(localOffset + 30, localOffset + 30 + nameLen).equals(nameBytes)) {
      throw bad('zip: local header names a different file than the central directory', name);
    }
    const dataStart = localOffset + 30 + localNameLen + localExtraLen;
    if (dataStart + compressedSize > cd.offset) throw bad(`zip: ${compressedSize} bytes of data run past the end of the entries`, name);
    entries.push({ name, method, crc, compressedSize, size, localOffset, dataStart });
    p = next;
  }
  // Overlapping entries (one compressed stream behind many names) are how "better" zip bombs
  // amplify; a writer never produces them.
  const sorted = [...entries].sort((x, y) => x.localOffset - y.localOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1] as CdEntry;
    const cur = sorted[i] as CdEntry;
    if (prev.dataStart + prev.compressedSize > cur.localOffset) throw bad(`zip: entry overlaps entry "${prev.name}"`, cur.name);
  }
  return entries;
}

/**
 * Reads a .npz archive: every entry must be a `<key>.npy` array. Returns the arrays by key
 * (the name without `.npy`) in a null-prototype object. Throws BAD_MANIFEST for anything
 * malformed, unsupported or beyond `limits`.
 */
export function readNpz(buf: Uint8Array, limits: NpzLimits): Record<string, NpyArray> {
  assertLittleEndianHost();
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const entries = readEntries(b, limits);
  const out = Object.create(null) as Record<string, NpyArray>;
  let total = 0;
  for (const e of entries) {
    total += e.size;
    if (total > limits.maxBytes) throw bad(`the archive unpacks to more than ${limits.maxBytes} bytes`, e.name);
  }
  let remaining = limits.maxBytes;
  for (const e of entries) {
    if (!e.name.endsWith('.npy')) throw bad('not a .npy array (an .npz holds only <name>.npy entries)', e.name);
    const key = e.name.slice(0, -4);
    if (key === '' || Object.hasOwn(out, key)) throw bad(key === '' ? 'empty array name' : 'repeated entry', e.name);
    const raw = b.subarray(e.dataStart, e.dataStart + e.compressedSize);
    let data: Buffer;
    if (e.method === 0) data = raw;
    else {
      try {
        // maxOutputLength stops inflating at the declared size: a bomb costs at most that.
        data = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(1, e.size) });
      } catch (err) {
        const code = (err as { code?: string }).code;
        throw bad(code === 'ERR_BUFFER_TOO_LARGE' ? `inflates to more than the ${e.size} bytes it declares` : `cannot inflate: ${(err as Error).message}`, e.name);
      }
    }
    if (data.length !== e.size) throw bad(`holds ${data.length} bytes, declares ${e.size}`, e.name);
    if (crc32(data) !== e.crc) throw bad('CRC-32 mismatch (corrupt archive)', e.name);
    out[key] = decodeNpy(data, { ...limits, maxBytes: remaining }, e.name);
    remaining -= data.length;
  }
  return out;
}

/**
 * Writes arrays as a deflated .npz archive (NumPy's `np.load` reads it back). Deterministic:
 * entries in the given key order, a fixed 1980-01-01 timestamp, so equal arrays give equal
 * bytes and an equal sha256.
 */
export function writeNpz(arrays: Readonly<Record<string, NpyArray>>, opts: { level?: number } = {}): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  const keys = Object.keys(arrays);
  if (keys.length > 0xfffe) throw new RangeError(`npz: ${keys.length} arrays, more than a zip without zip64 holds`);
  for (const key of keys) {
    const name = `${key}.npy`;
    const problem = entryNameProblem(name);
    if (problem) throw new RangeError(`npz: array name "${key}": ${problem}`);
    const npy = encodeNpy(arrays[key] as NpyArray);
    const packed = zlib.deflateRawSync(npy, { level: opts.level ?? 6 });
    const nameBytes = Buffer.from(name, 'utf8');
    if (nameBytes.length > MAX_NAME_BYTES) throw new RangeError(`npz: array name "${key}" is longer than ${MAX_NAME_BYTES} bytes`);
    const utf8 = /[^\x20-\x7e]/.test(name) ? 0x0800 : 0;
    const crc = crc32(npy);
    if (npy.length > 0xfffffffe || offset + packed.length > 0xfffffffe) throw new RangeError('npz: archives over 4 GiB (zip64) cannot be written');
    const local = Buffer.alloc(30);
    local.writeUInt32LE(SIG_LOCAL, 0);
    local.writeUInt16LE(20, 4); // version needed: 2.0 (deflate)
    local.writeUInt16LE(utf8, 6);
    local.writeUInt16LE(8, 8);
    local.writeUInt16LE(0, 10); // time 00:00:00
    local.writeUInt16LE(0x21, 12); // date 1980-01-01
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(npy.length, 22);
    local.writeUInt16LE(nameBytes.length, 26);
    local.writeUInt16LE(0, 28);
    const cd = Buffer.alloc(46);
    cd.writeUInt32LE(SIG_CD, 0);
    cd.writeUInt16LE(20, 4);
    cd.writeUInt16LE(20, 6);
    cd.writeUInt16LE(utf8, 8);
    cd.writeUInt16LE(8, 10);
    cd.writeUInt16LE(0, 12);
    cd.writeUInt16LE(0x21, 14);
    cd.writeUInt32LE(crc, 16);
    cd.writeUInt32LE(packed.length, 20);
    cd.writeUInt32LE(npy.length, 24);
    cd.writeUInt16LE(nameBytes.length, 28);
    cd.writeUInt32LE(offset, 42);
    locals.push(local, nameBytes, packed);
    central.push(cd, nameBytes);
    offset += 30 + nameBytes.length + packed.length;
  }
  const cdBytes = Buffer.concat(central);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(SIG_EOCD, 0);
  eocd.writeUInt16LE(keys.length, 8);
  eocd.writeUInt16LE(keys.length, 10);
  eocd.writeUInt32LE(cdBytes.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cdBytes, eocd]);
}
