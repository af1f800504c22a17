/**
 * Synthetic data for the demo: vibration/temperature feature vectors of a rotating machine in
 * three health states, and 64x64 grayscale camera images of machined parts with or without
 * surface defects. Used to train the demo models, by the demo's simulated sensors and cameras,
 * and by tests. Everything is driven by a seeded Rng, so a seed fixes the data exactly.
 */
import sharp from 'sharp';
import { toRng } from './rng.ts';
import type { RandomSource } from './rng.ts';

export { createRng, mulberry32 } from './rng.ts';
export type { RandomSource, Rng } from './rng.ts';

/** Model input order of the machine-state features, with units in the name's comment. */
export const SENSOR_FEATURES = [
  'vib_rms', // overall vibration velocity RMS, mm/s (ISO 10816 style)
  'vib_peak', // peak vibration velocity, mm/s
  'vib_kurtosis', // kurtosis of the acceleration signal (3 = gaussian; impacts raise it)
  'vib_crest', // crest factor, peak / RMS
  'band_low', // RMS velocity in 10-100 Hz (unbalance, misalignment), mm/s
  'band_mid', // RMS velocity in 100-1000 Hz (gear mesh, looseness), mm/s
  'band_high', // RMS velocity in 1-10 kHz (bearing defects), mm/s
  'temp_c', // bearing housing temperature, degrees Celsius
] as const;
export type SensorFeature = (typeof SENSOR_FEATURES)[number];

export const MACHINE_STATES = ['normal', 'worn', 'failing'] as const;
export type MachineState = (typeof MACHINE_STATES)[number];

interface StateParams {
  rms: [number, number]; // log-normal: median, sigma of log
  kurtosis: [number, number];
  crest: [number, number];
  temp: [number, number];
  bands: [number, number, number]; // energy share low/mid/high
}

const STATE_PARAMS: Record<MachineState, StateParams> = {
  normal: { rms: [1.8, 0.25], kurtosis: [3.0, 0.35], crest: [3.1, 0.3], temp: [40, 3], bands: [0.62, 0.28, 0.1] },
  worn: { rms: [2.9, 0.25], kurtosis: [3.8, 0.6], crest: [3.7, 0.4], temp: [45, 3.5], bands: [0.47, 0.36, 0.17] },
  failing: { rms: [4.6, 0.28], kurtosis: [5.4, 1.1], crest: [4.5, 0.55], temp: [52, 5], bands: [0.32, 0.34, 0.34] },
};

/**
 * One feature vector (order of SENSOR_FEATURES) for a machine in state `cls`. Machine load is a
 * nuisance factor shared by all states (it raises vibration and temperature), so single
 * features overlap between states and the classifier has to combine them.
 */
export function sensorSample(random: RandomSource, cls: MachineState): number[] {
  const rng = toRng(random);
  const p = STATE_PARAMS[cls];
  const load = rng.uniform(0.4, 1.0);
  const rms = p.rms[0] * Math.exp(rng.normal(0, p.rms[1])) * (0.7 + 0.6 * load);
  const crest = Math.max(1.5, rng.normal(p.crest[0], p.crest[1]));
  const peak = rms * crest * Math.exp(rng.normal(0, 0.05));
  const kurtosis = Math.max(1.8, rng.normal(p.kurtosis[0], p.kurtosis[1]));
  const w = p.bands.map((b) => b * Math.exp(rng.normal(0, 0.25)));
  const wSum = w.reduce((a, b) => a + b, 0);
  const bands = w.map((x) => rms * Math.sqrt(x / wSum));
  const temp = rng.normal(p.temp[0], p.temp[1]) + 15 * load;
  const v = [rms, peak, kurtosis, crest, bands[0] as number, bands[1] as number, bands[2] as number, temp];
  return v.map((x) => Math.round(x * 1000) / 1000);
}

export interface SensorDataset {
  x: number[][];
  y: number[];
}

/** `perClass` samples of every state, interleaved (normal, worn, failing, normal, ...). */
export function sensorDataset(rng: RandomSource, perClass: number): SensorDataset {
  const x: number[][] = [];
  const y: number[] = [];
  for (let i = 0; i < perClass; i++) {
    for (const [k, cls] of MACHINE_STATES.entries()) {
      x.push(sensorSample(rng, cls));
      y.push(k);
    }
  }
  return { x, y };
}

// ---------------------------------------------------------------------------------------------
// Camera

export const PART_SIZE = 64;
export const PART_LABELS = ['good', 'defective'] as const;

export interface PartImageOptions {
  defective: boolean;
  /** Scene illumination factor; 1 is nominal. Below ~0.6 defects get hard to see. */
  brightness?: number;
  /** Optical blur, gaussian sigma in pixels; 0 is sharp. */
  blur?: number;
  /** Sensor noise sigma in gray levels (default 5). */
  noise?: number;
}

function clamp01(x: number): number {
  return x < 0 ? 0 : x > 1 ? 1 : x;
}

function distToSegment(px: number, py: number, ax: number, ay: number, bx: number, by: number): number {
  const dx = bx - ax;
  const dy = by - ay;
  const len2 = dx * dx + dy * dy;
  const t = len2 === 0 ? 0 : Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / len2));
  const qx = ax + t * dx - px;
  const qy = ay + t * dy - py;
  return Math.sqrt(qx * qx + qy * qy);
}

/** Darkens the scene along a segment, anti-aliased; `k` is the fraction of light absorbed. */
function darkenSegment(scene: Float64Array, ax: number, ay: number, bx: number, by: number, width: number, k: number): void {
  const r = width / 2 + 1;
  const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - r));
  const x1 = Math.min(PART_SIZE - 1, Math.ceil(Math.max(ax, bx) + r));
  const y0 = Math.max(0, Math.floor(Math.min(ay, by) - r));
  const y1 = Math.min(PART_SIZE - 1, Math.ceil(Math.max(ay, by) + r));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const cov = clamp01(width / 2 + 0.5 - distToSegment(x, y, ax, ay, bx, by));
      if (cov > 0) {
        const i = y * PART_SIZE + x;
        scene[i] = (scene[i] as number) * (1 - k * cov);
      }
    }
  }
}

function gaussianBlur(src: Float64Array, sigma: number): Float64Array {
  const rad = Math.max(1, Math.ceil(3 * sigma));
  const kernel: number[] = [];
  let sum = 0;
  for (let i = -rad; i <= rad; i++) {
    const v = Math.exp(-(i * i) / (2 * sigma * sigma));
    kernel.push(v);
    sum += v;
  }
  const k = kernel.map((v) => v / sum);
  const n = PART_SIZE;
  const tmp = new Float64Array(n * n);
  const out = new Float64Array(n * n);
  const at = (a: Float64Array, x: number, y: number): number =>
    a[Math.min(n - 1, Math.max(0, y)) * n + Math.min(n - 1, Math.max(0, x))] as number;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      let acc = 0;
      for (let i = -rad; i <= rad; i++) acc += (k[i + rad] as number) * at(src, x + i, y);
      tmp[y * n + x] = acc;
    }
  }
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      let acc = 0;
      for (let i = -rad; i <= rad; i++) acc += (k[i + rad] as number) * at(tmp, x, y + i);
      out[y * n + x] = acc;
    }
  }
  return out;
}

/**
 * A 64x64 grayscale image (row-major, one byte per pixel) of a round machined part on a darker
 * conveyor background, with position/size/illumination jitter and sensor noise. Defective parts
 * carry a scratch, a crack or a few dark pits on their surface.
 */
export function partImage(random: RandomSource, opts: PartImageOptions): Uint8Array {
  const rng = toRng(random);
  const n = PART_SIZE;
  const brightness = opts.brightness ?? 1;
  const blur = opts.blur ?? 0;
  const noise = opts.noise ?? 5;
  const cx = n / 2 - 0.5 + rng.uniform(-3, 3);
  const cy = n / 2 - 0.5 + rng.uniform(-3, 3);
  const radius = rng.uniform(19, 23);
  const fg = rng.uniform(170, 210);
  const bg = rng.uniform(35, 60);
  const gx = rng.uniform(-0.15, 0.15);
  const gy = rng.uniform(-0.15, 0.15);
  const scene = new Float64Array(n * n);
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const d = Math.sqrt((x - cx) ** 2 + (y - cy) ** 2);
      const cov = clamp01(radius + 0.5 - d);
      // Soft radial shading of the part (a slightly domed surface under a top light).
      const part = fg * (1 - 0.1 * (d / radius) ** 2);
      const back = bg + gx * (x - n / 2) + gy * (y - n / 2);
      scene[y * n + x] = cov * part + (1 - cov) * back;
    }
  }
  if (opts.defective) {
    // Defects stay inside the part, away from its rim, as surface flaws do.
    const inside = (): [number, number] => {
      const r = Math.sqrt(rng.next()) * (radius - 6);
      const a = rng.uniform(0, 2 * Math.PI);
      return [cx + r * Math.cos(a), cy + r * Math.sin(a)];
    };
    const kind = rng.pick(['scratch', 'crack', 'pits'] as const);
    if (kind === 'scratch') {
      const [ax, ay] = inside();
      const len = rng.uniform(8, 22);
      const ang = rng.uniform(0, Math.PI);
      let bx = ax + len * Math.cos(ang);
      let by = ay + len * Math.sin(ang);
      const db = Math.hypot(bx - cx, by - cy);
      if (db > radius - 5) {
        bx = cx + ((bx - cx) * (radius - 5)) / db;
        by = cy + ((by - cy) * (radius - 5)) / db;
      }
      darkenSegment(scene, ax, ay, bx, by, rng.uniform(1, 2), rng.uniform(0.12, 0.6));
    } else if (kind === 'crack') {
      let [x, y] = inside();
      let ang = rng.uniform(0, 2 * Math.PI);
      const k = rng.uniform(0.15, 0.65);
      const steps = 3 + rng.int(4);
      for (let s = 0; s < steps; s++) {
        ang += rng.normal(0, 0.5);
        let nx = x + 3.5 * Math.cos(ang);
        let ny = y + 3.5 * Math.sin(ang);
        if (Math.hypot(nx - cx, ny - cy) > radius - 5) {
          // Turn back towards the centre rather than running off the part.
          ang = Math.atan2(cy - y, cx - x);
          nx = x + 3.5 * Math.cos(ang);
          ny = y + 3.5 * Math.sin(ang);
        }
        darkenSegment(scene, x, y, nx, ny, 1, k);
        x = nx;
        y = ny;
      }
    } else {
      const count = 1 + rng.int(3);
      for (let s = 0; s < count; s++) {
        const [px, py] = inside();
        const r = rng.uniform(1.2, 2.4);
        darkenSegment(scene, px, py, px, py, 2 * r, rng.uniform(0.15, 0.65));
      }
    }
  }
  const lit = blur > 0 ? gaussianBlur(scene, blur) : scene;
  const out = new Uint8Array(n * n);
  for (let i = 0; i < n * n; i++) {
    const v = (lit[i] as number) * brightness + rng.normal(0, noise);
    out[i] = v < 0 ? 0 : v > 255 ? 255 : Math.round(v);
  }
  return out;
}

export interface PartDataset {
  images: Uint8Array[];
  /** 0 = good, 1 = defective (index into PART_LABELS). */
  y: number[];
}

/**
 * A part image under the mild day-to-day variation the demo model's training and reference data
 * have (illumination ×0.8–1.2, and in 30% of frames a slight blur of sigma 0.3–0.9), on top of a
 * scene: `brightness` scales the illumination, `blur` adds optical blur (sigmas add in
 * quadrature). With the defaults it draws from the reference distribution itself.
 */
export function jitteredPartImage(random: RandomSource, opts: { defective: boolean; brightness?: number; blur?: number }): Uint8Array {
  const rng = toRng(random);
  const brightness = rng.uniform(0.8, 1.2) * (opts.brightness ?? 1);
  const jitterBlur = rng.next() < 0.3 ? rng.uniform(0.3, 0.9) : 0;
  const blur = Math.sqrt(jitterBlur ** 2 + (opts.blur ?? 0) ** 2);
  return partImage(rng, { defective: opts.defective, brightness, blur });
}

/** Alternating good/defective images; `jitter` also varies brightness and blur mildly. */
export function partDataset(random: RandomSource, count: number, jitter = true): PartDataset {
  const rng = toRng(random);
  const images: Uint8Array[] = [];
  const y: number[] = [];
  for (let i = 0; i < count; i++) {
    const defective = i % 2 === 1;
    images.push(jitter ? jitteredPartImage(rng, { defective }) : partImage(rng, { defective, brightness: 1, blur: 0 }));
    y.push(defective ? 1 : 0);
  }
  return { images, y };
}

/**
 * PNG encoding of a 64x64 grayscale part image, as the demo cameras publish it: a 1-channel
 * PNG (sharp would otherwise write sRGB, three times the bytes). Note that sharp decodes it to
 * 3 channels unless told `.toColourspace('b-w')` or `.grayscale()`.
 */
export async function encodePartPng(pixels: Uint8Array): Promise<Buffer> {
  if (pixels.length !== PART_SIZE * PART_SIZE) {
    throw new RangeError(`expected ${PART_SIZE * PART_SIZE} pixels, got ${pixels.length}`);
  }
  return sharp(Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength), {
    raw: { width: PART_SIZE, height: PART_SIZE, channels: 1 },
  })
    .toColourspace('b-w')
    .png()
    .toBuffer();
}

/**
 * Image statistics used as drift features for the camera model, computed on the 8-bit gray
 * model-sized image: brightness = mean / 255, contrast = standard deviation / 255, and
 * sharpness = mean absolute 4-neighbour Laplacian / 255 over interior pixels (falls with blur).
 */
export const IMAGE_DRIFT_FEATURES = ['brightness', 'contrast', 'sharpness'] as const;

export function imageDriftStats(pixels: Uint8Array, width = PART_SIZE, height = PART_SIZE): number[] {
  let sum = 0;
  let sq = 0;
  for (const p of pixels) {
    sum += p;
    sq += p * p;
  }
  const count = pixels.length;
  const mean = sum / count;
  const variance = Math.max(0, sq / count - mean * mean);
  let lap = 0;
  let m = 0;
  for (let y = 1; y < height - 1; y++) {
    for (let x = 1; x < width - 1; x++) {
      const i = y * width + x;
      const c = pixels[i] as number;
      const v = (pixels[i - 1] as number) + (pixels[i + 1] as number) + (pixels[i - width] as number) + (pixels[i + width] as number) - 4 * c;
      lap += Math.abs(v);
      m++;
    }
  }
  return [mean / 255, Math.sqrt(variance) / 255, m > 0 ? lap / m / 255 : 0];
}
