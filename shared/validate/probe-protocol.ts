/**
 * The messages between a model probe's parent (hub or agent) and its child (probe-child.ts): a
 * request on stdin, one result line on stdout. The parent validates the result with the schema: the child runs
 * untrusted model code and its output is not trusted either.
 */
import { z } from 'zod';

export const RESULT_PREFIX = '@@edgefleet-probe ';
export const READY_LINE = '@@edgefleet-probe-ready';

export const ProbeRequestSchema = z.object({
  path: z.string().min(1),
  /** First manifest output: the one test vectors are checked on. */
  outputName: z.string(),
  testVectors: z.array(z.object({ input: z.array(z.number()), shape: z.array(z.number().int().positive()) })).max(64),
});
export type ProbeRequest = z.infer<typeof ProbeRequestSchema>;

const MetaSchema = z.object({ name: z.string(), type: z.string(), dims: z.array(z.union([z.number(), z.string()])) });

export const ProbeResultSchema = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    inputs: z.array(MetaSchema),
    outputs: z.array(MetaSchema),
    /** Per test vector: the first output flattened, or null when the run failed. Empty when not run. */
    vectors: z.array(z.array(z.number().nullable()).nullable()),
    vectorErrors: z.array(z.string()),
  }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);
export type ProbeResult = z.infer<typeof ProbeResultSchema>;
