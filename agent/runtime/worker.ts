/**
 * Inference worker thread: owns one ORT session per loaded model key and runs the batches the
 * pool sends, one message at a time. onnxruntime-node creates sessions and runs them
 * synchronously on the calling JS thread (ARCHITECTURE §1), which is why this runs here and
 * not on the agent's main thread. This is the only module that loads onnxruntime-node.
 */
import { readFile } from 'node:fs/promises';
import { parentPort, workerData } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import ort from 'onnxruntime-node';
import { formatIssues } from '../../shared/codec.ts';
import { toFloat32, type TensorDtype } from '../../shared/tensor.ts';
import { dataDependentAllocations } from '../../shared/validate/alloc-guard.ts';
import { isRunMessage, ToWorkerSchema, WorkerDataSchema, type FromWorker, type ToWorker, type ValueMeta } from './messages.ts';

type Session = Awaited<ReturnType<typeof ort.InferenceSession.create>>;
type ValueMetadata = Session['inputMetadata'][number];

const port = parentPort;
if (!port) throw new Error('agent/runtime/worker.ts must run as a worker thread');
const config = WorkerDataSchema.parse(workerData);

// One session per model key for the worker's whole life: creating and releasing sessions
// repeatedly leaks native memory (microsoft/onnxruntime#25325), so only load/unload touch them.
const sessions = new Map<string, Session>();

const post = (msg: FromWorker, transfer: ArrayBuffer[] = []): void => {
  port.postMessage(msg, transfer);
};

const toMeta = (m: ValueMetadata): ValueMeta =>
  m.isTensor ? { name: m.name, isTensor: true, type: m.type, dims: [...m.shape] } : { name: m.name, isTensor: false };

function inputArray(dtype: TensorDtype, buf: ArrayBuffer): Float32Array | Uint16Array | Uint8Array | Int8Array | Int32Array | BigInt64Array {
  switch (dtype) {
    case 'float32':
      return new Float32Array(buf);
    case 'float16':
      return new Uint16Array(buf);
    case 'uint8':
    case 'bool':
      return new Uint8Array(buf);
    case 'int8':
      return new Int8Array(buf);
    case 'int32':
      return new Int32Array(buf);
    case 'int64':
      return new BigInt64Array(buf);
  }
}

function tensorOf(dtype: TensorDtype, buf: ArrayBuffer, dims: readonly number[]): ort.Tensor {
  const data = inputArray(dtype, buf);
  // ORT wants bool data as a Uint8Array of 0/1 under the 'bool' type name.
  return new ort.Tensor(dtype, data as never, dims);
}

async function handle(msg: ToWorker): Promise<void> {
  switch (msg.t) {
    case 'load': {
      let session = sessions.get(msg.key);
      if (!session) {
        // Before ORT sees the file: a model that sizes an allocation from input data is refused
        // (shared/validate/alloc-guard.ts, issue #14), config models and releases alike.
        const problems = dataDependentAllocations(await readFile(msg.path));
        if (problems.length) throw new Error(problems.join('; '));
        session = await ort.InferenceSession.create(msg.path, {
          intraOpNumThreads: config.intraOpThreads,
          interOpNumThreads: 1,
          executionMode: 'sequential',
          graphOptimizationLevel: 'all',
          // No CPU arena: it keeps the largest run's memory for the session's life (a 500 MB run
          // left RSS at 609 MB with it, back at 110 MB without; issue #14), which would both
          // hold the memory and keep the pool's RSS watchdog tripping after the run.
          enableCpuMemArena: false,
        });
        sessions.set(msg.key, session);
      }
      post({ t: 'loaded', id: msg.id, inputs: session.inputMetadata.map(toMeta), outputs: session.outputMetadata.map(toMeta) });
      return;
    }
    case 'unload': {
      const session = sessions.get(msg.key);
      sessions.delete(msg.key);
      await session?.release();
      post({ t: 'done', id: msg.id });
      return;
    }
    case 'close': {
      const all = [...sessions.values()];
      sessions.clear();
      await Promise.allSettled(all.map((s) => s.release()));
      post({ t: 'done', id: msg.id });
      return;
    }
    case 'test-exit':
      return;
    case 'run': {
      const session = sessions.get(msg.key);
      if (!session) throw new Error(`model ${msg.key} is not loaded in this worker`);
      const inputName = msg.input ?? session.inputNames[0];
      if (inputName === undefined) throw new Error(`model ${msg.key} has no input`);
      if (config.testRunDelayMs) await sleep(config.testRunDelayMs);
      const feeds: Record<string, ort.Tensor> = { [inputName]: tensorOf(msg.dtype, msg.data, msg.dims) };
      for (const e of msg.extra ?? []) feeds[e.name] = tensorOf(e.dtype, e.data, e.dims);
      const t0 = performance.now();
      const result = await session.run(feeds);
      const runMs = performance.now() - t0;
      const outputs: { name: string; dims: number[]; data: ArrayBuffer }[] = [];
      for (const name of session.outputNames) {
        const tensor = result[name];
        if (!tensor) throw new Error(`model ${msg.key} returned no output ${name}`);
        // A float32 output that owns its whole buffer is handed over as it is (transferred, not
        // copied: issue #13 batch-1 overhead); any other dtype or view is converted into a copy.
        const raw = tensor.data;
        const data = tensor.type === 'float32' && raw instanceof Float32Array && raw.byteOffset === 0 && raw.byteLength === raw.buffer.byteLength && !(raw.buffer instanceof SharedArrayBuffer) ? raw : toFloat32(raw, tensor.type);
        outputs.push({ name, dims: [...tensor.dims], data: data.buffer as ArrayBuffer });
        tensor.dispose();
      }
      // The input goes back when asked (the caller's next frame reuses it): a frame-sized buffer
      // freed here per call was most of the worker's GC at batch 1 (issue #13 bench).
      const transfer = outputs.map((o) => o.data);
      if (msg.back) {
        transfer.push(msg.data);
        post({ t: 'result', id: msg.id, runMs, outputs, input: msg.data }, transfer);
      } else post({ t: 'result', id: msg.id, runMs, outputs }, transfer);
      return;
    }
  }
}

// Messages are handled strictly one after another: the pool sends a worker one batch at a
// time, and serialising load/unload with runs means a run never sees a half-released session.
// A plain FIFO drained by one loop, rather than a promise chain, so an idle worker starts a
// run without extra promise hops.
const inbox: ToWorker[] = [];
let draining = false;

async function drain(): Promise<void> {
  draining = true;
  try {
    for (let msg = inbox.shift(); msg; msg = inbox.shift()) {
      try {
        await handle(msg);
      } catch (err) {
        post({ t: 'error', id: msg.id, message: err instanceof Error ? err.message : String(err) });
      }
    }
  } finally {
    draining = false;
  }
}

port.on('message', (raw: unknown) => {
  let msg: ToWorker;
  if (isRunMessage(raw)) msg = raw;
  else {
    const parsed = ToWorkerSchema.safeParse(raw);
    if (!parsed.success) {
      const id = (raw as { id?: unknown } | null)?.id;
      const message = `bad message to worker: ${formatIssues(parsed.error)}`;
      post(typeof id === 'number' && Number.isInteger(id) && id >= 0 ? { t: 'error', id, message } : { t: 'protocol-error', message });
      return;
    }
    msg = parsed.data;
  }
  if (msg.t === 'test-exit' && config.testExit) process.exit(1); // not queued: a crash does not wait its turn
  inbox.push(msg);
  if (!draining) void drain();
});

post({ t: 'ready' });
