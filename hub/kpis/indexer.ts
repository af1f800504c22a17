/**
 * Fills the KPI tables from telemetry: a listener on ingest's newly stored records (ingest
 * `onRecords`, the same hook the rollout engine uses; never a second ingest path). Inference
 * records (kind `inference`, agent/pipeline.ts) go to the inference index that feedback matches
 * against; health windows (kind `health`, shared/updates.ts) to the health window index.
 *
 * Only records stored for the first time reach the listener, so a resent batch never counts a
 * window twice. The index write happens after the telemetry commit, in its own transaction:
 * if it fails (SQLITE_BUSY, full disk) the telemetry is stored but not indexed, which is logged
 * and counted; KPIs then under-count that batch rather than ingest refusing it.
 *
 * Writes are queued and run one at a time, so records of one device are indexed in order.
 */
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { toEdgefleetError } from '../../shared/errors.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { NameSchema, type TelemetryRecord } from '../../shared/protocol.ts';
import { HEALTH_KIND, HealthWindowSchema } from '../../shared/updates.ts';
import type { HubStore, IndexedHealthWindow, IndexedInference } from '../store/store.ts';
import { taskIndexFields } from '../feedback/task-truth.ts';

export const INFERENCE_KIND = 'inference';

/** What the index needs of an inference record's body (agent/pipeline.ts writes more). */
export const InferenceBodySchema = z.looseObject({
  id: z.string().min(1).max(128),
  model: NameSchema,
  version: z.string().min(1).max(64),
  label: z.string().min(1).max(64),
  confidence: z.number().min(0).max(1),
});

/** Splits records into index rows; records that do not parse are counted in `skipped`. */
export function indexRows(deviceId: string, records: readonly TelemetryRecord[]): { inferences: IndexedInference[]; health: IndexedHealthWindow[]; skipped: number } {
  const inferences: IndexedInference[] = [];
  const health: IndexedHealthWindow[] = [];
  let skipped = 0;
  for (const r of records) {
    if (r.kind === INFERENCE_KIND) {
      // Manifest v2 tasks other than classification carry no top-1 label (hub/feedback/task-truth.ts).
      const t = taskIndexFields(r.body);
      if (t) {
        inferences.push({ deviceId, ...t, ts: r.ts });
        continue;
      }
      const b = InferenceBodySchema.safeParse(r.body);
      if (!b.success) {
        skipped++;
        continue;
      }
      inferences.push({ deviceId, id: b.data.id, model: b.data.model, version: b.data.version, label: b.data.label, confidence: b.data.confidence, ts: r.ts });
    } else if (r.kind === HEALTH_KIND) {
      const w = HealthWindowSchema.safeParse(r.body);
      if (!w.success) {
        skipped++;
        continue;
      }
      const { model, version, windowStart, windowMs, ok, errors, latency, confidence, classCounts, cpuMs } = w.data;
      health.push({ deviceId, model, version, windowStart, windowMs, ok, errors, latency, confidence, classCounts, ...(cpuMs === undefined ? {} : { cpuMs }) });
    }
  }
  return { inferences, health, skipped };
}

export class KpiIndexer {
  readonly #store: HubStore;
  readonly #log: Logger;
  readonly #throttle = new LogThrottle(10_000);
  readonly #indexed: Counter<'kind' | 'result'>;
  #queue: Promise<void> = Promise.resolve();

  constructor(opts: { store: HubStore; log: Logger; registry: Registry }) {
    this.#store = opts.store;
    this.#log = opts.log;
    this.#indexed = new Counter({
      name: 'edgefleet_hub_kpi_indexed_records_total',
      help: 'Inference and health records put in the KPI index, by kind and result (indexed, invalid, failed).',
      labelNames: ['kind', 'result'],
      registers: [opts.registry],
    });
  }

  /** Ingest listener: must not throw and must not block ingest. */
  onRecords(deviceId: string, records: readonly TelemetryRecord[]): void {
    const rows = indexRows(deviceId, records);
    if (rows.skipped) this.#indexed.inc({ kind: 'any', result: 'invalid' }, rows.skipped);
    if (!rows.inferences.length && !rows.health.length) return;
    this.#queue = this.#queue.then(() => this.#write(deviceId, rows));
  }

  /** Resolves when everything handed in so far is written (tests, shutdown). */
  idle(): Promise<void> {
    return this.#queue;
  }

  async #write(deviceId: string, rows: { inferences: IndexedInference[]; health: IndexedHealthWindow[] }): Promise<void> {
    for (const [kind, write, n] of [
      ['inference', () => this.#store.indexInferences(rows.inferences), rows.inferences.length],
      ['health', () => this.#store.indexHealthWindows(rows.health), rows.health.length],
    ] as const) {
      if (!n) continue;
      try {
        await write();
        this.#indexed.inc({ kind, result: 'indexed' }, n);
      } catch (err) {
        this.#indexed.inc({ kind, result: 'failed' }, n);
        this.#throttle.run(`index:${kind}`, (suppressed) => this.#log.error({ err: toEdgefleetError(err), deviceId, kind, records: n, suppressed }, 'records not indexed for KPIs'));
      }
    }
  }
}
