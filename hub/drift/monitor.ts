/**
 * Fleet drift detection at the hub: every drift.tickMs it tests each (model version, hub
 * window) whose window closed at least drift.graceMs ago and has no report yet, in window
 * order. The FleetWindow is built from the stored per-device rows (group and fleet aggregates
 * are combined from them exactly, inside the detector), the reference comes from the release's
 * manifest in the model registry (store.getModel), and the report and its findings are stored
 * in one transaction before the alert manager sees them; the report row marks the window as
 * done, so a restart never tests (or alerts on) a window twice.
 *
 * Model versions the registry does not know (models configured on the agent by hand) have no
 * reference: their windows get a `skipped` report with the reason, logged once per version.
 *
 * CUSUM state: one FleetDriftDetector per model version, in memory. At start each model
 * version replays its last drift.cusumReplayWindows tested windows from the stored device rows
 * (findings discarded), which rebuilds the CUSUMs as they were, up to that horizon. A window
 * that turns up older than the newest tested one of its model version (a first summary that
 * arrived very late) is recorded as skipped: feeding it now would run the CUSUM out of order.
 *
 * Retention: drift.retentionDays, pruned at start and every drift.pruneEveryMs.
 */
import { Counter, type Registry } from 'prom-client';
import { FleetDriftDetector, referenceFromManifest, type DriftReport } from '../../shared/drift/detector.ts';
import type { DriftAggregate } from '../../shared/drift/merge.ts';
import { toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { ManifestSchema } from '../../shared/manifest.ts';
import type { HubStore } from '../store/store.ts';
import { decodeAggregate } from './aggregator.ts';
import type { DriftConfig } from './config.ts';

export interface WindowContext {
  /** Group of each device that reported in the window. */
  groupOf: (deviceId: string) => string | undefined;
  /** Reporting devices per group in the window. */
  groupSizes: ReadonlyMap<string, number>;
}

/** What the alert manager gets after a window's report is stored. */
export type ReportListener = (report: DriftReport, ctx: WindowContext) => Promise<void>;

export interface DriftMonitorOptions {
  store: HubStore;
  log: Logger;
  registry: Registry;
  config: DriftConfig;
  onReport: ReportListener;
  now: () => number;
}

const DAY_MS = 86_400_000;
const key = (model: string, version: string): string => `${model}@${version}`;

export class DriftMonitor implements Component {
  readonly name = 'drift';
  readonly #o: DriftMonitorOptions;
  readonly #detectors = new Map<string, FleetDriftDetector>();
  /** Newest tested window per model version. */
  readonly #newest = new Map<string, number>();
  readonly #skipLogged = new Set<string>();
  readonly #findings: Counter<'model' | 'scope' | 'kind'>;
  readonly #windows: Counter<'outcome'>;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> = Promise.resolve();
  #lastPrune = Number.NEGATIVE_INFINITY;
  #stopped = true;

  constructor(opts: DriftMonitorOptions) {
    this.#o = opts;
    const registers = [opts.registry];
    this.#findings = new Counter({
      name: 'edgefleet_hub_drift_findings_total',
      help: 'Drift findings (effect size and significance both passed, or a CUSUM trend), by model version, scope and kind.',
      labelNames: ['model', 'scope', 'kind'],
      registers,
    });
    this.#windows = new Counter({
      name: 'edgefleet_hub_drift_windows_total',
      help: 'Hub windows of a model version handled by drift detection, by outcome (tested, skipped, failed).',
      labelNames: ['outcome'],
      registers,
    });
  }

  get retentionMs(): number {
    return this.#o.config.retentionDays * DAY_MS;
  }

  async start(_signal: AbortSignal): Promise<void> {
    this.#stopped = false;
    await this.#replay();
    const loop = (): void => {
      this.#timer = setTimeout(() => {
        void this.tick().finally(() => {
          if (!this.#stopped) loop();
        });
      }, this.#o.config.tickMs);
      this.#timer.unref();
    };
    loop();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  /** Tests every due window and prunes when due. Ticks run one at a time; never throws. */
  tick(): Promise<void> {
    const run = this.#running.then(() => this.#tick());
    this.#running = run.catch(() => undefined);
    return this.#running;
  }

  /** Deletes drift data past retention now (also done on the tick every drift.pruneEveryMs). */
  async prune(): Promise<{ summaries: number; windows: number; reports: number; findings: number; alerts: number }> {
    const now = this.#o.now();
    this.#lastPrune = now;
    const r = await this.#o.store.pruneDrift(now - this.retentionMs);
    if (r.windows || r.summaries || r.reports || r.alerts) this.#o.log.info(r, 'pruned drift data past retention');
    return r;
  }

  async #tick(): Promise<void> {
    const now = this.#o.now();
    try {
      if (now - this.#lastPrune >= this.#o.config.pruneEveryMs) await this.prune();
      const due = await this.#o.store.pendingDriftWindows(now - this.#o.config.graceMs);
      if (due.length === 0) return;
      const groups = new Map((await this.#o.store.listDevices()).map((d) => [d.id, d.group]));
      for (const w of due) {
        if (this.#stopped) return;
        await this.#evaluate(w.model, w.version, w.windowStart, w.windowMs, groups);
      }
    } catch (err) {
      this.#o.log.error({ err: toEdgefleetError(err) }, 'drift tick failed');
    }
  }

  async #detector(model: string, version: string): Promise<FleetDriftDetector | string> {
    const k = key(model, version);
    const known = this.#detectors.get(k);
    if (known) return known;
    const rec = await this.#o.store.getModel(model, version);
    if (!rec) return `no release ${k} in the model registry (a model configured on the agents by hand has no reference bins at the hub)`;
    let manifest: unknown;
    try {
      manifest = JSON.parse(rec.manifest);
    } catch {
      return `the stored manifest of ${k} is not JSON`;
    }
    const m = ManifestSchema.safeParse(manifest);
    if (!m.success) return `the stored manifest of ${k} does not parse`;
    const detector = new FleetDriftDetector(referenceFromManifest(m.data), this.#o.config.thresholds);
    this.#detectors.set(k, detector);
    return detector;
  }

  async #deviceAggregates(model: string, version: string, windowStart: number): Promise<DriftAggregate[]> {
    const out: DriftAggregate[] = [];
    for (const row of await this.#o.store.driftDeviceWindows(model, version, windowStart)) {
      try {
        out.push(decodeAggregate(row.aggregate));
      } catch (err) {
        this.#o.log.error({ err: toEdgefleetError(err), model, version, windowStart, deviceId: row.deviceId }, 'drift row left out');
      }
    }
    return out;
  }

  async #skip(model: string, version: string, windowStart: number, windowMs: number, reason: string): Promise<void> {
    const k = key(model, version);
    if (!this.#skipLogged.has(`${k}:${reason.slice(0, 40)}`)) {
      this.#skipLogged.add(`${k}:${reason.slice(0, 40)}`);
      this.#o.log.warn({ model, version, windowStart, reason }, 'drift window not tested');
    }
    await this.#o.store.putDriftReport({ model, version, windowStart, windowMs, evaluatedAt: this.#o.now(), skipped: reason, report: '{}' }, []);
    this.#windows.inc({ outcome: 'skipped' });
  }

  async #evaluate(model: string, version: string, windowStart: number, windowMs: number, groups: ReadonlyMap<string, string>): Promise<void> {
    const k = key(model, version);
    const newest = this.#newest.get(k);
    if (newest !== undefined && windowStart < newest) {
      await this.#skip(model, version, windowStart, windowMs, `its first summary arrived after window ${new Date(newest).toISOString()} was tested`);
      return;
    }
    const detector = await this.#detector(model, version);
    if (typeof detector === 'string') return this.#skip(model, version, windowStart, windowMs, detector);
    const devices = await this.#deviceAggregates(model, version, windowStart);
    if (devices.length === 0) return this.#skip(model, version, windowStart, windowMs, 'no readable device rows');
    const groupOf = (id: string): string | undefined => groups.get(id);
    let report: DriftReport;
    try {
      report = detector.evaluate({ devices, groupOf });
    } catch (err) {
      // A layout that does not match the reference (bins of another manifest): not retried.
      const e = toEdgefleetError(err);
      this.#windows.inc({ outcome: 'failed' });
      return this.#skip(model, version, windowStart, windowMs, `detector refused the window: ${e.message}`);
    }
    this.#newest.set(k, windowStart);
    const { findings, ...summary } = report;
    const stored = await this.#o.store.putDriftReport(
      { model, version, windowStart, windowMs, evaluatedAt: this.#o.now(), skipped: null, report: JSON.stringify(summary) },
      findings.map((f) => ({ model, version, windowStart, scope: f.scope, scopeId: f.id, feature: f.feature, finding: JSON.stringify(f) })),
    );
    if (!stored) return;
    this.#windows.inc({ outcome: 'tested' });
    for (const f of findings) this.#findings.inc({ model: k, scope: f.scope, kind: f.kind });
    if (findings.length) this.#o.log.info({ model, version, windowStart, findings: findings.length, headlines: report.headlines }, 'drift found');
    const groupSizes = new Map<string, number>();
    for (const d of devices) {
      if (d.count === 0) continue;
      const g = groupOf(d.id);
      if (g !== undefined) groupSizes.set(g, (groupSizes.get(g) ?? 0) + 1);
    }
    try {
      await this.#o.onReport(report, { groupOf, groupSizes });
    } catch (err) {
      this.#o.log.error({ err: toEdgefleetError(err), model, version, windowStart }, 'alerting on a drift report failed');
    }
  }

  /** Rebuilds the CUSUMs from the latest tested windows of each model version (no alerts). */
  async #replay(): Promise<void> {
    const n = this.#o.config.cusumReplayWindows;
    const reports = await this.#o.store.driftReports({ from: this.#o.now() - this.retentionMs, limit: 100_000 });
    const byModel = new Map<string, { model: string; version: string; windows: number[] }>();
    for (const r of reports) {
      if (r.skipped !== null) continue;
      const k = key(r.model, r.version);
      const e = byModel.get(k) ?? { model: r.model, version: r.version, windows: [] };
      e.windows.push(r.windowStart);
      byModel.set(k, e);
    }
    const groups = byModel.size ? new Map((await this.#o.store.listDevices()).map((d) => [d.id, d.group])) : new Map<string, string>();
    for (const [k, e] of byModel) {
      const windows = e.windows.sort((a, b) => a - b);
      this.#newest.set(k, windows[windows.length - 1] as number);
      if (n === 0) continue;
      const detector = await this.#detector(e.model, e.version);
      if (typeof detector === 'string') continue;
      for (const w of windows.slice(-n)) {
        const devices = await this.#deviceAggregates(e.model, e.version, w);
        if (devices.length === 0) continue;
        try {
          detector.evaluate({ devices, groupOf: (id) => groups.get(id) });
        } catch (err) {
          this.#o.log.warn({ err: toEdgefleetError(err), model: e.model, version: e.version, windowStart: w }, 'cannot replay drift window');
        }
      }
    }
  }
}
