/**
 * Reference bins for drift (ARCHITECTURE §8): quantile edges and counts of a reference data set,
 * as a manifest's `drift.features` holds them. One implementation for everything that builds
 * them, shipped and not: `edgefleet model baseline` (cli/commands/model-baseline.ts) and the demo
 * model generator (scripts/make-models via scripts/lib/models.ts). It lives in shared/ because a
 * shipped command may not import scripts/ (issue #12; eslint.config.js walls). Pure, no I/O.
 *
 * Bin convention (shared/drift/summary.ts reads the same): with interior edges e[0..K-1], a value
 * v goes to counts[k] where k = number of edges <= v.
 */
import type { ReferenceBins } from '../manifest.ts';

/** Rounds to `digits` significant digits, so manifests hold short, exact decimal numbers. */
export function roundSig(x: number, digits = 5): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  return Number(x.toPrecision(digits));
}

/**
 * Ten quantile bins of `values`: the nine interior deciles as edges (rounded, de-duplicated),
 * counts per bin where bin i holds values v with edges[i-1] <= v < edges[i].
 */
export function referenceBins(name: string, values: readonly number[], bins = 10): ReferenceBins {
  const sorted = [...values].sort((a, b) => a - b);
  const edges: number[] = [];
  for (let i = 1; i < bins; i++) {
    const e = roundSig(sorted[Math.min(sorted.length - 1, Math.floor((i * sorted.length) / bins))] as number, 4);
    if (edges.length === 0 || e > (edges[edges.length - 1] as number)) edges.push(e);
  }
  const counts = new Array<number>(edges.length + 1).fill(0);
  for (const v of values) {
    let k = 0;
    while (k < edges.length && v >= (edges[k] as number)) k++;
    counts[k] = (counts[k] as number) + 1;
  }
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / values.length;
  return { name, edges, counts, mean: roundSig(mean, 6), std: roundSig(Math.sqrt(variance), 6) };
}
