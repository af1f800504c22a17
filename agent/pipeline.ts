/**
 * One pipeline: input messages → decode → preprocess → inference (worker pool) → postprocess →
 * live result on the output topic, and the result kept as telemetry in the outbox.
 * Bad input is counted, logged (throttled) and dropped; it never stops the pipeline.
 */
import { decodeJson } from '../shared/codec.ts';
import { ErrorCode, toEdgefleetError, type EdgefleetError } from '../shared/errors.ts';
import type { Component } from '../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../shared/log.ts';
import { PROTOCOL_VERSION, topics } from '../shared/protocol.ts';
import type { PipelineConfig } from './config.ts';
import type { PipelineMetrics } from './metrics.ts';
import type { LocalModel } from './models/local-models.ts';
import { classify } from './preprocess/postprocess.ts';
import { preprocessTabular, ReadingSchema } from './preprocess/tabular.ts';

export interface Publisher {
  publish(topic: string, payload: Buffer | string, opts?: { qos?: 0 | 1; retain?: boolean }): boolean;
}
export interface InputBus {
  subscribe(topicFilter: string, handler: (topic: string, payload: Buffer) => void): void;
}
export interface RecordSink {
  append(stream: string, kind: string, body: Record<string, unknown>, ts?: number): Promise<{ epoch: number; seq: number }>;
}
export interface Inferer {
  infer(
    key: string,
    input: { data: Float32Array; dims: number[] },
  ): Promise<{ outputs: Record<string, { data: Float32Array; dims: number[] }>; latencyMs: number }>;
}

export const INFERENCE_STREAM = 'inference';

export interface PipelineDeps {
  deviceId: string;
  config: PipelineConfig;
  model: LocalModel;
  engine: Inferer;
  bus: InputBus;
  publisher: Publisher;
  sink: RecordSink;
  metrics: PipelineMetrics;
  log: Logger;
}

export class Pipeline implements Component {
  readonly name: string;
  readonly inputTopic: string;
  readonly outputTopic: string;
  readonly #throttle = new LogThrottle(1000);
  #accepting = false;
  #inFlight = 0;
  #idle: (() => void) | undefined;

  constructor(private readonly d: PipelineDeps) {
    this.name = `pipeline:${d.config.name}`;
    this.inputTopic = d.config.input.topic ?? topics.input(d.deviceId, d.config.name);
    this.outputTopic = d.config.output.topic ?? topics.output(d.deviceId, d.config.name);
    if (d.model.manifest.preprocessing.kind !== 'tabular') {
      throw toEdgefleetError(
        new Error(`pipeline ${d.config.name}: MQTT JSON input needs a tabular model, ${d.model.key} takes images`),
        ErrorCode.BAD_CONFIG,
      );
    }
  }

  start(): Promise<void> {
    this.#accepting = true;
    this.d.bus.subscribe(this.inputTopic, (_topic, payload) => void this.handle(payload));
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.#accepting = false;
    if (this.#inFlight > 0) await new Promise<void>((r) => (this.#idle = r));
  }

  /** Handles one input message; resolves when its result is published and in the outbox. */
  async handle(payload: Buffer): Promise<void> {
    if (!this.#accepting) return;
    const t0 = performance.now();
    const { config, model, metrics } = this.d;
    const decoded = decodeJson(ReadingSchema, payload, config.input.maxPayloadBytes);
    if (!decoded.ok) return this.#reject(decoded.error.code === ErrorCode.PAYLOAD_TOO_LARGE ? 'too_large' : decoded.error.message.startsWith('malformed') ? 'malformed' : 'schema', decoded.error);
    const reading = decoded.value;
    const spec = model.manifest.preprocessing;
    if (spec.kind !== 'tabular') return;
    let tensor;
    try {
      tensor = preprocessTabular(spec, reading);
    } catch (err) {
      return this.#reject('bad_input', toEdgefleetError(err, ErrorCode.BAD_INPUT));
    }
    this.#inFlight++;
    const labels = { pipeline: config.name, model: model.manifest.name, version: model.manifest.version };
    try {
      const res = await this.d.engine.infer(model.key, { data: tensor.data, dims: tensor.dims });
      const first = res.outputs[model.manifest.outputs[0]!.name] ?? Object.values(res.outputs)[0];
      if (!first) throw new Error('model returned no outputs');
      const c = classify(model.manifest.postprocessing, first.data);
      const ts = Date.now();
      const latencyMs = Math.round(res.latencyMs * 1000) / 1000;
      this.d.publisher.publish(
        this.outputTopic,
        JSON.stringify({
          v: PROTOCOL_VERSION,
          id: reading.id,
          ts,
          deviceId: this.d.deviceId,
          pipeline: config.name,
          model: { name: model.manifest.name, version: model.manifest.version },
          label: c.label,
          confidence: c.confidence,
          scores: c.scores,
          latencyMs,
        }),
        { qos: config.output.qos },
      );
      if (config.output.telemetry) {
        await this.d.sink.append(
          INFERENCE_STREAM,
          'inference',
          {
            id: reading.id ?? null,
            pipeline: config.name,
            model: model.manifest.name,
            version: model.manifest.version,
            label: c.label,
            confidence: c.confidence,
            margin: c.margin,
            latencyMs,
            inputTs: reading.ts ?? null,
          },
          ts,
        );
      }
      metrics.inferences.inc({ ...labels, outcome: 'ok' });
      metrics.latency.observe({ pipeline: config.name }, (performance.now() - t0) / 1000);
    } catch (err) {
      const e = toEdgefleetError(err, ErrorCode.INFERENCE);
      const outcome = e.code === ErrorCode.OVERLOADED ? 'overloaded' : e.code === ErrorCode.STORAGE ? 'storage_error' : 'error';
      metrics.inferences.inc({ ...labels, outcome });
      this.#throttle.run(`infer:${e.code}`, (suppressed) =>
        this.d.log.warn({ pipeline: config.name, code: e.code, err: e, suppressed }, 'inference failed'),
      );
    } finally {
      this.#inFlight--;
      if (this.#inFlight === 0 && this.#idle) {
        this.#idle();
        this.#idle = undefined;
      }
    }
  }

  #reject(reason: string, error: EdgefleetError): void {
    this.d.metrics.inputRejected.inc({ pipeline: this.d.config.name, reason });
    this.#throttle.run(`reject:${reason}`, (suppressed) =>
      this.d.log.warn({ pipeline: this.d.config.name, reason, code: error.code, error: error.message, suppressed }, 'input rejected'),
    );
  }
}
