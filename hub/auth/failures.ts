/**
 * Failed authentications per remote address, in one-minute windows. Every failed check costs
 * the hub a scrypt (~15 ms of a libuv thread): without a budget, one address sending bad
 * CONNECTs or bad bearer tokens as fast as the connection rate allows would keep the thread
 * pool busy and delay every legitimate login. Past the budget, further attempts from that
 * address that would need a scrypt are refused at once until the window ends (MQTT: CONNACK 3
 * "server unavailable", so clients back off; HTTP: 429 with Retry-After). Credentials already
 * verified and cached are not affected, so an operator's dashboard keeps working during an
 * attack from the same NAT. One limiter is shared by MQTT, the HTTP API and enrollment.
 *
 * Bounded and O(1) (issue #14: failing once from 10,001 other addresses cleared the whole table,
 * resetting the attacker's window, and past 10,000 entries every new address scanned them all).
 * Windows are kept in a Map by address and, in the order they started, in a queue (an array with
 * a moving head): expired windows are evicted from the front, each once. (Not the Map's own
 * insertion order: V8 leaves deleted entries as holes that an iterator from the front has to skip
 * until the next rehash, which measured 30x slower.) A live window is never evicted. When the table is full of live windows, failures from addresses not
 * in it share one overflow window (counted): past its budget every untracked address is refused
 * until it ends. That fails closed for new addresses during a distributed attack, rather than
 * forgetting the addresses already over budget.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';

const WINDOW_MS = 60_000;

interface Window {
  count: number;
  since: number;
}

interface Started {
  address: string;
  window: Window;
}

export interface AuthFailureLimiterOptions {
  /** Most addresses with a window of their own. Default 10,000. */
  maxAddresses?: number;
  registry?: Registry;
}

export class AuthFailureLimiter {
  readonly #windows = new Map<string, Window>();
  /** Windows in start order from `#head` on; entries before it are evicted (compacted in bulk). */
  #order: Started[] = [];
  #head = 0;
  readonly #maxAddresses: number;
  readonly #overflowCounter: Counter | undefined;
  #overflow: Window | undefined;
  #evicted = 0;
  #overflowed = 0;

  constructor(
    private readonly maxPerMinute: number,
    private readonly now: () => number = Date.now,
    opts: AuthFailureLimiterOptions = {},
  ) {
    this.#maxAddresses = opts.maxAddresses ?? 10_000;
    if (opts.registry) {
      const registers = [opts.registry];
      this.#overflowCounter = new Counter({
        name: 'edgefleet_hub_auth_failure_overflow_total',
        help: 'Failed credential checks counted in the shared overflow window because the per-address table was full of live windows.',
        registers,
      });
      const windows = this.#windows;
      new Gauge({ name: 'edgefleet_hub_auth_failure_addresses', help: 'Addresses with a failed-login window of their own.', registers, collect() { this.set(windows.size); } });
    }
  }

  /** Whether `address` may try a credential check now. */
  allowed(address: string): boolean {
    const w = this.#windows.get(address);
    if (w && this.#live(w)) return w.count < this.maxPerMinute;
    const o = this.#overflow;
    if (!o || !this.#live(o) || o.count < this.maxPerMinute) return true;
    // The overflow window is over budget: refuse untracked addresses while the table is still full.
    this.#evictExpired();
    return this.#windows.size < this.#maxAddresses;
  }

  /** Seconds until `address` may try again (for Retry-After). */
  retryAfterSeconds(address: string): number {
    const own = this.#windows.get(address);
    const w = own && this.#live(own) ? own : this.#overflow;
    return w && this.#live(w) ? Math.max(1, Math.ceil((w.since + WINDOW_MS - this.now()) / 1000)) : 1;
  }

  /** Records one failed check from `address`. */
  fail(address: string): void {
    const w = this.#windows.get(address);
    if (w && this.#live(w)) {
      w.count++;
      return;
    }
    // An expired window restarts as a new one at the end of the queue (start order is kept).
    if (w) this.#windows.delete(address);
    this.#evictExpired();
    const t = this.now();
    if (this.#windows.size >= this.#maxAddresses) {
      if (!this.#overflow || !this.#live(this.#overflow)) this.#overflow = { count: 0, since: t };
      this.#overflow.count++;
      this.#overflowed++;
      this.#overflowCounter?.inc();
      return;
    }
    const window = { count: 1, since: t };
    this.#windows.set(address, window);
    this.#order.push({ address, window });
  }

  /** Table size and work done: evictions happen once per window, so work stays O(1) per failure. */
  stats(): { addresses: number; evicted: number; overflowed: number } {
    return { addresses: this.#windows.size, evicted: this.#evicted, overflowed: this.#overflowed };
  }

  /** A window is over after a minute, or when the clock stepped back before its start. */
  #live(w: Window): boolean {
    const age = this.now() - w.since;
    return age >= 0 && age < WINDOW_MS;
  }

  /** Drops expired windows from the front (the oldest first); stops at the first live one. */
  #evictExpired(): void {
    const order = this.#order;
    while (this.#head < order.length) {
      const e = order[this.#head] as Started;
      if (this.#live(e.window)) break;
      // A window restarted since has a newer entry further on: only the current one is dropped.
      if (this.#windows.get(e.address) === e.window) this.#windows.delete(e.address);
      this.#head++;
      this.#evicted++;
    }
    if (this.#head > 1024 && this.#head * 2 > order.length) {
      this.#order = order.slice(this.#head);
      this.#head = 0;
    }
  }
}

/** Throws OVERLOADED (HTTP 429, `retryAfterSeconds` in details) when `remote` is out of budget. */
export function checkFailureBudget(failures: AuthFailureLimiter | undefined, remote: string): void {
  if (!failures || failures.allowed(remote)) return;
  const retryAfterSeconds = failures.retryAfterSeconds(remote);
  throw new EdgefleetError(ErrorCode.OVERLOADED, `too many failed credential checks from this address; retry in ${retryAfterSeconds} s`, { details: { retryAfterSeconds } });
}
