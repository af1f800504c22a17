/*
 * Rollouts: the list with a create form (POST /v1/rollouts, hub/rollouts/spec.ts), and one
 * rollout's progress (GET /v1/rollouts/:id): waves with per-state device counts, gate results,
 * per-device states, and Pause / Resume / Abort / Approve (POST /v1/rollouts/:id/<action>).
 * While a rollout is running or paused its page refreshes every second.
 */
import { ApiError } from './api.js';
import { actionButton, badge, fmtAgo, fmtNum, fmtTime, h, link, s, table } from './dom.js';

const ACTIVE = new Set(['running', 'paused']);
const STATES = ['succeeded', 'failed', 'rolled_back', 'dispatched', 'pending'];

/** A stacked bar of a wave's device states. */
function waveBar(w) {
  const total = Math.max(1, w.devices);
  const svg = s('svg', { viewBox: '0 0 200 14', class: 'bar', preserveAspectRatio: 'none', role: 'img', 'aria-label': `wave ${w.index + 1}` });
  let x = 0;
  for (const st of STATES) {
    const n = w.counts?.[st] ?? 0;
    if (!n) continue;
    const width = (n / total) * 200;
    svg.append(s('rect', { class: `seg-${st}`, x, y: 0, width, height: 14 }, s('title', {}, `${n} ${st}`)));
    x += width;
  }
  return svg;
}

const countsText = (c) => STATES.filter((st) => c?.[st]).map((st) => `${c[st]} ${st.replace('_', ' ')}`).join(', ') || 'no devices';

/** "1, 10%, 50%, 100%" → [1, "10%", "50%", "100%"]. */
export function parseWaves(text) {
  return text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((w) => (/^\d+$/.test(w) ? Number(w) : w));
}

function createForm(ctx, models, preset) {
  const canWrite = ctx.session.canWrite;
  const model = h('select', { id: 'ro-model', name: 'model', required: true }, models.map((m) => h('option', { value: `${m.name}@${m.version}`, selected: `${m.name}@${m.version}` === preset }, `${m.name}@${m.version}`)));
  const targetKind = h('select', { id: 'ro-target-kind' }, h('option', { value: 'group' }, 'group'), h('option', { value: 'devices' }, 'device ids'));
  const target = h('input', { id: 'ro-target', placeholder: 'group name, or ids separated by commas', required: true });
  const waves = h('input', { id: 'ro-waves', value: '1, 10%, 50%, 100%' });
  const bake = h('input', { id: 'ro-bake', type: 'number', min: 0, step: 'any', value: 600 });
  const approval = h('input', { id: 'ro-approval', type: 'checkbox' });
  const onBreach = h('select', { id: 'ro-breach' }, h('option', { value: 'rollback' }, 'roll back'), h('option', { value: 'pause' }, 'pause'));
  const field = (label, input, hint) => h('label', { class: 'field' }, h('span', {}, label), input, hint ? h('small', {}, hint) : null);
  const submit = async (ev) => {
    ev.preventDefault();
    const [name, version] = model.value.split('@');
    const t = target.value.trim();
    const body = {
      model: name,
      version,
      target: targetKind.value === 'group' ? { group: t } : { devices: t.split(/[\s,]+/).filter(Boolean) },
      waves: parseWaves(waves.value),
      bakeMs: Math.round(Number(bake.value) * 1000),
      approval: approval.checked ? 'each-wave' : 'none',
      onBreach: onBreach.value,
    };
    try {
      const created = await ctx.api('POST', '/v1/rollouts', body);
      ctx.navigate(`#/rollouts/${encodeURIComponent(created.id)}`);
    } catch (err) {
      ctx.showError(err);
    }
  };
  return h(
    'form',
    { id: 'rollout-form', class: 'panel', onsubmit: (ev) => void submit(ev) },
    h(
      'fieldset',
      { disabled: !canWrite },
      h('legend', {}, canWrite ? 'Start a rollout' : 'Start a rollout (your token may only read)'),
      field('Release', model),
      field('Target', h('span', { class: 'inline' }, targetKind, target)),
      field('Waves', waves, 'cumulative: device counts or percentages of the target'),
      field('Bake (s)', bake, 'observation after each wave; health gates run here'),
      field('On breach', onBreach),
      h('label', { class: 'field check' }, approval, h('span', {}, 'approve each wave')),
      h('button', { type: 'submit' }, 'Start rollout'),
    ),
  );
}

export function rolloutsView(ctx, query) {
  const list = h('div');
  const form = h('div');
  const root = h('section', {}, h('h1', {}, 'Rollouts'), form, h('h2', {}, 'All rollouts'), list);
  let formShown = false;
  const update = async () => {
    const [{ rollouts }, models] = await Promise.all([ctx.api('GET', '/v1/rollouts'), formShown ? null : ctx.api('GET', '/v1/models')]);
    if (models) {
      form.replaceChildren(models.models.length ? createForm(ctx, models.models, query.get('model')) : h('p', { class: 'empty' }, 'Push a release first (edgefleet model push).'));
      formShown = true;
    }
    list.replaceChildren(
      table(
        [
          { label: 'Rollout', cell: (r) => link(`#/rollouts/${encodeURIComponent(r.id)}`, r.id.slice(0, 12)) },
          { label: 'Release', cell: (r) => `${r.model}@${r.version}` },
          { label: 'State', cell: (r) => badge(r.state) },
          { label: 'Phase', cell: (r) => r.phase },
          { label: 'Wave', cell: (r) => `${Math.min(r.currentWave + 1, r.waves.length)} / ${r.waves.length}` },
          { label: 'Succeeded', class: 'num', cell: (r) => `${r.counts.succeeded} / ${r.counts.total}` },
          { label: 'Failed', class: 'num', cell: (r) => r.counts.failed + r.counts.rolled_back },
          { label: 'Started', cell: (r) => h('span', { title: fmtTime(r.createdAt) }, fmtAgo(r.createdAt)) },
        ],
        rollouts,
        { empty: 'No rollouts yet.', testid: 'rollouts' },
      ),
    );
    return rollouts.some((r) => ACTIVE.has(r.state)) ? 2000 : 10000;
  };
  return { root, update, every: 10000 };
}

export function rolloutView(ctx, id) {
  const head = h('div');
  const actions = h('div', { class: 'actions' });
  const waves = h('div');
  const gates = h('div');
  const devices = h('div');
  const root = h(
    'section',
    {},
    h('p', {}, link('#/rollouts', '← Rollouts')),
    head,
    actions,
    h('h2', {}, 'Waves'),
    waves,
    h('h2', {}, 'Gate results'),
    gates,
    h('h2', {}, 'Devices'),
    devices,
  );
  const path = `/v1/rollouts/${encodeURIComponent(id)}`;
  let current;
  const act = async (action) => {
    try {
      render(await ctx.api('POST', `${path}/${action}`));
      ctx.clearError();
    } catch (err) {
      ctx.showError(err instanceof ApiError && err.status === 409 ? new ApiError(409, err.code, `cannot ${action} now: ${err.message}`) : err);
    }
  };
  const render = (r) => {
    current = r;
    const spec = r.spec ?? {};
    head.replaceChildren(
      h('h1', {}, `Rollout of ${r.model}@${r.version} `, badge(r.state)),
      h(
        'p',
        { class: 'meta', 'data-testid': 'rollout-summary' },
        `Phase ${r.phase} · wave ${Math.min(r.currentWave + 1, r.waves.length)} of ${r.waves.length} · ${r.counts.succeeded} of ${r.counts.total} succeeded`,
        r.bake?.until && r.phase === 'baking' ? ` · baking until ${fmtTime(r.bake.until)}${r.bake.extensions ? ` (extended ${r.bake.extensions}×)` : ''}` : '',
      ),
      h('p', { class: 'reason', hidden: !r.reason }, `Reason: ${r.reason ?? ''}`),
      h('p', { class: 'hint' }, `Target ${JSON.stringify(spec.target ?? {})} · bake ${fmtNum((spec.bakeMs ?? 0) / 1000, 1)} s · on breach ${spec.onBreach ?? '—'} · approval ${spec.approval ?? 'none'} · started ${fmtTime(r.createdAt)}${r.endedAt ? ` · ended ${fmtTime(r.endedAt)}` : ''}`),
    );
    const canWrite = ctx.session.canWrite;
    const running = r.state === 'running';
    actions.replaceChildren(
      actionButton('Pause', { canWrite, disabled: !running, onclick: () => void act('pause'), kind: 'secondary' }),
      actionButton('Resume', { canWrite, disabled: r.state !== 'paused', onclick: () => void act('resume'), kind: 'secondary' }),
      actionButton('Approve next wave', { canWrite, disabled: r.phase !== 'awaiting_approval', onclick: () => void act('approve') }),
      actionButton('Abort', {
        canWrite,
        disabled: !ACTIVE.has(r.state),
        kind: 'danger',
        onclick: () => {
          if (ctx.confirm(`Abort the rollout of ${r.model}@${r.version}? Devices keep what they run now.`)) void act('abort');
        },
      }),
    );
    waves.replaceChildren(
      table(
        [
          { label: 'Wave', cell: (w) => `${w.index + 1}` },
          { label: 'Status', cell: (w) => badge(w.status) },
          { label: 'Devices', class: 'num', cell: (w) => `${w.devices} (cumulative ${w.cumulative})` },
          { label: 'Progress', class: 'bar-cell', cell: waveBar },
          { label: 'States', cell: (w) => countsText(w.counts) },
        ],
        r.waves.map((w) => ({ ...w, id: `wave-${w.index}` })),
        { testid: 'waves' },
      ),
    );
    gates.replaceChildren(
      table(
        [
          { label: 'Wave', cell: (g) => `${g.wave + 1}` },
          { label: 'When', cell: (g) => fmtTime(g.at) },
          { label: 'Verdict', cell: (g) => badge(g.verdict) },
          { label: 'Action', cell: (g) => g.action },
          { label: 'Samples (candidate / baseline)', class: 'num', cell: (g) => `${fmtNum(g.samples?.candidate)} / ${fmtNum(g.samples?.baseline)}` },
          { label: 'Baseline', cell: (g) => g.baseline },
          { label: 'Breaches', cell: (g) => (g.breaches ?? []).map((b) => b.detail ?? b.metric).join('; ') || '—' },
        ],
        r.gates ?? [],
        { empty: 'No gate has run yet (gates run while a wave bakes).', testid: 'gates' },
      ),
    );
    devices.replaceChildren(
      table(
        [
          { label: 'Device', cell: (d) => link(`#/devices/${encodeURIComponent(d.id)}`, d.id) },
          { label: 'Wave', cell: (d) => `${d.wave + 1}` },
          { label: 'State', cell: (d) => badge(d.state) },
          { label: 'Attempts', class: 'num', cell: (d) => d.attempts },
          { label: 'From', cell: (d) => d.from ?? '—' },
          { label: 'Detail', class: 'details', cell: (d) => d.detail ?? '' },
        ],
        r.devices ?? [],
        { testid: 'rollout-devices' },
      ),
    );
  };
  const update = async () => {
    render(await ctx.api('GET', path));
    return current && ACTIVE.has(current.state) ? 1000 : 0;
  };
  return { root, update, every: 1000 };
}
