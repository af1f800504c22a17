/*
 * Model registry (/v1/models, newest first) with each version's behaviour over the last hour from
 * /v1/kpis when the hub has KPIs (inferences, error rate, p95 latency, devices serving it).
 */
import { ApiError } from './api.js';
import { fmtBytes, fmtNum, fmtTime, h, link, table } from './dom.js';

const HOUR_MS = 3_600_000;

export function modelsView(ctx) {
  const list = h('div');
  const root = h('section', {}, h('h1', {}, 'Models'), h('p', { class: 'hint' }, 'Signed releases in the registry. Behaviour columns cover the last hour.'), list);
  const update = async () => {
    const from = new Date(Date.now() - HOUR_MS).toISOString();
    const [{ models }, kpis] = await Promise.all([
      ctx.api('GET', '/v1/models'),
      ctx.api('GET', `/v1/kpis?from=${encodeURIComponent(from)}`).catch((err) => {
        if (err instanceof ApiError && err.status === 404) return { kpis: [] }; // KPIs not enabled on this hub
        throw err;
      }),
    ]);
    const k = new Map((kpis.kpis ?? []).map((x) => [`${x.model}@${x.version}`, x]));
    const kpi = (m) => k.get(`${m.name}@${m.version}`);
    list.replaceChildren(
      table(
        [
          { label: 'Model', cell: (m) => m.name },
          { label: 'Version', cell: (m) => m.version },
          { label: 'Release #', class: 'num', cell: (m) => m.counter },
          { label: 'Size', class: 'num', cell: (m) => fmtBytes(m.size) },
          { label: 'Quantization', cell: (m) => (typeof m.quantization === 'string' ? m.quantization : m.quantization ? JSON.stringify(m.quantization) : '—') },
          { label: 'Signed by', cell: (m) => m.keyId },
          { label: 'Released', cell: (m) => fmtTime(m.createdAt) },
          { label: 'Devices', class: 'num', cell: (m) => fmtNum(kpi(m)?.devices) },
          { label: 'Inferences', class: 'num', cell: (m) => fmtNum(kpi(m)?.inferences) },
          { label: 'Error rate', class: 'num', cell: (m) => (kpi(m)?.errorRate == null ? '—' : `${fmtNum(kpi(m).errorRate * 100, 2)} %`) },
          { label: 'p95 latency', class: 'num', cell: (m) => (kpi(m)?.latencyMs ? `${fmtNum(kpi(m).latencyMs.p95, 1)} ms` : '—') },
          {
            label: '',
            cell: (m) => [
              link(`#/rollouts?model=${encodeURIComponent(`${m.name}@${m.version}`)}`, 'Roll out'),
              ' · ',
              link(`#/drift?model=${encodeURIComponent(m.name)}&version=${encodeURIComponent(m.version)}`, 'Drift'),
            ],
          },
        ],
        models.map((m) => ({ ...m, id: `${m.name}@${m.version}` })),
        { empty: 'No releases yet (edgefleet model push).', testid: 'models' },
      ),
    );
  };
  return { root, update, every: 15000 };
}
