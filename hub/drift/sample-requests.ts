/**
 * Sample requests and upload quotas (issue #14). A device may upload input samples
 * (POST /v1/samples/<deviceId>) only against an open request the hub issued to that device: the
 * `drift.sample` command carries its id, its byte budget and its expiry
 * (shared/protocol.ts SampleCommandArgsSchema). Before, any device could upload unasked and
 * without bound; one wrote 177 MiB.
 *
 * - A request is single-use: the first stored upload fulfils it. It closes at its expiry
 *   (drift.samples.requestTtlMs).
 * - Per request the stored file may take drift.samples.maxBytes; per device, all files stored in
 *   any rolling 24 h at most drift.samples.maxBytesPerDay. The day's total comes from the stored
 *   files themselves (SampleStore.list, read once per device per hub run, then kept in memory),
 *   so a hub restart does not reset it.
 * - Uploads of one device run one at a time, so two concurrent uploads cannot both pass the
 *   quota check.
 * - Requests live in memory and are mirrored to the device's history (events `sample_requested`
 *   and `sample_stored`, deduplicated by request id); after a hub restart, a device's first
 *   upload rebuilds its requests from that history, once.
 *
 * Every refusal is counted (edgefleet_hub_sample_uploads_refused_total{reason}) and logged
 * throttled: 403 without an open request (reasons no_request, expired, used), 413 over a quota
 * (request_quota, day_quota, items).
 */
import { randomBytes } from 'node:crypto';
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { SampleRequestIdSchema, type SampleCommandArgs } from '../../shared/protocol.ts';
import type { HubStore } from '../store/store.ts';
import type { SampleStore } from './samples.ts';

export const SAMPLE_REFUSAL_REASONS = ['no_request', 'expired', 'used', 'request_quota', 'day_quota', 'items'] as const;
export type SampleRefusal = (typeof SAMPLE_REFUSAL_REASONS)[number];

const DAY_MS = 86_400_000;
/** Requests remembered per device (open, fulfilled or expired), newest kept. */
const MAX_REQUESTS_PER_DEVICE = 64;
const REQUESTED_EVENT = 'sample_requested';
const STORED_EVENT = 'sample_stored';

export interface SampleRequestLimits {
  /** Bytes one request's file may take. */
  maxBytes: number;
  maxBytesPerDay: number;
  requestTtlMs: number;
}

interface SampleRequest {
  id: string;
  pipeline: string;
  maxBytes: number;
  expiresAt: number;
  used: boolean;
}

interface DeviceState {
  requests: Map<string, SampleRequest>;
  /** Files stored by this device (receivedAt, bytes), oldest first; undefined until read from disk. */
  stored: { ts: number; bytes: number }[] | undefined;
  /** Rebuilt from the device's history (once per hub run). */
  recovered: boolean;
  /** The device's uploads run one after another. */
  queue: Promise<unknown>;
}

/** What one upload may take; `request` is fixed once the body named it. */
export interface UploadBudget {
  /** Largest body worth reading: the largest open request's budget, capped by the day's remainder. */
  readLimit: number;
  dayRemaining: number;
}

const HistoryDetailsSchema = z.object({ request: SampleRequestIdSchema, pipeline: z.string().optional(), maxBytes: z.number().optional(), expiresAt: z.number().optional() });

export interface SampleRequestsOptions {
  store: Pick<HubStore, 'appendHistory' | 'deviceHistory'>;
  samples: Pick<SampleStore, 'list'>;
  limits: SampleRequestLimits;
  log: Logger;
  registry: Registry;
  now: () => number;
}

export class SampleRequests {
  readonly #o: SampleRequestsOptions;
  readonly #devices = new Map<string, DeviceState>();
  readonly #refused: Counter<'reason'>;
  readonly #throttle: LogThrottle;

  constructor(opts: SampleRequestsOptions) {
    this.#o = opts;
    this.#throttle = new LogThrottle(10_000, opts.now);
    this.#refused = new Counter({
      name: 'edgefleet_hub_sample_uploads_refused_total',
      help: 'Device sample uploads refused, by reason (no_request, expired, used: 403; request_quota, day_quota, items: 413).',
      labelNames: ['reason'],
      registers: [opts.registry],
    });
    for (const reason of SAMPLE_REFUSAL_REASONS) this.#refused.inc({ reason }, 0);
  }

  /** Opens a request for a device; its fields go into the `drift.sample` command's args. */
  async open(deviceId: string, o: { pipeline: string; alertId?: string }): Promise<Required<Pick<SampleCommandArgs, 'request' | 'maxBytes' | 'expiresAt'>>> {
    const now = this.#o.now();
    const r: SampleRequest = { id: `sr-${randomBytes(12).toString('hex')}`, pipeline: o.pipeline, maxBytes: this.#o.limits.maxBytes, expiresAt: now + this.#o.limits.requestTtlMs, used: false };
    this.#remember(this.#device(deviceId), r);
    await this.#o.store.appendHistory({
      deviceId,
      ts: now,
      event: REQUESTED_EVENT,
      details: { request: r.id, pipeline: r.pipeline, maxBytes: r.maxBytes, expiresAt: r.expiresAt, ...(o.alertId ? { alert: o.alertId } : {}) },
      dedupeKey: `${REQUESTED_EVENT}:${r.id}`,
    });
    this.#o.log.info({ deviceId, request: r.id, pipeline: r.pipeline, maxBytes: r.maxBytes, expiresAt: new Date(r.expiresAt).toISOString() }, 'sample requested');
    return { request: r.id, maxBytes: r.maxBytes, expiresAt: r.expiresAt };
  }

  /** Runs `fn` after every earlier upload of this device has finished. */
  serialized<T>(deviceId: string, fn: () => Promise<T>): Promise<T> {
    const d = this.#device(deviceId);
    const run = d.queue.then(fn, fn);
    d.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Before the body is read: refuses the request the URL names (`?request=`) when it is not
   * open, or a device with no open request at all, 403; no quota left today, 413. Else says how
   * much is worth reading.
   */
  async budget(deviceId: string, requestId?: string): Promise<UploadBudget> {
    const d = await this.#recover(deviceId);
    const now = this.#o.now();
    let open: SampleRequest[];
    if (requestId !== undefined) {
      open = [this.#check(deviceId, d, requestId)];
    } else {
      open = [...d.requests.values()].filter((r) => !r.used && r.expiresAt > now);
      if (open.length === 0) throw this.refuse(deviceId, 'no_request', 'no open sample request for this device: upload only when the hub asks (drift.sample)');
    }
    const dayRemaining = this.#o.limits.maxBytesPerDay - (await this.#storedToday(deviceId, d, now));
    if (dayRemaining <= 0) throw this.refuse(deviceId, 'day_quota', `the device's sample quota of ${this.#o.limits.maxBytesPerDay} bytes per 24 h is used up`);
    return { readLimit: Math.min(dayRemaining, Math.max(...open.map((r) => r.maxBytes))), dayRemaining };
  }

  /** After the body is read: the open request it names, and the bytes its file may take. */
  take(deviceId: string, requestId: string | undefined, budget: UploadBudget): { request: string; maxBytes: number; reason: SampleRefusal } {
    const r = this.#check(deviceId, this.#device(deviceId), requestId);
    return r.maxBytes <= budget.dayRemaining
      ? { request: r.id, maxBytes: r.maxBytes, reason: 'request_quota' }
      : { request: r.id, maxBytes: budget.dayRemaining, reason: 'day_quota' };
  }

  /** Records a stored upload: the request is fulfilled and the bytes count against the day. */
  async stored(deviceId: string, requestId: string, file: { file: string; bytes: number; ts: number }, items: number): Promise<void> {
    const d = this.#device(deviceId);
    const r = d.requests.get(requestId);
    if (r) r.used = true;
    d.stored?.push({ ts: file.ts, bytes: file.bytes });
    await this.#o.store.appendHistory({
      deviceId,
      ts: file.ts,
      event: STORED_EVENT,
      details: { request: requestId, file: file.file, bytes: file.bytes, items },
      dedupeKey: `${STORED_EVENT}:${requestId}`,
    });
  }

  /** Counts and logs (throttled) a refusal; returns the error to throw (403 or 413). */
  refuse(deviceId: string, reason: SampleRefusal, message: string): EdgefleetError {
    this.#refused.inc({ reason });
    this.#throttle.run(`sample:${reason}`, (suppressed) => this.#o.log.warn({ deviceId, reason, suppressed }, `sample upload refused: ${message}`));
    const code = reason === 'no_request' || reason === 'expired' || reason === 'used' ? ErrorCode.FORBIDDEN : ErrorCode.PAYLOAD_TOO_LARGE;
    return new EdgefleetError(code, message, { details: { reason } });
  }

  /** The open request `requestId` of this device, or the refusal saying why not. */
  #check(deviceId: string, d: DeviceState, requestId: string | undefined): SampleRequest {
    const r = requestId === undefined ? undefined : d.requests.get(requestId);
    if (!r) throw this.refuse(deviceId, 'no_request', requestId === undefined ? 'the upload names no sample request (field `request`)' : 'no such sample request for this device');
    if (r.used) throw this.refuse(deviceId, 'used', 'the sample request was already answered');
    if (r.expiresAt <= this.#o.now()) throw this.refuse(deviceId, 'expired', 'the sample request has expired');
    return r;
  }

  #device(deviceId: string): DeviceState {
    let d = this.#devices.get(deviceId);
    if (!d) {
      d = { requests: new Map(), stored: undefined, recovered: false, queue: Promise.resolve() };
      this.#devices.set(deviceId, d);
    }
    return d;
  }

  #remember(d: DeviceState, r: SampleRequest): void {
    const now = this.#o.now();
    // Expired ones are kept a day (so a late upload hears "expired", not "no request"), then go.
    for (const [id, old] of d.requests) if (old.expiresAt + DAY_MS < now) d.requests.delete(id);
    if (!d.requests.has(r.id)) d.requests.set(r.id, r);
    while (d.requests.size > MAX_REQUESTS_PER_DEVICE) d.requests.delete(d.requests.keys().next().value as string);
  }

  /** After a hub restart the device's requests are in its history only: read them back once. */
  async #recover(deviceId: string): Promise<DeviceState> {
    const d = this.#device(deviceId);
    if (d.recovered) return d;
    const used = new Set<string>();
    const requested: SampleRequest[] = [];
    for (const h of await this.#o.store.deviceHistory(deviceId)) {
      if (h.event !== REQUESTED_EVENT && h.event !== STORED_EVENT) continue;
      const p = HistoryDetailsSchema.safeParse(h.details);
      if (!p.success) continue;
      if (h.event === STORED_EVENT) used.add(p.data.request);
      else requested.push({ id: p.data.request, pipeline: p.data.pipeline ?? '', maxBytes: p.data.maxBytes ?? this.#o.limits.maxBytes, expiresAt: p.data.expiresAt ?? 0, used: false });
    }
    for (const r of requested) {
      const known = d.requests.get(r.id);
      if (known) known.used ||= used.has(r.id);
      else this.#remember(d, { ...r, used: used.has(r.id) });
    }
    d.recovered = true;
    return d;
  }

  async #storedToday(deviceId: string, d: DeviceState, now: number): Promise<number> {
    d.stored ??= (await this.#o.samples.list(deviceId)).map((f) => ({ ts: Date.parse(f.receivedAt), bytes: f.bytes })).sort((a, b) => a.ts - b.ts);
    while (d.stored.length > 0 && (d.stored[0] as { ts: number }).ts <= now - DAY_MS) d.stored.shift();
    return d.stored.reduce((n, f) => n + f.bytes, 0);
  }
}
