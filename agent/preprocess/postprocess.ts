/**
 * Postprocessing of classifier outputs: softmax when the model emits logits, then the top
 * label with its confidence and the margin to the runner-up. Written as plain indexed loops:
 * it runs once per inference on the agent's main thread (issue #5's throughput target).
 */
import type { Postprocess } from '../../shared/manifest.ts';

export interface Classification {
  label: string;
  index: number;
  confidence: number;
  margin: number;
  scores: number[];
}

export function softmax(logits: ArrayLike<number>): number[] {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i] as number);
  // Plain loops, same operations in the same order as map/reduce (bit-identical results),
  // without their closures and intermediate arrays: this runs once per inference (issue #5).
  const out = new Array<number>(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp((logits[i] as number) - max);
    out[i] = e;
    sum += e;
  }
  for (let i = 0; i < n; i++) out[i] = (out[i] as number) / sum;
  return out;
}

export function classify(spec: Postprocess, output: ArrayLike<number>): Classification {
  const scores = spec.output === 'logits' ? softmax(output) : Array.from(output);
  let best = 0;
  let second = -1;
  for (let i = 1; i < scores.length; i++) {
    if ((scores[i] as number) > (scores[best] as number)) {
      second = best;
      best = i;
    } else if (second < 0 || (scores[i] as number) > (scores[second] as number)) second = i;
  }
  const confidence = scores[best] as number;
  return {
    label: spec.labels[best] ?? String(best),
    index: best,
    confidence,
    margin: second >= 0 ? confidence - (scores[second] as number) : confidence,
    scores: rounded(scores),
  };
}

function rounded(scores: readonly number[]): number[] {
  const out = new Array<number>(scores.length);
  for (let i = 0; i < scores.length; i++) out[i] = Math.round((scores[i] as number) * 1e6) / 1e6;
  return out;
}
