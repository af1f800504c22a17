/**
 * Child process that loads an untrusted ONNX file with onnxruntime-node, reports its input and
 * output metadata and runs the manifest's test vectors, then exits. It runs in its own process
 * (spawned by model-probe.ts with a timeout, an RSS watch and an address-space limit) because a
 * crafted model can segfault whatever loads it or allocate gigabytes (PITFALLS: onnxruntime-node);
 * the hub (before signing an upload) and the agent (before activating a release) must keep
 * serving whatever the file does here (ARCHITECTURE §2). Shared so both ends run one validator.
 *
 * Protocol: the child prints `READY_LINE` once onnxruntime is loaded (the parent then caps its
 * address space above this baseline), reads one JSON request on stdin, and answers with one
 * line `RESULT_PREFIX + JSON` on stdout.
 */
import { readFile } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import { z } from 'zod';
import { TENSOR_DTYPES, toFloat32, toTensorData, type TensorDtype } from '../tensor.ts';
import { dataDependentAllocations } from './alloc-guard.ts';
import { ProbeRequestSchema, READY_LINE, RESULT_PREFIX, type ProbeResult } from './probe-protocol.ts';

type Session = Awaited<ReturnType<typeof ort.InferenceSession.create>>;
type ValueMetadata = Session['inputMetadata'][number];

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function emit(result: ProbeResult): Promise<void> {
  return new Promise((resolve) => process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(result)}\n`, () => resolve()));
}

const toMeta = (m: ValueMetadata): { name: string; type: string; dims: (number | string)[] } =>
  m.isTensor ? { name: m.name, type: m.type, dims: [...m.shape] } : { name: m.name, type: 'non-tensor', dims: [] };

function inputTensor(type: string, data: readonly number[], dims: readonly number[]): ort.Tensor {
  if (!(TENSOR_DTYPES as readonly string[]).includes(type)) throw new Error(`input type ${type} is not supported`);
  return new ort.Tensor(type as TensorDtype, toTensorData(type as TensorDtype, data) as never, dims);
}

/** Output values as JSON numbers: NaN and infinities as null (JSON has neither). */
function toNumbers(data: unknown, type: string): (number | null)[] {
  return Array.from(toFloat32(data, type), (v) => (Number.isFinite(v) ? v : null));
}

async function main(): Promise<void> {
  await new Promise<void>((resolve) => process.stdout.write(`${READY_LINE}\n`, () => resolve()));
  const req = ProbeRequestSchema.parse(JSON.parse(await readStdin()));
  // Before onnxruntime sees it: sizes read from input data pass any test vector and then
  // allocate what one crafted input asks (alloc-guard.ts, issue #14).
  let allocProblems: string[];
  try {
    allocProblems = dataDependentAllocations(await readFile(req.path));
  } catch (err) {
    await emit({ ok: false, error: `the model is not a readable ONNX file: ${(err as Error).message.slice(0, 300)}` });
    return;
  }
  if (allocProblems.length) {
    await emit({ ok: false, error: allocProblems.join('; ').slice(0, 2000) });
    return;
  }
  let session: Session;
  try {
    session = await ort.InferenceSession.create(req.path, {
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
    });
  } catch (err) {
    await emit({ ok: false, error: `onnxruntime cannot load the model: ${(err as Error).message.slice(0, 500)}` });
    return;
  }
  const inputs = session.inputMetadata.map(toMeta);
  const outputs = session.outputMetadata.map(toMeta);
  const vectors: (Record<string, (number | null)[]> | null)[] = [];
  const vectorErrors: string[] = [];
  for (const tv of req.vectors) {
    // Only a vector that feeds exactly the model's inputs and asks for outputs it has is run;
    // the parent reports the mismatch from the metadata.
    const fits = inputs.length === Object.keys(tv.inputs).length && inputs.every((i) => i.name in tv.inputs) && tv.outputs.every((o) => outputs.some((m) => m.name === o));
    if (!fits) break;
    try {
      const feeds: Record<string, ort.Tensor> = {};
      for (const i of inputs) feeds[i.name] = inputTensor(i.type, tv.inputs[i.name]!.values, tv.inputs[i.name]!.dims);
      const result = await session.run(feeds, tv.outputs);
      const got: Record<string, (number | null)[]> = {};
      for (const o of tv.outputs) got[o] = toNumbers(result[o]?.data, result[o]?.type ?? 'float32');
      vectors.push(got);
    } catch (err) {
      vectors.push(null);
      vectorErrors.push((err as Error).message.slice(0, 300));
    }
  }
  await session.release();
  await emit({ ok: true, inputs, outputs, vectors, vectorErrors });
}

main().then(
  () => process.exit(0),
  async (err: unknown) => {
    const message = err instanceof z.ZodError ? 'bad probe request' : (err as Error).message;
    await emit({ ok: false, error: `probe failed: ${message.slice(0, 500)}` });
    process.exit(1);
  },
);
