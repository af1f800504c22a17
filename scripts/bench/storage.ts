/**
 * Bench section `outbox`: the agent's Outbox (agent/outbox/outbox.ts) with its normal group
 * commit vs bare better-sqlite3 inserting the same rows into a table of the same shape, in
 * transactions of the outbox's group size, with the same journal_mode=WAL and synchronous=NORMAL.
 * Each repeat uses a fresh database in a temp dir so neither side runs on the other's grown file.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Outbox } from '../../agent/outbox/outbox.ts';
import { silentLogger } from '../../shared/log.ts';
import { figure, interleave, type Figure } from './measure.ts';
import type { SectionOptions } from './inference.ts';

/** What the outbox groups into one commit by default (OutboxOptions.flushMax). */
const GROUP = 500;

/** A record body like the one a pipeline stores per inference. */
export function inferenceBody(i: number): Record<string, unknown> {
  return {
    id: `bench-${i}`,
    pipeline: 'vibration',
    model: 'machine-state',
    version: '1.0.0',
    label: i % 3 === 0 ? 'worn' : 'normal',
    confidence: 0.9132,
    margin: 0.8123,
    decision: 'normal',
    latencyMs: 0.412,
    inputTs: 1_760_000_000_000 + i,
    source: 'mqtt',
  };
}

async function outboxRun(root: string, rows: number): Promise<number> {
  const dir = mkdtempSync(join(root, 'outbox-'));
  const outbox = new Outbox({ path: join(dir, 'outbox.db'), log: silentLogger() });
  await outbox.start(new AbortController().signal);
  try {
    const t0 = performance.now();
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < rows; i++) pending.push(outbox.append('inference', 'inference', inferenceBody(i)));
    await Promise.all(pending);
    return (rows * 1000) / (performance.now() - t0);
  } finally {
    await outbox.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function bareRun(root: string, rows: number): number {
  const dir = mkdtempSync(join(root, 'bare-'));
  const db = new Database(join(dir, 'bare.db'));
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec(`CREATE TABLE records (
      rowid INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
      ts INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL) STRICT;
      CREATE UNIQUE INDEX records_identity ON records (stream, epoch, seq);`);
    const insert = db.prepare('INSERT INTO records (stream, epoch, seq, ts, kind, body) VALUES (?, ?, ?, ?, ?, ?)');
    const group = db.transaction((from: number, to: number) => {
      for (let i = from; i < to; i++) insert.run('inference', 1, i, Date.now(), 'inference', JSON.stringify(inferenceBody(i)));
    });
    const t0 = performance.now();
    for (let i = 0; i < rows; i += GROUP) group(i, Math.min(rows, i + GROUP));
    return (rows * 1000) / (performance.now() - t0);
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function outboxSection(o: SectionOptions): Promise<Figure[]> {
  const rows = o.quick ? 2000 : 20_000;
  const root = mkdtempSync(join(tmpdir(), 'ef-bench-outbox-'));
  try {
    await outboxRun(root, 1000);
    bareRun(root, 1000);
    const r = await interleave(o.repeats, () => outboxRun(root, rows), () => Promise.resolve(bareRun(root, rows)));
    return [
      figure({
        section: 'outbox',
        name: `${rows} inference records`,
        unit: 'rows/s',
        subjectLabel: 'Outbox.append',
        baselineLabel: 'better-sqlite3',
        subject: r.subject,
        baseline: r.baseline,
        target: { kind: 'minRatio', value: 0.8 },
        note: `all appended at once, awaited together (group commit of ${GROUP}); baseline: same table and index, WAL, synchronous=NORMAL, transactions of ${GROUP}`,
      }),
    ];
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
