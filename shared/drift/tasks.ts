/**
 * Drift summaries of manifest v2 tasks beyond classification (issue #13), on the same wire format
 * as classifiers (shared/drift/summary.ts, summary v1): nothing new to merge or test at the hub.
 *
 * Output features. A manifest's `drift.features` may name a task output as `out.<value>`, where
 * <value> is a key of the task's scalar outputs (agent/postprocess/tasks.ts TaskOutcome.values):
 *   detection     out.count, out.meanScore, out.topScore, out.meanBoxArea
 *   segmentation  out.foreground
 *   regression    out.<target name> (e.g. out.rul)
 *   anomaly       out.score, out.alarm
 *   embedding     out.norm
 *   classification out.confidence, out.margin
 * The agent bins them per inference exactly like input features (same edges, same counts, same
 * moments), so they merge exactly and the hub tests them against the reference counts by name.
 *
 * One rule beyond "the value as postprocessing gives it": detection's meanScore, topScore and
 * meanBoxArea are undefined on a frame with no detection (postprocessing reports 0 there), so
 * they are counted as missing (`nan`), not as 0. Their histograms are then distributions over
 * frames with at least one detection, and the empty frames are what `out.count` shows; the hub's
 * reference test puts the missing count on both sides, so it does not move the test. A reference
 * builder must apply the same rule: use `driftOutputValue`.
 *
 * Class counts (`outputs.classCounts`, which must sum to the readings): classification counts the
 * top-1 label as before; anomaly counts [normal, alarm], so the alarm rate gets the class-mix
 * tests (against peers always; against the reference when the manifest carries
 * `drift.classRates` [1 − rate, rate] and `evaluation.samples`); every other task has one
 * class (`all`), on which no test has anything to say. The confidence / margin / entropy
 * histograms stay empty for tasks other than classification.
 */
import type { ModelSpec } from '../model-spec.ts';
import type { Task } from '../tasks/specs.ts';

export const OUTPUT_FEATURE_PREFIX = 'out.';

export const ANOMALY_CLASSES: readonly string[] = Object.freeze(['normal', 'alarm']);
export const SINGLE_CLASS: readonly string[] = Object.freeze(['all']);

/** Names of the scalar outputs (TaskOutcome.values keys) the task's postprocessing reports. */
export function taskValueNames(spec: Pick<ModelSpec, 'post'>): string[] {
  const p = spec.post;
  switch (p.kind) {
    case 'classification':
      return ['confidence', 'margin'];
    case 'detection':
      return ['count', 'meanScore', 'topScore', 'meanBoxArea'];
    case 'segmentation':
      return ['foreground'];
    case 'regression':
      return p.targets.map((t) => t.name);
    case 'anomaly':
      return ['score', 'alarm'];
    case 'embedding':
      return ['norm'];
  }
}

/** `out.count` → `count`; undefined for an input feature name. */
export function outputValueName(feature: string): string | undefined {
  return feature.startsWith(OUTPUT_FEATURE_PREFIX) ? feature.slice(OUTPUT_FEATURE_PREFIX.length) : undefined;
}

/** The labels `outputs.classCounts` is counted in, for a model of this spec. */
export function driftClassLabels(spec: Pick<ModelSpec, 'task' | 'labels'>): readonly string[] {
  if (spec.task === 'classification') return spec.labels;
  if (spec.task === 'anomaly') return ANOMALY_CLASSES;
  return SINGLE_CLASS;
}

/** Detection values that have no meaning on a frame without detections (see the module header). */
const PER_DETECTION: ReadonlySet<string> = new Set(['meanScore', 'topScore', 'meanBoxArea']);

/** Whether output value `name` of `task` is counted as missing when it has no meaning (empty frame). */
export function conditionalOnDetection(task: Task, name: string): boolean {
  return task === 'detection' && PER_DETECTION.has(name);
}

/** The value drift counts for output `name`: NaN (missing) when absent or undefined for this inference. */
export function driftOutputValue(task: Task, name: string, values: Readonly<Record<string, number>>): number {
  if (conditionalOnDetection(task, name) && !((values['count'] ?? 0) > 0)) return Number.NaN;
  return values[name] ?? Number.NaN;
}

/** The classCounts index of one inference of a non-classification task (anomaly: its alarm). */
export function driftClassIndex(task: Task, values: Readonly<Record<string, number>>): number {
  return task === 'anomaly' && values['alarm'] === 1 ? 1 : 0;
}

/**
 * The task-level output statistic probation compares between a new version and the one it
 * replaced, for tasks where error rate and latency are all a device can judge on its own:
 * anomaly the alarm rate (a proportion), detection the mean detections per frame, regression
 * the mean of the first target. None for classification (class mix and confidence already) and
 * for segmentation / embedding (no single statistic whose change means "worse"; drift covers them).
 */
export function probationStatistic(spec: Pick<ModelSpec, 'post'>): { value: string; kind: 'rate' | 'mean' } | undefined {
  const p = spec.post;
  if (p.kind === 'anomaly') return { value: 'alarm', kind: 'rate' };
  if (p.kind === 'detection') return { value: 'count', kind: 'mean' };
  if (p.kind === 'regression' && p.targets[0]) return { value: p.targets[0].name, kind: 'mean' };
  return undefined;
}
