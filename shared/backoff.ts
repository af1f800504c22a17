/**
 * Jittered exponential backoff ("full jitter"). mqtt.js reconnects every second without
 * backoff (mqttjs/MQTT.js#561): after a hub restart a whole fleet would reconnect in lockstep.
 */
import { z } from 'zod';

export const BackoffSchema = z.object({
  initialMs: z.number().int().positive().default(500),
  maxMs: z.number().int().positive().default(30_000),
  factor: z.number().min(1).default(2),
  /** 0 = no jitter, 1 = delay drawn uniformly from [0, cap]. */
  jitter: z.number().min(0).max(1).default(0.5),
});
export type BackoffOptions = z.infer<typeof BackoffSchema>;

export class Backoff {
  #attempt = 0;
  constructor(
    private readonly opts: BackoffOptions,
    private readonly random: () => number = Math.random,
  ) {}

  /** Delay before the next attempt; grows until `reset()`. */
  next(): number {
    const cap = Math.min(this.opts.maxMs, this.opts.initialMs * this.opts.factor ** this.#attempt);
    this.#attempt++;
    const jitter = this.opts.jitter * cap * this.random();
    return Math.max(1, Math.round(cap - jitter));
  }

  reset(): void {
    this.#attempt = 0;
  }

  get attempts(): number {
    return this.#attempt;
  }
}
