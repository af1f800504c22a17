/**
 * The bounded ring of recent raw inputs per pipeline (issue #4, retraining hook): the hub can
 * ask a drifting device for them (`drift.sample` command) to get inputs labelled. Bounded by
 * count AND bytes; the oldest go first. Inputs are kept as received (encoded image bytes, JSON
 * readings as bytes or as the parsed object the input handed over) by reference: the inputs
 * never reuse those buffers, so keeping them costs no copy on the hot path.
 *
 * A parsed JSON reading has no byte length without serialising it, which the hot path must not
 * do; its size is an upper-bound estimate instead (24 bytes per number is the longest a double
 * prints as, plus key lengths and slack), so the byte cap is never exceeded, only approached
 * more cautiously. Uploading serialises for real.
 */
import { z } from 'zod';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { FetchLike } from '../../shared/tls.ts';

/** What the pipeline hands over: the InferRequest shape, reduced to the input itself. */
export type SampleInput = { kind: 'json'; body: unknown } | { kind: 'image'; bytes: Buffer };

export interface SampleItem {
  id: string;
  ts: number;
  model: string;
  version: string;
  kind: 'json' | 'image';
  /** Encoded image, JSON bytes, or a parsed JSON value. */
  data: unknown;
  bytes: number;
}

export const SampleConfigSchema = z.object({
  /** Inputs kept per pipeline; 0 disables the ring. */
  size: z.number().int().min(0).max(100_000).default(200),
  /** Bytes kept per pipeline. */
  maxBytes: z.number().int().min(1024).max(1024 * 1024 * 1024).default(16 * 1024 * 1024),
});
export type SampleConfig = z.infer<typeof SampleConfigSchema>;

/** Upper bound of the JSON size of a parsed reading, in O(fields) without serialising. */
export function estimateJsonBytes(v: unknown, depth = 0): number {
  if (v === null || typeof v === 'boolean') return 5;
  if (typeof v === 'number') return 24;
  if (typeof v === 'string') return 2 + 6 * v.length; // worst case \uXXXX escapes
  if (depth > 4 || typeof v !== 'object') return 4096;
  if (Array.isArray(v)) {
    let n = 2;
    for (const x of v as unknown[]) n += 1 + (typeof x === 'number' ? 24 : estimateJsonBytes(x, depth + 1));
    return n;
  }
  let n = 2;
  for (const k in v as Record<string, unknown>) n += 4 + 6 * k.length + estimateJsonBytes((v as Record<string, unknown>)[k], depth + 1);
  return n;
}

export class SampleRing {
  readonly #items: (SampleItem | undefined)[];
  #head = 0;
  #length = 0;
  #bytes = 0;
  /** Inputs too large to keep at all (more than maxBytes alone). */
  skipped = 0;

  constructor(readonly config: SampleConfig) {
    this.#items = new Array<SampleItem | undefined>(config.size);
  }

  get length(): number {
    return this.#length;
  }

  get bytes(): number {
    return this.#bytes;
  }

  push(input: SampleInput, meta: { id: string; ts: number; model: string; version: string }): void {
    const cap = this.config.size;
    if (cap === 0) return;
    let data: unknown;
    let bytes: number;
    if (input.kind === 'image') {
      data = input.bytes;
      bytes = input.bytes.length;
    } else {
      data = input.body;
      bytes = Buffer.isBuffer(input.body) ? input.body.length : typeof input.body === 'string' ? Buffer.byteLength(input.body) : estimateJsonBytes(input.body);
    }
    if (bytes > this.config.maxBytes) {
      this.skipped++;
      return;
    }
    while (this.#length > 0 && (this.#length >= cap || this.#bytes + bytes > this.config.maxBytes)) this.#dropOldest();
    const i = (this.#head + this.#length) % cap;
    this.#items[i] = { id: meta.id, ts: meta.ts, model: meta.model, version: meta.version, kind: input.kind, data, bytes };
    this.#length++;
    this.#bytes += bytes;
  }

  /** The newest `max` items, oldest first. */
  recent(max = this.#length): SampleItem[] {
    const n = Math.max(0, Math.min(max, this.#length));
    const out: SampleItem[] = [];
    for (let k = this.#length - n; k < this.#length; k++) out.push(this.#items[(this.#head + k) % this.config.size] as SampleItem);
    return out;
  }

  #dropOldest(): void {
    const it = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.config.size;
    this.#length--;
    this.#bytes -= it?.bytes ?? 0;
  }
}

/** The `drift.sample` command's args, shared with the hub (request id, byte budget). */
export { SampleCommandArgsSchema } from '../../shared/protocol.ts';

export interface SampleUploadBody {
  pipeline: string;
  model: string;
  version: string;
  items: { id: string; ts: number; kind: 'json' | 'image'; data: unknown }[];
  /** The hub's sample request this answers (issue #14: the hub refuses uploads without one). */
  request?: string;
}

/** The wire form of kept items: images base64, JSON as JSON (bytes parsed: they parsed at inference). */
export function sampleBody(pipeline: string, items: readonly SampleItem[], request?: string): SampleUploadBody {
  const last = items[items.length - 1];
  return {
    pipeline,
    model: last?.model ?? '',
    version: last?.version ?? '',
    ...(request === undefined ? {} : { request }),
    items: items.map((it) => ({
      id: it.id,
      ts: it.ts,
      kind: it.kind,
      data:
        it.kind === 'image'
          ? (it.data as Buffer).toString('base64')
          : Buffer.isBuffer(it.data) || typeof it.data === 'string'
            ? (JSON.parse(String(it.data)) as unknown)
            : it.data,
    })),
  };
}

/**
 * Room left for the hub's wrapper around a stored upload (device id, receive time): the hub
 * counts the stored file against the request's budget.
 */
const HUB_WRAPPER_BYTES = 1024;

/**
 * Drops the oldest items until the JSON fits the request's byte budget (`maxBytes` of the
 * drift.sample command), so a full ring still uploads its newest inputs instead of a 413.
 * Returns how many were dropped.
 */
export function fitSampleBody(body: SampleUploadBody, maxBytes: number | undefined): number {
  if (maxBytes === undefined) return 0;
  const budget = maxBytes - HUB_WRAPPER_BYTES;
  let size = Buffer.byteLength(JSON.stringify(body));
  let dropped = 0;
  while (size > budget && body.items.length > 0) {
    const first = body.items.shift();
    size -= Buffer.byteLength(JSON.stringify(first)) + (body.items.length > 0 ? 1 : 0);
    dropped++;
  }
  return dropped;
}

export interface UploadTarget {
  hubHttpUrl: string | undefined;
  deviceId: string;
  token: string;
  timeoutMs?: number;
  /** https with the agent's hub.tls (shared/tls.ts tlsFetch); default: global fetch. */
  fetch?: FetchLike;
}

/** POSTs the body to `<hub>/v1/samples/<deviceId>` with device credentials; resolves with the HTTP status. */
export async function uploadSample(target: UploadTarget, body: SampleUploadBody): Promise<{ status: number; bytes: number }> {
  if (!target.hubHttpUrl) throw new EdgefleetError(ErrorCode.BAD_CONFIG, 'hub.httpUrl is not configured: cannot upload samples');
  const payload = JSON.stringify(body);
  let res: Response;
  try {
    // The request id in the URL too: the hub checks it before it reads the body.
    const query = body.request === undefined ? '' : `?request=${encodeURIComponent(body.request)}`;
    res = await (target.fetch ?? fetch)(`${target.hubHttpUrl}/v1/samples/${encodeURIComponent(target.deviceId)}${query}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${target.deviceId}:${target.token}` },
      body: payload,
      signal: AbortSignal.timeout(target.timeoutMs ?? 60_000),
    });
  } catch (err) {
    throw new EdgefleetError(ErrorCode.UNAVAILABLE, `sample upload failed: ${(err as Error).message}`, { cause: err });
  }
  const text = await res.text().catch(() => '');
  if (!res.ok) {
    // 403: no open sample request (the hub did not ask, or the request expired or was answered).
    const code = res.status === 413 ? ErrorCode.PAYLOAD_TOO_LARGE : res.status === 403 ? ErrorCode.FORBIDDEN : ErrorCode.UNAVAILABLE;
    throw new EdgefleetError(code, `sample upload: hub answered ${res.status} ${text.slice(0, 200)}`, {
      details: { status: res.status },
    });
  }
  return { status: res.status, bytes: Buffer.byteLength(payload) };
}
