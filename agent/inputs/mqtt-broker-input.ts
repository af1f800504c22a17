/**
 * Sensor inputs from a broker other than the hub's, typically a local Mosquitto on the gateway
 * that the plant's sensors already publish to. Inputs then keep flowing while the hub is
 * unreachable, and the outbox buffers the results (ARCHITECTURE §3). One MQTT connection per
 * broker; subscriptions are made in the connect handler so they survive reconnects, which use
 * jittered exponential backoff (mqtt.js's own is a fixed period, mqttjs#561).
 *
 * By default the session is persistent (clean: false, QoS 1 subscriptions): a standard broker
 * keeps readings that arrive while the agent restarts and delivers them when it is back.
 */
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Backoff, type BackoffOptions } from '../../shared/backoff.ts';
import type { Component } from '../../shared/lifecycle.ts';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import { topicMatches } from '../link/hub-link.ts';
import type { InputBus } from '../pipeline.ts';

export interface BrokerInputOptions {
  url: string;
  clientId: string;
  username?: string;
  password?: string;
  cleanSession: boolean;
  qos: 0 | 1;
  backoff: BackoffOptions;
  log: Logger;
}

type Handler = (topic: string, payload: Buffer, retain: boolean) => void;

export class MqttBrokerInput implements Component, InputBus {
  readonly name: string;
  readonly #subs = new Map<string, Handler[]>();
  readonly #backoff: Backoff;
  readonly #throttle = new LogThrottle(5000);
  #client: MqttClient | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;

  constructor(private readonly o: BrokerInputOptions) {
    this.name = `input-broker:${redact(o.url)}`;
    this.#backoff = new Backoff(o.backoff);
  }

  get connected(): boolean {
    return this.#client?.connected ?? false;
  }

  subscribe(filter: string, handler: Handler): void {
    const list = this.#subs.get(filter) ?? [];
    list.push(handler);
    this.#subs.set(filter, list);
    if (this.#client?.connected) this.#client.subscribe(filter, { qos: this.o.qos });
  }

  /** Connects in the background: an absent local broker must not stop the agent. */
  start(): Promise<void> {
    const opts: IClientOptions = {
      protocolVersion: 4,
      clientId: this.o.clientId,
      username: this.o.username,
      password: this.o.password,
      clean: this.o.cleanSession,
      reconnectPeriod: 0,
      reconnectOnConnackError: true,
      queueQoSZero: false,
      resubscribe: false,
    };
    const client = mqtt.connect(this.o.url, opts);
    this.#client = client;
    client.on('connect', () => {
      this.#backoff.reset();
      this.o.log.info({ url: redact(this.o.url) }, 'input broker connected');
      for (const filter of this.#subs.keys()) client.subscribe(filter, { qos: this.o.qos });
    });
    client.on('message', (topic, payload, packet) => {
      for (const [filter, handlers] of this.#subs) {
        if (topicMatches(filter, topic)) for (const h of handlers) h(topic, payload, packet.retain);
      }
    });
    // Never end() in the error handler (mqttjs#1466): 'close' follows and schedules a retry.
    client.on('error', (err) => this.#throttle.run('error', (suppressed) => this.o.log.warn({ err, suppressed }, 'input broker error')));
    client.on('close', () => {
      if (this.#stopping || this.#timer) return;
      const delay = this.#backoff.next();
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        if (!this.#stopping) client.reconnect();
      }, delay);
    });
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    const client = this.#client;
    this.#client = undefined;
    if (!client) return;
    // end(true): do not wait for in-flight QoS 1 handshakes; a persistent session redelivers.
    await client.endAsync(true);
  }
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@');
}
