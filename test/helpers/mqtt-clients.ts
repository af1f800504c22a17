/**
 * Raw MQTT clients against a real in-process hub, for the broker's auth, ACL and hardening
 * tests (hub-auth, security): start a hub on port 0, register principals over the API,
 * connect mqtt.js clients (MQTT 3.1.1) and observe refusals, SUBACK codes and closes.
 */
import assert from 'node:assert/strict';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { silentLogger } from '../../shared/log.ts';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** One HTTP API call (bearer `token` when given); the reply's status and JSON body. */
export async function api(hub: Hub, method: string, path: string, token: string | undefined, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${hub.httpUrl}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

export async function startHub(dataDir: string, overrides: Record<string, unknown> = {}): Promise<Hub> {
  const config = loadHubConfig({
    env: {},
    overrides: { dataDir, mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, log: { level: 'silent' }, ...overrides },
  });
  const hub = await createHub(config, { log: silentLogger() });
  await hub.start(new AbortController().signal);
  return hub;
}

export async function register(hub: Hub, body: Record<string, unknown>): Promise<string> {
  const res = await fetch(`${hub.httpUrl}/v1/devices`, {
    method: 'POST',
    headers: { authorization: `Bearer ${hub.adminToken}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return ((await res.json()) as { token: string }).token;
}

/** Every client connected through `connect`, for teardown. */
export const clients: MqttClient[] = [];

export function connect(hub: Hub, opts: IClientOptions): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(hub.mqttUrl, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, clean: true, ...opts });
    clients.push(c);
    c.once('connect', () => resolve(c));
    c.once('error', reject);
    c.once('close', () => reject(new Error('closed before connect')));
  });
}

/** Connects expecting a refusal; resolves with the CONNACK return code. */
export async function refusedCode(hub: Hub, opts: IClientOptions): Promise<number> {
  try {
    await connect(hub, opts);
  } catch (err) {
    return (err as { code?: number }).code ?? -1;
  }
  assert.fail('connection was accepted');
}

/** Resolves when the client's connection closes (or after ms, with false). */
export function closed(c: MqttClient, ms = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    if (!c.connected) return resolve(true);
    const t = setTimeout(() => resolve(false), ms);
    c.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** SUBACK return codes for one filter (128 = refused). */
export async function subscribeCodes(c: MqttClient, filter: string): Promise<number[]> {
  try {
    const granted = await c.subscribeAsync(filter, { qos: 1 });
    return granted.map((g) => g.qos);
  } catch (err) {
    const packet = (err as { packet?: { granted?: (number | { reasonCode?: number })[] } }).packet;
    assert.ok(packet?.granted, `unexpected subscribe error ${String(err)}`);
    return packet.granted.map((g) => (typeof g === 'number' ? g : (g.reasonCode ?? -1)));
  }
}

export function collect(c: MqttClient): { topic: string; payload: string; retain: boolean }[] {
  const got: { topic: string; payload: string; retain: boolean }[] = [];
  c.on('message', (topic, payload, packet) => got.push({ topic, payload: payload.toString(), retain: packet.retain }));
  return got;
}

export function batch(deviceId: string, seq: number): string {
  return JSON.stringify({
    v: 1,
    type: 'telemetry',
    deviceId,
    batchId: `b${seq}`,
    records: [{ stream: 'inference', epoch: 1, seq, ts: Date.now(), kind: 'inference', body: { x: seq } }],
  });
}

