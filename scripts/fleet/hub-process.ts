/**
 * Starts the hub as a child process on free ports and reads what it publishes about itself
 * (`hub.json`, `admin.token` in its data dir).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ServiceProcess } from './processes.ts';

export interface HubInfo {
  proc: ServiceProcess;
  mqttUrl: string;
  httpUrl: string;
  adminToken: string;
  dataDir: string;
}

export async function startHubProcess(opts: {
  dataDir: string;
  mqttPort?: number;
  httpPort?: number;
  logFile?: string;
  timeoutMs?: number;
  /** A hub config file (YAML or JSON); the flags above override its ports, host and data dir. */
  configFile?: string;
}): Promise<HubInfo> {
  const proc = new ServiceProcess(
    'hub',
    [
      'hub',
      ...(opts.configFile ? ['--config', opts.configFile] : []),
      '--data',
      opts.dataDir,
      '--host',
      '127.0.0.1',
      '--mqtt-port',
      String(opts.mqttPort ?? 0),
      '--http-port',
      String(opts.httpPort ?? 0),
    ],
    { logFile: opts.logFile },
  );
  await proc.waitForMsg('hub running', opts.timeoutMs ?? 30_000);
  const infoPath = join(opts.dataDir, 'hub.json');
  for (let i = 0; i < 50 && !existsSync(infoPath); i++) await sleep(100);
  const info = JSON.parse(readFileSync(infoPath, 'utf8')) as { mqttUrl: string; httpUrl: string };
  const adminToken = readFileSync(join(opts.dataDir, 'admin.token'), 'utf8').trim();
  return { proc, mqttUrl: info.mqttUrl, httpUrl: info.httpUrl, adminToken, dataDir: opts.dataDir };
}

/** Minimal operator API client for scripts and tests. */
export async function hubApi<T = unknown>(hub: { httpUrl: string; adminToken: string }, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${hub.httpUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${hub.adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return (text ? JSON.parse(text) : undefined) as T;
}
