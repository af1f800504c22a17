/*
 * A small time-series chart as inline SVG (no chart library: the dashboard ships no third-party
 * code). One line of points over time, shaded bands (alert spans) and markers (findings), with
 * nice round y ticks and time ticks. The SVG scales to its container through its viewBox.
 */
import { s } from './dom.js';

const W = 760;
const H = 260;
const PAD = { left: 56, right: 16, top: 14, bottom: 40 };

/** Round tick values covering [lo, hi], about `n` of them. */
export function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

const MIN = 60_000;
const TIME_STEPS = [MIN, 5 * MIN, 15 * MIN, 30 * MIN, 60 * MIN, 120 * MIN, 360 * MIN, 720 * MIN, 1440 * MIN, 7 * 1440 * MIN];

/** Round times in [t0, t1] (whole minutes, quarter hours, hours, days: local time for days), at most about `n`. */
export function timeTicks(t0, t1, n = 6) {
  const step = TIME_STEPS.find((st) => (t1 - t0) / st <= n) ?? TIME_STEPS[TIME_STEPS.length - 1];
  const offset = step >= 1440 * MIN ? new Date(t0).getTimezoneOffset() * MIN : 0;
  const out = [];
  for (let t = Math.ceil((t0 - offset) / step) * step + offset; t <= t1; t += step) out.push(t);
  return out;
}

function timeLabel(t, spanMs) {
  const d = new Date(t);
  const hm = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return spanMs > 36 * 3600_000 ? `${d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })} ${hm}` : hm;
}

/**
 * points: [{ t (ms), y (number | null), label }]; bands: [{ from, to (ms), label, class }];
 * markers: [{ t (ms), label }]; yLabel: axis title; zero: draw y = 0.
 */
export function timeChart({ points, bands = [], markers = [], yLabel = '', zero = true, testid }) {
  const ys = points.map((p) => p.y).filter((y) => y !== null && Number.isFinite(y));
  const ts = [...points.map((p) => p.t), ...bands.flatMap((b) => [b.from, b.to]), ...markers.map((m) => m.t)];
  let t0 = Math.min(...ts);
  let t1 = Math.max(...ts);
  if (!(t1 > t0)) {
    t0 -= 60_000;
    t1 += 60_000;
  }
  let y0 = Math.min(...ys, zero ? 0 : Infinity);
  let y1 = Math.max(...ys, zero ? 0 : -Infinity);
  if (!Number.isFinite(y0) || !Number.isFinite(y1)) [y0, y1] = [-1, 1];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 1, y1 + 1];
  const padY = (y1 - y0) * 0.08;
  y0 -= padY;
  y1 += padY;
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => PAD.top + (1 - (v - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));

  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': yLabel, 'data-testid': testid });
  for (const b of bands) {
    const bx = x(b.from);
    svg.append(s('rect', { class: ['band', b.class], x: bx, y: PAD.top, width: Math.max(3, x(b.to) - bx), height: H - PAD.top - PAD.bottom }, s('title', {}, b.label)));
  }
  for (const v of niceTicks(y0, y1)) {
    svg.append(s('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }));
    svg.append(s('text', { class: 'tick', x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmt(v)));
  }
  if (zero && y0 < 0 && y1 > 0) svg.append(s('line', { class: 'zero', x1: PAD.left, x2: W - PAD.right, y1: y(0), y2: y(0) }));
  for (const t of timeTicks(t0, t1)) {
    svg.append(s('line', { class: 'grid', x1: x(t), x2: x(t), y1: H - PAD.bottom, y2: H - PAD.bottom + 4 }));
    const anchor = x(t) > W - PAD.right - 30 ? 'end' : x(t) < PAD.left + 30 ? 'start' : 'middle';
    svg.append(s('text', { class: 'tick', x: x(t), y: H - PAD.bottom + 16, 'text-anchor': anchor }, timeLabel(t, t1 - t0)));
  }
  svg.append(s('line', { class: 'axis', x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  svg.append(s('line', { class: 'axis', x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  svg.append(s('text', { class: 'axis-label', x: 12, y: H / 2, transform: `rotate(-90 12 ${H / 2})`, 'text-anchor': 'middle' }, yLabel));

  let d = '';
  for (const p of points) {
    if (p.y === null || !Number.isFinite(p.y)) continue;
    d += `${d ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`;
  }
  if (d) svg.append(s('path', { class: 'line', d }));
  for (const p of points) {
    if (p.y === null || !Number.isFinite(p.y)) continue;
    svg.append(s('circle', { class: 'point', cx: x(p.t), cy: y(p.y), r: 3.5 }, s('title', {}, p.label ?? fmt(p.y))));
  }
  for (const m of markers) {
    const mx = x(m.t);
    const top = PAD.top + 2;
    svg.append(s('path', { class: 'marker', d: `M${mx - 6},${top} L${mx + 6},${top} L${mx},${top + 10} Z` }, s('title', {}, m.label)));
  }
  return svg;
}
