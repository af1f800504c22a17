/**
 * What survives the agent's memory kill (issue #14). When a model run takes the process past its
 * memory budget, the run cannot be stopped inside onnxruntime (agent/runtime/pool.ts
 * #watchMemory), so main.ts writes this marker, fsynced, and SIGKILLs the process; systemd
 * restarts it. At the next start `MemoryBreachRecovery` (after the updater and the model set,
 * before any input or the hub link) reads the marker, counts the kill
 * (`edgefleet_agent_worker_memory_kills_total{model}`) and rolls each blamed version back to
 * the one before it, so the next crafted input meets the old model instead of killing the agent
 * again. A version with nothing to roll back to (a config model) keeps serving, said in the log.
 */
import { closeSync, fsyncSync, openSync, renameSync, writeSync } from 'node:fs';
import { readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Counter } from 'prom-client';
import { z } from 'zod';
import { formatIssues } from '../../shared/codec.ts';
import { toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';

export const MEMORY_BREACH_FILE = 'memory-breach.json';

export const MemoryBreachMarkerSchema = z.object({
  v: z.literal(1),
  /** Engine keys `name@version` of the runs blamed. */
  models: z.array(z.string().min(3).max(200)).min(1).max(64),
  rssBytes: z.number().nonnegative(),
  maxRssBytes: z.number().positive(),
  ts: z.number().int().nonnegative(),
});
export type MemoryBreachMarker = z.infer<typeof MemoryBreachMarkerSchema>;

/**
 * Writes the marker durably (temp file, fsync, rename). Synchronous: the caller kills the
 * process right after, and a run still allocating must not be given an event-loop turn.
 */
export function writeMemoryBreachMarker(dir: string, marker: Omit<MemoryBreachMarker, 'v'>): void {
  const path = join(dir, MEMORY_BREACH_FILE);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, JSON.stringify({ v: 1, ...marker }));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
}

/** `name@version` → its parts (names cannot hold '@', versions can after a '+'). */
function splitKey(key: string): { name: string; version: string } | undefined {
  const at = key.indexOf('@');
  return at > 0 && at < key.length - 1 ? { name: key.slice(0, at), version: key.slice(at + 1) } : undefined;
}

export interface MemoryBreachRecoveryOptions {
  dir: string;
  /** The updater's rollback (model.rollback without the hub); undefined when updates are off. */
  rollback: ((args: { name: string; version: string; reason: string }) => Promise<{ state: string }>) | undefined;
  kills?: Counter<'model'>;
  log: Logger;
}

export class MemoryBreachRecovery implements Component {
  readonly name = 'memory-breach-recovery';

  constructor(private readonly o: MemoryBreachRecoveryOptions) {}

  async start(): Promise<void> {
    const path = join(this.o.dir, MEMORY_BREACH_FILE);
    let raw: string;
    try {
      raw = await readFile(path, 'utf8');
    } catch {
      return; // no marker: the last run did not end in a memory kill
    }
    const parsed = MemoryBreachMarkerSchema.safeParse(safeJson(raw));
    if (!parsed.success) {
      this.o.log.error({ path, problem: formatIssues(parsed.error) }, 'memory breach marker unreadable; ignoring it');
      await unlink(path).catch(() => undefined);
      return;
    }
    const m = parsed.data;
    const mib = (b: number): number => Math.round(b / 2 ** 20);
    this.o.log.error({ models: m.models, rssMiB: mib(m.rssBytes), maxRssMiB: mib(m.maxRssBytes), at: new Date(m.ts).toISOString() }, 'the last run was killed: a model run outgrew the memory budget');
    for (const key of m.models) {
      this.o.kills?.inc({ model: key });
      const ref = splitKey(key);
      if (!ref || !this.o.rollback) {
        this.o.log.error({ model: key }, 'cannot roll back the model blamed for the memory kill (updates are off): it keeps serving');
        continue;
      }
      const reason = `a run took the agent past its memory budget (${mib(m.rssBytes)} MiB > ${mib(m.maxRssBytes)} MiB); the agent was killed and restarted`;
      try {
        const out = await this.o.rollback({ ...ref, reason });
        this.o.log.warn({ model: key, outcome: out.state }, out.state === 'rolled_back' ? 'model rolled back after the memory kill' : 'model blamed for the memory kill is not active');
      } catch (err) {
        this.o.log.error({ model: key, err: toEdgefleetError(err) }, 'cannot roll back the model blamed for the memory kill: it keeps serving');
      }
    }
    // Removed only now: a crash during the rollbacks leaves it for the next start.
    await unlink(path).catch(() => undefined);
  }

  stop(): Promise<void> {
    return Promise.resolve();
  }
}

function safeJson(raw: string): unknown {
  try {
    return JSON.parse(raw) as unknown;
  } catch {
    return undefined;
  }
}
