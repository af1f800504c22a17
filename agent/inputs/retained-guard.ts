/**
 * Retained readings are inferred once (issue #14). A broker hands a subscriber the topic's
 * retained message (retain=1) at every subscribe, so without this an agent inferred and stored
 * the same retained sensor reading again at every restart (and every reconnect of its link).
 *
 * Per input topic the guard remembers the last reading handed to a pipeline: its sha256 and its
 * `ts` (JSON readings that carry one). A retain=1 delivery is skipped when its bytes equal that
 * reading, or its `ts` is not newer than it; live deliveries (retain=0) always pass. The marks
 * are kept in `<dataDir>/input-marks.json` (0600), written at most once per `flushMs` while
 * readings arrive and at stop, with an fsync and a rename. After a crash the last `flushMs` of
 * marks may be missing: a retained reading that arrived just before it can be inferred once more
 * (at-least-once, never lost).
 *
 * The mark (a 32-byte digest, and the ts) is taken at delivery; the payload itself is never
 * kept. Keeping the payload until the next write (to hash it off the hot path) held every
 * frame of the last second on inputs whose topic carries a per-frame id (`in/<pipeline>/<id>`):
 * at 3,400 frames/s that was ~90 MB of RSS in the 10x overload test, and each held slice kept
 * the whole socket chunk it was cut from alive (test/unit/retained-guard.test.ts). A sha256 of an
 * 18 KB frame costs ~10 us; an inference costs milliseconds.
 *
 * The mark is taken when the reading is handed to the pipeline, not when its record commits:
 * a reading the pipeline then dropped (overload) or refused (bad input) is not retried from the
 * retained copy, exactly as a live one would not be.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { writeFileDurable } from '../../shared/files.ts';

export const INPUT_MARKS_FILE = 'input-marks.json';

const MarkSchema = z.object({ sha256: z.string().regex(/^[0-9a-f]{64}$/), ts: z.number().int().nonnegative().optional() });
type Mark = z.infer<typeof MarkSchema>;
const FileSchema = z.object({ version: z.literal(1), topics: z.record(z.string(), MarkSchema) });

export interface RetainedGuardOptions {
  path: string;
  log: Logger;
  /** Longest a new mark waits before it is written. Default 1000 ms. */
  flushMs?: number;
  /** Most topics remembered (the oldest is forgotten). Default 4096. */
  maxTopics?: number;
}

export class RetainedReplayGuard implements Component {
  readonly name = 'input-marks';
  /** Marks as last written (or loaded). */
  readonly #stored = new Map<string, Mark>();
  /** Marks of readings handed on since the last write. */
  readonly #pending = new Map<string, Mark>();
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();
  /** Marks were folded into #stored since the last write. */
  #folded = false;

  constructor(private readonly o: RetainedGuardOptions) {}

  async start(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.o.path, 'utf8');
    } catch {
      return; // first start: nothing inferred yet
    }
    let parsed: z.infer<typeof FileSchema> | undefined;
    try {
      const r = FileSchema.safeParse(JSON.parse(text));
      parsed = r.success ? r.data : undefined;
    } catch {
      parsed = undefined;
    }
    if (!parsed) {
      this.o.log.warn({ file: this.o.path }, 'input marks unreadable; retained readings may be inferred once more');
      return;
    }
    for (const [topic, mark] of Object.entries(parsed.topics)) this.#stored.set(topic, mark);
  }

  /**
   * Whether a delivery is a replay of what was already inferred (skip it). Every other delivery
   * becomes the topic's mark.
   */
  isReplay(topic: string, payload: Buffer, retain: boolean): boolean {
    if (retain) {
      const mark = this.#mark(topic);
      if (mark) {
        const sha256 = hash(payload);
        if (sha256 === mark.sha256) return true;
        const ts = readingTs(payload);
        if (ts !== undefined && mark.ts !== undefined && ts <= mark.ts) return true;
      }
    }
    this.#pending.delete(topic);
    this.#pending.set(topic, markOf(payload));
    // Unique topics (one per frame id) must not grow the pending set past what a write keeps:
    // fold it into the stored marks (bounded) and let the timer write them.
    if (this.#pending.size >= (this.o.maxTopics ?? 4096)) this.#fold();
    this.#timer ??= setTimeout(() => void this.flush(), this.o.flushMs ?? 1000).unref();
    return false;
  }

  /** Writes the pending marks now (also at stop). */
  flush(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending.size === 0 && !this.#folded) return this.#writing;
    this.#fold();
    this.#folded = false;
    const text = `${JSON.stringify({ version: 1, topics: Object.fromEntries(this.#stored) })}\n`;
    // One write at a time, in order: the last one wins.
    this.#writing = this.#writing
      .then(() => writeFileDurable(this.o.path, dirname(this.o.path), text, 0o600))
      .catch((err: unknown) => this.o.log.warn({ err, file: this.o.path }, 'input marks not written; retained readings may be inferred once more'));
    return this.#writing;
  }

  /** Moves the pending marks into the stored ones, keeping at most maxTopics (the oldest go). */
  #fold(): void {
    if (this.#pending.size === 0) return;
    for (const [topic, mark] of this.#pending) {
      this.#stored.delete(topic);
      this.#stored.set(topic, mark);
    }
    this.#pending.clear();
    this.#folded = true;
    const max = this.o.maxTopics ?? 4096;
    for (const topic of this.#stored.keys()) {
      if (this.#stored.size <= max) break;
      this.#stored.delete(topic);
    }
  }

  stop(): Promise<void> {
    return this.flush();
  }

  #mark(topic: string): Mark | undefined {
    return this.#pending.get(topic) ?? this.#stored.get(topic);
  }
}

function hash(payload: Buffer): string {
  return createHash('sha256').update(payload).digest('hex');
}

function markOf(payload: Buffer): Mark {
  const ts = readingTs(payload);
  return ts === undefined ? { sha256: hash(payload) } : { sha256: hash(payload), ts };
}

/** The `ts` (epoch ms) of a JSON reading, if it has one; undefined for anything else (images). */
function readingTs(payload: Buffer): number | undefined {
  if (payload.length === 0 || payload[0] !== 0x7b /* { */) return undefined;
  try {
    const ts = (JSON.parse(payload.toString('utf8')) as { ts?: unknown }).ts;
    return typeof ts === 'number' && Number.isSafeInteger(ts) && ts >= 0 ? ts : undefined;
  } catch {
    return undefined;
  }
}
