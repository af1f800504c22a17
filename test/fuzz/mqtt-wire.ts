/**
 * Raw MQTT 3.1.1 packets for the fuzz suite, encoded by hand so they can lie: a remaining
 * length that disagrees with the body, 5-byte varints, reserved types and flags, strings whose
 * length prefix is wrong. mqtt-packet (what aedes parses with) would refuse to generate these.
 * Plus a raw TCP probe that sends bytes and reports what the broker answered and whether it
 * closed the connection.
 */
import { connect, type Socket } from 'node:net';

/** MQTT's remaining-length varint. Values past 268,435,455 get a (malformed) 5th byte. */
export function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

/** A 2-byte length-prefixed string; `lenOverride` lies about the length. */
export function str(s: string | Buffer, lenOverride?: number): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  const len = Buffer.alloc(2);
  len.writeUInt16BE((lenOverride ?? b.length) & 0xffff);
  return Buffer.concat([len, b]);
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
}

/** Fixed header + body; `length` overrides the encoded remaining length (raw varint bytes allowed). */
export function frame(typeAndFlags: number, body: Buffer, length?: number | Buffer): Buffer {
  const len = length === undefined ? varint(body.length) : Buffer.isBuffer(length) ? length : varint(length);
  return Buffer.concat([Buffer.from([typeAndFlags & 0xff]), len, body]);
}

export interface ConnectOptions {
  protocolName?: string | Buffer;
  level?: number;
  /** Raw connect flags; computed from the other fields when absent. */
  flags?: number;
  keepalive?: number;
  clientId: string | Buffer;
  clean?: boolean;
  will?: { topic: string | Buffer; payload: Buffer; qos?: number; retain?: boolean };
  username?: string | Buffer;
  password?: string | Buffer;
}

export function connectPacket(o: ConnectOptions): Buffer {
  let flags = 0;
  if (o.clean ?? true) flags |= 0x02;
  if (o.will) flags |= 0x04 | ((o.will.qos ?? 0) << 3) | (o.will.retain ? 0x20 : 0);
  if (o.password !== undefined) flags |= 0x40;
  if (o.username !== undefined) flags |= 0x80;
  const parts = [str(o.protocolName ?? 'MQTT'), Buffer.from([o.level ?? 4, (o.flags ?? flags) & 0xff]), u16(o.keepalive ?? 30), str(o.clientId)];
  if (o.will) parts.push(str(o.will.topic), str(o.will.payload));
  if (o.username !== undefined) parts.push(str(o.username));
  if (o.password !== undefined) parts.push(str(o.password));
  return frame(0x10, Buffer.concat(parts));
}

export function publishPacket(topic: string | Buffer, payload: Buffer, opts: { qos?: number; id?: number; retain?: boolean; dup?: boolean } = {}): Buffer {
  const qos = opts.qos ?? 0;
  const head = 0x30 | (opts.dup ? 0x08 : 0) | ((qos & 3) << 1) | (opts.retain ? 1 : 0);
  const body = Buffer.concat([str(topic), qos > 0 ? u16(opts.id ?? 1) : Buffer.alloc(0), payload]);
  return frame(head, body);
}

export function subscribePacket(id: number, filters: { topic: string | Buffer; qos: number }[]): Buffer {
  return frame(0x82, Buffer.concat([u16(id), ...filters.map((f) => Buffer.concat([str(f.topic), Buffer.from([f.qos & 0xff])]))]));
}

export function unsubscribePacket(id: number, filters: (string | Buffer)[]): Buffer {
  return frame(0xa2, Buffer.concat([u16(id), ...filters.map((f) => str(f))]));
}

/** PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70), UNSUBACK-like: type + packet id. */
export function idPacket(typeAndFlags: number, id: number): Buffer {
  return frame(typeAndFlags, u16(id));
}

export const PINGREQ = Buffer.from([0xc0, 0x00]);
export const DISCONNECT = Buffer.from([0xe0, 0x00]);

export interface ProbeResult {
  /** The broker closed the connection (rather than us, after waiting). */
  closedByHub: boolean;
  /** CONNACK return code, when one came. */
  connack?: number;
  /** Packet types the broker sent (high nibble of each fixed header seen at a packet start). */
  replies: Set<number>;
  bytes: number;
  /** A socket error other than the broker closing (ECONNRESET counts as closed by the hub). */
  error?: string;
}

/**
 * Connects to host:port, sends `chunks` (each waiting for the previous write), waits until the
 * broker closes the connection or `waitMs` passed since the last write, then closes it.
 * `afterConnack`: chunks sent only once a CONNACK with code 0 arrived (authenticated sessions).
 */
export function probe(port: number, chunks: Buffer[], opts: { waitMs: number; afterConnack?: Buffer[]; connackTimeoutMs?: number }): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const res: ProbeResult = { closedByHub: false, replies: new Set(), bytes: 0 };
    let buf = Buffer.alloc(0);
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    let sentAfter = false;
    const socket: Socket = connect({ host: '127.0.0.1', port });
    const finish = (closedByHub: boolean): void => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      res.closedByHub = closedByHub;
      socket.destroy();
      resolve(res);
    };
    const arm = (ms: number): void => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => finish(false), ms);
    };
    arm(opts.connackTimeoutMs ?? 5000); // a connect that never completes ends too
    const writeAll = async (list: Buffer[], thenWait: boolean): Promise<void> => {
      for (const c of list) {
        if (done || socket.destroyed) return;
        if (!socket.write(c)) await new Promise<void>((r) => socket.once('drain', r).once('close', r));
      }
      if (!done && thenWait) arm(opts.waitMs);
    };
    socket.on('connect', () => {
      // With a session to follow, the CONNACK may take a while (scrypt on a busy hub).
      if (opts.afterConnack) arm(opts.connackTimeoutMs ?? 5000);
      void writeAll(chunks, !opts.afterConnack);
    });
    socket.on('data', (d: Buffer) => {
      res.bytes += d.length;
      buf = Buffer.concat([buf, d]);
      // Walk whole packets to record their types (and the CONNACK code).
      for (;;) {
        if (buf.length < 2) break;
        let len = 0;
        let mult = 1;
        let i = 1;
        let complete = false;
        for (; i < 5 && i < buf.length; i++) {
          const b = buf[i] as number;
          len += (b & 0x7f) * mult;
          mult *= 128;
          if (!(b & 0x80)) {
            complete = true;
            break;
          }
        }
        if (!complete || buf.length < i + 1 + len) break;
        const type = (buf[0] as number) >> 4;
        res.replies.add(type);
        if (type === 2 && len >= 2) res.connack = buf[i + 2];
        buf = buf.subarray(i + 1 + len);
      }
      if (opts.afterConnack && !sentAfter && res.connack !== undefined) {
        sentAfter = true;
        if (res.connack === 0) void writeAll(opts.afterConnack, true);
        else arm(opts.waitMs);
      }
    });
    socket.on('error', (err: Error & { code?: string }) => {
      if (err.code !== 'ECONNRESET' && err.code !== 'EPIPE') res.error = err.code ?? err.message;
      finish(true);
    });
    socket.on('close', () => finish(true));
  });
}
