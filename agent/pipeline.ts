/**
 * One pipeline = one model + the preprocessing its manifest names (tabular JSON readings or
 * encoded images) + postprocessing (softmax, top-k, labels, per-label thresholds). Every input
 * adapter (MQTT, HTTP, folder; agent/inputs/) calls the same `infer(request)`; the result goes
 * live to the output topic and, as telemetry, into the outbox, both with the input's
 * correlation id. Bad input is refused with a clear EdgefleetError and counted; it never stops
 * the pipeline. Stream inputs go through `submit()`, the bounded drop-oldest queue.
 *
 * Each request holds a lease on the model version it started with (`acquire`) until its
 * inference returned, so a hot swap (ModelSet.swap) never unloads a version under a request.
 * Every inference is reported to the health monitor (agent/health/) for windows and probation:
 * engine failures count as errors, bad input and overload do not (they say nothing about the
 * model).
 *
 * Hot path (issue #5): every request costs main-thread JS, and under load that, not the model,
 * caps throughput. So JSON readings are prepared synchronously (no async hop), the usual
 * reading shape `{ id?, ts?, values }` is checked by `fastReading` (the same acceptance as
 * ReadingSchema; anything else still goes through zod for its error text), and the per-request
 * metric series are prom-client children cached per model version instead of label objects.
 * Postprocessing runs as plain loops, and the published result is serialized by `resultJson`
 * (JSON.stringify's output, with the per-model fields cached).
 */
import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import { decodeJson, formatIssues } from '../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../shared/errors.ts';
import type { Component } from '../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../shared/log.ts';
import { PROTOCOL_VERSION, topics } from '../shared/protocol.ts';
import type { PipelineConfig } from './config.ts';
import { StreamQueue } from './inputs/stream-queue.ts';
import type { PipelineMetrics } from './metrics.ts';
import type { HealthRecorder } from './health/health-monitor.ts';
import type { DriftRecorder } from './drift/drift-monitor.ts';
import type { LocalModel } from './models/local-models.ts';
import type { ModelLease } from './models/model-set.ts';
import { preprocessImage, type ImageStats } from './preprocess/image.ts';
import { classify } from './preprocess/postprocess.ts';
import { preprocessTabular, ReadingSchema, type Reading } from './preprocess/tabular.ts';
import type { InferInput } from './runtime/engine.ts';
import { modelSpec, type ModelSpec } from '../shared/model-spec.ts';
import type { Task } from '../shared/tasks/specs.ts';
import { TaskRunner, type PreparedV2 } from './tasks/runner.ts';
import { BufferPool } from './runtime/buffer-pool.ts';

export interface Publisher {
  publish(topic: string, payload: Buffer | string, opts?: { qos?: 0 | 1; retain?: boolean }): boolean;
}
export interface InputBus {
  /** `retain`: the broker delivered the topic's retained message (at subscribe), not a live one. */
  subscribe(topicFilter: string, handler: (topic: string, payload: Buffer, retain: boolean) => void): void;
}
export interface RecordSink {
  append(stream: string, kind: string, body: Record<string, unknown>, ts?: number): Promise<{ epoch: number; seq: number }>;
  /** Commits synchronously (the folder input needs the commit and its own journal in one tick). */
  appendNow(stream: string, kind: string, body: Record<string, unknown>, ts?: number): { epoch: number; seq: number };
}
export interface Inferer {
  infer(key: string, input: InferInput): Promise<{ outputs: Record<string, { data: Float32Array; dims: number[] }>; latencyMs: number }>;
}

export const INFERENCE_STREAM = 'inference';
/** Default body caps of stream inputs: a JSON reading, and an image (the hub broker's payload cap). */
export const DEFAULT_MAX_JSON_BYTES = 64 * 1024;
export const DEFAULT_MAX_IMAGE_BYTES = 1024 * 1024;

export type InputSource = 'mqtt' | 'http' | 'folder';

/**
 * What every input adapter hands the pipeline. `json.body` is a parsed value, or the raw bytes
 * (Buffer) for the pipeline to parse under its cap. `id` is the correlation id; a JSON reading's
 * own `id` wins; without either one is generated.
 */
export type InferRequest =
  | { kind: 'json'; body: unknown; id?: string; ts?: number; source?: InputSource; stream?: string }
  | { kind: 'image'; bytes: Buffer; id?: string; ts?: number; source?: InputSource; stream?: string };

/** What every published result starts with, whatever the model. */
interface ResultHead {
  v: typeof PROTOCOL_VERSION;
  id: string;
  ts: number;
  deviceId: string;
  pipeline: string;
  model: { name: string; version: string };
}

/** The result of a v1 classifier (the hot path's shape, serialized by `resultJson`). */
export interface ClassifierResult extends ResultHead {
  /** Top-1 label and its score. */
  label: string;
  confidence: number;
  /** Best label whose score is above its threshold (config `thresholds`); null when none is. */
  decision: string | null;
  topK: { label: string; score: number }[];
  /** Every class score, in label order. */
  scores: number[];
  latencyMs: number;
  inputTs?: number;
  image?: { brightness: number; contrast: number; sharpness: number };
}

/**
 * The result of a manifest v2 model: the common fields, `task`, and the task's own fields
 * (agent/postprocess/tasks.ts: label/topK, detections, coverage, values, score/alarm, tensors).
 * `buffered` = a window model took the reading but its window is not full yet.
 */
interface TaskResultBase extends ResultHead {
  task: Task;
  /** A chain's models in order (the result is the last one's). */
  chain?: { name: string; version: string }[];
}

export interface TaskResult extends TaskResultBase {
  latencyMs: number;
  inputTs?: number;
  image?: { brightness: number; contrast: number; sharpness: number };
  window?: { firstTs: number; lastTs: number; firstId?: string; lastId?: string };
  buffered?: true;
  [field: string]: unknown;
}

export type PipelineResult = ClassifierResult | TaskResult;

/** A telemetry record computed but not yet appended (see `inferDeferred`). */
export interface PendingRecord {
  stream: string;
  kind: string;
  body: Record<string, unknown>;
  ts: number;
}

export interface PipelineDeps {
  deviceId: string;
  config: PipelineConfig;
  /** The model currently serving this pipeline's model name (it changes with rollouts). */
  model: () => LocalModel | undefined;
  /**
   * The current model, held for one request (ModelSet.acquire). Without it the pipeline reads
   * `model()` and holds nothing: fine only where models never change.
   */
  acquire?: () => ModelLease | undefined;
  /** The chain's later models (config `chain`), held for one request like `acquire`. */
  acquireStage?: (name: string) => ModelLease | undefined;
  /** Told about every inference (health windows, probation). */
  health?: HealthRecorder;
  /** Told about every successful inference (drift summaries, sample ring; issue #4). */
  drift?: DriftRecorder;
  engine: Inferer;
  publisher: Publisher;
  sink: RecordSink;
  metrics: PipelineMetrics;
  log: Logger;
  /** Cap on width × height of an input image, read from its header before decoding. */
  maxInputPixels?: number;
  /** Stream queue sizes where the pipeline's config leaves them open (see config `stream`). */
  streamDefaults?: { queueMax: number; maxInFlight: number };
}

const round6 = (x: number): number => Math.round(x * 1e6) / 1e6;
/** Engine refusals that say nothing about the model version (health does not count them). */
const NOT_THE_MODELS_FAULT: ReadonlySet<string> = new Set([ErrorCode.BAD_INPUT, ErrorCode.OVERLOADED, ErrorCode.UNAVAILABLE, ErrorCode.ABORTED]);
const IdSchema = z.string().min(1).max(128);

/** A correlation id we accept from outside: short and printable (it lands in logs and topics). */
export function validCorrelationId(id: string | undefined): string | undefined {
  if (id === undefined) return undefined;
  return IdSchema.safeParse(id).success && /^[\x21-\x7e]+$/.test(id) ? id : undefined;
}

interface Prepared {
  data: InferInput['data'];
  dims: number[];
  id: string;
  /** The id came with the input (not generated): redeliveries of it can be recognized. */
  givenId: boolean;
  inputTs?: number;
  stats?: ImageStats;
  /** Raw (unscaled) tabular values, for drift summaries. */
  raw?: Float64Array;
}

/**
 * The common reading `{ id?, ts?, values }` checked by hand, accepting exactly what ReadingSchema
 * accepts for that shape; undefined for anything else (other keys, `features`, any doubt), which
 * then goes through ReadingSchema itself. A plain object only: zod reads getters, this does not.
 */
export function fastReading(body: unknown): Reading | undefined {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return undefined;
  const proto: unknown = Object.getPrototypeOf(body);
  if (proto !== Object.prototype && proto !== null) return undefined;
  const r = body as Record<string, unknown>;
  for (const k in r) if (k !== 'id' && k !== 'ts' && k !== 'values') return undefined;
  const { id, ts, values } = r;
  if (!Array.isArray(values) || values.length > 4096) return undefined;
  for (const v of values as unknown[]) if (typeof v !== 'number' || !Number.isFinite(v)) return undefined;
  const reading: Reading = { values: values as number[] };
  if (id !== undefined) {
    if (typeof id !== 'string' || id.length < 1 || id.length > 128) return undefined;
    reading.id = id;
  }
  if (ts !== undefined) {
    if (!Number.isSafeInteger(ts) || (ts as number) < 0) return undefined;
    reading.ts = ts as number;
  }
  return reading;
}

/** The metric reason an input error is counted under. */
export function rejectReason(e: EdgefleetError): string {
  if (e.code === ErrorCode.PAYLOAD_TOO_LARGE) return 'too_large';
  if (e.code === ErrorCode.BAD_PAYLOAD) return e.message.startsWith('malformed') ? 'malformed' : 'schema';
  if (e.details?.['reason'] === 'wrong_kind') return 'wrong_kind';
  return 'bad_input';
}

export class Pipeline implements Component {
  readonly name: string;
  readonly inputKind: 'tabular' | 'image';
  readonly outputTopic: string;
  readonly #throttle = new LogThrottle(1000);
  readonly #stream: StreamQueue<InferRequest>;
  #accepting = false;
  #inFlight = 0;
  #idle: Array<() => void> = [];
  /** `inferences{outcome="ok"}` per model key (name@version); bounded, see #okCounter. */
  readonly #ok = new Map<string, { inc(): void }>();
  readonly #latency: { observe(v: number): void };
  /**
   * Ids of MQTT readings accepted lately (insertion order = age), so a QoS 1 redelivery of a
   * reading (a sensor resending what the broker had already passed on, e.g. across a broker
   * restart) is inferred and stored once. Bounded by `stream.dedupeIds`.
   */
  readonly #recentIds = new Set<string>();
  /** resultJson's constant middle per model key (a pipeline sees one or two versions at a time). */
  readonly #fixed = new Map<string, string>();
  /** Manifest v2 models: windows, state, chains and task postprocessing. */
  readonly #runner: TaskRunner;
  /** Frame tensors the engine hands back, reused for the next frame (agent/runtime/buffer-pool.ts). */
  readonly #buffers = new BufferPool();

  constructor(private readonly d: PipelineDeps) {
    const cfg = d.config;
    this.name = `pipeline:${cfg.name}`;
    this.outputTopic = cfg.output.topic ?? topics.output(d.deviceId, cfg.name);
    this.#latency = d.metrics.latency.labels(cfg.name);
    const model = this.#model();
    const spec = modelSpec(model.manifest);
    this.inputKind = spec.primary?.source.kind === 'image' ? 'image' : 'tabular';
    if (cfg.chain.length && model.manifest.manifestVersion === 1) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `pipeline ${cfg.name}: a chain needs manifest v2 models; ${model.key} is v1`);
    }
    this.#runner = new TaskRunner({
      pipeline: cfg.name,
      engine: d.engine,
      buffers: this.#buffers,
      maxStreams: cfg.maxStreams,
      events: {
        // Not counted as dropped input: a reset after a full window loses no reading.
        windowReset: (reason) => d.metrics.windowResets.inc({ pipeline: cfg.name, reason }),
        stateReset: (reason) => {
          d.metrics.windowResets.inc({ pipeline: cfg.name, reason: `state_${reason}` });
          this.#throttle.run(`state:${reason}`, (suppressed) => d.log.info({ pipeline: cfg.name, reason, suppressed }, 'model state reset'));
        },
      },
    });
    const labels = spec.labels;
    const unknown = Object.keys(cfg.thresholds ?? {}).filter((l) => !labels.includes(l));
    if (unknown.length) {
      throw new EdgefleetError(ErrorCode.BAD_CONFIG, `pipeline ${cfg.name}: thresholds for unknown labels ${unknown.join(', ')} (model ${model.key} has ${labels.join(', ')})`);
    }
    if (cfg.input.type === 'mqtt' && cfg.input.format) {
      const want = cfg.input.format === 'image' ? 'image' : 'tabular';
      if (want !== this.inputKind) {
        throw new EdgefleetError(ErrorCode.BAD_CONFIG, `pipeline ${cfg.name}: input format ${cfg.input.format} does not fit model ${model.key}, which takes ${this.inputKind === 'image' ? 'images' : 'tabular readings (JSON)'}`);
      }
    }
    this.#stream = new StreamQueue<InferRequest>({
      queueMax: cfg.stream.queueMax ?? d.streamDefaults?.queueMax ?? 1000,
      maxInFlight: cfg.stream.maxInFlight ?? d.streamDefaults?.maxInFlight ?? 32,
      maxBytes: cfg.stream.maxBytes,
      sizeOf: (req) => (req.kind === 'image' ? req.bytes.length : Buffer.isBuffer(req.body) ? req.body.length : 0),
      run: (req) => this.infer(req),
      onDrop: (_req, reason) => {
        d.metrics.inputDropped.inc({ pipeline: cfg.name, reason });
        this.#throttle.run(`drop:${reason}`, (suppressed) => d.log.warn({ pipeline: cfg.name, reason, suppressed }, 'stream input dropped'));
      },
      onDepth: (n) => d.metrics.streamQueued.set({ pipeline: cfg.name }, n),
    });
  }

  /** The pipeline's name from the config. */
  get pipelineName(): string {
    return this.d.config.name;
  }

  get accepting(): boolean {
    return this.#accepting;
  }

  start(): Promise<void> {
    this.#accepting = true;
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.#accepting = false;
    await this.#stream.close();
    if (this.#inFlight > 0) await new Promise<void>((r) => this.#idle.push(r));
  }

  /** Stream inputs: queue the request under the overload policy (never throws). */
  submit(req: InferRequest): void {
    this.#stream.push(req);
  }

  /** Counts an input refused before it reached the pipeline (e.g. an HTTP body over the cap). */
  countRejected(error: EdgefleetError): void {
    this.#reject(error);
  }

  /**
   * Runs one request: decode → preprocess → infer → postprocess → publish → outbox. Resolves
   * with the result once it is published and committed; rejects with an EdgefleetError
   * (BAD_PAYLOAD, BAD_INPUT, PAYLOAD_TOO_LARGE, OVERLOADED, UNAVAILABLE, INFERENCE, STORAGE),
   * already counted.
   */
  async infer(req: InferRequest): Promise<PipelineResult> {
    const { result, record } = await this.inferDeferred(req);
    if (record) {
      try {
        await this.d.sink.append(record.stream, record.kind, record.body, record.ts);
      } catch (err) {
        this.#recentIds.delete(result.id); // not stored: a redelivery may try again
        throw this.#failed(toEdgefleetError(err, ErrorCode.STORAGE));
      }
    }
    return result;
  }

  /**
   * Like `infer`, but the telemetry record is returned instead of appended, for an input that
   * commits it together with its own bookkeeping (`commitNow`). The live result is published.
   */
  async inferDeferred(req: InferRequest, extra?: Record<string, unknown>): Promise<{ result: PipelineResult; record: PendingRecord | undefined }> {
    if (!this.#accepting) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `pipeline ${this.d.config.name} is not running`);
    const t0 = performance.now();
    const { config, metrics } = this.d;
    const lease = this.#lease();
    const model = lease.model;
    this.#inFlight++;
    try {
      if (model.manifest.manifestVersion === 2) return await this.#inferV2(req, lease, t0, extra);
      let prepared: Prepared;
      try {
        // Tabular readings are prepared synchronously: no promise, no hop (module header).
        prepared = model.manifest.preprocessing.kind === 'image' ? await this.#prepareImage(model, req) : this.#prepareTabular(model, req);
      } catch (err) {
        const e = toEdgefleetError(err, ErrorCode.BAD_INPUT);
        if (e.code !== ErrorCode.ABORTED && e.code !== ErrorCode.INTERNAL && e.code !== ErrorCode.BAD_MANIFEST) this.#reject(e);
        throw e;
      }
      const dedupe = req.source === 'mqtt' && prepared.givenId && config.stream.dedupeIds > 0;
      if (dedupe) {
        if (this.#recentIds.has(prepared.id)) {
          metrics.inputDropped.inc({ pipeline: config.name, reason: 'duplicate' });
          throw new EdgefleetError(ErrorCode.CONFLICT, `reading ${prepared.id} was already accepted (redelivery)`, { details: { reason: 'duplicate' } });
        }
        this.#recentIds.add(prepared.id);
        if (this.#recentIds.size > config.stream.dedupeIds) this.#recentIds.delete(this.#recentIds.values().next().value as string);
      }
      let first: { data: Float32Array } | undefined;
      let engineMs: number;
      try {
        // The prepared tensor is fresh per request and not read again: handed over, not copied.
        const res = await this.d.engine.infer(model.key, { data: prepared.data, dims: prepared.dims, transfer: true, reclaim: this.#buffers.give });
        first = res.outputs[model.manifest.outputs[0]!.name] ?? Object.values(res.outputs)[0];
        if (!first) throw new EdgefleetError(ErrorCode.INFERENCE, 'model returned no outputs');
        engineMs = res.latencyMs;
      } catch (err) {
        const e = toEdgefleetError(err, ErrorCode.INFERENCE);
        // Not served: a redelivery of this reading deserves its chance.
        if (dedupe) this.#recentIds.delete(prepared.id);
        metrics.inferences.inc({
          pipeline: config.name,
          model: model.manifest.name,
          version: model.manifest.version,
          outcome: e.code === ErrorCode.OVERLOADED ? 'overloaded' : 'error',
        });
        if (e.code === ErrorCode.BAD_INPUT) this.#reject(e);
        else this.#logFailure(e);
        if (!NOT_THE_MODELS_FAULT.has(e.code)) {
          this.d.health?.record(model.manifest.name, model.manifest.version, { ok: false, classes: model.manifest.postprocessing.labels.length });
        }
        throw e;
      } finally {
        lease.release();
      }
      const c = classify(model.manifest.postprocessing, first.data);
      const spec = model.manifest;
      this.d.health?.record(model.manifest.name, model.manifest.version, {
        ok: true,
        latencyMs: engineMs,
        classIndex: c.index,
        confidence: c.confidence,
        classes: model.manifest.postprocessing.labels.length,
      });
      const ts = Date.now();
      this.d.drift?.record(config.name, model.manifest, prepared.raw ?? prepared.stats, c, req, prepared.id, ts);
      const latencyMs = Math.round(engineMs * 1000) / 1000;
      const result: ClassifierResult = {
        v: PROTOCOL_VERSION,
        id: prepared.id,
        ts,
        deviceId: this.d.deviceId,
        pipeline: config.name,
        model: { name: model.manifest.name, version: model.manifest.version },
        label: c.label,
        confidence: c.confidence,
        decision: decide(spec.postprocessing.labels, c.scores, config.thresholds),
        topK: topK(spec.postprocessing.labels, c.scores, config.topK),
        scores: c.scores,
        latencyMs,
      };
      if (prepared.inputTs !== undefined) result.inputTs = prepared.inputTs;
      if (prepared.stats) {
        result.image = { brightness: round6(prepared.stats.brightness), contrast: round6(prepared.stats.contrast), sharpness: round6(prepared.stats.sharpness) };
      }
      this.d.publisher.publish(this.outputTopic, resultJson(result, this.#fixedJson(model)), { qos: config.output.qos });
      this.#okCounter(model).inc();
      this.#latency.observe((performance.now() - t0) / 1000);
      const record: PendingRecord | undefined = config.output.telemetry
        ? {
            stream: INFERENCE_STREAM,
            kind: 'inference',
            ts,
            body: {
              id: result.id,
              pipeline: config.name,
              model: model.manifest.name,
              version: model.manifest.version,
              label: c.label,
              confidence: c.confidence,
              margin: c.margin,
              decision: result.decision,
              latencyMs,
              inputTs: prepared.inputTs ?? null,
              source: req.source ?? null,
              // Image statistics per inference: the groundwork for image drift summaries.
              ...(result.image ? { image: result.image } : {}),
              ...extra,
            },
          }
        : undefined;
      return { result, record };
    } finally {
      lease.release();
      this.#inFlight--;
      if (this.#inFlight === 0 && this.#idle.length) for (const r of this.#idle.splice(0)) r();
    }
  }

  /**
   * A manifest v2 model (or chain): prepare the request input through the runner (image,
   * reading or window), run the stages, postprocess by task, publish, and return the record.
   * Same counting as the v1 path: bad input is rejected and counted, engine failures count
   * against the model's health, overload does not.
   */
  async #inferV2(req: InferRequest, lease: ModelLease, t0: number, extra: Record<string, unknown> | undefined): Promise<{ result: PipelineResult; record: PendingRecord | undefined }> {
    const { config, metrics } = this.d;
    const model = lease.model;
    const stages = [model];
    const leases: ModelLease[] = [];
    let prepared: PreparedV2;
    let id: string;
    let givenId: boolean;
    let inputTs: number | undefined;
    try {
      for (const name of config.chain) {
        const l = this.d.acquireStage?.(name);
        if (!l) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `pipeline ${config.name}: chain model ${name} is not active`);
        leases.push(l);
        stages.push(l.model);
      }
      if (req.kind === 'image') {
        const input = config.input;
        const maxInputBytes = req.source === 'http' ? undefined : input.type === 'folder' ? input.maxFileBytes : (input.maxPayloadBytes ?? DEFAULT_MAX_IMAGE_BYTES);
        prepared = await this.#runner.prepareImage(model, req.bytes, req.stream, { maxInputBytes, maxInputPixels: this.d.maxInputPixels });
        const given = validCorrelationId(req.id);
        id = given ?? randomUUID();
        givenId = given !== undefined;
        inputTs = req.ts;
      } else {
        const reading = this.#reading(req);
        prepared = this.#runner.prepareReading(model, reading, req.stream);
        const given = reading.id ?? validCorrelationId(req.id);
        id = given ?? randomUUID();
        givenId = given !== undefined;
        inputTs = reading.ts ?? req.ts;
      }
    } catch (err) {
      for (const l of leases) l.release();
      const e = toEdgefleetError(err, ErrorCode.BAD_INPUT);
      if (e.code !== ErrorCode.ABORTED && e.code !== ErrorCode.INTERNAL && e.code !== ErrorCode.BAD_MANIFEST && e.code !== ErrorCode.UNAVAILABLE) this.#reject(e);
      throw e;
    }
    // A chain's result is the last model's: its task, its name and version; `chain` lists every stage.
    const final = stages[stages.length - 1]!;
    const finalSpec = modelSpec(final.manifest);
    const base: TaskResultBase = {
      v: PROTOCOL_VERSION,
      id,
      ts: Date.now(),
      deviceId: this.d.deviceId,
      pipeline: config.name,
      model: { name: final.manifest.name, version: final.manifest.version },
      task: finalSpec.task,
      ...(stages.length > 1 ? { chain: stages.map((m) => ({ name: m.manifest.name, version: m.manifest.version })) } : {}),
    };
    if (prepared.buffered) {
      for (const l of leases) l.release();
      return { result: { ...base, latencyMs: 0, buffered: true }, record: undefined };
    }
    const dedupe = req.source === 'mqtt' && givenId && config.stream.dedupeIds > 0 && !prepared.window;
    if (dedupe) {
      if (this.#recentIds.has(id)) {
        for (const l of leases) l.release();
        metrics.inputDropped.inc({ pipeline: config.name, reason: 'duplicate' });
        throw new EdgefleetError(ErrorCode.CONFLICT, `reading ${id} was already accepted (redelivery)`, { details: { reason: 'duplicate' } });
      }
      this.#recentIds.add(id);
      if (this.#recentIds.size > config.stream.dedupeIds) this.#recentIds.delete(this.#recentIds.values().next().value as string);
    }
    // A chunk of samples may complete several windows: each is run in order (a stateful model
    // must see every frame), published, and recorded; the last one is the request's answer.
    const windows: Extract<PreparedV2, { buffered: false }>[] = [...(prepared.earlier ?? []).map((w) => ({ ...prepared, ...w, earlier: undefined })), prepared];
    const ctx = { model: final, spec: finalSpec, base, id, inputTs, dedupe, req, t0, extra };
    try {
      for (const [k, w] of windows.entries()) {
        const out = await this.#runOne(stages, w, k === windows.length - 1 ? ctx : { ...ctx, id: `${id}#${k}`, base: { ...base, id: `${id}#${k}` }, dedupe: false });
        if (k === windows.length - 1) return out;
        if (out.record) await this.d.sink.append(out.record.stream, out.record.kind, out.record.body, out.record.ts);
      }
      throw new EdgefleetError(ErrorCode.INTERNAL, 'no window to run');
    } finally {
      lease.release();
      for (const l of leases) l.release();
    }
  }

  /** Runs one prepared input through the stages, then health, drift, publish and the record (v2). */
  async #runOne(
    stages: LocalModel[],
    prepared: Extract<PreparedV2, { buffered: false }>,
    ctx: { model: LocalModel; spec: ModelSpec; base: TaskResultBase; id: string; inputTs: number | undefined; dedupe: boolean; req: InferRequest; t0: number; extra: Record<string, unknown> | undefined },
  ): Promise<{ result: PipelineResult; record: PendingRecord | undefined }> {
    const { config, metrics } = this.d;
    const { model, spec, base, id, inputTs, dedupe } = ctx;
    let run;
    try {
      run = await this.#runner.run(stages, prepared, { topK: config.topK, thresholds: config.thresholds });
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.INFERENCE);
      if (dedupe) this.#recentIds.delete(id);
      metrics.inferences.inc({ pipeline: config.name, model: model.manifest.name, version: model.manifest.version, outcome: e.code === ErrorCode.OVERLOADED ? 'overloaded' : 'error' });
      if (e.code === ErrorCode.BAD_INPUT) this.#reject(e);
      else this.#logFailure(e);
      if (!NOT_THE_MODELS_FAULT.has(e.code)) this.d.health?.record(model.manifest.name, model.manifest.version, { ok: false, classes: spec.labels.length });
      throw e;
    }
    if (run.buffered) return { result: { ...base, latencyMs: 0, buffered: true }, record: undefined };
    const o = run.outcome;
    this.d.health?.record(model.manifest.name, model.manifest.version, {
      ok: true,
      latencyMs: run.engineMs,
      ...(o.classIndex !== undefined ? { classIndex: o.classIndex, confidence: o.confidence } : {}),
      classes: spec.labels.length,
      ...(spec.task !== 'classification' ? { spec, values: o.values } : {}),
    });
    if (spec.task === 'classification' && o.classIndex !== undefined) {
      const c = { label: spec.labels[o.classIndex] ?? '', index: o.classIndex, confidence: o.confidence ?? 0, margin: o.values['margin'] ?? 0, scores: o.scores ?? [] };
      this.d.drift?.record(config.name, model.manifest, prepared.raw ?? prepared.stats, c, ctx.req, id, base.ts);
    } else if (spec.task !== 'classification') this.d.drift?.recordTask(config.name, model.manifest, prepared.raw ?? prepared.stats, o, ctx.req, id, base.ts);
    const latencyMs = Math.round(run.engineMs * 1000) / 1000;
    const result: TaskResult = { ...base, ...o.fields, latencyMs };
    if (inputTs !== undefined) result.inputTs = inputTs;
    if (prepared.stats) {
      result.image = { brightness: round6(prepared.stats.brightness), contrast: round6(prepared.stats.contrast), sharpness: round6(prepared.stats.sharpness) };
    }
    if (prepared.window) result.window = prepared.window.firstId === undefined ? { firstTs: prepared.window.firstTs, lastTs: prepared.window.lastTs } : { ...prepared.window };
    this.d.publisher.publish(this.outputTopic, JSON.stringify(result), { qos: config.output.qos });
    this.#okCounter(model).inc();
    this.#latency.observe((performance.now() - ctx.t0) / 1000);
    const record: PendingRecord | undefined = config.output.telemetry
      ? {
          stream: INFERENCE_STREAM,
          kind: 'inference',
          ts: base.ts,
          body: {
            id,
            pipeline: config.name,
            model: model.manifest.name,
            version: model.manifest.version,
            task: spec.task,
            ...o.record,
            latencyMs,
            inputTs: inputTs ?? null,
            source: ctx.req.source ?? null,
            ...(result.image ? { image: result.image } : {}),
            ...(result.window ? { window: result.window } : {}),
            ...(result.chain ? { chain: result.chain } : {}),
            ...ctx.extra,
          },
        }
      : undefined;
    return { result, record };
  }

  /** A JSON request's reading (parsed under the input's cap when it came as bytes). */
  #reading(req: Extract<InferRequest, { kind: 'json' }>): Reading {
    if (Buffer.isBuffer(req.body) || typeof req.body === 'string') {
      const input = this.d.config.input;
      const max = req.source === 'http' ? Number.MAX_SAFE_INTEGER : input.type === 'mqtt' ? (input.maxPayloadBytes ?? DEFAULT_MAX_JSON_BYTES) : DEFAULT_MAX_JSON_BYTES;
      const decoded = decodeJson(ReadingSchema, req.body, max);
      if (!decoded.ok) throw decoded.error;
      return decoded.value;
    }
    const fast = fastReading(req.body);
    if (fast) return fast;
    const parsed = ReadingSchema.safeParse(req.body);
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_PAYLOAD, formatIssues(parsed.error));
    return parsed.data;
  }

  /** Appends a deferred record in one synchronous commit; throws STORAGE (counted) on failure. */
  commitNow(record: PendingRecord): { epoch: number; seq: number } {
    try {
      return this.d.sink.appendNow(record.stream, record.kind, record.body, record.ts);
    } catch (err) {
      throw this.#failed(toEdgefleetError(err, ErrorCode.STORAGE));
    }
  }

  #fixedJson(model: LocalModel): string {
    let fixed = this.#fixed.get(model.key);
    if (fixed === undefined) {
      if (this.#fixed.size >= 4) this.#fixed.clear();
      fixed = fixedResultJson(this.d.deviceId, this.d.config.name, model.manifest.name, model.manifest.version);
      this.#fixed.set(model.key, fixed);
    }
    return fixed;
  }

  #lease(): ModelLease {
    if (this.d.acquire) {
      const lease = this.d.acquire();
      if (!lease) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `pipeline ${this.d.config.name}: model ${this.d.config.model} is not active`);
      return lease;
    }
    return { model: this.#model(), release: noRelease };
  }

  #model(): LocalModel {
    const m = this.d.model();
    if (!m) throw new EdgefleetError(ErrorCode.UNAVAILABLE, `pipeline ${this.d.config.name}: model ${this.d.config.model} is not active`);
    return m;
  }

  #okCounter(model: LocalModel): { inc(): void } {
    let c = this.#ok.get(model.key);
    if (!c) {
      // Versions come and go with rollouts; a handful are live at once.
      if (this.#ok.size >= 16) this.#ok.clear();
      c = this.d.metrics.inferences.labels(this.d.config.name, model.manifest.name, model.manifest.version, 'ok');
      this.#ok.set(model.key, c);
    }
    return c;
  }

  async #prepareImage(model: LocalModel, req: InferRequest): Promise<Prepared> {
    if (model.manifest.manifestVersion !== 1) throw new EdgefleetError(ErrorCode.INTERNAL, `model ${model.key} is not a v1 model`);
    const spec = model.manifest.preprocessing;
    if (spec.kind !== 'image') throw new EdgefleetError(ErrorCode.INTERNAL, `model ${model.key} takes no images`);
    if (req.kind !== 'image') {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `pipeline ${this.d.config.name} takes images (JPEG, PNG, ...), not JSON`, { details: { reason: 'wrong_kind' } });
    }
    // HTTP bodies were capped by the server (http.maxImageBytes); streams by their input's cap.
    const input = this.d.config.input;
    const maxInputBytes =
      req.source === 'http' ? undefined : input.type === 'folder' ? input.maxFileBytes : (input.maxPayloadBytes ?? DEFAULT_MAX_IMAGE_BYTES);
    const t = await preprocessImage(spec, req.bytes, { maxInputBytes, maxInputPixels: this.d.maxInputPixels, buffers: this.#buffers });
    const given = validCorrelationId(req.id);
    return { data: t.data, dims: t.dims, id: given ?? randomUUID(), givenId: given !== undefined, inputTs: req.ts, stats: t.stats };
  }

  #prepareTabular(model: LocalModel, req: InferRequest): Prepared {
    if (model.manifest.manifestVersion !== 1) throw new EdgefleetError(ErrorCode.INTERNAL, `model ${model.key} is not a v1 model`);
    const spec = model.manifest.preprocessing;
    if (spec.kind !== 'tabular') throw new EdgefleetError(ErrorCode.INTERNAL, `model ${model.key} takes images`);
    if (req.kind !== 'json') {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `pipeline ${this.d.config.name} takes JSON readings ({"values": [...]} or {"features": {...}}), not images`, { details: { reason: 'wrong_kind' } });
    }
    const reading = this.#reading(req);
    const t = preprocessTabular(spec, reading);
    const given = reading.id ?? validCorrelationId(req.id);
    return { data: t.data, dims: t.dims, id: given ?? randomUUID(), givenId: given !== undefined, inputTs: reading.ts ?? req.ts, raw: t.raw };
  }

  #reject(error: EdgefleetError): void {
    const reason = rejectReason(error);
    this.d.metrics.inputRejected.inc({ pipeline: this.d.config.name, reason });
    this.#throttle.run(`reject:${reason}`, (suppressed) =>
      this.d.log.warn({ pipeline: this.d.config.name, reason, code: error.code, error: error.message, suppressed }, 'input rejected'),
    );
  }

  #failed(e: EdgefleetError): EdgefleetError {
    const model = this.d.model();
    this.d.metrics.inferences.inc({
      pipeline: this.d.config.name,
      model: model?.manifest.name ?? this.d.config.model,
      version: model?.manifest.version ?? 'unknown',
      outcome: e.code === ErrorCode.STORAGE ? 'storage_error' : 'error',
    });
    this.#logFailure(e);
    return e;
  }

  #logFailure(e: EdgefleetError): void {
    this.#throttle.run(`infer:${e.code}`, (suppressed) =>
      this.d.log.warn({ pipeline: this.d.config.name, code: e.code, err: e, suppressed }, 'inference failed'),
    );
  }
}

/** Module-level so a lease without `acquire` allocates no closure per request. */
const noRelease = (): void => undefined;

const jsonNumber = (x: number): string => (Number.isFinite(x) ? String(x) : 'null');

/** The part of a result's JSON that is the same for every result of one model version. */
export function fixedResultJson(deviceId: string, pipeline: string, model: string, version: string): string {
  return `,"deviceId":${JSON.stringify(deviceId)},"pipeline":${JSON.stringify(pipeline)},"model":{"name":${JSON.stringify(model)},"version":${JSON.stringify(version)}}`;
}

/**
 * `JSON.stringify(result)`, character for character (same key order, strings escaped by
 * JSON.stringify, non-finite numbers as null, absent optional fields left out), with the
 * per-model fields pasted from `fixed` (fixedResultJson). About 1.4 µs less main-thread CPU per
 * published result than the generic walk (issue #5); test/unit/postprocess-fast-paths.test.ts
 * holds it to JSON.stringify. A field added to PipelineResult must be added here too (the test
 * builds every field, so it fails until it is).
 */
export function resultJson(r: ClassifierResult, fixed: string): string {
  const q = JSON.stringify;
  let s = `{"v":${jsonNumber(r.v)},"id":${q(r.id)},"ts":${jsonNumber(r.ts)}${fixed},"label":${q(r.label)},"confidence":${jsonNumber(r.confidence)},"decision":${r.decision === null ? 'null' : q(r.decision)},"topK":[`;
  for (let i = 0; i < r.topK.length; i++) {
    const t = r.topK[i]!;
    s += `${i === 0 ? '' : ','}{"label":${q(t.label)},"score":${jsonNumber(t.score)}}`;
  }
  s += '],"scores":[';
  for (let i = 0; i < r.scores.length; i++) s += (i === 0 ? '' : ',') + jsonNumber(r.scores[i]!);
  s += `],"latencyMs":${jsonNumber(r.latencyMs)}`;
  if (r.inputTs !== undefined) s += `,"inputTs":${jsonNumber(r.inputTs)}`;
  if (r.image !== undefined) {
    const m = r.image;
    s += `,"image":{"brightness":${jsonNumber(m.brightness)},"contrast":${jsonNumber(m.contrast)},"sharpness":${jsonNumber(m.sharpness)}}`;
  }
  return `${s}}`;
}

/** The `k` best labels with their scores, best first. */
export function topK(labels: readonly string[], scores: readonly number[], k: number): { label: string; score: number }[] {
  const keep = Math.max(1, k);
  // Insertion into a short list instead of sorting every class (hot path, issue #5). Same order
  // as a stable sort by descending score: a later equal score goes after the earlier one. NaN
  // has no order, so a NaN score takes the sort (whose result for it is what it always was).
  const top: { label: string; score: number }[] = [];
  for (let i = 0; i < scores.length; i++) {
    const score = scores[i] as number;
    if (Number.isNaN(score)) return sortedTopK(labels, scores, keep);
    if (top.length === keep && !(score > top[keep - 1]!.score)) continue;
    let at = top.length;
    while (at > 0 && score > top[at - 1]!.score) at--;
    top.splice(at, 0, { label: labels[i] ?? String(i), score });
    if (top.length > keep) top.pop();
  }
  return top;
}

function sortedTopK(labels: readonly string[], scores: readonly number[], keep: number): { label: string; score: number }[] {
  return scores
    .map((score, i) => ({ label: labels[i] ?? String(i), score }))
    .sort((a, b) => b.score - a.score)
    .slice(0, keep);
}

/** Best-scoring label whose score is above its threshold (labels without one always qualify); null if none. */
export function decide(labels: readonly string[], scores: readonly number[], thresholds: Readonly<Record<string, number>> | undefined): string | null {
  let best: string | null = null;
  let bestScore = -Infinity;
  for (let i = 0; i < scores.length; i++) {
    const s = scores[i] as number;
    const label = labels[i] ?? String(i);
    const min = thresholds?.[label];
    if (min !== undefined && !(s > min)) continue;
    if (s > bestScore) {
      best = label;
      bestScore = s;
    }
  }
  return best;
}
