/**
 * Task KPIs from feedback (issue #13, hub/feedback/task-kpis.ts, task-truth.ts): IoU and greedy
 * detection matching against an independent reference (exhaustive search for the assignment a
 * greedy-by-score matcher must produce, written here from the definition, not from the code),
 * MAE/RMSE per target, anomaly precision/recall/alarm rate, truth validation against manifests
 * and the compact index fields of v2 records.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { anomalyKpis, detectionKpis, emptyCounts, iou, matchDetections, regressionErrors, type PredBox, type TruthBox, type XYXY } from '../../hub/feedback/task-kpis.ts';
import { taskIndexFields, truthFor, type ReleaseTask } from '../../hub/feedback/task-truth.ts';
import { FeedbackItemSchema } from '../../hub/feedback/feedback.ts';
import { wilsonInterval } from '../../hub/kpis/math.ts';
import { indexRows } from '../../hub/kpis/indexer.ts';
import { mulberry32 } from '../../scripts/lib/synthetic.ts';

const close = (a: number, b: number, eps = 1e-12): void => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);
const B = (x1: number, y1: number, x2: number, y2: number): XYXY => ({ x1, y1, x2, y2 });

/** Reference IoU on a pixel grid: counts unit cells (integer boxes only). */
function gridIou(a: XYXY, b: XYXY): number {
  let inter = 0;
  let union = 0;
  for (let x = Math.min(a.x1, b.x1); x < Math.max(a.x2, b.x2); x++) {
    for (let y = Math.min(a.y1, b.y1); y < Math.max(a.y2, b.y2); y++) {
      const inA = x >= a.x1 && x < a.x2 && y >= a.y1 && y < a.y2;
      const inB = x >= b.x1 && x < b.x2 && y >= b.y1 && y < b.y2;
      if (inA && inB) inter++;
      if (inA || inB) union++;
    }
  }
  return union ? inter / union : 0;
}

/**
 * Reference matcher, written from the definition: walk predictions by descending score; the
 * candidates of one are the truth boxes of its label not taken by a higher-scored prediction;
 * it takes the candidate of maximal IoU if that is >= 0.5. Implemented by recomputing the
 * taken set from scratch for every prediction (quadratic, obviously correct).
 */
function referenceMatch(preds: PredBox[], truths: TruthBox[]): { tp: number; fp: number; fn: number; ious: number[] } {
  const order = [...preds.keys()].sort((i, j) => preds[j]!.score - preds[i]!.score || i - j);
  const takenBy: (number | undefined)[] = truths.map(() => undefined);
  const ious: number[] = [];
  for (const pi of order) {
    const p = preds[pi]!;
    const free = truths.map((t, j) => ({ t, j })).filter(({ t, j }) => t.label === p.label && takenBy[j] === undefined);
    const scored = free.map(({ t, j }) => ({ j, v: gridIou(p.box, t.box) })).filter((c) => c.v > 0);
    scored.sort((a, b) => b.v - a.v || a.j - b.j);
    const best = scored[0];
    if (best && best.v >= 0.5) {
      takenBy[best.j] = pi;
      ious.push(best.v);
    }
  }
  const tp = ious.length;
  return { tp, fp: preds.length - tp, fn: truths.length - tp, ious };
}

describe('detection matching', () => {
  void test('IoU: identical, disjoint, touching, nested, half overlap', () => {
    assert.equal(iou(B(0, 0, 10, 10), B(0, 0, 10, 10)), 1);
    assert.equal(iou(B(0, 0, 10, 10), B(20, 20, 30, 30)), 0);
    assert.equal(iou(B(0, 0, 10, 10), B(10, 0, 20, 10)), 0);
    close(iou(B(0, 0, 10, 10), B(2, 2, 7, 7)), 25 / 100);
    close(iou(B(0, 0, 10, 10), B(5, 0, 15, 10)), 50 / 150);
    assert.equal(iou(B(3, 3, 3, 3), B(3, 3, 3, 3)), 0);
  });

  void test('IoU equals the pixel-grid count on random integer boxes', () => {
    const rnd = mulberry32(13);
    const box = (): XYXY => {
      const x1 = Math.floor(rnd() * 20);
      const y1 = Math.floor(rnd() * 20);
      return B(x1, y1, x1 + 1 + Math.floor(rnd() * 12), y1 + 1 + Math.floor(rnd() * 12));
    };
    for (let i = 0; i < 300; i++) {
      const a = box();
      const b = box();
      close(iou(a, b), gridIou(a, b), 1e-12);
    }
  });

  void test('hand-made scene: per-label matching, each truth once, greedy by score, IoU 0.5 boundary', () => {
    const truths: TruthBox[] = [
      { label: 'bolt', box: B(0, 0, 10, 10) },
      { label: 'bolt', box: B(100, 100, 110, 110) },
      { label: 'nut', box: B(50, 50, 60, 60) },
    ];
    const preds: PredBox[] = [
      { label: 'bolt', score: 0.6, box: B(0, 0, 10, 10) }, // lower score: the 0.9 one takes truth 0 first
      { label: 'bolt', score: 0.9, box: B(1, 0, 11, 10) }, // IoU 90/110 with truth 0
      { label: 'nut', score: 0.8, box: B(0, 0, 10, 10) }, // right place, wrong label: FP
      { label: 'nut', score: 0.7, box: B(50, 50, 60, 65) }, // IoU 100/150 = 0.667 with the nut
      { label: 'bolt', score: 0.5, box: B(100, 100, 110, 120) }, // IoU exactly 0.5: a match
    ];
    const c = matchDetections(preds, truths);
    assert.deepEqual([c.tp, c.fp, c.fn], [3, 2, 0]);
    close(c.iouSum, 90 / 110 + 100 / 150 + 0.5);
    assert.deepEqual(c.byLabel.get('bolt'), { tp: 2, fp: 1, fn: 0 });
    assert.deepEqual(c.byLabel.get('nut'), { tp: 1, fp: 1, fn: 0 });
    const ref = referenceMatch(preds, truths);
    assert.deepEqual([ref.tp, ref.fp, ref.fn], [c.tp, c.fp, c.fn]);

    // Just under 0.5: no match (FP + FN).
    const under = matchDetections([{ label: 'bolt', score: 1, box: B(0, 0, 10, 10) }], [{ label: 'bolt', box: B(0, 0, 10, 20.01) }]);
    assert.deepEqual([under.tp, under.fp, under.fn], [0, 1, 1]);
    // No truth: every prediction is a FP; no prediction: every truth a FN.
    assert.deepEqual([matchDetections(preds, []).fp, matchDetections([], truths).fn], [5, 3]);

    const k = detectionKpis(c, 1, 0.3, ['bolt', 'nut', 'washer']);
    const pci = wilsonInterval(3, 5)!;
    assert.deepEqual(k.precision, { value: 3 / 5, n: 5, ci95: [pci.lo, pci.hi] });
    assert.deepEqual(k.recall, { value: 1, n: 3, ci95: [wilsonInterval(3, 3)!.lo, 1] });
    close(k.meanIou!, (90 / 110 + 100 / 150 + 0.5) / 3);
    assert.deepEqual(
      k.byLabel.map((x) => x.label),
      ['bolt', 'nut'],
    );
  });

  void test('random scenes: counts and matched IoUs equal the reference matcher', () => {
    const rnd = mulberry32(2026);
    const labels = ['a', 'b'];
    const total = emptyCounts();
    let ref = { tp: 0, fp: 0, fn: 0, iouSum: 0 };
    for (let s = 0; s < 200; s++) {
      const truths: TruthBox[] = [];
      for (let i = Math.floor(rnd() * 5); i > 0; i--) {
        const x = Math.floor(rnd() * 30);
        const y = Math.floor(rnd() * 30);
        truths.push({ label: labels[Math.floor(rnd() * 2)]!, box: B(x, y, x + 6 + Math.floor(rnd() * 6), y + 6 + Math.floor(rnd() * 6)) });
      }
      const preds: PredBox[] = [];
      for (const t of truths) {
        // Jittered copies (sometimes two per truth: a duplicate must become a FP), sometimes none.
        for (let k = Math.floor(rnd() * 3); k > 0; k--) {
          const d = (): number => Math.floor(rnd() * 5) - 2; // up to 2 px: IoU from about 0.3 to 1
          preds.push({ label: rnd() < 0.9 ? t.label : 'b', score: Math.round(rnd() * 100) / 100, box: B(t.box.x1 + d(), t.box.y1 + d(), t.box.x2 + d(), t.box.y2 + d()) });
        }
      }
      if (rnd() < 0.3) preds.push({ label: 'a', score: rnd(), box: B(35, 35, 40, 40) });
      for (const p of preds) if (p.box.x2 <= p.box.x1 || p.box.y2 <= p.box.y1) p.box = B(p.box.x1, p.box.y1, p.box.x1 + 1, p.box.y1 + 1);
      const mine = matchDetections(preds, truths);
      const r = referenceMatch(preds, truths);
      assert.deepEqual([mine.tp, mine.fp, mine.fn], [r.tp, r.fp, r.fn], `scene ${s}`);
      close(mine.iouSum, r.ious.reduce((a, b) => a + b, 0), 1e-9);
      matchDetections(preds, truths, total);
      ref = { tp: ref.tp + r.tp, fp: ref.fp + r.fp, fn: ref.fn + r.fn, iouSum: ref.iouSum + r.ious.reduce((a, b) => a + b, 0) };
    }
    assert.deepEqual([total.tp, total.fp, total.fn], [ref.tp, ref.fp, ref.fn]);
    assert.ok(ref.tp > 100 && ref.fp > 30 && ref.fn > 30, `a scene set that exercises all three: ${JSON.stringify(ref)}`);
  });
});

describe('regression and anomaly KPIs', () => {
  void test('MAE and RMSE per target, each target with its own n', () => {
    const e = regressionErrors(
      [
        { pred: { rul: 10, temp: 50 }, truth: { rul: 12 } },
        { pred: { rul: 20, temp: 55 }, truth: { rul: 17, temp: 50 } },
        { pred: { rul: 30, temp: 60 }, truth: { rul: 30, temp: 61 } },
      ],
      ['rul', 'temp', 'unused'],
    );
    assert.deepEqual(e[0], { target: 'rul', n: 3, mae: (2 + 3 + 0) / 3, rmse: Math.sqrt((4 + 9 + 0) / 3) });
    assert.deepEqual(e[1], { target: 'temp', n: 2, mae: (5 + 1) / 2, rmse: Math.sqrt((25 + 1) / 2) });
    assert.deepEqual(e[2], { target: 'unused', n: 0, mae: null, rmse: null });
  });

  void test('anomaly precision, recall (Wilson) and alarm rate', () => {
    const pairs = [
      { alarm: true, anomaly: true },
      { alarm: true, anomaly: true },
      { alarm: true, anomaly: false },
      { alarm: false, anomaly: true },
      { alarm: false, anomaly: false },
      { alarm: false, anomaly: false },
    ];
    const k = anomalyKpis(pairs, 50, 5);
    assert.deepEqual([k.labelled, k.tp, k.fp, k.fn, k.tn], [6, 2, 1, 1, 2]);
    const ci = wilsonInterval(2, 3)!;
    assert.deepEqual(k.precision, { value: 2 / 3, n: 3, ci95: [ci.lo, ci.hi] });
    assert.deepEqual(k.recall, { value: 2 / 3, n: 3, ci95: [ci.lo, ci.hi] });
    const ar = wilsonInterval(5, 50)!;
    assert.deepEqual(k.alarmRate, { value: 0.1, n: 50, ci95: [ar.lo, ar.hi] });
    const none = anomalyKpis([{ alarm: false, anomaly: false }], 0, 0);
    assert.deepEqual([none.precision, none.recall, none.alarmRate], [null, null, null]);
  });
});

describe('truth per task', () => {
  const det: ReleaseTask = {
    task: 'detection',
    post: { kind: 'detection', decoder: 'yolov8', labels: ['bg', 'bolt', 'nut'], ignoreClasses: [0], boxFormat: 'cxcywh', normalized: false, scoreActivation: 'none', scoreThreshold: 0.3, iouThreshold: 0.45, maxDetections: 100, classAgnostic: false },
    labels: ['bg', 'bolt', 'nut'],
  };
  const reg: ReleaseTask = { task: 'regression', post: { kind: 'regression', targets: [{ name: 'rul', index: 0, scale: 1, offset: 0 }] }, labels: [] };
  const ano: ReleaseTask = { task: 'anomaly', post: { kind: 'anomaly', index: 0, threshold: 0.1, normalize: false }, labels: [] };
  const cls: ReleaseTask = { task: 'classification', post: { kind: 'classification', activation: 'logits', labels: ['ok', 'defect'] }, labels: ['ok', 'defect'] };

  void test('accepted shapes are stored compactly; wrong shapes, labels and targets are refused with the reason', () => {
    assert.deepEqual(truthFor({ boxes: [{ label: 'bolt', box: B(1, 2, 3, 4) }] }, det, 'm@1'), { truth: '[["bolt",1,2,3,4]]' });
    assert.deepEqual(truthFor({ boxes: [] }, det, 'm@1'), { truth: '[]' });
    assert.match((truthFor({ boxes: [{ label: 'washer', box: B(1, 2, 3, 4) }] }, det, 'm@1') as { refused: string }).refused, /box label washer is not a label of m@1 \(bolt, nut\)/);
    assert.match((truthFor({ boxes: [{ label: 'bg', box: B(1, 2, 3, 4) }] }, det, 'm@1') as { refused: string }).refused, /box label bg/);
    assert.match((truthFor({ label: 'bolt' }, det, 'm@1') as { refused: string }).refused, /detection model: give boxes, not label/);
    assert.deepEqual(truthFor({ values: { rul: 12.5 } }, reg, 'r@1'), { truth: '{"rul":12.5}' });
    assert.match((truthFor({ values: { temp: 1 } }, reg, 'r@1') as { refused: string }).refused, /temp is not a target of r@1 \(rul\)/);
    assert.match((truthFor({ values: {} }, reg, 'r@1') as { refused: string }).refused, /no target values/);
    assert.deepEqual(truthFor({ alarm: true }, ano, 'a@1'), { truth: 'anomaly' });
    assert.deepEqual(truthFor({ label: 'normal' }, ano, 'a@1'), { truth: 'normal' });
    assert.match((truthFor({ label: 'broken' }, ano, 'a@1') as { refused: string }).refused, /'anomaly' or 'normal'/);
    assert.deepEqual(truthFor({ label: 'ok' }, cls, 'c@1'), { truth: 'ok' });
    assert.match((truthFor({ label: 'scratch' }, cls, 'c@1') as { refused: string }).refused, /not a label of c@1 \(ok, defect\)/);
    assert.match((truthFor({ alarm: true }, cls, 'c@1') as { refused: string }).refused, /classification model: give label, not alarm/);
  });

  void test('an item carries exactly one kind of truth; boxes must be corner form', () => {
    assert.ok(FeedbackItemSchema.safeParse({ id: 'x', label: 'ok' }).success);
    assert.ok(FeedbackItemSchema.safeParse({ id: 'x', boxes: [] }).success);
    assert.ok(FeedbackItemSchema.safeParse({ id: 'x', values: { rul: 1 } }).success);
    assert.ok(FeedbackItemSchema.safeParse({ id: 'x', alarm: false }).success);
    assert.ok(!FeedbackItemSchema.safeParse({ id: 'x' }).success);
    assert.ok(!FeedbackItemSchema.safeParse({ id: 'x', label: 'ok', alarm: true }).success);
    assert.ok(!FeedbackItemSchema.safeParse({ id: 'x', boxes: [{ label: 'bolt', box: B(5, 0, 1, 1) }] }).success);
  });

  void test('v2 records are indexed with task and compact prediction; v1 and v2 classification as before', () => {
    const rec = (body: Record<string, unknown>, seq: number) => ({ stream: 'inference', epoch: 1, seq, ts: 1000 + seq, kind: 'inference', body: { pipeline: 'p', version: '1.0.0', latencyMs: 1, ...body } });
    const rows = indexRows('d1', [
      rec({ id: 'c1', model: 'parts', label: 'ok', confidence: 0.9, margin: 0.1 }, 0),
      rec({ id: 'c2', model: 'cls2', task: 'classification', label: 'ok', confidence: 0.8, margin: 0.2, decision: 'ok' }, 1),
      rec({ id: 'd1', model: 'det', task: 'detection', count: 2, counts: { bolt: 1, nut: 1 }, topScore: 0.9, detections: [{ label: 'nut', score: 0.4, box: B(1, 1, 2, 2) }, { label: 'bolt', score: 0.9, box: B(0, 0, 5, 5) }] }, 2),
      rec({ id: 'r1', model: 'reg', task: 'regression', values: { rul: 42.5 } }, 3),
      rec({ id: 'a1', model: 'ano', task: 'anomaly', score: 0.2, alarm: true }, 4),
      rec({ id: 's1', model: 'seg', task: 'segmentation', coverage: {}, foreground: 0.1 }, 5),
      rec({ id: 'bad', model: 'det', task: 'detection', count: 1 }, 6),
    ]);
    assert.equal(rows.skipped, 1);
    const by = Object.fromEntries(rows.inferences.map((r) => [r.id, r]));
    assert.deepEqual(by['c1'], { deviceId: 'd1', id: 'c1', model: 'parts', version: '1.0.0', label: 'ok', confidence: 0.9, ts: 1000 });
    assert.equal(by['c2']?.task, undefined);
    assert.deepEqual([by['d1']?.task, by['d1']?.label, by['d1']?.confidence, by['d1']?.pred], ['detection', 'bolt', 0.9, '[["bolt",0.9,0,0,5,5],["nut",0.4,1,1,2,2]]']);
    assert.deepEqual([by['r1']?.task, by['r1']?.pred], ['regression', '{"rul":42.5}']);
    assert.deepEqual([by['a1']?.task, by['a1']?.label, by['a1']?.pred], ['anomaly', 'anomaly', '[0.2,1]']);
    assert.deepEqual([by['s1']?.task, by['s1']?.pred], ['segmentation', null]);
    assert.deepEqual(taskIndexFields({ id: 'x', model: 'm', version: '1', label: 'ok', confidence: 1 }), undefined);
  });
});
