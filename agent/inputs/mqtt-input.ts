/**
 * MQTT input of one pipeline: subscribes on a bus (the hub link, or another broker, see
 * mqtt-broker-input.ts) and hands each message to the pipeline's stream queue (drop oldest on
 * overload). `json` payloads are readings that carry their own id; `image` payloads are encoded
 * images whose correlation id is the topic level after the input topic
 * (`edgefleet/v1/<device>/in/<pipeline>/<id>`), or a generated one.
 *
 * With a `guard`, a retained delivery of a reading already inferred (at every subscribe: agent
 * restart, link reconnect) is skipped and counted (`onReplay`), see retained-guard.ts.
 */
import type { Component } from '../../shared/lifecycle.ts';
import { topics } from '../../shared/protocol.ts';
import { validCorrelationId, type InputBus, type Pipeline } from '../pipeline.ts';
import type { RetainedReplayGuard } from './retained-guard.ts';

export class MqttInput implements Component {
  readonly name: string;
  readonly topic: string;
  readonly format: 'json' | 'image';

  constructor(
    private readonly o: {
      deviceId: string;
      pipeline: Pipeline;
      bus: InputBus;
      topic?: string;
      format?: 'json' | 'image';
      guard?: RetainedReplayGuard;
      onReplay?: () => void;
    },
  ) {
    const p = o.pipeline;
    this.name = `input:mqtt:${p.pipelineName}`;
    this.topic = o.topic ?? topics.input(o.deviceId, p.pipelineName);
    this.format = o.format ?? (p.inputKind === 'image' ? 'image' : 'json');
  }

  start(): Promise<void> {
    const { pipeline, bus } = this.o;
    if (this.format === 'json') {
      bus.subscribe(this.topic, (topic, payload, retain) => {
        if (!this.#replay(topic, payload, retain)) pipeline.submit({ kind: 'json', body: payload, source: 'mqtt' });
      });
      return Promise.resolve();
    }
    const handler = (topic: string, payload: Buffer, retain: boolean): void => {
      if (!this.#replay(topic, payload, retain)) pipeline.submit({ kind: 'image', bytes: payload, id: this.#idOf(topic), source: 'mqtt' });
    };
    bus.subscribe(this.topic, handler);
    // Without a wildcard of its own, also take `<topic>/<id>`: the id travels in the topic
    // because a binary payload has nowhere else to carry it (MQTT 3.1.1 has no user properties).
    if (!/[+#]/.test(this.topic)) bus.subscribe(`${this.topic}/+`, handler);
    return Promise.resolve();
  }

  /** Nothing to undo: the bus outlives the input and a stopped pipeline ignores messages. */
  stop(): Promise<void> {
    return Promise.resolve();
  }

  #replay(topic: string, payload: Buffer, retain: boolean): boolean {
    if (!this.o.guard?.isReplay(topic, payload, retain)) return false;
    this.o.onReplay?.();
    return true;
  }

  #idOf(topic: string): string | undefined {
    if (topic === this.topic) return undefined;
    const last = topic.slice(topic.lastIndexOf('/') + 1);
    return validCorrelationId(last);
  }
}
