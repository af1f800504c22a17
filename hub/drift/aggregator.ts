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
 * the one that sent it, is refused.
 *
 * The merge runs after the telemetry batch committed (and was acked); a hub killed in between
 * leaves those summaries stored as telemetry but not merged. `recover()` at start merges the
 * recent drift records again (a partial index keeps that cheap); merged ones are duplicates. A genuinely new summary for a window already tested is
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
  type DriftSummary,
} from '../../shared/drift/summary.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { ModelRefSchema, type TelemetryRecord } from '../../shared/protocol.ts';
import type { DriftMergeItem, HubStore, MergeOutcome } from '../store/store.ts';

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

/** Summaries merged per store transaction at most. */
const MAX_BATCH = 2000;

export class DriftAggregator {
  readonly #o: DriftAggregatorOptions;
  readonly #throttle = new LogThrottle(10_000);
  readonly #summaries: Counter<'result'>;
  /** Pipeline of each (device, model name), learned from inference records (for drift.sample). */
  readonly #pipelines = new Map<string, string>();
  /** Drift records waiting to be merged, in arrival order. */
  #pending: { deviceId: string; record: TelemetryRecord; recovery?: true }[] = [];
  #draining: Promise<void> | undefined;

  constructor(opts: DriftAggregatorOptions) {
    this.#o = opts;
    this.#summaries = new Counter({
      name: 'edgefleet_hub_drift_summaries_total',
      help: 'Drift summaries received, by result (merged, late = merged after its window was due, duplicate, invalid, refused, expired, store_failed, recovered = merged at start after a crash left it unmerged).',
      labelNames: ['result'],
      registers: [opts.registry],
    });
  }

  /**
   * The ingest listener: takes the `drift` records of a freshly stored batch (and learns
   * pipelines from `inference` records). Never throws. Records queue up while a merge runs and
   * are then merged together in one transaction: one fsync per burst, not per summary
   * (store.synchronous FULL made per-summary commits the bottleneck, ~280 summaries/s here).
   */
  onRecords(deviceId: string, records: readonly TelemetryRecord[]): void {
    for (const r of records) {
      if (r.kind === INFERENCE_KIND) {
        const { pipeline, model } = r.body;
        if (typeof pipeline === 'string' && typeof model === 'string' && this.#pipelines.size < 1_000_000) this.#pipelines.set(`${deviceId}\u0000${model}`, pipeline);
      } else if (r.kind === DRIFT_KIND) this.#pending.push({ deviceId, record: r });
    }
    this.#kick();
  }

  #kick(): void {
    if (this.#draining || this.#pending.length === 0) return;
    this.#draining = this.#drain()
      .catch((err: unknown) => this.#o.log.error({ err: toEdgefleetError(err) }, 'drift aggregation failed'))
      .finally(() => {
        this.#draining = undefined;
        // Records that arrived after the drain's last look.
        this.#kick();
      });
  }

  /**
   * The pipeline that last reported an inference of `model` on the device (inference records
   * carry it, agent/pipeline.ts); the hub learns it in memory, so it is unknown for a while
   * after a restart.
   */
  pipelineOf(deviceId: string, model: string): string | undefined {
    return this.#pipelines.get(`${deviceId}\u0000${model}`);
  }

  /**
   * At start: merges again the drift records stored as telemetry since `receivedSince` (those of
   * windows not yet tested), for summaries a crash left stored but not merged. The ones already
   * merged are duplicates and change nothing; the others count as `recovered`.
   */
  async recover(receivedSince: number): Promise<number> {
    let after = 0;
    let seen = 0;
    for (;;) {
      const page = await this.#o.store.driftRecordsSince(receivedSince, after, MAX_BATCH);
      for (const r of page) this.#pending.push({ deviceId: r.deviceId, record: r.record, recovery: true });
      seen += page.length;
      this.#kick();
      await this.idle();
      const last = page[page.length - 1];
      if (!last || page.length < MAX_BATCH) return seen;
      after = last.cursor;
    }
  }

  /** Resolves when every record handed over so far is merged (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#draining) await this.#draining;
  }

  async #drain(): Promise<void> {
    // Let the records of batches arriving in the same tick join this merge.
    await new Promise<void>((resolve) => setImmediate(resolve));
    while (this.#pending.length) {
      const batch = this.#pending.splice(0, MAX_BATCH);
      await this.#merge(batch);
    }
  }

  #bad(deviceId: string, result: Result, reason: string, seq: number): Result {
    this.#throttle.run(`${deviceId}:${result}`, (suppressed) => this.#o.log.warn({ deviceId, seq, result, reason: reason.slice(0, 500), suppressed }, 'drift summary not merged'));
    return result;
  }

  /** A valid summary to merge, or the result that refuses it. */
  #check(deviceId: string, r: TelemetryRecord, now: number, quiet: boolean): { s: DriftSummary; windowStart: number } | Result {
    const bad = (result: Result, reason: string): Result => (quiet ? result : this.#bad(deviceId, result, reason, r.seq));
    const parsed = DriftSummarySchema.safeParse(r.body);
    if (!parsed.success) return bad('invalid', formatIssues(parsed.error));
    const s = parsed.data;
    if (s.deviceId !== deviceId) return bad('refused', `summary names device ${s.deviceId}`);
    const { windowMs } = this.#o;
    if (s.windowMs > windowMs || windowMs % s.windowMs !== 0) {
      return bad('refused', `summary window ${s.windowMs} ms does not divide the hub window ${windowMs} ms`);
    }
    const windowStart = alignWindow(s.windowStart, windowMs);
    if (windowStart + windowMs < now - this.#o.retentionMs) return bad('expired', `window ${new Date(windowStart).toISOString()} is past retention`);
    return { s, windowStart };
  }

  async #merge(batch: readonly { deviceId: string; record: TelemetryRecord; recovery?: true }[]): Promise<void> {
    const now = this.#o.now();
    const { windowMs } = this.#o;
    const items: (DriftMergeItem & { seq: number; late: boolean; recovery: boolean })[] = [];
    for (const { deviceId, record, recovery } of batch) {
      // Records seen again at start were counted the first time; only what they add counts now.
      const c = this.#check(deviceId, record, now, recovery === true);
      if (typeof c === 'string') {
        if (!recovery) this.#summaries.inc({ result: c });
        continue;
      }
      const { s, windowStart } = c;
      items.push({
        summaryId: s.summaryId,
        deviceId,
        model: s.model.name,
        version: s.model.version,
        windowStart,
        windowMs,
        receivedAt: now,
        seq: record.seq,
        late: windowStart + windowMs + this.#o.graceMs <= now,
        recovery: recovery === true,
        merge: (stored) => {
          const agg = stored === undefined ? emptyAggregate(s, { scope: 'device', id: deviceId, windowStart, windowMs }) : decodeAggregate(stored);
          addSummary(agg, s);
          return { aggregate: encodeAggregate(agg), count: agg.count };
        },
      });
    }
    if (items.length === 0) return;
    let outcomes: (MergeOutcome | EdgefleetError)[];
    try {
      outcomes = await this.#o.store.mergeDriftSummaries(items);
    } catch (err) {
      // The telemetry is stored (and acked); only the merge is lost. See the module header.
      this.#o.log.error({ err: toEdgefleetError(err, ErrorCode.STORAGE), summaries: items.length }, 'drift summaries not merged');
      this.#summaries.inc({ result: 'store_failed' }, items.length);
      return;
    }
    for (const [i, o] of outcomes.entries()) {
      const it = items[i] as (typeof items)[number];
      if (o === 'duplicate') {
        if (!it.recovery) this.#summaries.inc({ result: 'duplicate' });
      } else if (o === 'merged') this.#summaries.inc({ result: it.recovery ? 'recovered' : it.late ? 'late' : 'merged' });
      else if (it.recovery) continue;
      else this.#summaries.inc({ result: this.#bad(it.deviceId, o.code === ErrorCode.STORAGE ? 'store_failed' : 'refused', o.message, it.seq) });
    }
  }
}
