/**
 * The message protocol between the worker pool (main thread) and its inference workers.
 * An internal boundary, but both ends validate: a malformed message is a bug we want to see
 * as an error reply, not as a hung request.
 *
 * The two hot messages, `run` and its `result`, are checked by hand-written structural guards
 * (isRunMessage, isResultMessage) that accept exactly what their zod schemas accept: zod's
 * parse of one run and one result cost ~10 µs a round trip, half of what the model itself
 * needs for the demo sensor model (issue #5). Every other message, and anything a guard
 * refuses, still goes through zod, so a malformed message gets zod's error text.
 */
import { z } from 'zod';

export const DtypeSchema = z.enum(['float32', 'float16', 'uint8', 'int8', 'int32', 'int64', 'bool']);

/** A further named input of a run (constants, state): any rank, scalars included. */
const ExtraInputSchema = z.object({
  name: z.string().min(1),
  dtype: DtypeSchema,
  dims: z.array(z.number().int().nonnegative()).max(8),
  data: z.instanceof(ArrayBuffer),
});

export const WorkerDataSchema = z.object({
  workerId: z.number().int().nonnegative(),
  intraOpThreads: z.number().int().min(1).max(64),
  /** Test hook: each run waits this long first, to hold batches in flight (fault tests). */
  testRunDelayMs: z.number().int().nonnegative().optional(),
  /** Test hook: honour 'test-exit' (the worker exits as if it crashed). */
  testExit: z.boolean().optional(),
});
export type WorkerData = z.infer<typeof WorkerDataSchema>;

const Id = z.number().int().nonnegative();

export const ToWorkerSchema = z.discriminatedUnion('t', [
  z.object({ t: z.literal('load'), id: Id, key: z.string().min(1), path: z.string().min(1) }),
  z.object({ t: z.literal('unload'), id: Id, key: z.string().min(1) }),
  z.object({
    t: z.literal('run'),
    id: Id,
    key: z.string().min(1),
    dtype: DtypeSchema,
    dims: z.array(z.number().int().positive()).min(1).max(8),
    data: z.instanceof(ArrayBuffer),
    /** Input `data` feeds; default the session's first input. */
    input: z.string().min(1).optional(),
    extra: z.array(ExtraInputSchema).max(64).optional(),
    /** Send `data`'s buffer back with the result (the caller reuses it for its next frame). */
    back: z.literal(true).optional(),
  }),
  /** Releases every session; the worker is terminated afterwards. */
  z.object({ t: z.literal('close'), id: Id }),
  /** Test hook, honoured only with `testExit`: exit at once, as a crash would. */
  z.object({ t: z.literal('test-exit'), id: Id }),
]);
export type ToWorker = z.infer<typeof ToWorkerSchema>;

export const ValueMetaSchema = z.object({
  name: z.string(),
  isTensor: z.boolean(),
  type: z.string().optional(),
  dims: z.array(z.union([z.number(), z.string()])).optional(),
});
export type ValueMeta = z.infer<typeof ValueMetaSchema>;

export const FromWorkerSchema = z.discriminatedUnion('t', [
  z.object({ t: z.literal('ready') }),
  z.object({ t: z.literal('loaded'), id: Id, inputs: z.array(ValueMetaSchema), outputs: z.array(ValueMetaSchema) }),
  z.object({ t: z.literal('done'), id: Id }),
  z.object({
    t: z.literal('result'),
    id: Id,
    runMs: z.number().nonnegative(),
    outputs: z.array(z.object({ name: z.string(), dims: z.array(z.number().int().nonnegative()), data: z.instanceof(ArrayBuffer) })),
    /** The run's input buffer, handed back when the run asked for it (`back`). */
    input: z.instanceof(ArrayBuffer).optional(),
  }),
  z.object({ t: z.literal('error'), id: Id, message: z.string() }),
  /** A message the worker could not parse (no id to answer to). */
  z.object({ t: z.literal('protocol-error'), message: z.string() }),
]);
export type FromWorker = z.infer<typeof FromWorkerSchema>;

export type RunMessage = Extract<ToWorker, { t: 'run' }>;
export type ResultMessage = Extract<FromWorker, { t: 'result' }>;

const DTYPES: ReadonlySet<unknown> = new Set(DtypeSchema.options);

const isId = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function isDims(v: unknown, min: number, max: number, positive: boolean): v is number[] {
  if (!Array.isArray(v) || v.length < min || v.length > max) return false;
  for (const d of v) if (!Number.isSafeInteger(d) || (d as number) < (positive ? 1 : 0)) return false;
  return true;
}

/** Structural guard equivalent to ToWorkerSchema's `run` branch (hot path, module header). */
export function isRunMessage(m: unknown): m is RunMessage {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Record<string, unknown>;
  return (
    r.t === 'run' &&
    isId(r.id) &&
    typeof r.key === 'string' &&
    r.key.length > 0 &&
    DTYPES.has(r.dtype) &&
    isDims(r.dims, 1, 8, true) &&
    r.data instanceof ArrayBuffer &&
    (r.input === undefined || (typeof r.input === 'string' && r.input.length > 0)) &&
    (r.extra === undefined || isExtra(r.extra)) &&
    (r.back === undefined || r.back === true)
  );
}

function isExtra(v: unknown): boolean {
  if (!Array.isArray(v) || v.length > 64) return false;
  for (const e of v as unknown[]) {
    if (typeof e !== 'object' || e === null) return false;
    const x = e as Record<string, unknown>;
    if (typeof x.name !== 'string' || x.name.length === 0 || !DTYPES.has(x.dtype) || !isDims(x.dims, 0, 8, false) || !(x.data instanceof ArrayBuffer)) return false;
  }
  return true;
}

/** Structural guard equivalent to FromWorkerSchema's `result` branch (hot path, module header). */
export function isResultMessage(m: unknown): m is ResultMessage {
  if (typeof m !== 'object' || m === null) return false;
  const r = m as Record<string, unknown>;
  if (r.t !== 'result' || !isId(r.id) || typeof r.runMs !== 'number' || !Number.isFinite(r.runMs) || r.runMs < 0 || !Array.isArray(r.outputs)) return false;
  if (r.input !== undefined && !(r.input instanceof ArrayBuffer)) return false;
  for (const o of r.outputs as unknown[]) {
    if (typeof o !== 'object' || o === null) return false;
    const x = o as Record<string, unknown>;
    if (typeof x.name !== 'string' || !isDims(x.dims, 0, Infinity, false) || !(x.data instanceof ArrayBuffer)) return false;
  }
  return true;
}
