// Alert delivery on a real hub (fake clock): a webhook served by a local HTTP server that fails
// twice and then succeeds is delivered exactly once, with every attempt in the delivery log, and
// the pending delivery survives a hub restart between the attempts. The retraining hook POSTs
// the evidence to its own webhook and sends `drift.sample` to the devices the alert names.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { ScriptedDevice } from './hub-rollouts-fixture.ts';
import { DriftFixture, MODEL, T0, WINDOW_MS, until } from './hub-drift-fixture.ts';

interface Received {
  path: string;
  status: number;
  delivery: string | undefined;
  signature: string | undefined;
  body: { event?: string; type?: string; alert?: { id: string; devices: string[]; message: string } };
}

interface DeliveryBody {
  id: number;
  target: string;
  event: string;
  state: string;
  attempts: number;
  log: { ok: boolean; status?: number }[];
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

describe('alert delivery: webhook retries across a restart, retraining hook', { timeout: 120_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'ef-hub-alerts-'));
  const fx = new DriftFixture(dir);
  const received: Received[] = [];
  let failuresLeft = 2;
  let server: Server;
  let url = '';
  const devices: ScriptedDevice[] = [];

  before(async () => {
    server = createServer((req, res) => {
      void readBody(req).then((text) => {
        const alertHook = req.url === '/alerts';
        const status = alertHook && failuresLeft-- > 0 ? 503 : 200;
        received.push({
          path: req.url ?? '',
          status,
          delivery: req.headers['x-edgefleet-delivery'] as string | undefined,
          signature: req.headers['x-edgefleet-signature'] as string | undefined,
          body: JSON.parse(text) as Received['body'],
        });
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const addr = server.address();
    url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });

  after(async () => {
    await fx.stop();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  const config = (): Record<string, unknown> => ({
    alerts: {
      webhooks: [{ url: `${url}/alerts`, secret: 'hook-secret-1' }],
      delivery: { initialMs: 10_000, maxMs: 60_000, maxAttempts: 5 },
      retraining: { webhook: { url: `${url}/retrain` }, sampleDevices: true, maxSamples: 25, pipelines: { 'machine-state': 'vibration' } },
    },
  });

  test('one dirty device among 8 opens an alert; its webhook fails twice, survives a restart, is delivered once', async () => {
    await fx.start(config());
    await fx.release(MODEL.name, MODEL.version);
    for (let i = 0; i < 8; i++) {
      const d = await fx.register(`c${i}`, 'line-2');
      await d.connect();
      devices.push(d);
    }
    await fx.sendWindow(devices, T0, 300, new Map([['c5', { feature: 'vib_kurtosis', sd: 1.5 }]]));
    await fx.closeWindow(T0);
    const [alert] = (await fx.ok<{ alerts: { id: string; devices: string[]; message: string }[] }>('GET', '/v1/alerts?state=open')).alerts;
    assert.ok(alert);
    assert.deepEqual(alert.devices, ['c5']);
    assert.match(alert.message, /^vib_kurtosis up \d\.\d\d SD on 1 of 8 devices in line-2 \(machine-state@1\.0\.0\): c5$/);

    // The first attempts run at once: the alert webhook fails (503), the retraining hook succeeds.
    await fx.hub.alertDelivery.flush();
    await until(() => received.some((r) => r.path === '/retrain'), 10_000, 'retraining webhook');
    const retrain = received.find((r) => r.path === '/retrain');
    assert.equal(retrain?.body.type, 'retraining');
    assert.equal(retrain?.body.alert?.id, alert.id);
    assert.equal(received.filter((r) => r.path === '/alerts').length, 1);
    // The device named by the alert was asked for a sample, and only that one.
    const c5 = devices.find((d) => d.id === 'c5') as ScriptedDevice;
    await until(() => c5.commands.some((c) => c.name === 'drift.sample'), 10_000, 'drift.sample command');
    // It carries the hub's sample request (issue #14): id, byte budget, expiry.
    const { request, ...args } = c5.commands.find((c) => c.name === 'drift.sample')?.args ?? {};
    assert.match(String(request), /^sr-[0-9a-f]{24}$/);
    assert.deepEqual(args, { pipeline: 'vibration', max: 25, maxBytes: 16 * 1024 * 1024, expiresAt: fx.clock.now() + 6 * 3_600_000 });
    assert.ok(devices.filter((d) => d !== c5).every((d) => !d.commands.some((c) => c.name === 'drift.sample')));

    // Not due yet: nothing is sent. After the backoff (≤ 10 s at attempt 1): the second failure.
    await fx.hub.alertDelivery.flush();
    assert.equal(received.filter((r) => r.path === '/alerts').length, 1);
    fx.clock.advance(10_000);
    await fx.hub.alertDelivery.flush();
    assert.equal(received.filter((r) => r.path === '/alerts').length, 2);

    // Restart the hub with the delivery still pending; after the next backoff it succeeds.
    await fx.stop();
    await fx.start(config());
    fx.clock.advance(20_000);
    await fx.hub.alertDelivery.flush();
    const hooks = received.filter((r) => r.path === '/alerts');
    assert.deepEqual(hooks.map((r) => r.status), [503, 503, 200]);
    assert.equal(new Set(hooks.map((r) => r.delivery)).size, 1, 'the same delivery id on every attempt');
    assert.match(hooks[0]?.signature ?? '', /^sha256=[0-9a-f]{64}$/);
    assert.equal(hooks[2]?.body.event, 'opened');
    assert.equal(hooks[2]?.body.alert?.id, alert.id);

    // Delivered once: later flushes send nothing more. The delivery log shows every attempt.
    fx.clock.advance(600_000);
    await fx.hub.alertDelivery.flush();
    assert.equal(received.filter((r) => r.path === '/alerts').length, 3);
    const detail = await fx.ok<{ deliveries: DeliveryBody[] }>('GET', `/v1/alerts/${alert.id}`);
    const hook = detail.deliveries.find((d) => d.target === 'webhook');
    assert.equal(hook?.state, 'delivered');
    assert.equal(hook?.attempts, 3);
    assert.deepEqual(hook?.log.map((l) => [l.ok, l.status]), [[false, 503], [false, 503], [true, 200]]);
    assert.equal(detail.deliveries.find((d) => d.target === 'retraining')?.state, 'delivered');
    assert.match(await fx.hub.registry.getSingleMetricAsString('edgefleet_hub_alert_deliveries_total'), /target="webhook",outcome="delivered"\} 1/);
  });

  test('operator resolve is delivered as an event; samples uploaded by the device are stored and listed', async () => {
    const [alert] = (await fx.ok<{ alerts: { id: string }[] }>('GET', '/v1/alerts?state=open')).alerts;
    assert.ok(alert);
    await fx.ok('POST', `/v1/alerts/${alert.id}/resolve`);
    await fx.hub.alertDelivery.flush();
    await until(() => received.some((r) => r.path === '/alerts' && r.body.event === 'resolved'), 10_000, 'resolved event on the webhook');

    const c5 = devices.find((d) => d.id === 'c5') as ScriptedDevice;
    const post = (deviceId: string, token: string, body: unknown): Promise<Response> =>
      fetch(`${fx.hub.httpUrl}/v1/samples/${deviceId}`, { method: 'POST', headers: { authorization: `Bearer ${deviceId}:${token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    // The request of the drift.sample command, opened before the hub restart (kept in the device's history).
    const request = c5.commands.find((c) => c.name === 'drift.sample')?.args.request;
    const sample = { pipeline: 'vibration', model: MODEL.name, version: MODEL.version, items: [{ id: 'r1', ts: T0 + WINDOW_MS, kind: 'json', data: { values: [1, 2] } }] };
    assert.equal((await post('c5', c5.token, sample)).status, 403, 'no request named');
    assert.equal((await post('c5', c5.token, { ...sample, request, items: 'x' })).status, 400);
    assert.equal((await post('c5', c5.token, { ...sample, request })).status, 201);
    assert.equal((await post('c5', c5.token, { ...sample, request })).status, 403, 'a request is answered once');
    assert.equal((await post('c4', c5.token, sample)).status, 401, 'credentials of another device');
    const other = devices.find((d) => d.id === 'c4') as ScriptedDevice;
    assert.equal((await post('c5', other.token, sample)).status, 401);
    assert.equal((await post('c4', other.token, { ...sample, request })).status, 403, "another device's request");
    const listed = await fx.ok<{ samples: { deviceId: string; bytes: number }[] }>('GET', '/v1/samples');
    assert.deepEqual(listed.samples.map((s) => s.deviceId), ['c5']);
    assert.ok((listed.samples[0]?.bytes ?? 0) > 50);
  });
});
