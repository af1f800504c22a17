/**
 * The hub's `drift` config section (merged into hub/config.ts): how summaries are bucketed,
 * when windows are tested, how long merged counts are kept, and the device sample uploads.
 * Thresholds of the statistics themselves are shared/drift/stats.ts DRIFT_THRESHOLDS, whose
 * comments give each default's reason; `thresholds` overrides them per hub.
 */
import { z } from 'zod';
import { MAX_WINDOW_MS } from '../../shared/drift/summary.ts';

export const DriftConfigSchema = z
  .object({
    /**
     * Hub window every summary is merged into and tested per (model version, device). 15 min:
     * DRIFT_THRESHOLDS are calibrated for it (a 1 Hz device gives ~900 readings, above
     * minCount, and 96 windows a day share the per-day false-alarm budget). Agent summary
     * windows (default 60 s) must divide it; summaries that do not are refused and counted.
     */
    windowMs: z.number().int().min(1000).max(MAX_WINDOW_MS).default(900_000),
    /** A window is tested this long after it closed, so summaries still in agents' outboxes arrive first. */
    graceMs: z.number().int().min(0).max(86_400_000).default(120_000),
    /** How often the hub looks for windows due for testing (and for pruning). */
    tickMs: z.number().int().min(100).max(600_000).default(10_000),
    /** Merged counts, window reports and findings (and resolved alerts) older than this are deleted. */
    retentionDays: z.number().min(0.001).max(3650).default(30),
    /** How often retention runs. */
    pruneEveryMs: z.number().int().min(1000).default(3_600_000),
    /**
     * The CUSUMs live in memory; at start each model version replays this many of its latest
     * evaluated windows (from the stored device rows) to rebuild them, without alerting again.
     */
    cusumReplayWindows: z.number().int().min(0).max(1000).default(16),
    /** Overrides of shared/drift/stats.ts DRIFT_THRESHOLDS (e.g. { psiMin: 0.2 }). */
    thresholds: z
      .object({
        alphaPerDay: z.number().positive().max(1),
        alpha: z.number().positive().max(1),
        psiMin: z.number().nonnegative(),
        shiftMinSd: z.number().nonnegative(),
        minExpected: z.number().positive(),
        minCount: z.number().int().min(1),
        minPeers: z.number().int().min(1),
        cusumK: z.number().nonnegative(),
        cusumH: z.number().positive(),
        cusumMinCount: z.number().int().min(1),
      })
      .partial()
      .default({}),
    /** Input samples devices upload for labelling (POST /v1/samples/<deviceId>). */
    samples: z
      .object({
        /** Largest upload body: the byte quota of one sample request (an upload fulfils its request). */
        maxBytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(16 * 1024 * 1024),
        maxItems: z.number().int().min(1).max(100_000).default(1000),
        /**
         * Bytes one device may store over any rolling 24 h (issue #14: one device wrote 177 MiB
         * unasked). 64 MiB: four full-size requests a day, far above what the retraining hook asks
         * (one request per drift alert naming the device).
         */
        maxBytesPerDay: z.number().int().min(1024).max(64 * 1024 * 1024 * 1024).default(64 * 1024 * 1024),
        /**
         * A sample request closes this long after the hub issued it. 6 h: the command waits in the
         * broker for an offline device, and a sample taken hours after the alert still shows the drift.
         */
        requestTtlMs: z.number().int().min(1000).max(7 * 86_400_000).default(6 * 3_600_000),
      })
      .prefault({}),
  })
  .prefault({});
export type DriftConfig = z.infer<typeof DriftConfigSchema>;
