/**
 * The connection limiter (hub/net/conn-limits.ts) with fake sockets and a fake clock: caps,
 * shedding order (unproven first, longest waiting first), per-address caps, deadlines per
 * stage, the body progress rule, and the descriptor budget arithmetic.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { Counter, Registry } from 'prom-client';
import { ConnectionBudget, ConnectionLimiter, parseFdLimit, planBudget, type ConnectionMetrics, type ConnectionSettings, type LimiterOptions } from '../../hub/net/conn-limits.ts';
import { silentLogger } from '../../shared/log.ts';

class FakeSocket extends EventEmitter {
  bytesRead = 0;
  destroyed = false;
  constructor(readonly name: string) {
    super();
  }
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    queueMicrotask(() => this.emit('close'));
  }
}

const SETTINGS: ConnectionSettings = {
  fallbackFdLimit: 1024,
  reservedFds: 64,
  httpShare: 0.2,
  mqttPendingShare: 0.25,
  httpMaxPerAddress: 256,
  mqttMaxPendingPerAddress: 128,
  mqttMaxPerAddress: 10_000,
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  minBodyBytesPerSecond: 1024,
  connectTimeoutMs: 10_000,
  sweepMs: 500,
};

function setup(over: Partial<LimiterOptions> = {}): { limiter: ConnectionLimiter; clock: { t: number }; registry: Registry; value: (name: string, labels: Record<string, string>) => Promise<number> } {
  const clock = { t: 1_000_000 };
  const registry = new Registry();
  const metrics: ConnectionMetrics = {
    refused: new Counter({ name: 'refused', help: 'h', labelNames: ['listener', 'reason'], registers: [registry] }),
    shed: new Counter({ name: 'shed', help: 'h', labelNames: ['listener', 'reason'], registers: [registry] }),
    timeouts: new Counter({ name: 'timeouts', help: 'h', labelNames: ['listener', 'phase'], registers: [registry] }),
  };
  const limiter = new ConnectionLimiter({
    listener: 'http',
    max: 6,
    maxPending: 6,
    maxPerAddress: 4,
    maxPendingPerAddress: 4,
    openingTimeoutMs: 10_000,
    startedTimeoutMs: 10_000,
    minBytesPerSecond: 100,
    shedStarted: true,
    phases: { opening: 'headers', started: 'body' },
    sweepMs: 500,
    now: () => clock.t,
    log: silentLogger(),
    metrics,
    ...over,
  });
  const value = async (name: string, labels: Record<string, string>): Promise<number> => {
    const m = (await registry.getMetricsAsJSON()).find((x) => x.name === name);
    const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
    return v?.value ?? 0;
  };
  return { limiter, clock, registry, value };
}

describe('connection limiter', () => {
  it('sheds the longest-waiting opening connection at the cap, never an established one', async () => {
    const { limiter, clock, value } = setup();
    const socks = Array.from({ length: 6 }, (_, i) => new FakeSocket(`s${i}`));
    const conns = socks.map((s, i) => {
      clock.t += 1;
      return limiter.admit(s, `10.0.0.${i % 3}`);
    });
    assert.ok(conns.every(Boolean));
    conns[0]!.start({ complete: () => true, reader: socks[0]! });
    conns[0]!.establish();
    const extra = new FakeSocket('new');
    assert.ok(limiter.admit(extra, '10.0.0.9'));
    assert.equal(socks[0]!.destroyed, false, 'established is kept');
    assert.equal(socks[1]!.destroyed, true, 'the oldest opening one is shed');
    assert.equal(limiter.open, 6);
    assert.equal(await value('shed', { listener: 'http', reason: 'full' }), 1);
  });

  it('sheds opening connections before started ones of the heaviest address, and refuses when only established remain', async () => {
    const { limiter, value } = setup({ max: 3, maxPending: 3 });
    const a = new FakeSocket('a');
    const b = new FakeSocket('b');
    const c = new FakeSocket('c');
    const ca = limiter.admit(a, '1.1.1.1')!;
    limiter.admit(b, '1.1.1.1');
    const cc = limiter.admit(c, '1.1.1.3')!;
    ca.start({ complete: () => false, reader: a }); // a body still arriving, older than b
    assert.ok(limiter.admit(new FakeSocket('d'), '1.1.1.4'));
    assert.equal(b.destroyed, true);
    assert.equal(a.destroyed, false);
    // Now: a started, c opening, d opening. Establish everything, then a fourth must be refused.
    cc.establish();
    const limiter2 = setup({ max: 2, maxPending: 2, shedStarted: false });
    const x = limiter2.limiter.admit(new FakeSocket('x'), 'h')!;
    const y = limiter2.limiter.admit(new FakeSocket('y'), 'h')!;
    x.start();
    y.start();
    y.establish();
    const z = new FakeSocket('z');
    assert.equal(limiter2.limiter.admit(z, 'h'), undefined, 'an authenticating connection is not shed (shedStarted false)');
    assert.equal(z.destroyed, true);
    assert.equal(await limiter2.value('refused', { reason: 'full' }), 1);
    assert.equal(await value('refused', { reason: 'full' }), 0);
  });

  it('fair shares: a newcomer from a quiet address sheds from the heaviest address, however new its own socket', () => {
    const { limiter, clock } = setup({ max: 10, maxPending: 10, maxPerAddress: 100, maxPendingPerAddress: 100 });
    const flood: FakeSocket[] = [];
    for (let i = 0; i < 10; i++) {
      clock.t += 1;
      const s = new FakeSocket(`f${i}`);
      flood.push(s);
      limiter.admit(s, i < 7 ? 'attacker-1' : 'attacker-2');
    }
    const probe = new FakeSocket('probe');
    assert.ok(limiter.admit(probe, 'probe-address'));
    assert.equal(flood[0]!.destroyed, true, "the heaviest address's oldest goes");
    // The flood goes on from both attacker addresses: the probe's socket stays, the heavier
    // attacker's newcomers are refused and the lighter one's shed the heavier one's oldest, so
    // the two converge to equal shares.
    let refused = 0;
    for (let i = 0; i < 200; i++) {
      clock.t += 1;
      if (!limiter.admit(new FakeSocket(`g${i}`), i % 2 ? 'attacker-1' : 'attacker-2')) refused++;
    }
    assert.equal(probe.destroyed, false);
    assert.equal(limiter.open, 10);
    assert.ok(refused > 150, `most flood newcomers refused at accept (${refused})`);
    const second = new FakeSocket('probe-2');
    assert.ok(limiter.admit(second, 'probe-2-address'), 'another quiet address still gets in');
  });

  it('promotes a started request whose body completed instead of shedding it', () => {
    const { limiter } = setup({ max: 2, maxPending: 2 });
    const a = new FakeSocket('a');
    const b = new FakeSocket('b');
    let done = false;
    limiter.admit(a, 'x')!.start({ complete: () => done, reader: a });
    limiter.admit(b, 'y')!.start({ complete: () => false, reader: b });
    done = true;
    assert.ok(limiter.admit(new FakeSocket('c'), 'z'));
    assert.equal(a.destroyed, false, 'complete request promoted to established');
    assert.equal(b.destroyed, true);
    assert.equal(limiter.count('established'), 1);
  });

  it('per address: a new connection from an address at its cap is refused; other addresses are not touched', async () => {
    const { limiter, value } = setup({ maxPerAddress: 3, maxPendingPerAddress: 2 });
    const a1 = new FakeSocket('a1');
    const other = new FakeSocket('other');
    limiter.admit(other, 'B');
    limiter.admit(a1, 'A');
    limiter.admit(new FakeSocket('a2'), 'A');
    const a3 = new FakeSocket('a3');
    assert.equal(limiter.admit(a3, 'A'), undefined, 'two unproven from A already');
    assert.equal(a3.destroyed, true);
    assert.equal(a1.destroyed, false, 'the older ones keep their chance');
    assert.equal(other.destroyed, false);
    assert.equal(await value('refused', { reason: 'per_address' }), 1);
    // Established ones count against maxPerAddress only.
    const lim = setup({ maxPerAddress: 1, maxPendingPerAddress: 1 });
    lim.limiter.admit(new FakeSocket('e'), 'A')!.establish();
    assert.equal(lim.limiter.admit(new FakeSocket('f'), 'A'), undefined);
    assert.equal(await lim.value('refused', { reason: 'per_address' }), 1);
  });

  it('deadlines: no request head within openingTimeoutMs; a body below the rate; a moving body lives', async () => {
    const { limiter, clock, value } = setup({ max: 100, maxPending: 100, maxPerAddress: 100, maxPendingPerAddress: 100 });
    const silent = new FakeSocket('silent');
    const dribble = new FakeSocket('dribble');
    const upload = new FakeSocket('upload');
    const keep = new FakeSocket('keep');
    limiter.admit(silent, 'a');
    limiter.admit(dribble, 'a')!.start({ complete: () => false, reader: dribble });
    limiter.admit(upload, 'a')!.start({ complete: () => false, reader: upload });
    limiter.admit(keep, 'a')!.establish();
    for (let i = 0; i < 30; i++) {
      clock.t += 1000;
      dribble.bytesRead += 10; // 10 B/s < 100 B/s
      upload.bytesRead += 5000;
      limiter.sweep();
    }
    assert.equal(silent.destroyed, true);
    assert.equal(dribble.destroyed, true);
    assert.equal(upload.destroyed, false);
    assert.equal(keep.destroyed, false);
    assert.equal(await value('timeouts', { phase: 'headers' }), 1);
    assert.equal(await value('timeouts', { phase: 'body' }), 1);
  });

  it('keep-alive: a finished response makes the connection opening again, with a fresh deadline', () => {
    const { limiter, clock } = setup();
    const s = new FakeSocket('s');
    const c = limiter.admit(s, 'a')!;
    clock.t += 9000;
    c.start({ complete: () => true, reader: s });
    c.establish();
    c.idle();
    clock.t += 9000;
    limiter.sweep();
    assert.equal(s.destroyed, false);
    clock.t += 1000;
    limiter.sweep();
    assert.equal(s.destroyed, true);
  });

  it('MQTT: an authenticating connection must be established within the window', () => {
    const { limiter, clock } = setup({ minBytesPerSecond: undefined, shedStarted: false });
    const s = new FakeSocket('s');
    const c = limiter.admit(s, 'a')!;
    c.start();
    s.bytesRead = 1_000_000;
    clock.t += 10_000;
    limiter.sweep();
    assert.equal(s.destroyed, true);
  });

  it('a closed socket frees its slot and its address entry', async () => {
    const { limiter } = setup({ max: 1, maxPending: 1 });
    const s = new FakeSocket('s');
    limiter.admit(s, 'a')!.establish();
    s.destroy();
    await new Promise((r) => setImmediate(r));
    assert.equal(limiter.open, 0);
    assert.ok(limiter.admit(new FakeSocket('t'), 'a'));
  });

  it('holds the counts under a random admit/progress/close storm', async () => {
    const { limiter, clock } = setup({ max: 20, maxPending: 12, maxPerAddress: 8, maxPendingPerAddress: 6, shedStarted: false, minBytesPerSecond: undefined });
    let seed = 7;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    const live: { s: FakeSocket; c: ReturnType<ConnectionLimiter['admit']> }[] = [];
    for (let i = 0; i < 2000; i++) {
      const r = rnd();
      clock.t += Math.floor(rnd() * 300);
      if (r < 0.5) {
        const s = new FakeSocket(String(i));
        live.push({ s, c: limiter.admit(s, `a${Math.floor(rnd() * 5)}`) });
      } else if (r < 0.7 && live.length) live[Math.floor(rnd() * live.length)]!.c?.start();
      else if (r < 0.85 && live.length) live[Math.floor(rnd() * live.length)]!.c?.establish();
      else if (live.length) live.splice(Math.floor(rnd() * live.length), 1)[0]!.s.destroy();
      if (i % 10 === 0) limiter.sweep();
      await Promise.resolve();
      assert.ok(limiter.open <= 20 && limiter.pending <= 12, `open ${limiter.open} pending ${limiter.pending}`);
    }
    await new Promise((r) => setImmediate(r));
    const alive = live.filter((l) => !l.s.destroyed && l.c).length;
    assert.equal(limiter.open, alive, 'every tracked connection is a live socket and vice versa');
  });
});

describe('descriptor budget', () => {
  it('reads the soft limit from /proc/self/limits text', () => {
    const text = 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            256                  4096                 files\n';
    assert.equal(parseFdLimit(text), 256);
    assert.equal(parseFdLimit('Max open files unlimited unlimited files'), 1_048_576);
    assert.equal(parseFdLimit('nothing'), undefined);
  });

  it('splits descriptors: HTTP counted twice, MQTT the rest, a clear error when too few', () => {
    assert.deepEqual(planBudget(256, SETTINGS), { http: 19, mqtt: 154, mqttPending: 38 });
    const big = planBudget(13_000, SETTINGS);
    assert.ok(big.mqtt >= 10_000, `10,000 devices fit at 13,000 descriptors: ${big.mqtt}`);
    assert.throws(() => planBudget(80, SETTINGS), /descriptor limit 80/);
  });

  it('falls back to the configured limit where /proc is unreadable', () => {
    const b = new ConnectionBudget({
      settings: SETTINGS,
      registry: new Registry(),
      log: silentLogger(),
      readLimits: () => {
        throw new Error('ENOENT');
      },
    });
    assert.equal(b.fdLimit, 1024);
    assert.equal(b.fdLimitSource, 'config');
    assert.equal(b.http.max + b.mqtt.max, Math.floor((1024 - 64) * 0.2 / 2) + (1024 - 64) - 2 * Math.floor((1024 - 64) * 0.2 / 2));
  });
});
