/**
 * checkModelAgainstManifest: a model's own metadata against its manifest, before activation.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkModelAgainstManifest } from '../../agent/runtime/session-check.ts';
import type { ModelHandle } from '../../agent/runtime/engine.ts';
import { ManifestSchema, type ManifestV1 } from '../../shared/manifest.ts';
import { v1 } from '../helpers/manifest-v1.ts';

function tabularManifest(over: Record<string, unknown> = {}): ManifestV1 {
  return v1(ManifestSchema.parse({
    manifestVersion: 1,
    name: 'machine-state',
    version: '1.0.0',
    task: 'classification',
    quantization: 'int8-qdq',
    artifact: { file: 'machine-state.onnx', sha256: 'a'.repeat(64), size: 1000 },
    inputs: [{ name: 'input', dtype: 'float32', shape: ['N', 4] }],
    outputs: [{ name: 'logits', dtype: 'float32', shape: ['N', 3] }],
    preprocessing: {
      kind: 'tabular',
      features: ['a', 'b', 'c', 'd'].map((name) => ({ name, mean: 0, std: 1 })),
    },
    postprocessing: { output: 'logits', labels: ['ok', 'warn', 'fail'] },
    testVectors: [{ input: [1, 2, 3, 4], shape: [1, 4], expected: [0, 0, 0], tolerance: 0.01 }],
    ...over,
  }));
}

/** The handle with `inputs` (what the check reads) being its one primary input (inputName, inputType, inputDims). */
function oneInput(h: Omit<ModelHandle, 'inputs'>): ModelHandle {
  return { ...h, inputs: [{ name: h.inputName, type: h.inputType, dims: h.inputDims }] };
}

function tabularHandle(over: Partial<Omit<ModelHandle, 'inputs'>> = {}): ModelHandle {
  return oneInput({
    key: 'machine-state@1.0.0',
    path: '/x/machine-state.onnx',
    inputName: 'input',
    inputType: 'float32',
    inputDims: ['batch', 4],
    outputNames: ['logits'],
    outputs: [{ name: 'logits', type: 'float32', dims: ['batch', 3] }],
    dynamicBatch: true,
    maxBatch: 16,
    ...over,
  });
}

function imageManifest(layout: 'NCHW' | 'NHWC', over: Record<string, unknown> = {}): ManifestV1 {
  const shape = layout === 'NCHW' ? ['N', 1, 64, 48] : ['N', 64, 48, 1];
  return v1(ManifestSchema.parse({
    manifestVersion: 1,
    name: 'part-defect',
    version: '2.0.0',
    task: 'classification',
    quantization: 'int8-qdq',
    artifact: { file: 'part-defect.onnx', sha256: 'b'.repeat(64), size: 1000 },
    inputs: [{ name: 'image', dtype: 'float32', shape }],
    outputs: [{ name: 'logits', dtype: 'float32', shape: ['N', 2] }],
    preprocessing: { kind: 'image', width: 48, height: 64, colour: 'gray', layout, dtype: 'float32', mean: [0.5], std: [0.25] },
    postprocessing: { output: 'logits', labels: ['good', 'defect'] },
    testVectors: [{ input: new Array(64 * 48).fill(0), shape: layout === 'NCHW' ? [1, 1, 64, 48] : [1, 64, 48, 1], expected: [0, 0], tolerance: 0.1 }],
    ...over,
  }));
}

function imageHandle(dims: (number | string)[]): ModelHandle {
  return oneInput({
    key: 'part-defect@2.0.0',
    path: '/x/part-defect.onnx',
    inputName: 'image',
    inputType: 'float32',
    inputDims: dims,
    outputNames: ['logits'],
    outputs: [{ name: 'logits', type: 'float32', dims: ['N', 2] }],
    dynamicBatch: true,
    maxBatch: 16,
  });
}

void describe('checkModelAgainstManifest', () => {
  void test('a model that matches its manifest has no mismatches (symbolic dim names may differ)', () => {
    assert.deepEqual(checkModelAgainstManifest(tabularHandle(), tabularManifest()), []);
    assert.deepEqual(checkModelAgainstManifest(imageHandle(['N', 1, 64, 48]), imageManifest('NCHW')), []);
    assert.deepEqual(checkModelAgainstManifest(imageHandle(['N', 64, 48, 1]), imageManifest('NHWC')), []);
  });

  void test('a model dim that is symbolic satisfies a fixed manifest dim', () => {
    assert.deepEqual(checkModelAgainstManifest(imageHandle(['N', 1, 'h', 'w']), imageManifest('NCHW')), []);
  });

  void test('input name, dtype and shape mismatches are each reported', () => {
    const m = checkModelAgainstManifest(tabularHandle({ inputName: 'x', inputType: 'int8', inputDims: ['N', 5] }), tabularManifest());
    assert.ok(m.some((s) => /named x in the model, input in the manifest/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /dtype is int8 in the model, float32/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /dim 1 is 5 in the model, 4 in the manifest/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /4 features, the model's input takes 5/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /test vector 0: dim 1 is 5/.test(s)), m.join('\n'));
  });

  void test('a manifest that promises a dynamic batch needs a model with one', () => {
    const m = checkModelAgainstManifest(tabularHandle({ inputDims: [1, 4], dynamicBatch: false, maxBatch: 1 }), tabularManifest());
    assert.deepEqual(m, ["input input: dim 0 is dynamic ('N') in the manifest but fixed at 1 in the model"]);
  });

  void test('rank mismatch', () => {
    const m = checkModelAgainstManifest(tabularHandle({ inputDims: ['N', 1, 4] }), tabularManifest());
    assert.ok(m.some((s) => /rank 2, the model's .* has rank 3/.test(s)), m.join('\n'));
  });

  void test('missing, extra and differently shaped outputs', () => {
    const h = tabularHandle({
      outputNames: ['scores', 'logits'],
      outputs: [
        { name: 'scores', type: 'float32', dims: ['N', 3] },
        { name: 'logits', type: 'int64', dims: ['N', 4] },
      ],
    });
    const m = checkModelAgainstManifest(h, tabularManifest());
    assert.ok(m.includes('output scores: in the model but not in the manifest'), m.join('\n'));
    assert.ok(m.some((s) => /output logits: dtype is int64/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /output logits: dim 1 is 4 in the model, 3/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /3 labels, output logits has 4 classes/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /expects 3 output values, the model gives 4/.test(s)), m.join('\n'));

    const gone = checkModelAgainstManifest(tabularHandle({ outputNames: ['y'], outputs: [{ name: 'y', type: 'float32', dims: ['N', 3] }] }), tabularManifest());
    assert.ok(gone.some((s) => /output logits: not in the model \(it has y\)/.test(s)), gone.join('\n'));
  });

  void test('image preprocessing is checked against the model input layout', () => {
    // An NHWC model described as NCHW: channels and sizes land on the wrong dims.
    const m = checkModelAgainstManifest(imageHandle(['N', 64, 48, 1]), imageManifest('NCHW', { inputs: [{ name: 'image', dtype: 'float32', shape: ['N', 'a', 'b', 'c'] }] }));
    assert.ok(m.some((s) => /channels \(gray\) is 1, the model's input dim 1 \(NCHW\) is 64/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /height is 64, the model's input dim 2 \(NCHW\) is 48/.test(s)), m.join('\n'));
    assert.ok(m.some((s) => /width is 48, the model's input dim 3 \(NCHW\) is 1/.test(s)), m.join('\n'));
    const dtype = checkModelAgainstManifest(
      oneInput({ ...imageHandle(['N', 1, 64, 48]), inputType: 'uint8' }),
      imageManifest('NCHW', { inputs: [{ name: 'image', dtype: 'uint8', shape: ['N', 1, 64, 48] }] }),
    );
    assert.deepEqual(dtype, ["preprocessing: produces float32, the model's input is uint8"]);
  });

  void test('per-channel mean/std must match the colour channels', () => {
    const base = imageManifest('NCHW');
    const m = checkModelAgainstManifest(imageHandle(['N', 1, 64, 48]), { ...base, preprocessing: { ...base.preprocessing, mean: [0.1, 0.2] } as ManifestV1['preprocessing'] });
    assert.deepEqual(m, ['preprocessing: mean has 2 values for 1 channel(s)']);
  });
});
