/**
 * Feedback over MQTT: `edgefleet/v1/<deviceId>/feedback`, payload FeedbackBatchSchema, the items
 * about inferences of that device. Who may publish there (hub/broker/acl.ts): the device itself,
 * a sensor of that device (e.g. a downstream gauge that measures the true state), and consumer
 * principals (an MES that learns at end-of-line test whether a part was really defective).
 *
 * Fire and forget: MQTT 3.1.1 has no reply, and consumers and sensors may not subscribe to the
 * device's subtree, so outcomes go to the metric `edgefleet_hub_feedback_items_total{source="mqtt"}`
 * and a throttled log line. A sender that needs per-item outcomes uses `POST /v1/feedback`.
 * Subscribed through the MessageBus like ingest, so it works behind an external broker too.
 */
import { Counter, type Registry } from 'prom-client';
import { decodeJson } from '../../shared/codec.ts';
import { toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { TOPIC_ROOT, parseTopic } from '../../shared/protocol.ts';
import type { MessageBus } from '../broker/bus.ts';
import { FeedbackBatchSchema, type FeedbackService } from './feedback.ts';

export const FEEDBACK_TOPIC_LEVEL = 'feedback';
export const feedbackTopic = (deviceId: string): string => `${TOPIC_ROOT}/${deviceId}/${FEEDBACK_TOPIC_LEVEL}`;

export class MqttFeedback implements Component {
  readonly name = 'mqtt-feedback';
  readonly #o: { bus: MessageBus; feedback: FeedbackService; log: Logger; maxPayloadBytes: number };
  readonly #throttle = new LogThrottle(10_000);
  readonly #bad: Counter;
  #running = false;

  constructor(opts: { bus: MessageBus; feedback: FeedbackService; log: Logger; registry: Registry; maxPayloadBytes: number }) {
    this.#o = opts;
    this.#bad = new Counter({
      name: 'edgefleet_hub_feedback_bad_messages_total',
      help: 'MQTT feedback messages that could not be decoded or validated.',
      registers: [opts.registry],
    });
  }

  async start(_signal: AbortSignal): Promise<void> {
    this.#running = true;
    await this.#o.bus.subscribe(`${TOPIC_ROOT}/+/${FEEDBACK_TOPIC_LEVEL}`, (topic, payload) => this.#handle(topic, payload));
  }

  stop(): Promise<void> {
    this.#running = false;
    return Promise.resolve();
  }

  async #handle(topic: string, payload: Buffer): Promise<void> {
    if (!this.#running) return;
    const t = parseTopic(topic);
    if (!t || t.rest !== FEEDBACK_TOPIC_LEVEL) return;
    const d = decodeJson(FeedbackBatchSchema, payload, this.#o.maxPayloadBytes);
    if (!d.ok) {
      this.#bad.inc();
      this.#throttle.run(`bad:${t.deviceId}`, (suppressed) =>
        this.#o.log.warn({ deviceId: t.deviceId, code: d.error.code, detail: d.error.message.slice(0, 300), suppressed }, 'bad feedback message'),
      );
      return;
    }
    try {
      const r = await this.#o.feedback.submit(d.value.feedback, 'mqtt', t.deviceId);
      if (r.matched < r.received) {
        this.#throttle.run(`refused:${t.deviceId}`, (suppressed) =>
          this.#o.log.info({ deviceId: t.deviceId, received: r.received, matched: r.matched, unknown: r.unknown, ambiguous: r.ambiguous, invalidLabel: r.invalidLabel, suppressed }, 'feedback items refused'),
        );
      }
    } catch (err) {
      this.#o.log.error({ err: toEdgefleetError(err), deviceId: t.deviceId }, 'feedback not stored');
    }
  }
}
