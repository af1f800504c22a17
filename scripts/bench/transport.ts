/**
 * Bench sections on the MQTT path, with the real hub in-process (createHub via the tests'
 * InProcessFleet: aedes on port 0, SQLite in a temp dir):
 *
 *   telemetry  records delivered AND acked per second, agent → hub: a real agent's Outbox +
 *              HubLink (records appended to the outbox, timed until the hub has committed and
 *              acked every one) vs a raw mqtt.js client publishing the same batch payloads
 *              (same records, same batch size and bytes) at QoS 1 to the same broker, timed
 *              until every PUBACK is in. The gap is the hub's commit, the ack round trip and
 *              the outbox reads and deletes.
 *   broker     messages per second from one publisher through the broker to one subscriber
 *              (QoS 1 both ways): the hub's EmbeddedBroker (auth, ACLs, forward checks) vs a
 *              vanilla `new Aedes()` on a net server, same clients, topics and payloads.
 */
import { once } from 'node:events';
import { createServer, type AddressInfo } from 'node:net';
import { Aedes } from 'aedes';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { PROTOCOL_VERSION, type TelemetryBatch } from '../../shared/protocol.ts';
import { InProcessFleet, until } from '../../test/helpers/fleet-in-process.ts';
import { figure, interleave, type Figure } from './measure.ts';
import type { SectionOptions } from './inference.ts';
import { inferenceBody } from './storage.ts';

/** The agent's default telemetry batch (agent config `hub.batchSize`). */
const BATCH = 500;

export async function telemetrySection(o: SectionOptions): Promise<Figure[]> {
  const records = o.quick ? 1000 : 10_000;
  const fleet = new InProcessFleet();
  try {
    await fleet.startHub();
    const agent = await fleet.startAgent('bench-agent');
    await until(() => agent.link.connected, 20_000, 'agent link connected');
    const rawToken = await fleet.addPrincipal({ id: 'bench-raw' });
    const raw = await fleet.connect('bench-raw', rawToken);
    // The raw side sends exactly the payloads the link would: the same records in batches of BATCH.
    const payloads: Buffer[] = [];
    for (let i = 0; i < records; i += BATCH) {
      const batch: TelemetryBatch = {
        v: PROTOCOL_VERSION,
        type: 'telemetry',
        deviceId: 'bench-agent',
        batchId: `raw-${i}`,
        records: Array.from({ length: Math.min(BATCH, records - i) }, (_, k) => ({
          stream: 'bench',
          epoch: 1,
          seq: i + k,
          ts: Date.now(),
          kind: 'inference',
          body: inferenceBody(i + k),
        })),
      };
      payloads.push(Buffer.from(JSON.stringify(batch)));
    }
    const viaLink = async (): Promise<number> => {
      const acked0 = agent.link.status().acked;
      const t0 = performance.now();
      await Promise.all(Array.from({ length: records }, (_, i) => agent.outbox.append('bench', 'inference', inferenceBody(i))));
      await until(() => agent.link.status().acked - acked0 >= records, 120_000, 'every record acked');
      return (records * 1000) / (performance.now() - t0);
    };
    const viaRaw = async (): Promise<number> => {
      const t0 = performance.now();
      await Promise.all(payloads.map((p) => raw.publishAsync('edgefleet/v1/bench-raw/bench/raw', p, { qos: 1 })));
      return (records * 1000) / (performance.now() - t0);
    };
    await viaLink();
    await viaRaw();
    const r = await interleave(o.repeats, viaLink, viaRaw);
    return [
      figure({
        section: 'telemetry',
        name: `${records} records, agent → hub`,
        unit: 'rec/s',
        subjectLabel: 'Outbox+HubLink, acked',
        baselineLabel: 'raw QoS 1 PUBACKs',
        subject: r.subject,
        baseline: r.baseline,
        note: `batches of ${BATCH} records (~${Math.round((payloads[0]?.length ?? 0) / 1024)} KiB), hub in-process; the link's count stops at the hub's ack (after its SQLite commit, synchronous=FULL)`,
      }),
    ];
  } finally {
    await fleet.stop();
  }
}

/** Publishes `n` messages at QoS 1 and resolves when the subscriber has all of them: msgs/s. */
async function pubSub(pub: MqttClient, sub: MqttClient, topic: string, n: number, payload: Buffer): Promise<number> {
  let got = 0;
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const onMessage = (): void => {
    if (++got === n) resolveAll();
  };
  sub.on('message', onMessage);
  try {
    const t0 = performance.now();
    const acks = Array.from({ length: n }, () => pub.publishAsync(topic, payload, { qos: 1 }));
    await Promise.all([all, ...acks]);
    return (n * 1000) / (performance.now() - t0);
  } finally {
    sub.off('message', onMessage);
  }
}

async function vanillaAedes(): Promise<{ url: string; close: () => Promise<void> }> {
  const aedes = new Aedes();
  await aedes.listen();
  const server = createServer((socket) => aedes.handle(socket));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    close: async () => {
      const closed = new Promise<void>((r) => server.close(() => r()));
      await new Promise<void>((r) => aedes.close(() => r()));
      await closed;
    },
  };
}

export async function brokerSection(o: SectionOptions): Promise<Figure[]> {
  const n = o.quick ? 500 : 5000;
  const payload = Buffer.alloc(256, 'x');
  const topic = 'edgefleet/v1/bench-pub/out/bench';
  const fleet = new InProcessFleet();
  const vanilla = await vanillaAedes();
  const plain: MqttClient[] = [];
  try {
    await fleet.startHub();
    const pubToken = await fleet.addPrincipal({ id: 'bench-pub' });
    const subToken = await fleet.addPrincipal({ id: 'bench-sub', kind: 'consumer' });
    const hubPub = await fleet.connect('bench-pub', pubToken);
    const hubSub = await fleet.connect('bench-sub', subToken);
    await hubSub.subscribeAsync('edgefleet/v1/bench-pub/out/#', { qos: 1 });
    const opts: IClientOptions = { protocolVersion: 4, reconnectPeriod: 0 };
    const vPub = await mqtt.connectAsync(vanilla.url, { ...opts, clientId: 'bench-pub' });
    const vSub = await mqtt.connectAsync(vanilla.url, { ...opts, clientId: 'bench-sub' });
    plain.push(vPub, vSub);
    await vSub.subscribeAsync('edgefleet/v1/bench-pub/out/#', { qos: 1 });
    await pubSub(hubPub, hubSub, topic, Math.min(n, 500), payload);
    await pubSub(vPub, vSub, topic, Math.min(n, 500), payload);
    const r = await interleave(o.repeats, () => pubSub(hubPub, hubSub, topic, n, payload), () => pubSub(vPub, vSub, topic, n, payload));
    return [
      figure({
        section: 'broker',
        name: `${n} × ${payload.length} B, 1 pub → 1 sub, QoS 1`,
        unit: 'msg/s',
        subjectLabel: 'EmbeddedBroker (auth+ACL)',
        baselineLabel: 'vanilla aedes',
        subject: r.subject,
        baseline: r.baseline,
        note: 'publisher and subscriber in the same process as the broker; all messages published at once, timed until the subscriber has every one and every PUBACK is in',
      }),
    ];
  } finally {
    for (const c of plain) await c.endAsync(true).catch(() => undefined);
    await fleet.stop();
    await vanilla.close();
  }
}
