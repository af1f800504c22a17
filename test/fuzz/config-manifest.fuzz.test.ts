/**
 * Fuzz (issue #6): the files an operator or the hub hands to the services, for a time budget
 * (FUZZ_SECONDS, default 6):
 *   - hub and agent config files (JSON and YAML, mutated as values and as text, plus YAML's own
 *     hazards: alias bombs, merge keys, tags, `__proto__` keys) and environment overrides:
 *     loadHubConfig / loadAgentConfig return a config or throw BAD_CONFIG, nothing else;
 *   - model manifest files through the agent's readManifest: a manifest or BAD_MANIFEST;
 *   - signed release documents through verifyRelease: never accepted when the signed body or
 *     the signature was altered (accepted means: the same canonical body and the same
 *     signature as the original), never throws, and a replayed counter is refused.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { stringify as toYaml } from 'yaml';
import { loadAgentConfig } from '../../agent/config.ts';
import { readManifest } from '../../agent/models/local-models.ts';
import { loadHubConfig } from '../../hub/config.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { canonicalJson, generateSigningKey, signRelease, verifyRelease, type SignedRelease } from '../../shared/signing.ts';
import { MODELS_DIR } from '../helpers/fleet-in-process.ts';
import { fuzzBudgetMs, fuzzRun, INTERESTING_STRINGS, jsonText, mutateJson, mutateText, randomJson, rngFor, summaryLine, type Rng } from './gen.ts';

/** Default time budget of this file in `npm test` (FUZZ_SECONDS overrides). */
const SECONDS = 6;

const dir = mkdtempSync(join(tmpdir(), 'ef-fuzz-cfg-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const hubConfig = {
  dataDir: 'data',
  mqtt: { host: '127.0.0.1', port: 1883 },
  http: { host: '127.0.0.1', port: 8080, maxBodyBytes: 65_536, publicMetrics: false },
  store: { synchronous: 'FULL', busyTimeoutMs: 5000 },
  limits: { maxPayloadBytes: 1_048_576, maxTopicDepth: 8, drainTimeoutMs: 5000, maxInflight: 64, maxConnectsPerSecondPerIp: 100 },
  models: { maxArtifactBytes: 1_000_000, probe: { timeoutMs: 30_000 }, signing: { trustedKeyFiles: ['keys/old.pem'] } },
  rollouts: { tickMs: 1000, timezone: 'Europe/Berlin', windows: { 'line-1': ['* 22-23 * * 1-5'] } },
  log: { level: 'info' },
};
const agentConfig = {
  deviceId: 'dev-1',
  dataDir: 'data',
  hub: { url: 'mqtt://127.0.0.1:1883', token: 'secret-token-1234', backoff: { initialMs: 200, maxMs: 5000 } },
  http: { host: '127.0.0.1', port: 0 },
  models: [{ manifest: join(MODELS_DIR, 'machine-state.manifest.json') }],
  pipelines: [{ name: 'vibration', model: 'machine-state', input: { type: 'mqtt' } }],
};
const manifestText = readFileSync(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8');
const manifest = JSON.parse(manifestText) as Record<string, unknown>;

/**
 * Configs mutateJson grew past this are written as JSON files: the YAML library takes ~9 s and
 * over 1 GB of heap to read a 1.6 MB document (measured here), which would eat the budget and
 * says nothing new. (Config files are the operator's, not remote input; see RELIABILITY.md.)
 */
const YAML_MAX = 64 * 1024;

/** YAML texts that hit the parser's own features rather than the schema. */
const YAML_HAZARDS = [
  // alias bomb ("billion laughs")
  `a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n`,
  'base: &base\n  host: 127.0.0.1\nmqtt:\n  <<: *base\n  port: 1883\n',
  'mqtt: !!js/function "function(){}"\n',
  'mqtt: !!binary aGVsbG8=\n',
  'mqtt: !custom {port: 1}\n',
  '__proto__:\n  polluted: true\nmqtt:\n  port: 1883\n',
  'constructor:\n  prototype:\n    polluted: true\n',
  'mqtt:\n  port: .inf\n',
  'mqtt:\n  port: .nan\n',
  'mqtt:\n  port: 0x1BB\n',
  'mqtt:\n  port: 1_883\n',
  'mqtt: {port: 1}\nmqtt: {port: 2}\n',
  `${'['.repeat(5000)}${']'.repeat(5000)}`,
  `${'- '.repeat(2000)}x`,
  '%YAML 9.9\n---\na: 1\n',
  '--- a\n--- b\n',
  '? [a, b]\n: c\n',
  'a: *undefined_alias\n',
  '\uFEFFmqtt:\n  port: 1883\n',
  'mqtt:\n\tport: 1883\n',
  'dataDir: "\\u0000"\n',
  '',
  '~',
  '[]',
  '"just a string"',
];

function configText(rng: Rng, base: unknown, yaml: boolean): string {
  const r = rng.int(10);
  if (yaml && r === 0) return rng.pick(YAML_HAZARDS);
  if (r < 6) {
    const v = mutateJson(base, rng);
    const json = jsonText(v);
    return yaml && json.length < YAML_MAX ? toYamlSafe(v) : json;
  }
  if (r < 9) return mutateText(yaml ? toYaml(base) : jsonText(base), rng, yaml ? 5000 : 100_000);
  return yaml ? toYamlSafe(randomJson(rng, 4)) : jsonText(randomJson(rng, 4));
}

function toYamlSafe(v: unknown): string {
  try {
    // yaml's stringify returns undefined for undefined (mutateJson can produce it).
    const text: unknown = toYaml(v, { aliasDuplicateObjects: false });
    return typeof text === 'string' ? text : 'null';
  } catch {
    return jsonText(v); // JSON is YAML too
  }
}

function envOverrides(rng: Rng, prefix: string): NodeJS.ProcessEnv {
  if (rng.next() < 0.7) return {};
  const keys = prefix === 'EDGEFLEET_HUB' ? ['MQTT__PORT', 'HTTP__MAXBODYBYTES', 'LIMITS__MAX_INFLIGHT', 'LOG__LEVEL', 'ROLLOUTS__WINDOWS', 'NOPE', 'MQTT__PORT__X', '__PROTO__', 'MQTT____PORT'] : ['HUB__URL', 'HUB__TOKEN', 'DEVICEID', 'PIPELINES', 'HUB__BACKOFF__MAXMS', 'CONSTRUCTOR__PROTOTYPE'];
  const env: NodeJS.ProcessEnv = {};
  for (let n = 1 + rng.int(3); n > 0; n--) {
    env[`${prefix}__${rng.pick(keys)}`] = rng.pick([...INTERESTING_STRINGS, '[1,2', '{"a":', '{"__proto__":{"x":1}}', '1e999', '-1', '65536', 'true', '[]', '{}']);
  }
  return env;
}

type Verdict = 'accepted' | 'refused' | 'crash';

function judgeThrow(err: unknown, code: ErrorCode): Verdict {
  return err instanceof EdgefleetError && err.code === code ? 'refused' : 'crash';
}

describe('fuzz: config files, manifests and signed releases', () => {
  test('configs are valid or BAD_CONFIG, manifests valid or BAD_MANIFEST, altered releases never verify', { timeout: fuzzBudgetMs(SECONDS) + 120_000 }, async () => {
    const { seed, budget, out, mem } = fuzzRun(SECONDS);
    const rng = rngFor(seed);
    const crashes: string[] = [];
    const key = generateSigningKey();
    const other = generateSigningKey();
    const trusted = [{ keyId: key.keyId, publicKeyPem: key.publicKeyPem }];
    const signed: SignedRelease = signRelease({ counter: 5, manifest, createdAt: '2026-01-02T03:04:05.000Z', target: { group: 'line-1' } }, key);
    const signedCanonical = canonicalJson(signed.release);
    const foreign = signRelease({ counter: 5, manifest, createdAt: '2026-01-02T03:04:05.000Z' }, other);

    // The unmutated inputs pass, so the mutations start from something that works.
    const hubFile = join(dir, 'hub.json');
    writeFileSync(hubFile, jsonText(hubConfig));
    loadHubConfig({ file: hubFile, env: {} });
    const agentFile = join(dir, 'agent.yaml');
    writeFileSync(agentFile, toYaml(agentConfig));
    loadAgentConfig({ file: agentFile, env: {} });
    assert.equal(verifyRelease(signed, trusted, { minCounter: 5 }).ok, true);
    assert.equal(verifyRelease(signed, trusted, { minCounter: 6 }).ok, false, 'a replayed counter is refused');
    assert.equal(verifyRelease(foreign, trusted).ok, false, 'a release signed by an untrusted key is refused');

    const spent = new Map<string, number>();
    let slowest = { ms: 0, what: '' };
    let started = performance.now();
    const record = (kind: string, v: Verdict, detail: () => string): void => {
      const ms = performance.now() - started;
      spent.set(kind, (spent.get(kind) ?? 0) + ms);
      if (ms > slowest.ms) slowest = { ms, what: `${kind}: ${detail().slice(0, 120)}` };
      out.inputs++;
      out.count(`${kind}_${v}`);
      if (v === 'crash' && crashes.length < 10) crashes.push(`${kind}: ${detail()}`);
    };

    const t0 = Date.now();
    try {
      while (Date.now() - t0 < budget) {
        started = performance.now();
        const what = rng.int(8);
        if (what < 4) {
          const hub = what < 2;
          const yaml = rng.next() < 0.5;
          const text = configText(rng, hub ? hubConfig : agentConfig, yaml);
          const file = join(dir, `${hub ? 'hub' : 'agent'}.${yaml && text.length < YAML_MAX ? 'yaml' : 'json'}`);
          writeFileSync(file, text);
          const env = envOverrides(rng, hub ? 'EDGEFLEET_HUB' : 'EDGEFLEET_AGENT');
          let v: Verdict = 'accepted';
          let error: unknown;
          try {
            if (hub) loadHubConfig({ file, env });
            else loadAgentConfig({ file, env });
          } catch (err) {
            error = err;
            v = judgeThrow(err, ErrorCode.BAD_CONFIG);
          }
          record(hub ? 'hub_config' : 'agent_config', v, () => `${String(error)} env=${jsonText(env)} text=${text.slice(0, 300)}`);
        } else if (what < 6) {
          const file = join(dir, 'model.manifest.json');
          const text = rng.next() < 0.6 ? jsonText(mutateJson(manifest, rng)) : mutateText(manifestText, rng);
          writeFileSync(file, text);
          let v: Verdict = 'accepted';
          let error: unknown;
          try {
            await readManifest(file);
          } catch (err) {
            error = err;
            v = judgeThrow(err, ErrorCode.BAD_MANIFEST);
          }
          record('manifest', v, () => `${String(error)} text=${text.slice(0, 300)}`);
        } else {
          // A signed release altered in transit: as a value, or as the JSON text the agent reads.
          let doc: unknown;
          if (rng.next() < 0.7) doc = mutateJson(signed, rng);
          else {
            try {
              doc = JSON.parse(mutateText(jsonText(signed), rng));
            } catch {
              record('release', 'refused', () => '');
              continue;
            }
          }
          let v: Verdict;
          let detail = '';
          try {
            const r = verifyRelease(doc, trusted, { minCounter: 5 });
            if (!r.ok) v = 'refused';
            else {
              // Accepted: must be exactly what was signed, with the signature that signed it.
              const d = doc as SignedRelease;
              const same = canonicalJson(d.release) === signedCanonical && d.signature.sig === signed.signature.sig && d.signature.keyId === signed.signature.keyId;
              v = same ? 'accepted' : 'crash';
              detail = `an altered release verified: ${jsonText(doc).slice(0, 400)}`;
            }
          } catch (err) {
            v = 'crash';
            detail = `verifyRelease threw ${String(err)}`;
          }
          record('release', v, () => detail);
        }
      }
    } catch (err) {
      console.log(`fuzz config: seed=${seed} failed after ${out.inputs} inputs`);
      throw err;
    }
    mem.stop();
    const crashCount = crashes.length;
    console.log(`fuzz config time: ${[...spent].map(([k, ms]) => `${k}=${Math.round(ms)}ms`).join(' ')} slowest=${Math.round(slowest.ms)}ms ${slowest.what}`);
    summaryLine('config', { seed, inputs: out.inputs, crashes: crashCount, peak_rss: `${mem.peakRssMB}MB`, peak_heap: `${mem.peakHeapMB}MB` }, out);
    assert.deepEqual(crashes, [], `seed=${seed}`);
    for (const k of ['hub_config', 'agent_config', 'manifest', 'release']) assert.ok(out.get(`${k}_refused`) > 0, `${k} inputs were refused sometimes`);
  });
});
