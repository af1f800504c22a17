/**
 * The static data-dependent-allocation guard (shared/validate/alloc-guard.ts, issue #14) on
 * graphs built in code: what it must refuse (sizes read from input values, directly, through
 * casts, inside subgraphs and model-local functions) and what it must let through (constant
 * sizes, sizes from input shapes, ordinary models, the 20,000-deep function chain).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dataDependentAllocations } from '../../shared/validate/alloc-guard.ts';
import {
  batchAllocModelBytes,
  dataDependentAllocModelBytes,
  encode,
  int64s,
  memoryBombModelBytes,
  segfaultModelBytes,
} from '../helpers/hostile-models.ts';
import { tinyModelBytes } from '../helpers/tiny-model.ts';

const SHAPE = { inputDim: 4, outputDim: 3 };
const INT64 = 7;
const cast = (from: string, to: string): Record<string, unknown> => ({ opType: 'Cast', input: [from], output: [to], name: to, attribute: [{ name: 'to', i: INT64, type: 2 }] });
/** A node producing `h` from the input and `x` (so every graph ends in the MatMul). */
const use = (x: string): Record<string, unknown>[] => [
  { opType: 'ReduceSum', input: [x], output: [`${x}_s`], name: `${x}_s` },
  { opType: 'Cast', input: [`${x}_s`], output: [`${x}_f`], name: `${x}_f`, attribute: [{ name: 'to', i: 1, type: 2 }] },
  { opType: 'Add', input: ['input', `${x}_f`], output: ['h'], name: 'use' },
];

test('the crafted data-dependent ConstantOfShape is refused, naming the node', () => {
  const t0 = performance.now();
  const problems = dataDependentAllocations(dataDependentAllocModelBytes(SHAPE));
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /node 'dd_bomb' \(ConstantOfShape\) in the graph takes its output size from input data/);
  console.log(`security: data-dependent-allocation static guard refuses the crafted ConstantOfShape (${problems.length} problem, ${(performance.now() - t0).toFixed(1)} ms)`);
});

test('Expand, Tile, Range and Resize fed from input values are refused', () => {
  const nodes = [
    { opType: 'ReduceMax', input: ['input'], output: ['m'], name: 'm' },
    cast('m', 'mi'),
    { opType: 'Reshape', input: ['mi', 'one'], output: ['sh'], name: 'sh' },
    { opType: 'Expand', input: ['one', 'sh'], output: ['e'], name: 'expand' },
    { opType: 'Tile', input: ['one', 'sh'], output: ['t'], name: 'tile' },
    { opType: 'Range', input: ['zero', 'mi', 'onei'], output: ['r'], name: 'range' },
    { opType: 'Resize', input: ['input', '', '', 'sh4'], output: ['z'], name: 'resize' },
    { opType: 'Concat', input: ['e', 't', 'r'], output: ['all'], name: 'cat', attribute: [{ name: 'axis', i: 0, type: 2 }] },
    ...use('all'),
  ];
  const inits = [int64s('one', [1n]), int64s('zero', [0n]), int64s('onei', [1n])];
  const problems = dataDependentAllocations(encode(SHAPE, nodes.concat([{ opType: 'Concat', input: ['sh', 'sh'], output: ['sh4'], name: 'sh4', attribute: [{ name: 'axis', i: 0, type: 2 }] }]), inits, []));
  assert.deepEqual(
    problems.map((p) => /node '(\w+)' \((\w+)\)/.exec(p)?.slice(1).join(':')),
    ['expand:Expand', 'tile:Tile', 'range:Range'],
    problems.join('\n'),
  );
  // Resize reads `sh4`, defined after it: the graph is out of order, not tainted yet; a sorted
  // graph with it before the Resize is refused too.
  const sorted = [...nodes.slice(0, 3), { opType: 'Concat', input: ['sh', 'sh', 'sh', 'sh'], output: ['sh4'], name: 'sh4', attribute: [{ name: 'axis', i: 0, type: 2 }] }, ...nodes.slice(3)];
  assert.ok(dataDependentAllocations(encode(SHAPE, sorted, inits, [])).some((p) => p.includes("'resize' (Resize)")));
});

test('sizes from constants or from input shapes are let through', () => {
  assert.deepEqual(dataDependentAllocations(memoryBombModelBytes(SHAPE, 1024)), []);
  assert.deepEqual(dataDependentAllocations(batchAllocModelBytes(SHAPE, 4096)), []);
  assert.deepEqual(dataDependentAllocations(tinyModelBytes({ inputDim: 8, outputDim: 3, layers: 2, hidden: 16, softmax: true })), []);
  // Shape → Cast → Expand: a shape is not data.
  const nodes = [{ opType: 'Shape', input: ['input'], output: ['s'], name: 's' }, { opType: 'Expand', input: ['input', 's'], output: ['e'], name: 'expand' }, ...use('e')];
  assert.deepEqual(dataDependentAllocations(encode(SHAPE, nodes, [], [])), []);
});

test('a ConstantOfShape inside an If branch or a model-local function is found', () => {
  const branch = (out: string): Record<string, unknown> => ({
    name: 'branch',
    node: [{ opType: 'ConstantOfShape', input: ['outer_shape'], output: [out], name: 'inner_bomb' }],
    output: [{ name: out }],
  });
  const viaIf = [
    { opType: 'ReduceSum', input: ['input'], output: ['s'], name: 's' },
    cast('s', 'si'),
    { opType: 'Reshape', input: ['si', 'one'], output: ['outer_shape'], name: 'outer_shape' },
    { opType: 'Greater', input: ['s', 'zf'], output: ['cond'], name: 'cond' },
    { opType: 'If', input: ['cond'], output: ['y'], name: 'if', attribute: [{ name: 'then_branch', g: branch('a'), type: 5 }, { name: 'else_branch', g: branch('b'), type: 5 }] },
    ...use('y'),
  ];
  const zf = { name: 'zf', dims: [], dataType: 1, rawData: Buffer.from(new Float32Array([0]).buffer) };
  const ifProblems = dataDependentAllocations(encode(SHAPE, viaIf, [int64s('one', [1n]), zf], []));
  assert.equal(ifProblems.length, 2, ifProblems.join('\n'));
  assert.match(ifProblems[0]!, /node 'inner_bomb' \(ConstantOfShape\) in a subgraph of node 'if'/);

  const fn = {
    name: 'alloc',
    domain: 'edgefleet.hostile',
    input: ['n'],
    output: ['z'],
    opsetImport: [{ domain: '', version: 17 }],
    node: [{ opType: 'ConstantOfShape', input: ['n'], output: ['z'], name: 'fn_bomb' }],
  };
  const call = (arg: string): Record<string, unknown>[] => [
    { opType: 'alloc', domain: 'edgefleet.hostile', input: [arg], output: ['y'], name: 'call' },
    ...use('y'),
  ];
  const tainted = [{ opType: 'ReduceSum', input: ['input'], output: ['s'], name: 's' }, cast('s', 'si'), { opType: 'Reshape', input: ['si', 'one'], output: ['n1'], name: 'n1' }, ...call('n1')];
  assert.match(dataDependentAllocations(encode(SHAPE, tainted, [int64s('one', [1n])], [fn])).join('\n'), /node 'fn_bomb' \(ConstantOfShape\) in function alloc/);
  // The same function called with a constant size is fine.
  assert.deepEqual(dataDependentAllocations(encode(SHAPE, call('one'), [int64s('one', [1n])], [fn])), []);
});

test('the 20,000-deep function chain is walked without recursion; garbage is an error', () => {
  const t0 = performance.now();
  assert.deepEqual(dataDependentAllocations(segfaultModelBytes(SHAPE)), []);
  const ms = performance.now() - t0;
  assert.ok(ms < 5000, `${ms} ms`);
  assert.throws(() => dataDependentAllocations(new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x0f])));
  assert.throws(() => dataDependentAllocations(new Uint8Array(0)), /no graph/);
});
