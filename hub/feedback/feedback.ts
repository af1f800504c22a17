/**
 * Ground truth posted after the fact (issue #4 "feedback loop"): truth for inference ids, from
 * the HTTP API (`POST /v1/feedback`, operator token) or MQTT (hub/feedback/mqtt-feedback.ts).
 * Each item is matched against the inference index (hub/kpis/indexer.ts) and stored on the
 * matched inference, so accuracy is computed by PREDICTION time, whenever the label arrives.
 *
 * Outcomes per item, all counted (metric `edgefleet_hub_feedback_items_total{result}`) and
 * reported back to an HTTP caller:
 *   matched        stored on the inference (a later label for the same inference replaces it)
 *   unknown        no indexed inference has that id: not stored. Feedback that outruns the
 *                  device's telemetry (a partition) is unknown too; the sender may post it again
 *   ambiguous      the id exists on several devices and the item names none: not stored
 *   invalid_label  not one of the model version's labels (its release manifest, else the
 *                  config's `kpis.labels`), or the hub knows no labels for it: not stored.
 *                  Also truth of the wrong shape for the version's task, box labels or
 *                  regression targets the manifest does not have (hub/feedback/task-truth.ts)
 *
 * The truth's shape follows the task of the model version (issue #13): `label` (classification;
 * anomaly: 'anomaly' | 'normal'), `boxes` (detection), `values` (regression), `alarm` (anomaly).
 */
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { DeviceIdSchema } from '../../shared/protocol.ts';
import type { Logger } from '../../shared/log.ts';
import type { HubStore, IndexedInference } from '../store/store.ts';
import { MAX_TRUTH_BOXES, ReleaseTasks, TruthBoxSchema, truthFor, truthSummary, type ReleaseTask } from './task-truth.ts';

const ItemCommon = {
  /** The inference's correlation id (the `id` of its result and telemetry record). */
  id: z.string().min(1).max(128),
  /** When the truth was established (epoch ms); default: when the hub received it. */
  ts: z.number().int().nonnegative().optional(),
  /** The device that made the inference, when ids are not unique across devices. */
  device: DeviceIdSchema.optional(),
};

/** One item: the id and exactly one kind of truth, per the task of the inference's model version. */
export const FeedbackItemSchema = z.union([
  z.strictObject({
    ...ItemCommon,
    /** The true label (classification; anomaly: 'anomaly' or 'normal'). */
    label: z.string().min(1).max(64),
  }),
  z.strictObject({
    ...ItemCommon,
    /** Detection: every object in the image, boxes in the coordinates of the inference's detections (source pixels); [] = nothing there. */
    boxes: z.array(TruthBoxSchema).max(MAX_TRUTH_BOXES),
  }),
  z.strictObject({
    ...ItemCommon,
    /** Regression: true values by target name (targets may be left out). */
    values: z.record(z.string().min(1).max(64), z.number().finite()),
  }),
  z.strictObject({
    ...ItemCommon,
    /** Anomaly: whether it really was an anomaly (same as label 'anomaly' / 'normal'). */
    alarm: z.boolean(),
  }),
]);
export type FeedbackItem = z.infer<typeof FeedbackItemSchema>;

export const MAX_FEEDBACK_ITEMS = 1000;

/** `POST /v1/feedback` body, and the MQTT payload on `edgefleet/v1/<deviceId>/feedback`. */
export const FeedbackBatchSchema = z.strictObject({
  v: z.literal(1).optional(),
  feedback: z.array(FeedbackItemSchema).min(1).max(MAX_FEEDBACK_ITEMS),
});
export type FeedbackBatch = z.infer<typeof FeedbackBatchSchema>;

export type FeedbackOutcome = 'matched' | 'unknown' | 'ambiguous' | 'invalid_label';

export interface FeedbackResult {
  received: number;
  matched: number;
  unknown: number;
  ambiguous: number;
  invalidLabel: number;
  /** Items not stored, with why (at most REPORTED_REFUSALS). */
  refused: { id: string; device?: string; label: string; reason: Exclude<FeedbackOutcome, 'matched'>; detail?: string }[];
}

const REPORTED_REFUSALS = 100;


export interface FeedbackOptions {
  store: HubStore;
  /** Labels of models the hub has no release of (config `kpis.labels`). */
  configLabels: Readonly<Record<string, readonly string[]>>;
  log: Logger;
  registry: Registry;
  now?: () => number;
}

export class FeedbackService {
  readonly #o: FeedbackOptions;
  readonly #now: () => number;
  readonly #items: Counter<'result' | 'source'>;
  /** Task and labels per model@version from the release manifest (immutable once released). */
  readonly #releases: ReleaseTasks;

  constructor(opts: FeedbackOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#releases = new ReleaseTasks(opts.store);
    this.#items = new Counter({
      name: 'edgefleet_hub_feedback_items_total',
      help: 'Ground-truth feedback items, by result (matched, unknown, ambiguous, invalid_label) and source (http, mqtt).',
      labelNames: ['result', 'source'],
      registers: [opts.registry],
    });
  }

  /** The labels a model version may be given: its release manifest's, else the config's; undefined when unknown. */
  async labelsOf(model: string, version: string): Promise<readonly string[] | undefined> {
    return (await this.taskOf(model, version))?.labels;
  }

  /** The task of a model version: its release manifest's, else a classifier with the config's labels; undefined when unknown. */
  async taskOf(model: string, version: string): Promise<ReleaseTask | undefined> {
    const released = await this.#releases.of(model, version);
    if (released) return released;
    const labels = this.#o.configLabels[model];
    return labels ? { task: 'classification', post: { kind: 'classification', activation: 'logits', labels: [...labels] }, labels } : undefined;
  }

  /**
   * Matches and stores a batch. `deviceId` (MQTT: the topic's device) applies to items that
   * name no device; an item naming another device than the topic's is refused as unknown.
   */
  async submit(items: readonly FeedbackItem[], source: 'http' | 'mqtt', deviceId?: string): Promise<FeedbackResult> {
    const at = this.#now();
    const result: FeedbackResult = { received: items.length, matched: 0, unknown: 0, ambiguous: 0, invalidLabel: 0, refused: [] };
    const keys = items.map((i) => ({ id: i.id, ...(i.device ?? deviceId ? { deviceId: i.device ?? deviceId } : {}) }));
    const found = await this.#o.store.findInferences(keys);
    const byId = new Map<string, IndexedInference[]>();
    for (const f of found) {
      const list = byId.get(f.id) ?? [];
      if (!list.some((x) => x.deviceId === f.deviceId)) list.push(f);
      byId.set(f.id, list);
    }
    const refuse = (item: FeedbackItem, reason: Exclude<FeedbackOutcome, 'matched'>, detail?: string): void => {
      if (reason === 'unknown') result.unknown++;
      else if (reason === 'ambiguous') result.ambiguous++;
      else result.invalidLabel++;
      this.#items.inc({ result: reason, source });
      if (result.refused.length < REPORTED_REFUSALS) {
        result.refused.push({ id: item.id, ...(item.device ? { device: item.device } : {}), label: truthSummary(item), reason, ...(detail ? { detail } : {}) });
      }
    };
    const accepted: { deviceId: string; id: string; truth: string; at: number }[] = [];
    for (const [i, item] of items.entries()) {
      const device = keys[i]?.deviceId;
      if (item.device && deviceId && item.device !== deviceId) {
        refuse(item, 'unknown', `device ${item.device} is not the topic's device ${deviceId}`);
        continue;
      }
      const candidates = (byId.get(item.id) ?? []).filter((c) => device === undefined || c.deviceId === device);
      const inf = candidates[0];
      if (!inf) {
        refuse(item, 'unknown');
        continue;
      }
      if (candidates.length > 1) {
        refuse(item, 'ambiguous', `id on ${candidates.length} devices; name the device`);
        continue;
      }
      const rt = await this.taskOf(inf.model, inf.version);
      if (!rt) {
        refuse(item, 'invalid_label', `labels of ${inf.model}@${inf.version} are unknown to the hub (release it, or set kpis.labels.${inf.model})`);
        continue;
      }
      const t = truthFor(item, rt, `${inf.model}@${inf.version}`);
      if ('refused' in t) {
        refuse(item, 'invalid_label', t.refused);
        continue;
      }
      accepted.push({ deviceId: inf.deviceId, id: inf.id, truth: t.truth, at: item.ts ?? at });
    }
    if (accepted.length) await this.#o.store.recordFeedback(accepted);
    result.matched = accepted.length;
    this.#items.inc({ result: 'matched', source }, accepted.length);
    if (result.refused.length) this.#o.log.debug({ source, deviceId, refused: result.received - result.matched }, 'feedback items refused');
    return result;
  }
}
