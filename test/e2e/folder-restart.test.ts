/**
 * E2E: folder input across crashes. The agent runs as a real child process with a folder input;
 * camera files (PNG and JPEG) are dropped, the agent is SIGKILLed while it works, more files are
 * dropped while it is down, and it is restarted — twice. At the end every file is in done/
 * exactly once (the corrupt one in failed/ with its .error.txt), nothing is left in the inbox or
 * .processing/, and the hub holds each file's id exactly once.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import sharp from 'sharp';
import type { Hub } from '../../hub/main.ts';
import { createRng, encodePartPng, PART_SIZE, partDataset } from '../../scripts/lib/synthetic.ts';
import { agentConfig, ensureModels, MODELS_DIR, provision, readHubTelemetry, startAgentProcess, startHub, until, type AgentProcess } from '../helpers/fleet.ts';
import { corruptJpeg } from '../helpers/hostile-images.ts';

const ls = (dir: string): string[] => {
  try {
    return readdirSync(dir).filter((n) => !n.startsWith('.'));
  } catch {
    return [];
  }
};

describe('e2e: folder input, SIGKILL and restart', () => {
  const root = mkdtempSync(join(tmpdir(), 'ef-folder-'));
  const inbox = join(root, 'camera');
  const staging = join(root, 'staging');
  let hub: Hub | undefined;
  let agent: AgentProcess | undefined;
  before(async () => {
    await ensureModels();
    mkdirSync(inbox, { recursive: true });
    mkdirSync(staging, { recursive: true });
  });
  after(async () => {
    await agent?.proc.kill();
    await hub?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  const images = partDataset(createRng(2024), 150).images;
  let next = 0;
  const dropped: string[] = [];

  /** Drops `n` files: half written in place (the agent must wait until they are stable), half renamed in. */
  async function drop(n: number): Promise<void> {
    for (let i = 0; i < n; i++, next++) {
      const px = images[next % images.length]!;
      const jpeg = next % 3 === 0;
      const name = `frame-${String(next).padStart(4, '0')}.${jpeg ? 'jpg' : 'png'}`;
      const bytes = jpeg
        ? await sharp(Buffer.from(px), { raw: { width: PART_SIZE, height: PART_SIZE, channels: 1 } }).toColourspace('b-w').jpeg({ quality: 90 }).toBuffer()
        : await encodePartPng(px);
      if (next % 2 === 0) writeFileSync(join(inbox, name), bytes);
      else {
        writeFileSync(join(staging, name), bytes);
        renameSync(join(staging, name), join(inbox, name));
      }
      dropped.push(name);
    }
  }

  it('every file processed exactly once across two SIGKILLs, telemetry once per file', { timeout: 150_000 }, async () => {
    hub = await startHub(join(root, 'hub'));
    const { deviceToken } = await provision(hub, 'cam-gw', 'cam-sensor');
    const config = agentConfig({
      dir: join(root, 'agent'),
      deviceId: 'cam-gw',
      token: deviceToken,
      mqttUrl: hub.mqttUrl,
      extra: {
        hub: { backoff: { initialMs: 100, maxMs: 1000 } },
        models: [{ manifest: join(MODELS_DIR, 'part-defect.manifest.json') }],
        pipelines: [{ name: 'camera', model: 'part-defect', input: { type: 'folder', path: inbox, stableMs: 150, scanMs: 300, concurrency: 2 } }],
      },
    });
    writeFileSync(join(inbox, 'broken.jpg'), await corruptJpeg());
    writeFileSync(join(inbox, 'notes.txt'), 'not a camera file');
    const done = join(inbox, 'done');
    let killedMidWork = 0;
    for (let round = 0; round < 2; round++) {
      await drop(60);
      agent = await startAgentProcess(`agent-${round}`, config);
      // Kill it while it works: some files done, others still waiting or claimed.
      await until(() => ls(done).length >= dropped.length - 50, 60_000, 'the agent to get going');
      await agent.proc.kill();
      const leftAtKill = ls(inbox).filter((n) => n.startsWith('frame-')).length + ls(join(inbox, '.processing')).length;
      if (leftAtKill > 0) killedMidWork++;
      // More files while it is down.
      await drop(20);
    }
    assert.equal(killedMidWork, 2, 'both SIGKILLs landed while files were pending');

    agent = await startAgentProcess('agent-final', config);
    await until(() => ls(done).length === dropped.length, 60_000, `all ${dropped.length} files in done/`);
    assert.deepEqual(ls(done).sort(), [...dropped].sort(), 'each file in done/ exactly once, under its own name');
    assert.deepEqual(ls(inbox).filter((n) => !['done', 'failed'].includes(n)), ['notes.txt'], 'only the non-matching file is left');
    assert.deepEqual(readdirSync(join(inbox, '.processing')), []);
    assert.deepEqual(ls(join(inbox, 'failed')).sort(), ['broken.jpg', 'broken.jpg.error.txt']);
    assert.match(readFileSync(join(inbox, 'failed', 'broken.jpg.error.txt'), 'utf8'), /^BAD_INPUT: .*jpeg/i);

    const hubDir = join(root, 'hub');
    // Inference records only: health and drift windows are stored beside them.
    const inferences = (): ReturnType<typeof readHubTelemetry> => readHubTelemetry(hubDir, 'cam-gw').filter((r) => r.stream === 'inference');
    await until(() => inferences().length >= dropped.length, 30_000, 'telemetry of every file at the hub');
    await agent.proc.stop();
    agent = undefined;
    const rows = inferences();
    const counts = new Map<string, number>();
    for (const r of rows) counts.set(String(r.id), (counts.get(String(r.id)) ?? 0) + 1);
    const twice = [...counts].filter(([, n]) => n > 1);
    assert.deepEqual(twice, [], 'no file reported twice');
    assert.deepEqual([...counts.keys()].sort(), [...dropped].sort(), 'every file reported, nothing else');
  });
});
