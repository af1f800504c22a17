/**
 * Small helpers to assemble ONNX graphs as ModelMsg objects: typed initializers (raw
 * little-endian bytes), nodes with attributes, value infos with a symbolic batch dimension,
 * and QDQ (QuantizeLinear/DequantizeLinear) pairs.
 */
import { AttrType, DataType, encodeModel } from './proto.ts';
import type { AttributeMsg, DataTypeCode, DimMsg, ModelMsg, NodeMsg, TensorMsg, ValueInfoMsg } from './proto.ts';

export const IR_VERSION = 8;
export const OPSET = 17;

function rawBytes(values: ArrayLike<number>, dataType: DataTypeCode): Uint8Array {
  const n = values.length;
  const size = dataType === DataType.FLOAT || dataType === DataType.INT32 ? 4 : dataType === DataType.INT64 ? 8 : 1;
  const buf = new Uint8Array(n * size);
  const view = new DataView(buf.buffer);
  for (let i = 0; i < n; i++) {
    const v = values[i] as number;
    switch (dataType) {
      case DataType.FLOAT:
        view.setFloat32(i * 4, v, true);
        break;
      case DataType.INT32:
        view.setInt32(i * 4, v, true);
        break;
      case DataType.INT64:
        view.setBigInt64(i * 8, BigInt(v), true);
        break;
      case DataType.INT8:
        view.setInt8(i, v);
        break;
      case DataType.UINT8:
        view.setUint8(i, v);
        break;
    }
  }
  return buf;
}

export function tensor(name: string, dataType: DataTypeCode, dims: number[], values: ArrayLike<number>): TensorMsg {
  const count = dims.reduce((a, b) => a * b, 1);
  if (count !== values.length) throw new RangeError(`${name}: dims ${dims.join('x')} need ${count} values, got ${values.length}`);
  return { name, dims, dataType, rawData: rawBytes(values, dataType) };
}

/** A number is an INT attribute and a number[] INTS; floats are spelled out, since 1.0 === 1 in JS. */
export type AttrValue = number | string | number[] | { float: number } | { floats: number[] };

function attribute(name: string, v: AttrValue): AttributeMsg {
  if (typeof v === 'string') return { name, type: AttrType.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: AttrType.INTS, ints: v };
  if (typeof v === 'object' && 'floats' in v) return { name, type: AttrType.FLOATS, floats: v.floats };
  if (typeof v === 'object') return { name, type: AttrType.FLOAT, f: v.float };
  if (!Number.isInteger(v)) throw new TypeError(`attribute ${name}: ${v} is not an integer; use { float }`);
  return { name, type: AttrType.INT, i: v };
}

export function valueInfo(name: string, elemType: DataTypeCode, shape: (number | string)[]): ValueInfoMsg {
  const dim: DimMsg[] = shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d }));
  return { name, type: { tensorType: { elemType, shape: { dim } } } };
}

/** Accumulates nodes and initializers; names are unique per graph. */
export class GraphBuilder {
  readonly nodes: NodeMsg[] = [];
  readonly initializers: TensorMsg[] = [];
  private readonly names = new Set<string>();

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`duplicate name in graph: ${name}`);
    this.names.add(name);
    return name;
  }

  init(name: string, dataType: DataTypeCode, dims: number[], values: ArrayLike<number>): string {
    this.initializers.push(tensor(this.claim(name), dataType, dims, values));
    return name;
  }

  /** Adds a node with one output named `output`; returns that name. */
  node(opType: string, inputs: string[], output: string, attrs: Record<string, AttrValue> = {}): string {
    const attrList = Object.entries(attrs).map(([k, v]) => attribute(k, v));
    this.nodes.push({ name: `${opType}_${this.nodes.length}`, opType, input: inputs, output: [this.claim(output)], attribute: attrList });
    return output;
  }

  /** QuantizeLinear then DequantizeLinear of `input` with a per-tensor scale and zero point. */
  qdq(input: string, prefix: string, scale: number, zeroPoint: number, zpType: DataTypeCode = DataType.UINT8): string {
    const s = this.init(`${prefix}_scale`, DataType.FLOAT, [], [scale]);
    const z = this.init(`${prefix}_zero_point`, zpType, [], [zeroPoint]);
    const q = this.node('QuantizeLinear', [input, s, z], `${prefix}_q`);
    return this.node('DequantizeLinear', [q, s, z], `${prefix}_dq`);
  }

  /** A constant quantized tensor (int8 weight or int32 bias) and its DequantizeLinear. */
  dequantized(name: string, dataType: DataTypeCode, dims: number[], q: ArrayLike<number>, scale: number): string {
    const w = this.init(`${name}_quantized`, dataType, dims, q);
    const s = this.init(`${name}_scale`, DataType.FLOAT, [], [scale]);
    const z = this.init(`${name}_zero_point`, dataType, [], [0]);
    return this.node('DequantizeLinear', [w, s, z], name);
  }
}

export interface ModelSpec {
  graphName: string;
  docString: string;
  modelVersion: number;
  producerVersion: string;
  input: ValueInfoMsg;
  output: ValueInfoMsg;
  metadata: Record<string, string>;
}

export function buildModel(g: GraphBuilder, spec: ModelSpec): Uint8Array {
  const model: ModelMsg = {
    irVersion: IR_VERSION,
    producerName: 'edgefleet-make-models',
    producerVersion: spec.producerVersion,
    modelVersion: spec.modelVersion,
    docString: spec.docString,
    graph: {
      name: spec.graphName,
      node: g.nodes,
      initializer: g.initializers,
      input: [spec.input],
      output: [spec.output],
    },
    opsetImport: [{ domain: '', version: OPSET }],
    metadataProps: Object.entries(spec.metadata)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, value]) => ({ key, value })),
  };
  return encodeModel(model);
}
