/**
 * HubLink against a real aedes broker on port 0, with a minimal fake hub (records in a Map,
 * acks after "committing") and a real outbox in a temp dir: delivery and acks, a broker outage
 * with appends going on, ack timeouts and refusals, jittered backoff, status and last-will,
 * bad payloads, command de-duplication, live publish and input subscriptions.
 */
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Aedes, type Client as AedesClient } from 'aedes';
import { connect, type MqttClient } from 'mqtt';
import { Registry } from 'prom-client';
import { Backoff, type BackoffOptions } from '../../shared/backoff.ts';
import { decodeJson, encodeJson } from '../../shared/codec.ts';
import { silentLogger } from '../../shared/log.ts';
import {
  CommandResultSchema,
  HelloSchema,
  MAX_PAYLOAD_BYTES,
  PROTOCOL_VERSION,
  StatusSchema,
  TelemetryBatchSchema,
  topics,
  type Ack,
  type Command,
  type SeqRange,
  type TelemetryRecord,
} from '../../shared/protocol.ts';
import { HubLink, topicMatches, type HubLinkOptions } from '../../agent/link/hub-link.ts';
import { Outbox } from '../../agent/outbox/outbox.ts';

const DEVICE = 'dev-1';

/** A broker plus the smallest hub that honours the protocol: store, de-duplicate, then ack. */
class FakeHub {
  port = 0;
  #aedes: Aedes | undefined;
  #server: net.Server | undefined;
  readonly #sockets = new Set<net.Socket>();
  readonly clients = new Map<string, AedesClient>();
  /** Survives broker restarts, like the hub's database. */
  readonly stored = new Map<string, TelemetryRecord>();
  /** First arrival order per stream. */
  readonly arrivals = new Map<string, string[]>();
  batches = 0;
  duplicates = 0;
  /** Decides per batch: ack ok, refuse (ok:false), stay silent, or store and lose the ack. */
  mode: (batchNo: number) => 'ok' | 'refuse' | 'silent' | 'lost' = () => 'ok';

  async start(port = 0): Promise<void> {
    const aedes = await Aedes.createBroker({ drainTimeout: 1000 });
    aedes.on('client', (c) => this.clients.set(c.id, c));
    aedes.on('clientDisconnect', (c) => {
      if (this.clients.get(c.id) === c) this.clients.delete(c.id);
    });
    await new Promise<void>((resolve) =>
      aedes.subscribe(
        topics.fleet('telemetry'),
        (packet, cb) => {
          this.#onBatch(Buffer.from(packet.payload));
          cb();
        },
        resolve,
      ),
    );
    const server = net.createServer((s) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
      aedes.handle(s);
    });
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    this.port = (server.address() as net.AddressInfo).port;
    this.#aedes = aedes;
    this.#server = server;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** The broker dies: every socket destroyed, the port closed. */
  async stop(): Promise<void> {
    const server = this.#server;
    const aedes = this.#aedes;
    this.#server = undefined;
    this.#aedes = undefined;
    if (!server || !aedes) return;
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((r) => server.close(() => r()));
    await new Promise<void>((r) => aedes.close(() => r()));
    this.clients.clear();
  }

  publish(topic: string, payload: Buffer | string, retain = false): Promise<void> {
    const aedes = this.#aedes;
    if (!aedes) return Promise.reject(new Error('broker down'));
    return new Promise((resolve, reject) =>
      aedes.publish({ cmd: 'publish', topic, payload, qos: 1, retain, dup: false }, (err) => (err ? reject(err) : resolve())),
    );
  }

  seqs(stream: string): number[] {
    return (this.arrivals.get(stream) ?? []).map((k) => Number(k.split('|')[2]));
  }

  #onBatch(payload: Buffer): void {
    const d = decodeJson(TelemetryBatchSchema, payload, MAX_PAYLOAD_BYTES);
    if (!d.ok) throw d.error;
    const batch = d.value;
    const mode = this.mode(this.batches++);
    if (mode === 'silent') return;
    const ack: Ack = { v: PROTOCOL_VERSION, type: 'ack', batchId: batch.batchId, ok: false, ranges: [], stored: 0, duplicates: 0 };
    if (mode === 'refuse') {
      ack.error = { code: 'UNAVAILABLE', message: 'try later' };
    } else {
      for (const r of batch.records) {
        const key = `${r.stream}|${r.epoch}|${r.seq}`;
        if (this.stored.has(key)) {
          ack.duplicates++;
          this.duplicates++;
          continue;
        }
        this.stored.set(key, r);
        const list = this.arrivals.get(r.stream) ?? [];
        list.push(key);
        this.arrivals.set(r.stream, list);
        ack.stored++;
      }
      ack.ok = true;
      ack.ranges = toRanges(batch.records);
      if (mode === 'lost') return;
    }
    void this.publish(topics.of(batch.deviceId, 'ack'), encodeJson(ack)).catch(() => undefined);
  }
}

/** Consecutive seqs of one (stream, epoch) collapse into one inclusive range. */
function toRanges(records: TelemetryRecord[]): SeqRange[] {
  const sorted = [...records].sort((a, b) => a.stream.localeCompare(b.stream) || a.epoch - b.epoch || a.seq - b.seq);
  const out: SeqRange[] = [];
  for (const r of sorted) {
    const last = out.at(-1);
    if (last && last.stream === r.stream && last.epoch === r.epoch && last.to + 1 === r.seq) last.to = r.seq;
    else out.push({ stream: r.stream, epoch: r.epoch, from: r.seq, to: r.seq });
  }
  return out;
}

async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** An observer client (an operator dashboard, say) collecting what is published. */
async function observe(url: string, filter: string): Promise<{ client: MqttClient; messages: { topic: string; payload: Buffer; retain: boolean }[] }> {
  const client = connect(url, { protocolVersion: 4, clientId: `obs-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 0 });
  const messages: { topic: string; payload: Buffer; retain: boolean }[] = [];
  client.on('message', (topic, payload, packet) => messages.push({ topic, payload, retain: packet.retain }));
  client.on('error', () => undefined);
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  await client.subscribeAsync(filter, { qos: 1 });
  return { client, messages };
}

function statuses(messages: { topic: string; payload: Buffer }[]): string[] {
  return messages
    .filter((m) => m.topic === topics.of(DEVICE, 'status'))
    .map((m) => {
      const d = decodeJson(StatusSchema, m.payload, MAX_PAYLOAD_BYTES);
      assert.ok(d.ok, 'status payload follows StatusSchema');
      return d.value.state;
    });
}

const FAST_BACKOFF: BackoffOptions = { initialMs: 30, maxMs: 200, factor: 2, jitter: 0.5 };

let dir: string;
let dbN = 0;
const cleanups: (() => Promise<void>)[] = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'edgefleet-link-'));
});
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function setup(opts: { hub?: FakeHub; url?: string; link?: Partial<HubLinkOptions>; start?: boolean } = {}) {
  const hub = opts.hub;
  const outbox = new Outbox({ path: join(dir, `outbox-${dbN++}.db`), log: silentLogger() });
  await outbox.start(new AbortController().signal);
  const link = new HubLink({
    deviceId: DEVICE,
    url: opts.url ?? hub!.url,
    token: 'secret',
    backoff: FAST_BACKOFF,
    outbox,
    agentVersion: 'test',
    models: () => [{ name: 'm', version: '1.0.0' }],
    batchSize: 50,
    ackTimeoutMs: 2000,
    stableMs: 100,
    log: silentLogger(),
    ...opts.link,
  });
  cleanups.push(async () => {
    await link.stop();
    await outbox.stop();
  });
  if (opts.start !== false) await link.start(new AbortController().signal);
  return { outbox, link };
}

async function startHub(): Promise<FakeHub> {
  const hub = new FakeHub();
  await hub.start();
  cleanups.push(() => hub.stop());
  return hub;
}

function appendMany(outbox: Outbox, n: number, streams = ['a', 'b']): Promise<unknown> {
  const ps = [];
  for (let i = 0; i < n; i++) ps.push(outbox.append(streams[i % streams.length]!, 'event', { i }));
  return Promise.all(ps);
}

function assertNoGaps(hub: FakeHub, stream: string, count: number): void {
  const seqs = hub.seqs(stream);
  assert.deepEqual(
    seqs,
    Array.from({ length: count }, (_, i) => i),
    `stream ${stream}: every seq stored once, first arrivals in order`,
  );
}

void describe('hub link', () => {
  void test('start does not wait for the hub; appended records are delivered, acked and deleted', async () => {
    const hub = await startHub();
    const registry = new Registry();
    const obs = await observe(hub.url, `${topics.root(DEVICE)}/#`);
    cleanups.push(() => obs.client.endAsync());
    const { outbox, link } = await setup({ hub, link: { registry } });
    assert.equal(link.connected, false, 'start returned before connecting');
    await appendMany(outbox, 120);
    await waitFor('all acked', () => outbox.pendingCount() === 0 && hub.stored.size === 120);
    assertNoGaps(hub, 'a', 60);
    assertNoGaps(hub, 'b', 60);
    assert.equal(link.status().acked, 120);
    assert.equal(link.status().inflight, 0);
    // More appends wake the sender.
    await appendMany(outbox, 10);
    await waitFor('second round acked', () => outbox.pendingCount() === 0 && hub.stored.size === 130);

    const hello = obs.messages.find((m) => m.topic === topics.of(DEVICE, 'hello'));
    assert.ok(hello, 'hello published');
    const h = decodeJson(HelloSchema, hello.payload, MAX_PAYLOAD_BYTES);
    assert.ok(h.ok);
    assert.equal(h.value.deviceId, DEVICE);
    assert.equal(h.value.bootEpoch, outbox.epoch);
    assert.deepEqual(h.value.models, [{ name: 'm', version: '1.0.0' }]);
    assert.deepEqual(statuses(obs.messages), ['online']);
    const metrics = await registry.metrics();
    assert.match(metrics, /edgefleet_agent_hub_connected 1/);
    assert.match(metrics, /edgefleet_agent_telemetry_acked_total 130/);
    assert.match(metrics, /edgefleet_agent_telemetry_ack_seconds_count [1-9]/);
  });

  void test('broker outage while appends continue: everything arrives once, in order, no gaps', async () => {
    const hub = await startHub();
    const { outbox, link } = await setup({ hub });
    const inputs: string[] = [];
    link.subscribe(topics.input(DEVICE, 'temp'), (_t, p) => inputs.push(p.toString()));
    await waitFor('connected', () => link.connected);
    await appendMany(outbox, 100);
    await waitFor('first acks', () => outbox.pendingCount() === 0);

    await hub.stop();
    await waitFor('link notices', () => !link.connected);
    assert.equal(link.publish(topics.output(DEVICE, 'p'), 'live'), false, 'live publish refused offline');
    assert.equal(link.status().droppedLive, 1);
    // Appends go on while the hub is away, in several commits.
    for (let k = 0; k < 5; k++) {
      await appendMany(outbox, 60);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(outbox.pendingCount(), 300, 'buffered in the outbox');

    await hub.start(hub.port);
    await waitFor('everything acked after the restart', () => outbox.pendingCount() === 0);
    assert.equal(hub.stored.size, 400);
    assertNoGaps(hub, 'a', 200);
    assertNoGaps(hub, 'b', 200);
    assert.ok(link.status().reconnects >= 1);

    // The input subscription was renewed on the new connection.
    await hub.publish(topics.input(DEVICE, 'temp'), '{"t":21}');
    await waitFor('input delivered', () => inputs.length === 1);
    assert.equal(link.publish(topics.output(DEVICE, 'p'), 'live'), true);
  });

  void test('a lost ack or a refused batch leads to a resend; the hub de-duplicates', async () => {
    const hub = await startHub();
    const { outbox, link } = await setup({ hub, link: { ackTimeoutMs: 300, batchSize: 20, maxInflightBatches: 2 } });
    // Batch 0 is stored but its ack is lost; the first batch after that timeout is refused.
    let refused = false;
    hub.mode = (i) => {
      if (i === 0) return 'lost';
      if (link.status().ackTimeouts > 0 && !refused) {
        refused = true;
        return 'refuse';
      }
      return 'ok';
    };
    await waitFor('connected', () => link.connected);
    await appendMany(outbox, 100);
    await waitFor('all acked', () => outbox.pendingCount() === 0, 15_000);
    assert.equal(hub.stored.size, 100);
    assertNoGaps(hub, 'a', 50);
    assertNoGaps(hub, 'b', 50);
    const s = link.status();
    assert.equal(s.ackTimeouts, 1, 'the unacked batch timed out');
    assert.equal(s.nacks, 1, 'the refusal was seen');
    assert.ok(refused);
    assert.ok(hub.duplicates >= 20, 'the batch whose ack was lost was sent again and de-duplicated');
    assert.ok(s.sent >= 120);
  });

  void test('reconnect delays grow exponentially and are jittered', async () => {
    // A port with nothing listening.
    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));

    const randoms = [0, 1, 0.5, 0.25, 0.75, 0.1, 0.9, 0.3];
    let i = 0;
    const random = (): number => randoms[i++ % randoms.length]!;
    const backoff: BackoffOptions = { initialMs: 20, maxMs: 160, factor: 2, jitter: 0.5 };
    const { link } = await setup({ url: `mqtt://127.0.0.1:${port}`, link: { backoff, random, stableMs: 200 }, start: false });
    const events: { delay: number; attempt: number; at: number }[] = [];
    link.on('reconnectScheduled', (delay, attempt) => events.push({ delay, attempt, at: performance.now() }));
    await link.start(new AbortController().signal);
    await waitFor('6 attempts', () => events.length >= 6);

    const expected = new Backoff(backoff, ((j = 0) => () => randoms[j++ % randoms.length]!)());
    const want = Array.from({ length: 6 }, () => expected.next());
    assert.deepEqual(
      events.slice(0, 6).map((e) => e.delay),
      want,
    );
    assert.deepEqual(want, [20, 20, 60, 140, 100, 152]); // caps 20,40,80,160,160,160 minus jitter
    assert.deepEqual(
      events.slice(0, 6).map((e) => e.attempt),
      [1, 2, 3, 4, 5, 6],
    );
    for (let k = 1; k < 6; k++) {
      const gap = events[k]!.at - events[k - 1]!.at;
      assert.ok(gap >= events[k - 1]!.delay - 5, `attempt ${k} waited its delay (${gap.toFixed(0)} ms >= ${events[k - 1]!.delay})`);
    }

    // The hub comes up on that port: the link connects; once stable, the backoff starts over.
    const hub = new FakeHub();
    await hub.start(port);
    cleanups.unshift(() => hub.stop()); // stopped after the link
    await waitFor('connected', () => link.connected, 5000);
    await new Promise((r) => setTimeout(r, 300));
    const before = events.length;
    hub.clients.get(DEVICE)!.conn.destroy();
    await waitFor('rescheduled', () => events.length > before);
    assert.equal(events[before]!.attempt, 1, 'a stable connection reset the backoff');
    await waitFor('reconnected', () => link.connected);
  });

  void test('stop while the hub is unreachable returns promptly', async () => {
    const probe = net.createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const { link } = await setup({ url: `mqtt://127.0.0.1:${port}` });
    let scheduled = 0;
    link.on('reconnectScheduled', () => scheduled++);
    await waitFor('an attempt failed', () => scheduled >= 1);
    const t0 = performance.now();
    await link.stop();
    assert.ok(performance.now() - t0 < 1000);
    const atStop = scheduled;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(scheduled, atStop, 'no reconnect after stop');
    assert.equal(link.connected, false);
  });

  void test('real jitter keeps delays between (1 - jitter) * cap and cap', () => {
    const b = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 });
    const delays = Array.from({ length: 40 }, () => b.next());
    const caps = delays.map((_, k) => Math.min(1000, 100 * 2 ** k));
    delays.forEach((d, k) => assert.ok(d >= caps[k]! * 0.5 - 1 && d <= caps[k]!, `delay ${d} within [${caps[k]! / 2}, ${caps[k]}]`));
    assert.ok(new Set(delays.slice(10)).size > 1, 'capped delays still vary');
  });

  void test('retained status: online on connect, offline by last-will on a dead socket and on stop', async () => {
    const hub = await startHub();
    const obs = await observe(hub.url, topics.of(DEVICE, 'status'));
    cleanups.push(() => obs.client.endAsync());
    const { link } = await setup({ hub, link: { keepaliveSeconds: 5 } });
    await waitFor('online', () => statuses(obs.messages).length === 1);
    assert.deepEqual(statuses(obs.messages), ['online']);

    // The device vanishes without DISCONNECT: the broker publishes its will.
    hub.clients.get(DEVICE)!.conn.destroy();
    await waitFor('will + back online', () => statuses(obs.messages).length >= 3);
    assert.deepEqual(statuses(obs.messages).slice(0, 3), ['online', 'offline', 'online']);

    await link.stop();
    await waitFor('offline on stop', () => statuses(obs.messages).length >= 4);
    assert.equal(statuses(obs.messages).at(-1), 'offline');
    // A late subscriber gets the retained state.
    const late = await observe(hub.url, topics.of(DEVICE, 'status'));
    cleanups.push(() => late.client.endAsync());
    await waitFor('retained', () => late.messages.length === 1);
    assert.equal(late.messages[0]!.retain, true);
    assert.deepEqual(statuses(late.messages), ['offline']);
  });

  void test('bad ack payloads are counted and ignored; an ack for an unknown batch still deletes its ranges', async () => {
    const hub = await startHub();
    hub.mode = () => 'silent'; // the test acks by hand
    const registry = new Registry();
    const { outbox, link } = await setup({ hub, link: { registry, ackTimeoutMs: 60_000 } });
    await waitFor('connected', () => link.connected);
    const ackTopic = topics.of(DEVICE, 'ack');
    await hub.publish(ackTopic, 'not json');
    await hub.publish(ackTopic, JSON.stringify({ v: 1, type: 'ack', batchId: 'x' }));
    await hub.publish(ackTopic, JSON.stringify({ v: 99, type: 'ack', batchId: 'x', ok: true, ranges: [], stored: 0, duplicates: 0 }));
    await waitFor('counted', () => link.status().badMessages === 3);
    assert.match(await registry.getSingleMetricAsString('edgefleet_agent_link_bad_messages_total'), /kind="ack"} 3/);
    assert.equal(link.connected, true);

    await appendMany(outbox, 10, ['a']);
    await waitFor('batch sent', () => hub.batches === 1);
    const ack: Ack = {
      v: PROTOCOL_VERSION,
      type: 'ack',
      batchId: 'not-one-of-ours',
      ok: true,
      ranges: [{ stream: 'a', epoch: outbox.epoch, from: 0, to: 3 }],
      stored: 4,
      duplicates: 0,
    };
    await hub.publish(ackTopic, encodeJson(ack));
    await waitFor('ranges applied', () => outbox.pendingCount() === 6);
    assert.deepEqual(
      outbox.readBatch(0, 100).map((r) => r.seq),
      [4, 5, 6, 7, 8, 9],
    );
    assert.equal(link.status().inflight, 1, 'the real batch is still awaited');
  });

  void test('commands: replies on cmd/result; a repeated id gets the first result again', async () => {
    const hub = await startHub();
    const obs = await observe(hub.url, topics.of(DEVICE, 'cmd/result'));
    cleanups.push(() => obs.client.endAsync());
    const { link } = await setup({ hub });
    let calls = 0;
    link.onCommand(async (cmd) => {
      calls++;
      await new Promise((r) => setTimeout(r, 20));
      if (cmd.name === 'fail') throw new Error('nope');
      return { calls, arg: cmd.args.x };
    });
    await waitFor('connected', () => link.connected);
    const cmd = (id: string, name: string): Buffer => {
      const c: Command = { v: PROTOCOL_VERSION, type: 'command', id, ts: Date.now(), name, args: { x: id } };
      return encodeJson(c);
    };
    const cmdTopic = topics.of(DEVICE, 'cmd');
    await hub.publish(cmdTopic, cmd('c1', 'echo'));
    await hub.publish(cmdTopic, cmd('c1', 'echo')); // while the first still runs
    await waitFor('two results', () => obs.messages.length === 2);
    await hub.publish(cmdTopic, cmd('c1', 'echo')); // after it finished
    await hub.publish(cmdTopic, cmd('c2', 'fail'));
    await hub.publish(cmdTopic, '{"v":1,"type":"command"}'); // bad: counted, no reply
    await waitFor('four results', () => obs.messages.length === 4);
    await waitFor('bad counted', () => link.status().badMessages === 1);

    const results = obs.messages.map((m) => {
      const d = decodeJson(CommandResultSchema, m.payload, MAX_PAYLOAD_BYTES);
      assert.ok(d.ok);
      return d.value;
    });
    const c1 = results.filter((r) => r.id === 'c1');
    assert.equal(c1.length, 3);
    assert.deepEqual(c1[0], { v: 1, type: 'command_result', id: 'c1', ts: c1[0]!.ts, ok: true, result: { calls: 1, arg: 'c1' } });
    assert.deepEqual(c1[1], c1[0]);
    assert.deepEqual(c1[2], c1[0]);
    const c2 = results.find((r) => r.id === 'c2');
    assert.equal(c2?.ok, false);
    assert.equal(c2?.error?.code, 'INTERNAL');
    assert.equal(calls, 2, 'the handler ran once per id');
    assert.equal(link.status().duplicateCommands, 2);
  });

  void test('topic filters match like a broker', () => {
    assert.ok(topicMatches('a/+/c', 'a/b/c'));
    assert.ok(topicMatches('a/#', 'a'));
    assert.ok(topicMatches('a/#', 'a/b/c'));
    assert.ok(!topicMatches('a/+', 'a/b/c'));
    assert.ok(!topicMatches('a/b', 'a/b/c'));
    assert.ok(!topicMatches('#', '$SYS/x'));
    assert.ok(topicMatches('$SYS/#', '$SYS/x'));
  });
});
