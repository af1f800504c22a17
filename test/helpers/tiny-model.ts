/**
 * Tiny real ONNX models for runtime tests, written with a minimal subset of onnx.proto through
 * protobufjs, so the tests run real ORT sessions without depending on scripts/make-models.
 * The models are small MLPs: [Cast] → (MatMul + Add [+ Relu]) × layers → logits [→ Softmax].
 */
import { mulberry32 } from '../../scripts/lib/rng.ts';
import { writeFile } from 'node:fs/promises';
import protobuf from 'protobufjs';

/** The onnx.proto subset the test models are written with (also hostile-models.ts: model-local functions). */
export const ONNX_SUBSET = `
syntax = "proto2";
package onnx;
message OperatorSetIdProto { optional string domain = 1; optional int64 version = 2; }
message AttributeProto {
  optional string name = 1; optional float f = 2; optional int64 i = 3; optional bytes s = 4;
  repeated float floats = 7; repeated int64 ints = 8; optional int32 type = 20;
}
message NodeProto {
  repeated string input = 1; repeated string output = 2; optional string name = 3;
  optional string op_type = 4; repeated AttributeProto attribute = 5; optional string domain = 7;
}
message TensorProto {
  repeated int64 dims = 1; optional int32 data_type = 2; optional string name = 8; optional bytes raw_data = 9;
}
message TensorShapeProto {
  message Dimension { oneof value { int64 dim_value = 1; string dim_param = 2; } }
  repeated Dimension dim = 1;
}
message TypeProto {
  message Tensor { optional int32 elem_type = 1; optional TensorShapeProto shape = 2; }
  oneof value { Tensor tensor_type = 1; }
}
message ValueInfoProto { optional string name = 1; optional TypeProto type = 2; }
message GraphProto {
  repeated NodeProto node = 1; optional string name = 2; repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11; repeated ValueInfoProto output = 12;
}
message FunctionProto {
  optional string name = 1; repeated string input = 4; repeated string output = 5;
  repeated NodeProto node = 7; repeated OperatorSetIdProto opset_import = 9; optional string domain = 10;
}
message ModelProto {
  optional int64 ir_version = 1; optional string producer_name = 2; optional GraphProto graph = 7;
  repeated OperatorSetIdProto opset_import = 8; repeated FunctionProto functions = 25;
}
`;

const ELEM = { float32: 1, uint8: 2, int8: 3 } as const;
export type TinyDtype = keyof typeof ELEM;

export interface TinyModelSpec {
  /** Input width (features per sample); the input is [batch, ...extraDims, inputDim]. */
  inputDim: number;
  /** Extra fixed dims between batch and the feature dim (e.g. [1, 4] for an image-like input). */
  extraDims?: number[];
  outputDim: number;
  /** Hidden layers of width `hidden` (MatMul + Add + Relu each). Default 0. */
  layers?: number;
  hidden?: number;
  /** `'N'` (symbolic, dynamic batch, the default) or a fixed size. */
  batch?: string | number;
  inputType?: TinyDtype;
  inputName?: string;
  /** Adds a second output `probs` = Softmax(logits). */
  softmax?: boolean;
  /** Adds a second graph input (for tests that a model with two inputs is refused). */
  secondInput?: boolean;
  /** Deterministic weights from this seed. */
  seed?: number;
}


function floatTensor(name: string, dims: number[], rand: () => number, scale: number): Record<string, unknown> {
  const n = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (rand() * 2 - 1) * scale;
  return { name, dims, dataType: ELEM.float32, rawData: Buffer.from(data.buffer, data.byteOffset, data.byteLength) };
}

function valueInfo(name: string, elemType: number, dims: (number | string)[]): Record<string, unknown> {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

/** Encodes the model described by `spec` as ONNX bytes. */
export function tinyModelBytes(spec: TinyModelSpec): Uint8Array {
  const root = protobuf.parse(ONNX_SUBSET).root;
  const Model = root.lookupType('onnx.ModelProto');
  const rand = mulberry32(spec.seed ?? 1); // deterministic: every run builds the same model
  const batch = spec.batch ?? 'N';
  const inputName = spec.inputName ?? 'input';
  const inputType = spec.inputType ?? 'float32';
  const extra = spec.extraDims ?? [];
  const nodes: Record<string, unknown>[] = [];
  const inits: Record<string, unknown>[] = [];

  let cur = inputName;
  if (inputType !== 'float32') {
    nodes.push({ opType: 'Cast', input: [cur], output: ['x_f'], name: 'cast', attribute: [{ name: 'to', i: ELEM.float32, type: 2 }] });
    cur = 'x_f';
  }
  let width = spec.inputDim;
  const layer = (i: number, out: number, relu: boolean, outName: string): void => {
    // Small weights keep activations O(1) through many layers.
    inits.push(floatTensor(`w${i}`, [width, out], rand, 1 / Math.sqrt(width)));
    inits.push(floatTensor(`b${i}`, [out], rand, 0.1));
    nodes.push({ opType: 'MatMul', input: [cur, `w${i}`], output: [`mm${i}`], name: `mm${i}` });
    nodes.push({ opType: 'Add', input: [`mm${i}`, `b${i}`], output: [relu ? `a${i}` : outName], name: `add${i}` });
    cur = relu ? `a${i}` : outName;
    if (relu) {
      nodes.push({ opType: 'Relu', input: [cur], output: [`r${i}`], name: `relu${i}` });
      cur = `r${i}`;
    }
    width = out;
  };
  const layers = spec.layers ?? 0;
  for (let i = 0; i < layers; i++) layer(i, spec.hidden ?? spec.inputDim, true, '');
  layer(layers, spec.outputDim, false, 'logits');

  const outDims = [batch, ...extra, spec.outputDim];
  const outputs = [valueInfo('logits', ELEM.float32, outDims)];
  if (spec.softmax) {
    nodes.push({ opType: 'Softmax', input: ['logits'], output: ['probs'], name: 'softmax', attribute: [{ name: 'axis', i: -1, type: 2 }] });
    outputs.push(valueInfo('probs', ELEM.float32, outDims));
  }
  const inputs = [valueInfo(inputName, ELEM[inputType], [batch, ...extra, spec.inputDim])];
  if (spec.secondInput) inputs.push(valueInfo('extra', ELEM.float32, [batch, spec.outputDim]));
  if (spec.secondInput) {
    nodes.push({ opType: 'Add', input: ['logits', 'extra'], output: ['logits2'], name: 'add_extra' });
    outputs[0] = valueInfo('logits2', ELEM.float32, outDims);
  }

  const msg = Model.fromObject({
    irVersion: 8,
    producerName: 'edgefleet-test',
    opsetImport: [{ domain: '', version: 17 }],
    graph: { name: 'tiny', node: nodes, initializer: inits, input: inputs, output: outputs },
  });
  return Model.encode(msg).finish();
}

export async function writeTinyModel(path: string, spec: TinyModelSpec): Promise<string> {
  await writeFile(path, tinyModelBytes(spec));
  return path;
}
