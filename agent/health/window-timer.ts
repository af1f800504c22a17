/**
 * Fires `onTick` just past every boundary of UTC-aligned windows of `windowMs`, so the window
 * being closed has really ended; unref'd, so it never keeps the process alive. Shared by the
 * health and drift monitors, whose windows close on the same schedule.
 */
export class WindowTimer {
  #timer: NodeJS.Timeout | undefined;
  #running = false;

  constructor(private readonly o: { windowMs: () => number; now: () => number; onTick: () => void }) {}

  start(): void {
    this.#running = true;
    this.#schedule();
  }

  stop(): void {
    this.#running = false;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(): void {
    if (!this.#running) return;
    const windowMs = this.o.windowMs();
    const delay = windowMs - (this.o.now() % windowMs) + 5;
    this.#timer = setTimeout(() => {
      this.o.onTick();
      this.#schedule();
    }, delay);
    this.#timer.unref();
  }
}
