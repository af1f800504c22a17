/**
 * `edgefleet kpis [--json]`: KPIs per model version over a period, from the hub's
 * `GET /v1/kpis` (hub/kpis/): inferences, realized accuracy with its 95% interval and the number
 * of labelled predictions, estimated accuracy (mean confidence), latency p50/p95, error rate,
 * uptime, CPU-seconds and business cost per 1,000 inferences. Accuracy is always printed with
 * its n: "0.91 (n=12, 0.62–0.98)" says how little 12 labels prove.
 */
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { EXIT, HUB_OPTIONS, HUB_OPTIONS_HELP, HubClient, UsageError, failure, resolveHub, type CliIo } from './http-client.ts';
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
});
const AnswerSchema = z.object({ from: z.string(), to: z.string(), windowMs: z.number(), kpis: z.array(KpiSchema) });
type Kpi = z.infer<typeof KpiSchema>;

const f = (x: number | null | undefined, d: number): string => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
const pct = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : `${(x * 100).toFixed(1)}%`);

/** Plain text table, one line per model version. */
export function formatKpis(kpis: readonly Kpi[]): string {
  const head = ['MODEL', 'INFERENCES', 'DEVICES', 'ACCURACY (n, 95% CI)', 'EST.ACC', 'P50 MS', 'P95 MS', 'ERRORS', 'UPTIME', 'CPU-S/1K', 'COST/1K'];
  const rows = kpis.map((k) => {
    const r = k.accuracy.realized;
    return [
      `${k.model}@${k.version}`,
      String(k.inferences),
      String(k.devices),
      r ? `${f(r.value, 3)} (n=${r.n}, ${f(r.ci95[0], 2)}-${f(r.ci95[1], 2)})` : 'no feedback',
      f(k.accuracy.estimated?.value, 3),
      f(k.latencyMs?.p50, 2),
      f(k.latencyMs?.p95, 2),
      pct(k.errorRate),
      pct(k.uptime),
      f(k.cpu?.secondsPer1000, 3),
      k.cost ? f(k.cost.per1000, 2) : '-',
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return `${[line(head), ...rows.map(line)].join('\n')}\n`;
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

export async function run(argv: string[], io: CliIo): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      options: {
        ...HUB_OPTIONS,
        json: { type: 'boolean' },
        model: { type: 'string' },
        version: { type: 'string' },
        since: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        window: { type: 'string' },
      },
      allowPositionals: true,
      strict: true,
    });
    if (values.help) {
      io.out(USAGE);
      return EXIT.OK;
    }
    if (positionals.length) throw new UsageError(`unexpected argument ${positionals.join(' ')}`);
    const path = `/v1/kpis${kpiQuery(values, Date.now())}`;
    const client = new HubClient(await resolveHub(values, io.env));
    const answer = await client.request('GET', path, AnswerSchema);
    if (values.json) io.out(`${JSON.stringify(answer, null, 2)}\n`);
    else if (answer.kpis.length === 0) io.out(`no model version served between ${answer.from} and ${answer.to}\n`);
    else io.out(`${answer.from} – ${answer.to}\n${formatKpis(answer.kpis)}`);
    return EXIT.OK;
  } catch (err) {
    return failure(io, 'kpis', err, USAGE);
  }
}
