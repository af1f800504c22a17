/**
 * The agent's inputs with the real hub, broker, ONNX workers and sharp: the part-defect image
 * model over MQTT binary payloads and over HTTP (PNG and JPEG), several pipelines on two models
 * in one agent, thresholds and top-k, hostile HTTP inputs (corrupt JPEG, a 20000×20000 header,
 * wrong shape and kind, huge and malformed JSON) answered with a clear 4xx and counted while the
 * agent keeps serving, 429 with Retry-After under overload and recovery afterwards, and the
 * drop-oldest policy of a stream input.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import type { Agent } from '../../agent/main.ts';
import { createRng, encodePartPng, PART_LABELS, PART_SIZE, partDataset, sensorDataset, MACHINE_STATES } from '../../scripts/lib/synthetic.ts';
import { corruptJpeg, pngClaiming } from '../helpers/hostile-images.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';

const fleet = new InProcessFleet();
let agent: Agent;
const DEV = 'cam-box-1';

const models = [{ manifest: `${MODELS_DIR}/machine-state.manifest.json` }, { manifest: `${MODELS_DIR}/part-defect.manifest.json` }];

before(async () => {
  await fleet.startHub();
  agent = await fleet.startAgent(DEV, {
    models,
    pipelines: [
      { name: 'vibration', model: 'machine-state', input: { type: 'mqtt' } },
      { name: 'camera', model: 'part-defect', input: { type: 'mqtt', format: 'image' }, thresholds: { defective: 0.7 }, topK: 2 },
      // Same model, another policy: `defective` never reaches 1.0, so the decision is always `good`.
      { name: 'strict', model: 'part-defect', input: { type: 'mqtt' }, thresholds: { defective: 1 } },
    ],
  });
});

after(async () => {
  await fleet.stop();
});

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

/** POST with node:http (not fetch): it reads a reply that arrives before the body was sent. */
function post(port: number, path: string, body: Buffer | string, headers: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-length': String(Buffer.byteLength(body)), ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} });
      });
      res.on('error', reject);
    });
    // The server may answer (413) and close before the whole body went out.
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? undefined : reject(err)));
    req.end(body);
  });
}

async function metric(a: Agent, name: string, labels: Record<string, string>): Promise<number> {
  const m = await a.registry.getSingleMetric(name)?.get();
  let sum = 0;
  for (const v of m?.values ?? []) {
    if (Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want)) sum += v.value;
  }
  return sum;
}

const jpegOf = (pixels: Uint8Array): Promise<Buffer> =>
  sharp(Buffer.from(pixels), { raw: { width: PART_SIZE, height: PART_SIZE, channels: 1 } }).toColourspace('b-w').jpeg({ quality: 92 }).toBuffer();

void describe('agent inputs', () => {
  it('image pipeline over MQTT binary payloads: ids from the topic, ≥ 90% correct, telemetry with image stats', async () => {
    const sensorToken = await fleet.addPrincipal({ id: 'cam-1', kind: 'sensor', device: DEV });
    const consumerToken = await fleet.addPrincipal({ id: 'viewer-1', kind: 'consumer' });
    const consumer = await fleet.connect('viewer-1', consumerToken);
    const results = new Map<string, { label: string; decision: string | null; topK: { label: string; score: number }[]; image?: Record<string, number> }>();
    consumer.on('message', (topic, payload) => {
      if (!topic.endsWith('/out/camera')) return;
      const r = JSON.parse(payload.toString()) as { id: string; label: string; decision: string | null; topK: { label: string; score: number }[]; image?: Record<string, number> };
      results.set(r.id, r);
    });
    await consumer.subscribeAsync(`edgefleet/v1/${DEV}/out/#`, { qos: 1 });
    const sensor = await fleet.connect('cam-1', sensorToken);
    const data = partDataset(createRng(4242), 40);
    const truth = new Map<string, string>();
    for (const [i, px] of data.images.entries()) {
      const id = `frame-${i}`;
      truth.set(id, PART_LABELS[data.y[i]!]!);
      await sensor.publishAsync(`edgefleet/v1/${DEV}/in/camera/${id}`, await encodePartPng(px), { qos: 1 });
    }
    await until(() => results.size >= 40, 20_000, '40 camera results');
    let correct = 0;
    for (const [id, r] of results) {
      assert.ok(truth.has(id), `result id ${id} is one we sent`);
      if (r.label === truth.get(id)) correct++;
      assert.equal(r.topK.length, 2);
      assert.equal(r.topK[0]!.label, r.label);
      const defective = r.topK.find((t) => t.label === 'defective')!.score;
      assert.equal(r.decision, defective > 0.7 ? 'defective' : 'good', 'decision follows the 0.7 threshold');
      assert.ok(r.image && r.image['brightness']! > 0 && r.image['brightness']! < 1, 'image stats in the result');
    }
    assert.ok(correct / 40 >= 0.9, `accuracy ${correct}/40`);
    await until(async () => (await fleet.telemetry(DEV, 'inference')).filter((t) => t.body['pipeline'] === 'camera').length >= 40, 20_000, 'camera telemetry at the hub');
    const rows = (await fleet.telemetry(DEV, 'inference')).filter((t) => t.body['pipeline'] === 'camera');
    assert.equal(new Set(rows.map((r) => r.body['id'])).size, 40, 'each frame once');
    for (const r of rows) {
      const img = r.body['image'] as Record<string, number>;
      assert.ok(typeof img['brightness'] === 'number' && typeof img['contrast'] === 'number' && typeof img['sharpness'] === 'number');
      assert.equal(r.body['source'], 'mqtt');
    }
    // A corrupt frame on the stream is counted, not fatal.
    const before = await metric(agent, 'edgefleet_agent_input_rejected_total', { pipeline: 'camera' });
    await sensor.publishAsync(`edgefleet/v1/${DEV}/in/camera/bad-frame`, await corruptJpeg(), { qos: 1 });
    await until(async () => (await metric(agent, 'edgefleet_agent_input_rejected_total', { pipeline: 'camera' })) > before, 10_000, 'corrupt frame counted');
  });

  it('image pipeline over HTTP: PNG and JPEG bodies, the reply carries the result, ≥ 90% correct', async () => {
    const data = partDataset(createRng(777), 40);
    let correct = 0;
    for (const [i, px] of data.images.entries()) {
      const jpeg = i % 2 === 0;
      const body = jpeg ? await jpegOf(px) : await encodePartPng(px);
      const r = await post(agent.httpPort, '/v1/infer/camera', body, { 'content-type': jpeg ? 'image/jpeg' : 'image/png', 'x-correlation-id': `http-${i}` });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body['id'], `http-${i}`);
      assert.equal(r.body['pipeline'], 'camera');
      assert.deepEqual(r.body['model'], { name: 'part-defect', version: '1.0.0' });
      if (r.body['label'] === PART_LABELS[data.y[i]!]) correct++;
    }
    assert.ok(correct / 40 >= 0.9, `accuracy ${correct}/40`);
    // Without an id one is generated.
    const anon = await post(agent.httpPort, '/v1/infer/camera', await encodePartPng(data.images[0]!), { 'content-type': 'image/png' });
    assert.equal(anon.status, 200);
    assert.match(String(anon.body['id']), /^[0-9a-f-]{36}$/);
  });

  it('several pipelines, two models: tabular JSON over HTTP, and one image model under two threshold policies', async () => {
    const ds = sensorDataset(createRng(99), 5);
    let correct = 0;
    for (const [i, row] of ds.x.entries()) {
      const r = await post(agent.httpPort, '/v1/infer/vibration', JSON.stringify({ id: `v-${i}`, values: row }), { 'content-type': 'application/json' });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body['id'], `v-${i}`);
      assert.deepEqual(r.body['model'], { name: 'machine-state', version: '1.0.0' });
      assert.equal((r.body['topK'] as unknown[]).length, 3, 'default top-3');
      if (r.body['label'] === MACHINE_STATES[ds.y[i]!]) correct++;
    }
    assert.ok(correct >= ds.x.length - 2, `machine-state ${correct}/${ds.x.length}`);
    // A clearly defective part: `camera` (threshold 0.7) flags it, `strict` (threshold 1) never does.
    const parts = partDataset(createRng(31337), 12);
    let flagged = 0;
    for (const [i, px] of parts.images.entries()) {
      if (parts.y[i] !== 1) continue;
      const png = await encodePartPng(px);
      const a = await post(agent.httpPort, '/v1/infer/camera', png, { 'content-type': 'image/png' });
      const b = await post(agent.httpPort, '/v1/infer/strict', png, { 'content-type': 'image/png' });
      assert.equal(a.body['label'], b.body['label'], 'same model, same label');
      assert.equal(b.body['decision'], 'good');
      if (a.body['decision'] === 'defective') flagged++;
    }
    assert.ok(flagged >= 4, `camera flagged ${flagged}/6 defective parts`);
  });

  it('hostile HTTP inputs: each a clear 4xx, counted, and the agent keeps serving', async () => {
    const port = agent.httpPort;
    const rejected = (pipeline: string): Promise<number> => metric(agent, 'edgefleet_agent_input_rejected_total', { pipeline });
    const cam0 = await rejected('camera');
    const vib0 = await rejected('vibration');

    const bad = await post(port, '/v1/infer/camera', await corruptJpeg(), { 'content-type': 'image/jpeg' });
    assert.equal(bad.status, 400);
    assert.deepEqual(Object.keys(bad.body), ['error']);
    assert.equal((bad.body['error'] as { code: string }).code, 'BAD_INPUT');
    assert.match((bad.body['error'] as { message: string }).message, /jpeg/i);

    const bomb = await post(port, '/v1/infer/camera', pngClaiming(20000, 20000), { 'content-type': 'image/png' });
    assert.equal(bomb.status, 400);
    assert.match((bomb.body['error'] as { message: string }).message, /more pixels than the limit/);

    const notImage = await post(port, '/v1/infer/camera', Buffer.from('definitely not an image'), { 'content-type': 'image/png' });
    assert.equal(notImage.status, 400);

    const jsonToImage = await post(port, '/v1/infer/camera', JSON.stringify({ values: [1, 2] }), { 'content-type': 'application/json' });
    assert.equal(jsonToImage.status, 400);
    assert.match((jsonToImage.body['error'] as { message: string }).message, /takes images/);
    assert.equal(await rejected('camera'), cam0 + 4);

    const wrongShape = await post(port, '/v1/infer/vibration', JSON.stringify({ values: [1, 2, 3] }), { 'content-type': 'application/json' });
    assert.equal(wrongShape.status, 400);
    assert.match((wrongShape.body['error'] as { message: string }).message, /expected 8 values, got 3/);

    const wrongType = await post(port, '/v1/infer/vibration', JSON.stringify({ values: ['a', 'b'] }), { 'content-type': 'application/json' });
    assert.equal(wrongType.status, 400);
    assert.equal((wrongType.body['error'] as { code: string }).code, 'BAD_PAYLOAD');

    const malformed = await post(port, '/v1/infer/vibration', '{"values": [1, 2', { 'content-type': 'application/json' });
    assert.equal(malformed.status, 400);
    assert.match((malformed.body['error'] as { message: string }).message, /malformed JSON/);

    const imageToTabular = await post(port, '/v1/infer/vibration', await encodePartPng(new Uint8Array(PART_SIZE * PART_SIZE)), { 'content-type': 'image/png' });
    assert.equal(imageToTabular.status, 400);

    // 2 MiB of JSON: refused from its Content-Length, never buffered.
    const huge = JSON.stringify({ values: new Array<number>(400_000).fill(1.5) });
    const big = await post(port, '/v1/infer/vibration', huge, { 'content-type': 'application/json' });
    assert.equal(big.status, 413);
    assert.equal((big.body['error'] as { code: string }).code, 'PAYLOAD_TOO_LARGE');
    assert.equal(await rejected('vibration'), vib0 + 5);
    assert.equal(await metric(agent, 'edgefleet_agent_input_rejected_total', { pipeline: 'vibration', reason: 'too_large' }), 1);

    assert.equal((await post(port, '/v1/infer/nope', '{}', { 'content-type': 'application/json' })).status, 404);
    assert.equal((await post(port, '/v1/infer/vibration', 'x', { 'content-type': 'text/plain' })).status, 415);

    // Still serving, on both pipelines.
    const ok = await post(port, '/v1/infer/camera', await encodePartPng(partDataset(createRng(5), 1).images[0]!), { 'content-type': 'image/png' });
    assert.equal(ok.status, 200);
    const ds = sensorDataset(createRng(6), 1);
    assert.equal((await post(port, '/v1/infer/vibration', JSON.stringify({ values: ds.x[0] }), { 'content-type': 'application/json' })).status, 200);
    const health = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(health.status, 200);
    await health.body?.cancel();
  });
});

void describe('redelivered readings', () => {
  it('a reading delivered twice (QoS 1 redelivery) is inferred and stored once; one without an id is not de-duplicated', async () => {
    const token = await fleet.addPrincipal({ id: 'vib-dup', kind: 'sensor', device: DEV });
    const sensor = await fleet.connect('vib-dup', token);
    const values = sensorDataset(createRng(77), 1).x[0]!;
    const before = await metric(agent, 'edgefleet_agent_inferences_total', { pipeline: 'vibration', outcome: 'ok' });
    for (let i = 0; i < 3; i++) await sensor.publishAsync(`edgefleet/v1/${DEV}/in/vibration`, JSON.stringify({ id: 'dup-1', values }), { qos: 1 });
    for (let i = 0; i < 2; i++) await sensor.publishAsync(`edgefleet/v1/${DEV}/in/vibration`, JSON.stringify({ values }), { qos: 1 });
    await until(async () => (await metric(agent, 'edgefleet_agent_input_dropped_total', { pipeline: 'vibration', reason: 'duplicate' })) === 2, 10_000, 'two redeliveries dropped');
    await until(async () => (await metric(agent, 'edgefleet_agent_inferences_total', { pipeline: 'vibration', outcome: 'ok' })) === before + 3, 10_000, 'three inferences');
    await until(async () => (await fleet.telemetry(DEV)).some((t) => t.body['id'] === 'dup-1'), 10_000, 'dup-1 at the hub');
    assert.equal((await fleet.telemetry(DEV)).filter((t) => t.body['id'] === 'dup-1').length, 1, 'stored once');
  });
});

void describe('overload', () => {
  let busy: Agent;
  before(async () => {
    busy = await fleet.startAgent('busy-box', {
      models,
      runtime: { queueMax: 1, maxBatch: 1 },
      http: { maxConcurrent: 1000 },
      pipelines: [
        { name: 'vibration', model: 'machine-state', input: { type: 'mqtt' }, stream: { queueMax: 2, maxInFlight: 1 } },
        { name: 'camera', model: 'part-defect', input: { type: 'mqtt' } },
      ],
    });
  });

  it('HTTP: 429 with Retry-After when the engine queue is full, counted; serves again afterwards', async () => {
    const png = await encodePartPng(partDataset(createRng(8), 1).images[0]!);
    const replies = await Promise.all(Array.from({ length: 80 }, () => post(busy.httpPort, '/v1/infer/camera', png, { 'content-type': 'image/png' })));
    const byStatus = new Map<number, number>();
    for (const r of replies) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1);
    assert.deepEqual([...byStatus.keys()].sort(), [200, 429], `statuses ${JSON.stringify([...byStatus])}`);
    const tooMany = replies.filter((r) => r.status === 429);
    for (const r of tooMany) {
      assert.equal(r.headers['retry-after'], '1');
      assert.equal((r.body['error'] as { code: string }).code, 'OVERLOADED');
    }
    assert.equal(await metric(busy, 'edgefleet_agent_http_rejected_total', { pipeline: 'camera', reason: 'overloaded' }), tooMany.length);
    // Recovery: one at a time, every request succeeds.
    for (let i = 0; i < 5; i++) assert.equal((await post(busy.httpPort, '/v1/infer/camera', png, { 'content-type': 'image/png' })).status, 200);
  });

  it('stream: a burst beyond the pipeline queue drops the oldest, counted; the newest are served', async () => {
    const token = await fleet.addPrincipal({ id: 'vib-sensor', kind: 'sensor', device: 'busy-box' });
    const sensor = await fleet.connect('vib-sensor', token);
    const ds = sensorDataset(createRng(12), 70);
    const n = ds.x.length;
    await Promise.all(ds.x.map((values, i) => sensor.publishAsync('edgefleet/v1/busy-box/in/vibration', JSON.stringify({ id: `burst-${i}`, values }), { qos: 1 })));
    await until(async () => {
      const dropped = await metric(busy, 'edgefleet_agent_input_dropped_total', { pipeline: 'vibration', reason: 'overload' });
      const done = await metric(busy, 'edgefleet_agent_inferences_total', { pipeline: 'vibration', outcome: 'ok' });
      return dropped + done === n;
    }, 20_000, 'every reading either inferred or dropped');
    const dropped = await metric(busy, 'edgefleet_agent_input_dropped_total', { pipeline: 'vibration', reason: 'overload' });
    assert.ok(dropped > 0, 'the burst overflowed the queue of 2');
    await until(async () => (await fleet.telemetry('busy-box')).some((t) => t.body['id'] === `burst-${n - 1}`), 10_000, 'the newest reading reached the hub');
    const served = (await fleet.telemetry('busy-box', 'inference')).filter((t) => t.body['pipeline'] === 'vibration').length;
    assert.equal(served, n - dropped, 'every reading not dropped was inferred and stored once');
    assert.equal(await metric(busy, 'edgefleet_agent_stream_queued', { pipeline: 'vibration' }), 0);
  });
});
