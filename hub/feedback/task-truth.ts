/**
 * Ground truth per task (issue #13, manifest v2): what a feedback item must say for a model
 * version's task, how it is checked against the version's release manifest, and the compact
 * forms the inference index stores (migration 7, hub/store/sqlite-kpis.ts):
 *
 *   task            feedback item                             truth stored        prediction stored
 *   classification  {id, label}                               the label           (label, confidence columns)
 *   detection       {id, boxes: [{label, box: {x1..y2}}]}     [[label,x1,y1,x2,y2]]  [[label,score,x1,y1,x2,y2]]
 *   regression      {id, values: {<target>: number}}          {"<target>": v}     {"<target>": v}
 *   anomaly         {id, label: 'anomaly'|'normal'} or        'anomaly'|'normal'  [score, alarm 0|1]
 *                   {id, alarm: boolean}
 *
 * Segmentation and embedding inferences are indexed (their ids are known) but take no feedback yet.
 */
import { z } from 'zod';
import { ManifestSchema } from '../../shared/manifest.ts';
import { modelSpec } from '../../shared/model-spec.ts';
import { NameSchema } from '../../shared/protocol.ts';
import type { TaskSpec } from '../../shared/tasks/specs.ts';
import type { HubStore } from '../store/store.ts';

/** Detections kept per indexed inference (highest scores first); bounds a row to a few KB. */
export const MAX_STORED_DETECTIONS = 300;
/** Truth boxes per feedback item. */
export const MAX_TRUTH_BOXES = 1000;
export const ANOMALY = 'anomaly';
export const NORMAL = 'normal';

export const BoxSchema = z.strictObject({ x1: z.number(), y1: z.number(), x2: z.number(), y2: z.number() }).refine((b) => b.x2 >= b.x1 && b.y2 >= b.y1, 'x2 >= x1 and y2 >= y1');
export type Box = z.infer<typeof BoxSchema>;
export const TruthBoxSchema = z.strictObject({ label: z.string().min(1).max(64), box: BoxSchema });

/** What the hub knows of a released model version for feedback and KPIs. */
export interface ReleaseTask {
  task: TaskSpec['kind'];
  post: TaskSpec;
  labels: readonly string[];
}

const LegacyLabelsSchema = z.object({ postprocessing: z.object({ labels: z.array(z.string()) }) });

/** The task of a released model version (v1 manifests: classification); undefined without a release. Releases are immutable, so cached. */
export class ReleaseTasks {
  readonly #store: HubStore;
  readonly #cache = new Map<string, ReleaseTask>();
  constructor(store: HubStore) {
    this.#store = store;
  }

  async of(model: string, version: string): Promise<ReleaseTask | undefined> {
    const key = `${model}@${version}`;
    const hit = this.#cache.get(key);
    if (hit) return hit;
    const rec = await this.#store.getModel(model, version);
    if (!rec) return undefined;
    let raw: unknown;
    try {
      raw = JSON.parse(rec.manifest);
    } catch {
      return undefined;
    }
    let out: ReleaseTask | undefined;
    const m = ManifestSchema.safeParse(raw);
    if (m.success) {
      const spec = modelSpec(m.data);
      out = { task: spec.task, post: spec.post, labels: spec.labels };
    } else {
      // A manifest this hub's schema no longer accepts: its labels still say what a classifier may be told.
      const l = LegacyLabelsSchema.safeParse(raw);
      if (l.success) out = { task: 'classification', post: { kind: 'classification', activation: 'logits', labels: l.data.postprocessing.labels }, labels: l.data.postprocessing.labels };
    }
    if (out) this.#cache.set(key, out);
    return out;
  }
}

/** The truth fields of a feedback item (FeedbackItemSchema), exactly one of them set. */
export interface TruthFields {
  label?: string | undefined;
  boxes?: readonly { label: string; box: Box }[] | undefined;
  values?: Readonly<Record<string, number>> | undefined;
  alarm?: boolean | undefined;
}

/** A short text of the truth for refusal reports (`label` of FeedbackResult.refused). */
export function truthSummary(t: TruthFields): string {
  if (t.label !== undefined) return t.label;
  if (t.boxes !== undefined) return `${t.boxes.length} box${t.boxes.length === 1 ? '' : 'es'}`;
  if (t.values !== undefined) return Object.entries(t.values).map(([k, v]) => `${k}=${v}`).join(',').slice(0, 64);
  if (t.alarm !== undefined) return t.alarm ? ANOMALY : NORMAL;
  return '';
}

const shapeOf = (t: TruthFields): string => (t.boxes !== undefined ? 'boxes' : t.values !== undefined ? 'values' : t.alarm !== undefined ? 'alarm' : 'label');
const list = (xs: readonly string[]): string => xs.slice(0, 20).join(', ') + (xs.length > 20 ? ', ...' : '');

/**
 * The stored truth for an item about an inference of a version with this task, or why it is
 * refused. `ref` names the version in the reason.
 */
export function truthFor(t: TruthFields, rt: ReleaseTask, ref: string): { truth: string } | { refused: string } {
  const p = rt.post;
  const wrongShape = (want: string): { refused: string } => ({ refused: `${ref} is a ${p.kind} model: give ${want}, not ${shapeOf(t)}` });
  switch (p.kind) {
    case 'classification':
      if (t.label === undefined) return wrongShape('label');
      return rt.labels.includes(t.label) ? { truth: t.label } : { refused: `not a label of ${ref} (${list(rt.labels)})` };
    case 'detection': {
      if (t.boxes === undefined) return wrongShape('boxes');
      const ignored = new Set((p.ignoreClasses ?? []).map((i) => p.labels[i]));
      const bad = t.boxes.find((b) => !p.labels.includes(b.label) || ignored.has(b.label));
      if (bad) return { refused: `box label ${bad.label} is not a label of ${ref} (${list(p.labels.filter((l) => !ignored.has(l)))})` };
      return { truth: JSON.stringify(t.boxes.map((b) => [b.label, b.box.x1, b.box.y1, b.box.x2, b.box.y2])) };
    }
    case 'regression': {
      if (t.values === undefined) return wrongShape('values');
      const names = p.targets.map((x) => x.name);
      const keys = Object.keys(t.values);
      if (!keys.length) return { refused: `no target values (targets of ${ref}: ${list(names)})` };
      const bad = keys.find((k) => !names.includes(k));
      if (bad !== undefined) return { refused: `${bad} is not a target of ${ref} (${list(names)})` };
      return { truth: JSON.stringify(Object.fromEntries(names.filter((n) => t.values![n] !== undefined).map((n) => [n, t.values![n]]))) };
    }
    case 'anomaly':
      if (t.alarm !== undefined) return { truth: t.alarm ? ANOMALY : NORMAL };
      if (t.label === undefined) return wrongShape(`label ('${ANOMALY}' or '${NORMAL}') or alarm`);
      return t.label === ANOMALY || t.label === NORMAL ? { truth: t.label } : { refused: `an anomaly model's truth is '${ANOMALY}' or '${NORMAL}', not ${t.label}` };
    default:
      return { refused: `${ref} is a ${p.kind} model: the hub takes no feedback for ${p.kind} yet` };
  }
}

// ---- indexing inference records (hub/kpis/indexer.ts) ------------------------------------------

const r = (x: number): number => Math.round(x * 1e6) / 1e6;
const Num = z.number().finite();
const Label = z.string().min(1).max(64);
const DetectionsSchema = z.array(z.looseObject({ label: Label, score: Num, box: z.looseObject({ x1: Num, y1: Num, x2: Num, y2: Num }) })).max(10_000);
const TaskBodySchema = z.looseObject({
  id: z.string().min(1).max(128),
  model: NameSchema,
  version: z.string().min(1).max(64),
  task: z.enum(['classification', 'detection', 'segmentation', 'regression', 'anomaly', 'embedding']),
});
const RecordFields = {
  detection: z.looseObject({ detections: DetectionsSchema }),
  regression: z.looseObject({ values: z.record(z.string().min(1).max(64), Num) }),
  anomaly: z.looseObject({ score: Num, alarm: z.boolean() }),
} as const;

/** Index fields of a v2 inference record of a task other than classification; undefined when it is not one (or is malformed). */
export function taskIndexFields(body: unknown): { id: string; model: string; version: string; task: string; label: string; confidence: number; pred: string | null } | undefined {
  // Cheap test first: every v1 and classification record passes through here on ingest.
  const task = typeof body === 'object' && body !== null ? (body as { task?: unknown }).task : undefined;
  if (task === undefined || task === 'classification') return undefined;
  const b = TaskBodySchema.safeParse(body);
  if (!b.success || b.data.task === 'classification') return undefined;
  const base = { id: b.data.id, model: b.data.model, version: b.data.version, task: b.data.task };
  switch (b.data.task) {
    case 'detection': {
      const d = RecordFields.detection.safeParse(body);
      if (!d.success) return undefined;
      const dets = [...d.data.detections].sort((a, c) => c.score - a.score).slice(0, MAX_STORED_DETECTIONS);
      const top = dets[0];
      return {
        ...base,
        label: top?.label ?? '',
        confidence: top ? Math.min(1, Math.max(0, top.score)) : 0,
        pred: JSON.stringify(dets.map((x) => [x.label, r(x.score), x.box.x1, x.box.y1, x.box.x2, x.box.y2])),
      };
    }
    case 'regression': {
      const d = RecordFields.regression.safeParse(body);
      if (!d.success) return undefined;
      return { ...base, label: '', confidence: 0, pred: JSON.stringify(d.data.values) };
    }
    case 'anomaly': {
      const d = RecordFields.anomaly.safeParse(body);
      if (!d.success) return undefined;
      return { ...base, label: d.data.alarm ? ANOMALY : NORMAL, confidence: 0, pred: JSON.stringify([d.data.score, d.data.alarm ? 1 : 0]) };
    }
    default:
      return { ...base, label: '', confidence: 0, pred: null };
  }
}
