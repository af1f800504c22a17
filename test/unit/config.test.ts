import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { loadAgentConfig } from '../../agent/config.ts';
import { EdgefleetError } from '../../shared/errors.ts';

const dir = mkdtempSync(join(tmpdir(), 'ef-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const minimal = {
  deviceId: 'dev-1',
  dataDir: 'state',
  hub: { url: 'mqtt://127.0.0.1:1883', token: 'secret-token-123' },
  models: [{ manifest: 'models/m.manifest.json' }],
  pipelines: [{ name: 'vibration', model: 'machine-state', input: { type: 'mqtt' } }],
};

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('agent config', () => {
  it('fills nested defaults and resolves paths against the config file', () => {
    const cfg = loadAgentConfig({ file: write('a.json', JSON.stringify(minimal)), env: {} });
    assert.equal(cfg.http.port, 9100);
    assert.equal(cfg.runtime.intraOpThreads, 1);
    assert.equal(cfg.outbox.synchronous, 'NORMAL');
    assert.equal(cfg.hub.backoff.maxMs, 30_000);
    assert.equal(cfg.pipelines[0]!.output.telemetry, true);
    assert.equal(cfg.dataDir, join(dir, 'state'));
    assert.equal(cfg.models[0]!.manifest, join(dir, 'models/m.manifest.json'));
    assert.ok(Object.isFrozen(cfg) && Object.isFrozen(cfg.hub));
  });

  it('reads YAML and applies environment overrides derived from the schema', () => {
    const yaml = `deviceId: dev-1\ndataDir: state\nhub:\n  url: mqtt://127.0.0.1:1883\n  token: from-file-xxxx\nmodels:\n  - manifest: m.json\npipelines:\n  - name: p\n    model: m\n    input: { type: mqtt }\n`;
    const cfg = loadAgentConfig({
      file: write('a.yaml', yaml),
      env: { EDGEFLEET_AGENT__HUB__TOKEN: 'from-env-yyyy', EDGEFLEET_AGENT__HTTP__PORT: '0', EDGEFLEET_AGENT__RUNTIME__INTRA_OP_THREADS: '2' },
    });
    assert.equal(cfg.hub.token, 'from-env-yyyy');
    assert.equal(cfg.http.port, 0);
    assert.equal(cfg.runtime.intraOpThreads, 2);
  });

  it('reports every problem at once', () => {
    const bad = { ...minimal, deviceId: 'bad/id', hub: { url: 'http://x', token: 'short' }, pipelines: [] };
    assert.throws(
      () => loadAgentConfig({ file: write('bad.json', JSON.stringify(bad)), env: { EDGEFLEET_AGENT__NOPE: '1' } }),
      (err: unknown) => {
        assert.ok(err instanceof EdgefleetError);
        assert.equal(err.code, 'BAD_CONFIG');
        for (const part of ['deviceId', 'hub.url', 'hub.token', 'pipelines', 'EDGEFLEET_AGENT__NOPE']) {
          assert.match(err.message, new RegExp(part.replace('.', '\\.')), `message names ${part}`);
        }
        return true;
      },
    );
  });

  it('rejects unreadable and malformed files with a clear error', () => {
    assert.throws(() => loadAgentConfig({ file: join(dir, 'missing.yaml'), env: {} }), /cannot read config/);
    assert.throws(() => loadAgentConfig({ file: write('broken.json', '{"deviceId": '), env: {} }), /not valid JSON/);
    assert.throws(() => loadAgentConfig({ file: write('list.yaml', '- a\n- b\n'), env: {} }), /must hold an object/);
  });

  it('refuses a config file over 1 MiB before parsing it (the YAML parser took ~9 s and 1 GB for 1.6 MB)', () => {
    const big = write('big.yaml', `${'# padding\n'.repeat(110_000)}deviceId: dev-1\n`);
    // The size message (not a YAML error about the missing fields) shows it was refused unparsed.
    assert.throws(() => loadAgentConfig({ file: big, env: {} }), (e: unknown) => e instanceof EdgefleetError && e.code === 'BAD_CONFIG' && /the limit is 1048576/.test(e.message));
    const ok = write('padded.yaml', `${'# padding\n'.repeat(1000)}${JSON.stringify(minimal)}\n`);
    assert.equal(loadAgentConfig({ file: ok, env: {} }).deviceId, 'dev-1');
  });
});
