/** Hub config: defaults, file < env < overrides, every problem at once, frozen. */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadHubConfig } from '../../hub/config.ts';
import { EdgefleetError } from '../../shared/errors.ts';
import { MAX_PAYLOAD_BYTES } from '../../shared/protocol.ts';

test('defaults', () => {
  const c = loadHubConfig({ env: {} });
  assert.equal(c.mqtt.host, '0.0.0.0');
  assert.equal(c.mqtt.port, 1883);
  assert.equal(c.http.port, 8080);
  assert.equal(c.store.synchronous, 'FULL');
  assert.equal(c.limits.maxPayloadBytes, MAX_PAYLOAD_BYTES);
  assert.ok(c.limits.drainTimeoutMs <= 10_000);
  assert.equal(c.dataDir, join(process.cwd(), '.data/hub'));
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.mqtt));
});

test('file < env < overrides; env keys match case-insensitively; dataDir resolves against the file', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'edgefleet-hub-config-'));
  try {
    const file = join(dir, 'hub.yaml');
    await writeFile(file, 'dataDir: state\nmqtt:\n  port: 1000\nhttp:\n  port: 1001\nstore:\n  synchronous: FULL\n');
    const c = loadHubConfig({
      file,
      env: { EDGEFLEET_HUB__MQTT__PORT: '1884', edgefleet_hub__http__port: '1', EDGEFLEET_HUB__LIMITS__MAX_PAYLOAD_BYTES: '4096', EDGEFLEET_HUB__http__Port: '2' },
      overrides: { http: { port: 0 } },
    });
    assert.equal(c.mqtt.port, 1884);
    assert.equal(c.http.port, 0);
    assert.equal(c.store.synchronous, 'FULL');
    assert.equal(c.limits.maxPayloadBytes, 4096);
    assert.equal(c.dataDir, join(dir, 'state'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('every problem is reported at once as BAD_CONFIG', () => {
  assert.throws(
    () =>
      loadHubConfig({
        env: { EDGEFLEET_HUB__MQTT__PORT: '70000', EDGEFLEET_HUB__STORE__SYNCHRONOUS: 'OFF', EDGEFLEET_HUB__NOPE: '1' },
        overrides: { log: { level: 'loud' } },
      }),
    (err: unknown) => {
      assert.ok(err instanceof EdgefleetError);
      assert.equal(err.code, 'BAD_CONFIG');
      const problems = (err.details?.problems ?? []) as string[];
      assert.equal(problems.length, 4, problems.join('\n'));
      assert.match(err.message, /mqtt\.port/);
      assert.match(err.message, /store\.synchronous/);
      assert.match(err.message, /nope/);
      assert.match(err.message, /log\.level/);
      return true;
    },
  );
});
