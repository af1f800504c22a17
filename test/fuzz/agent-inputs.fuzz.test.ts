/**
 * Fuzz (issue #6): the agent's own untrusted inputs on a live agent (real ORT worker, SQLite
 * outbox) connected to a live hub, for a time budget (FUZZ_SECONDS, default 4):
 *   - its local HTTP API, POST /v1/infer/<pipeline> with mutated and random JSON readings, image
 *     content types on a tabular pipeline, lying lengths, bad paths and queries (http-raw.ts
 *     contract: no 5xx, no hang, JSON error shape);
 *   - sensor readings over MQTT (a sensor principal publishing mutated readings to the agent's
 *     `in/vibration` topic through the hub's broker).
 * The agent must stay healthy, keep inferring valid readings during and after the run, and count
 * what it refused (edgefleet_agent_input_rejected_total).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import mqtt, { type MqttClient } from 'mqtt';
import type { Agent } from '../../agent/main.ts';
import { topics } from '../../shared/protocol.ts';
import { InProcessFleet, until } from '../helpers/fleet-in-process.ts';
import { healthy } from './fuzz-hub.ts';
import { HANG_MS, judge, send, type RawRequest } from './http-raw.ts';
import { fuzzBudgetMs, fuzzRun, INTERESTING_STRINGS, jsonText, mutateBytes, mutateJson, mutateText, Outcomes, randomBytes, randomJson, runWorkers, summaryLine, type Rng } from './gen.ts';

/** Default time budget of this file in `npm test` (FUZZ_SECONDS overrides). */
const SECONDS = 4;

const READINGS: unknown[] = [
  { id: 'r-1', ts: 1_700_000_000_000, values: [3.5, 14, 4, 3.7, 2.2, 2, 1.7, 56] },
  { features: { vib_rms: 3.5, vib_peak: 14, vib_kurtosis: 4, vib_crest: 3.7, band_low: 2.2, band_mid: 2, band_high: 1.7, temp_c: 56 } },
];

function httpInput(rng: Rng): { kind: string; req: RawRequest } {
  const path = `/v1/infer/${rng.next() < 0.9 ? 'vibration' : encodeURIComponent(rng.pick(INTERESTING_STRINGS.filter((s) => !/[\uD800-\uDFFF]/.test(s))))}`;
  const r = rng.int(10);
  const json: [string, string] = ['content-type', 'application/json'];
  if (r < 6) {
    const base = rng.pick(READINGS);
    const m = rng.int(10);
    const body = m < 6 ? jsonText(mutateJson(base, rng)) : m < 9 ? mutateText(jsonText(base), rng) : jsonText(randomJson(rng, 3));
    return { kind: 'reading_mutated', req: { method: 'POST', path: `${path}${rng.next() < 0.2 ? `?id=${rng.pick(['', '%', 'x'.repeat(500)])}` : ''}`, headers: [json, ['x-correlation-id', rng.pick(['a', '', 'x'.repeat(300)])]], body: Buffer.from(body) } };
  }
  if (r < 7) return { kind: 'image_on_tabular', req: { method: 'POST', path, headers: [['content-type', rng.pick(['image/png', 'image/jpeg', 'application/octet-stream'])]], body: randomBytes(rng, rng.int(2048)) } };
  if (r < 8) return { kind: 'content_type_odd', req: { method: 'POST', path, headers: [['content-type', rng.pick(['text/plain', 'application/json; charset=utf-16', 'multipart/form-data; boundary=x', '', 'application/jsonx'])]], body: Buffer.from(jsonText(READINGS[0])) } };
  if (r < 9) {
    const body = Buffer.from(jsonText(READINGS[0]));
    return { kind: 'length_lie', req: { method: 'POST', path, headers: [json, ['content-length', String(rng.pick([body.length + 100, 2 ** 31, 0]))]], body, lies: true } };
  }
  return { kind: 'random_request', req: { method: rng.pick(['POST', 'GET', 'PUT']), path: rng.pick([path, '/v1/infer/', '/v1/infer', '/healthz?x=%', '/metrics/../x']), headers: [json], body: mutateBytes(Buffer.from(jsonText(READINGS[0])), rng) } };
}

async function counter(agent: Agent, name: string): Promise<number> {
  const m = agent.registry.getSingleMetric(name);
  return m ? (await m.get()).values.reduce((a, v) => a + v.value, 0) : 0;
}

describe('fuzz: agent inputs (local HTTP and sensor MQTT)', () => {
  const fleet = new InProcessFleet();
  let agent: Agent;
  let sensor: MqttClient;

  before(async () => {
    await fleet.startHub();
    agent = await fleet.startAgent('fuzz-agent');
    const token = await fleet.addPrincipal({ id: 'fuzz-sensor', kind: 'sensor', device: 'fuzz-agent' });
    // Reconnecting, unlike fleet.connect(): a refused publish must not end the sensor's part.
    sensor = await mqtt.connectAsync(fleet.hub.mqttUrl, { clientId: 'fuzz-sensor', username: 'fuzz-sensor', password: token, protocolVersion: 4, reconnectPeriod: 200 });
    fleet.clients.push(sensor);
  });

  after(async () => {
    await fleet.stop();
  });

  test('the agent refuses bad input with 4xx and counters, keeps inferring, stays healthy', { timeout: fuzzBudgetMs(SECONDS) + 120_000 }, async () => {
    const { seed, budget, out, mem } = fuzzRun(SECONDS);
    const mqttOut = new Outcomes();
    const violations: string[] = [];
    const agentUrl = `http://127.0.0.1:${agent.httpPort}`;
    const okBefore = await counter(agent, 'edgefleet_agent_inferences_total');
    const input = topics.input('fuzz-agent', 'vibration');

    await runWorkers(seed, budget, 3, async (rng, w) => {
      if (w === 0) {
        // The sensor: mutated readings over MQTT, QoS 1, a batch at a time.
        // Payloads over the hub's cap would only get the sensor disconnected by the broker (the
        // MQTT fuzz file covers that); a publish never acked is given up after 5 s.
        const n = 1 + rng.int(20);
        const payloads = Array.from({ length: n }, () => {
          const base = rng.pick(READINGS);
          return rng.next() < 0.6 ? jsonText(mutateJson(base, rng)) : mutateText(jsonText(base), rng);
        }).filter((p) => Buffer.byteLength(p) < 512 * 1024);
        mqttOut.inputs += payloads.length;
        const sent = Promise.all(payloads.map((p) => sensor.publishAsync(input, p, { qos: 1 })));
        const timedOut = await Promise.race([sent.then(() => false), sleep(5000).then(() => true)]);
        if (timedOut) mqttOut.count('puback_timeout');
        return;
      }
      const { kind, req } = httpInput(rng);
      const res = await send(agent.httpPort, req, HANG_MS);
      out.inputs++;
      const j = judge(kind, req, res);
      out.count(j.outcome);
      // 429 is the agent's documented back-pressure answer, and carries the JSON shape.
      if (j.violation && violations.length < 20) violations.push(`${kind} ${String(req.path).slice(0, 60)}: ${j.violation}`);
    });
    mem.stop();

    // After the run: healthy, and a valid reading is still inferred over HTTP.
    assert.ok(await healthy(agentUrl), 'agent /healthz after the fuzz run');
    const res = await fetch(`${agentUrl}/v1/infer/vibration`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: jsonText(READINGS[0]) });
    assert.equal(res.status, 200, await res.clone().text());
    await res.arrayBuffer();
    await until(async () => (await counter(agent, 'edgefleet_agent_inferences_total')) > okBefore, 10_000, 'inferences to be counted');
    // Regression (found by this file): a wrong method got a bare 405 without the error shape.
    const put = await fetch(`${agentUrl}/healthz`, { method: 'PUT' });
    assert.equal(put.status, 405);
    assert.equal(((await put.json()) as { error: { code: string } }).error.code, 'BAD_INPUT');
    const rejected = await counter(agent, 'edgefleet_agent_input_rejected_total');
    summaryLine('agent', { seed, puback_timeouts: mqttOut.get('puback_timeout'), inputs: out.inputs + mqttOut.inputs, http_inputs: out.inputs, mqtt_readings: mqttOut.inputs, crashes: 0, agent_alive: 'yes', '5xx': out.sumWhere(/^http_5/), rejected_counted: rejected, peak_rss: `${mem.peakRssMB}MB` }, out);
    assert.deepEqual(violations, [], `seed=${seed}`);
    assert.ok(rejected > 0, 'refused inputs are counted');
    assert.ok(out.get('http_400') > 0 && out.get('accepted') > 0);
  });
});
