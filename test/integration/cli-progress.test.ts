/**
 * Long CLI operations with progress (issue #7): `edgefleet rollout watch` against a real hub
 * (aedes on port 0, SQLite in a temp dir, fake clock, scripted devices from
 * hub-rollouts-fixture.ts) until the rollout completes (exit 0) or is rolled back (exit 1), with
 * progress drawn on a terminal, as plain lines with --progress, and none with --json; and
 * `edgefleet model push` showing its upload. The "terminal" is a capturing stderr that says it
 * is a TTY: the only fake here.
 */
/* eslint-disable no-control-regex -- the terminal output under test is made of \r and ESC [2K */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EXIT, type CliIo } from '../../cli/command.ts';
import { run as modelCmd } from '../../cli/commands/model.ts';
import { run as rolloutCmd } from '../../cli/commands/rollout.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { RolloutFixture, until, type RolloutStatusBody, type ScriptedDevice } from './hub-rollouts-fixture.ts';

const BAKE = 60_000;

interface Captured {
  io: CliIo;
  out: () => string;
  err: () => string;
  stderr: () => string;
}

function capture(tty: boolean | undefined): Captured {
  let out = '';
  let err = '';
  let raw = '';
  const io: CliIo = {
    out: (s) => (out += s),
    err: (s) => (err += s),
    env: {},
    ...(tty === undefined ? {} : { stderr: { isTTY: tty, columns: 200, write: (s: string) => void (raw += s) } }),
  };
  return { io, out: () => out, err: () => err, stderr: () => raw };
}

describe('CLI progress: rollout watch and model push', () => {
  let dir: string;
  let fx: RolloutFixture;
  const hubFlags = (): string[] => ['--hub', fx.hub.httpUrl, '--token', fx.hub.adminToken];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-cli-progress-'));
    fx = new RolloutFixture(join(dir, 'hub'));
    await fx.start();
  });

  after(async () => {
    await fx.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const fleet = async (group: string, n: number, model: string): Promise<ScriptedDevice[]> => {
    const v1 = await fx.release(model, '1.0.0');
    await fx.release(model, '1.1.0');
    const out: ScriptedDevice[] = [];
    for (let i = 1; i <= n; i++) {
      const d = (await fx.register(`${group}-${i}`, group)).runs(v1);
      await d.connect();
      out.push(d);
    }
    return out;
  };
  const status = async (id: string, check: (s: RolloutStatusBody) => boolean, what: string): Promise<void> => until(async () => check(await fx.status(id)), 20_000, what);

  test('watch follows the waves to completion: exit 0; bar on a terminal, lines with --progress, JSON only with --json', async () => {
    await fleet('g-watch', 3, 'm-watch');
    const created = await fx.ok<RolloutStatusBody>('POST', '/v1/rollouts', { model: 'm-watch', version: '1.1.0', target: { group: 'g-watch' }, waves: [1, '100%'], bakeMs: BAKE });
    const tty = capture(true);
    const lines = capture(false);
    const json = capture(true);
    const quiet = capture(false);
    const watch = (c: Captured, ...flags: string[]): Promise<number> => rolloutCmd(['watch', created.id, '--interval', '100ms', ...flags, ...hubFlags()], c.io);
    const watchers = [watch(tty), watch(lines, '--progress'), watch(json, '--json'), watch(quiet)];

    for (const wave of [1, 2]) {
      await status(created.id, (s) => s.currentWave === wave - 1 && s.phase === 'baking', `wave ${wave} to bake`);
      // Both progress modes saw this wave bake before the clock moves on.
      for (const c of [tty, lines]) await until(() => c.stderr().includes(`wave ${wave}/2 baking`), 20_000, `wave ${wave} baking in the progress`);
      await until(
        async () => {
          await fx.advance(BAKE);
          const s = await fx.status(created.id);
          return s.currentWave > wave - 1 || s.state !== 'running';
        },
        20_000,
        `wave ${wave} to pass its gate`,
      );
    }
    const codes = await Promise.all(watchers);
    assert.deepEqual(codes, [EXIT.OK, EXIT.OK, EXIT.OK, EXIT.OK], [tty, lines, json, quiet].map((c) => c.err()).join('\n'));

    // A terminal: redraws in place (\r, erase line), milestones as lines, the last one the end.
    assert.match(tty.stderr(), /\r\x1b\[2K/);
    assert.match(tty.stderr(), new RegExp(`${created.id} wave 2/2 completed +\\[#+\\] 3/3 devices done`));
    assert.match(tty.stderr(), /gate wave 1: \w+ → \w+/);
    // --progress without a terminal: plain lines, one per change, no control characters.
    assert.doesNotMatch(lines.stderr(), /[\r\x1b]/);
    const steps = lines.stderr().trimEnd().split('\n');
    // One line per change the poll saw: at least each wave baking and the end (a 100 ms poll on
    // a loaded machine can miss the short dispatch phases between them).
    assert.ok(steps.length >= 3, lines.stderr());
    for (const want of [/wave 1\/2 baking/, /wave 2\/2 baking/, /wave 2\/2 completed/]) assert.ok(steps.some((l) => want.test(l)), `${String(want)} in\n${lines.stderr()}`);
    for (const l of steps) assert.match(l, new RegExp(`^\\d\\d:\\d\\d:\\d\\d ${created.id} wave [12]/2 `));
    assert.match(steps.at(-1) ?? '', /wave 2\/2 completed .* 3\/3 devices done/);
    // The answer on stdout: the final status, as text or JSON.
    assert.match(tty.out(), new RegExp(`^${created.id}: m-watch@1\\.1\\.0 completed`));
    assert.equal(tty.out(), lines.out());
    assert.equal(json.stderr(), '', 'no progress with --json, even on a terminal');
    assert.equal((JSON.parse(json.out()) as RolloutStatusBody).state, 'completed');
    assert.equal(quiet.stderr(), '', 'no terminal, no --progress: no progress');
    assert.equal(quiet.out(), tty.out());
  });

  test('watch exits 1 when the rollout is rolled back; 2 without an id; 3 when the hub is unreachable', async () => {
    const devices = await fleet('g-watch-rb', 2, 'm-watch-rb');
    (devices[0] as ScriptedDevice).behaviour = 'reject';
    (devices[1] as ScriptedDevice).behaviour = 'reject';
    const created = await fx.ok<RolloutStatusBody>('POST', '/v1/rollouts', { model: 'm-watch-rb', version: '1.1.0', target: { group: 'g-watch-rb' }, waves: [1, '100%'] });
    const c = capture(false);
    assert.equal(await rolloutCmd(['watch', created.id, '--interval', '100ms', '--progress', ...hubFlags()], c.io), EXIT.FAILED, c.err());
    assert.match(c.out(), new RegExp(`^${created.id}: m-watch-rb@1\\.1\\.0 rolled_back — wave 0: 0 of 1 reporting devices succeeded`));
    assert.match(c.stderr(), /wave 1\/2 rolled_back .* 1\/2 devices done \(1 failed, 0 rolled back\)/);

    assert.equal(await rolloutCmd(['watch', ...hubFlags()], capture(false).io), EXIT.USAGE);
    assert.equal(await rolloutCmd(['watch', created.id, '--interval', '5ms', ...hubFlags()], capture(false).io), EXIT.USAGE, 'interval below 100ms');
    const down = capture(false);
    assert.equal(await rolloutCmd(['watch', created.id, '--interval', '100ms', '--progress', '--hub', 'http://127.0.0.1:1', '--token', 't'], down.io), EXIT.UNREACHABLE);
    assert.match(down.err(), /cannot reach the hub/);
  });

  test('watch --timeout: exit 1 while the rollout is still running', async () => {
    await fleet('g-watch-to', 1, 'm-watch-to');
    const created = await fx.ok<RolloutStatusBody>('POST', '/v1/rollouts', { model: 'm-watch-to', version: '1.1.0', target: { group: 'g-watch-to' }, waves: ['100%'], bakeMs: BAKE });
    const c = capture(false);
    assert.equal(await rolloutCmd(['watch', created.id, '--interval', '100ms', '--timeout', '300ms', ...hubFlags()], c.io), EXIT.FAILED);
    assert.match(c.err(), /rollout watch: rollout \S+ is still running after --timeout 300ms/);
  });

  test('model push: upload progress with --progress, none with --json', async () => {
    const manifest = JSON.parse(await readFile(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8')) as Record<string, unknown>;
    const onnx = join(REPO_ROOT, 'models', 'machine-state.onnx');
    const size = (await readFile(onnx)).length;
    const push = async (version: string, c: Captured, ...flags: string[]): Promise<number> => {
      const file = join(dir, `m-push-${version}.json`);
      await writeFile(file, JSON.stringify({ ...manifest, name: 'm-push', version }));
      return modelCmd(['push', onnx, '--manifest', file, ...flags, ...hubFlags()], c.io);
    };
    const lines = capture(false);
    assert.equal(await push('1.0.0', lines, '--progress'), EXIT.OK, lines.err());
    assert.match(lines.out(), /^released m-push@1\.0\.0: counter \d+/);
    assert.equal(lines.stderr(), `uploaded ${(size / 1024).toFixed(1)} KiB; the hub is checking the model (test vectors in a sandbox)...\n`);
    const tty = capture(true);
    assert.equal(await push('1.0.1', tty), EXIT.OK, tty.err());
    assert.match(tty.stderr(), /^\r\x1b\[2Kuploading \[#{24}\] 100% {2}[\d.]+ KiB \/ [\d.]+ KiB\n\r\x1b\[2Kuploaded [\d.]+ KiB; /);
    const json = capture(true);
    assert.equal(await push('1.0.2', json, '--json', '--progress'), EXIT.OK, json.err());
    assert.equal(json.stderr(), '');
    assert.equal((JSON.parse(json.out()) as { version: string }).version, '1.0.2');
  });
});
