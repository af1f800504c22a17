/**
 * Environment overrides are typed by the schema at their path, not by their looks (issue #12):
 * a digits-only device id stays a string, numbers and booleans are coerced where the schema
 * wants them, arrays and objects are JSON, and a value that cannot be coerced, or an unknown
 * setting, is a BAD_CONFIG naming the variable. The environment still wins over the file, and
 * explicit overrides (CLI flags) over the environment.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { z } from 'zod';
import { loadAgentConfig } from '../../agent/config.ts';
import { loadHubConfig } from '../../hub/config.ts';
import { coerceEnvValue } from '../../shared/config.ts';
import { EdgefleetError } from '../../shared/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'ef-config-env-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const file = join(dir, 'agent.json');
writeFileSync(
  file,
  JSON.stringify({
    deviceId: 'dev-1',
    dataDir: 'state',
    hub: { url: 'mqtt://127.0.0.1:1883', token: 'from-file-xxxx' },
    http: { port: 9300 },
    models: [{ manifest: 'm.json' }],
    pipelines: [{ name: 'p', model: 'm', input: { type: 'mqtt' } }],
  }),
);

const agent = (env: NodeJS.ProcessEnv, overrides?: Record<string, unknown>): ReturnType<typeof loadAgentConfig> =>
  loadAgentConfig({ file, env, ...(overrides ? { overrides } : {}) });

/** Asserts a BAD_CONFIG whose message contains every one of `parts`. */
function refused(fn: () => unknown, ...parts: string[]): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof EdgefleetError, String(err));
    assert.equal(err.code, 'BAD_CONFIG');
    for (const p of parts) assert.ok(err.message.includes(p), `message names ${p}:\n${err.message}`);
    return true;
  });
}

describe('environment overrides typed by the schema', () => {
  it('keeps a digits-only device id a string', () => {
    const cfg = agent({ EDGEFLEET_AGENT__DEVICEID: '4711' });
    assert.equal(cfg.deviceId, '4711');
    // Strings that look like other JSON stay strings too.
    const odd = agent({ EDGEFLEET_AGENT__IDENTITY__GROUP: 'true', EDGEFLEET_AGENT__HUB__TOKEN: '12345678901' });
    assert.equal(odd.identity.group, 'true');
    assert.equal(odd.hub.token, '12345678901');
  });

  it('turns a numeric port into a number, and the environment wins over the file', () => {
    assert.equal(agent({}).http.port, 9300, 'the file value without an override');
    const cfg = agent({ EDGEFLEET_AGENT__HTTP__PORT: ' 9400 ', EDGEFLEET_AGENT__HUB__TOKEN: 'from-env-yyyy' });
    assert.equal(cfg.http.port, 9400);
    assert.equal(cfg.hub.token, 'from-env-yyyy');
    assert.equal(agent({ EDGEFLEET_AGENT__HUB__MAX_PACKET_BYTES: '65536' }).hub.maxPacketBytes, 65536);
    assert.equal(agent({ EDGEFLEET_AGENT__HTTP__PORT: '9400' }, { http: { port: 9500 } }).http.port, 9500, 'explicit overrides win over the environment');
    const hub = loadHubConfig({ env: { EDGEFLEET_HUB__LIMITS__MAX_PAYLOAD_BYTES: '4096', EDGEFLEET_HUB__STORE__SYNCHRONOUS: 'NORMAL' } });
    assert.equal(hub.limits.maxPayloadBytes, 4096);
    assert.equal(hub.store.synchronous, 'NORMAL');
  });

  it('turns true/false into a boolean and refuses anything else', () => {
    assert.equal(agent({ EDGEFLEET_AGENT__UPDATES__ENABLED: 'false' }).updates.enabled, false);
    assert.equal(agent({ EDGEFLEET_AGENT__UPDATES__ENABLED: 'TRUE' }).updates.enabled, true);
    assert.equal(loadHubConfig({ env: { EDGEFLEET_HUB__HTTP__PUBLIC_METRICS: 'true' } }).http.publicMetrics, true);
    refused(() => agent({ EDGEFLEET_AGENT__UPDATES__ENABLED: 'yes' }), 'EDGEFLEET_AGENT__UPDATES__ENABLED', 'not a boolean', 'updates.enabled');
  });

  it('reports an unknown setting by its variable', () => {
    refused(() => agent({ EDGEFLEET_AGENT__HTTP__NOPE: '1' }), 'EDGEFLEET_AGENT__HTTP__NOPE', 'no setting http.nope');
    refused(() => agent({ EDGEFLEET_AGENT__HTTP__PORT__X: '1' }), 'EDGEFLEET_AGENT__HTTP__PORT__X', 'no setting http.port.x');
  });

  it('reports a bad number by its variable, and every problem at once', () => {
    refused(() => agent({ EDGEFLEET_AGENT__HTTP__PORT: '80x' }), 'EDGEFLEET_AGENT__HTTP__PORT: "80x" is not a number (setting http.port)');
    // Number() would make these 0 and 16.
    refused(() => agent({ EDGEFLEET_AGENT__HTTP__PORT: '' }), 'EDGEFLEET_AGENT__HTTP__PORT', 'not a number');
    refused(() => agent({ EDGEFLEET_AGENT__HTTP__PORT: '0x10' }), 'EDGEFLEET_AGENT__HTTP__PORT', 'not a number');
    // Coerced fine but out of range: the schema's message, naming where the value came from.
    refused(() => agent({ EDGEFLEET_AGENT__HTTP__PORT: '70000' }), 'http.port', '(from EDGEFLEET_AGENT__HTTP__PORT)');
    refused(
      () => agent({ EDGEFLEET_AGENT__HTTP__PORT: 'abc', EDGEFLEET_AGENT__RUNTIME__WORKERS: '0', EDGEFLEET_AGENT__NOPE: '1' }),
      'EDGEFLEET_AGENT__HTTP__PORT',
      'runtime.workers',
      '(from EDGEFLEET_AGENT__RUNTIME__WORKERS)',
      'EDGEFLEET_AGENT__NOPE',
    );
  });

  it('reads arrays and objects as JSON', () => {
    const cfg = agent({ EDGEFLEET_AGENT__UPDATES__TRUSTED_KEYS: '["keys/a.pem"]', EDGEFLEET_AGENT__IDENTITY__LABELS: '{"line":"1"}' });
    assert.deepEqual(cfg.updates.trustedKeys, [join(dir, 'keys/a.pem')]);
    assert.deepEqual(cfg.identity.labels, { line: '1' });
    const hub = loadHubConfig({ env: { EDGEFLEET_HUB__ROLLOUTS__WINDOWS: '{"line-1":["* 22-23 * * 1-5"]}' } });
    assert.deepEqual(hub.rollouts.windows, { 'line-1': ['* 22-23 * * 1-5'] });
    refused(() => agent({ EDGEFLEET_AGENT__UPDATES__TRUSTED_KEYS: '[1,2' }), 'EDGEFLEET_AGENT__UPDATES__TRUSTED_KEYS', 'not JSON');
    refused(() => agent({ EDGEFLEET_AGENT__IDENTITY__LABELS: '[]' }), 'EDGEFLEET_AGENT__IDENTITY__LABELS', 'expected a JSON object');
  });

  it('coerces unions and literals by their options', () => {
    const qos = z.union([z.literal(0), z.literal(1)]).default(0);
    assert.deepEqual(coerceEnvValue(qos, '1'), { ok: true, value: 1 });
    assert.deepEqual(coerceEnvValue(z.union([z.number(), z.string()]), 'abc'), { ok: true, value: 'abc' });
    assert.deepEqual(coerceEnvValue(z.union([z.number(), z.string()]), '12'), { ok: true, value: 12 });
    assert.deepEqual(coerceEnvValue(z.number().nullable().optional(), 'null'), { ok: true, value: null });
    assert.deepEqual(coerceEnvValue(z.string().nullable(), 'null'), { ok: true, value: null });
    assert.deepEqual(coerceEnvValue(z.string(), 'null'), { ok: true, value: 'null' });
  });
});
