/**
 * Caps the size of MQTT packets before they are buffered. aedes' parser (mqtt-packet) has no
 * size limit: it collects a whole packet, up to the protocol's 256 MB, before aedes sees it,
 * and that includes a CONNECT sent before authentication. This wrapper reads each packet's
 * fixed header as bytes stream in and cuts the connection as soon as a declared length exceeds
 * the cap. (The exact payload cap, with per-device counting, is in authorizePublish.)
 */
import type { Socket } from 'node:net';

/** Why a connection is cut: a packet declared too large (or a malformed length), or too many QoS 2 publishes awaiting PUBREL. */
export type GuardViolation = { reason: 'packet_too_large'; declared: number } | { reason: 'inflight'; pending: number };

const PUBLISH = 3;
const PUBREL = 6;

/**
 * Tracks MQTT packet boundaries in a byte stream: type byte, remaining length (varint), body.
 * Also counts incoming QoS 2 PUBLISHes not yet released by a PUBREL: aedes keeps each one in
 * memory until then, so a client that never releases (or floods one reused packet id) could
 * otherwise hold up to 65,535 full-size payloads. Past `maxInflight` the connection is cut.
 */
export class FrameSizeGuard {
  #skip = 0;
  #inLength = false;
  #len = 0;
  #mult = 1;
  #lenBytes = 0;
  #pendingQos2 = 0;
  constructor(
    private readonly maxPacketBytes: number,
    private readonly maxInflight = Number.POSITIVE_INFINITY,
  ) {}

  /** Returns the violation when the stream breaks a limit, else undefined. */
  check(chunk: Buffer): GuardViolation | undefined {
    const declared = this.feed(chunk);
    if (declared !== undefined) return { reason: 'packet_too_large', declared };
    if (this.#pendingQos2 > this.maxInflight) return { reason: 'inflight', pending: this.#pendingQos2 };
    return undefined;
  }

  /** Returns the offending declared length when a packet is too large (or malformed), else undefined. */
  feed(chunk: Buffer): number | undefined {
    let i = 0;
    while (i < chunk.length) {
      if (this.#skip > 0) {
        const n = Math.min(this.#skip, chunk.length - i);
        i += n;
        this.#skip -= n;
        continue;
      }
      const b = chunk[i++] as number;
      if (!this.#inLength) {
        const type = b >> 4;
        if (type === PUBLISH && ((b >> 1) & 3) === 2) this.#pendingQos2++;
        else if (type === PUBREL && this.#pendingQos2 > 0) this.#pendingQos2--;
        this.#inLength = true;
        this.#len = 0;
        this.#mult = 1;
        this.#lenBytes = 0;
        continue;
      }
      this.#len += (b & 0x7f) * this.#mult;
      this.#mult *= 128;
      this.#lenBytes++;
      if (this.#len > this.maxPacketBytes) return this.#len;
      if (b & 0x80) {
        if (this.#lenBytes >= 4) return Number.POSITIVE_INFINITY; // not a valid varint
        continue;
      }
      this.#inLength = false;
      this.#skip = this.#len;
    }
    return undefined;
  }
}

/**
 * Watches the bytes aedes reads from `socket` and destroys the connection on an oversized
 * packet or too many unreleased QoS 2 publishes. Call it right after `aedes.handle(socket)`:
 * aedes reads in paused mode (`'readable'` + `read()`), and a `'data'` listener added then sees
 * each chunk as `read()` returns it, just before the parser does, without switching the socket
 * to flowing mode. (A Duplex wrapped around the socket did the same at the cost of a second
 * stream per connection: each packet aedes wrote went through it, and the broker ran at 0.62x
 * vanilla aedes; issue #15.) The chunk that breaks the limit still reaches the parser, which
 * holds at most that one chunk of the declared packet before the socket is gone.
 */
export function guardConnection(socket: Socket, limits: { maxPacketBytes: number; maxInflight: number }, onViolation: (v: GuardViolation) => void): void {
  const guard = new FrameSizeGuard(limits.maxPacketBytes, limits.maxInflight);
  const onData = (chunk: Buffer): void => {
    const bad = guard.check(chunk);
    if (bad === undefined) return;
    socket.off('data', onData);
    onViolation(bad);
    socket.destroy();
  };
  socket.on('data', onData);
}
