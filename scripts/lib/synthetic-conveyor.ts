/**
 * Synthetic conveyor camera frames for the conveyor-parts detector (issue #13): a 640×480 RGB
 * view of a dark rubber belt (streaks along the direction of travel, scuffs, a lighting
 * gradient) carrying a few singulated metal parts — hex bolts lying flat and hex nuts (bright
 * or zinc-plated steel) and copper sealing washers — at random positions, sizes and angles,
 * each with its exact axis-aligned box. Parts
 * are singulated (at least PART_GAP pixels apart), as on a line feeding a pick-and-place cell.
 * Everything is drawn from a seeded Rng; anti-aliased by 4×4 supersampling at part edges.
 */
import { toRng } from './rng.ts';
import type { RandomSource, Rng } from './rng.ts';

export const FRAME_WIDTH = 640;
export const FRAME_HEIGHT = 480;
export const PART_CLASSES = ['bolt', 'nut', 'washer'] as const;
export type PartClass = (typeof PART_CLASSES)[number];
/** Smallest gap between two parts' boxes, in pixels. */
export const PART_GAP = 64;

export interface PartBox {
  cls: PartClass;
  /** Class index into PART_CLASSES. */
  label: number;
  /** Box corners in frame pixels (continuous: pixel i covers [i, i+1)). */
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

export interface ConveyorScene {
  width: number;
  height: number;
  /** RGB, row-major, 3 bytes per pixel. */
  rgb: Uint8Array;
  parts: PartBox[];
}

export interface SceneOptions {
  /** Number of parts (default 2-6 at random). */
  count?: number;
  /** Only these classes (default all). */
  classes?: readonly PartClass[];
  /** Scene illumination factor (default 0.9-1.1 at random). */
  illumination?: number;
}

/** A part as a coverage test in its own frame plus its shading. */
interface Shape {
  cls: PartClass;
  cx: number;
  cy: number;
  /** Is the point (dx, dy) from the centre on the part? */
  inside(dx: number, dy: number): boolean;
  /** Brightness factor at (dx, dy) (threads, chamfers). */
  shade(dx: number, dy: number): number;
  /** Half extents of the box around (cx, cy), and its offset from the centre. */
  box: { x1: number; y1: number; x2: number; y2: number };
  colour: [number, number, number];
}

function rotate(x: number, y: number, a: number): [number, number] {
  const c = Math.cos(a);
  const s = Math.sin(a);
  return [c * x - s * y, s * x + c * y];
}

function polygonBox(points: [number, number][]): { x1: number; y1: number; x2: number; y2: number } {
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  return { x1: Math.min(...xs), y1: Math.min(...ys), x2: Math.max(...xs), y2: Math.max(...ys) };
}

/** Bright steel, stainless or zinc-plated (slightly yellow) steel. */
function steel(rng: Rng): [number, number, number] {
  const b = rng.uniform(180, 225);
  const kind = rng.int(3);
  if (kind === 0) return [b, b, Math.min(255, b * 1.03)];
  if (kind === 1) return [Math.min(255, b * 1.04), b, b * 0.86];
  return [b * 0.98, b, b];
}

/** Copper, bright to slightly tarnished. */
function copper(rng: Rng): [number, number, number] {
  const r = rng.uniform(205, 235);
  return [r, r * rng.uniform(0.62, 0.72), r * rng.uniform(0.42, 0.52)];
}

function nut(rng: Rng): Omit<Shape, 'cx' | 'cy'> {
  const a = rng.uniform(15, 25); // circumradius
  const apothem = a * Math.cos(Math.PI / 6);
  // ISO 4032 proportions: the thread hole is ~0.6 of the across-flats width.
  const hole = apothem * rng.uniform(0.55, 0.62);
  const theta = rng.uniform(0, Math.PI / 3);
  const nx = Float64Array.from({ length: 6 }, (_, k) => Math.cos(theta + Math.PI / 6 + (k * Math.PI) / 3));
  const ny = Float64Array.from({ length: 6 }, (_, k) => Math.sin(theta + Math.PI / 6 + (k * Math.PI) / 3));
  const corners = Array.from({ length: 6 }, (_, k) => rotate(a, 0, theta + (k * Math.PI) / 3));
  return {
    cls: 'nut',
    inside: (dx, dy) => {
      if (dx * dx + dy * dy <= hole * hole) return false;
      for (let k = 0; k < 6; k++) if (dx * (nx[k] as number) + dy * (ny[k] as number) > apothem) return false;
      return true;
    },
    // The chamfered face: a slightly darker ring at the flats' corners.
    shade: (dx, dy) => (Math.hypot(dx, dy) > apothem * 0.95 ? 0.94 : 1),
    box: polygonBox(corners),
    colour: steel(rng),
  };
}

/** A copper sealing washer: a flat ring, the hole about half the outside diameter. */
function washer(rng: Rng): Omit<Shape, 'cx' | 'cy'> {
  const r = rng.uniform(15, 27);
  const hole = r * rng.uniform(0.48, 0.6);
  return {
    cls: 'washer',
    inside: (dx, dy) => {
      const d2 = dx * dx + dy * dy;
      return d2 <= r * r && d2 > hole * hole;
    },
    shade: (dx, dy) => 0.96 + 0.04 * (Math.hypot(dx, dy) / r),
    box: { x1: -r, y1: -r, x2: r, y2: r },
    colour: copper(rng),
  };
}

function bolt(rng: Rng): Omit<Shape, 'cx' | 'cy'> {
  const t = rng.uniform(11, 16); // shank diameter
  const shank = rng.uniform(50, 92);
  const headLen = t * rng.uniform(0.6, 0.75);
  const headW = t * rng.uniform(1.5, 1.8);
  const len = shank + headLen;
  const threaded = shank * rng.uniform(0.4, 0.9);
  const angle = rng.uniform(0, Math.PI);
  const pitch = rng.uniform(1.8, 2.6);
  // Along the axis u from -len/2 (head end) to len/2 (tip); v across it.
  const ca = Math.cos(angle);
  const sa = Math.sin(angle);
  const toLocal = (dx: number, dy: number): [number, number] => [ca * dx + sa * dy, -sa * dx + ca * dy];
  const corners: [number, number][] = [
    [-len / 2, -headW / 2],
    [-len / 2 + headLen, -headW / 2],
    [-len / 2 + headLen, headW / 2],
    [-len / 2, headW / 2],
    [len / 2, -t / 2],
    [len / 2, t / 2],
    [-len / 2 + headLen, t / 2],
    [-len / 2 + headLen, -t / 2],
  ].map(([u, v]) => rotate(u as number, v as number, angle));
  return {
    cls: 'bolt',
    inside: (dx, dy) => {
      const u = ca * dx + sa * dy;
      const v = Math.abs(-sa * dx + ca * dy);
      if (u < -len / 2 || u > len / 2) return false;
      return u < -len / 2 + headLen ? v <= headW / 2 : v <= t / 2;
    },
    shade: (dx, dy) => {
      const [u, v] = toLocal(dx, dy);
      const edge = 1 - 0.06 * (Math.abs(v) / (t / 2)) ** 2;
      if (u > len / 2 - threaded) return edge * (0.97 + 0.03 * Math.cos((2 * Math.PI * u) / pitch));
      return edge;
    },
    box: polygonBox(corners),
    colour: steel(rng),
  };
}

const MAKERS: Record<PartClass, (rng: Rng) => Omit<Shape, 'cx' | 'cy'>> = { bolt, nut, washer };

/**
 * One frame with its parts. The belt: gray ~50-62 with streaks along x, a few scuffs (lighter,
 * ≤ ~100 gray) and a lighting gradient; sensor noise on every pixel.
 */
export function conveyorScene(random: RandomSource, opts: SceneOptions = {}): ConveyorScene {
  const rng = toRng(random);
  const W = FRAME_WIDTH;
  const H = FRAME_HEIGHT;
  const illum = opts.illumination ?? rng.uniform(0.9, 1.1);
  const classes = opts.classes ?? PART_CLASSES;
  const count = opts.count ?? 2 + rng.int(5);
  const shapes: Shape[] = [];
  const margin = 6;
  for (let tries = 0; shapes.length < count && tries < 400; tries++) {
    const proto = MAKERS[rng.pick(classes)](rng);
    const cx = rng.uniform(margin - proto.box.x1, W - margin - proto.box.x2);
    const cy = rng.uniform(margin - proto.box.y1, H - margin - proto.box.y2);
    const b = { x1: cx + proto.box.x1, y1: cy + proto.box.y1, x2: cx + proto.box.x2, y2: cy + proto.box.y2 };
    const clear = shapes.every((s) => {
      const o = { x1: s.cx + s.box.x1, y1: s.cy + s.box.y1, x2: s.cx + s.box.x2, y2: s.cy + s.box.y2 };
      return b.x2 + PART_GAP <= o.x1 || o.x2 + PART_GAP <= b.x1 || b.y2 + PART_GAP <= o.y1 || o.y2 + PART_GAP <= b.y1;
    });
    if (clear) shapes.push({ ...proto, cx, cy });
  }

  // Belt: base gray per scene, streaks per row (the belt's grain runs along x), gradient.
  const base = rng.uniform(48, 62);
  const rowStreak = new Float64Array(H);
  let s = 0;
  for (let y = 0; y < H; y++) {
    s = 0.85 * s + rng.normal(0, 1.2);
    rowStreak[y] = s;
  }
  const gx = rng.uniform(-0.012, 0.012);
  const gy = rng.uniform(-0.012, 0.012);
  const rgb = new Float32Array(W * H * 3);
  for (let y = 0; y < H; y++) {
    const rowBase = base + (rowStreak[y] as number) + gy * (y - H / 2);
    for (let x = 0; x < W; x++) {
      const v = rowBase + gx * (x - W / 2);
      const i = (y * W + x) * 3;
      rgb[i] = v;
      rgb[i + 1] = v;
      rgb[i + 2] = v * 1.04;
    }
  }
  const scuffs = rng.int(4);
  for (let k = 0; k < scuffs; k++) {
    const sx = rng.uniform(0, W);
    const sy = rng.uniform(0, H);
    const len = rng.uniform(30, 120);
    const half = rng.uniform(1.5, 4);
    const lift = rng.uniform(15, 35);
    for (let y = Math.max(0, Math.floor(sy - half)); y < Math.min(H, Math.ceil(sy + half)); y++) {
      const d = lift * (1 - Math.abs(y + 0.5 - sy) / half);
      for (let x = Math.max(0, Math.floor(sx)); x < Math.min(W, Math.ceil(sx + len)); x++) {
        const i = (y * W + x) * 3;
        rgb[i] = (rgb[i] as number) + d;
        rgb[i + 1] = (rgb[i + 1] as number) + d;
        rgb[i + 2] = (rgb[i + 2] as number) + d * 1.04;
      }
    }
  }
  const SS = 4;
  for (const sh of shapes) {
    const x0 = Math.max(0, Math.floor(sh.cx + sh.box.x1));
    const x1 = Math.min(W - 1, Math.ceil(sh.cx + sh.box.x2));
    const y0 = Math.max(0, Math.floor(sh.cy + sh.box.y1));
    const y1 = Math.min(H - 1, Math.ceil(sh.cy + sh.box.y2));
    // Light from one side: a gentle gradient across the part.
    const lx = rng.uniform(-0.05, 0.05);
    const ly = rng.uniform(-0.05, 0.05);
    const span = Math.max(sh.box.x2 - sh.box.x1, sh.box.y2 - sh.box.y1) / 2;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        // Supersample only where an edge crosses the pixel (its corners and centre disagree):
        // every feature of a part is several pixels wide.
        const px = x - sh.cx;
        const py = y - sh.cy;
        const c0 = sh.inside(px + 0.5, py + 0.5);
        let a = c0 ? 1 : 0;
        if (c0 !== sh.inside(px, py) || c0 !== sh.inside(px + 1, py) || c0 !== sh.inside(px, py + 1) || c0 !== sh.inside(px + 1, py + 1)) {
          let cov = 0;
          for (let sy = 0; sy < SS; sy++) {
            for (let sx = 0; sx < SS; sx++) if (sh.inside(px + (sx + 0.5) / SS, py + (sy + 0.5) / SS)) cov++;
          }
          a = cov / (SS * SS);
        }
        if (a === 0) continue;
        const dx = x + 0.5 - sh.cx;
        const dy = y + 0.5 - sh.cy;
        const f = sh.shade(dx, dy) * (1 + (lx * dx + ly * dy) / span);
        const i = (y * W + x) * 3;
        for (let c = 0; c < 3; c++) rgb[i + c] = a * (sh.colour[c] as number) * f + (1 - a) * (rgb[i + c] as number);
      }
    }
  }
  const out = new Uint8Array(W * H * 3);
  // Sensor noise, gray (shared by the channels), triangular with sd ~3 gray levels: the two
  // uniforms are the halves of one 32-bit draw (this loop is most of a frame's cost).
  for (let i = 0; i < W * H; i++) {
    const u = rng.next() * 65536;
    const hi = Math.floor(u);
    const n = (hi / 65536 + (u - hi) - 1) * 7.3;
    for (let c = 0; c < 3; c++) {
      const v = (rgb[i * 3 + c] as number) * illum + n;
      out[i * 3 + c] = v < 0 ? 0 : v > 255 ? 255 : Math.round(v);
    }
  }
  const parts = shapes.map((sh) => ({
    cls: sh.cls,
    label: PART_CLASSES.indexOf(sh.cls),
    x1: sh.cx + sh.box.x1,
    y1: sh.cy + sh.box.y1,
    x2: sh.cx + sh.box.x2,
    y2: sh.cy + sh.box.y2,
  }));
  return { width: W, height: H, rgb: out, parts };
}

/** Letterbox geometry of a frame into a square model input: scale, then pad (Ultralytics style). */
export interface Letterbox {
  size: number;
  scale: number;
  padX: number;
  padY: number;
}

/**
 * A frame letterboxed into `size`×`size` as the model takes it: float32 NCHW RGB / 255, padded
 * with gray `pad`. Frames are not resized when they already fit (640×480 into 640).
 */
export function letterboxTensor(scene: ConveyorScene, size = 640, pad = 114): { data: Float32Array; box: Letterbox } {
  const scale = Math.min(size / scene.width, size / scene.height);
  if (scale !== 1) throw new RangeError('letterboxTensor takes frames that fit the input unscaled; resize with sharp first');
  const padX = Math.floor((size - scene.width) / 2);
  const padY = Math.floor((size - scene.height) / 2);
  const plane = size * size;
  const data = new Float32Array(3 * plane).fill(pad / 255);
  for (let y = 0; y < scene.height; y++) {
    for (let x = 0; x < scene.width; x++) {
      const src = (y * scene.width + x) * 3;
      const dst = (y + padY) * size + x + padX;
      for (let c = 0; c < 3; c++) data[c * plane + dst] = (scene.rgb[src + c] as number) / 255;
    }
  }
  return { data, box: { size, scale, padX, padY } };
}
