/**
 * Hostile ONNX models for the validator tests (ARCHITECTURE §2, PITFALLS: onnxruntime-node),
 * written with a minimal onnx.proto subset through protobufjs. Both have the same graph input
 * and output as a tiny MLP ([N, inputDim] → logits [N, outputDim]), so a manifest for them looks
 * ordinary and only loading them shows what they are:
 *   - `segfaultModelBytes`: a deep chain of model-local functions (ModelProto.functions, field
 *     25; FunctionProto), each calling the next. onnxruntime inlines them recursively at session
 *     creation and overflows the native stack: the loading process dies with SIGSEGV (exit 139),
 *     whatever the optimization level, and try/catch cannot stop it.
 *   - `memoryBombModelBytes`: one ConstantOfShape producing `bombBytes` of float zeros, reduced to
 *     a scalar and added to the logits; constant folding at load allocates all of it.
 */
import { writeFile } from 'node:fs/promises';
import protobuf from 'protobufjs';
import { ONNX_SUBSET } from './tiny-model.ts';

const FLOAT = 1;
const INT64 = 7;
const LOCAL = 'edgefleet.hostile';

export interface HostileShape {
  inputDim: number;
  outputDim: number;
  inputName?: string;
}

const valueInfo = (name: string, dims: (number | string)[]): Record<string, unknown> => ({
  name,
  type: { tensorType: { elemType: FLOAT, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
});

const floats = (name: string, dims: number[], value: number): Record<string, unknown> => {
  const data = new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(value);
  return { name, dims, dataType: FLOAT, rawData: Buffer.from(data.buffer) };
};

/** Input → [hidden nodes] → h → MatMul W + b → logits, encoded with optional functions (exported for graph-level tests). */
export function encode(shape: HostileShape, nodes: Record<string, unknown>[], inits: Record<string, unknown>[], functions: Record<string, unknown>[]): Uint8Array {
  // ONNX_SUBSET plus AttributeProto.g (field 6), so nodes can carry subgraphs (If, Loop).
  const schema = ONNX_SUBSET.replace('optional int32 type = 20;', 'optional int32 type = 20; optional GraphProto g = 6;');
  const Model = protobuf.parse(schema).root.lookupType('onnx.ModelProto');
  const input = shape.inputName ?? 'input';
  const msg = Model.fromObject({
    irVersion: 8,
    producerName: 'edgefleet-hostile',
    opsetImport: [{ domain: '', version: 17 }, ...(functions.length ? [{ domain: LOCAL, version: 1 }] : [])],
    functions,
    graph: {
      name: 'hostile',
      node: [
        ...nodes,
        { opType: 'MatMul', input: ['h', 'w'], output: ['mm'], name: 'mm' },
        { opType: 'Add', input: ['mm', 'b'], output: ['logits'], name: 'add' },
      ],
      initializer: [floats('w', [shape.inputDim, shape.outputDim], 0.1), floats('b', [shape.outputDim], 0), ...inits],
      input: [valueInfo(input, ['N', shape.inputDim])],
      output: [valueInfo('logits', ['N', shape.outputDim])],
    },
  });
  return Model.encode(msg).finish();
}

/** A chain of `depth` model-local functions f0 → f1 → ... → Identity (see the header). */
export function segfaultModelBytes(shape: HostileShape, depth = 20_000): Uint8Array {
  const functions: Record<string, unknown>[] = [];
  for (let i = 0; i < depth; i++) {
    const last = i === depth - 1;
    functions.push({
      name: `f${i}`,
      domain: LOCAL,
      input: ['x'],
      output: ['y'],
      opsetImport: [{ domain: '', version: 17 }, { domain: LOCAL, version: 1 }],
      node: [last ? { opType: 'Identity', input: ['x'], output: ['y'] } : { opType: `f${i + 1}`, domain: LOCAL, input: ['x'], output: ['y'] }],
    });
  }
  const nodes = [{ opType: 'f0', domain: LOCAL, input: [shape.inputName ?? 'input'], output: ['h'], name: 'chain' }];
  return encode(shape, nodes, [], functions);
}

/** ConstantOfShape of `bombBytes` (float32 zeros) folded at load (see the header). */
export function memoryBombModelBytes(shape: HostileShape, bombBytes = 8 * 2 ** 30): Uint8Array {
  const count = BigInt(Math.floor(bombBytes / 4));
  const shapeData = new BigInt64Array([count]);
  const inits = [{ name: 'bomb_shape', dims: [1], dataType: INT64, rawData: Buffer.from(shapeData.buffer) }];
  const nodes = [
    { opType: 'ConstantOfShape', input: ['bomb_shape'], output: ['bomb'], name: 'bomb' },
    { opType: 'ReduceSum', input: ['bomb'], output: ['bomb_sum'], name: 'bomb_sum' },
    { opType: 'Add', input: [shape.inputName ?? 'input', 'bomb_sum'], output: ['h'], name: 'bomb_add' },
  ];
  return encode(shape, nodes, inits, []);
}

export async function writeHostileModel(path: string, bytes: Uint8Array): Promise<string> {
  await writeFile(path, bytes);
  return path;
}

/**
 * A model whose run-time allocation is chosen by its input data (issue #14): the sum of |input|
 * is cast to int64 and fed to a ConstantOfShape, whose zeros are reduced to 0 and added to the
 * input. Outputs equal the plain MLP's, so test vectors with ordinary values pass the probe and
 * the agent's checks (a few bytes allocated), while one crafted reading whose values sum to
 * 5e8 asks for 2 GB. Nothing is constant, so no load-time folding gives it away.
 */
export function dataDependentAllocModelBytes(shape: HostileShape): Uint8Array {
  const input = shape.inputName ?? 'input';
  const inits = [int64s('flat1', [1n])];
  const nodes = [
    { opType: 'Abs', input: [input], output: ['dd_abs'], name: 'dd_abs' },
    { opType: 'ReduceSum', input: ['dd_abs'], output: ['dd_sum'], name: 'dd_sum' },
    { opType: 'Cast', input: ['dd_sum'], output: ['dd_count'], name: 'dd_cast', attribute: [{ name: 'to', i: INT64, type: 2 }] },
    { opType: 'Reshape', input: ['dd_count', 'flat1'], output: ['dd_shape'], name: 'dd_reshape' },
    { opType: 'ConstantOfShape', input: ['dd_shape'], output: ['dd_zeros'], name: 'dd_bomb' },
    { opType: 'ReduceSum', input: ['dd_zeros'], output: ['dd_zero'], name: 'dd_zero' },
    { opType: 'Add', input: [input, 'dd_zero'], output: ['h'], name: 'dd_add' },
  ];
  return encode(shape, nodes, inits, []);
}

/** An int64 initializer. */
export const int64s = (name: string, values: readonly bigint[]): Record<string, unknown> => ({
  name,
  dims: [values.length],
  dataType: INT64,
  rawData: Buffer.from(new BigInt64Array(values).buffer),
});

/**
 * A model whose allocation grows with the batch (issue #14, the run-time half): ConstantOfShape
 * of N × `bytesPerSample` / 4 float zeros, N read from the input's *shape*. The static guard
 * passes it (sizes from shapes are what every dynamic model has); the probe's single-sample
 * test vectors allocate `bytesPerSample`; a burst of readings batched together (maxBatch 64)
 * asks for 64 times that. Only the pool's RSS watchdog stops it.
 */
export function batchAllocModelBytes(shape: HostileShape, bytesPerSample: number): Uint8Array {
  const input = shape.inputName ?? 'input';
  const inits = [int64s('per_sample', [BigInt(Math.floor(bytesPerSample / 4))])];
  const nodes = [
    { opType: 'Shape', input: [input], output: ['ba_n'], name: 'ba_n', attribute: [{ name: 'end', i: 1, type: 2 }] },
    { opType: 'Mul', input: ['ba_n', 'per_sample'], output: ['ba_count'], name: 'ba_count' },
    { opType: 'ConstantOfShape', input: ['ba_count'], output: ['ba_zeros'], name: 'ba_bomb' },
    { opType: 'ReduceSum', input: ['ba_zeros'], output: ['ba_zero'], name: 'ba_zero' },
    { opType: 'Add', input: [input, 'ba_zero'], output: ['h'], name: 'ba_add' },
  ];
  return encode(shape, nodes, inits, []);
}
