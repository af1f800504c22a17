/**
 * Fuzz (issue #6): raw MQTT packets against a live hub (embedded aedes broker, SQLite, HTTP API)
 * for a time budget (FUZZ_SECONDS, default 8). Raw TCP sockets send malformed fixed headers and
 * remaining lengths (5-byte varints, lengths larger or smaller than sent), CONNECT variants (bad
 * protocol names and levels, huge client ids, bad flags, bad credentials, wills with bad
 * topics), packets before CONNECT, and, as authenticated fuzz devices: 1000-level topics, topics
 * with NUL, invalid UTF-8 and wildcards, SUBSCRIBE with 1000 filters, QoS 2 floods reusing one
 * packet id and with distinct ids (never a PUBREL), mutated PUBLISH packets, mutated payloads on
 * the device's own protocol topics (what hub ingest decodes), and random control packets.
 *
 * Throughout, a legitimate device (mqtt.js, registered through the API) publishes telemetry and
 * must stay connected or reconnect and keep getting acks; /healthz must keep answering; the
 * retained heap after the run must stay bounded. Prints one summary line with the seed.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import mqtt, { type MqttClient } from 'mqtt';
import { PROTOCOL_VERSION, topics, type TelemetryBatch } from '../../shared/protocol.ts';
import { until } from '../helpers/fleet-in-process.ts';
import { counterBy, counterTotal, HealthPoller, healthy, retainedHeapMB, startFuzzHub, type FuzzHub } from './fuzz-hub.ts';
import { fuzzBudgetMs, fuzzRun, INTERESTING_STRINGS, jsonText, mutateBytes, mutateJson, mutateText, Outcomes, randomBytes, runWorkers, summaryLine, type Rng } from './gen.ts';
import { connectPacket, DISCONNECT, frame, idPacket, PINGREQ, probe, publishPacket, str, subscribePacket, unsubscribePacket, type ProbeResult } from './mqtt-wire.ts';

/** Default time budget of this file in `npm test` (FUZZ_SECONDS overrides). */
const SECONDS = 8;

const WORKERS = 6;
/** How long a probe waits for the hub to react after its last write before closing itself. */
const WAIT_MS = 120;
const INVALID_UTF8 = Buffer.from([0x61, 0xff, 0xfe, 0xc0, 0x80, 0xed, 0xa0, 0x80]);

interface Scenario {
  name: string;
  /** Bytes sent at once on connect. */
  chunks: Buffer[];
  /** Sent only after a successful CONNACK (the first chunk is then a valid CONNECT). */
  afterConnack?: Buffer[];
  /** How many fuzz inputs (packets or byte strings) this scenario counts as. */
  inputs: number;
}

interface Device {
  id: string;
  token: string;
}

function telemetrySample(deviceId: string, seq: number): TelemetryBatch {
  return {
    v: PROTOCOL_VERSION,
    type: 'telemetry',
    deviceId,
    batchId: `b-${seq}`,
    records: [
      { stream: 'inference', epoch: 1, seq, ts: Date.now(), kind: 'inference', body: { id: `i-${seq}`, model: 'machine-state', label: 'ok', scores: [0.9, 0.1] } },
      {
        stream: 'health',
        epoch: 1,
        seq,
        ts: Date.now(),
        kind: 'health',
        body: { model: 'machine-state', version: '1.0.0', windowStart: 60_000, windowMs: 60_000, ok: 1, errors: 0, latency: [1], classCounts: [1, 0], confidence: [1] },
      },
      { stream: 'events', epoch: 1, seq, ts: Date.now(), kind: 'model', body: { event: 'installed', name: 'machine-state', version: '1.0.0', counter: 1 } },
    ],
  };
}

/** Valid payloads of the messages a device publishes, keyed by topic kind. */
function payloadSamples(deviceId: string): { kind: string; value: unknown }[] {
  return [
    { kind: 'telemetry', value: telemetrySample(deviceId, 1) },
    { kind: 'hello', value: { v: 1, type: 'hello', deviceId, ts: 1, agentVersion: '0.1.0', bootEpoch: 1, models: [{ name: 'machine-state', version: '1.0.0' }], streams: [] } },
    { kind: 'status', value: { v: 1, type: 'status', deviceId, ts: 1, state: 'online', bootEpoch: 1 } },
    { kind: 'cmd/result', value: { v: 1, type: 'command_result', id: 'c1', ts: 1, ok: true, result: { name: 'machine-state', version: '1.0.0', counter: 1, state: 'active' } } },
    { kind: 'feedback', value: { v: 1, feedback: [{ id: 'i-1', label: 'ok' }] } },
  ];
}

function connectOf(d: Device, extra: Partial<Parameters<typeof connectPacket>[0]> = {}): Buffer {
  return connectPacket({ clientId: d.id, username: d.id, password: d.token, ...extra });
}

function weirdTopic(rng: Rng, own: string): string | Buffer {
  const root = topics.root(own);
  switch (rng.int(12)) {
    case 0:
      return `${root}/${'a/'.repeat(1000)}x`;
    case 1:
      return `${root}/in/a\u0000b`;
    case 2:
      return Buffer.concat([Buffer.from(`${root}/in/`), INVALID_UTF8]);
    case 3:
      return rng.pick([`${root}/+`, `${root}/#`, '#', '+/+/+/telemetry', `${root}/in/#/x`]);
    case 4:
      return '';
    case 5:
      return rng.pick(['$SYS/broker/load', '$SYS', '$hub/x']);
    case 6:
      return topics.of('victim-1', rng.pick(['telemetry', 'hello', 'cmd', 'ack', 'status'] as const));
    case 7:
      return `${root}/${'x'.repeat(rng.pick([600, 60_000]))}`;
    case 8:
      return rng.pick([topics.of(own, 'cmd'), topics.of(own, 'ack')]); // hub → agent only
    case 9:
      return `${root}/in/${rng.pick(INTERESTING_STRINGS)}`;
    case 10:
      return `edgefleet/v1/${rng.pick(INTERESTING_STRINGS)}/telemetry`;
    default:
      return `${root}//in//`;
  }
}

function scenario(rng: Rng, me: Device, samples: { kind: string; value: unknown }[]): Scenario {
  const good = connectOf(me);
  const validPublish = publishPacket(`${topics.root(me.id)}/in/x`, Buffer.from('{"values":[1,2,3]}'), { qos: 1, id: 5 });
  switch (rng.int(16)) {
    case 0:
      return { name: 'random_bytes', chunks: [randomBytes(rng, 1 + rng.int(300))], inputs: 1 };
    case 1: {
      const body = good.subarray(2);
      const variants: Buffer[] = [
        frame(0x00, body), // reserved type 0
        frame(0xf0, body), // type 15 (AUTH, MQTT 5 only)
        frame(0x1f, body), // CONNECT with reserved flag bits
        Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]), // 5-byte varint
        Buffer.from([0x10, 0xff, 0xff, 0xff, 0x7f]), // 256 MB declared
        frame(0x10, body, body.length + 1 + rng.int(1000)), // longer than sent
        frame(0x10, body, Math.max(0, body.length - 1 - rng.int(body.length))), // shorter than sent
        Buffer.from([0x10, 0x00]),
        Buffer.from([0x10, 0x80, 0x80, 0x80, 0x00]), // overlong zero
      ];
      return { name: 'bad_fixed_header', chunks: [rng.pick(variants)], inputs: 1 };
    }
    case 2:
      return { name: 'connect_mutated', chunks: [mutateBytes(good, rng)], inputs: 1 };
    case 3: {
      const v = rng.int(12);
      const p =
        v === 0
          ? connectOf(me, { protocolName: rng.pick(['MQIsdp', 'MQTT\u0000', 'mqtt', '', 'MQTTT']), level: rng.pick([0, 3, 4, 5, 255]) })
          : v === 1
            ? connectOf(me, { protocolName: INVALID_UTF8 })
            : v === 2
              ? connectPacket({ clientId: 'a'.repeat(65_535), username: 'a'.repeat(65_535), password: me.token })
              : v === 3
                ? connectOf(me, { flags: rng.pick([0x01, 0x03, 0x40, 0xc1, 0x1c, 0x20, 0x3e, 0xff]) })
                : v === 4
                  ? connectPacket({ clientId: '', clean: false, username: me.id, password: me.token })
                  : v === 5
                    ? connectPacket({ clientId: me.id, username: me.id, password: rng.pick(['', 'wrong', me.token.slice(1), `${me.token}\u0000`, 'x'.repeat(60_000)]) })
                    : v === 6
                      ? connectPacket({ clientId: 'victim-1', username: 'victim-1', password: me.token })
                      : v === 7
                        ? connectPacket({ clientId: me.id, username: Buffer.concat([Buffer.from(me.id), INVALID_UTF8]), password: me.token })
                        : v === 8
                          ? connectPacket({ clientId: me.id, password: me.token })
                          : v === 9
                            ? Buffer.concat([connectOf(me).subarray(0, 14), str(me.id, rng.pick([0, 1, 200, 65_535]))])
                            : connectOf(me, { will: { topic: weirdTopic(rng, me.id), payload: Buffer.from('{"v":1}'), qos: rng.int(4), retain: rng.next() < 0.5 } });
      // Variants 10 and 11 are wills with bad topics (the most interesting CONNECT path).
      return { name: v >= 10 ? 'connect_bad_will' : 'connect_variant', chunks: [p], inputs: 1 };
    }
    case 4: {
      const first = rng.pick([validPublish, subscribePacket(1, [{ topic: '#', qos: 0 }]), PINGREQ, idPacket(0x62, 1), DISCONNECT, unsubscribePacket(1, ['#'])]);
      return { name: 'before_connect', chunks: [first, good], inputs: 2 };
    }
    case 5:
      return { name: 'double_connect', chunks: [good], afterConnack: [good], inputs: 2 };
    case 6:
      return { name: 'deep_topic', chunks: [good], afterConnack: [publishPacket(`${topics.root(me.id)}/${'a/'.repeat(1000)}x`, Buffer.from('1'), { qos: rng.int(3), id: 3 })], inputs: 2 };
    case 7:
      return { name: 'bad_topic', chunks: [good], afterConnack: [publishPacket(weirdTopic(rng, me.id), Buffer.from('{}'), { qos: rng.int(3), id: 9, retain: rng.next() < 0.3 })], inputs: 2 };
    case 8: {
      const filters = Array.from({ length: 1000 }, (_, i) => ({ topic: i % 3 === 0 ? `${topics.root(me.id)}/f${i}` : weirdTopic(rng, me.id), qos: rng.int(4) }));
      return { name: 'subscribe_1000', chunks: [good], afterConnack: [subscribePacket(2, filters)], inputs: 2 };
    }
    case 9: {
      const n = rng.pick([100, 1000, 5000]);
      const pub = publishPacket(`${topics.root(me.id)}/in/q2`, Buffer.from('{"values":[1]}'), { qos: 2, id: 7 });
      return { name: 'qos2_same_id', chunks: [good], afterConnack: [Buffer.concat(Array.from({ length: n }, () => pub))], inputs: 1 + n };
    }
    case 10: {
      const n = rng.pick([50, 500, 3000]);
      const pubs = Array.from({ length: n }, (_, i) => publishPacket(`${topics.root(me.id)}/in/q2`, Buffer.from('{"values":[1]}'), { qos: 2, id: 1 + (i % 65_535) }));
      return { name: 'qos2_distinct_ids', chunks: [good], afterConnack: [Buffer.concat(pubs)], inputs: 1 + n };
    }
    case 11: {
      const n = 1 + rng.int(5);
      return { name: 'publish_mutated', chunks: [good], afterConnack: Array.from({ length: n }, () => mutateBytes(validPublish, rng)), inputs: 1 + n };
    }
    case 12:
    case 13: {
      // Mutated payloads on the device's own protocol topics: what hub ingest decodes.
      const n = 1 + rng.int(20);
      const pubs = Array.from({ length: n }, (_, i) => {
        const s = rng.pick(samples);
        const text = jsonText(s.value);
        const payload = rng.next() < 0.6 ? jsonText(mutateJson(s.value, rng)) : mutateText(text, rng);
        return publishPacket(`${topics.root(me.id)}/${s.kind}`, Buffer.from(payload), { qos: 1, id: 100 + i });
      });
      return { name: 'payload_fuzz', chunks: [good], afterConnack: pubs, inputs: 1 + n };
    }
    case 14: {
      const n = 1 + rng.int(20);
      const ctl = Array.from({ length: n }, () =>
        rng.pick([
          idPacket(0x40, rng.int(65_536)),
          idPacket(0x50, rng.int(65_536)),
          idPacket(0x62, rng.int(65_536)),
          idPacket(0x70, rng.int(65_536)),
          idPacket(0x60, 1), // PUBREL with wrong flags
          unsubscribePacket(rng.int(65_536), [weirdTopic(rng, me.id)]),
          subscribePacket(0, [{ topic: `${topics.root(me.id)}/x`, qos: 0 }]), // packet id 0
          frame(0x82, Buffer.from([0, 1])), // SUBSCRIBE without filters
          PINGREQ,
          DISCONNECT,
          frame(0xd0, Buffer.alloc(0)), // PINGRESP from a client
          frame(0x20, Buffer.from([0, 0])), // CONNACK from a client
        ]),
      );
      return { name: 'control_packets', chunks: [good], afterConnack: ctl, inputs: 1 + n };
    }
    default:
      return { name: 'session_random_bytes', chunks: [good], afterConnack: [randomBytes(rng, 1 + rng.int(500))], inputs: 2 };
  }
}

function classify(s: Scenario, r: ProbeResult): string {
  if (r.error) return 'socket_error';
  const connack = r.connack === undefined ? (s.afterConnack ? 'no_connack' : '') : r.connack === 0 ? 'connack_ok' : 'connack_refused';
  const end = r.closedByHub ? 'closed_by_hub' : 'left_open';
  return connack ? `${connack}+${end}` : end;
}

/** The legitimate device: publishes a telemetry batch every 100 ms and counts the acks. */
class LegitDevice {
  readonly client: MqttClient;
  sent = 0;
  acked = 0;
  disconnects = 0;
  readonly #acked = new Set<string>();
  #timer: NodeJS.Timeout | undefined;

  constructor(url: string, readonly d: Device) {
    this.client = mqtt.connect(url, { clientId: d.id, username: d.id, password: d.token, protocolVersion: 4, reconnectPeriod: 300, reconnectOnConnackError: true });
    this.client.on('connect', () => void this.client.subscribeAsync(topics.of(d.id, 'ack'), { qos: 1 }).catch(() => undefined));
    this.client.on('close', () => this.disconnects++);
    this.client.on('error', () => undefined); // reconnects on its own; never end() here (mqtt.js #1466)
    this.client.on('message', (_t, payload) => {
      const ack = JSON.parse(payload.toString('utf8')) as { ok: boolean; batchId: string };
      if (ack.ok && !this.#acked.has(ack.batchId)) {
        this.#acked.add(ack.batchId);
        this.acked++;
      }
    });
  }

  start(): void {
    this.#timer = setInterval(() => this.publishOne(), 100);
  }

  publishOne(): string {
    const batch = telemetrySample(this.d.id, this.sent++);
    if (this.client.connected) this.client.publish(topics.of(this.d.id, 'telemetry'), jsonText(batch), { qos: 1 });
    return batch.batchId;
  }

  isAcked(batchId: string): boolean {
    return this.#acked.has(batchId);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.client.endAsync(true);
  }
}

describe('fuzz: raw MQTT packets against a live hub', () => {
  let fh: FuzzHub;
  let legit: LegitDevice;
  const fuzzers: Device[] = [];

  before(async () => {
    fh = await startFuzzHub();
    for (let i = 0; i < WORKERS; i++) fuzzers.push({ id: `fuzz-${i}`, token: await fh.addPrincipal(`fuzz-${i}`) });
    await fh.addPrincipal('victim-1');
    legit = new LegitDevice(fh.hub.mqttUrl, { id: 'legit-1', token: await fh.addPrincipal('legit-1') });
    await until(() => legit.client.connected, 10_000, 'the legitimate device to connect');
  });

  after(async () => {
    await legit?.stop();
    await fh?.stop();
  });

  test('the hub survives, stays healthy, keeps serving a legitimate device, memory bounded', { timeout: fuzzBudgetMs(SECONDS) + 120_000 }, async () => {
    const { seed, budget, out, mem } = fuzzRun(SECONDS);
    const byScenario = new Outcomes();
    const heapBefore = retainedHeapMB();
    const health = new HealthPoller(fh.hub.httpUrl);
    legit.start();
    const ackedBefore = legit.acked;
    let connections = 0;
    const samples = fuzzers.map((f) => payloadSamples(f.id));

    try {
      await runWorkers(seed, budget, WORKERS, async (rng, w) => {
        const me = fuzzers[w]!;
        const s = scenario(rng, me, samples[w]!);
        const r = await probe(fh.hub.mqttPort, s.chunks, { waitMs: WAIT_MS, afterConnack: s.afterConnack });
        connections++;
        out.inputs += s.inputs;
        const what = classify(s, r);
        out.count(what);
        byScenario.count(`${s.name}:${what}`);
      });
    } finally {
      await health.stop();
    }

    // After the storm: the hub answers, the legitimate device is (again) connected and its next
    // batch is acked.
    assert.ok(await healthy(fh.hub.httpUrl), 'hub /healthz after the fuzz run');
    await until(() => legit.client.connected, 15_000, 'the legitimate device to be connected');
    const last = legit.publishOne();
    await until(() => legit.isAcked(last), 15_000, `an ack for the legitimate device's batch ${last}`);
    mem.stop();
    const heapAfter = retainedHeapMB();
    const badMessages = await counterTotal(fh.hub, 'edgefleet_hub_bad_messages_total');
    const refusedPublish = await counterBy(fh.hub, 'edgefleet_hub_mqtt_publish_refused_total', 'reason');
    const refusedConnect = await counterBy(fh.hub, 'edgefleet_hub_mqtt_connect_refused_total', 'reason');
    const stored = (await fh.hub.store.queryTelemetry({ deviceId: 'legit-1', stream: 'inference', limit: 100_000 })).length;

    summaryLine(
      'mqtt',
      {
        seed,
        inputs: out.inputs,
        connections,
        crashes: 0,
        hub_alive: 'yes',
        healthz_ok: health.ok,
        healthz_failed: health.failed,
        legit_sent: legit.sent,
        legit_acked: legit.acked,
        legit_disconnects: legit.disconnects,
        bad_messages: badMessages,
        publish_refused: jsonText(refusedPublish),
        connect_refused: jsonText(refusedConnect),
        peak_rss: `${mem.peakRssMB}MB`,
        peak_heap: `${mem.peakHeapMB}MB`,
        heap_before: `${heapBefore}MB`,
        heap_after: `${heapAfter}MB`,
      },
      out,
    );
    console.log(`fuzz mqtt scenarios: ${byScenario.toString()}`);

    assert.equal(health.failed, 0, `/healthz failed during the run (seed=${seed})`);
    assert.ok(legit.acked > ackedBefore, 'the legitimate device got acks during the run');
    assert.ok(stored >= legit.acked, 'every acked batch of the legitimate device is stored');
    assert.ok(out.sumWhere(/closed_by_hub/) > 0, 'the hub closed some fuzz connections');
    assert.ok(badMessages > 0, 'mutated payloads were counted as bad messages');
    // Integrity: fuzz devices named the victim in topics, payloads, client ids and wills, but
    // nothing reached the victim's records (it never connected).
    assert.equal((await fh.hub.store.queryTelemetry({ deviceId: 'victim-1', limit: 10 })).length, 0, 'telemetry stored for a device that never connected');
    // Bounded: what the run leaves behind on the heap (after a full GC) is small.
    assert.ok(heapAfter - heapBefore < 100, `retained heap grew ${heapAfter - heapBefore} MB (seed=${seed})`);
  });
});
