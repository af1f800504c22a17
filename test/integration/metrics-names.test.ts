/**
 * Every Prometheus metric of the hub and the agent follows the naming conventions
 * (https://prometheus.io/docs/practices/naming/, issue #7): the program's prefix, snake_case,
 * base units (seconds, bytes, ratios; never ms, KiB, percent), `_total` on counters and only on
 * counters, a unit suffix on time and size metrics, help text, snake_case labels. The registries
 * are the real ones of an in-process hub and agent (with the process metrics their main.ts adds)
 * after a little traffic, so labelled series exist; the Grafana dashboard
 * (deploy/grafana/edgefleet.json) may use only names found here.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { MetricObjectWithValues, MetricValue, Registry } from 'prom-client';
import { collectProcessMetrics, METRIC_PREFIX } from '../../shared/metrics.ts';
import { topics } from '../../shared/protocol.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { mulberry32, sensorSample } from '../../scripts/lib/synthetic.ts';
import { InProcessFleet, until } from '../helpers/fleet-in-process.ts';

type Metric = MetricObjectWithValues<MetricValue<string>>;

/** Words that mean a non-base unit in a name. */
const NON_BASE_UNITS = new Set(['ms', 'msec', 'millis', 'milliseconds', 'us', 'microseconds', 'ns', 'nanoseconds', 'minutes', 'hours', 'days', 'kb', 'mb', 'gb', 'kib', 'mib', 'gib', 'percent', 'pct', 'bits']);
/**
 * prom-client's own gauges named `_total` (prometheus/client_js#283, open): upstream names we
 * do not control; `sum without (type) (..._nodejs_active_handles)` gives the same figure.
 */
const UPSTREAM_EXCEPTIONS = new Set(['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']);
/** Help text that promises a unit the name must carry. */
const TIME_WORDS = /\b(duration|latency|seconds)\b/i;

/** Every way `m` breaks the conventions (empty when it follows them). */
export function namingProblems(m: Pick<Metric, 'name' | 'help' | 'type'>, prefix: string, labels: readonly string[]): string[] {
  const p: string[] = [];
  const { name, type } = m;
  if (!name.startsWith(prefix)) p.push(`does not start with ${prefix}`);
  if (!/^[a-z][a-z0-9]*(_[a-z0-9]+)*$/.test(name)) p.push('is not snake_case');
  const words = name.slice(prefix.length).split('_');
  for (const w of words) if (NON_BASE_UNITS.has(w)) p.push(`uses the non-base unit "${w}" (use seconds, bytes or a ratio)`);
  if (String(type) === 'counter' && !name.endsWith('_total')) p.push('is a counter without _total');
  if (String(type) !== 'counter' && name.endsWith('_total') && !UPSTREAM_EXCEPTIONS.has(name.slice(prefix.length))) p.push(`is a ${String(type)} ending in _total`);
  if (/_(count|sum|bucket)$/.test(name)) p.push('ends in a suffix Prometheus reserves for histograms');
  const base = name.replace(/_total$/, '');
  if (TIME_WORDS.test(base.replace(/_/g, ' ')) && !/_seconds$/.test(base) && !/_seconds_per_/.test(base)) p.push('measures time without the _seconds suffix');
  if (/(^|_)bytes(_|$)/.test(base) && !base.endsWith('_bytes')) p.push('measures bytes without ending in _bytes');
  if (!m.help || m.help.trim().length < 8 || m.help === name) p.push('has no help text');
  for (const l of labels) if (!/^[a-z][a-z0-9_]*$/.test(l) || l.startsWith('__')) p.push(`has the label "${l}" that is not snake_case`);
  return p;
}

function metricsOf(registry: Registry): Promise<Metric[]> {
  return registry.getMetricsAsJSON();
}

function labelsOf(m: Metric): string[] {
  return [...new Set(m.values.flatMap((v) => Object.keys(v.labels)))].filter((l) => !(l === 'le' && String(m.type) === 'histogram') && !(l === 'quantile' && String(m.type) === 'summary'));
}

/** The metric names a dashboard may use: names plus _bucket/_sum/_count of histograms and summaries. */
export function exposedNames(metrics: readonly Metric[]): Set<string> {
  const names = new Set<string>();
  for (const m of metrics) {
    names.add(m.name);
    if (String(m.type) === 'histogram' || String(m.type) === 'summary') for (const s of ['_bucket', '_sum', '_count']) names.add(`${m.name}${s}`);
  }
  return names;
}

describe('Prometheus metric names', () => {
  const fleet = new InProcessFleet();
  let hubMetrics: Metric[];
  let agentMetrics: Metric[];

  before(async () => {
    const hub = await fleet.startHub();
    const agent = await fleet.startAgent('names-1');
    collectProcessMetrics(hub.registry, 'hub');
    collectProcessMetrics(agent.registry, 'agent');
    const sensorToken = await fleet.addPrincipal({ id: 'names-s1', kind: 'sensor', device: 'names-1' });
    const sensor = await fleet.connect('names-s1', sensorToken);
    const rng = mulberry32(7);
    for (let i = 0; i < 20; i++) await sensor.publishAsync(topics.input('names-1', 'vibration'), JSON.stringify({ id: `r${i}`, values: sensorSample(rng, 'normal') }), { qos: 1 });
    await sensor.publishAsync(topics.input('names-1', 'vibration'), 'not json', { qos: 1 });
    await until(async () => (await fleet.telemetry('names-1', 'inference')).length >= 20, 30_000, '20 inferences stored at the hub');
    hubMetrics = await metricsOf(hub.registry);
    agentMetrics = await metricsOf(agent.registry);
  });

  after(() => fleet.stop());

  test('traffic produced labelled series in both registries', () => {
    const series = (ms: Metric[], name: string): number => ms.find((m) => m.name === name)?.values.length ?? 0;
    assert.ok(series(agentMetrics, 'edgefleet_agent_inferences_total') > 0);
    assert.ok(series(agentMetrics, 'edgefleet_agent_inference_duration_seconds') > 0);
    assert.ok(series(hubMetrics, 'edgefleet_hub_telemetry_records_total') > 0);
    assert.ok(hubMetrics.some((m) => m.name === 'edgefleet_hub_process_cpu_seconds_total'), 'process metrics under the hub prefix');
    const principals = hubMetrics.find((m) => m.name === 'edgefleet_hub_principals')?.values ?? [];
    const count = (kind: string, state: string): number | undefined => principals.find((v) => v.labels.kind === kind && v.labels.state === state)?.value;
    assert.deepEqual([count('device', 'online'), count('device', 'offline'), count('sensor', 'online')], [1, 0, 1], 'fleet presence from the hub');
    assert.ok(agentMetrics.length > 30 && hubMetrics.length > 30);
  });

  for (const [program, get] of [
    ['hub', (): Metric[] => hubMetrics],
    ['agent', (): Metric[] => agentMetrics],
  ] as const) {
    test(`every ${program} metric follows the conventions`, () => {
      const problems = get().flatMap((m) => namingProblems(m, METRIC_PREFIX[program], labelsOf(m)).map((p) => `${m.name} ${p}`));
      assert.deepEqual(problems, []);
    });
  }

  test('the rules catch what they are meant to', () => {
    const check = (name: string, type: string, help = 'Some help text.', labels: string[] = []): string[] => namingProblems({ name, type, help } as unknown as Metric, 'edgefleet_hub_', labels);
    assert.deepEqual(check('edgefleet_hub_ok_total', 'counter'), []);
    assert.deepEqual(check('edgefleet_hub_commit_duration_seconds', 'histogram'), []);
    assert.match(check('edgefleet_inference_total', 'counter').join(), /does not start with edgefleet_hub_/);
    assert.match(check('edgefleet_hub_latency_p95_ms', 'gauge').join(), /non-base unit "ms".*without the _seconds suffix/);
    assert.match(check('edgefleet_hub_things', 'counter').join(), /counter without _total/);
    assert.match(check('edgefleet_hub_open_total', 'gauge').join(), /gauge ending in _total/);
    assert.match(check('edgefleet_hub_upload_bytes_size', 'gauge').join(), /without ending in _bytes/);
    assert.match(check('edgefleet_hub_Bad', 'gauge').join(), /snake_case/);
    assert.match(check('edgefleet_hub_x', 'gauge', '').join(), /no help text/);
    assert.match(check('edgefleet_hub_x', 'gauge', 'Some help.', ['Model']).join(), /label "Model"/);
  });

  test('the Grafana dashboard uses only exposed metrics, unique panel ids, a datasource on every target', () => {
    const dashboard = JSON.parse(readFileSync(join(REPO_ROOT, 'deploy', 'grafana', 'edgefleet.json'), 'utf8')) as Dashboard;
    const exposed = new Set([...exposedNames(hubMetrics), ...exposedNames(agentMetrics)]);
    const panels = flatPanels(dashboard.panels);
    assert.ok(panels.length >= 9, 'the panels the issue asks for');
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, `duplicate panel ids: ${ids.join(',')}`);
    const used = new Set<string>();
    for (const p of panels.filter((x) => x.type !== 'row')) {
      assert.ok(p.targets?.length, `panel ${p.id} "${p.title}" has targets`);
      for (const t of p.targets ?? []) {
        const ds = t.datasource ?? p.datasource;
        assert.ok(ds && ds.uid === '${DS_PROMETHEUS}', `panel ${p.id} target ${t.refId}: datasource \${DS_PROMETHEUS}`);
        assert.ok(balanced(t.expr), `panel ${p.id} target ${t.refId}: unbalanced brackets or quotes in ${t.expr}`);
        const names = t.expr.match(/\bedgefleet_[a-z0-9_]+/g) ?? [];
        assert.ok(names.length > 0, `panel ${p.id} target ${t.refId} uses an edgefleet metric: ${t.expr}`);
        for (const n of names) {
          used.add(n);
          assert.ok(exposed.has(n), `panel ${p.id} "${p.title}" uses ${n}, which no registry exposes`);
        }
      }
    }
    assert.ok(used.size >= 12, `the dashboard uses ${used.size} metrics`);
    const vars = dashboard.templating.list.map((v) => v.name);
    for (const v of ['DS_PROMETHEUS', 'device', 'model']) assert.ok(vars.includes(v), `template variable ${v}`);
    for (const v of dashboard.templating.list.filter((x) => x.type === 'query')) {
      const q = typeof v.query === 'string' ? v.query : (v.query?.query ?? '');
      for (const n of q.match(/\bedgefleet_[a-z0-9_]+/g) ?? []) assert.ok(exposed.has(n), `variable ${v.name} uses ${n}`);
    }
  });

  test('the alert rules (deploy/prometheus-alerts.yml) use only exposed metrics', () => {
    const exposed = new Set([...exposedNames(hubMetrics), ...exposedNames(agentMetrics)]);
    const text = readFileSync(join(REPO_ROOT, 'deploy', 'prometheus-alerts.yml'), 'utf8');
    // The metric names in `expr:` lines and their continuations (annotations name some too).
    const names = new Set(text.match(/\bedgefleet_[a-z0-9_]+/g) ?? []);
    assert.ok(names.size >= 15, `the rules use ${names.size} metrics`);
    for (const n of names) assert.ok(exposed.has(n), `deploy/prometheus-alerts.yml uses ${n}, which no registry exposes`);
  });
});

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: { type: string; uid: string };
  targets?: { refId: string; expr: string; datasource?: { type: string; uid: string } }[];
  panels?: Panel[];
}
interface Dashboard {
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: string | { query?: string } }[] };
}

/** Brackets nest and close, quotes pair up: a loose syntax check of a PromQL expression. */
function balanced(expr: string): boolean {
  const stack: string[] = [];
  const close: Record<string, string> = { ')': '(', '}': '{', ']': '[' };
  let quoted = false;
  for (const ch of expr) {
    if (ch === '"') quoted = !quoted;
    else if (quoted) continue;
    else if ('({['.includes(ch)) stack.push(ch);
    else if (ch in close && stack.pop() !== close[ch]) return false;
  }
  return !quoted && stack.length === 0;
}

function flatPanels(panels: readonly Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...flatPanels(p.panels ?? [])]);
}
