/**
 * Child process of `edgefleet model init`: loads a model with onnxruntime-node and runs the
 * reference cases the parent sends (every input, every output), then exits. Mirrors
 * shared/validate/probe-child.ts (kept apart: that probe checks a manifest's vectors on its
 * first output; this records all outputs for inputs of any number and dtype). It runs in its
 * own process, watched by model-init.ts with a timeout, an RSS budget and an address-space
 * limit, because a model file from anywhere can segfault or balloon whatever loads it
 * (PITFALLS: onnxruntime-node).
 *
 * Protocol: prints `INIT_READY_LINE` once onnxruntime is loaded (the parent then caps its address
 * space above this baseline), reads one JSON request on stdin, answers with one line
 * `INIT_RESULT_PREFIX + JSON`. Tensors travel as base64 of their little-endian bytes. With
 * `chain`, case k > 0 feeds state input `i` from output `chain[i]` of case k - 1, as the agent
 * does from one call to the next.
 */
import ort from 'onnxruntime-node';
import { z } from 'zod';
import { INIT_READY_LINE, INIT_RESULT_PREFIX, InitRequestSchema, type InitResult, type WireTensor } from './model-init-protocol.ts';

type Session = Awaited<ReturnType<typeof ort.InferenceSession.create>>;
type Meta = { name: string; type: string; dims: (number | string)[] };

const ARRAY = {
  float32: Float32Array,
  float16: Uint16Array,
  uint8: Uint8Array,
  bool: Uint8Array,
  int8: Int8Array,
  int32: Int32Array,
  int64: BigInt64Array,
} as const;

function toTensor(t: WireTensor): ort.Tensor {
  const Ctor = (ARRAY as Record<string, (typeof ARRAY)[keyof typeof ARRAY] | undefined>)[t.type];
  if (!Ctor) throw new Error(`input type ${t.type} is not supported`);
  const bytes = Buffer.from(t.b64, 'base64');
  const n = t.dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== n * Ctor.BYTES_PER_ELEMENT) throw new Error(`feed of ${bytes.length} bytes for dims [${t.dims.join(', ')}] of ${t.type}`);
  const data = new Ctor(n);
  new Uint8Array(data.buffer).set(bytes);
  return new ort.Tensor(t.type as 'float32', data as Float32Array, t.dims);
}

function toWire(t: ort.Tensor): WireTensor {
  const d = t.data as unknown;
  if (!ArrayBuffer.isView(d)) throw new Error(`output of type ${t.type} is not a numeric tensor`);
  return { type: t.type, dims: [...t.dims], b64: Buffer.from(d.buffer, d.byteOffset, d.byteLength).toString('base64') };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function emit(result: InitResult): Promise<void> {
  return new Promise((resolve) => process.stdout.write(`${INIT_RESULT_PREFIX}${JSON.stringify(result)}\n`, () => resolve()));
}

const toMeta = (m: Session['inputMetadata'][number]): Meta => (m.isTensor ? { name: m.name, type: m.type, dims: [...m.shape] } : { name: m.name, type: 'non-tensor', dims: [] });

async function main(): Promise<void> {
  await new Promise<void>((resolve) => process.stdout.write(`${INIT_READY_LINE}\n`, () => resolve()));
  const req = InitRequestSchema.parse(JSON.parse(await readStdin()));
  let session: Session;
  try {
    session = await ort.InferenceSession.create(req.path, { intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all' });
  } catch (err) {
    await emit({ ok: false, error: `onnxruntime cannot load the model: ${(err as Error).message.slice(0, 500)}` });
    return;
  }
  const outputNames = session.outputNames;
  const cases: { outputs: Record<string, WireTensor> }[] = [];
  let previous: Record<string, ort.Tensor> | undefined;
  for (const [k, c] of req.cases.entries()) {
    const feeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(c.feeds)) feeds[name] = toTensor(t);
    if (previous) {
      for (const [input, output] of Object.entries(req.chain)) {
        const t = previous[output];
        if (t) feeds[input] = t;
      }
    }
    let result: Record<string, ort.Tensor>;
    try {
      result = await session.run(feeds, outputNames);
    } catch (err) {
      await emit({ ok: false, error: `reference case ${k} failed: ${(err as Error).message.slice(0, 500)}` });
      return;
    }
    cases.push({ outputs: Object.fromEntries(outputNames.map((n) => [n, toWire(result[n] as ort.Tensor)])) });
    previous = result;
  }
  const inputs = session.inputMetadata.map(toMeta);
  const outputs = session.outputMetadata.map(toMeta);
  await session.release();
  await emit({ ok: true, inputs, outputs, cases });
}

main().then(
  () => process.exit(0),
  async (err: unknown) => {
    const message = err instanceof z.ZodError ? 'bad request' : (err as Error).message;
    await emit({ ok: false, error: `model init child failed: ${message.slice(0, 500)}` });
    process.exit(1);
  },
);
