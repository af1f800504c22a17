/**
 * Agent-side drift (issue #4) without the runtime: the DriftMonitor's windows on a fake clock
 * (alignment, one summary per version and window, stop flushes the partial window, unique ids
 * across a restart and a hot swap), Page-Hinkley on seeded streams, the early warning through
 * the monitor, the sample ring's bounds, and the drift.sample upload against a local HTTP server.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { DRIFT_WARNING_KIND, DriftConfigSchema, DriftMonitor, EVENTS_STREAM, imageFeatureCode } from '../../agent/drift/drift-monitor.ts';
import { DEFAULT_CONFIDENCE_PH, DEFAULT_FEATURE_PH, PageHinkley } from '../../agent/drift/page-hinkley.ts';
import { estimateJsonBytes, SampleRing } from '../../agent/drift/sample-ring.ts';
import { REPO_ROOT } from '../../scripts/fleet/processes.ts';
import { createRng } from '../../scripts/lib/rng.ts';
import { DRIFT_STREAM, DriftSummarySchema, type ClassificationLike, type DriftSummary } from '../../shared/drift/summary.ts';
import { silentLogger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { v1 } from '../helpers/manifest-v1.ts';

const machine = v1(ManifestSchema.parse(JSON.parse(readFileSync(join(REPO_ROOT, 'models', 'machine-state.manifest.json'), 'utf8'))));
const WINDOW = 60_000;
const T0 = 1_700_000_040_000; // a multiple of 60 s

interface Appended {
  stream: string;
  kind: string;
  body: Record<string, unknown>;
  ts: number | undefined;
}

function rig(opts: { epoch?: string; config?: Record<string, unknown>; now?: () => number } = {}) {
  const appended: Appended[] = [];
  let now = T0 + 1000;
  const registry = new Registry();
  const monitor = new DriftMonitor({
    deviceId: 'dev-1',
    config: DriftConfigSchema.parse({ windowMs: WINDOW, ...opts.config }),
    sink: {
      append: (stream, kind, body, ts) => {
        appended.push({ stream, kind, body: JSON.parse(JSON.stringify(body)) as Record<string, unknown>, ts });
        return Promise.resolve();
      },
    },
    instance: () => opts.epoch ?? '7',
    upload: { hubHttpUrl: undefined, deviceId: 'dev-1', token: 'secret-token' },
    log: silentLogger(),
    registry,
    now: opts.now ?? (() => now),
  });
  const summaries = (): DriftSummary[] => appended.filter((a) => a.stream === DRIFT_STREAM).map((a) => DriftSummarySchema.parse(a.body));
  return { monitor, appended, summaries, registry, setNow: (t: number) => (now = t), getNow: () => now };
}

const cls = (index: number, confidence: number): ClassificationLike => {
  const scores = [0, 0, 0];
  scores[index] = confidence;
  scores[(index + 1) % 3] = 1 - confidence;
  return { index, confidence, margin: Math.abs(2 * confidence - 1), scores };
};

/** A raw machine-state reading at the reference means shifted by `sd` reference SDs (+ noise). */
function reading(rng: ReturnType<typeof createRng>, sd = 0): Float64Array {
  const refs = machine.drift!.features;
  return Float64Array.from(machine.preprocessing.kind === 'tabular' ? machine.preprocessing.features : [], (f) => {
    const r = refs.find((x) => x.name === f.name)!;
    return r.mean + r.std * (sd + rng.normal());
  });
}

void describe('DriftMonitor windows (fake clock)', () => {
  it('one aligned summary per window; stop flushes the partial one; ids unique across restart and hot swap', async () => {
    const r = rig();
    await r.monitor.start();
    const rng = createRng(1);
    for (let i = 0; i < 10; i++) r.monitor.record('p', machine, reading(rng), cls(i % 3, 0.9), { kind: 'json', body: { values: [] } }, `id-${i}`, r.getNow());
    assert.equal(r.summaries().length, 0, 'nothing before the window closes');
    r.setNow(T0 + WINDOW + 10);
    r.monitor.tick();
    let s = r.summaries();
    assert.equal(s.length, 1);
    assert.equal(s[0]!.windowStart, T0);
    assert.equal(s[0]!.windowMs, WINDOW);
    assert.equal(s[0]!.count, 10);
    assert.deepEqual(s[0]!.outputs.classCounts, [4, 3, 3]);
    assert.equal(s[0]!.numeric.length, 8);
    assert.deepEqual(s[0]!.numeric.map((f) => f.counts.length), machine.drift!.features.map((f) => f.edges.length + 1));
    assert.match(s[0]!.summaryId, /^dev-1\/machine-state@1\.0\.0\/1700000040000\/7-/);

    // An empty window sends nothing.
    r.setNow(T0 + 2 * WINDOW + 10);
    r.monitor.tick();
    assert.equal(r.summaries().length, 1);

    // A hot swap: the new version gets its own accumulator, both flushed at stop.
    const v2: Manifest = { ...machine, version: '1.1.0' };
    r.monitor.record('p', machine, reading(rng), cls(0, 0.8), { kind: 'json', body: {} }, 'a', r.getNow());
    r.monitor.record('p', v2, reading(rng), cls(1, 0.8), { kind: 'json', body: {} }, 'b', r.getNow());
    r.monitor.record('p', v2, reading(rng), cls(1, 0.8), { kind: 'json', body: {} }, 'c', r.getNow());
    await r.monitor.stop();
    s = r.summaries();
    assert.equal(s.length, 3);
    const byVersion = new Map(s.slice(1).map((x) => [x.model.version, x]));
    assert.equal(byVersion.get('1.0.0')?.count, 1);
    assert.equal(byVersion.get('1.1.0')?.count, 2);
    for (const x of s.slice(1)) assert.equal(x.windowStart, T0 + 2 * WINDOW);
    for (const a of r.appended) assert.equal(a.kind, 'drift');

    // After a "restart" (new epoch) the same window gets a different id.
    const r2 = rig({ epoch: '8' });
    r2.setNow(T0 + 2 * WINDOW + 20_000);
    await r2.monitor.start();
    r2.monitor.record('p', machine, reading(rng), cls(0, 0.8), { kind: 'json', body: {} }, 'd', r2.getNow());
    await r2.monitor.stop();
    const ids = [...s, ...r2.summaries()].map((x) => x.summaryId);
    assert.equal(new Set(ids).size, ids.length, ids.join(' '));
    assert.equal(r2.summaries()[0]!.windowStart, T0 + 2 * WINDOW);
  });

  it('a reading in a later window closes the earlier one even without the timer', async () => {
    const r = rig();
    await r.monitor.start();
    const rng = createRng(2);
    r.monitor.record('p', machine, reading(rng), cls(0, 0.9), { kind: 'json', body: {} }, 'a', 0);
    r.setNow(T0 + 3 * WINDOW + 5);
    r.monitor.record('p', machine, reading(rng), cls(0, 0.9), { kind: 'json', body: {} }, 'b', 0);
    assert.deepEqual(r.summaries().map((s) => [s.windowStart, s.count]), [[T0, 1]]);
    await r.monitor.stop();
    assert.deepEqual(r.summaries().map((s) => [s.windowStart, s.count]), [[T0, 1], [T0 + 3 * WINDOW, 1]]);
  });

  it('counts a reading with the wrong number of values as an error, never throws', async () => {
    const r = rig();
    await r.monitor.start();
    r.monitor.record('p', machine, [1, 2, 3], { index: 9, confidence: 1, margin: 1, scores: [1] }, { kind: 'json', body: {} }, 'x', 0);
    await r.monitor.stop();
    assert.equal(r.summaries().length, 0);
    const m = await r.registry.getSingleMetric('edgefleet_agent_drift_record_errors_total')!.get();
    assert.equal(m.values[0]?.value, 1);
  });

  it('image feature names map to the agent image stats', () => {
    assert.deepEqual(['brightness', 'contrast', 'sharpness', 'channel_mean_0', 'channel_mean_2', 'blur', 'channel_mean_3'].map(imageFeatureCode), [0, 1, 2, 3, 5, -1, -1]);
  });
});

void describe('Page-Hinkley', () => {
  /** Window means of n readings: normal noise SD 1/√n (SD units), shifted by `shift` after `at`. */
  function run(seed: number, windows: number, opts: { n: number; shift?: number; at?: number }): number[] {
    const rng = createRng(seed);
    const ph = new PageHinkley(DEFAULT_FEATURE_PH);
    const alarms: number[] = [];
    for (let w = 0; w < windows; w++) {
      const mean = w >= (opts.at ?? Infinity) ? (opts.shift ?? 0) : 0;
      if (ph.update(mean + rng.normal() / Math.sqrt(opts.n)).alarm) alarms.push(w);
    }
    return alarms;
  }

  it('stays quiet on stationary streams: 20 seeds × a simulated day of 1-minute windows', () => {
    let alarms = 0;
    for (let seed = 1; seed <= 20; seed++) alarms += run(seed, 1440, { n: 30 }).length;
    assert.equal(alarms, 0);
  });

  it('fires on a 0.5 SD shift within 10 windows, up and down, for every seed', (t) => {
    const delays: number[] = [];
    for (let seed = 1; seed <= 20; seed++) {
      for (const shift of [0.5, -0.5]) {
        const alarms = run(seed, 260, { n: 30, shift, at: 200 });
        assert.ok(alarms.length >= 1 && alarms[0]! >= 200, `seed ${seed} shift ${shift}: ${alarms.join(',')}`);
        delays.push(alarms[0]! - 200 + 1);
      }
    }
    t.diagnostic(`windows to warn after a 0.5 SD shift: max ${Math.max(...delays)}, mean ${(delays.reduce((a, b) => a + b, 0) / delays.length).toFixed(1)}`);
    assert.ok(Math.max(...delays) <= 10);
  });

  it('does not alarm before minWindows and resets after an alarm', () => {
    const ph = new PageHinkley({ ...DEFAULT_CONFIDENCE_PH, minWindows: 3 });
    assert.equal(ph.update(0.9).alarm, false);
    assert.equal(ph.update(0.1).alarm, false); // big jump, but only 2 observations
    const step = ph.update(0.1);
    assert.equal(step.alarm, true);
    assert.equal(step.direction, 'down');
    assert.equal(ph.observations, 0);
  });

  it('through the monitor: a shifted feature raises one drift_warning event and a metric', async () => {
    const r = rig();
    await r.monitor.start();
    const rng = createRng(5);
    let t = T0;
    for (let w = 0; w < 30; w++) {
      const shift = w >= 20 ? 1 : 0;
      r.setNow(t + 1);
      for (let i = 0; i < 40; i++) {
        const x = reading(rng, 0);
        x[7] = machine.drift!.features[7]!.mean + machine.drift!.features[7]!.std * (shift + rng.normal()); // temp_c
        r.monitor.record('p', machine, x, cls(0, 0.9), { kind: 'json', body: {} }, 'i', 0);
      }
      t += WINDOW;
      r.setNow(t + 1);
      r.monitor.tick();
    }
    await r.monitor.stop();
    const events = r.appended.filter((a) => a.stream === EVENTS_STREAM);
    assert.ok(events.length >= 1, 'a warning');
    assert.ok(events.every((e) => e.kind === DRIFT_WARNING_KIND && e.body['feature'] === 'temp_c'), JSON.stringify(events.map((e) => e.body)));
    const first = events[0]!.body;
    assert.equal(first['detector'], 'page-hinkley');
    assert.equal(first['statistic'], 'window_mean_sd');
    assert.equal(first['direction'], 'up');
    assert.equal(first['model'], 'machine-state');
    assert.equal(first['version'], '1.0.0');
    assert.ok((first['windowStart'] as number) >= T0 + 20 * WINDOW);
    const m = await r.registry.getSingleMetric('edgefleet_agent_drift_warnings_total')!.get();
    assert.equal(m.values.find((v) => v.labels['feature'] === 'temp_c')?.value, events.length);
  });
});

void describe('sample ring', () => {
  const meta = (i: number) => ({ id: `i${i}`, ts: i, model: 'm', version: '1.0.0' });

  it('keeps at most `size` inputs, newest last', () => {
    const ring = new SampleRing({ size: 5, maxBytes: 1 << 20 });
    for (let i = 0; i < 12; i++) ring.push({ kind: 'image', bytes: Buffer.alloc(10, i) }, meta(i));
    assert.equal(ring.length, 5);
    assert.equal(ring.bytes, 50);
    assert.deepEqual(ring.recent().map((x) => x.id), ['i7', 'i8', 'i9', 'i10', 'i11']);
    assert.deepEqual(ring.recent(2).map((x) => x.id), ['i10', 'i11']);
  });

  it('keeps at most `maxBytes`, dropping the oldest; skips an input larger than the cap', () => {
    const ring = new SampleRing({ size: 100, maxBytes: 2048 });
    for (let i = 0; i < 10; i++) ring.push({ kind: 'image', bytes: Buffer.alloc(600) }, meta(i));
    assert.equal(ring.length, 3);
    assert.ok(ring.bytes <= 2048);
    assert.deepEqual(ring.recent().map((x) => x.id), ['i7', 'i8', 'i9']);
    ring.push({ kind: 'image', bytes: Buffer.alloc(4096) }, meta(99));
    assert.equal(ring.skipped, 1);
    assert.equal(ring.length, 3);
    ring.push({ kind: 'json', body: Buffer.from('{"values":[1,2]}') }, meta(100));
    assert.equal(ring.recent(1)[0]!.bytes, 16);
  });

  it('a parsed reading is sized by an upper bound of its JSON', () => {
    for (const body of [{ values: [-Number.MIN_VALUE * 3, -1 / 3, -0.1, 3] }, { features: { a: -(1 + Number.EPSILON), b: 2 }, id: 'x"\u00e9' }]) {
      assert.ok(estimateJsonBytes(body) >= Buffer.byteLength(JSON.stringify(body)), JSON.stringify(body));
    }
  });

  it('drift.sample uploads the newest inputs to /v1/samples/<device> with device credentials', async () => {
    const got: { url: string; auth: string | undefined; body: unknown }[] = [];
    const server = createServer((req: IncomingMessage, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        got.push({ url: req.url ?? '', auth: req.headers.authorization, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) });
        res.writeHead(req.url?.includes('refuse') ? 500 : 201, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const appended: unknown[] = [];
      const monitor = new DriftMonitor({
        deviceId: 'dev-1',
        config: DriftConfigSchema.parse({ sample: { size: 3 } }),
        sink: { append: (...a) => (appended.push(a), Promise.resolve()) },
        instance: () => '1',
        upload: { hubHttpUrl: url, deviceId: 'dev-1', token: 'secret-token' },
        log: silentLogger(),
      });
      await monitor.start();
      const rng = createRng(3);
      const png = Buffer.from([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]);
      monitor.record('cam', machine, reading(rng), cls(0, 0.9), { kind: 'image', bytes: png }, 'img-1', 111);
      monitor.record('p', machine, reading(rng), cls(0, 0.9), { kind: 'json', body: Buffer.from('{"values":[1,2,3]}') }, 'j-1', 222);
      monitor.record('p', machine, reading(rng), cls(0, 0.9), { kind: 'json', body: { values: [4, 5] } }, 'j-2', 333);
      const res = await monitor.uploadSample({ pipeline: 'p', max: 10 });
      assert.equal(res.items, 2);
      assert.equal(res.status, 201);
      await monitor.uploadSample({ pipeline: 'cam' });
      assert.equal(got.length, 2);
      assert.equal(got[0]!.url, '/v1/samples/dev-1');
      assert.equal(got[0]!.auth, 'Bearer dev-1:secret-token');
      assert.deepEqual(got[0]!.body, {
        pipeline: 'p',
        model: 'machine-state',
        version: '1.0.0',
        items: [
          { id: 'j-1', ts: 222, kind: 'json', data: { values: [1, 2, 3] } },
          { id: 'j-2', ts: 333, kind: 'json', data: { values: [4, 5] } },
        ],
      });
      const cam = got[1]!.body as { items: { kind: string; data: string }[] };
      assert.equal(cam.items[0]!.kind, 'image');
      assert.deepEqual(Buffer.from(cam.items[0]!.data, 'base64'), png);
      await assert.rejects(monitor.uploadSample({ pipeline: 'nope' }), /NOT_FOUND|no inputs kept/);
      await assert.rejects(monitor.uploadSample({ max: 3 }), (e: Error & { code?: string }) => e.code === 'BAD_INPUT');
      await monitor.stop();
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
