/**
 * The message protocol between the worker pool (main thread) and its inference workers.
 * An internal boundary, but both ends validate: a malformed message is a bug we want to see
 * as an error reply, not as a hung request.
 */
import { z } from 'zod';

export const DtypeSchema = z.enum(['float32', 'uint8', 'int8']);

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
  }),
  z.object({ t: z.literal('error'), id: Id, message: z.string() }),
  /** A message the worker could not parse (no id to answer to). */
  z.object({ t: z.literal('protocol-error'), message: z.string() }),
]);
export type FromWorker = z.infer<typeof FromWorkerSchema>;
