/**
 * Drift on the device (issue #4, ARCHITECTURE §8): per (model version, UTC-aligned window) a
 * DriftAccumulator (shared/drift/summary.ts) over the manifest's reference bins, fed by every
 * successful inference; when the window closes (timer, a reading in a later window, or stop)
 * each non-empty summary goes to the outbox as ONE record (stream/kind `drift`), which the hub
 * merges exactly. Also owns the on-device early warning (Page-Hinkley per window statistic,
 * agent/drift/page-hinkley.ts) and the ring of recent raw inputs per pipeline
 * (agent/drift/sample-ring.ts) that the `drift.sample` command uploads.
 *
 * Numeric features, in the manifest's `drift.features` order (the reference the hub tests
 * against): for tabular models those named like a preprocessing feature, taken from the raw
 * (unscaled) reading; for image models those among IMAGE_FEATURES (brightness, contrast,
 * sharpness, channel_mean_<i> in tensor channel order), from the agent's image statistics.
 * For manifest v2 models the same holds for a reading or window request input (a window counts
 * its per-channel means) and an image; reference features named `out.<value>` are the task's
 * scalar outputs (detections per frame, scores, box sizes, mask coverage, regression targets,
 * anomaly score and alarm, embedding norm), binned from TaskOutcome.values by `recordTask`
 * (shared/drift/tasks.ts has the names and rules). Anomaly models count [normal, alarm] as their
 * classes, so the alarm rate gets the class-mix tests; other non-classification tasks count one
 * class and leave the confidence histograms empty.
 * Reference features the agent cannot compute are left out (and logged once) rather than
 * refusing the model. A manifest without reference bins still gets output summaries.
 *
 * Summary ids carry the outbox's boot epoch plus a per-boot counter (the accumulator's
 * `instance`), so a partial window flushed at stop and its continuation after a restart, or a
 * version swapped out and back within one boot, never share an id.
 *
 * Hot path (`record`): a WeakMap lookup by manifest object (no string key built), the features
 * copied into a per-version scratch array, the accumulator's O(features) counting, one ring
 * push. Never throws into the pipeline: a failure is counted and logged, throttled.
 */
import { modelSpec } from '../../shared/model-spec.ts';
import { Counter, Histogram, type Registry } from 'prom-client';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { Manifest, ReferenceBins } from '../../shared/manifest.ts';
import { alignWindow, DRIFT_KIND, DRIFT_STREAM, DriftAccumulator, type ClassificationLike, type DriftSummary } from '../../shared/drift/summary.ts';
import { conditionalOnDetection, driftClassIndex, driftClassLabels, outputValueName, taskValueNames } from '../../shared/drift/tasks.ts';
import type { Task } from '../../shared/tasks/specs.ts';
import type { ImageStats } from '../preprocess/image.ts';
import { DEFAULT_CONFIDENCE_PH, DEFAULT_FEATURE_PH, PageHinkley, PageHinkleyParamsSchema } from './page-hinkley.ts';
import { fitSampleBody, SampleCommandArgsSchema, SampleConfigSchema, sampleBody, SampleRing, uploadSample, type SampleInput, type UploadTarget } from './sample-ring.ts';
import { WindowTimer } from '../health/window-timer.ts';

export const DRIFT_SAMPLE_COMMAND = 'drift.sample';
export const DRIFT_WARNING_KIND = 'drift_warning';
export const EVENTS_STREAM = 'events';

/** Image statistics usable as drift features, by manifest feature name. */
export const IMAGE_FEATURES = ['brightness', 'contrast', 'sharpness'] as const;
const CHANNEL_MEAN = /^channel_mean_([0-2])$/;

/**
 * Code of image feature `name` (0 brightness, 1 contrast, 2 sharpness, 3 + k channel_mean_<k>),
 * or -1 for a name the agent cannot compute. Resolved once per model version, so the hot path
 * reads a number instead of matching names.
 */
export function imageFeatureCode(name: string): number {
  const i = (IMAGE_FEATURES as readonly string[]).indexOf(name);
  if (i >= 0) return i;
  const m = CHANNEL_MEAN.exec(name);
  return m ? 3 + Number(m[1]) : -1;
}

/** The value of the image feature with `code` (imageFeatureCode) in `stats`. */
export function imageFeatureValue(stats: ImageStats, code: number): number {
  if (code === 0) return stats.brightness;
  if (code === 1) return stats.contrast;
  if (code === 2) return stats.sharpness;
  return stats.channelMeans[code - 3] ?? Number.NaN;
}

export const DriftConfigSchema = z.object({
  enabled: z.boolean().default(true),
  /** UTC-aligned summary window. */
  windowMs: z.number().int().min(100).max(86_400_000).default(60_000),
  /** On-device early warning; see agent/drift/page-hinkley.ts for the defaults' reasons. */
  pageHinkley: z
    .object({
      enabled: z.boolean().default(true),
      /** Windows with fewer readings are not fed to the detectors (too noisy). */
      minCount: z.number().int().min(1).default(30),
      /** Each numeric feature's window mean, in SD units of the manifest's reference. */
      features: PageHinkleyParamsSchema.default(DEFAULT_FEATURE_PH),
      /** Mean top-1 confidence per window. */
      confidence: PageHinkleyParamsSchema.default(DEFAULT_CONFIDENCE_PH),
    })
    .prefault({}),
  sample: SampleConfigSchema.prefault({}),
});
export type DriftConfig = z.infer<typeof DriftConfigSchema>;

/** What the pipeline calls per successful inference. */
export interface DriftRecorder {
  /**
   * `inputs`: the raw tabular values in the manifest's preprocessing order, or the image stats.
   * `input`: the request as received (kept in the sample ring).
   */
  record(pipeline: string, manifest: Manifest, inputs: ArrayLike<number> | ImageStats | undefined, c: ClassificationLike, input: SampleInput, id: string, ts: number): void;
  /**
   * A manifest v2 inference of a task other than classification (detection, segmentation,
   * regression, anomaly, embedding): `inputs` as for `record` (a window's per-channel means),
   * `outcome.values` the task's scalar outputs (agent/postprocess/tasks.ts TaskOutcome.values).
   */
  recordTask(pipeline: string, manifest: Manifest, inputs: ArrayLike<number> | ImageStats | undefined, outcome: TaskDriftOutcome, input: SampleInput, id: string, ts: number): void;
}

/** What drift needs of a task's outcome (agent/postprocess/tasks.ts TaskOutcome fits). */
export interface TaskDriftOutcome {
  values: Readonly<Record<string, number>>;
}

export interface DriftSink {
  append(stream: string, kind: string, body: Record<string, unknown>, ts?: number): Promise<unknown>;
}

export interface DriftMonitorOptions {
  deviceId: string;
  config: DriftConfig;
  sink: DriftSink;
  /** Distinguishes this boot in summary ids (the outbox epoch); read when a version first reports. */
  instance: () => string;
  /** Where `drift.sample` uploads to. */
  upload: UploadTarget;
  log: Logger;
  registry?: Registry;
  /** Injected clock (epoch ms). */
  now?: () => number;
}

interface Detector {
  feature: string;
  /** Index into the accumulator's features, or -1 for mean confidence. */
  index: number;
  ref?: ReferenceBins;
  ph: PageHinkley;
}

interface VersionState {
  key: string;
  model: string;
  version: string;
  acc: DriftAccumulator;
  windowStart: number;
  /** For each accumulator feature: index into the tabular values, or the image feature code (-1 for an output). */
  source: number[];
  /** For each accumulator feature: the task output value it counts (`out.<value>`), else undefined. */
  output: (string | undefined)[];
  /** For each accumulator feature: an output undefined on a frame without detections (counted as missing there). */
  perDetection: boolean[];
  task: Task;
  scratch: Float64Array;
  image: boolean;
  confSum: number;
  detectors: Detector[];
  idleWindows: number;
  evicted: boolean;
}

/** Idle windows after which a version's state (and its detectors) is forgotten. */
const EVICT_AFTER_WINDOWS = 10;

export class DriftMonitor implements Component, DriftRecorder {
  readonly name = 'drift';
  readonly #o: DriftMonitorOptions;
  readonly #now: () => number;
  readonly #byManifest = new WeakMap<Manifest, VersionState>();
  readonly #byKey = new Map<string, VersionState>();
  readonly #rings = new Map<string, SampleRing>();
  readonly #pending = new Set<Promise<unknown>>();
  readonly #throttle = new LogThrottle(10_000);
  readonly #metrics: ReturnType<typeof createDriftMetrics> | undefined;
  #created = 0;
  readonly #timer: WindowTimer;

  constructor(opts: DriftMonitorOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#timer = new WindowTimer({ windowMs: () => this.windowMs, now: this.#now, onTick: () => this.tick() });
    this.#metrics = opts.registry ? createDriftMetrics(opts.registry) : undefined;
  }

  get windowMs(): number {
    return this.#o.config.windowMs;
  }

  start(): Promise<void> {
    this.#timer.start();
    return Promise.resolve();
  }

  /** Flushes every partial window and waits for the records to be committed (or refused). */
  async stop(): Promise<void> {
    this.#timer.stop();
    for (const s of this.#byKey.values()) this.#flush(s);
    await Promise.allSettled([...this.#pending]);
  }

  record(pipeline: string, manifest: Manifest, inputs: ArrayLike<number> | ImageStats | undefined, c: ClassificationLike, input: SampleInput, id: string, ts: number): void {
    if (!this.#o.config.enabled) return;
    try {
      const s = this.#window(manifest);
      const x = this.#inputs(s, inputs);
      // A classifier's own outputs, if its reference names them (`out.confidence`, `out.margin`).
      if (s.output.length) {
        for (let i = 0; i < x.length; i++) {
          const o = s.output[i];
          if (o !== undefined) x[i] = o === 'confidence' ? c.confidence : o === 'margin' ? c.margin : Number.NaN;
        }
      }
      s.acc.add(x, c);
      s.confSum += c.confidence;
      this.#counted(s, pipeline, input, id, ts);
    } catch (err) {
      this.#failed(err, manifest);
    }
  }

  recordTask(pipeline: string, manifest: Manifest, inputs: ArrayLike<number> | ImageStats | undefined, outcome: TaskDriftOutcome, input: SampleInput, id: string, ts: number): void {
    if (!this.#o.config.enabled) return;
    try {
      const s = this.#window(manifest);
      if (s.task === 'classification') throw new EdgefleetError(ErrorCode.INTERNAL, 'drift: a classifier is recorded with record(), not recordTask()');
      const x = this.#inputs(s, inputs);
      const values = outcome.values;
      const empty = !((values['count'] ?? 0) > 0);
      for (let i = 0; i < x.length; i++) {
        const o = s.output[i];
        if (o !== undefined) x[i] = s.perDetection[i] && empty ? Number.NaN : (values[o] ?? Number.NaN);
      }
      s.acc.addOutcome(x, driftClassIndex(s.task, values));
      this.#counted(s, pipeline, input, id, ts);
    } catch (err) {
      this.#failed(err, manifest);
    }
  }

  /** The version's state with its window moved to now (flushing the one that ended). */
  #window(manifest: Manifest): VersionState {
    const s = this.#state(manifest);
    const start = alignWindow(this.#now(), s.acc.windowMs);
    if (start !== s.windowStart) {
      this.#flush(s);
      s.windowStart = start;
    }
    return s;
  }

  /** The scratch array with the input features filled in (output features left for the caller). */
  #inputs(s: VersionState, inputs: ArrayLike<number> | ImageStats | undefined): Float64Array {
    const x = s.scratch;
    if (s.image) {
      const stats = inputs as ImageStats | undefined;
      for (let i = 0; i < x.length; i++) x[i] = stats ? imageFeatureValue(stats, s.source[i] as number) : Number.NaN;
    } else {
      const raw = inputs as ArrayLike<number> | undefined;
      for (let i = 0; i < x.length; i++) x[i] = raw ? (raw[s.source[i] as number] ?? Number.NaN) : Number.NaN;
    }
    return x;
  }

  #counted(s: VersionState, pipeline: string, input: SampleInput, id: string, ts: number): void {
    s.idleWindows = 0;
    if (this.#o.config.sample.size > 0) this.#ring(pipeline).push(input, { id, ts, model: s.model, version: s.version });
  }

  #failed(err: unknown, manifest: Manifest): void {
    this.#metrics?.errors.inc();
    const e = toEdgefleetError(err);
    this.#throttle.run('record', (suppressed) => this.#o.log.warn({ err: e, model: manifest.name, version: manifest.version, suppressed }, 'drift: reading not counted'));
  }

  /** Closes every window that ended by now (the timer calls this; tests with a fake clock too). */
  tick(): void {
    const now = this.#now();
    for (const [key, s] of this.#byKey) {
      if (s.windowStart + s.acc.windowMs > now) continue;
      if (s.acc.count === 0 && ++s.idleWindows >= EVICT_AFTER_WINDOWS) {
        s.evicted = true;
        this.#byKey.delete(key);
        continue;
      }
      this.#flush(s);
      s.windowStart = alignWindow(now, s.acc.windowMs);
    }
  }

  /** The kept inputs of a pipeline (tests, diagnostics). */
  ring(pipeline: string): SampleRing | undefined {
    return this.#rings.get(pipeline);
  }

  /** The `drift.sample` command: uploads the newest kept inputs of a pipeline to the hub. */
  async uploadSample(args: unknown): Promise<{ pipeline: string; items: number; bytes: number; status: number }> {
    const parsed = SampleCommandArgsSchema.safeParse(args);
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, `${DRIFT_SAMPLE_COMMAND}: ${formatIssues(parsed.error)}`);
    const a = parsed.data;
    const ring = this.#rings.get(a.pipeline);
    if (!ring) throw new EdgefleetError(ErrorCode.NOT_FOUND, `${DRIFT_SAMPLE_COMMAND}: no inputs kept for pipeline ${a.pipeline} (unknown pipeline, no inference yet, or drift.sample.size is 0)`);
    const body = sampleBody(a.pipeline, ring.recent(a.max), a.request);
    const dropped = fitSampleBody(body, a.maxBytes);
    const items = body.items;
    try {
      const r = await uploadSample(this.#o.upload, body);
      this.#metrics?.uploads.inc({ outcome: 'ok' });
      this.#o.log.info({ pipeline: a.pipeline, request: a.request, items: items.length, dropped, bytes: r.bytes }, 'drift sample uploaded');
      return { pipeline: a.pipeline, items: items.length, bytes: r.bytes, status: r.status };
    } catch (err) {
      this.#metrics?.uploads.inc({ outcome: 'error' });
      throw err;
    }
  }

  #ring(pipeline: string): SampleRing {
    let r = this.#rings.get(pipeline);
    if (!r) {
      r = new SampleRing(this.#o.config.sample);
      this.#rings.set(pipeline, r);
    }
    return r;
  }

  #state(manifest: Manifest): VersionState {
    const hit = this.#byManifest.get(manifest);
    if (hit && !hit.evicted) return hit;
    const key = `${manifest.name}@${manifest.version}`;
    let s = this.#byKey.get(key);
    if (!s) {
      s = this.#newState(manifest, key);
      this.#byKey.set(key, s);
    }
    this.#byManifest.set(manifest, s);
    return s;
  }

  #newState(m: Manifest, key: string): VersionState {
    const refs = m.drift?.features ?? [];
    const spec = modelSpec(m);
    const image = spec.primary?.source.kind === 'image';
    const tabularNames = spec.featureNames;
    const outputNames = taskValueNames(spec);
    const used: ReferenceBins[] = [];
    const source: number[] = [];
    const output: (string | undefined)[] = [];
    const perDetection: boolean[] = [];
    const unknown: string[] = [];
    for (const f of refs) {
      const out = outputValueName(f.name);
      const idx = out !== undefined ? (outputNames.includes(out) ? -1 : -2) : image ? imageFeatureCode(f.name) : tabularNames.indexOf(f.name);
      if (idx < -1 || (out === undefined && idx < 0)) {
        unknown.push(f.name);
        continue;
      }
      used.push(f);
      source.push(idx);
      output.push(out);
      perDetection.push(out !== undefined && conditionalOnDetection(spec.task, out));
    }
    if (unknown.length) this.#o.log.warn({ model: key, features: unknown }, 'drift: reference features the agent cannot compute are left out');
    const acc = new DriftAccumulator({
      deviceId: this.#o.deviceId,
      model: { name: m.name, version: m.version },
      windowMs: this.#o.config.windowMs,
      features: used.map((f) => ({ name: f.name, edges: f.edges })),
      classes: driftClassLabels(spec).length,
      instance: `${this.#o.instance()}-${this.#created++}`,
    });
    const ph = this.#o.config.pageHinkley;
    const detectors: Detector[] = ph.enabled
      ? [
          // Mean top-1 confidence: classifiers only (other tasks report none).
          ...(spec.task === 'classification' ? [{ feature: 'confidence', index: -1, ph: new PageHinkley(ph.confidence) }] : []),
          ...used.map((f, i) => ({ feature: f.name, index: i, ref: f, ph: new PageHinkley(ph.features) })),
        ]
      : [];
    return {
      key,
      model: m.name,
      version: m.version,
      acc,
      windowStart: alignWindow(this.#now(), acc.windowMs),
      source,
      output: output.some((o) => o !== undefined) ? output : [],
      perDetection,
      task: spec.task,
      scratch: new Float64Array(used.length),
      image,
      confSum: 0,
      detectors,
      idleWindows: 0,
      evicted: false,
    };
  }

  #flush(s: VersionState): void {
    if (s.acc.count === 0) return;
    const confSum = s.confSum;
    s.confSum = 0;
    const summary = s.acc.flush(s.windowStart);
    this.#earlyWarning(s, summary, confSum);
    const body = summary as unknown as Record<string, unknown>;
    this.#metrics?.summaries.inc({ model: s.model });
    this.#metrics?.bytes.observe(Buffer.byteLength(JSON.stringify(body)));
    const p = this.#o.sink.append(DRIFT_STREAM, DRIFT_KIND, body, summary.windowStart + summary.windowMs).catch((err: unknown) => {
      this.#throttle.run('append', (suppressed) => this.#o.log.warn({ err, model: s.key, suppressed }, 'drift summary not stored'));
    });
    this.#track(p);
  }

  #earlyWarning(s: VersionState, summary: DriftSummary, confSum: number): void {
    if (s.detectors.length === 0 || summary.count < this.#o.config.pageHinkley.minCount) return;
    for (const d of s.detectors) {
      let value: number;
      let statistic: string;
      if (d.index < 0) {
        value = confSum / summary.count;
        statistic = 'mean_confidence';
      } else {
        const f = summary.numeric[d.index];
        const n = f ? summary.count - f.nan : 0;
        if (!f || n <= 0 || !d.ref || !(d.ref.std > 0)) continue;
        value = (f.sum / n - d.ref.mean) / d.ref.std;
        statistic = 'window_mean_sd';
      }
      const step = d.ph.update(value);
      if (!step.alarm) continue;
      const body = {
        model: s.model,
        version: s.version,
        feature: d.feature,
        statistic,
        value: Math.round(value * 1e6) / 1e6,
        direction: step.direction,
        ph: Math.round(step.statistic * 1e6) / 1e6,
        windowStart: summary.windowStart,
        windowMs: summary.windowMs,
        detector: 'page-hinkley',
      };
      this.#metrics?.warnings.inc({ model: s.model, feature: d.feature });
      this.#o.log.warn(body, `drift warning: ${d.feature} ${step.direction === 'up' ? 'rose' : 'fell'} (${statistic} ${body.value})`);
      this.#track(
        this.#o.sink.append(EVENTS_STREAM, DRIFT_WARNING_KIND, body, summary.windowStart + summary.windowMs).catch((err: unknown) => {
          this.#throttle.run('event', (suppressed) => this.#o.log.warn({ err, suppressed }, 'drift warning not stored'));
        }),
      );
    }
  }

  #track(p: Promise<unknown>): void {
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }
}

export function createDriftMetrics(registry: Registry) {
  return {
    summaries: new Counter({
      name: 'edgefleet_agent_drift_summaries_total',
      help: 'Drift summaries flushed to the outbox (one per model version and window with readings).',
      labelNames: ['model'] as const,
      registers: [registry],
    }),
    bytes: new Histogram({
      name: 'edgefleet_agent_drift_summary_bytes',
      help: 'Size of each flushed drift summary as JSON.',
      buckets: [256, 512, 1024, 2048, 4096, 8192, 16_384, 32_768, 65_536],
      registers: [registry],
    }),
    warnings: new Counter({
      name: 'edgefleet_agent_drift_warnings_total',
      help: 'On-device Page-Hinkley drift warnings, by model and feature (`confidence` = mean top-1 confidence).',
      labelNames: ['model', 'feature'] as const,
      registers: [registry],
    }),
    errors: new Counter({
      name: 'edgefleet_agent_drift_record_errors_total',
      help: 'Inferences the drift monitor could not count (shape mismatch with the manifest).',
      registers: [registry],
    }),
    uploads: new Counter({
      name: 'edgefleet_agent_drift_sample_uploads_total',
      help: 'drift.sample uploads to the hub, by outcome.',
      labelNames: ['outcome'] as const,
      registers: [registry],
    }),
  };
}
