/**
 * How CLI commands reach the hub's HTTP API: where the hub is (`--hub`/`--token`, then
 * EDGEFLEET_HUB/EDGEFLEET_TOKEN, then the data directory's hub.json and admin.token), a small
 * JSON client over fetch, and the errors it throws. Exit codes and the command scaffolding live
 * in ../command.ts, which builds on this file (not the other way round: no import cycle).
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';

export interface CliIo {
  out: (s: string) => void;
  err: (s: string) => void;
  env: NodeJS.ProcessEnv;
  /** The raw stderr stream for progress output (cli/progress.ts); absent in most tests. */
  stderr?: { isTTY: boolean; write(s: string): void; columns?: number };
}

export const DEFAULT_DATA_DIR = '.data/hub';

/** Bad flags or arguments: exit code 2 with the command's usage. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The hub answered with an error (or could not be reached). */
export class HubError extends Error {
  override readonly name = 'HubError';
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
  }
}

/** parseArgs options every hub command accepts. */
export const HUB_OPTIONS = {
  hub: { type: 'string' },
  token: { type: 'string' },
  data: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

export const HUB_OPTIONS_HELP = `Hub location (first match wins):
  --hub <url>      hub HTTP API, e.g. http://127.0.0.1:8080   (env EDGEFLEET_HUB)
  --token <token>  operator API token                          (env EDGEFLEET_TOKEN)
  --data <dir>     hub data directory: reads hub.json and admin.token (default ${DEFAULT_DATA_DIR})
  -h, --help       show this help`;

export interface HubTarget {
  url: string;
  token: string;
}

const HubInfoSchema = z.object({ httpUrl: z.string().url() });

export async function resolveHub(flags: { hub?: string; token?: string; data?: string }, env: NodeJS.ProcessEnv): Promise<HubTarget> {
  const dataDir = resolve(flags.data ?? DEFAULT_DATA_DIR);
  let url = flags.hub ?? env.EDGEFLEET_HUB;
  if (!url) {
    const file = join(dataDir, 'hub.json');
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch {
      throw new HubError(`no hub found: pass --hub <url> or set EDGEFLEET_HUB (no ${file}; is the hub running with --data ${dataDir}?)`, 0, 'UNAVAILABLE');
    }
    const info = HubInfoSchema.safeParse(safeJson(text));
    if (!info.success) throw new HubError(`${file} is not a valid hub.json`, 0, 'BAD_CONFIG');
    url = info.data.httpUrl;
  }
  let token = flags.token ?? env.EDGEFLEET_TOKEN;
  if (!token) {
    const file = join(dataDir, 'admin.token');
    try {
      token = (await readFile(file, 'utf8')).trim();
    } catch {
      throw new HubError(`no API token: pass --token or set EDGEFLEET_TOKEN (cannot read ${file})`, 0, 'UNAUTHORIZED');
    }
  }
  return { url: url.replace(/\/+$/, ''), token };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

const ErrorBodySchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) });

export class HubClient {
  constructor(
    private readonly target: HubTarget,
    private readonly timeoutMs = 10_000,
  ) {}

  request<S extends z.ZodType>(method: 'GET' | 'POST', path: string, schema: S, body?: unknown): Promise<z.infer<S>> {
    const init =
      body === undefined ? { method } : { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
    return this.send(path, schema, init, this.timeoutMs);
  }

  /** Any request (e.g. a streamed PUT) with the token added; a non-2xx answer throws its HubError. */
  async send<S extends z.ZodType>(path: string, schema: S, init: RequestInit & { headers?: Record<string, string> }, timeoutMs: number): Promise<z.infer<S>> {
    const method = init.method ?? 'GET';
    let res: Response;
    try {
      res = await fetch(`${this.target.url}${path}`, {
        ...init,
        headers: { ...init.headers, authorization: `Bearer ${this.target.token}` },
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new HubError(`cannot reach the hub at ${this.target.url}: ${(err as Error).message}`, 0, 'UNAVAILABLE');
    }
    const json = safeJson(await res.text());
    if (!res.ok) {
      const e = ErrorBodySchema.safeParse(json);
      throw e.success ? new HubError(e.data.error.message, res.status, e.data.error.code) : new HubError(`hub answered HTTP ${res.status}`, res.status, 'INTERNAL');
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) throw new HubError(`unexpected answer from the hub for ${method} ${path}`, res.status, 'BAD_PAYLOAD');
    return parsed.data;
  }
}

/** `--label k=v` values → object; a malformed one is a usage error. */
export function parseLabels(values: string[] | undefined): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const v of values ?? []) {
    const i = v.indexOf('=');
    if (i <= 0) throw new UsageError(`--label expects key=value, got "${v}"`);
    labels[v.slice(0, i)] = v.slice(i + 1);
  }
  return labels;
}
