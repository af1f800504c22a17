/** Compresses the records of a batch into the inclusive seq ranges an ack carries. */
import type { SeqRange } from '../../shared/protocol.ts';

export function toRanges(records: readonly { stream: string; epoch: number; seq: number }[]): SeqRange[] {
  const sorted = [...records].sort((a, b) => (a.stream < b.stream ? -1 : a.stream > b.stream ? 1 : a.epoch - b.epoch || a.seq - b.seq));
  const out: SeqRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && last.stream === r.stream && last.epoch === r.epoch && r.seq <= last.to + 1) {
      last.to = Math.max(last.to, r.seq);
    } else {
      out.push({ stream: r.stream, epoch: r.epoch, from: r.seq, to: r.seq });
    }
  }
  return out;
}
