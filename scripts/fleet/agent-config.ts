/**
 * Writes agent config files for the demo and the tests: one machine-state pipeline fed by
 * MQTT sensor readings, local HTTP on a free port.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deepMerge } from '../../shared/config.ts';

export function writeAgentConfig(opts: {
  dir: string;
  deviceId: string;
  /** Omitted: the agent enrolls itself (pass hub.enrollment and hub.httpUrl in `extra`). */
  token?: string;
  mqttUrl: string;
  modelsDir: string;
  /** Deep-merged over the defaults, e.g. { runtime: { workers: 2 } }. */
  extra?: Record<string, unknown>;
}): string {
  mkdirSync(opts.dir, { recursive: true });
  const config = deepMerge({
    deviceId: opts.deviceId,
    dataDir: join(opts.dir, 'data'),
    hub: { url: opts.mqttUrl, ...(opts.token === undefined ? {} : { token: opts.token }), backoff: { initialMs: 200, maxMs: 5000 } },
    http: { host: '127.0.0.1', port: 0 },
    models: [{ manifest: join(opts.modelsDir, 'machine-state.manifest.json') }],
    pipelines: [{ name: 'vibration', model: 'machine-state', input: { type: 'mqtt' } }],
  }, opts.extra ?? {});
  const path = join(opts.dir, 'agent.json');
  writeFileSync(path, JSON.stringify(config, null, 2));
  return path;
}
