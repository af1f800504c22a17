/**
 * The hot-path postprocessing (softmax, classify's rounding, topK, decide) was rewritten as
 * plain loops, and the published result is serialized by hand (resultJson), for issue #5's
 * throughput target. These tests hold them to the straightforward map/reduce/sort versions and
 * to JSON.stringify, bit for bit, on random scores with ties, infinities and NaN, and on
 * strings that need escaping.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decide, fixedResultJson, resultJson, topK, type PipelineResult } from '../../agent/pipeline.ts';
import { classify, softmax } from '../../agent/preprocess/postprocess.ts';
import { mulberry32 as rng } from '../../scripts/lib/rng.ts';

function referenceSoftmax(logits: ArrayLike<number>): number[] {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i] as number);
  const exps = Array.from(logits, (x) => Math.exp(x - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

function referenceTopK(labels: readonly string[], scores: readonly number[], k: number): { label: string; score: number }[] {
  return scores
    .map((score, i) => ({ label: labels[i] ?? String(i), score }))
    .sort((a, b) => b.score - a.score)
    .slice(0, Math.max(1, k));
}

/** Scores with many ties (few distinct values), sometimes ±Infinity or -0. */
function scores(seed: number, n: number): number[] {
  const r = rng(seed);
  const pool = [0, -0, 0.25, 0.5, 1, -3, Infinity, -Infinity];
  return Array.from({ length: n }, () => (r() < 0.5 ? pool[Math.floor(r() * pool.length)]! : Math.round(r() * 8) / 8 - 0.5));
}

void describe('postprocess fast paths', () => {
  void test('softmax is bit-identical to the map/reduce version', () => {
    for (let s = 0; s < 300; s++) {
      const r = rng(s);
      const logits = Float32Array.from({ length: 1 + (s % 12) }, () => (r() - 0.5) * 40);
      assert.deepEqual(softmax(logits), referenceSoftmax(logits), `seed ${s}`);
    }
  });

  void test('classify keeps label, index, confidence, margin and rounded scores', () => {
    const labels = ['a', 'b', 'c', 'd'];
    for (let s = 0; s < 200; s++) {
      const r = rng(1000 + s);
      const out = Float32Array.from({ length: 4 }, () => (r() - 0.5) * 10);
      const c = classify({ output: 'logits', labels }, out);
      const p = referenceSoftmax(out);
      assert.deepEqual(c.scores, p.map((x) => Math.round(x * 1e6) / 1e6));
      assert.equal(c.confidence, Math.max(...p));
      assert.equal(c.label, labels[c.index]);
    }
  });

  void test('topK orders like a stable descending sort, ties and NaN included', () => {
    const labels = Array.from({ length: 10 }, (_, i) => `l${i}`);
    for (let s = 0; s < 500; s++) {
      const n = 1 + (s % 10);
      const xs = scores(s, n);
      if (s % 7 === 0) xs[s % n] = NaN;
      for (const k of [0, 1, 2, 3, n, n + 2]) {
        assert.deepEqual(topK(labels.slice(0, n - (s % 2)), xs, k), referenceTopK(labels.slice(0, n - (s % 2)), xs, k), `seed ${s}, k ${k}`);
      }
    }
  });

  void test('decide picks the best label over its threshold', () => {
    const labels = ['ok', 'warn', 'fail'];
    assert.equal(decide(labels, [0.2, 0.5, 0.3], undefined), 'warn');
    assert.equal(decide(labels, [0.2, 0.5, 0.3], { warn: 0.6 }), 'fail');
    assert.equal(decide(labels, [0.2, 0.5, 0.3], { ok: 0.9, warn: 0.9, fail: 0.9 }), null);
    assert.equal(decide(labels, [0.4, 0.4, 0.2], undefined), 'ok', 'the first of equal scores');
  });

  void test('resultJson is JSON.stringify of the result, character for character', () => {
    const odd = ['plain', 'with "quotes"', 'back\\slash', 'new\nline', 'ünïcödé ✓', '\u0001ctl', 'lone \ud800 surrogate', ''];
    for (let s = 0; s < 400; s++) {
      const r = rng(5000 + s);
      const pick = (): string => odd[Math.floor(r() * odd.length)]!;
      const xs = scores(s, 1 + (s % 5));
      if (s % 9 === 0) xs[0] = NaN;
      // Every field, so a field added to PipelineResult fails here until resultJson writes it.
      const full: Required<PipelineResult> = {
        v: 1,
        id: pick(),
        ts: 1_764_000_000_000 + s,
        deviceId: pick(),
        pipeline: pick(),
        model: { name: pick(), version: pick() },
        label: pick(),
        confidence: xs[0]!,
        decision: s % 3 === 0 ? null : pick(),
        topK: xs.slice(0, 1 + (s % 3)).map((score) => ({ label: pick(), score })),
        scores: xs,
        latencyMs: s % 11 === 0 ? -0 : Math.round(r() * 1e6) / 1e3,
        inputTs: s % 13 === 0 ? Infinity : 1_763_999_999_000 + s,
        image: { brightness: r(), contrast: s % 17 === 0 ? NaN : r() * 100, sharpness: Math.round(r() * 1e6) / 1e6 },
      };
      const partial: PipelineResult = { ...full };
      if (s % 2 === 0) delete partial.inputTs;
      if (s % 4 < 2) delete partial.image;
      for (const res of [full, partial]) {
        const fixed = fixedResultJson(res.deviceId, res.pipeline, res.model.name, res.model.version);
        assert.equal(resultJson(res, fixed), JSON.stringify(res), `seed ${s}`);
      }
    }
  });
});
