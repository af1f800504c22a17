/*
 * Model registry (/v1/models, newest first) with each version's behaviour over the last hour from
 * /v1/kpis when the hub has KPIs (inferences, error rate, p95 latency, devices serving it, and for
 * manifest v2 detection / regression / anomaly versions their task KPIs from feedback). Each
 * version's task comes from its manifest (GET /v1/models/:name/:version, fetched once per
 * version: a release never changes); its page lists the inputs with their sources and the
 * postprocessing.
 */
import { ApiError } from './api.js';
import { badge, fmtBytes, fmtNum, fmtTime, h, link, table } from './dom.js';

const HOUR_MS = 3_600_000;

const modelPath = (name, version) => `/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}`;
const modelHash = (name, version) => `#/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}`;

async function fetchKpis(ctx) {
  const from = new Date(Date.now() - HOUR_MS).toISOString();
  return ctx.api('GET', `/v1/kpis?from=${encodeURIComponent(from)}`).catch((err) => {
    if (err instanceof ApiError && err.status === 404) return { kpis: [] }; // KPIs not enabled on this hub
    throw err;
  });
}

/** A v1 manifest is a classifier; a v2 one names its task. */
export function taskOf(manifest) {
  if (!manifest) return null;
  return manifest.manifestVersion === 2 ? (manifest.task ?? manifest.postprocessing?.kind ?? null) : 'classification';
}

const fix = (n, digits = 2) => (n === null || n === undefined || !Number.isFinite(n) ? '—' : n.toFixed(digits));
const pct = (p) => (p ? `${fmtNum(p.value * 100, 1)}%` : '—');
const num = (n) => (n === null || n === undefined || !Number.isFinite(n) ? '—' : Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 10 ? n.toFixed(1) : n.toPrecision(2));

/** The task KPIs of a v2 version in one short line ("P 0.60 R 0.75 IoU 0.83", "MAE 4.3 h", "alarms 2.1%"), or null. */
export function taskKpiText(task, manifest) {
  if (!task) return null;
  if (task.detection) {
    const d = task.detection;
    return `P ${fix(d.precision?.value)} R ${fix(d.recall?.value)} IoU ${fix(d.meanIou)} (n ${fmtNum(d.labelled)})`;
  }
  if (task.regression) {
    const units = new Map((manifest?.postprocessing?.targets ?? []).map((t) => [t.name, t.unit]));
    const many = task.regression.targets.length > 1;
    const parts = task.regression.targets.map((t) => {
      const unit = units.get(t.target) ? ` ${units.get(t.target)}` : '';
      return `${many ? `${t.target}: ` : ''}MAE ${num(t.mae)}${unit} RMSE ${num(t.rmse)}${unit} (n ${fmtNum(t.n)})`;
    });
    return parts.join('; ') || null;
  }
  if (task.anomaly) {
    const a = task.anomaly;
    const pr = a.labelled > 0 ? `P ${fix(a.precision?.value)} R ${fix(a.recall?.value)} ` : '';
    return `${pr}alarms ${pct(a.alarmRate)}${a.alarmRate ? ` (n ${fmtNum(a.alarmRate.n)})` : ''}`;
  }
  return null;
}

const list3 = (xs, max = 4) => (xs.length <= max ? xs.join(', ') : `${xs.slice(0, max).join(', ')}, … (${xs.length})`);
const shape = (s) => `[${(s ?? []).join(', ')}]`;

/** An input's source in words: "image 640×640 letterbox", "window of 64 × 3", "state from h_out", ... */
export function sourceText(input, manifest) {
  const src = input.source;
  if (!src) {
    // v1: one input, described by the manifest's preprocessing.
    const p = manifest?.preprocessing;
    if (p?.kind === 'tabular') return `reading of ${p.features.length} features (${list3(p.features.map((f) => f.name))})`;
    if (p?.kind === 'image') return `image ${p.width}×${p.height} ${p.fit ?? 'fill'}, ${p.colour} ${p.layout}`;
    return '—';
  }
  switch (src.kind) {
    case 'image':
      return `image ${src.width}×${src.height} ${src.fit ?? 'fill'}${src.fit === 'letterbox' ? ` (pad ${src.pad ?? 114})` : ''}, ${src.colour} ${src.layout}${src.dynamic ? `, dynamic ×${src.dynamic.multiple ?? 32} ≤ ${src.dynamic.maxSide}` : ''}`;
    case 'reading':
      return `reading of ${src.features.length} features (${list3(src.features.map((f) => f.name))})`;
    case 'window': {
      const d = src.derive;
      const derived = d ? ` → ${[d.stats?.length ? d.stats.join(', ') : '', d.fftBands ? `${d.fftBands} FFT bands` : ''].filter(Boolean).join(' + ')}` : ` ${src.layout ?? 'TF'}`;
      return `window of ${src.size} × ${src.features.length} (${list3(src.features.map((f) => f.name))}), hop ${src.hop}${derived}`;
    }
    case 'constant':
      return `constant ${src.values.length === 1 ? src.values[0] : `[${list3(src.values.map(String))}]`}`;
    case 'state':
      return `state from ${src.output} (init ${src.init ?? 0}${src.resetAfterMs ? `, reset after ${fmtNum(src.resetAfterMs / 1000)} s idle` : ''})`;
    case 'upstream':
      return `upstream ${src.output}, ${src.frames ?? 1} frame${(src.frames ?? 1) === 1 ? '' : 's'}, hop ${src.hop ?? 1}`;
    default:
      return String(src.kind);
  }
}

/** The postprocessing in one line. */
export function postprocessingText(manifest) {
  const p = manifest?.postprocessing;
  if (!p) return '—';
  if (manifest.manifestVersion !== 2) return `${p.output}, labels ${list3(p.labels ?? [], 6)}`;
  switch (p.kind) {
    case 'classification':
      return `${p.activation ?? 'logits'}, labels ${list3(p.labels ?? [], 6)}`;
    case 'detection':
      return `${p.decoder} decoder, labels ${list3(p.labels ?? [], 6)}, score ≥ ${p.scoreThreshold}, NMS IoU ${p.iouThreshold}${p.classAgnostic ? ' class-agnostic' : ''}, max ${p.maxDetections}`;
    case 'segmentation':
      return `${p.activation ?? 'argmax'} over ${list3(p.labels ?? [], 6)}${p.activation === 'sigmoid' || p.activation === 'probability' ? `, threshold ${p.threshold}` : ''}${p.maxMaskRuns ? `, mask ≤ ${p.maxMaskRuns} runs` : ''}`;
    case 'regression':
      return p.targets
        .map((t) => `${t.name}${t.unit ? ` (${t.unit})` : ''} from ${t.output ?? 'output'}[${t.index ?? 0}]${t.min !== undefined || t.max !== undefined ? `, range ${t.min ?? '−∞'}–${t.max ?? '∞'}` : ''}`)
        .join('; ');
    case 'anomaly':
      return `${p.reconstructs ? `reconstruction error of ${p.reconstructs} vs ${p.output ?? 'output'}` : `score ${p.output ?? 'output'}[${p.index ?? 0}]`}, alarm at ≥ ${p.threshold}${p.normalize ? ' (normalized)' : ''}`;
    case 'embedding':
      return `outputs ${list3(p.outputs ?? [])}, ≤ ${p.maxElements ?? 4096} elements each`;
    default:
      return String(p.kind);
  }
}

const taskBadge = (task) => (task ? badge(task, `task-${task}`) : '—');

export function modelsView(ctx) {
  const list = h('div');
  const root = h('section', {}, h('h1', {}, 'Models'), h('p', { class: 'hint' }, 'Signed releases in the registry. Behaviour columns cover the last hour.'), list);
  /** name@version → manifest (releases are immutable: fetched once). */
  const manifests = new Map();
  const update = async () => {
    const [{ models }, kpis] = await Promise.all([ctx.api('GET', '/v1/models'), fetchKpis(ctx)]);
    await Promise.all(
      models
        .filter((m) => !manifests.has(`${m.name}@${m.version}`))
        .map((m) =>
          ctx.api('GET', modelPath(m.name, m.version)).then(
            (d) => manifests.set(`${m.name}@${m.version}`, d.manifest),
            () => undefined, // shown without its task; tried again on the next refresh
          ),
        ),
    );
    const k = new Map((kpis.kpis ?? []).map((x) => [`${x.model}@${x.version}`, x]));
    const kpi = (m) => k.get(`${m.name}@${m.version}`);
    const manifest = (m) => manifests.get(`${m.name}@${m.version}`);
    list.replaceChildren(
      table(
        [
          { label: 'Model', cell: (m) => link(modelHash(m.name, m.version), m.name) },
          { label: 'Version', cell: (m) => m.version },
          { label: 'Task', cell: (m) => taskBadge(taskOf(manifest(m))) },
          { label: 'Release #', class: 'num', cell: (m) => m.counter },
          { label: 'Size', class: 'num', cell: (m) => fmtBytes(m.size) },
          { label: 'Quantization', cell: (m) => (typeof m.quantization === 'string' ? m.quantization : m.quantization ? JSON.stringify(m.quantization) : '—') },
          { label: 'Signed by', cell: (m) => m.keyId },
          { label: 'Released', cell: (m) => fmtTime(m.createdAt) },
          { label: 'Devices', class: 'num', cell: (m) => fmtNum(kpi(m)?.devices) },
          { label: 'Inferences', class: 'num', cell: (m) => fmtNum(kpi(m)?.inferences) },
          { label: 'Error rate', class: 'num', cell: (m) => (kpi(m)?.errorRate == null ? '—' : `${fmtNum(kpi(m).errorRate * 100, 2)} %`) },
          { label: 'p95 latency', class: 'num', cell: (m) => (kpi(m)?.latencyMs ? `${fmtNum(kpi(m).latencyMs.p95, 1)} ms` : '—') },
          { label: 'Task KPIs', class: 'task-kpis', cell: (m) => taskKpiText(kpi(m)?.task, manifest(m)) ?? '—' },
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

/** One version: its task, inputs with their sources, postprocessing and last hour's KPIs. */
export function modelView(ctx, name, version) {
  const info = h('div');
  const inputs = h('div');
  const root = h(
    'section',
    {},
    h('p', {}, link('#/models', '← Models')),
    h('h1', {}, `Model ${name}@${version}`),
    info,
    h('h2', {}, 'Inputs'),
    inputs,
  );
  const update = async () => {
    const [d, kpis] = await Promise.all([ctx.api('GET', modelPath(name, version)), fetchKpis(ctx)]);
    const m = d.manifest ?? {};
    const k = (kpis.kpis ?? []).find((x) => x.model === name && x.version === version);
    const task = taskOf(m);
    info.replaceChildren(
      h(
        'dl',
        { class: 'kv', 'data-testid': 'model-info' },
        [
          ['Task', [taskBadge(task), ' ', `manifest v${m.manifestVersion ?? '?'}`]],
          ['Description', m.description ?? d.description ?? '—'],
          ['Postprocessing', h('span', { 'data-testid': 'postprocessing' }, postprocessingText(m))],
          ['Outputs', (m.outputs ?? []).map((o) => `${o.name} ${o.dtype} ${shape(o.shape)}`).join(', ') || '—'],
          ['Release', `#${d.counter} signed by ${d.keyId}, ${fmtTime(d.createdAt)}, ${fmtBytes(d.size)}`],
          ['Last hour', k ? `${fmtNum(k.inferences)} inferences on ${fmtNum(k.devices)} devices, error rate ${k.errorRate == null ? '—' : `${fmtNum(k.errorRate * 100, 2)} %`}, p95 ${k.latencyMs ? `${fmtNum(k.latencyMs.p95, 1)} ms` : '—'}` : '—'],
          ['Task KPIs', taskKpiText(k?.task, m) ?? '—'],
        ].map(([dt, dd]) => [h('dt', {}, dt), h('dd', {}, dd)]),
      ),
    );
    inputs.replaceChildren(
      table(
        [
          { label: 'Input', cell: (i) => i.name },
          { label: 'Type', cell: (i) => `${i.dtype} ${shape(i.shape)}` },
          { label: 'Source', class: 'source', cell: (i) => sourceText(i, m) },
        ],
        (m.inputs ?? []).map((i) => ({ ...i, id: i.name })),
        { empty: 'The manifest names no inputs.', testid: 'model-inputs' },
      ),
    );
  };
  return { root, update, every: 15000 };
}
