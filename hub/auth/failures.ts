/**
 * Failed authentications per remote address, in one-minute windows. Every failed check costs
 * the hub a scrypt (~15 ms of a libuv thread): without a budget, one address sending bad
 * CONNECTs or bad bearer tokens as fast as the connection rate allows would keep the thread
 * pool busy and delay every legitimate login. Past the budget, further attempts from that
 * address that would need a scrypt are refused at once until the window ends (MQTT: CONNACK 3
 * "server unavailable", so clients back off; HTTP: 429 with Retry-After). Credentials already
 * verified and cached are not affected, so an operator's dashboard keeps working during an
 * attack from the same NAT. One limiter is shared by MQTT, the HTTP API and enrollment.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';

export class AuthFailureLimiter {
  readonly #windows = new Map<string, { count: number; since: number }>();

  constructor(
    private readonly maxPerMinute: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether `address` may try a credential check now. */
  allowed(address: string): boolean {
    const w = this.#windows.get(address);
    return !w || this.#expired(w) || w.count < this.maxPerMinute;
  }

  /** A window is over after a minute, or when the clock stepped back before its start. */
  #expired(w: { since: number }): boolean {
    const age = this.now() - w.since;
    return age < 0 || age >= 60_000;
  }

  /** Seconds until `address` may try again (for Retry-After). */
  retryAfterSeconds(address: string): number {
    const w = this.#windows.get(address);
    return w ? Math.max(1, Math.ceil((w.since + 60_000 - this.now()) / 1000)) : 1;
  }

  /** Records one failed check from `address`. */
  fail(address: string): void {
    const t = this.now();
    const w = this.#windows.get(address);
    if (w && !this.#expired(w)) {
      w.count++;
      return;
    }
    if (this.#windows.size > 10_000) {
      for (const [k, v] of this.#windows) if (this.#expired(v)) this.#windows.delete(k);
      if (this.#windows.size > 10_000) this.#windows.clear();
    }
    this.#windows.set(address, { count: 1, since: t });
  }
}

/** Throws OVERLOADED (HTTP 429, `retryAfterSeconds` in details) when `remote` is out of budget. */
export function checkFailureBudget(failures: AuthFailureLimiter | undefined, remote: string): void {
  if (!failures || failures.allowed(remote)) return;
  const retryAfterSeconds = failures.retryAfterSeconds(remote);
  throw new EdgefleetError(ErrorCode.OVERLOADED, `too many failed credential checks from this address; retry in ${retryAfterSeconds} s`, { details: { retryAfterSeconds } });
}
