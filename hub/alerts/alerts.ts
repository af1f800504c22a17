/**
 * Drift alerts: each tested window's findings, folded per key (model version, scope, scope id,
 * feature; hub/alerts/words.ts), open a new alert or refresh the unresolved one with that key;
 * unresolved alerts of the model version without a finding this window count a clean window
 * and resolve themselves after alerts.autoResolveWindows. Operators acknowledge and resolve
 * (open → acknowledged → resolved; resolving from open is allowed too). Every transition is one
 * store transaction guarded by the state it leaves, and is delivered (MQTT, webhooks) after it
 * committed; a new alert also fires the retraining hook. `edgefleet_hub_alerts_open` counts
 * alerts in state `open` (acknowledged ones are being handled and should not page again).
 */
import { randomBytes } from 'node:crypto';
import { Gauge, type Registry } from 'prom-client';
import type { DriftReport } from '../../shared/drift/detector.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import type { WindowContext } from '../drift/monitor.ts';
import type { AlertRecord, AlertState, HubStore } from '../store/store.ts';
import type { AlertsConfig } from './config.ts';
import type { AlertDelivery } from './delivery.ts';
import { foldFindings } from './words.ts';

export interface AlertManagerOptions {
  store: HubStore;
  delivery: Pick<AlertDelivery, 'send' | 'retraining'>;
  log: Logger;
  registry: Registry;
  config: AlertsConfig;
  now: () => number;
}

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

/** The API's (and MQTT's, and webhooks') view of an alert. */
export function alertView(a: AlertRecord): Record<string, unknown> {
  let evidence: unknown;
  try {
    evidence = JSON.parse(a.evidence);
  } catch {
    evidence = null;
  }
  return {
    id: a.id,
    model: a.model,
    version: a.version,
    scope: a.scope,
    scopeId: a.scopeId,
    feature: a.feature,
    state: a.state,
    message: a.message,
    devices: a.devices,
    firstWindow: iso(a.firstWindow),
    lastWindow: iso(a.lastWindow),
    windows: a.windows,
    cleanWindows: a.cleanWindows,
    openedAt: iso(a.openedAt),
    updatedAt: iso(a.updatedAt),
    ackedAt: iso(a.ackedAt),
    ackedBy: a.ackedBy,
    resolvedAt: iso(a.resolvedAt),
    resolvedBy: a.resolvedBy,
    evidence,
  };
}

export class AlertManager {
  readonly #o: AlertManagerOptions;
  readonly #open: Gauge<'model' | 'scope' | 'feature'>;

  constructor(opts: AlertManagerOptions) {
    this.#o = opts;
    this.#open = new Gauge({
      name: 'edgefleet_hub_alerts_open',
      help: 'Drift alerts in state open (not yet acknowledged or resolved), by model version, scope and feature.',
      labelNames: ['model', 'scope', 'feature'],
      registers: [opts.registry],
    });
  }

  /** Sets the open-alerts gauge from the store (at start and after every change). */
  async refreshMetrics(): Promise<void> {
    const open = await this.#o.store.listAlerts({ state: 'open', limit: 100_000 });
    this.#open.reset();
    for (const a of open) this.#open.inc({ model: `${a.model}@${a.version}`, scope: a.scope, feature: a.feature });
  }

  /** The drift monitor's listener: one tested window of one model version. */
  async onReport(report: DriftReport, ctx: WindowContext): Promise<void> {
    const { name: model, version } = report.model;
    const hits = foldFindings(report.findings, { model, version, devices: report.devices, groupOf: ctx.groupOf, groupSizes: ctx.groupSizes });
    const window = { start: new Date(report.windowStart).toISOString(), ms: report.windowMs };
    const result = await this.#o.store.applyAlertWindow({
      model,
      version,
      windowStart: report.windowStart,
      at: this.#o.now(),
      autoResolveAfter: this.#o.config.autoResolveWindows,
      hits: hits.map((h) => ({
        scope: h.scope,
        scopeId: h.scopeId,
        feature: h.feature,
        message: h.message,
        devices: h.devices,
        newId: `al-${randomBytes(6).toString('hex')}`,
        evidence: JSON.stringify({
          window,
          devicesInScope: h.devicesInScope,
          devicesInWindow: report.devices,
          tests: report.tests,
          alpha: report.alpha,
          findings: h.findings.map((f) => ({
            kind: f.kind,
            scope: f.scope,
            id: f.id,
            against: f.against,
            n: f.n,
            effect: f.effect,
            p: f.p,
            q: f.q,
            direction: f.direction,
            message: f.message,
          })),
        }),
      })),
    });
    for (const a of result.opened) {
      this.#o.log.warn({ alert: a.id, model, version, scope: a.scope, scopeId: a.scopeId, feature: a.feature, devices: a.devices }, a.message);
      const view = alertView(a);
      await this.#o.delivery.send(a.id, 'opened', { alert: view });
      await this.#o.delivery.retraining(a.id, model, a.devices, { alert: view });
    }
    for (const a of result.resolved) {
      this.#o.log.info({ alert: a.id, cleanWindows: a.cleanWindows }, 'alert resolved itself');
      await this.#o.delivery.send(a.id, 'resolved', { alert: alertView(a) });
    }
    if (result.opened.length || result.resolved.length) await this.refreshMetrics();
  }

  async list(state?: AlertState, limit = 500): Promise<AlertRecord[]> {
    return this.#o.store.listAlerts({ ...(state ? { state } : {}), limit });
  }

  async get(id: string): Promise<AlertRecord> {
    const a = await this.#o.store.getAlert(id);
    if (!a) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no alert ${id}`);
    return a;
  }

  /** Operator actions: `ack` (open → acknowledged) and `resolve` (open|acknowledged → resolved). */
  async act(id: string, action: 'ack' | 'resolve', by: string): Promise<AlertRecord> {
    const [from, to]: [AlertState[], AlertState] = action === 'ack' ? [['open'], 'acknowledged'] : [['open', 'acknowledged'], 'resolved'];
    const a = await this.#o.store.transitionAlert(id, from, to, this.#o.now(), by);
    if (!a) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no alert ${id}`);
    this.#o.log.info({ alert: id, state: a.state, by }, `alert ${to}`);
    await this.#o.delivery.send(a.id, to, { alert: alertView(a) });
    await this.refreshMetrics();
    return a;
  }
}
