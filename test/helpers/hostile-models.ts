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

/** Input → [hidden nodes] → h → MatMul W + b → logits, encoded with optional functions. */
function encode(shape: HostileShape, nodes: Record<string, unknown>[], inits: Record<string, unknown>[], functions: Record<string, unknown>[]): Uint8Array {
  const Model = protobuf.parse(ONNX_SUBSET).root.lookupType('onnx.ModelProto');
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
