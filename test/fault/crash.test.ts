/**
 * Fault: the agent process is killed with SIGKILL while it writes telemetry at full rate, many
 * times in a row (EDGEFLEET_CRASH_KILLS, default 20). Real hub in this process, the agent as a
 * real child process, a fast sensor publishing straight to the hub. After every kill the outbox
 * file must pass `PRAGMA integrity_check`, and whatever it still held must reach the hub; at the
 * end every (stream, epoch) at the hub holds exactly seqs 0..n-1 and the total equals what the
 * outbox ever committed (its AUTOINCREMENT high-water mark): nothing lost, nothing twice.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import type { Hub } from '../../hub/main.ts';
import { mulberry32 } from '../../scripts/lib/synthetic.ts';
import {
  agentConfig,
  agentHealth,
  agentMetric,
  checkExactlyOnce,
  deviceCounters,
  ensureModels,
  provision,
  ReadingPublisher,
  readHubTelemetry,
  startAgentProcess,
  startHub,
  until,
  untilDrained,
} from '../helpers/fleet.ts';

const KILLS = Number(process.env.EDGEFLEET_CRASH_KILLS ?? 20);
const SEED = Number(process.env.EDGEFLEET_CRASH_SEED ?? Date.now() % 1_000_000);

interface OutboxSnapshot {
  integrity: string;
  epoch: number;
  /** Highest rowid ever handed out: every record ever committed, acked or not. */
  everCommitted: number;
  pending: { stream: string; epoch: number; seq: number }[];
}

/** Opens the outbox of a dead agent read-only, as the next start would find it. */
function inspectOutbox(file: string): OutboxSnapshot {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const integrity = (db.pragma('integrity_check') as { integrity_check: string }[]).map((r) => r.integrity_check).join('; ');
    const epoch = db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'epoch'").get()?.value ?? -1;
    const everCommitted = db.prepare<[], { seq: number }>("SELECT seq FROM sqlite_sequence WHERE name = 'records'").get()?.seq ?? 0;
    const pending = db.prepare<[], { stream: string; epoch: number; seq: number }>('SELECT stream, epoch, seq FROM records ORDER BY rowid').all();
    return { integrity, epoch, everCommitted, pending };
  } finally {
    db.close();
  }
}

describe('fault: agent killed with SIGKILL while writing', () => {
  const root = mkdtempSync(join(tmpdir(), 'ef-crash-'));
  let hub: Hub | undefined;
  before(() => ensureModels());
  after(async () => {
    await hub?.stop();
    if (!process.env.EDGEFLEET_FAULT_KEEP) rmSync(root, { recursive: true, force: true });
  });

  it(`${KILLS} kills: outbox intact after each, every committed record stored exactly once`, { timeout: 240_000 }, async () => {
    assert.ok(Number.isInteger(KILLS) && KILLS >= 1, 'EDGEFLEET_CRASH_KILLS must be a positive integer');
    const rng = mulberry32(SEED);
    const deviceId = 'gw-crash';
    const sensorId = 'vib-crash';
    hub = await startHub(join(root, 'hub'));
    const { deviceToken, sensorToken } = await provision(hub, deviceId, sensorId);
    const config = agentConfig({
      dir: join(root, 'agent'),
      deviceId,
      token: deviceToken,
      mqttUrl: hub.mqttUrl,
      extra: { hub: { backoff: { initialMs: 100, maxMs: 1000 } }, runtime: { queueMax: 10_000 } },
    });
    const outboxFile = join(root, 'agent', 'data', 'outbox.db');
    const logFile = join(root, 'agent.log');

    // ~1000 readings/s in bursts of 20 every 20 ms, QoS 0, for the whole test.
    const pub = new ReadingPublisher({ sensorId, token: sensorToken, deviceId, mqttUrl: hub.mqttUrl, qos: 0, seed: SEED });
    await pub.start();
    pub.steady(20, 20);

    const snapshots: OutboxSnapshot[] = [];
    try {
      for (let k = 0; k < KILLS; k++) {
        const agent = await startAgentProcess(`${deviceId}#${k}`, config, { logFile });
        try {
          // Kill only once this epoch has committed records, at a random point of its writing.
          await until(async () => (await agentMetric(agent.httpPort, 'edgefleet_agent_outbox_committed_total')) > 0, 20_000, `round ${k}: first commit`);
          await sleep(50 + Math.floor(rng() * 450));
        } finally {
          await agent.proc.kill();
        }
        const snap = inspectOutbox(outboxFile);
        snapshots.push(snap);
        assert.equal(snap.integrity, 'ok', `integrity after kill ${k + 1}`);
        assert.equal(snap.epoch, k + 1, 'one durable epoch bump per start');
      }

      // The survivor drains what every killed run left behind.
      const agent = await startAgentProcess(`${deviceId}#final`, config, { logFile });
      try {
        await until(async () => (await agentHealth(agent.httpPort)).hubConnected, 20_000, 'final agent connected');
        await sleep(500);
        pub.stopSteady();
        await untilDrained(agent.httpPort, { what: 'final agent drained' });
        const exit = await agent.proc.stop(10_000);
        assert.equal(exit.code, 0, `final agent exit ${exit.code ?? exit.signal}`);
      } finally {
        await agent.proc.kill();
      }
    } finally {
      await pub.stop();
    }

    const final = inspectOutbox(outboxFile);
    assert.equal(final.integrity, 'ok');
    // A graceful stop flushes the partial health (and drift) windows into the outbox after the
    // link has closed: committed and durable, they go out at the next start. Nothing else may wait.
    const flushedAtStop = final.pending.filter((p) => p.stream === 'health' || p.stream === 'drift');
    assert.deepEqual(final.pending.filter((p) => !flushedAtStop.includes(p)), [], 'outbox holds nothing but the windows flushed at stop');
    assert.equal(final.epoch, KILLS + 1);

    const rows = readHubTelemetry(join(root, 'hub'), deviceId);
    const report = checkExactlyOnce(rows);
    const stored = report.stored;
    const have = new Set(rows.map((r) => `${r.stream}/${r.epoch}/${r.seq}`));
    let pendingAtKills = 0;
    let missing = 0;
    for (const s of snapshots) {
      pendingAtKills += s.pending.length;
      for (const p of s.pending) if (!have.has(`${p.stream}/${p.epoch}/${p.seq}`)) missing++;
    }
    // Epochs follow each other in time: a later boot's records are never older.
    const span = new Map<number, { min: number; max: number }>();
    for (const r of rows) {
      const s = span.get(r.epoch);
      if (!s) span.set(r.epoch, { min: r.ts, max: r.ts });
      else {
        s.min = Math.min(s.min, r.ts);
        s.max = Math.max(s.max, r.ts);
      }
    }
    const epochs = [...span.keys()].sort((a, b) => a - b);
    for (let i = 1; i < epochs.length; i++) {
      assert.ok(span.get(epochs[i]!)!.min >= span.get(epochs[i - 1]!)!.max, `epoch ${epochs[i]} starts after epoch ${epochs[i - 1]} ended`);
    }
    const counters = await deviceCounters(hub, deviceId);
    const integrityOk = snapshots.filter((s) => s.integrity === 'ok').length;
    const lost = final.everCommitted - flushedAtStop.length - (stored - report.duplicateIds);
    process.stdout.write(
      `crash: kills=${KILLS} epochs=${report.epochs} committed=${final.everCommitted} stored=${stored} lost=${lost} duplicated=${report.duplicateIds} ` +
        `integrity_ok=${integrityOk}/${KILLS} redelivered(dedup)=${counters.duplicates} pending_at_kills=${pendingAtKills} readings_sent=${pub.sent} seed=${SEED}\n`,
    );
    assert.deepEqual(report.problems, []);
    assert.equal(missing, 0, 'every record pending at a kill reached the hub');
    assert.equal(stored + flushedAtStop.length, final.everCommitted, 'stored exactly what the outbox ever committed (but the windows flushed at stop)');
    assert.equal(report.gaps, 0);
    assert.equal(report.duplicateIds, 0);
    assert.equal(report.disorders, 0);
    assert.ok(report.epochs >= KILLS, `records from at least ${KILLS} epochs (got ${report.epochs})`);
    assert.equal(counters.stored, stored);
    assert.equal(counters.gaps, 0);
    assert.equal(integrityOk, KILLS);
  });
});
