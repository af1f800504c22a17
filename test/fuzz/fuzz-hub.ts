/**
 * The live hub the MQTT and HTTP fuzz files attack: the whole in-process Hub (embedded aedes
 * broker, SQLite in a temp dir, HTTP API) on port 0, with the connection-rate limit raised,
 * because every fuzz connection comes from 127.0.0.1 and the legitimate client shares that
 * address; every other limit (in-flight QoS 2, payload, topic depth and length) is the default,
 * so the fuzzers meet the configuration a real hub runs with. Also a poller for /healthz and the
 * V8 handle for a forced GC, so retained heap is measured rather than garbage.
 * FUZZ_LOG=<level> shows the hub's log, to see why an input failed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createHub, loadHubConfig, type Hub } from '../../hub/main.ts';
import { createLogger, silentLogger, type LogLevel } from '../../shared/log.ts';
import { hubApi } from '../../scripts/fleet/hub-process.ts';

export interface FuzzHub {
  hub: Hub;
  api<T>(method: string, path: string, body?: unknown): Promise<T>;
  /** Registers a principal (device by default) and returns its token. */
  addPrincipal(id: string, extra?: Record<string, unknown>): Promise<string>;
  stop(): Promise<void>;
}

export async function startFuzzHub(): Promise<FuzzHub> {
  const root = mkdtempSync(join(tmpdir(), 'ef-fuzz-'));
  const config = loadHubConfig({
    overrides: {
      dataDir: join(root, 'hub'),
      mqtt: { host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0 },
      // The fuzzer is one address hammering the hub: the per-address connection and failed-login
      // budgets would turn most inputs into the same early refusal (security.test.ts covers them).
      limits: { maxConnectsPerSecondPerIp: 100_000, maxAuthFailuresPerMinutePerIp: 1_000_000 },
    },
  });
  const level = process.env.FUZZ_LOG as LogLevel | undefined;
  const hub = await createHub(config, { log: level ? createLogger({ name: 'hub', level }) : silentLogger() });
  await hub.start(new AbortController().signal);
  const api = <T>(method: string, path: string, body?: unknown): Promise<T> => hubApi<T>({ httpUrl: hub.httpUrl, adminToken: hub.adminToken }, method, path, body);
  return {
    hub,
    api,
    addPrincipal: async (id, extra = {}) => (await api<{ token: string }>('POST', '/v1/devices', { id, group: 'fuzz', ...extra })).token,
    stop: async () => {
      await hub.stop();
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** GETs /healthz every `everyMs`; counts answers that were not 200 within 5 s. */
export class HealthPoller {
  ok = 0;
  failed = 0;
  #stopped = false;
  readonly #done: Promise<void>;

  constructor(httpUrl: string, everyMs = 250) {
    this.#done = (async () => {
      while (!this.#stopped) {
        const alive = await healthy(httpUrl);
        if (alive) this.ok++;
        else this.failed++;
        await new Promise((r) => setTimeout(r, everyMs));
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }
}

export async function healthy(httpUrl: string): Promise<boolean> {
  try {
    const res = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(5000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** Heap in use after a full GC (V8's gc exposed at run time: no node flag needed). */
export function retainedHeapMB(): number {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  return Math.round(process.memoryUsage().heapUsed / 1024 / 1024);
}

/** Sum of a counter's values across labels in the hub registry (0 when absent). */
export async function counterTotal(hub: Hub, name: string): Promise<number> {
  const m = hub.registry.getSingleMetric(name);
  if (!m) return 0;
  const v = await m.get();
  return v.values.reduce((a, x) => a + x.value, 0);
}

/** A counter's values by one label, e.g. `{ acl: 3, too_large: 1 }`. */
export async function counterBy(hub: Hub, name: string, label: string): Promise<Record<string, number>> {
  const m = hub.registry.getSingleMetric(name);
  if (!m) return {};
  const out: Record<string, number> = {};
  for (const x of (await m.get()).values) {
    const k = String(x.labels[label] ?? '');
    out[k] = (out[k] ?? 0) + x.value;
  }
  return out;
}
