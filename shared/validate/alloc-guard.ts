/**
 * Static guard against data-dependent allocation (issue #14). A model can pass the probe (its
 * test vectors are small) and then allocate gigabytes for one crafted input when an operator's
 * output size is read from input *values*: ConstantOfShape(Cast(ReduceSum(input))) allocates
 * whatever the sender asks. onnxruntime cannot cap that at run time from Node (no per-session
 * arena limit in onnxruntime-node; OrtArenaCfg max_mem is C API only, and worker.terminate()
 * cannot interrupt native code), so models are refused before they load.
 *
 * The check is a taint analysis over the ONNX graph: graph inputs are tainted; a node's outputs
 * are tainted when any of its inputs is, except Shape and Size (they read only the input's
 * dims, which the engine checks against the model's declared shape); subgraphs (If, Loop, Scan)
 * and model-local functions are followed, conservatively. A node whose size-giving input (the
 * SIZE_INPUTS table) is tainted is a problem, named in the sentence. Sizes derived from input
 * *shapes* are not flagged: every dynamic model has them, and the pool's RSS watchdog bounds
 * them at run time. Reshape is not listed: it cannot produce more elements than it is given.
 *
 * Pure: parses bytes (protobufjs, a field subset: initializer data is skipped, not copied),
 * imports neither onnxruntime nor anything of agent or hub. Runs in the probe child (hub and
 * agent validation) and in the inference worker before a session is created.
 */
import protobuf from 'protobufjs';

/** Inputs (by index) that set the size of an ONNX operator's output, default domain. */
const SIZE_INPUTS: Readonly<Record<string, readonly number[]>> = {
  ConstantOfShape: [0],
  Expand: [1],
  Tile: [1],
  Range: [0, 1, 2],
  Resize: [2, 3],
  Upsample: [1],
  Pad: [1],
  OneHot: [1],
  CenterCropPad: [1],
  Col2Im: [1, 2],
  MaxUnpool: [2],
  DFT: [1],
  HannWindow: [0],
  HammingWindow: [0],
  BlackmanWindow: [0],
  MelWeightMatrix: [0, 1, 2],
  // The trip count: every iteration may append to scan outputs.
  Loop: [0],
};

/** Ops whose outputs depend on their input's dims, not its values. */
const SHAPE_ONLY = new Set(['Shape', 'Size']);

const SCHEMA = `
syntax = "proto2";
package g;
message Attr { optional string name = 1; optional Graph g = 6; repeated Graph graphs = 11; }
message Node {
  repeated string input = 1; repeated string output = 2; optional string name = 3;
  optional string op_type = 4; repeated Attr attribute = 5; optional string domain = 7;
}
message Named { optional string name = 1; }
message Init { optional string name = 8; }
message Graph { repeated Node node = 1; repeated Init initializer = 5; repeated Named input = 11; }
message Func {
  optional string name = 1; repeated string input = 4; repeated string output = 5;
  repeated Node node = 7; optional string domain = 10;
}
message Model { optional Graph graph = 7; repeated Func functions = 25; }
`;

interface NodeP {
  input?: string[];
  output?: string[];
  name?: string;
  opType?: string;
  domain?: string;
  attribute?: { name?: string; g?: GraphP; graphs?: GraphP[] }[];
}
interface GraphP {
  node?: NodeP[];
  initializer?: { name?: string }[];
  input?: { name?: string }[];
}
interface FuncP {
  name?: string;
  domain?: string;
  input?: string[];
  output?: string[];
  node?: NodeP[];
}

let modelType: protobuf.Type | undefined;

const isDefaultDomain = (d: string | undefined): boolean => d === undefined || d === '' || d === 'ai.onnx';
const nodeName = (n: NodeP, i: number): string => (n.name ? `'${n.name}'` : `#${i}`);

function subgraphs(n: NodeP): GraphP[] {
  const out: GraphP[] = [];
  for (const a of n.attribute ?? []) {
    if (a.g) out.push(a.g);
    for (const g of a.graphs ?? []) out.push(g);
  }
  return out;
}

/** Every name a graph reads (its nodes' inputs, its subgraphs' too): outer-scope values among them. */
function readsOf(g: GraphP, into: Set<string>): Set<string> {
  for (const n of g.node ?? []) {
    for (const i of n.input ?? []) if (i) into.add(i);
    for (const s of subgraphs(n)) readsOf(s, into);
  }
  return into;
}

class Analysis {
  readonly problems: string[] = [];
  /** Per local function: which formal inputs some call passes tainted data to. */
  readonly #formalTaint = new Map<string, Set<number>>();
  readonly #functions = new Map<string, FuncP>();
  readonly #queue = new Set<string>();

  constructor(functions: readonly FuncP[]) {
    for (const f of functions) this.#functions.set(`${f.domain ?? ''}:${f.name ?? ''}`, f);
  }

  run(graph: GraphP): void {
    const constants = new Set((graph.initializer ?? []).map((t) => t.name ?? ''));
    // Graph inputs that are initializers (IR < 4 lists them) are not fed by the engine.
    const tainted = new Set((graph.input ?? []).map((i) => i.name ?? '').filter((n) => n && !constants.has(n)));
    this.#nodes(graph.node ?? [], tainted, 'the graph');
    // Each function is re-checked only when a call taints a further formal input: terminates,
    // and a 20,000-deep chain of functions (hostile-models.ts) costs no recursion.
    while (this.#queue.size) {
      const key = this.#queue.values().next().value as string;
      this.#queue.delete(key);
      const f = this.#functions.get(key)!;
      const formal = this.#formalTaint.get(key)!;
      const t = new Set((f.input ?? []).filter((_, i) => formal.has(i)));
      this.#nodes(f.node ?? [], t, `function ${f.name ?? '?'}`);
    }
  }

  /** Propagates taint through `nodes` in order (ONNX graphs are topologically sorted). */
  #nodes(nodes: readonly NodeP[], tainted: Set<string>, where: string): void {
    for (const [i, n] of nodes.entries()) {
      const op = n.opType ?? '';
      const inputs = n.input ?? [];
      const subs = subgraphs(n);
      let hot = !SHAPE_ONLY.has(op) && inputs.some((x) => x !== '' && tainted.has(x));
      if (!hot && subs.length) {
        const reads = new Set<string>();
        for (const s of subs) readsOf(s, reads);
        hot = [...reads].some((x) => tainted.has(x));
      }
      if (isDefaultDomain(n.domain)) {
        for (const k of SIZE_INPUTS[op] ?? []) {
          const x = inputs[k];
          if (x && tainted.has(x)) {
            this.problems.push(
              `data-dependent allocation: node ${nodeName(n, i)} (${op}) in ${where} takes its output size from input data (through ${x}), so one crafted input can make it allocate without bound`,
            );
            break;
          }
        }
      }
      for (const s of subs) {
        // Conservative: a subgraph of a node that sees tainted data has all its inputs tainted.
        const inner = new Set(tainted);
        if (hot) for (const x of s.input ?? []) if (x.name) inner.add(x.name);
        this.#nodes(s.node ?? [], inner, `a subgraph of node ${nodeName(n, i)} in ${where}`);
      }
      const fn = this.#functions.get(`${n.domain ?? ''}:${op}`);
      if (fn) this.#call(`${n.domain ?? ''}:${op}`, inputs, tainted);
      if (hot) for (const o of n.output ?? []) if (o) tainted.add(o);
    }
  }

  #call(key: string, actual: readonly string[], tainted: ReadonlySet<string>): void {
    let formal = this.#formalTaint.get(key);
    const first = !formal;
    formal ??= new Set();
    this.#formalTaint.set(key, formal);
    let grew = first;
    for (const [i, x] of actual.entries()) {
      if (x && tainted.has(x) && !formal.has(i)) {
        formal.add(i);
        grew = true;
      }
    }
    if (grew) this.#queue.add(key);
  }
}

/**
 * Every node of the ONNX model in `bytes` whose output size comes from input data, one sentence
 * each; empty = none. Throws when the bytes are not an ONNX model protobuf.
 */
export function dataDependentAllocations(bytes: Uint8Array): string[] {
  modelType ??= protobuf.parse(SCHEMA).root.lookupType('g.Model');
  const model = modelType.toObject(modelType.decode(bytes), { defaults: false, arrays: true }) as { graph?: GraphP; functions?: FuncP[] };
  if (!model.graph) throw new Error('not an ONNX model: no graph');
  const a = new Analysis(model.functions ?? []);
  a.run(model.graph);
  return a.problems;
}
