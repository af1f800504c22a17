/**
 * Decoding of untrusted payloads: size limit, JSON, then a zod schema. Returns a result
 * instead of throwing so hot paths can count and log without try/catch noise.
 */
import type { z } from 'zod';
import { EdgefleetError, ErrorCode } from './errors.ts';

export type Decoded<T> = { ok: true; value: T } | { ok: false; error: EdgefleetError };

export function decodeJson<S extends z.ZodType>(schema: S, payload: Buffer | string, maxBytes: number): Decoded<z.infer<S>> {
  const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  if (size > maxBytes) {
    return { ok: false, error: new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `payload of ${size} bytes exceeds ${maxBytes}`) };
  }
  let raw: unknown;
  try {
    raw = JSON.parse(typeof payload === 'string' ? payload : payload.toString('utf8'));
  } catch (err) {
    return { ok: false, error: new EdgefleetError(ErrorCode.BAD_PAYLOAD, `malformed JSON: ${(err as Error).message}`) };
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    return { ok: false, error: new EdgefleetError(ErrorCode.BAD_PAYLOAD, formatIssues(parsed.error)) };
  }
  return { ok: true, value: parsed.data };
}

/** One line per issue, `path: message`, for error messages people read. */
export function formatIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}

export function encodeJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}
