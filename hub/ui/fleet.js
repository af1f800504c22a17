/*
 * Fleet overview (totals from /v1/fleet) with the principals one page at a time from
 * /v1/devices (issues #15, #16): a search box, group/kind/status/label filters and Previous /
 * Next driven by the API's cursor, never the whole fleet in the page (it stays usable at 10,000
 * devices and more). The filters live in the URL (#/fleet?q=&group=&kind=&status=&label=) so a
 * view can be linked; the page being read does not. Device detail: /v1/devices/:id with its
 * stream positions, and /v1/devices/:id/history.
 *
 * "Health" here is what the hub can see of a device without asking it: offline, or data that
 * did not arrive cleanly (gaps in its sequence numbers, refused messages) or is piling up on the
 * device (outbox backlog it reported in its last hello). Model behaviour (latency, errors) is per
 * model version, on the Models page.
 */
/* global window, URLSearchParams, setTimeout, clearTimeout */
import { badge, fmtAgo, fmtNum, fmtTime, h, link, table } from './dom.js';

/** Outbox records a device may hold before it counts as falling behind. */
const BACKLOG_WARN = 1000;

export function health(d) {
  if (!d.online) return { text: 'offline', kind: 'offline', why: `last seen ${fmtAgo(d.lastSeen)}` };
  const c = d.counters ?? {};
  const why = [];
  if (c.gaps > 0) why.push(`${c.gaps} missing records`);
  if (c.badMessages > 0) why.push(`${c.badMessages} refused messages`);
  if (c.backlog > BACKLOG_WARN) why.push(`backlog ${c.backlog}`);
  return why.length ? { text: 'attention', kind: 'warn', why: why.join(', ') } : { text: 'ok', kind: 'ok', why: 'online, no gaps, no refused messages' };
}

const models = (d) => (d.models ?? []).map((m) => `${m.name}@${m.version}`).join(', ') || '—';

function card(label, value, sub) {
  return h('div', { class: 'card' }, h('div', { class: 'card-label' }, label), h('div', { class: 'card-value' }, value), sub ? h('div', { class: 'card-sub' }, sub) : null);
}

/** Rows per page of the device list. */
export const PAGE_SIZE = 50;
const FILTERS = ['q', 'group', 'kind', 'status', 'label'];
/** Typing settles this long before the list is asked again. */
const TYPING_MS = 300;

const status = (d) => (d.revokedAt ? badge('revoked', 'rejected') : badge(d.online ? 'online' : 'offline'));
const labelsText = (d) =>
  Object.entries(d.labels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(', ') || '—';

function choice(id, label, options, value, onchange) {
  return h(
    'label',
    { class: 'field' },
    h('span', {}, label),
    h('select', { id, onchange }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))),
  );
}

export function fleetView(ctx, query = new URLSearchParams()) {
  const filters = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) ?? '']));
  // The cursor that starts each page read so far (Previous goes back one); reset by any filter change.
  let starts = [null];
  let at = 0;
  let nextCursor = null;
  let seq = 0;
  const typing = {};

  const totals = h('div', { class: 'cards', 'data-testid': 'fleet-totals' });
  const list = h('div');
  const range = h('span', { class: 'meta', 'data-testid': 'device-range' });
  const refresh = () => update().then(() => ctx.clearError(), (err) => ctx.showError(err));
  const turn = (page) => {
    // Disabled until the page arrives, so a second click cannot use the old page's cursor.
    prev.disabled = true;
    next.disabled = true;
    at = page;
    void refresh();
  };
  const prev = h('button', { type: 'button', class: 'secondary', 'data-testid': 'page-prev', disabled: true, onclick: () => at > 0 && turn(at - 1) }, '← Previous');
  const next = h(
    'button',
    {
      type: 'button',
      class: 'secondary',
      'data-testid': 'page-next',
      disabled: true,
      onclick: () => {
        if (!nextCursor) return;
        starts = [...starts.slice(0, at + 1), nextCursor];
        turn(at + 1);
      },
    },
    'Next →',
  );

  const setFilter = (key, value) => {
    if (filters[key] === value) return;
    filters[key] = value;
    starts = [null];
    at = 0;
    const qs = new URLSearchParams(FILTERS.filter((k) => filters[k]).map((k) => [k, filters[k]])).toString();
    // replaceState fires no hashchange: the view (and the focused search box) stays.
    window.history.replaceState(null, '', `#/fleet${qs ? `?${qs}` : ''}`);
    void refresh();
  };
  const text = (id, key, label, placeholder) =>
    h(
      'label',
      { class: 'field' },
      h('span', {}, label),
      h('input', {
        id,
        type: key === 'q' ? 'search' : 'text',
        value: filters[key],
        placeholder,
        autocomplete: 'off',
        spellcheck: 'false',
        oninput: (ev) => {
          clearTimeout(typing[key]);
          const value = ev.target.value.trim();
          typing[key] = setTimeout(() => setFilter(key, value), TYPING_MS);
        },
      }),
    );
  const controls = h(
    'form',
    { class: 'controls filters', 'data-testid': 'device-filters', role: 'search', onsubmit: (ev) => ev.preventDefault() },
    text('dev-search', 'q', 'Search', 'id or label value'),
    text('dev-group', 'group', 'Group', 'any'),
    choice('dev-kind', 'Kind', [['', 'any'], ['device', 'device'], ['sensor', 'sensor'], ['consumer', 'consumer']], filters.kind, (ev) => setFilter('kind', ev.target.value)),
    choice('dev-status', 'Status', [['', 'any'], ['online', 'online'], ['offline', 'offline'], ['revoked', 'revoked']], filters.status, (ev) => setFilter('status', ev.target.value)),
    text('dev-label', 'label', 'Label', 'key=value, …'),
  );
  const pager = h('div', { class: 'pager' }, prev, next, range);
  const root = h('section', {}, h('h1', {}, 'Fleet'), totals, h('h2', {}, 'Devices and sensors'), controls, pager, list);

  const update = async () => {
    const mine = ++seq;
    const q = new URLSearchParams(FILTERS.filter((k) => filters[k]).map((k) => [k, filters[k]]));
    q.set('limit', String(PAGE_SIZE));
    const cursor = starts[at];
    if (cursor) q.set('cursor', cursor);
    const [fleet, page] = await Promise.all([ctx.api('GET', '/v1/fleet'), ctx.api('GET', `/v1/devices?${q.toString()}`)]);
    if (mine !== seq) return; // a newer request (a filter or page change) owns the screen
    const devices = page.items;
    nextCursor = page.nextCursor;
    const now = Date.now();
    const attention = devices.filter((d) => d.kind === 'device' && health(d).kind !== 'ok').length;
    totals.replaceChildren(
      card('Devices online', `${fmtNum(fleet.devices.online)} / ${fmtNum(fleet.devices.total)}`),
      card('Sensors online', `${fmtNum(fleet.sensors.online)} / ${fmtNum(fleet.sensors.total)}`),
      card('Need attention', String(attention), 'on this page: offline, gaps, refused or backlog'),
      card('Records stored', fmtNum(fleet.records.stored), `${fmtNum(fleet.records.perSecondLastMinute, 1)} /s last minute`),
    );
    const first = at * PAGE_SIZE;
    range.textContent = devices.length ? `${fmtNum(first + 1)}–${fmtNum(first + devices.length)} of ${fmtNum(page.total)}` : `0 of ${fmtNum(page.total)}`;
    prev.disabled = at === 0;
    next.disabled = !nextCursor;
    const filtered = FILTERS.some((k) => filters[k]);
    list.replaceChildren(
      table(
        [
          { label: 'Device', cell: (d) => link(`#/devices/${encodeURIComponent(d.id)}`, d.id) },
          { label: 'Kind', cell: (d) => (d.kind === 'sensor' && d.device ? `sensor of ${d.device}` : d.kind) },
          { label: 'Group', cell: (d) => d.group },
          { label: 'Labels', cell: labelsText },
          { label: 'Status', cell: status },
          { label: 'Models', cell: models },
          { label: 'Agent', cell: (d) => d.agentVersion ?? '—' },
          { label: 'Last seen', cell: (d) => h('span', { title: fmtTime(d.lastSeen) }, fmtAgo(d.lastSeen, now)) },
          { label: 'Backlog', class: 'num', cell: (d) => fmtNum(d.counters?.backlog) },
          { label: 'Stored', class: 'num', cell: (d) => fmtNum(d.counters?.stored) },
          { label: 'Gaps', class: 'num', cell: (d) => fmtNum(d.counters?.gaps) },
          {
            label: 'Health',
            cell: (d) => {
              const x = health(d);
              return h('span', { title: x.why }, badge(x.text, x.kind));
            },
          },
        ],
        devices,
        { empty: filtered ? 'No device matches these filters.' : 'No devices registered yet (edgefleet device add).', testid: 'devices' },
      ),
    );
  };
  return { root, update, every: 5000 };
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function deviceView(ctx, id) {
  const info = h('div');
  const streams = h('div');
  const history = h('div');
  const root = h('section', {}, h('p', {}, link('#/fleet', '← Fleet')), h('h1', {}, `Device ${id}`), info, h('h2', {}, 'Streams'), streams, h('h2', {}, 'Model history'), history);
  const path = `/v1/devices/${encodeURIComponent(id)}`;
  const update = async () => {
    const [d, hist] = await Promise.all([ctx.api('GET', path), ctx.api('GET', `${path}/history`)]);
    const x = health(d);
    info.replaceChildren(
      kv([
        ['Status', [badge(d.online ? 'online' : 'offline'), ' ', badge(x.text, x.kind), ' ', x.why]],
        ['Kind', d.kind],
        ['Group', d.group],
        ['Labels', Object.entries(d.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'],
        ['Models', models(d)],
        ['Agent version', d.agentVersion ?? '—'],
        ['Boot epoch', d.bootEpoch ?? '—'],
        ['Last seen', `${fmtTime(d.lastSeen)} (${fmtAgo(d.lastSeen)})`],
        ['Registered', fmtTime(d.createdAt)],
        ['Records', `${fmtNum(d.counters?.stored)} stored, ${fmtNum(d.counters?.duplicates)} duplicates, ${fmtNum(d.counters?.badMessages)} refused, backlog ${fmtNum(d.counters?.backlog)}`],
      ]),
    );
    const stats = new Map((d.streamStats ?? []).map((st) => [`${st.stream}/${st.epoch}`, st]));
    streams.replaceChildren(
      table(
        [
          { label: 'Stream', cell: (st) => st.stream },
          { label: 'Epoch', class: 'num', cell: (st) => st.epoch },
          { label: 'Next seq (device)', class: 'num', cell: (st) => fmtNum(st.nextSeq) },
          { label: 'Pending on device', class: 'num', cell: (st) => fmtNum(st.pending) },
          { label: 'Stored at hub', class: 'num', cell: (st) => fmtNum(stats.get(`${st.stream}/${st.epoch}`)?.count) },
          { label: 'Gaps', class: 'num', cell: (st) => fmtNum(stats.get(`${st.stream}/${st.epoch}`)?.gaps) },
        ],
        d.streams ?? [],
        { empty: 'The device has not reported its streams yet.' },
      ),
    );
    const entries = [...(hist.history ?? [])].reverse();
    history.replaceChildren(
      table(
        [
          { label: 'When', cell: (e) => fmtTime(e.at) },
          { label: 'Event', cell: (e) => badge(e.event) },
          { label: 'Model', cell: (e) => (e.name ? `${e.name}@${e.version ?? '?'}` : '—') },
          { label: 'Rollout', cell: (e) => (e.rolloutId ? link(`#/rollouts/${encodeURIComponent(e.rolloutId)}`, e.rolloutId.slice(0, 12)) : '—') },
          { label: 'Details', class: 'details', cell: (e) => (e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : '') },
        ],
        entries,
        { empty: 'No model events yet.', testid: 'history' },
      ),
    );
  };
  return { root, update, every: 5000 };
}
