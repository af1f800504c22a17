/**
 * Postprocessing of classifier outputs: softmax when the model emits logits, then the top
 * label with its confidence and the margin to the runner-up.
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
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i] as number);
  const exps = Array.from(logits, (x) => Math.exp(x - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
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
    scores: scores.map((s) => Math.round(s * 1e6) / 1e6),
  };
}
