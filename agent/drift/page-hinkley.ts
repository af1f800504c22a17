/**
 * Page-Hinkley change detection (Page 1954; Hinkley 1971), two-sided, for the agent's
 * on-device early warning (issue #4). One detector watches one statistic per closed window
 * (mean top-1 confidence, or a feature's window mean in reference SD units), so it costs a few
 * additions per window and nothing per inference.
 *
 * With x̄_t the running mean of the observations so far (x_t included):
 *   up:   m_T = Σ (x_t - x̄_t - δ),  alarm when m_T - min_{t≤T} m_t > λ   (the level went up)
 *   down: n_T = Σ (x_t - x̄_t + δ),  alarm when max_{t≤T} n_t - n_T > λ   (the level went down)
 * δ is the change magnitude tolerated per window (noise below it never accumulates), λ the
 * evidence needed. The baseline is the stream's own running mean, not the manifest's reference:
 * the detector answers "did this device change", which a device with a harmless constant
 * offset from the reference would otherwise trip forever (the hub's tests against the reference
 * counts cover the offset, with proper false-discovery control). After an alarm the detector
 * starts over, learning the new level, so one change raises one warning.
 *
 * Defaults and why (the statistic's noise per window is roughly SD / √n for n readings):
 * - features, in SD units: δ = 0.1, λ = 2. With n ≥ 30 readings per window the noise is ≤ 0.18;
 *   a random walk with drift -δ and that noise exceeds λ with probability about
 *   exp(-2δλ/σ²) ≈ e^-12 per excursion, so no false warnings over days of windows, while a
 *   0.5 SD shift adds ≈ 0.4 per window and warns within about 6 windows.
 * - mean confidence (absolute, in [0, 1]): δ = 0.01, λ = 0.2: per-window noise ≈ 0.02 at n = 30;
 *   a drop of 0.05 in mean confidence warns within about 5-6 windows.
 * - minWindows = 5: no alarm before the running mean has something to stand on.
 * Windows with fewer than `minCount` readings (default 30) are skipped by the monitor: their
 * mean is too noisy for these λ (the bound above grows like e^{-n}).
 * Readings within a window are assumed roughly independent; strongly autocorrelated sensors
 * have more noise per window than √n suggests and may need a larger λ.
 */
import { z } from 'zod';

export const PageHinkleyParamsSchema = z.object({
  /** Change per window tolerated without accumulating evidence, in the statistic's units. */
  delta: z.number().nonnegative(),
  /** Evidence threshold, in the statistic's units × windows. */
  lambda: z.number().positive(),
  /** Windows observed before any alarm. */
  minWindows: z.number().int().min(1).max(10_000).default(5),
});
export type PageHinkleyParams = z.infer<typeof PageHinkleyParamsSchema>;

export const DEFAULT_FEATURE_PH: PageHinkleyParams = Object.freeze({ delta: 0.1, lambda: 2, minWindows: 5 });
export const DEFAULT_CONFIDENCE_PH: PageHinkleyParams = Object.freeze({ delta: 0.01, lambda: 0.2, minWindows: 5 });

export interface PageHinkleyStep {
  alarm: boolean;
  /** Which side is stronger (the side that alarmed, on an alarm). */
  direction: 'up' | 'down';
  /** m_T - min m (up) or max n - n_T (down), whichever is larger. */
  statistic: number;
}

export class PageHinkley {
  #n = 0;
  #mean = 0;
  #up = 0;
  #upMin = 0;
  #down = 0;
  #downMax = 0;

  constructor(readonly params: PageHinkleyParams) {
    PageHinkleyParamsSchema.parse(params);
  }

  /** Observations since the last reset. */
  get observations(): number {
    return this.#n;
  }

  /** Adds one observation; non-finite values are ignored (no evidence either way). */
  update(x: number): PageHinkleyStep {
    if (!Number.isFinite(x)) return { alarm: false, direction: 'up', statistic: 0 };
    this.#n++;
    this.#mean += (x - this.#mean) / this.#n;
    const d = x - this.#mean;
    this.#up += d - this.params.delta;
    this.#upMin = Math.min(this.#upMin, this.#up);
    this.#down += d + this.params.delta;
    this.#downMax = Math.max(this.#downMax, this.#down);
    const up = this.#up - this.#upMin;
    const down = this.#downMax - this.#down;
    const direction = up >= down ? 'up' : 'down';
    const statistic = Math.max(up, down);
    const alarm = this.#n >= this.params.minWindows && statistic > this.params.lambda;
    if (alarm) this.reset();
    return { alarm, direction, statistic };
  }

  reset(): void {
    this.#n = 0;
    this.#mean = 0;
    this.#up = 0;
    this.#upMin = 0;
    this.#down = 0;
    this.#downMax = 0;
  }
}
