/**
 * Raw HTTP/1.1 for the fuzz suite: one request per connection written byte by byte, so it can
 * lie (content-length, chunk sizes, header bytes), and the contract every HTTP API in the
 * project must keep under fuzzing: never a 5xx, never a hang, and every refusal our handlers
 * send has the JSON error shape `{ error: { code, message } }`. Node's own parser refuses some
 * requests before any handler (400/431 with no body, or a closed connection): counted apart.
 */
import { connect } from 'node:net';

/** Not a timing assert: a request unanswered this long is a hang. */
export const HANG_MS = 15_000;

export interface RawRequest {
  method: string;
  path: string | Buffer;
  headers: [string, string | Buffer][];
  body?: Buffer;
  /** Content-Length differs from the body: the server may wait for bytes that never come. */
  lies?: boolean;
  /** Send no Content-Length header (chunked or none). */
  noLength?: boolean;
}

export interface RawResponse {
  status?: number;
  headers: string;
  body: Buffer;
  timedOut: boolean;
}

/** Sends one request on its own connection (`connection: close`); reads until the server closes. */
export function send(port: number, r: RawRequest, timeoutMs: number): Promise<RawResponse> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (timedOut: boolean): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const all = Buffer.concat(chunks);
      const split = all.indexOf('\r\n\r\n');
      const head = (split >= 0 ? all.subarray(0, split) : all).toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(head);
      const raw = split >= 0 ? all.subarray(split + 4) : Buffer.alloc(0);
      resolve({ status: m ? Number(m[1]) : undefined, headers: head, body: /transfer-encoding: chunked/i.test(head) ? dechunk(raw) : raw, timedOut });
    };
    const timer = setTimeout(() => finish(true), timeoutMs);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
    socket.on('connect', () => {
      const lines: Buffer[] = [Buffer.concat([Buffer.from(`${r.method} `), Buffer.isBuffer(r.path) ? r.path : Buffer.from(r.path), Buffer.from(' HTTP/1.1\r\n')])];
      lines.push(Buffer.from('host: hub\r\nconnection: close\r\n'));
      for (const [k, v] of r.headers) lines.push(Buffer.concat([Buffer.from(`${k}: `), Buffer.isBuffer(v) ? v : Buffer.from(v), Buffer.from('\r\n')]));
      if (r.body && !r.noLength && !r.headers.some(([k]) => k.toLowerCase() === 'content-length')) lines.push(Buffer.from(`content-length: ${r.body.length}\r\n`));
      lines.push(Buffer.from('\r\n'));
      if (r.body) lines.push(r.body);
      socket.write(Buffer.concat(lines));
      // A request that promised more than it sent: say we are done, so the server sees the end.
      if (r.lies) socket.end();
    });
  });
}

/** The body of a chunked response (a truncated one as far as it goes). */
function dechunk(raw: Buffer): Buffer {
  const parts: Buffer[] = [];
  let i = 0;
  for (;;) {
    const eol = raw.indexOf('\r\n', i);
    if (eol < 0) break;
    const size = Number.parseInt(raw.subarray(i, eol).toString('latin1'), 16);
    if (!Number.isFinite(size) || size <= 0) break;
    parts.push(raw.subarray(eol + 2, eol + 2 + size));
    i = eol + 2 + size + 2;
  }
  return Buffer.concat(parts);
}

/** What a response says about the contract: an outcome name, or a violation message. */
export function judge(kind: string, req: RawRequest, res: RawResponse): { outcome: string; violation?: string } {
  if (res.timedOut) return { outcome: 'hang', violation: `no reply within ${HANG_MS} ms` };
  if (res.status === undefined) {
    // Node's parser may close without a reply on garbage; lying requests may end unanswered.
    return { outcome: req.lies ? 'closed_after_lie' : 'closed_without_reply' };
  }
  if (res.status >= 500) return { outcome: `http_${res.status}`, violation: `${res.status} ${res.body.subarray(0, 300).toString('utf8')}` };
  if (res.status < 400) return { outcome: 'accepted' };
  if (req.method === 'HEAD') return { outcome: `head_${res.status}` }; // no body, by definition
  const isJson = /content-type: application\/json/i.test(res.headers);
  if (!isJson) {
    // Node's own parser refusals (malformed request line, headers, lengths) carry no JSON body.
    if (res.body.length === 0 && (res.status === 400 || res.status === 431 || res.status === 413 || res.status === 414)) return { outcome: `parser_${res.status}` };
    return { outcome: `non_json_${res.status}`, violation: `${kind}: ${res.status} without the JSON error shape: ${res.headers.slice(0, 200)}` };
  }
  try {
    const body = JSON.parse(res.body.toString('utf8')) as { error?: { code?: unknown; message?: unknown } };
    if (typeof body.error?.code !== 'string' || typeof body.error.message !== 'string') throw new Error('shape');
    return { outcome: `http_${res.status}` };
  } catch {
    return { outcome: `bad_error_body_${res.status}`, violation: `${kind}: ${res.status} body is not { error: { code, message } }: ${res.body.subarray(0, 200).toString('utf8')}` };
  }
}
