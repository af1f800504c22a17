/*
 * DOM helpers for the dashboard: elements are built with text nodes and attributes only, never
 * from HTML strings, so device ids, labels and alert messages can never inject markup. No
 * `style` attributes either (the CSP forbids inline style): looks come from classes.
 */
/* global document, Node */

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'text') el.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: `h('a', { href, class, onclick }, 'text', child)`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** A table: columns are `{ label, cell: row => node | text, class? }`. */
export function table(columns, rows, { empty = 'Nothing yet.', testid } = {}) {
  if (rows.length === 0) return h('p', { class: 'empty', 'data-testid': testid }, empty);
  return h(
    'table',
    { 'data-testid': testid },
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { class: c.class }, c.label)))),
    h(
      'tbody',
      {},
      rows.map((r) => h('tr', { 'data-id': r.id ?? undefined }, columns.map((c) => h('td', { class: c.class }, c.cell(r))))),
    ),
  );
}

export function badge(text, kind = text) {
  return h('span', { class: ['badge', `badge-${String(kind).replace(/[^a-z0-9_-]/gi, '')}`] }, text);
}

export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return 'never';
  const s = Math.round((now - new Date(iso).getTime()) / 1000);
  if (!Number.isFinite(s)) return String(iso);
  if (s < 0) return 'just now';
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  return n.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return '—';
  const units = ['B', 'KB', 'MB', 'GB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${fmtNum(n, i === 0 ? 0 : 1)} ${units[i]}`;
}

/** A button for an API action; disabled (with the reason) for viewers. */
export function actionButton(label, { canWrite, onclick, kind = 'primary', disabled = false, testid }) {
  return h(
    'button',
    {
      type: 'button',
      class: kind,
      disabled: disabled || !canWrite,
      title: canWrite ? undefined : 'Your token may only read (viewer)',
      'data-testid': testid,
      onclick,
    },
    label,
  );
}

export const link = (href, text) => h('a', { href }, text);
