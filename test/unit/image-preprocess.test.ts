/**
 * Image preprocessing with real sharp: exact tensors for tiny images built from known pixels
 * (layout, per-channel normalization, colour order, fits, dtypes, EXIF orientation), drift
 * statistics equal to the ones the manifest's reference bins were built with, and hostile
 * inputs (corrupt, truncated, pixel bombs, not images at all) refused with BAD_INPUT while the
 * function keeps working and memory stays flat.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { corruptJpeg, pngClaiming } from '../helpers/hostile-images.ts';
import sharp from 'sharp';
import {
  configureSharp,
  imageStats,
  imageTensorDims,
  pixelsToTensor,
  preprocessImage,
} from '../../agent/preprocess/image.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import type { ImagePreprocess } from '../../shared/manifest.ts';
import { createRng, encodePartPng, imageDriftStats, PART_SIZE, partImage } from '../../scripts/lib/synthetic.ts';

function spec(over: Partial<ImagePreprocess>): ImagePreprocess {
  return { kind: 'image', width: 2, height: 2, fit: 'fill', colour: 'rgb', layout: 'NCHW', dtype: 'float32', scale: 1 / 255, mean: [0], std: [1], ...over };
}

async function rawToPng(pixels: number[], width: number, height: number, channels: 1 | 3 | 4): Promise<Buffer> {
  const img = sharp(Buffer.from(pixels), { raw: { width, height, channels } });
  return (channels === 1 ? img.toColourspace('b-w') : img).png().toBuffer();
}

/** Rejects with an EdgefleetError of `code` whose message matches `message`. */
async function rejectsWith(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof EdgefleetError, `not an EdgefleetError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, message);
    return true;
  });
}

// 2×2 RGB, row-major: red, green / blue, (10, 20, 30).
const PIXELS = [255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];

void describe('image tensors from known pixels', () => {
  it('rgb NCHW float32: planes in R, G, B order, normalized per channel', async () => {
    const png = await rawToPng(PIXELS, 2, 2, 3);
    const s = spec({ mean: [0.5, 0.25, 0.125], std: [0.5, 0.25, 2] });
    const t = await preprocessImage(s, png);
    assert.ok(t.data instanceof Float32Array);
    assert.deepEqual(t.dims, [1, 3, 2, 2]);
    const want: number[] = [];
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < 4; i++) want.push(Math.fround(((PIXELS[i * 3 + c] as number) / 255 - (s.mean[c] as number)) / (s.std[c] as number)));
    }
    assert.deepEqual(Array.from(t.data), want);
    assert.deepEqual(t.data.slice(0, 4), Float32Array.from([1, -1, -1, (10 / 255 - 0.5) / 0.5]));
  });

  it('rgb NHWC keeps pixels interleaved; a single mean/std applies to every channel', async () => {
    const t = await preprocessImage(spec({ layout: 'NHWC', mean: [0.5], std: [0.5] }), await rawToPng(PIXELS, 2, 2, 3));
    assert.deepEqual(t.dims, [1, 2, 2, 3]);
    assert.deepEqual(Array.from(t.data as Float32Array), PIXELS.map((p) => Math.fround((p / 255 - 0.5) / 0.5)));
  });

  it('bgr swaps the channel order, mean/std indexed in tensor (B, G, R) order', async () => {
    const t = await preprocessImage(spec({ colour: 'bgr', layout: 'NHWC', dtype: 'uint8' }), await rawToPng(PIXELS, 2, 2, 3));
    assert.deepEqual(Array.from(t.data as Uint8Array), [0, 0, 255, 0, 255, 0, 255, 0, 0, 30, 20, 10]);
    const f = await preprocessImage(spec({ colour: 'bgr', mean: [0, 0, 0.5], std: [1, 1, 0.5] }), await rawToPng(PIXELS, 2, 2, 3));
    // Plane 0 is blue, unscaled; plane 2 is red with mean 0.5 / std 0.5.
    assert.deepEqual(Array.from((f.data as Float32Array).slice(0, 4)), [0, 0, 1, 30 / 255].map(Math.fround));
    assert.deepEqual(Array.from((f.data as Float32Array).slice(8, 12)), [1, -1, -1, Math.fround((10 / 255 - 0.5) / 0.5)]);
    assert.deepEqual(f.stats.channelMeans, [285 / 4 / 255, 275 / 4 / 255, 265 / 4 / 255]);
  });

  it('gray from an RGB image gives one channel (libvips luminance)', async () => {
    const t = await preprocessImage(spec({ colour: 'gray', dtype: 'uint8' }), await rawToPng(PIXELS, 2, 2, 3));
    assert.deepEqual(t.dims, [1, 1, 2, 2]);
    assert.equal(t.data.length, 4);
    // Rec. 709 in linear light: pure red is 127, green 220, blue 76 (not 0.299 * 255 = 76 for red).
    assert.deepEqual(Array.from((t.data as Uint8Array).slice(0, 3)), [127, 220, 76]);
    assert.equal(t.stats.channelMeans.length, 1);
  });

  it('gray from a 1-channel PNG and from an RGBA PNG (alpha removed)', async () => {
    const g = await preprocessImage(spec({ colour: 'gray', dtype: 'uint8' }), await rawToPng([0, 50, 100, 250], 2, 2, 1));
    assert.deepEqual(Array.from(g.data as Uint8Array), [0, 50, 100, 250]);
    const rgba = await rawToPng([255, 0, 0, 0, 0, 255, 0, 128, 0, 0, 255, 255, 10, 20, 30, 7], 2, 2, 4);
    const r = await preprocessImage(spec({ layout: 'NHWC', dtype: 'uint8' }), rgba);
    assert.deepEqual(Array.from(r.data as Uint8Array), PIXELS);
  });

  it('uint8 and int8 dtypes are the raw pixels and pixels - 128, mean/std ignored', async () => {
    const png = await rawToPng(PIXELS, 2, 2, 3);
    const u = await preprocessImage(spec({ dtype: 'uint8', mean: [9, 9], std: [9] }), png);
    assert.ok(u.data instanceof Uint8Array);
    assert.deepEqual(Array.from(u.data), [255, 0, 0, 10, 0, 255, 0, 20, 0, 0, 255, 30]);
    const i8 = await preprocessImage(spec({ dtype: 'int8', layout: 'NHWC' }), png);
    assert.ok(i8.data instanceof Int8Array);
    assert.deepEqual(Array.from(i8.data), PIXELS.map((p) => p - 128));
  });

  it('mean/std that fit neither 1 nor the channel count is a bad manifest', async () => {
    await rejectsWith(preprocessImage(spec({ mean: [0, 0] }), await rawToPng(PIXELS, 2, 2, 3)), 'BAD_MANIFEST', /mean has 2 values for 3 channel/);
    assert.throws(() => pixelsToTensor(spec({}), new Uint8Array(5)), /expected 12 bytes/);
  });

  it('imageTensorDims follows colour and layout', () => {
    assert.deepEqual(imageTensorDims(spec({ colour: 'gray', width: 64, height: 32 }), 8), [8, 1, 32, 64]);
    assert.deepEqual(imageTensorDims(spec({ layout: 'NHWC', width: 64, height: 32 })), [1, 32, 64, 3]);
  });
});

void describe('fits', () => {
  // 4×2 white image: aspect 2:1 into a 4×4 (or 2×2) model input.
  const white = (): Promise<Buffer> => rawToPng(new Array<number>(8).fill(255), 4, 2, 1);
  const gray = (over: Partial<ImagePreprocess>): ImagePreprocess => spec({ colour: 'gray', dtype: 'uint8', width: 4, height: 4, ...over });
  const rows = (d: ArrayLike<number>, w: number): number[][] => Array.from({ length: d.length / w }, (_, y) => Array.from(d).slice(y * w, (y + 1) * w));

  it('contain pads with black, centred', async () => {
    const t = await preprocessImage(gray({ fit: 'contain' }), await white());
    assert.deepEqual(rows(t.data as Uint8Array, 4), [[0, 0, 0, 0], [255, 255, 255, 255], [255, 255, 255, 255], [0, 0, 0, 0]]);
    assert.equal(t.stats.brightness, 0.5);
  });

  it('inside pads with black at the bottom/right (top-left anchored)', async () => {
    const t = await preprocessImage(gray({ fit: 'inside' }), await white());
    assert.deepEqual(rows(t.data as Uint8Array, 4), [[255, 255, 255, 255], [255, 255, 255, 255], [0, 0, 0, 0], [0, 0, 0, 0]]);
  });

  it('fill stretches, cover and outside crop to the model size', async () => {
    for (const fit of ['fill', 'cover', 'outside'] as const) {
      const t = await preprocessImage(gray({ fit, width: 2, height: 2 }), await white());
      assert.deepEqual(Array.from(t.data as Uint8Array), [255, 255, 255, 255], fit);
    }
    // Left half black, right half white, 4×2: cover keeps the centre, outside the top-left.
    const half = await rawToPng([0, 0, 255, 255, 0, 0, 255, 255], 4, 2, 1);
    const cover = await preprocessImage(gray({ fit: 'cover', width: 2, height: 2 }), half);
    assert.deepEqual(Array.from(cover.data as Uint8Array), [0, 255, 0, 255]);
    const outside = await preprocessImage(gray({ fit: 'outside', width: 2, height: 2 }), half);
    assert.deepEqual(Array.from(outside.data as Uint8Array), [0, 0, 0, 0]);
  });

  it('auto-orients from EXIF', async () => {
    // 8×4, left half white: EXIF orientation 6 (rotate 90° clockwise) puts the white half on top.
    const px: number[] = [];
    for (let y = 0; y < 4; y++) for (let x = 0; x < 8; x++) px.push(x < 4 ? 255 : 0);
    const jpg = await sharp(Buffer.from(px), { raw: { width: 8, height: 4, channels: 1 } })
      .jpeg({ quality: 100 })
      .withMetadata({ orientation: 6 })
      .toBuffer();
    assert.equal((await sharp(jpg).metadata()).orientation, 6);
    const t = await preprocessImage(gray({ width: 4, height: 8 }), jpg);
    const r = rows(t.data as Uint8Array, 4);
    assert.ok(r.slice(0, 3).flat().every((v) => v > 200), JSON.stringify(r));
    assert.ok(r.slice(5).flat().every((v) => v < 50), JSON.stringify(r));
  });
});

void describe('part images and drift statistics', () => {
  const partSpec = spec({ colour: 'gray', width: PART_SIZE, height: PART_SIZE, mean: [0.3647], std: [0.2526] });

  it('a partImage PNG decodes to its exact pixels, stats equal imageDriftStats', async () => {
    const rng = createRng(7);
    for (const defective of [false, true]) {
      const px = partImage(rng, { defective });
      const png = await encodePartPng(px);
      const u = await preprocessImage({ ...partSpec, dtype: 'uint8' }, png);
      assert.deepEqual(u.data, px);
      const f = await preprocessImage(partSpec, png);
      assert.deepEqual(f.dims, [1, 1, PART_SIZE, PART_SIZE]);
      const [brightness, contrast, sharpness] = imageDriftStats(px);
      assert.deepEqual(f.stats, { brightness, contrast, sharpness, channelMeans: [brightness] });
      assert.equal(f.data[100], Math.fround(((px[100] as number) / 255 - 0.3647) / 0.2526));
    }
  });

  it('stats of an rgb model match those of a gray model on the same image (±1 gray level)', async () => {
    const raw = randomBytes(16 * 16 * 3);
    const png = await sharp(raw, { raw: { width: 16, height: 16, channels: 3 } }).png().toBuffer();
    const rgb = await preprocessImage(spec({ width: 16, height: 16, dtype: 'uint8' }), png);
    const gray = await preprocessImage(spec({ width: 16, height: 16, dtype: 'uint8', colour: 'gray' }), png);
    assert.ok(Math.abs(rgb.stats.brightness - gray.stats.brightness) <= 1 / 255, `${rgb.stats.brightness} vs ${gray.stats.brightness}`);
    assert.ok(Math.abs(rgb.stats.contrast - gray.stats.contrast) <= 1 / 255);
    const means = [0, 1, 2].map((c) => raw.reduce((s, v, i) => (i % 3 === c ? s + v : s), 0) / 256 / 255);
    rgb.stats.channelMeans.forEach((m, c) => assert.ok(Math.abs(m - (means[c] as number)) < 1e-12));
  });

  it('blur lowers sharpness, darkness lowers brightness', () => {
    const sharp0 = imageStats(partImage(createRng(3), { defective: false, noise: 0 }), PART_SIZE, PART_SIZE, 1);
    const blurred = imageStats(partImage(createRng(3), { defective: false, noise: 0, blur: 1.5 }), PART_SIZE, PART_SIZE, 1);
    const dark = imageStats(partImage(createRng(3), { defective: false, noise: 0, brightness: 0.5 }), PART_SIZE, PART_SIZE, 1);
    assert.ok(blurred.sharpness < sharp0.sharpness);
    assert.ok(dark.brightness < sharp0.brightness * 0.6);
  });
});

// ---------------------------------------------------------------------------------------------
// Hostile inputs


void describe('hostile inputs', () => {
  const s = spec({ colour: 'gray', width: PART_SIZE, height: PART_SIZE });

  async function hostile(): Promise<Array<[string, Buffer, RegExp]>> {
    const good = await encodePartPng(partImage(createRng(1), { defective: true }));
    return [
      ['corrupt JPEG', await corruptJpeg(), /cannot decode jpeg image \(64×64\): .*corrupt/i],
      ['truncated PNG', good.subarray(0, Math.floor(good.length * 0.6)), /cannot decode png image \(64×64\)/],
      ['PNG cut inside its header', good.subarray(0, 20), /cannot read image header|not an image/],
      ['20000×20000 PNG', pngClaiming(20000, 20000), /more pixels than the limit of 40000000/],
      ['zero bytes', Buffer.alloc(0), /empty image \(0 bytes\)/],
      ['random bytes', randomBytes(4096), /not an image in a supported format/],
      ['text file', Buffer.from('timestamp,value\n1,2\n3,4\nthis is not an image\n'), /not an image in a supported format/],
      ['SVG', Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'), /unsupported image format svg|not an image/],
    ];
  }

  it('each is BAD_INPUT with a useful message, and decoding keeps working afterwards', async () => {
    const good = await encodePartPng(partImage(createRng(2), { defective: false }));
    const bomb = pngClaiming(20000, 20000);
    assert.ok(bomb.length < 200, `the pixel bomb is ${bomb.length} bytes`);
    for (const [name, buf, msg] of await hostile()) {
      await rejectsWith(preprocessImage(s, buf), 'BAD_INPUT', msg).catch((err: unknown) => {
        throw new Error(`${name}: ${String(err)}`, { cause: err });
      });
      const ok = await preprocessImage(s, good);
      assert.equal(ok.data.length, PART_SIZE * PART_SIZE, name);
    }
  });

  it('the pixel limit and the byte limit are configurable; bytes over the limit are PAYLOAD_TOO_LARGE', async () => {
    const good = await encodePartPng(partImage(createRng(2), { defective: false }));
    await rejectsWith(preprocessImage(s, good, { maxInputPixels: 64 * 64 - 1 }), 'BAD_INPUT', /more pixels than the limit of 4095/);
    assert.equal((await preprocessImage(s, good, { maxInputPixels: 64 * 64 })).dims[3], 64);
    await rejectsWith(preprocessImage(s, good, { maxInputBytes: good.length - 1 }), 'PAYLOAD_TOO_LARGE', new RegExp(`image is ${good.length} bytes, limit ${good.length - 1}`));
    // A big header under the default limit still refused by a tighter one, before any decode.
    await rejectsWith(preprocessImage(s, pngClaiming(5000, 5000), { maxInputPixels: 1e6 }), 'BAD_INPUT', /more pixels than the limit of 1000000/);
  });

  it('failOn "error" tolerates what the default "warning" refuses', async () => {
    const jpg = await corruptJpeg();
    await rejectsWith(preprocessImage(s, jpg), 'BAD_INPUT', /corrupt/i);
    assert.equal((await preprocessImage(s, jpg, { failOn: 'error' })).data.length, PART_SIZE * PART_SIZE);
  });

  it('an aborted signal stops before and after decoding', async () => {
    const good = await encodePartPng(partImage(createRng(2), { defective: false }));
    const ac = new AbortController();
    ac.abort();
    await rejectsWith(preprocessImage(s, good, { signal: ac.signal }), 'ABORTED', /aborted/);
    const late = new AbortController();
    const p = preprocessImage(s, good, { signal: late.signal });
    late.abort();
    await rejectsWith(p, 'ABORTED', /aborted/);
  });

  it('RSS grows by less than 50 MB across 200 hostile decodes', async () => {
    const inputs = (await hostile()).map(([, buf]) => buf);
    const round = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) await preprocessImage(s, inputs[i % inputs.length] as Buffer).catch(() => undefined);
    };
    await round(40); // warm up allocator arenas and libvips' per-thread state
    const before = process.memoryUsage().rss;
    await round(200);
    const grown = (process.memoryUsage().rss - before) / 1e6;
    assert.ok(grown < 50, `RSS grew by ${grown.toFixed(1)} MB`);
  });

  it('configureSharp blocks document loaders: SVG then never reaches librsvg', async () => {
    configureSharp();
    assert.equal(sharp.cache().memory.max, 0);
    assert.equal(sharp.concurrency(), 1);
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>');
    await rejectsWith(preprocessImage(s, svg), 'BAD_INPUT', /not an image in a supported format/);
    assert.equal((await preprocessImage(s, await encodePartPng(partImage(createRng(2), { defective: false })))).dims[2], 64);
  });
});
