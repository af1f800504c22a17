/**
 * The hub's `alerts` config section (merged into hub/config.ts): auto-resolution, webhook
 * targets with their retry policy, and the retraining hook.
 */
import { z } from 'zod';

const WebhookSchema = z.object({
  url: z.url({ protocol: /^https?$/ }),
  /** When set, each POST carries `x-edgefleet-signature: sha256=<hex HMAC of the body>`. */
  secret: z.string().min(8).max(512).optional(),
});
export type WebhookTarget = z.infer<typeof WebhookSchema>;

export const AlertsConfigSchema = z
  .object({
    /** An open or acknowledged alert resolves itself after this many evaluated windows without its finding. */
    autoResolveWindows: z.number().int().min(1).max(10_000).default(4),
    /** Every alert event (opened, acknowledged, resolved) is POSTed as JSON to each. */
    webhooks: z.array(WebhookSchema).max(16).default([]),
    /** Webhook retries: jittered exponential backoff ("full jitter" half), persisted across restarts. */
    delivery: z
      .object({
        maxAttempts: z.number().int().min(1).max(100).default(12),
        initialMs: z.number().int().min(10).default(2000),
        maxMs: z.number().int().min(10).default(10 * 60_000),
        timeoutMs: z.number().int().min(100).max(120_000).default(10_000),
        /** How often due deliveries are looked for. */
        pollMs: z.number().int().min(10).max(600_000).default(1000),
      })
      .prefault({}),
    /**
     * On a NEW drift alert: POST its evidence to `webhook` (same retries), and with
     * `sampleDevices` send `drift.sample` ({max}) to the devices the alert names, asking each
     * for a bounded sample of recent inputs (uploaded to POST /v1/samples/<deviceId>).
     */
    retraining: z
      .object({
        webhook: WebhookSchema.optional(),
        sampleDevices: z.boolean().default(true),
        maxSamples: z.number().int().min(1).max(10_000).default(50),
        /**
         * The agent's drift.sample needs a pipeline name. The hub learns it from inference
         * records; for devices it has not heard an inference from since its start, this maps
         * model name → pipeline name (e.g. { "machine-state": "vibration" }).
         */
        pipelines: z.record(z.string(), z.string().min(1).max(64)).default({}),
      })
      .optional(),
  })
  .prefault({});
export type AlertsConfig = z.infer<typeof AlertsConfigSchema>;
