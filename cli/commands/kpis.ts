/**
 * `edgefleet kpis [--json]`: KPIs per model version over a period, from the hub's
 * `GET /v1/kpis` (hub/kpis/): inferences, realized accuracy with its 95% interval and the number
 * of labelled predictions, estimated accuracy (mean confidence), latency p50/p95, error rate,
 * uptime, CPU-seconds and business cost per 1,000 inferences. Accuracy is always printed with
 * its n: "0.91 (n=12, 0.62–0.98)" says how little 12 labels prove. Detection, regression and
 * anomaly versions get a TASK column (issue #13): precision/recall with n and mean IoU, MAE/RMSE
 * per target with n, precision/recall and alarm rate.
 */
import { z } from 'zod';
import { HUB_OPTIONS_HELP, UsageError, runCommand, table, type CliIo } from '../command.ts';
import { parseDuration } from './rollout.ts';

const USAGE = `usage: edgefleet kpis [--model <name>] [--version <v>] [--since <duration> | --from <time> --to <time>] [--json]

KPIs per model version over a period (default: the last 24 h).

Options:
  --model <name>       only this model
  --version <v>        only this version (with --model)
  --since <duration>   the period ending now, e.g. 30m, 6h, 7d
  --from <time>        period start: ISO 8601 date or epoch ms
  --to <time>          period end (default now)
  --window <duration>  accuracy windows (by prediction time) in --json output [1h]
  --json               print the hub's answer as JSON
${HUB_OPTIONS_HELP}
`;

const Prop = z.object({ value: z.number(), n: z.number() }).nullable();
const KpiSchema = z.looseObject({
  model: z.string(),
  version: z.string(),
  devices: z.number(),
  inferences: z.number(),
  errorRate: z.number().nullable(),
  latencyMs: z.object({ p50: z.number(), p95: z.number() }).nullable(),
  uptime: z.number().nullable(),
  cpu: z.object({ secondsPer1000: z.number() }).nullable(),
  accuracy: z.looseObject({
    realized: z.object({ n: z.number(), value: z.number(), ci95: z.tuple([z.number(), z.number()]) }).nullable(),
    estimated: z.object({ value: z.number() }).nullable(),
  }),
  cost: z.object({ per1000: z.number().nullable(), expectedPer1000: z.number().nullable(), labelled: z.number() }).nullable(),
  /** Absent from hubs before issue #13. */
  task: z
    .looseObject({
      kind: z.string(),
      labelled: z.number(),
      detection: z.looseObject({ precision: Prop, recall: Prop, meanIou: z.number().nullable() }).optional(),
      regression: z.looseObject({ targets: z.array(z.looseObject({ target: z.string(), n: z.number(), mae: z.number().nullable(), rmse: z.number().nullable() })) }).optional(),
      anomaly: z.looseObject({ precision: Prop, recall: Prop, alarmRate: Prop }).optional(),
    })
    .nullable()
    .optional(),
});
const AnswerSchema = z.object({ from: z.string(), to: z.string(), windowMs: z.number(), kpis: z.array(KpiSchema) });
type Kpi = z.infer<typeof KpiSchema>;

const f = (x: number | null | undefined, d: number): string => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
const pct = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : `${(x * 100).toFixed(1)}%`);
const prop = (name: string, p: { value: number; n: number } | null): string => (p ? `${name} ${f(p.value, 3)} (n=${p.n})` : `${name} -`);

/** The task KPIs in one cell: "P 0.600 (n=5) R 0.750 (n=4) IoU 0.83", "rul MAE 4.33 RMSE 6.03 (n=3)", "P .. R .. alarms 50.0%". */
export function formatTaskKpis(t: Kpi['task']): string {
  if (!t) return '-';
  if (t.labelled === 0 && !t.anomaly) return 'no feedback';
  if (t.detection) return `${prop('P', t.detection.precision)} ${prop('R', t.detection.recall)} IoU ${f(t.detection.meanIou, 2)}`;
  if (t.regression) return t.regression.targets.map((e) => `${e.target} MAE ${f(e.mae, 3)} RMSE ${f(e.rmse, 3)} (n=${e.n})`).join('; ');
  if (t.anomaly) return `${prop('P', t.anomaly.precision)} ${prop('R', t.anomaly.recall)} alarms ${pct(t.anomaly.alarmRate?.value)}`;
  return '-';
}

/** Plain text table, one line per model version. */
export function formatKpis(kpis: readonly Kpi[]): string {
  return table(kpis, {
    MODEL: (k) => `${k.model}@${k.version}`,
    INFERENCES: (k) => String(k.inferences),
    DEVICES: (k) => String(k.devices),
    'ACCURACY (n, 95% CI)': ({ accuracy: { realized: r } }) => (r ? `${f(r.value, 3)} (n=${r.n}, ${f(r.ci95[0], 2)}-${f(r.ci95[1], 2)})` : 'no feedback'),
    'EST.ACC': (k) => f(k.accuracy.estimated?.value, 3),
    'P50 MS': (k) => f(k.latencyMs?.p50, 2),
    'P95 MS': (k) => f(k.latencyMs?.p95, 2),
    ERRORS: (k) => pct(k.errorRate),
    UPTIME: (k) => pct(k.uptime),
    'CPU-S/1K': (k) => f(k.cpu?.secondsPer1000, 3),
    'COST/1K': (k) => (k.cost ? f(k.cost.per1000, 2) : '-'),
    TASK: (k) => formatTaskKpis(k.task),
  });
}

/** The query string for GET /v1/kpis from the flags. */
export function kpiQuery(values: { model?: string; version?: string; since?: string; from?: string; to?: string; window?: string }, now: number): string {
  if (values.version !== undefined && values.model === undefined) throw new UsageError('--version needs --model');
  if (values.since !== undefined && (values.from !== undefined || values.to !== undefined)) throw new UsageError('--since excludes --from and --to');
  const q = new URLSearchParams();
  if (values.model !== undefined) q.set('model', values.model);
  if (values.version !== undefined) q.set('version', values.version);
  if (values.since !== undefined) {
    q.set('from', String(now - parseDuration(values.since, '--since')));
    q.set('to', String(now));
  }
  if (values.from !== undefined) q.set('from', values.from);
  if (values.to !== undefined) q.set('to', values.to);
  if (values.window !== undefined) q.set('window', String(parseDuration(values.window, '--window')));
  const s = q.toString();
  return s ? `?${s}` : '';
}

export function run(argv: string[], io: CliIo): Promise<number> {
  const options = {
    model: { type: 'string' },
    version: { type: 'string' },
    since: { type: 'string' },
    from: { type: 'string' },
    to: { type: 'string' },
    window: { type: 'string' },
  } as const;
  return runCommand(argv, io, { name: 'kpis', usage: USAGE, options }, async ({ values, hub, show }) => {
    const path = `/v1/kpis${kpiQuery(values, Date.now())}`;
    const answer = await (await hub()).request('GET', path, AnswerSchema);
    show(answer, () => (answer.kpis.length === 0 ? `no model version served between ${answer.from} and ${answer.to}\n` : `${answer.from} – ${answer.to}\n${formatKpis(answer.kpis)}`));
  });
}
