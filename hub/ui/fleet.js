/*
 * Fleet overview (totals from /v1/fleet, every principal from /v1/devices) and device detail
 * (/v1/devices/:id with its stream positions, and /v1/devices/:id/history).
 *
 * "Health" here is what the hub can see of a device without asking it: offline, or data that
 * did not arrive cleanly (gaps in its sequence numbers, refused messages) or is piling up on the
 * device (outbox backlog it reported in its last hello). Model behaviour (latency, errors) is per
 * model version, on the Models page.
 */
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

export function fleetView(ctx) {
  const totals = h('div', { class: 'cards', 'data-testid': 'fleet-totals' });
  const list = h('div');
  const root = h('section', {}, h('h1', {}, 'Fleet'), totals, h('h2', {}, 'Devices and sensors'), list);
  const update = async () => {
    const [fleet, { devices }] = await Promise.all([ctx.api('GET', '/v1/fleet'), ctx.api('GET', '/v1/devices')]);
    const now = Date.now();
    const agents = devices.filter((d) => d.kind === 'device');
    const attention = agents.filter((d) => health(d).kind !== 'ok').length;
    totals.replaceChildren(
      card('Devices online', `${fleet.devices.online} / ${fleet.devices.total}`),
      card('Sensors online', `${fleet.sensors.online} / ${fleet.sensors.total}`),
      card('Need attention', String(attention), 'offline, gaps, refused or backlog'),
      card('Records stored', fmtNum(fleet.records.stored), `${fmtNum(fleet.records.perSecondLastMinute, 1)} /s last minute`),
    );
    list.replaceChildren(
      table(
        [
          { label: 'Device', cell: (d) => link(`#/devices/${encodeURIComponent(d.id)}`, d.id) },
          { label: 'Kind', cell: (d) => (d.kind === 'sensor' && d.device ? `sensor of ${d.device}` : d.kind) },
          { label: 'Group', cell: (d) => d.group },
          { label: 'Status', cell: (d) => badge(d.online ? 'online' : 'offline') },
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
        { empty: 'No devices registered yet (edgefleet device add).', testid: 'devices' },
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
