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
  /**
   * Test vectors to run: every input by name (typed by the model's own metadata) and the
   * outputs to report. Run only when the model has exactly these inputs.
   */
  vectors: z
    .array(
      z.object({
        inputs: z.record(z.string(), z.object({ dims: z.array(z.number().int().nonnegative()).max(8), values: z.array(z.number()) })),
        outputs: z.array(z.string()).max(64),
      }),
    )
    .max(64),
});
export type ProbeRequest = z.infer<typeof ProbeRequestSchema>;

const MetaSchema = z.object({ name: z.string(), type: z.string(), dims: z.array(z.union([z.number(), z.string()])) });

export const ProbeResultSchema = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    inputs: z.array(MetaSchema),
    outputs: z.array(MetaSchema),
    /** Per test vector: the requested outputs flattened (NaN as null), or null when the run failed. Empty when not run. */
    vectors: z.array(z.record(z.string(), z.array(z.number().nullable())).nullable()),
    vectorErrors: z.array(z.string()),
  }),
  z.object({ ok: z.literal(false), error: z.string() }),
]);
export type ProbeResult = z.infer<typeof ProbeResultSchema>;
