/**
 * Hostile image payloads for tests, built byte by byte: a PNG whose header claims a huge
 * size (a decompression bomb by its header) and a JPEG with intact headers but random
 * entropy-coded data.
 */
import { randomBytes } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf: Buffer): number {
  let c = 0xffffffff;
  for (const b of buf) c = (CRC_TABLE[(c ^ b) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A valid-looking 8-bit gray PNG whose IHDR claims width × height, with a tiny IDAT. */
export function pngClaiming(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // gray
  const idat = deflateSync(Buffer.alloc(width + 1)); // one scanline's worth of zeros
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), pngChunk('IHDR', ihdr), pngChunk('IDAT', idat), pngChunk('IEND', Buffer.alloc(0))]);
}

/** A JPEG with intact headers (SOI … SOS) and random bytes as entropy-coded data, EOI kept. */
export async function corruptJpeg(): Promise<Buffer> {
  const jpg = Buffer.from(await sharp(randomBytes(64 * 64 * 3), { raw: { width: 64, height: 64, channels: 3 } }).jpeg({ quality: 90 }).toBuffer());
  let sos = -1;
  for (let i = 0; i < jpg.length - 1 && sos < 0; i++) if (jpg[i] === 0xff && jpg[i + 1] === 0xda) sos = i;
  const body = sos + 2 + jpg.readUInt16BE(sos + 2);
  randomBytes(jpg.length - 2 - body).copy(jpg, body);
  return jpg;
}
