/** The hub's `broker` config section (issue #15): embedded stays the default; external needs what it connects with. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadHubConfig } from '../../hub/config.ts';

test('broker defaults to embedded with the mqtt section unchanged', () => {
  const c = loadHubConfig({ env: {} });
  assert.equal(c.broker.kind, 'embedded');
  assert.equal(c.mqtt.port, 1883);
  assert.equal(c.broker.shareGroup, 'edgefleet-hub');
});

test('external needs a url; dynsec needs admin and hub credentials; files resolve', () => {
  assert.throws(() => loadHubConfig({ env: {}, overrides: { broker: { kind: 'external' } } }), /broker\.url/);
  assert.throws(
    () => loadHubConfig({ env: {}, overrides: { broker: { kind: 'external', url: 'mqtt://b:1883', dynsec: { enabled: true } } } }),
    (err: Error) => /adminUsername/.test(err.message) && /adminPassword/.test(err.message) && /hub user/.test(err.message),
  );
  const c = loadHubConfig({
    env: { EDGEFLEET_HUB__BROKER__KIND: 'external', EDGEFLEET_HUB__BROKER__URL: 'mqtts://b:8883' },
    overrides: { broker: { passwordFile: 'secret/pw', username: 'hub', dynsec: { enabled: true, adminUsername: 'admin', adminPasswordFile: 'admin.pw' } } },
  });
  assert.equal(c.broker.kind, 'external');
  assert.equal(c.broker.url, 'mqtts://b:8883');
  assert.equal(c.broker.passwordFile, `${process.cwd()}/secret/pw`);
  assert.equal(c.broker.dynsec.adminPasswordFile, `${process.cwd()}/admin.pw`);
});
