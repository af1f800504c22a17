/**
 * The KPI component: answers `GET /v1/kpis` (hub/kpis/kpis.ts), keeps Prometheus gauges of the
 * main KPIs per model version over the last `kpis.gaugePeriodMs`, and applies retention to the
 * KPI tables (inference index, health window index, presence log).
 *
 * The gauges are recomputed on a timer rather than on every scrape: a scrape must stay cheap
 * and a KPI query reads SQLite. Label sets are reset at each refresh, so versions that stopped
 * serving drop out instead of lingering with stale values.
 */
import { Gauge, type Registry } from 'prom-client';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { NameSchema } from '../../shared/protocol.ts';
import type { HubStore } from '../store/store.ts';
import type { KpisConfig } from './config.ts';
import { ReleaseTasks } from '../feedback/task-truth.ts';
import { queryKpis, type KpiQuery, type ModelVersionKpis } from './kpis.ts';

const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;

/** A time: epoch ms or an ISO 8601 date. */
const TimeSchema = z.union([
  z.string().regex(/^\d{1,15}$/).transform(Number),
  z
    .string()
    .refine((s) => Number.isFinite(Date.parse(s)), 'an ISO 8601 date or epoch milliseconds')
    .transform((s) => Date.parse(s)),
]);

export const KpiQuerySchema = z.strictObject({
  model: NameSchema.optional(),
  version: z.string().min(1).max(64).optional(),
  from: TimeSchema.optional(),
  to: TimeSchema.optional(),
  /** Accuracy window length in ms (default 1 h). */
  window: z.coerce.number().int().min(1000).max(31 * DAY_MS).optional(),
});

type GaugeName = 'inferences' | 'accuracy' | 'accuracyEstimated' | 'accuracyLabelled' | 'latencyP95' | 'errorRate' | 'uptime' | 'cpu' | 'cost' | 'precision' | 'recall' | 'meanIou' | 'alarmRate';
type TargetGaugeName = 'mae' | 'rmse';

export class KpiService implements Component {
  readonly name = 'kpis';
  readonly #o: { store: HubStore; config: KpisConfig; log: Logger; now: () => number };
  readonly #gauges: Record<GaugeName, Gauge<'model' | 'version'>>;
  readonly #targetGauges: Record<TargetGaugeName, Gauge<'model' | 'version' | 'target'>>;
  readonly #releases: ReleaseTasks;
  #timers: NodeJS.Timeout[] = [];
  #refreshing: Promise<void> | undefined;

  constructor(opts: { store: HubStore; config: KpisConfig; log: Logger; registry: Registry; now?: () => number }) {
    this.#o = { store: opts.store, config: opts.config, log: opts.log, now: opts.now ?? Date.now };
    const period = `over the last ${Math.round(opts.config.gaugePeriodMs / 60_000)} min`;
    const g = (name: string, help: string): Gauge<'model' | 'version'> =>
      new Gauge({ name: `edgefleet_hub_kpi_${name}`, help: `${help}, per model version, ${period}.`, labelNames: ['model', 'version'], registers: [opts.registry] });
    this.#gauges = {
      inferences: g('inferences', 'Inferences (health windows)'),
      accuracy: g('accuracy_ratio', 'Realized accuracy from ground-truth feedback, by prediction time'),
      accuracyLabelled: g('accuracy_labelled', 'Predictions with ground-truth feedback'),
      accuracyEstimated: g('accuracy_estimated_ratio', 'Estimated accuracy: mean top-1 confidence'),
      // Prometheus base unit: seconds (the API's latencyMs stays in ms, as people read it).
      latencyP95: g('latency_p95_seconds', 'p95 engine latency in seconds'),
      errorRate: g('error_rate_ratio', 'Inference error rate'),
      uptime: g('uptime_ratio', 'Mean online fraction of the devices serving the version'),
      cpu: g('cpu_seconds_per_1000_inferences', 'Process CPU seconds per 1,000 inferences'),
      cost: g('cost_per_1000_inferences', 'Realized business cost per 1,000 inferences (cost matrix × feedback)'),
      // Task KPIs (hub/feedback/task-kpis.ts): detection and anomaly versions.
      precision: g('precision_ratio', 'Precision from ground-truth feedback (detection: IoU >= 0.5 matches; anomaly: alarms that were anomalies)'),
      recall: g('recall_ratio', 'Recall from ground-truth feedback (detection: truth boxes found; anomaly: anomalies alarmed)'),
      meanIou: g('mean_iou_ratio', 'Mean IoU of detections matched to truth boxes'),
      alarmRate: g('alarm_rate_ratio', 'Anomaly alarms per indexed prediction'),
    };
    const t = (name: string, help: string): Gauge<'model' | 'version' | 'target'> =>
      new Gauge({ name: `edgefleet_hub_kpi_${name}`, help: `${help}, per model version and target, ${period}.`, labelNames: ['model', 'version', 'target'], registers: [opts.registry] });
    this.#targetGauges = {
      mae: t('mae', 'Regression mean absolute error from ground-truth feedback, in the unit of the target'),
      rmse: t('rmse', 'Regression root mean squared error from ground-truth feedback, in the unit of the target'),
    };
    this.#releases = new ReleaseTasks(opts.store);
  }

  start(_signal: AbortSignal): Promise<void> {
    const every = (ms: number, fn: () => Promise<unknown>, what: string): void => {
      const t = setInterval(() => void fn().catch((err: unknown) => this.#o.log.warn({ err: toEdgefleetError(err) }, `${what} failed`)), ms);
      t.unref();
      this.#timers.push(t);
    };
    every(this.#o.config.gaugeEveryMs, () => this.refreshGauges(), 'kpi gauge refresh');
    every(this.#o.config.pruneEveryMs, () => this.prune(), 'kpi retention');
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    await this.#refreshing;
  }

  /** Parses the HTTP query (model, version, from, to, window) into a KpiQuery. */
  parseQuery(params: URLSearchParams): KpiQuery {
    const parsed = KpiQuerySchema.safeParse(Object.fromEntries(params));
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
    const q = parsed.data;
    const to = q.to ?? this.#o.now();
    const from = q.from ?? to - DAY_MS;
    if (!(to > from)) throw new EdgefleetError(ErrorCode.BAD_INPUT, '`from` must be before `to`');
    return { model: q.model, version: q.version, from, to, windowMs: q.window ?? HOUR_MS };
  }

  query(q: KpiQuery): Promise<ModelVersionKpis[]> {
    return queryKpis({ store: this.#o.store, costs: this.#o.config.costs, now: this.#o.now(), releases: this.#releases }, q);
  }

  /** Recomputes the gauges over the last gaugePeriodMs (the timer calls it; tests too). */
  refreshGauges(): Promise<void> {
    this.#refreshing ??= this.#refresh().finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  async #refresh(): Promise<void> {
    const to = this.#o.now();
    const kpis = await this.query({ from: to - this.#o.config.gaugePeriodMs, to, windowMs: this.#o.config.gaugePeriodMs });
    for (const g of Object.values(this.#gauges)) g.reset();
    for (const g of Object.values(this.#targetGauges)) g.reset();
    for (const k of kpis) {
      const l = { model: k.model, version: k.version };
      const set = (name: GaugeName, v: number | null | undefined): void => {
        if (v !== null && v !== undefined && Number.isFinite(v)) this.#gauges[name].set(l, v);
      };
      set('inferences', k.inferences);
      set('accuracy', k.accuracy.realized?.value);
      set('accuracyLabelled', k.accuracy.labelled);
      set('accuracyEstimated', k.accuracy.estimated?.value);
      set('latencyP95', k.latencyMs ? k.latencyMs.p95 / 1000 : undefined);
      set('errorRate', k.errorRate);
      set('uptime', k.uptime);
      set('cpu', k.cpu?.secondsPer1000);
      set('cost', k.cost?.per1000);
      const task = k.task;
      const pr = task?.detection ?? task?.anomaly;
      set('precision', pr?.precision?.value);
      set('recall', pr?.recall?.value);
      set('meanIou', task?.detection?.meanIou);
      set('alarmRate', task?.anomaly?.alarmRate?.value);
      for (const e of task?.regression?.targets ?? []) {
        if (e.mae !== null) this.#targetGauges.mae.set({ ...l, target: e.target }, e.mae);
        if (e.rmse !== null) this.#targetGauges.rmse.set({ ...l, target: e.target }, e.rmse);
      }
    }
  }

  /** Deletes KPI rows older than the retention. */
  async prune(): Promise<void> {
    const before = this.#o.now() - this.#o.config.retentionDays * DAY_MS;
    const r = await this.#o.store.pruneKpiData(before);
    if (r.inferences || r.healthWindows || r.presence) this.#o.log.info({ ...r, before: new Date(before).toISOString() }, 'kpi retention');
  }
}
