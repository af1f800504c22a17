/**
 * Tabular preprocessing from the manifest's declarative spec: named features in the model's
 * order, scaled as (x - mean) / std, into a [1, F] float32 tensor. Rejects readings that do not
 * fit (missing or unknown features, wrong count, non-finite values) with BAD_INPUT.
 */
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { TabularPreprocess } from '../../shared/manifest.ts';

/** A sensor reading on an MQTT input: values in model order, or features by name. */
export const ReadingSchema = z
  .object({
    /** Correlation id, echoed in the result. */
    id: z.string().min(1).max(128).optional(),
    /** When the reading was taken (epoch ms). */
    ts: z.number().int().nonnegative().optional(),
    values: z.array(z.number()).max(4096).optional(),
    features: z.record(z.string().max(64), z.number()).optional(),
    /**
     * Window models (manifest v2): several consecutive readings at once, each the values of
     * every channel in model order (an audio frame, an accelerometer burst).
     */
    samples: z.array(z.array(z.number()).max(256)).max(65_536).optional(),
    /** Time between consecutive `samples` in ms (sample i is taken at ts + i · periodMs); default 0. */
    periodMs: z.number().nonnegative().max(3_600_000).optional(),
    /** Which sensor stream a windowed or stateful model keeps this reading's window/state for. */
    stream: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/, 'stream: 1-128 of [A-Za-z0-9._:-]').optional(),
  })
  .refine((r) => [r.values, r.features, r.samples].filter((x) => x !== undefined).length === 1, {
    message: 'give exactly one of `values` (array in model order), `features` (object by name) or `samples` (array of value arrays)',
  });
export type Reading = z.infer<typeof ReadingSchema>;

export interface TabularTensor {
  data: Float32Array;
  dims: number[];
  /** The raw (unscaled) values in model order, for drift summaries. */
  raw: Float64Array;
}

export function preprocessTabular(spec: TabularPreprocess, reading: Reading): TabularTensor {
  const n = spec.features.length;
  if (reading.samples) throw new EdgefleetError(ErrorCode.BAD_INPUT, '`samples` are for window models; this model takes one reading of `values` or `features`');
  const raw = new Float64Array(n);
  if (reading.values) {
    if (reading.values.length !== n) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `expected ${n} values, got ${reading.values.length}`);
    }
    raw.set(reading.values);
  } else if (reading.features) {
    const given = reading.features;
    const missing = spec.features.filter((f) => !(f.name in given)).map((f) => f.name);
    if (missing.length) throw new EdgefleetError(ErrorCode.BAD_INPUT, `missing features: ${missing.join(', ')}`);
    const known = new Set(spec.features.map((f) => f.name));
    const unknown = Object.keys(given).filter((k) => !known.has(k));
    if (unknown.length) throw new EdgefleetError(ErrorCode.BAD_INPUT, `unknown features: ${unknown.slice(0, 8).join(', ')}`);
    spec.features.forEach((f, i) => (raw[i] = given[f.name] as number));
  }
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const x = raw[i] as number;
    if (!Number.isFinite(x)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `feature ${spec.features[i]?.name} is not a finite number`);
    const f = spec.features[i]!;
    data[i] = (x - f.mean) / f.std;
  }
  return { data, dims: [1, n], raw };
}
