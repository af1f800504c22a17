/**
 * Drift aggregation at the hub: takes the `drift` records ingest stored for the first time
 * (ingest.onRecords, the same hook the rollout engine uses; no second ingest path), validates
 * each body against DriftSummarySchema, and merges it into the (model version, device, hub
 * window) row of the store. De-duplication is by summary id, in the same transaction as the
 * merge (store.mergeDriftSummary), so a duplicated, replayed or late re-sent summary never
 * changes merged counts. Bad summaries are counted and logged (throttled), never thrown: the
 * telemetry batch that carried them is already stored and acked.
 *
 * A summary whose window does not divide the hub window, whose layout (features, bins,
 * classes) differs from what its device row already holds, or that names another device than
 * the one that sent it, is refused. A genuinely new summary for a window already tested is
 * still merged (the stored counts stay exact) and counted as `late`; the window is not tested
 * again (drift.graceMs is the knob for slow outboxes).
 */
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { addSummary, emptyAggregate, type DriftAggregate } from '../../shared/drift/merge.ts';
import {
  CategoricalSummarySchema,
  DRIFT_KIND,
  DriftSummarySchema,
  NumericFeatureSummarySchema,
  OutputSummarySchema,
  alignWindow,
} from '../../shared/drift/summary.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { ModelRefSchema, type TelemetryRecord } from '../../shared/protocol.ts';
import type { HubStore } from '../store/store.ts';

/** A DriftAggregate as stored: sets as arrays, summary ids left out (the store keeps those). */
const StoredAggregateSchema = z.object({
  model: ModelRefSchema,
  scope: z.enum(['device', 'group', 'fleet']),
  id: z.string(),
  windowStart: z.number().int().nonnegative(),
  windowMs: z.number().int().positive(),
  devices: z.array(z.string()),
  count: z.number().int().nonnegative(),
  numeric: z.array(NumericFeatureSummarySchema),
  categorical: z.array(CategoricalSummarySchema),
  outputs: OutputSummarySchema,
});

export function encodeAggregate(a: DriftAggregate): string {
  const { summaryIds: _ids, devices, ...rest } = a;
  return JSON.stringify({ ...rest, devices: [...devices] });
}

/** Parses a stored aggregate; throws STORAGE when it is damaged. Its summary id set is empty. */
export function decodeAggregate(text: string): DriftAggregate {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new EdgefleetError(ErrorCode.STORAGE, 'stored drift aggregate is not JSON', { cause: err });
  }
  const p = StoredAggregateSchema.safeParse(raw);
  if (!p.success) throw new EdgefleetError(ErrorCode.STORAGE, `stored drift aggregate is damaged: ${formatIssues(p.error)}`);
  return { ...p.data, summaryIds: new Set(), devices: new Set(p.data.devices) };
}

export interface DriftAggregatorOptions {
  store: HubStore;
  log: Logger;
  registry: Registry;
  /** Hub window (drift.windowMs). */
  windowMs: number;
  /** Windows whose test is due by now (end + grace) count new summaries as late. */
  graceMs: number;
  /** Summaries of windows older than this are refused as expired (they would be pruned). */
  retentionMs: number;
  now: () => number;
}

/** Telemetry kind of inference records (agent/pipeline.ts). */
const INFERENCE_KIND = 'inference';

type Result = 'merged' | 'duplicate' | 'late' | 'invalid' | 'refused' | 'expired' | 'store_failed';

export class DriftAggregator {
  readonly #o: DriftAggregatorOptions;
  readonly #throttle = new LogThrottle(10_000);
  readonly #summaries: Counter<'result'>;
  /** Pipeline of each (device, model name), learned from inference records (for drift.sample). */
  readonly #pipelines = new Map<string, string>();
  /** Records are merged one batch at a time, in arrival order. */
  #queue: Promise<void> = Promise.resolve();

  constructor(opts: DriftAggregatorOptions) {
    this.#o = opts;
    this.#summaries = new Counter({
      name: 'edgefleet_hub_drift_summaries_total',
      help: 'Drift summaries received, by result (merged, late = merged after its window was due, duplicate, invalid, refused, expired, store_failed).',
      labelNames: ['result'],
      registers: [opts.registry],
    });
  }

  /** The ingest listener: takes the `drift` records of a freshly stored batch. Never throws. */
  onRecords(deviceId: string, records: readonly TelemetryRecord[]): void {
    for (const r of records) {
      if (r.kind !== INFERENCE_KIND) continue;
      const { pipeline, model } = r.body;
      if (typeof pipeline === 'string' && typeof model === 'string' && this.#pipelines.size < 1_000_000) this.#pipelines.set(`${deviceId}\u0000${model}`, pipeline);
    }
    const drift = records.filter((r) => r.kind === DRIFT_KIND);
    if (drift.length === 0) return;
    this.#queue = this.#queue.then(() => this.#ingest(deviceId, drift)).catch((err: unknown) => this.#o.log.error({ err: toEdgefleetError(err), deviceId }, 'drift aggregation failed'));
  }

  /**
   * The pipeline that last reported an inference of `model` on the device (inference records
   * carry it, agent/pipeline.ts); the hub learns it in memory, so it is unknown for a while
   * after a restart.
   */
  pipelineOf(deviceId: string, model: string): string | undefined {
    return this.#pipelines.get(`${deviceId}\u0000${model}`);
  }

  /** Resolves when every record handed over so far is merged (tests, shutdown). */
  idle(): Promise<void> {
    return this.#queue;
  }

  async #ingest(deviceId: string, records: readonly TelemetryRecord[]): Promise<void> {
    for (const r of records) {
      const result = await this.#one(deviceId, r);
      this.#summaries.inc({ result });
    }
  }

  #bad(deviceId: string, result: Result, reason: string, seq: number): Result {
    this.#throttle.run(`${deviceId}:${result}`, (suppressed) => this.#o.log.warn({ deviceId, seq, result, reason: reason.slice(0, 500), suppressed }, 'drift summary not merged'));
    return result;
  }

  async #one(deviceId: string, r: TelemetryRecord): Promise<Result> {
    const parsed = DriftSummarySchema.safeParse(r.body);
    if (!parsed.success) return this.#bad(deviceId, 'invalid', formatIssues(parsed.error), r.seq);
    const s = parsed.data;
    if (s.deviceId !== deviceId) return this.#bad(deviceId, 'refused', `summary names device ${s.deviceId}`, r.seq);
    const { windowMs } = this.#o;
    if (s.windowMs > windowMs || windowMs % s.windowMs !== 0) {
      return this.#bad(deviceId, 'refused', `summary window ${s.windowMs} ms does not divide the hub window ${windowMs} ms`, r.seq);
    }
    const windowStart = alignWindow(s.windowStart, windowMs);
    const now = this.#o.now();
    if (windowStart + windowMs < now - this.#o.retentionMs) return this.#bad(deviceId, 'expired', `window ${new Date(windowStart).toISOString()} is past retention`, r.seq);
    try {
      const outcome = await this.#o.store.mergeDriftSummary(
        { summaryId: s.summaryId, deviceId, model: s.model.name, version: s.model.version, windowStart, windowMs, receivedAt: now },
        (stored) => {
          const agg = stored === undefined ? emptyAggregate(s, { scope: 'device', id: deviceId, windowStart, windowMs }) : decodeAggregate(stored);
          addSummary(agg, s);
          return { aggregate: encodeAggregate(agg), count: agg.count };
        },
      );
      if (outcome === 'duplicate') return 'duplicate';
      return windowStart + windowMs + this.#o.graceMs <= now ? 'late' : 'merged';
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.STORAGE);
      if (e.code === ErrorCode.STORAGE) {
        this.#o.log.error({ err: e, deviceId, summaryId: s.summaryId }, 'drift summary not stored');
        return 'store_failed';
      }
      return this.#bad(deviceId, 'refused', e.message, r.seq);
    }
  }
}
