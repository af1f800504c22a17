/**
 * Monitoring with the real tools (issue #16): Debian's `promtool` checks and unit-tests the
 * shipped alert rules (deploy/prometheus-alerts.yml, deploy/prometheus-alerts.test.yml), and a
 * real Prometheus, configured like deploy/prometheus.yml (the hub scraped with a viewer bearer
 * token from a credentials file, the agent without), scrapes a running hub and agent with those
 * rules loaded: both targets up, hub and agent series present with the agent's `device` label,
 * and every rule evaluated without error against the real series.
 *
 * Needs `prometheus` and `promtool` (Debian package `prometheus`; .ci/run installs it). Without
 * them the test fails in CI and is skipped, saying so, elsewhere.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Agent } from '../../agent/main.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { InProcessFleet, until } from '../helpers/fleet-in-process.ts';

const DEPLOY = join(REPO_ROOT, 'deploy');
const RULES = join(DEPLOY, 'prometheus-alerts.yml');
const has = (bin: string): boolean => spawnSync('sh', ['-c', `command -v ${bin}`]).status === 0;
const missing = ['prometheus', 'promtool'].filter((b) => !has(b));
if (missing.length && process.env.CI) throw new Error(`${missing.join(', ')} not installed (apt-get install prometheus); .ci/run installs it`);
const skip = missing.length ? `${missing.join(', ')} not installed (apt-get install prometheus)` : false;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

describe('Prometheus: alert rules and a real scrape', { skip }, () => {
  it('promtool accepts the rules and their unit tests pass', () => {
    const check = spawnSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const rules = /SUCCESS: (\d+) rules found/.exec(check.stdout);
    assert.ok(rules && Number(rules[1]) >= 15, check.stdout);
    const test = spawnSync('promtool', ['test', 'rules', 'prometheus-alerts.test.yml'], { cwd: DEPLOY, encoding: 'utf8' });
    assert.equal(test.status, 0, test.stdout + test.stderr);
    assert.match(test.stdout, /SUCCESS/);
    // The example config as an operator installs it: its token file in place, the rules beside it.
    const etc = mkdtempSync(join(tmpdir(), 'ef-prom-etc-'));
    try {
      writeFileSync(join(etc, 'edgefleet-hub.token'), 'x', { mode: 0o600 });
      copyFileSync(RULES, join(etc, 'prometheus-alerts.yml'));
      writeFileSync(join(etc, 'prometheus.yml'), readFileSync(join(DEPLOY, 'prometheus.yml'), 'utf8').replaceAll('/etc/prometheus/', `${etc}/`));
      const example = spawnSync('promtool', ['check', 'config', join(etc, 'prometheus.yml')], { encoding: 'utf8' });
      assert.equal(example.status, 0, example.stdout + example.stderr);
      assert.match(example.stdout, /SUCCESS: \d+ rules found/, 'the example config loads the rules');
    } finally {
      rmSync(etc, { recursive: true, force: true });
    }
    console.log(`monitoring: promtool: ${rules[1]} alert rules valid, their unit tests pass`);
  });

  describe('a real Prometheus scrapes a running hub and agent', () => {
    const fleet = new InProcessFleet();
    let agent: Agent;
    let prom: ChildProcess | undefined;
    let promUrl = '';
    let promLog = '';

    before(async () => {
      const hub = await fleet.startHub();
      agent = await fleet.startAgent('prom-1');
      const { token } = await fleet.api<{ token: string }>('POST', '/v1/tokens', { name: 'prometheus', role: 'viewer' });
      const tokenFile = join(fleet.root, 'hub.token');
      writeFileSync(tokenFile, token, { mode: 0o600 });
      const hubTarget = new URL(hub.httpUrl).host;
      const config = join(fleet.root, 'prometheus.yml');
      writeFileSync(
        config,
        [
          'global: { scrape_interval: 1s, evaluation_interval: 1s }',
          `rule_files: [${JSON.stringify(RULES)}]`,
          'scrape_configs:',
          '  - job_name: edgefleet-hub',
          '    metrics_path: /metrics',
          `    authorization: { type: Bearer, credentials_file: ${JSON.stringify(tokenFile)} }`,
          `    static_configs: [{ targets: [${JSON.stringify(hubTarget)}] }]`,
          '  - job_name: edgefleet-agents',
          '    metrics_path: /metrics',
          '    scrape_interval: 1s',
          `    static_configs: [{ targets: ["127.0.0.1:${agent.httpPort}"], labels: { site: test } }]`,
          '',
        ].join('\n'),
      );
      const port = await freePort();
      promUrl = `http://127.0.0.1:${port}`;
      prom = spawn('prometheus', [`--config.file=${config}`, `--storage.tsdb.path=${join(fleet.root, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      prom.stdout!.on('data', (d: Buffer) => (promLog += d.toString()));
      prom.stderr!.on('data', (d: Buffer) => (promLog += d.toString()));
      await until(async () => (await fetch(`${promUrl}/-/ready`).then((r) => r.ok, () => false)), 30_000, 'Prometheus to be ready');
    });

    after(async () => {
      if (prom && prom.exitCode === null) {
        const exited = new Promise((r) => prom!.once('exit', r));
        prom.kill('SIGTERM');
        await exited;
      }
      await fleet.stop();
    });

    const api = async <T>(path: string): Promise<T> => {
      const res = await fetch(`${promUrl}/api/v1/${path}`);
      const body = (await res.json()) as { status: string; data: T };
      assert.equal(body.status, 'success', JSON.stringify(body));
      return body.data;
    };
    const query = (q: string): Promise<{ result: { metric: Record<string, string>; value: [number, string] }[] }> => api(`query?query=${encodeURIComponent(q)}`);

    it('both targets are up, hub and agent series arrive, every rule evaluates without error', async () => {
      type Target = { labels: Record<string, string>; health: string; lastError: string };
      let targets: Target[] = [];
      try {
        await until(
          async () => {
            targets = (await api<{ activeTargets: Target[] }>('targets')).activeTargets;
            return targets.length === 2 && targets.every((t) => t.health === 'up');
          },
          30_000,
          'both targets up',
        );
      } catch (err) {
        assert.fail(`${String(err)}: ${JSON.stringify(targets.map((t) => [t.labels.job, t.health, t.lastError]))}\n${promLog.slice(-2000)}`);
      }
      await until(async () => (await query('edgefleet_agent_hub_connected{device="prom-1"}')).result.length === 1, 20_000, 'the agent series');
      const connected = (await query('edgefleet_agent_hub_connected{device="prom-1"}')).result[0]!;
      assert.equal(connected.value[1], '1', 'the agent is connected to the hub, as scraped');
      assert.equal(connected.metric.job, 'edgefleet-agents');
      assert.equal(connected.metric.site, 'test');
      const devices = await query('sum(edgefleet_hub_principals{kind="device"})');
      assert.equal(devices.result[0]?.value[1], '1', 'the hub counts the one registered device');
      assert.equal((await query('up{job="edgefleet-hub"}')).result[0]?.value[1], '1');

      // Every rule has been evaluated (at 1 s) against the real series, without an error.
      type Rule = { name: string; health: string; lastError?: string; lastEvaluation: string };
      let rules: Rule[] = [];
      await until(
        async () => {
          const groups = (await api<{ groups: { rules: Rule[] }[] }>('rules')).groups;
          rules = groups.flatMap((g) => g.rules);
          return rules.length > 0 && rules.every((r) => !r.lastEvaluation.startsWith('0001-'));
        },
        20_000,
        'every rule evaluated once',
      );
      assert.deepEqual(
        rules.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError ?? ''}`),
        [],
        'rules with errors',
      );
      // A healthy fleet: nothing fires (the drift, outbox and install alerts stay silent).
      const firing = (await api<{ alerts: { labels: Record<string, string>; state: string }[] }>('alerts')).alerts.filter((a) => a.state === 'firing');
      assert.deepEqual(firing.map((a) => a.labels.alertname), []);
      console.log(`monitoring: real Prometheus ${spawnSync('prometheus', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]}: hub (bearer, viewer) and agent targets up, ${rules.length} rules evaluated, none in error, none firing`);
    });
  });
});
