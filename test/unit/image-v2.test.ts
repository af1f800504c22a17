/**
 * Manifest v2 image inputs (issue #13): letterbox with a pad value (Ultralytics' placement),
 * RGBA, float16 tensors and dynamic sizes, on real sharp pipelines over generated images.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import sharp from 'sharp';
import { dynamicSize, imageSpecOf, preprocessImage } from '../../agent/preprocess/image.ts';
import { ImageSourceSchema } from '../../shared/tasks/specs.ts';
import { halfToFloat } from '../../shared/tensor.ts';

/** A w×h image: a white rectangle at (rx, ry, rw, rh) on black, optionally with an alpha channel. */
async function png(w: number, h: number, rect: [number, number, number, number], alpha?: number): Promise<Buffer> {
  const c = alpha === undefined ? 3 : 4;
  const px = Buffer.alloc(w * h * c);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const inside = x >= rect[0] && x < rect[0] + rect[2] && y >= rect[1] && y < rect[1] + rect[3];
      const i = (y * w + x) * c;
      px.fill(inside ? 255 : 0, i, i + 3);
      if (alpha !== undefined) px[i + 3] = alpha;
    }
  }
  return sharp(px, { raw: { width: w, height: h, channels: c } }).png().toBuffer();
}

const src = (over: Record<string, unknown>) => ImageSourceSchema.parse({ kind: 'image', width: 64, height: 64, colour: 'rgb', layout: 'NCHW', ...over });

void describe('v2 image inputs', () => {
  test('letterbox keeps the aspect ratio, pads centred with the pad value, and reports the placement', async () => {
    const img = await png(128, 64, [32, 16, 64, 32]);
    const t = await preprocessImage(imageSpecOf(src({ fit: 'letterbox', pad: 114 }), 'float32'), img);
    assert.deepEqual(t.dims, [1, 3, 64, 64]);
    assert.deepEqual(
      { sx: t.geometry.scaleX, sy: t.geometry.scaleY, px: t.geometry.padX, py: t.geometry.padY, w: t.geometry.srcWidth, h: t.geometry.srcHeight },
      { sx: 0.5, sy: 0.5, px: 0, py: 16, w: 128, h: 64 },
    );
    const d = t.data as Float32Array;
    const at = (c: number, y: number, x: number): number => d[c * 64 * 64 + y * 64 + x]!;
    for (const y of [0, 15, 48, 63]) assert.ok(Math.abs(at(0, y, 32) - 114 / 255) < 1e-6, `pad row ${y}: ${at(0, y, 32)}`);
    assert.ok(at(0, 32, 32) > 0.95, 'the rectangle, mapped through the placement, is where the geometry says');
    assert.ok(at(0, 20, 4) < 0.05, 'black image content inside the letterbox');
  });

  test('RGBA keeps four channels and the alpha values', async () => {
    const t = await preprocessImage(imageSpecOf(src({ colour: 'rgba', layout: 'NHWC', mean: [0], std: [1], scale: 1 }), 'uint8'), await png(64, 64, [0, 0, 32, 64], 77));
    assert.deepEqual(t.dims, [1, 64, 64, 4]);
    const d = t.data as Uint8Array;
    assert.equal(d[3], 77, 'alpha of the first pixel');
    assert.deepEqual([...d.subarray(0, 3)], [255, 255, 255]);
    assert.deepEqual([...d.subarray(4 * 63, 4 * 63 + 4)], [0, 0, 0, 77]);
    assert.ok(Math.abs(t.stats.brightness - 0.5) < 0.02, `stats on the colour channels: ${t.stats.brightness}`);
  });

  test('float16 tensors hold the half of each float32 value', async () => {
    const img = await png(64, 64, [10, 10, 20, 30]);
    const s = src({ mean: [0.5], std: [0.25] });
    const f32 = (await preprocessImage(imageSpecOf(s, 'float32'), img)).data as Float32Array;
    const f16 = (await preprocessImage(imageSpecOf(s, 'float16'), img)).data;
    assert.ok(f16 instanceof Uint16Array);
    let worst = 0;
    for (let i = 0; i < f32.length; i++) worst = Math.max(worst, Math.abs(halfToFloat(f16[i]!) - f32[i]!));
    assert.ok(worst <= 2 ** -9, `max |half - float| ${worst}`);
  });

  test('dynamic sizes take the image near its own size, capped and rounded up to the multiple', async () => {
    assert.deepEqual(dynamicSize(300, 200, { multiple: 32, maxSide: 256 }), { width: 256, height: 192 });
    assert.deepEqual(dynamicSize(100, 40, { multiple: 32, maxSide: 640 }), { width: 128, height: 64 });
    const t = await preprocessImage(imageSpecOf(src({ fit: 'letterbox', dynamic: { multiple: 32, maxSide: 256 } }), 'float32'), await png(300, 200, [0, 0, 10, 10]));
    assert.deepEqual(t.dims, [1, 3, 192, 256]);
    assert.equal(t.data.length, 3 * 192 * 256);
    assert.equal(t.geometry.width, 256);
  });

  test('an image source cannot feed an int64 tensor', () => {
    assert.throws(() => imageSpecOf(src({}), 'int64'), /cannot hold pixels/);
  });
});

void describe('image stats fast path', () => {
  test('the lookup gives exactly the pow-based sRGB encoding, at and between every boundary', async () => {
    const { gammaForTest } = await import('../../agent/preprocess/image.ts');
    const { linearToSrgb8, linearToSrgb8Fast } = gammaForTest;
    let checked = 0;
    for (let i = 0; i <= 200_000; i++) {
      const y = i / 200_000;
      assert.equal(linearToSrgb8Fast(y), linearToSrgb8(y), `y = ${y}`);
      checked++;
    }
    // Around each output step: the doubles just below and at the step.
    for (let k = 0; k < 255; k++) {
      let lo = 0;
      let hi = 1;
      for (;;) {
        const mid = (lo + hi) / 2;
        if (mid === lo || mid === hi) break;
        if (linearToSrgb8(mid) > k) hi = mid;
        else lo = mid;
      }
      for (const y of [lo, hi]) assert.equal(linearToSrgb8Fast(y), linearToSrgb8(y), `step ${k}, y = ${y}`);
      checked += 2;
    }
    for (const y of [-1, 0, 1, 2, Number.NaN]) assert.equal(linearToSrgb8Fast(y), linearToSrgb8(y));
    assert.ok(checked > 200_000);
  });
});
