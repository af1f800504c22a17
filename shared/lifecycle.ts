/**
 * Component lifecycles. The composition root starts components in order and stops them in
 * reverse, with a timeout per step, collecting failures instead of stopping at the first.
 */
import type { Logger } from './log.ts';
import { EdgefleetError, ErrorCode } from './errors.ts';

export interface Component {
  readonly name: string;
  /** Starts the component; aborting `signal` must make a slow start give up promptly. */
  start(signal: AbortSignal): Promise<void>;
  stop(): Promise<void>;
}

export type LifecycleState = 'idle' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

const TRANSITIONS: Record<LifecycleState, readonly LifecycleState[]> = {
  idle: ['starting', 'stopped'],
  starting: ['running', 'stopping', 'failed'],
  running: ['stopping'],
  stopping: ['stopped', 'failed'],
  stopped: [],
  failed: ['stopping', 'stopped'],
};

/** A small state holder that refuses illegal transitions. */
export class StateMachine<S extends string> {
  #state: S;
  constructor(
    initial: S,
    private readonly allowed: Record<S, readonly S[]>,
    private readonly what: string,
  ) {
    this.#state = initial;
  }
  get state(): S {
    return this.#state;
  }
  to(next: S): void {
    if (!this.allowed[this.#state].includes(next)) {
      throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, `${this.what}: illegal transition ${this.#state} → ${next}`);
    }
    this.#state = next;
  }
  is(...states: S[]): boolean {
    return states.includes(this.#state);
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new EdgefleetError(ErrorCode.TIMEOUT, `${what} timed out after ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Runs a list of components as one unit. */
export class Lifecycle {
  readonly #components: Component[] = [];
  readonly #started: Component[] = [];
  readonly #sm = new StateMachine<LifecycleState>('idle', TRANSITIONS, 'lifecycle');

  constructor(
    private readonly log: Logger,
    private readonly stopTimeoutMs = 10_000,
  ) {}

  get state(): LifecycleState {
    return this.#sm.state;
  }

  add<C extends Component>(component: C): C {
    if (!this.#sm.is('idle')) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, 'components must be added before start');
    this.#components.push(component);
    return component;
  }

  async start(signal: AbortSignal): Promise<void> {
    this.#sm.to('starting');
    for (const c of this.#components) {
      if (signal.aborted) {
        this.#sm.to('failed');
        throw new EdgefleetError(ErrorCode.ABORTED, `start aborted before ${c.name}`);
      }
      const t0 = performance.now();
      try {
        await c.start(signal);
      } catch (err) {
        this.#sm.to('failed');
        throw err;
      }
      this.#started.push(c);
      this.log.debug({ component: c.name, ms: Math.round(performance.now() - t0) }, 'started');
    }
    this.#sm.to('running');
  }

  /** Stops what was started, in reverse order. Returns the failures (also logged). */
  async stop(): Promise<Error[]> {
    if (this.#sm.is('stopped', 'stopping')) return [];
    if (this.#sm.is('idle')) {
      this.#sm.to('stopped');
      return [];
    }
    this.#sm.to('stopping');
    const failures: Error[] = [];
    for (const c of [...this.#started].reverse()) {
      try {
        await withTimeout(c.stop(), this.stopTimeoutMs, `stop ${c.name}`);
        this.log.debug({ component: c.name }, 'stopped');
      } catch (err) {
        const e = err instanceof Error ? err : new Error(String(err));
        failures.push(e);
        this.log.error({ component: c.name, err: e }, 'stop failed');
      }
    }
    this.#started.length = 0;
    this.#sm.to(failures.length ? 'failed' : 'stopped');
    return failures;
  }
}
