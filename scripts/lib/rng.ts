/**
 * Seeded pseudo-random numbers for everything synthetic (demo models, simulated sensors and
 * cameras, tests). mulberry32 is tiny, fast and gives identical sequences on every platform,
 * which is what makes the generated models byte-for-byte reproducible.
 */

/** mulberry32: returns a function yielding uniform floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number;
  /** Normal with the given mean and standard deviation. */
  normal(mean?: number, sd?: number): number;
  /** Integer in [0, n). */
  int(n: number): number;
  /** One element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
  /** A new independent generator derived from this one (for sub-streams). */
  fork(): Rng;
}

/** Anything random the generators accept: an Rng, or a bare uniform source like mulberry32(seed). */
export type RandomSource = Rng | (() => number);

/** An Rng on top of any uniform [0, 1) source. */
export function rngFrom(u: () => number): Rng {
  // Box-Muller yields pairs; keeping the spare halves the cost and stays deterministic.
  let spare: number | undefined;
  const rng: Rng = {
    next: u,
    uniform: (lo, hi) => lo + (hi - lo) * u(),
    normal: (mean = 0, sd = 1) => {
      if (spare !== undefined) {
        const z = spare;
        spare = undefined;
        return mean + sd * z;
      }
      let r1 = u();
      while (r1 <= Number.MIN_VALUE) r1 = u();
      const r2 = u();
      const mag = Math.sqrt(-2 * Math.log(r1));
      spare = mag * Math.sin(2 * Math.PI * r2);
      return mean + sd * mag * Math.cos(2 * Math.PI * r2);
    },
    int: (n) => Math.floor(u() * n),
    pick: <T>(items: readonly T[]): T => {
      if (items.length === 0) throw new RangeError('pick from an empty array');
      return items[Math.floor(u() * items.length)] as T;
    },
    fork: () => createRng(Math.floor(u() * 4294967296)),
  };
  return rng;
}

export function createRng(seed: number): Rng {
  return rngFrom(mulberry32(seed));
}

// One wrapper per bare source, so its Box-Muller spare survives across calls.
const wrappers = new WeakMap<() => number, Rng>();

export function toRng(src: RandomSource): Rng {
  if (typeof src !== 'function') return src;
  let rng = wrappers.get(src);
  if (!rng) {
    rng = rngFrom(src);
    wrappers.set(src, rng);
  }
  return rng;
}
