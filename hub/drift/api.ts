/**
 * The HTTP handlers behind the drift, alert and sample routes of hub/api/server.ts (kept here
 * so the server file only lists the routes):
 *   GET  /v1/drift?model=&version=&scope=&id=&feature=&from=&to=&limit=
 *        tested windows (devices, tests, headlines) and findings per model version, scope
 *        (fleet, group, device), id and feature, each with its effect in words;
 *        `&series=fleet` (with model and version) adds the time series the dashboard charts:
 *        per tested window, each numeric feature's fleet mean, raw and in reference SDs
 *   GET  /v1/alerts?state=&model=&version=    alerts, newest first
 *   GET  /v1/alerts/:id                       one alert with its webhook deliveries (the delivery log)
 *   POST /v1/alerts/:id/{ack,resolve}         lifecycle; 409 when the alert is not in a state that allows it
 *   POST /v1/samples/:deviceId?request=       a device's input sample (device credentials, own id only,
 *                                             against an open sample request: 403 without, 413 over quota)
 *   GET  /v1/samples?device=                  stored samples
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Logger } from '../../shared/log.ts';
import { ManifestSchema, type ReferenceBins } from '../../shared/manifest.ts';
import { DeviceIdSchema } from '../../shared/protocol.ts';
import { alertView, type AlertManager } from '../alerts/alerts.ts';
import { readJson, sendJson } from '../api/http.ts';
import type { DriftReportRow, HubStore } from '../store/store.ts';
import { decodeAggregate } from './aggregator.ts';
import type { SampleRequests } from './sample-requests.ts';
import type { SampleStore } from './samples.ts';
import { SampleUploadSchema } from './samples.ts';

/** Epoch ms or an ISO date. */
const TimeSchema = z.union([
  z.string().regex(/^\d+$/).transform(Number),
  z
    .string()
    .refine((s) => !Number.isNaN(Date.parse(s)), 'expected epoch ms or an ISO date')
    .transform((s) => Date.parse(s)),
]);

export const DriftQuerySchema = z.strictObject({
  model: z.string().max(64).optional(),
  version: z.string().max(64).optional(),
  scope: z.enum(['fleet', 'group', 'device']).optional(),
  id: z.string().max(64).optional(),
  feature: z.string().max(80).optional(),
  from: TimeSchema.optional(),
  to: TimeSchema.optional(),
  limit: z.coerce.number().int().min(1).max(5000).default(200),
  /** Adds `series`: fleet means per tested window (needs model and version). */
  series: z.enum(['fleet']).optional(),
});

export const AlertQuerySchema = z.strictObject({
  state: z.enum(['open', 'acknowledged', 'resolved']).optional(),
  model: z.string().max(64).optional(),
  version: z.string().max(64).optional(),
  limit: z.coerce.number().int().min(1).max(5000).default(500),
});

export const SampleQuerySchema = z.strictObject({ device: DeviceIdSchema.optional() });
/** `?request=<id>`: the sample request, checked before the body is read (the body may name it too). */
export const SampleUploadQuerySchema = z.strictObject({ request: z.string().max(200).optional() });

function parseQuery<S extends z.ZodType>(schema: S, query: URLSearchParams): z.infer<S> {
  const p = schema.safeParse(Object.fromEntries(query));
  if (!p.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(p.error));
  return p.data;
}

function parseJson(text: string): Record<string, unknown> {
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    return {};
  }
}

export interface DriftApiOptions {
  store: HubStore;
  alerts: AlertManager;
  samples: SampleStore;
  /** Sample requests and upload quotas (issue #14). */
  requests: SampleRequests;
  maxSampleBytes: number;
  maxSampleItems: number;
  log: Logger;
}

export class DriftApi {
  constructor(private readonly o: DriftApiOptions) {}

  async drift(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const q = parseQuery(DriftQuerySchema, query);
    const reports = await this.o.store.driftReports({ model: q.model, version: q.version, from: q.from, to: q.to, limit: q.limit });
    const findings = await this.o.store.driftFindings({ model: q.model, version: q.version, scope: q.scope, scopeId: q.id, feature: q.feature, from: q.from, to: q.to, limit: q.limit });
    let series: unknown[] | undefined;
    if (q.series) {
      if (q.model === undefined || q.version === undefined) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'series needs model and version');
      series = await this.#series(q.model, q.version, reports, q.feature);
    }
    sendJson(res, 200, {
      ...(series ? { series } : {}),
      windows: reports.map((r) => {
        const rep = parseJson(r.report);
        return {
          model: r.model,
          version: r.version,
          windowStart: new Date(r.windowStart).toISOString(),
          windowMs: r.windowMs,
          evaluatedAt: new Date(r.evaluatedAt).toISOString(),
          ...(r.skipped === null ? { devices: rep.devices, count: rep.count, tests: rep.tests, significant: rep.significant, alpha: rep.alpha, headlines: rep.headlines } : { skipped: r.skipped }),
        };
      }),
      findings: findings.map((f) => {
        const d = parseJson(f.finding);
        return {
          model: f.model,
          version: f.version,
          windowStart: new Date(f.windowStart).toISOString(),
          scope: f.scope,
          id: f.scopeId,
          feature: f.feature,
          kind: d.kind,
          against: d.against,
          n: d.n,
          effect: d.effect,
          p: d.p,
          q: d.q,
          direction: d.direction,
          message: d.message,
        };
      }),
    });
  }

  /**
   * Oldest first, one point per tested window: each numeric feature's mean over the fleet's
   * finite readings (from the stored per-device moments, so it is exact), and its distance from
   * the release's reference mean in reference SDs (null without a reference).
   */
  async #series(model: string, version: string, reports: readonly DriftReportRow[], feature: string | undefined): Promise<unknown[]> {
    const refs = new Map<string, ReferenceBins>();
    const rec = await this.o.store.getModel(model, version);
    const manifest = rec ? ManifestSchema.safeParse(parseJson(rec.manifest)) : undefined;
    for (const f of (manifest?.success ? manifest.data.drift?.features : undefined) ?? []) refs.set(f.name, f);
    const out: unknown[] = [];
    for (const r of [...reports].reverse()) {
      if (r.skipped !== null) continue;
      const sums = new Map<string, { n: number; sum: number }>();
      let devices = 0;
      for (const row of await this.o.store.driftDeviceWindows(model, version, r.windowStart)) {
        let agg;
        try {
          agg = decodeAggregate(row.aggregate);
        } catch {
          continue; // damaged row: the monitor logs it when it tests the window
        }
        devices++;
        for (const f of agg.numeric) {
          if (feature !== undefined && f.name !== feature) continue;
          const acc = sums.get(f.name) ?? { n: 0, sum: 0 };
          acc.n += f.counts.reduce((a, b) => a + b, 0);
          acc.sum += f.sum;
          sums.set(f.name, acc);
        }
      }
      const features: Record<string, { n: number; mean: number | null; shiftSd: number | null }> = {};
      for (const [name, { n, sum }] of sums) {
        const mean = n > 0 ? sum / n : null;
        const ref = refs.get(name);
        features[name] = { n, mean, shiftSd: mean !== null && ref && ref.std > 0 ? (mean - ref.mean) / ref.std : null };
      }
      out.push({ windowStart: new Date(r.windowStart).toISOString(), windowMs: r.windowMs, devices, features });
    }
    return out;
  }

  async alerts(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const q = parseQuery(AlertQuerySchema, query);
    const list = await this.o.store.listAlerts({ state: q.state, model: q.model, version: q.version, limit: q.limit });
    sendJson(res, 200, { alerts: list.map(alertView) });
  }

  async alert(res: ServerResponse, id: string): Promise<void> {
    const a = await this.o.alerts.get(id);
    const deliveries = await this.o.store.deliveries(id);
    sendJson(res, 200, {
      ...alertView(a),
      deliveries: deliveries.map((d) => ({
        id: d.id,
        target: d.target,
        url: d.url,
        event: d.event,
        state: d.state,
        attempts: d.attempts,
        lastError: d.lastError,
        nextAt: d.state === 'pending' ? new Date(d.nextAt).toISOString() : null,
        deliveredAt: d.deliveredAt === null ? null : new Date(d.deliveredAt).toISOString(),
        log: d.log.map((l) => ({ ...l, at: new Date(l.at).toISOString() })),
      })),
    });
  }

  async act(res: ServerResponse, id: string, action: string, by: string): Promise<void> {
    if (action !== 'ack' && action !== 'resolve') throw new EdgefleetError(ErrorCode.NOT_FOUND, `no alert action ${action}`);
    sendJson(res, 200, alertView(await this.o.alerts.act(id, action, by)));
  }

  /**
   * Only against an open sample request of this device and within its quotas
   * (hub/drift/sample-requests.ts): checked before the body is read, so an unasked upload costs
   * no disk and no more than the bounded drain of a refused body.
   */
  async upload(req: IncomingMessage, res: ServerResponse, deviceId: string, authenticated: string, query: URLSearchParams): Promise<void> {
    if (deviceId !== authenticated) throw new EdgefleetError(ErrorCode.FORBIDDEN, 'a device may upload samples only for itself');
    const named = parseQuery(SampleUploadQuerySchema, query).request;
    const requests = this.o.requests;
    const out = await requests.serialized(deviceId, async () => {
      const budget = await requests.budget(deviceId, named);
      const limit = Math.min(this.o.maxSampleBytes, budget.readLimit);
      let body;
      try {
        body = await readJson(req, SampleUploadSchema, limit);
      } catch (err) {
        if (err instanceof EdgefleetError && err.code === ErrorCode.PAYLOAD_TOO_LARGE) {
          throw requests.refuse(deviceId, limit < this.o.maxSampleBytes && limit === budget.dayRemaining ? 'day_quota' : 'request_quota', err.message);
        }
        throw err;
      }
      if (body.items.length > this.o.maxSampleItems) throw requests.refuse(deviceId, 'items', `at most ${this.o.maxSampleItems} items per upload`);
      if (named !== undefined && body.request !== undefined && body.request !== named) throw new EdgefleetError(ErrorCode.BAD_INPUT, 'the body names another sample request than the URL');
      const grant = requests.take(deviceId, body.request ?? named, budget);
      let saved;
      try {
        saved = await this.o.samples.save(deviceId, body, grant.maxBytes);
      } catch (err) {
        if (err instanceof EdgefleetError && err.code === ErrorCode.PAYLOAD_TOO_LARGE) throw requests.refuse(deviceId, grant.reason, err.message);
        throw err;
      }
      await requests.stored(deviceId, grant.request, saved, body.items.length);
      return { saved, body };
    });
    const { saved, body } = out;
    this.o.log.info({ deviceId, file: saved.file, bytes: saved.bytes, request: body.request, items: body.items.length, model: body.model, version: body.version }, 'device sample stored');
    sendJson(res, 201, { file: saved.file, items: body.items.length });
  }

  async samples(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const q = parseQuery(SampleQuerySchema, query);
    sendJson(res, 200, { samples: await this.o.samples.list(q.device) });
  }
}
