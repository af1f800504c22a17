/*
 * Drift: for one model version and one input feature, the fleet mean over time in reference SDs
 * (GET /v1/drift?series=fleet, hub/drift/api.ts) with the alerts on it (shaded over the windows
 * they span) and the windows where a test found drift (markers); below, the alerts with
 * Acknowledge / Resolve (POST /v1/alerts/:id/{ack,resolve}) and the latest findings in words.
 * The selection lives in the URL (#/drift?model=&version=&feature=) so a view can be linked.
 */
/* global URLSearchParams */
import { timeChart } from './chart.js';
import { actionButton, badge, fmtAgo, fmtNum, fmtTime, h, table } from './dom.js';

const ms = (iso) => new Date(iso).getTime();

/** An alert's scope id is the group for device-scope alerts (they name their devices). */
const alertScope = (a) => (a.scope === 'fleet' ? 'fleet' : a.scope === 'group' ? `group ${a.scopeId}` : `devices in ${a.scopeId}`);
const findingScope = (f) => (f.scope === 'fleet' ? 'fleet' : `${f.scope} ${f.id}`);

export function driftView(ctx, query) {
  const controls = h('div', { class: 'controls' });
  const chart = h('div', { class: 'panel chart-panel' });
  const alerts = h('div');
  const findings = h('div');
  const root = h(
    'section',
    {},
    h('h1', {}, 'Drift'),
    controls,
    chart,
    h('h2', {}, 'Alerts'),
    alerts,
    h('h2', {}, 'Latest findings'),
    findings,
  );
  let sel = { model: query.get('model'), version: query.get('version'), feature: query.get('feature') };
  const go = (next) => {
    const q = new URLSearchParams(Object.entries({ ...sel, ...next }).filter(([, v]) => v));
    ctx.navigate(`#/drift?${q.toString()}`);
  };

  const act = async (id, action) => {
    try {
      await ctx.api('POST', `/v1/alerts/${encodeURIComponent(id)}/${action}`);
      ctx.clearError();
      await update();
    } catch (err) {
      ctx.showError(err);
    }
  };

  const update = async () => {
    const [{ models }, { alerts: all }] = await Promise.all([ctx.api('GET', '/v1/models'), ctx.api('GET', '/v1/alerts?limit=200')]);
    if (!sel.model || !sel.version) {
      // Default: the version of the newest open alert, else the newest release.
      const a = all.find((x) => x.state === 'open') ?? all[0];
      const m = a ? { name: a.model, version: a.version } : models[0];
      if (m) sel = { model: m.name, version: m.version, feature: sel.feature ?? a?.feature };
    }
    if (!sel.model || !sel.version) {
      controls.replaceChildren(h('p', { class: 'empty' }, 'No releases yet: drift is tested against a release’s reference bins.'));
      return;
    }
    const base = `/v1/drift?model=${encodeURIComponent(sel.model)}&version=${encodeURIComponent(sel.version)}`;
    const data = await ctx.api('GET', `${base}&series=fleet&limit=500`);
    const series = data.series ?? [];
    const features = [...new Set(series.flatMap((p) => Object.keys(p.features)))].sort();
    const mine = all.filter((a) => a.model === sel.model && a.version === sel.version);
    const feature = sel.feature && features.includes(sel.feature) ? sel.feature : (mine.find((a) => features.includes(a.feature))?.feature ?? features[0]);

    const versions = models.map((m) => `${m.name}@${m.version}`);
    const current = `${sel.model}@${sel.version}`;
    if (!versions.includes(current)) versions.unshift(current);
    controls.replaceChildren(
      h(
        'label',
        { class: 'field inline' },
        h('span', {}, 'Model version'),
        h(
          'select',
          { id: 'drift-model', onchange: (ev) => {
            const [model, version] = ev.target.value.split('@');
            go({ model, version, feature: undefined });
          } },
          versions.map((v) => h('option', { value: v, selected: v === current }, v)),
        ),
      ),
      h(
        'label',
        { class: 'field inline' },
        h('span', {}, 'Feature'),
        h('select', { id: 'drift-feature', onchange: (ev) => go({ feature: ev.target.value }) }, features.map((f) => h('option', { value: f, selected: f === feature }, f))),
      ),
    );

    if (!feature) {
      chart.replaceChildren(h('p', { class: 'empty' }, `No tested drift window for ${current} yet.`));
    } else {
      const windowMs = series[0]?.windowMs ?? 0;
      const points = series.map((p) => {
        const f = p.features[feature];
        return { t: ms(p.windowStart), y: f?.shiftSd ?? null, label: `${fmtTime(p.windowStart)}: mean ${fmtNum(f?.mean, 3)} (${fmtNum(f?.shiftSd, 2)} SD) over ${fmtNum(f?.n)} readings from ${p.devices} devices` };
      });
      const onFeature = mine.filter((a) => a.feature === feature);
      const bands = onFeature.map((a) => ({ from: ms(a.firstWindow), to: ms(a.lastWindow) + windowMs, class: `alert-${a.state}`, label: `${a.state}: ${a.message}` }));
      const markers = (data.findings ?? []).filter((f) => f.feature === feature).map((f) => ({ t: ms(f.windowStart) + windowMs / 2, label: f.message ?? findingScope(f) }));
      chart.replaceChildren(
        h('h2', {}, `${feature} — fleet mean, in reference SDs`),
        points.length ? timeChart({ points, bands, markers, yLabel: 'shift (SD)', testid: 'drift-chart' }) : h('p', { class: 'empty' }, 'No tested window yet.'),
        h(
          'p',
          { class: 'legend' },
          h('span', { class: 'key key-line' }),
          ' fleet mean per window  ',
          h('span', { class: 'key key-alert' }),
          ` alert (${onFeature.length})  `,
          h('span', { class: 'key key-marker' }),
          ' window with a finding',
        ),
      );
    }

    const canWrite = ctx.session.canWrite;
    alerts.replaceChildren(
      table(
        [
          { label: 'State', cell: (a) => badge(a.state) },
          { label: 'Alert', class: 'message', cell: (a) => a.message },
          { label: 'Model', cell: (a) => `${a.model}@${a.version}` },
          { label: 'Feature', cell: (a) => a.feature },
          { label: 'Scope', cell: alertScope },
          { label: 'Windows', class: 'num', cell: (a) => a.windows },
          { label: 'Opened', cell: (a) => h('span', { title: fmtTime(a.openedAt) }, fmtAgo(a.openedAt)) },
          {
            label: '',
            cell: (a) => [
              a.state === 'open' ? actionButton('Acknowledge', { canWrite, kind: 'secondary', onclick: () => void act(a.id, 'ack') }) : null,
              a.state !== 'resolved' ? actionButton('Resolve', { canWrite, kind: 'secondary', onclick: () => void act(a.id, 'resolve') }) : null,
              a.ackedBy ? h('small', {}, ` acknowledged by ${a.ackedBy}`) : null,
            ],
          },
        ],
        all,
        { empty: 'No drift alerts.', testid: 'alerts' },
      ),
    );
    findings.replaceChildren(
      table(
        [
          { label: 'Window', cell: (f) => fmtTime(f.windowStart) },
          { label: 'Scope', cell: findingScope },
          { label: 'Feature', cell: (f) => f.feature },
          { label: 'Finding', class: 'message', cell: (f) => f.message ?? '' },
        ],
        (data.findings ?? []).slice(0, 50),
        { empty: 'No drift found in the tested windows.', testid: 'findings' },
      ),
    );
  };
  return { root, update, every: 15000 };
}
