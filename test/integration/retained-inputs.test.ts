/**
 * Retained inputs (issue #14) with a real hub broker and a real in-process agent restarted on
 * the same data dir: a retained sensor reading is inferred and stored once across 3 restarts
 * (each restart's retain=1 delivery is skipped and counted as
 * edgefleet_agent_input_dropped_total{reason="retained_replay"}), and a new retained reading,
 * published live or while the agent is down, is inferred. Prints `security: retained inputs ...`.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadAgentConfig } from '../../agent/config.ts';
import { createAgent, type Agent } from '../../agent/main.ts';
import { silentLogger } from '../../shared/log.ts';
import { topics } from '../../shared/protocol.ts';
import { writeAgentConfig } from '../../scripts/fleet/agent-config.ts';
import { InProcessFleet, MODELS_DIR, until } from '../helpers/fleet-in-process.ts';

const DEVICE = 'ret-1';

describe('retained inputs', () => {
  const fleet = new InProcessFleet();
  let configFile: string;
  let agent: Agent | undefined;

  before(async () => {
    const hub = await fleet.startHub();
    const token = await fleet.addPrincipal({ id: DEVICE });
    // One worker, no updater: five agent starts stay cheap.
    configFile = writeAgentConfig({ dir: join(fleet.root, DEVICE), deviceId: DEVICE, token, mqttUrl: hub.mqttUrl, modelsDir: MODELS_DIR, extra: { runtime: { workers: 1 }, updates: { enabled: false } } });
  });

  after(async () => {
    if (agent) await agent.stop();
    await fleet.stop();
  });

  const startAgent = async (): Promise<Agent> => {
    const a = createAgent(loadAgentConfig({ file: configFile, env: {} }), { log: silentLogger() });
    try {
      await a.start();
    } catch (err) {
      await a.stop().catch(() => undefined);
      throw err;
    }
    return a;
  };
  const replays = async (a: Agent): Promise<number> => {
    const line = (await a.registry.metrics()).split('\n').find((l) => l.startsWith('edgefleet_agent_input_dropped_total') && l.includes('reason="retained_replay"'));
    return line ? Number(line.split(' ').pop()) : 0;
  };
  /** Stored inference records per reading id. */
  const storedIds = async (): Promise<Map<string, number>> => {
    const counts = new Map<string, number>();
    for (const r of await fleet.telemetry(DEVICE, 'inference')) {
      const id = String(r.body.id);
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    return counts;
  };
  const reading = (id: string, ts: number): string => JSON.stringify({ id, ts, values: [0.4, 3.1, 0.2, 0.1, 0.05, 0.3, 0.9, 0.2] });

  test('a retained reading is inferred once across 3 restarts; a new retained reading is inferred', async () => {
    const sensorToken = await fleet.addPrincipal({ id: `${DEVICE}-s`, kind: 'sensor', device: DEVICE });
    const sensor = await fleet.connect(`${DEVICE}-s`, sensorToken);
    const topic = topics.input(DEVICE, 'vibration');
    const t0 = Date.now();
    // Retained before the agent ever ran: its first delivery is retain=1 and has no mark.
    await sensor.publishAsync(topic, reading('r1', t0), { qos: 1, retain: true });

    agent = await startAgent();
    await until(async () => (await storedIds()).get('r1') === 1, 15_000, 'r1 stored');
    assert.equal(await replays(agent), 0);
    for (let restart = 1; restart <= 3; restart++) {
      await agent.stop();
      agent = await startAgent();
      const a = agent;
      // The broker hands the retained r1 over at subscribe: skipped, counted.
      await until(async () => (await replays(a)) === 1, 10_000, `the retained r1 skipped after restart ${restart}`);
    }

    // New retained reading, live: inferred; after a restart its retained copy is skipped.
    await sensor.publishAsync(topic, reading('r2', t0 + 1000), { qos: 1, retain: true });
    await until(async () => (await storedIds()).get('r2') === 1, 15_000, 'r2 stored');
    await agent.stop();
    // New retained reading while the agent is down: delivered retain=1 at the next start, newer: inferred.
    await sensor.publishAsync(topic, reading('r3', t0 + 2000), { qos: 1, retain: true });
    agent = await startAgent();
    await until(async () => (await storedIds()).get('r3') === 1, 15_000, 'r3 stored');
    const a = agent;
    await agent.stop();
    agent = await startAgent();
    const b = agent;
    await until(async () => (await replays(b)) === 1, 10_000, 'the retained r3 skipped after the last restart');
    // Give a stray re-inference time to reach the hub before counting.
    await new Promise((r) => setTimeout(r, 300));
    const ids = await storedIds();
    assert.deepEqual(Object.fromEntries(ids), { r1: 1, r2: 1, r3: 1 });
    assert.equal(await replays(a), 0, 'the start that saw r3 first did not skip it');
    console.log(`security: retained inputs: retained r1 stored ${ids.get('r1')}x across 5 agent starts (3 restarts skipped it, counted retained_replay), new retained r2 (live) and r3 (published while down) each stored once`);
  });
});
