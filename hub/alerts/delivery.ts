/**
 * Alert delivery: every alert event goes to the MQTT topic `edgefleet/v1/$hub/alerts` (QoS 1,
 * not retained: consumers subscribed at the time get it; the API is the record) and to each
 * configured webhook. Webhook deliveries are rows in the store before the first attempt, so a
 * hub restart resumes them; each is POSTed until a 2xx, with jittered exponential backoff
 * (shared/backoff.ts) up to alerts.delivery.maxAttempts, every attempt logged on the row.
 * Receivers get `x-edgefleet-delivery: <id>` to drop the (rare) repeat after a crash between a
 * successful POST and its record, and `x-edgefleet-signature` when the target has a secret.
 *
 * Also the retraining hook's outputs: its webhook (target `retraining`, same queue) and the
 * `drift.sample` command to the devices an alert names.
 */
import { createHmac } from 'node:crypto';
import { Counter, type Registry } from 'prom-client';
import { Backoff } from '../../shared/backoff.ts';
import { encodeJson } from '../../shared/codec.ts';
import { toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { PROTOCOL_VERSION, type Command } from '../../shared/protocol.ts';
import { HUB_ALERTS_TOPIC } from '../broker/acl.ts';
import type { MessageBus } from '../broker/bus.ts';
import type { CommandSender } from '../commands/sender.ts';
import type { DeliveryRecord, HubStore, NewDelivery } from '../store/store.ts';
import type { AlertsConfig, WebhookTarget } from './config.ts';

/** Where alert events are published; consumers may subscribe (hub/broker/acl.ts). */
export const ALERTS_TOPIC = HUB_ALERTS_TOPIC;
export const SAMPLE_COMMAND = 'drift.sample';

export interface AlertDeliveryOptions {
  store: HubStore;
  bus: MessageBus;
  /** Signs and publishes drift.sample (issue #14). */
  commands: CommandSender;
  log: Logger;
  registry: Registry;
  config: AlertsConfig;
  now: () => number;
  random?: () => number;
  /** Pipeline that runs `model` on a device (drift.sample needs it); undefined when unknown. */
  pipelineOf?: (deviceId: string, model: string) => string | undefined;
  /** Opens the hub's sample request that a drift.sample command carries (hub/drift/sample-requests.ts; issue #14). */
  openSampleRequest?: (deviceId: string, pipeline: string, alertId: string) => Promise<Record<string, unknown>>;
}

export class AlertDelivery implements Component {
  readonly name = 'alert-delivery';
  readonly #o: AlertDeliveryOptions;
  readonly #deliveries: Counter<'target' | 'outcome'>;
  readonly #published: Counter<'outcome'>;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> = Promise.resolve();
  #stopped = true;

  constructor(opts: AlertDeliveryOptions) {
    this.#o = opts;
    this.#deliveries = new Counter({
      name: 'edgefleet_hub_alert_deliveries_total',
      help: 'Webhook delivery attempts, by target (webhook, retraining) and outcome (delivered, retry, failed).',
      labelNames: ['target', 'outcome'],
      registers: [opts.registry],
    });
    this.#published = new Counter({
      name: 'edgefleet_hub_alert_publishes_total',
      help: 'Alert events published on MQTT, by outcome.',
      labelNames: ['outcome'],
      registers: [opts.registry],
    });
  }

  start(_signal: AbortSignal): Promise<void> {
    this.#stopped = false;
    const loop = (): void => {
      this.#timer = setTimeout(() => {
        void this.flush().finally(() => {
          if (!this.#stopped) loop();
        });
      }, this.#o.config.delivery.pollMs);
      this.#timer.unref();
    };
    loop();
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
  }

  /** Publishes an event on MQTT and queues it for every webhook. */
  async send(alertId: string, event: string, body: Record<string, unknown>): Promise<void> {
    const payload = { v: PROTOCOL_VERSION, type: 'alert', event, ...body };
    try {
      await this.#o.bus.publish(ALERTS_TOPIC, encodeJson(payload), { qos: 1 });
      this.#published.inc({ outcome: 'ok' });
    } catch (err) {
      this.#published.inc({ outcome: 'failed' });
      this.#o.log.warn({ err: toEdgefleetError(err), alertId, event }, 'cannot publish alert');
    }
    await this.#enqueue(this.#o.config.webhooks.map((w) => ({ target: 'webhook', w })), alertId, event, payload);
  }

  /** The retraining hook for a new alert: its webhook, and `drift.sample` to the named devices. */
  async retraining(alertId: string, model: string, devices: readonly string[], body: Record<string, unknown>): Promise<void> {
    const r = this.#o.config.retraining;
    if (!r) return;
    if (r.webhook) await this.#enqueue([{ target: 'retraining', w: r.webhook }], alertId, 'retraining', { v: PROTOCOL_VERSION, type: 'retraining', ...body });
    if (!r.sampleDevices) return;
    for (const deviceId of devices) {
      const pipeline = this.#o.pipelineOf?.(deviceId, model) ?? r.pipelines[model];
      if (!pipeline) {
        this.#o.log.warn({ deviceId, alertId, model }, 'drift.sample not sent: pipeline of the model unknown (set alerts.retraining.pipelines)');
        continue;
      }
      try {
        const request = await this.#o.openSampleRequest?.(deviceId, pipeline, alertId);
        const cmd: Command = { v: PROTOCOL_VERSION, type: 'command', id: `${SAMPLE_COMMAND}:${alertId}`, ts: this.#o.now(), name: SAMPLE_COMMAND, args: { pipeline, max: r.maxSamples, ...request } };
        await this.#o.commands.send(deviceId, cmd);
      } catch (err) {
        this.#o.log.warn({ err: toEdgefleetError(err), deviceId, alertId }, 'cannot send drift.sample');
      }
    }
  }

  async #enqueue(targets: readonly { target: string; w: WebhookTarget }[], alertId: string, event: string, payload: unknown): Promise<void> {
    if (targets.length === 0) return;
    const at = this.#o.now();
    const text = JSON.stringify(payload);
    const rows: NewDelivery[] = targets.map(({ target, w }) => ({ alertId, target, url: w.url, event, payload: text, at }));
    await this.#o.store.addDeliveries(rows);
    // Try at once rather than at the next poll.
    void this.flush();
  }

  /** Attempts every due delivery once; flushes run one at a time. Never throws. */
  flush(): Promise<void> {
    const run = this.#running.then(() => this.#flush());
    this.#running = run.catch((err: unknown) => this.#o.log.error({ err: toEdgefleetError(err) }, 'alert delivery failed'));
    return this.#running;
  }

  async #flush(): Promise<void> {
    for (;;) {
      if (this.#stopped) return;
      const due = await this.#o.store.dueDeliveries(this.#o.now(), 20);
      if (due.length === 0) return;
      await Promise.all(due.map((d) => this.#attempt(d)));
    }
  }

  #secretOf(d: DeliveryRecord): string | undefined {
    const c = this.#o.config;
    const all = [...c.webhooks, ...(c.retraining?.webhook ? [c.retraining.webhook] : [])];
    return all.find((w) => w.url === d.url)?.secret;
  }

  async #attempt(d: DeliveryRecord): Promise<void> {
    const { delivery } = this.#o.config;
    const headers: Record<string, string> = { 'content-type': 'application/json', 'x-edgefleet-delivery': String(d.id), 'x-edgefleet-event': d.event };
    const secret = this.#secretOf(d);
    if (secret) headers['x-edgefleet-signature'] = `sha256=${createHmac('sha256', secret).update(d.payload).digest('hex')}`;
    let status: number | undefined;
    let error: string | undefined;
    try {
      const res = await fetch(d.url, { method: 'POST', headers, body: d.payload, signal: AbortSignal.timeout(delivery.timeoutMs) });
      status = res.status;
      await res.arrayBuffer().catch(() => undefined);
    } catch (err) {
      error = (err as Error).message;
    }
    const at = this.#o.now();
    const ok = status !== undefined && status >= 200 && status < 300;
    if (ok) {
      await this.#o.store.recordDeliveryAttempt(d.id, { at, ok: true, status });
      this.#deliveries.inc({ target: d.target, outcome: 'delivered' });
      this.#o.log.info({ delivery: d.id, alertId: d.alertId, target: d.target, attempts: d.attempts + 1 }, 'alert delivered');
      return;
    }
    const attempts = d.attempts + 1;
    const giveUp = attempts >= delivery.maxAttempts;
    const backoff = new Backoff({ initialMs: delivery.initialMs, maxMs: delivery.maxMs, factor: 2, jitter: 0.5 }, this.#o.random);
    let wait = 0;
    for (let i = 0; i < attempts; i++) wait = backoff.next();
    await this.#o.store.recordDeliveryAttempt(d.id, { at, ok: false, ...(status === undefined ? {} : { status }), ...(error === undefined ? {} : { error }), nextAt: at + wait, giveUp });
    this.#deliveries.inc({ target: d.target, outcome: giveUp ? 'failed' : 'retry' });
    const what = error ?? `HTTP ${status ?? '?'}`;
    if (giveUp) this.#o.log.error({ delivery: d.id, alertId: d.alertId, url: d.url, attempts, error: what }, 'alert delivery failed for good');
    else this.#o.log.warn({ delivery: d.id, alertId: d.alertId, url: d.url, attempts, error: what, retryInMs: wait }, 'alert delivery failed; will retry');
  }
}
