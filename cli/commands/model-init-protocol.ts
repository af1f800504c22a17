/**
 * The messages between `edgefleet model init` (model-init.ts) and its child
 * (model-init-child.ts): a request on stdin, one result line on stdout. The parent validates the
 * result: the child runs a model from anywhere, and its output is not trusted either. Apart from
 * the child so the parent never imports onnxruntime.
 */
import { z } from 'zod';

export const INIT_READY_LINE = '@@edgefleet-init-ready';
export const INIT_RESULT_PREFIX = '@@edgefleet-init ';

export const WireTensorSchema = z.object({
  type: z.string(),
  dims: z.array(z.number().int().nonnegative()).max(8),
  b64: z.string(),
});
export type WireTensor = z.infer<typeof WireTensorSchema>;

export const InitRequestSchema = z.object({
  path: z.string().min(1),
  cases: z.array(z.object({ feeds: z.record(z.string(), WireTensorSchema) })).min(1).max(64),
  chain: z.record(z.string(), z.string()).default({}),
});
export type InitRequest = z.input<typeof InitRequestSchema>;

const MetaSchema = z.object({ name: z.string(), type: z.string(), dims: z.array(z.union([z.number(), z.string()])) });
export const InitResultSchema = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    inputs: z.array(MetaSchema),
    outputs: z.array(MetaSchema),
    cases: z.array(z.object({ outputs: z.record(z.string(), WireTensorSchema) })),
  }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);
export type InitResult = z.infer<typeof InitResultSchema>;
