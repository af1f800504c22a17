/**
 * Small plumbing for the JSON API on node:http: bounded body reading, JSON replies, and the
 * one error shape `{ error: { code, message } }` with the status from `httpStatusOf`.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { formatIssues, MAX_JSON_DEPTH, nestedDeeperThan } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, httpStatusOf, toEdgefleetError } from '../../shared/errors.ts';

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** Replies with the error; internal details stay in the log, not in the response. */
export function sendError(res: ServerResponse, err: unknown): EdgefleetError {
  const e = toEdgefleetError(err);
  const status = httpStatusOf[e.code];
  // 5xx messages may carry internals (paths, stack lines): a fixed sentence instead, except for
  // codes whose meaning is the message; the hub's log has the detail.
  const message =
    e.code === ErrorCode.PROBE_FAILED
      ? 'the model probe could not run, so the model was not checked; nothing was stored (see the hub log), retry later'
      : status >= 500 && e.code !== ErrorCode.STORAGE && e.details?.publicMessage !== true
        ? 'internal error'
        : e.message;
  const retryAfter = e.details?.retryAfterSeconds;
  const headers: Record<string, string> = {
    ...(e.code === ErrorCode.UNAUTHORIZED ? { 'www-authenticate': 'Bearer' } : {}),
    ...(e.code === ErrorCode.OVERLOADED && typeof retryAfter === 'number' ? { 'retry-after': String(retryAfter) } : {}),
  };
  if (!res.headersSent) sendJson(res, status, { error: { code: e.code, message } }, headers);
  else res.destroy();
  return e;
}

/**
 * After refusing a request whose body is still arriving: let the client finish sending it, so
 * it reads the error reply (closing mid-upload makes it see EPIPE or a reset instead), but cut
 * the connection once more than `limit` further bytes arrive.
 */
export function drainBounded(req: IncomingMessage, limit: number): void {
  let drained = 0;
  req.on('data', (chunk: Buffer) => {
    drained += chunk.length;
    if (drained > limit) req.socket.destroy();
  });
  req.resume();
}

/**
 * Reads the request body up to `maxBytes`; larger bodies fail with PAYLOAD_TOO_LARGE, whose
 * message ends with `hint` (the setting that sets the cap, what to do instead).
 */
export async function readBody(req: IncomingMessage, maxBytes: number, hint?: string): Promise<Buffer> {
  const tail = hint ? ` (${hint})` : '';
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (Number.isFinite(declared) && declared > maxBytes) {
    req.resume();
    throw new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `body of ${declared} bytes exceeds ${maxBytes}${tail}`);
  }
  // Events rather than for-await: leaving a for-await loop early destroys the socket, and the
  // client would see a reset instead of the 413.
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > maxBytes) {
        req.off('data', onData);
        req.resume(); // drain and drop the rest
        reject(new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `body exceeds ${maxBytes} bytes${tail}`));
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', (err) => reject(toEdgefleetError(err, ErrorCode.BAD_INPUT)));
  });
}

export async function readJson<S extends z.ZodType>(req: IncomingMessage, schema: S, maxBytes: number, hint?: string): Promise<z.infer<S>> {
  const body = await readBody(req, maxBytes, hint);
  let raw: unknown;
  try {
    raw = JSON.parse(body.length ? body.toString('utf8') : 'null');
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_INPUT, `malformed JSON: ${(err as Error).message}`);
  }
  // Schemas that take anything (sample items) would pass a 100k-deep value on to a recursive
  // JSON.stringify, which overflows the stack: a 500 found by test/fuzz/http.fuzz.test.ts.
  if (nestedDeeperThan(raw, MAX_JSON_DEPTH)) throw new EdgefleetError(ErrorCode.BAD_INPUT, `JSON nested deeper than ${MAX_JSON_DEPTH} levels`);
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_INPUT, formatIssues(parsed.error));
  return parsed.data;
}
