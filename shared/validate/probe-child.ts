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
import ort from 'onnxruntime-node';
import { z } from 'zod';
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
  switch (type) {
    case 'float32':
      return new ort.Tensor('float32', Float32Array.from(data), dims);
    case 'uint8':
      return new ort.Tensor('uint8', Uint8Array.from(data), dims);
    case 'int8':
      return new ort.Tensor('int8', Int8Array.from(data), dims);
    case 'int64':
      return new ort.Tensor('int64', BigInt64Array.from(data, (v) => BigInt(Math.trunc(v))), dims);
    default:
      throw new Error(`input type ${type} is not supported`);
  }
}

function toNumbers(data: unknown): number[] {
  if (data instanceof BigInt64Array || data instanceof BigUint64Array) return Array.from(data, (v) => Number(v));
  if (ArrayBuffer.isView(data) && !(data instanceof DataView)) return Array.from(data as unknown as ArrayLike<number>);
  throw new Error('output is not a numeric tensor');
}

async function main(): Promise<void> {
  await new Promise<void>((resolve) => process.stdout.write(`${READY_LINE}\n`, () => resolve()));
  const req = ProbeRequestSchema.parse(JSON.parse(await readStdin()));
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
  const outputs0 = req.outputName;
  const vectors: (number[] | null)[] = [];
  const vectorErrors: string[] = [];
  const input = inputs[0];
  if (inputs.length === 1 && input && outputs.some((o) => o.name === outputs0)) {
    for (const tv of req.testVectors) {
      try {
        const result = await session.run({ [input.name]: inputTensor(input.type, tv.input, tv.shape) }, [outputs0]);
        vectors.push(toNumbers(result[outputs0]?.data));
      } catch (err) {
        vectors.push(null);
        vectorErrors.push((err as Error).message.slice(0, 300));
      }
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
