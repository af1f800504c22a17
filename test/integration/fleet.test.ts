/**
 * The foundation end to end, in one process with real parts: hub (aedes + SQLite) and two agents
 * (ORT workers + SQLite outbox). Readings in → inferences → results published → telemetry stored
 * at the hub exactly once; bad input on the sensor topic is counted and does not disturb valid
 * traffic.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { topics } from '../../shared/protocol.ts';
import { scrapeCounter } from '../../scripts/fleet/metrics-scrape.ts';
import { MACHINE_STATES, mulberry32, sensorSample, SENSOR_FEATURES } from '../../scripts/lib/synthetic.ts';
import { InProcessFleet, until } from '../helpers/fleet-in-process.ts';

const N = 150; // readings per device

describe('fleet end to end (in process)', () => {
  const fleet = new InProcessFleet();
  before(async () => {
    await fleet.startHub();
  });
  after(() => fleet.stop());

  it('readings become inferences, results on out/, telemetry stored exactly once', async () => {
    const devices = ['gw-a', 'gw-b'];
    for (const d of devices) await fleet.startAgent(d);
    const consumerToken = await fleet.addPrincipal({ id: 'mes-1', kind: 'consumer' });
    const consumer = await fleet.connect('mes-1', consumerToken);
    const results = new Map<string, { label: string; deviceId: string; model: { name: string } }>();
    consumer.on('message', (_t, payload) => {
      const r = JSON.parse(payload.toString()) as { id: string; label: string; deviceId: string; model: { name: string } };
      assert.ok(!results.has(r.id), `result ${r.id} published twice`);
      results.set(r.id, r);
    });
    await consumer.subscribeAsync('edgefleet/v1/+/out/#', { qos: 1 });

    const truth = new Map<string, string>();
    const rng = mulberry32(42);
    for (const d of devices) {
      const sensorId = `${d}-vib`;
      const sensor = await fleet.connect(sensorId, await fleet.addPrincipal({ id: sensorId, kind: 'sensor', device: d }));
      for (let i = 0; i < N; i++) {
        const cls = MACHINE_STATES[i % 3]!;
        const values = sensorSample(rng, cls);
        const id = `${d}-${i}`;
        truth.set(id, cls);
        const features = Object.fromEntries(SENSOR_FEATURES.map((f, k) => [f, values[k]]));
        await sensor.publishAsync(topics.input(d, 'vibration'), JSON.stringify({ id, ts: Date.now(), features }), { qos: 1 });
      }
    }

    await until(() => results.size === N * devices.length, 20_000, 'all results');
    let correct = 0;
    for (const [id, r] of results) {
      assert.equal(r.model.name, 'machine-state');
      assert.equal(r.deviceId, id.slice(0, id.lastIndexOf('-')));
      if (r.label === truth.get(id)) correct++;
    }
    // The int8 model's held-out accuracy is ~97%: results must be real classifications.
    assert.ok(correct / results.size > 0.9, `accuracy ${correct}/${results.size}`);

    for (const d of devices) {
      // Inference records; health and drift windows may close during the test too.
      await until(async () => (await fleet.telemetry(d, 'inference')).length >= N, 20_000, `telemetry of ${d}`);
      const rows = await fleet.telemetry(d, 'inference');
      assert.equal(rows.length, N, 'stored exactly once');
      const ids = rows.map((r) => r.body.id as string);
      assert.equal(new Set(ids).size, N, 'no reading id stored twice');
      assert.ok(ids.every((id) => truth.has(id) && id.startsWith(`${d}-`)));
      // One epoch, seqs 0..N-1 in order: nothing lost, nothing reordered.
      assert.deepEqual(new Set(rows.map((r) => r.epoch)).size, 1);
      assert.deepEqual(rows.map((r) => r.seq).sort((a, b) => a - b), [...Array(N).keys()]);
      for (const r of rows) {
        assert.equal(r.kind, 'inference');
        assert.equal(r.body.label, results.get(r.body.id as string)?.label, 'telemetry matches the published result');
      }
    }
    // The agents' outboxes are empty once the hub acked everything.
    await until(() => fleet.agents.every((a) => a.outbox.pendingCount() === 0), 10_000, 'outboxes drained');
    const listed = await fleet.api<{ items: { id: string; online: boolean; counters: { stored: number; gaps: number }; models: { name: string }[] }[] }>('GET', '/v1/devices');
    for (const d of devices) {
      const row = listed.items.find((x) => x.id === d)!;
      assert.equal(row.online, true);
      assert.equal(row.counters.stored, (await fleet.telemetry(d)).length, 'the counter counts every stored record');
      assert.equal(row.counters.gaps, 0);
      assert.deepEqual(row.models.map((m) => m.name), ['machine-state']);
    }
  });

  it('bad input on the sensor topic is counted and logged, valid traffic is unaffected', async () => {
    const d = 'gw-bad';
    const logs: { msg?: string; reason?: string }[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => void logs.push(JSON.parse(line) as { msg?: string }) });
    const agent = await fleet.startAgent(d, undefined, log);
    const sensorId = `${d}-vib`;
    const sensor = await fleet.connect(sensorId, await fleet.addPrincipal({ id: sensorId, kind: 'sensor', device: d }));
    const topic = topics.input(d, 'vibration');
    const rng = mulberry32(7);
    const good = (i: number): string => {
      const values = sensorSample(rng, 'normal');
      return JSON.stringify({ id: `ok-${i}`, values });
    };
    const bad: [string, string | Buffer][] = [
      ['malformed', '{"values": [1, 2,'],
      ['malformed', Buffer.from([0xff, 0xfe, 0x00, 0x01])],
      ['schema', '[1,2,3]'],
      ['schema', JSON.stringify({ values: Array(8).fill('NaN') })],
      ['schema', JSON.stringify({ values: [1, 2, 3, 4, 5, 6, 7, null] })],
      ['malformed', '{"values": [NaN, 1, 2, 3, 4, 5, 6, 7]}'],
      ['bad_input', JSON.stringify({ values: [1, 2, 3] })],
      ['bad_input', JSON.stringify({ features: { vib_rms: 1 } })],
      ['schema', '{"values": [1e999, 0, 0, 0, 0, 0, 0, 0]}'], // parses to Infinity
      ['bad_input', JSON.stringify({ features: { ...Object.fromEntries(SENSOR_FEATURES.map((f) => [f, 1])), extra: 2 } })],
      ['too_large', JSON.stringify({ values: Array(8).fill(1), pad: 'x'.repeat(70 * 1024) })],
    ];
    let sentGood = 0;
    for (const [i, [, payload]] of bad.entries()) {
      await sensor.publishAsync(topic, good(i), { qos: 1 });
      sentGood++;
      await sensor.publishAsync(topic, payload, { qos: 1 });
    }
    await sensor.publishAsync(topic, good(99), { qos: 1 });
    sentGood++;

    await until(async () => (await fleet.telemetry(d, 'inference')).length === sentGood, 15_000, 'valid readings stored');
    const metrics = await agent.registry.metrics();
    const expected = new Map<string, number>();
    for (const [reason] of bad) expected.set(reason, (expected.get(reason) ?? 0) + 1);
    for (const [reason, n] of expected) {
      assert.equal(scrapeCounter(metrics, 'edgefleet_agent_input_rejected_total', { pipeline: 'vibration', reason }), n, `rejected for ${reason}`);
      assert.ok(logs.some((l) => l.msg === 'input rejected' && l.reason === reason), `a log line for ${reason}`);
    }
    const total = scrapeCounter(metrics, 'edgefleet_agent_input_rejected_total', { pipeline: 'vibration' });
    assert.equal(total, bad.length, 'every bad message counted once');
    assert.equal(scrapeCounter(metrics, 'edgefleet_agent_inferences_total', { outcome: 'ok' }), sentGood);
    const health = (await (await fetch(`http://127.0.0.1:${agent.httpPort}/healthz`)).json()) as { ok: boolean; hubConnected: boolean };
    assert.equal(health.ok, true);
    assert.equal(health.hubConnected, true);
  });
});
