/**
 * A release the device's pipelines do not run, or cannot feed, is refused (issue #13):
 * agent/models/pipeline-fit.ts, checked by the updater before download.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PipelineSchema, type PipelineConfig } from '../../agent/config.ts';
import { chainProblem, releaseFitProblem } from '../../agent/models/pipeline-fit.ts';
import { ManifestV2Schema, type Manifest } from '../../shared/manifest.ts';

const pipe = (p: Record<string, unknown>): PipelineConfig => PipelineSchema.parse(p);

const sha = 'a'.repeat(64);
function v2(name: string, inputs: unknown[], post: unknown, task: string): Manifest {
  return ManifestV2Schema.parse({
    manifestVersion: 2,
    name,
    version: '1.0.0',
    task,
    quantization: 'fp32',
    artifact: { file: 'm.onnx', sha256: sha, size: 10 },
    inputs,
    outputs: [{ name: 'y', dtype: 'float32', shape: [1, 1] }],
    postprocessing: post,
    testVectors: [{ inputs: Object.fromEntries((inputs as { name: string; shape: number[] }[]).map((i) => [i.name, { dims: i.shape, values: new Array(i.shape.reduce((a, b) => a * b, 1)).fill(0) }])), expected: {}, tolerance: 0 }],
  });
}

const image = v2('detector', [{ name: 'img', dtype: 'float32', shape: [1, 3, 8, 8], source: { kind: 'image', width: 8, height: 8, colour: 'rgb', layout: 'NCHW' } }], { kind: 'anomaly', threshold: 1 }, 'anomaly');
const reading = v2('scorer', [{ name: 'x', dtype: 'float32', shape: [1, 2], source: { kind: 'reading', features: [{ name: 'a' }, { name: 'b' }] } }], { kind: 'anomaly', threshold: 1 }, 'anomaly');
const head = v2('head', [{ name: 'e', dtype: 'float32', shape: [1, 4], source: { kind: 'upstream', output: 'emb', frames: 1 } }], { kind: 'anomaly', threshold: 1 }, 'anomaly');

void describe('releaseFitProblem', () => {
  const pipelines = [
    pipe({ name: 'cam', model: 'detector', input: { type: 'folder', path: '/srv/cam' } }),
    pipe({ name: 'vib', model: 'scorer', input: { type: 'mqtt' } }),
    pipe({ name: 'kws', model: 'mel', chain: ['head'], input: { type: 'mqtt', format: 'json' } }),
  ];

  test('a model some pipeline runs and feeds what it takes fits', () => {
    assert.equal(releaseFitProblem(pipelines, image), undefined);
    assert.equal(releaseFitProblem(pipelines, reading), undefined);
    assert.equal(releaseFitProblem(pipelines, head), undefined, 'a chain stage with an upstream input');
  });

  test('a model no pipeline runs is refused, naming the pipelines', () => {
    const other = { ...reading, name: 'unused' };
    assert.match(releaseFitProblem(pipelines, other) ?? '', /no pipeline on this device runs model unused \(pipelines: cam → detector, vib → scorer, kws → mel → head\)/);
  });

  test('a model whose request input the pipeline cannot feed is refused', () => {
    const imageScorer = { ...image, name: 'scorer' };
    assert.equal(releaseFitProblem(pipelines, imageScorer), undefined, 'an MQTT input without format and no model yet takes either');
    assert.match(
      releaseFitProblem(pipelines, imageScorer, (n) => (n === 'scorer' ? reading : undefined)) ?? '',
      /pipeline vib feeds JSON readings, scorer@1.0.0 takes images/,
      'it feeds what the model it started with took',
    );
    const json = [pipe({ name: 'vib', model: 'scorer', input: { type: 'mqtt', format: 'json' } })];
    assert.match(releaseFitProblem(json, imageScorer) ?? '', /pipeline vib feeds JSON readings, scorer@1.0.0 takes images/);
    const readingDetector = { ...reading, name: 'detector' };
    assert.match(releaseFitProblem(pipelines, readingDetector) ?? '', /pipeline cam feeds images, detector@1.0.0 takes readings of JSON readings/);
  });

  test('a chain stage without an upstream input is refused', () => {
    const badHead = { ...reading, name: 'head' };
    assert.match(releaseFitProblem(pipelines, badHead) ?? '', /runs head after mel, but head@1.0.0 has no upstream input/);
  });

  test('a chain runs together only when each stage takes an output of the one before, in whole rows', () => {
    const mel = v2('mel', [{ name: 'x', dtype: 'float32', shape: [1, 2], source: { kind: 'reading', features: [{ name: 'a' }, { name: 'b' }] } }], { kind: 'anomaly', threshold: 1 }, 'anomaly');
    const melOut = { ...mel, outputs: [{ name: 'emb', dtype: 'float32' as const, shape: [1, 8] }] };
    assert.equal(chainProblem([melOut, head]), undefined, 'rows of 4 from 8 values');
    assert.match(chainProblem([mel, head]) ?? '', /takes output emb, which mel@1.0.0 does not have \(y\)/);
    const odd = { ...mel, outputs: [{ name: 'emb', dtype: 'float32' as const, shape: [1, 6] }] };
    assert.match(chainProblem([odd, head]) ?? '', /output emb gives 6 values, not whole rows of 4/);
    assert.match(chainProblem([melOut, reading]) ?? '', /scorer@1.0.0 follows mel but has no upstream input/);
    // An update of the head that no longer fits the mel model the device runs is refused.
    const pipelines = [pipe({ name: 'kws', model: 'mel', chain: ['head'], input: { type: 'mqtt', format: 'json' } })];
    const wideHead = { ...head, inputs: head.manifestVersion === 2 ? head.inputs.map((i) => ({ ...i, shape: [1, 5] })) : [] } as Manifest;
    assert.match(releaseFitProblem(pipelines, wideHead, (n) => (n === 'mel' ? melOut : undefined)) ?? '', /pipeline kws: mel@1.0.0 output emb gives 8 values, not whole rows of 5/);
    assert.equal(releaseFitProblem(pipelines, head, (n) => (n === 'mel' ? melOut : undefined)), undefined);
  });

  test('releases installed as one unit are fitted together: each alone breaks the chain, both together fit', () => {
    const pipelines = [pipe({ name: 'kws', model: 'mel', chain: ['head'], input: { type: 'mqtt', format: 'json' } })];
    const mel = v2('mel', [{ name: 'x', dtype: 'float32', shape: [1, 2], source: { kind: 'reading', features: [{ name: 'a' }, { name: 'b' }] } }], { kind: 'anomaly', threshold: 1 }, 'anomaly');
    const mel1 = { ...mel, outputs: [{ name: 'emb', dtype: 'float32' as const, shape: [1, 4] }] };
    const mel2 = { ...mel1, version: '2.0.0', outputs: [{ name: 'emb', dtype: 'float32' as const, shape: [1, 6] }] };
    const head2 = { ...head, version: '2.0.0', inputs: head.manifestVersion === 2 ? head.inputs.map((i) => ({ ...i, shape: [1, 6] })) : [] } as Manifest;
    const running = (n: string): Manifest | undefined => (n === 'mel' ? mel1 : n === 'head' ? head : undefined);
    assert.match(releaseFitProblem(pipelines, mel2, running) ?? '', /pipeline kws: mel@2.0.0 output emb gives 6 values, not whole rows of 4 for head input e/);
    assert.match(releaseFitProblem(pipelines, head2, running) ?? '', /pipeline kws: mel@1.0.0 output emb gives 4 values, not whole rows of 6/);
    assert.equal(releaseFitProblem(pipelines, mel2, running, [mel2, head2]), undefined);
    assert.equal(releaseFitProblem(pipelines, head2, running, [mel2, head2]), undefined);
    // A replacement of another name only: the chain is still judged against what it replaces.
    assert.match(releaseFitProblem(pipelines, mel2, running, [mel2]) ?? '', /not whole rows of 4/);
  });
});
