/**
 * The overload policy for stream inputs (MQTT): a bounded FIFO in front of the pipeline with at
 * most `maxInFlight` items in inference. A stream cannot be slowed down at its source, so when
 * the queue is full the OLDEST waiting item is dropped (its reading is the stalest) and counted.
 * When the engine itself is full (OVERLOADED) the item goes back to the head and the queue
 * pauses briefly instead of burning through its items: a persistent overload then fills the
 * queue and ends in the same drop-oldest policy, a short burst loses nothing. Memory is bounded
 * twice: by `queueMax` items and by `maxBytes` of payload waiting (images are large).
 */
import { ErrorCode, toEdgefleetError } from '../../shared/errors.ts';

export interface StreamQueueOptions<T> {
  queueMax: number;
  maxInFlight: number;
  /** Payload bytes allowed to wait; beyond it the oldest are dropped. Default: unbounded. */
  maxBytes?: number;
  sizeOf?: (item: T) => number;
  /** Processes one item; errors other than OVERLOADED are the runner's to count. */
  run: (item: T) => Promise<unknown>;
  onDrop: (item: T, reason: 'overload' | 'shutdown') => void;
  /** Pause after OVERLOADED before retrying. Default 20 ms. */
  retryMs?: number;
  /** Called whenever the number of waiting items changes. */
  onDepth?: (depth: number) => void;
}

export class StreamQueue<T> {
  #items: T[] = [];
  #head = 0;
  #bytes = 0;
  #inFlight = 0;
  #paused: NodeJS.Timeout | undefined;
  #closed = false;
  #idle: Array<() => void> = [];

  constructor(private readonly o: StreamQueueOptions<T>) {}

  get depth(): number {
    return this.#items.length - this.#head;
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  push(item: T): void {
    if (this.#closed) {
      this.o.onDrop(item, 'shutdown');
      return;
    }
    if (this.depth >= this.o.queueMax) this.o.onDrop(this.#shift() as T, 'overload');
    this.#items.push(item);
    this.#bytes += this.#size(item);
    // Never drops the item just pushed: one item alone is the input's own cap's business.
    while (this.o.maxBytes !== undefined && this.#bytes > this.o.maxBytes && this.depth > 1) this.o.onDrop(this.#shift() as T, 'overload');
    this.o.onDepth?.(this.depth);
    this.#pump();
  }

  /** Stops taking items, drops what waits (counted), resolves when nothing is in flight. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#paused);
    this.#paused = undefined;
    while (this.depth > 0) this.o.onDrop(this.#shift() as T, 'shutdown');
    this.o.onDepth?.(0);
    if (this.#inFlight > 0) await new Promise<void>((r) => this.#idle.push(r));
  }

  #shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head] as T;
    this.#items[this.#head] = undefined as T;
    this.#head++;
    this.#bytes -= this.#size(item);
    // Compact now and then so the array does not grow with every item ever seen.
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  #pump(): void {
    while (!this.#closed && !this.#paused && this.#inFlight < this.o.maxInFlight && this.depth > 0) {
      const item = this.#shift() as T;
      this.o.onDepth?.(this.depth);
      this.#inFlight++;
      this.o.run(item).then(
        () => this.#done(),
        (err: unknown) => {
          if (toEdgefleetError(err).code === ErrorCode.OVERLOADED && !this.#closed) this.#requeue(item);
          this.#done();
        },
      );
    }
  }

  #size(item: T): number {
    return this.o.sizeOf ? this.o.sizeOf(item) : 0;
  }

  #requeue(item: T): void {
    const size = this.#size(item);
    if (this.depth >= this.o.queueMax || (this.o.maxBytes !== undefined && this.#bytes + size > this.o.maxBytes)) {
      // The queue refilled meanwhile: the returning item is the oldest of all.
      this.o.onDrop(item, 'overload');
    } else {
      if (this.#head > 0) this.#items[--this.#head] = item;
      else this.#items.unshift(item);
      this.#bytes += size;
    }
    this.o.onDepth?.(this.depth);
    if (!this.#paused) {
      this.#paused = setTimeout(() => {
        this.#paused = undefined;
        this.#pump();
      }, this.o.retryMs ?? 20);
    }
  }

  #done(): void {
    this.#inFlight--;
    if (this.#inFlight === 0 && this.#idle.length) {
      for (const r of this.#idle.splice(0)) r();
    }
    this.#pump();
  }
}
