/**
 * The agent's credential, and zero-touch enrollment. A device either has `hub.token` in its
 * config, or a `<dataDir>/credentials.json` from an earlier enrollment, or an enrollment token
 * (one per group, one-time or count-limited, expiring: `edgefleet enroll-token create`). In
 * the last case the agent registers itself once (`POST /v1/enroll`), receives its own
 * credential and keeps it in credentials.json (mode 0600, written atomically and fsynced
 * before it is used, so a crash right after enrollment cannot lose the only copy). The
 * enrollment token is never needed again; a used one-time token in the config is harmless.
 *
 * A hub that cannot be reached is retried with backoff until the service is stopped (a
 * factory network comes up in any order). A refused token or a taken id is final: the agent
 * stops with the reason, because retrying cannot fix it.
 */
import { access, constants, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Backoff } from '../shared/backoff.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../shared/errors.ts';
import type { Logger } from '../shared/log.ts';
import type { FetchLike } from '../shared/tls.ts';
import type { AgentConfig } from './config.ts';
import { writeFileDurable } from '../shared/files.ts';

export const CREDENTIALS_FILE = 'credentials.json';

const CredentialsSchema = z.object({ deviceId: z.string(), token: z.string().min(8), group: z.string().optional(), enrolledAt: z.string().optional() });

async function readCredentials(file: string, deviceId: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  let parsed;
  try {
    parsed = CredentialsSchema.safeParse(JSON.parse(text));
  } catch {
    parsed = undefined;
  }
  if (!parsed?.success) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${file} is damaged; remove it and enroll again with a fresh enrollment token`);
  if (parsed.data.deviceId !== deviceId) {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `${file} belongs to ${parsed.data.deviceId}, not ${deviceId}`);
  }
  return parsed.data.token;
}

/** The config with `hub.token` set: from the config, from credentials.json, or by enrolling now. */
export async function ensureCredentials(
  config: AgentConfig,
  deps: { log: Logger; signal: AbortSignal; fetch?: FetchLike; sleep?: (ms: number, signal: AbortSignal) => Promise<void> },
): Promise<AgentConfig & { hub: { token: string } }> {
  const withToken = (token: string): AgentConfig & { hub: { token: string } } => ({ ...config, hub: { ...config.hub, token } });
  if (config.hub.token) return withToken(config.hub.token);
  const file = join(config.dataDir, CREDENTIALS_FILE);
  const stored = await readCredentials(file, config.deviceId);
  if (stored) return withToken(stored);
  const enrollment = config.hub.enrollment;
  if (!enrollment) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `no credential: set hub.token, or hub.enrollment to enroll (and ${file} does not exist)`);
  const enrollToken = enrollment.token ?? (await readFile(enrollment.tokenFile as string, 'utf8').catch((err: unknown) => {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `cannot read hub.enrollment.tokenFile: ${(err as Error).message}`);
  })).trim();
  // The credential can only be stored if the data directory is writable: check before the hub
  // spends the token on us (a credential received and then lost would strand the device id).
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  await access(config.dataDir, constants.W_OK).catch((err: unknown) => {
    throw new EdgefleetError(ErrorCode.BAD_CONFIG, `dataDir ${config.dataDir} is not writable: ${(err as Error).message}`);
  });
  const url = `${config.hub.httpUrl ?? ''}/v1/enroll`;
  const doFetch = deps.fetch ?? fetch;
  const sleep = deps.sleep ?? ((ms, signal) => new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  }));
  const backoff = new Backoff({ initialMs: 1000, maxMs: 60_000, factor: 2, jitter: 0.5 });
  for (;;) {
    if (deps.signal.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'enrollment aborted');
    let res: Response;
    try {
      res = await doFetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token: enrollToken, id: config.deviceId, labels: config.identity.labels ?? {} }),
        signal: AbortSignal.any([deps.signal, AbortSignal.timeout(30_000)]),
      });
    } catch (err) {
      const delay = backoff.next();
      deps.log.warn({ err: toEdgefleetError(err, ErrorCode.UNAVAILABLE), url, retryMs: delay }, 'enrollment: hub unreachable; retrying');
      await sleep(delay, deps.signal);
      continue;
    }
    const text = await res.text();
    if (res.status === 201) {
      const body = CredentialsSchema.pick({ token: true, group: true }).safeParse(JSON.parse(text));
      if (!body.success) throw new EdgefleetError(ErrorCode.UNAVAILABLE, 'enrollment: the hub answered without a credential');
      const creds = { deviceId: config.deviceId, token: body.data.token, group: body.data.group, enrolledAt: new Date().toISOString() };
      await writeFileDurable(file, config.dataDir, `${JSON.stringify(creds, null, 2)}\n`, 0o600);
      deps.log.info({ group: body.data.group, file }, 'enrolled with the hub; credential stored');
      return withToken(body.data.token);
    }
    const message = (() => {
      try {
        return (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? text.slice(0, 200);
      } catch {
        return text.slice(0, 200);
      }
    })();
    if (res.status === 401 || res.status === 403) throw new EdgefleetError(ErrorCode.UNAUTHORIZED, `enrollment refused by the hub: ${message}`);
    if (res.status === 409) throw new EdgefleetError(ErrorCode.CONFLICT, `enrollment refused: device id ${config.deviceId} is already registered (${message})`);
    if (res.status === 400) throw new EdgefleetError(ErrorCode.BAD_CONFIG, `enrollment request refused: ${message}`);
    const delay = backoff.next();
    deps.log.warn({ status: res.status, message, retryMs: delay }, 'enrollment: hub answered with an error; retrying');
    await sleep(delay, deps.signal);
  }
}
