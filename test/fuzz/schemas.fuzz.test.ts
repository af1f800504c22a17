/**
 * Fuzz (issue #6): every decoder the hub and the agent run on untrusted bytes, fed mutated valid
 * samples, mutated JSON text, random bytes, random JSON and deep nesting, for a time budget
 * (FUZZ_SECONDS, default 7). The contract: a decoder either accepts or refuses with an
 * EdgefleetError of an input code (BAD_PAYLOAD, PAYLOAD_TOO_LARGE, BAD_INPUT); it never throws
 * anything else and never hangs. Accepted values also go through what the receiver does next
 * with them (the store's JSON.stringify of a record body, tabular preprocessing, drift merge,
 * health totals), which must hold the same contract.
 *
 * The decoders are the real entry points: shared/codec.ts decodeJson with the schemas hub
 * ingest (telemetry, hello, status, cmd/result), hub feedback, and the agent link (ack, cmd) and
 * pipeline (readings) use; the safeParse calls on record bodies (health windows, model events,
 * drift summaries) and command args (install, rollback); manifests; verifyRelease. The agent's
 * hand-written fast path for readings (fastReading) is also checked against ReadingSchema: it
 * may decline, but what it accepts the schema must accept with the same value.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { isDeepStrictEqual } from 'node:util';
import assert from 'node:assert/strict';
import type { z } from 'zod';
import { fastReading } from '../../agent/pipeline.ts';
import { preprocessTabular, ReadingSchema } from '../../agent/preprocess/tabular.ts';
import { FeedbackBatchSchema } from '../../hub/feedback/feedback.ts';
import { decodeJson, formatIssues, MAX_JSON_DEPTH, nestedDeeperThan, type Decoded } from '../../shared/codec.ts';
import { alignWindow, DriftSummarySchema, OUTPUT_BINS, type DriftSummary } from '../../shared/drift/summary.ts';
import { addSummary, emptyAggregate } from '../../shared/drift/merge.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { addHealth, emptyTotals, latencyQuantileMs, meanConfidence } from '../../shared/health.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { AckSchema, CommandResultSchema, CommandSchema, HelloSchema, MAX_PAYLOAD_BYTES, StatusSchema, TelemetryBatchSchema } from '../../shared/protocol.ts';
import { generateSigningKey, signRelease, verifyRelease } from '../../shared/signing.ts';
import { CONFIDENCE_BINS, HealthWindowSchema, InstallArgsSchema, LATENCY_EDGES_MS, ModelEventSchema, RollbackArgsSchema } from '../../shared/updates.ts';
import { MODELS_DIR } from '../helpers/fleet-in-process.ts';
import { v1 } from '../helpers/manifest-v1.ts';
import { deepJsonText, deepValue, fuzzBudgetMs, fuzzRun, jsonText, mutateBytes, mutateJson, mutateText, randomBytes, randomJson, rngFor, summaryLine, type Rng } from './gen.ts';

/** Default time budget of this file in `npm test` (FUZZ_SECONDS overrides). */
const SECONDS = 7;

const INPUT_CODES: ReadonlySet<string> = new Set([ErrorCode.BAD_PAYLOAD, ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.BAD_INPUT, ErrorCode.BAD_MANIFEST]);
/** What the receiver's next step may refuse with: input errors, and a layout CONFLICT on merge. */
const AFTER_CODES: ReadonlySet<string> = new Set([...INPUT_CODES, ErrorCode.CONFLICT]);
/** Not a timing assert: an input taking this long is a hang (a regex or loop gone quadratic). */
const HANG_MS = 5000;

const manifest = JSON.parse(readFileSync(join(MODELS_DIR, 'machine-state.manifest.json'), 'utf8')) as Manifest;
const preprocessing = v1(manifest).preprocessing;
const tabularSpec = preprocessing.kind === 'tabular' ? preprocessing : assert.fail('machine-state is tabular');
const key = generateSigningKey();
const signed = signRelease({ counter: 3, manifest, createdAt: '2026-01-02T03:04:05.000Z', target: { group: 'line-1' } }, key);
const trusted = [{ keyId: key.keyId, publicKeyPem: key.publicKeyPem }];

const bins = (n: number, total: number): number[] => Array.from({ length: n }, (_, i) => (i === 0 ? total : 0));
const drift: DriftSummary = {
  v: 1,
  summaryId: 'dev-1:1',
  deviceId: 'dev-1',
  model: { name: 'machine-state', version: '1.0.0' },
  windowStart: 120_000,
  windowMs: 60_000,
  count: 4,
  numeric: [{ name: 'vib_rms', counts: [1, 2, 1], nan: 0, sum: 10, sumSq: 30, min: 1, max: 4 }],
  categorical: [{ name: 'line', counts: { a: 3, b: 1 } }],
  outputs: { classCounts: [3, 1], confidence: bins(OUTPUT_BINS, 4), margin: bins(OUTPUT_BINS, 4), entropy: bins(OUTPUT_BINS, 4) },
};
const health = {
  model: 'machine-state',
  version: '1.0.0',
  windowStart: 60_000,
  windowMs: 60_000,
  ok: 10,
  errors: 1,
  latency: bins(LATENCY_EDGES_MS.length + 1, 10),
  classCounts: [7, 3],
  confidence: bins(CONFIDENCE_BINS, 10),
  cpuMs: 12.5,
};
const modelEvent = { event: 'installed', name: 'machine-state', version: '1.1.0', counter: 3, rolloutId: 'r1', previous: { version: '1.0.0', counter: 0, sha256: 'a'.repeat(64) }, durationMs: 1200 };

interface Target {
  name: string;
  samples: unknown[];
  /** What the receiver does with untrusted bytes: refuse with an input error, or accept. */
  decode(payload: Buffer): Decoded<unknown>;
  /** What the receiver then does with an accepted value; may throw input errors only. */
  after?(value: unknown): void;
}

/** A decoder for a safeParse site (record bodies, command args), as its caller treats it. */
function viaSafeParse(schema: z.ZodType) {
  return (payload: Buffer): Decoded<unknown> => {
    let raw: unknown;
    try {
      raw = JSON.parse(payload.toString('utf8'));
    } catch (err) {
      return { ok: false, error: new EdgefleetError(ErrorCode.BAD_PAYLOAD, `malformed JSON: ${(err as Error).message}`) };
    }
    const p = schema.safeParse(raw);
    return p.success ? { ok: true, value: p.data } : { ok: false, error: new EdgefleetError(ErrorCode.BAD_PAYLOAD, formatIssues(p.error)) };
  };
}

const json = (schema: z.ZodType) => (p: Buffer): Decoded<unknown> => decodeJson(schema, p, MAX_PAYLOAD_BYTES);

const targets: Target[] = [
  {
    name: 'telemetry',
    samples: [
      {
        v: 1,
        type: 'telemetry',
        deviceId: 'dev-1',
        batchId: 'b-1',
        records: [
          { stream: 'inference', epoch: 1, seq: 0, ts: 1_700_000_000_000, kind: 'inference', body: { id: 'x', model: 'machine-state', label: 'ok', scores: [0.9, 0.1] } },
          { stream: 'health', epoch: 1, seq: 1, ts: 1_700_000_000_001, kind: 'health', body: health },
          { stream: 'drift', epoch: 1, seq: 2, ts: 1_700_000_000_002, kind: 'drift', body: drift },
        ],
      },
    ],
    decode: json(TelemetryBatchSchema),
    // The store keeps each record body as JSON text (hub/store/sqlite-store.ts).
    after: (v) => {
      for (const r of (v as z.infer<typeof TelemetryBatchSchema>).records) storableJson(r.body);
    },
  },
  {
    name: 'hello',
    samples: [
      {
        v: 1,
        type: 'hello',
        deviceId: 'dev-1',
        ts: 1,
        agentVersion: '0.1.0',
        bootEpoch: 3,
        models: [{ name: 'machine-state', version: '1.0.0' }],
        streams: [{ stream: 'inference', epoch: 3, nextSeq: 10, pending: 2 }],
        modelState: [{ name: 'machine-state', active: { version: '1.0.0', counter: 0, sha256: 'b'.repeat(64) }, highestCounter: 0, failed: [] }],
      },
    ],
    decode: json(HelloSchema),
  },
  { name: 'status', samples: [{ v: 1, type: 'status', deviceId: 'dev-1', ts: 5, state: 'offline', bootEpoch: 2 }], decode: json(StatusSchema) },
  {
    name: 'cmd_result',
    samples: [
      { v: 1, type: 'command_result', id: 'c1', ts: 1, ok: true, result: { name: 'machine-state', version: '1.1.0', counter: 3, state: 'active' } },
      { v: 1, type: 'command_result', id: 'c2', ts: 1, ok: false, error: { code: 'BAD_SIGNATURE', message: 'no' } },
    ],
    decode: json(CommandResultSchema),
  },
  { name: 'feedback', samples: [{ v: 1, feedback: [{ id: 'inf-1', label: 'ok', ts: 3 }, { id: 'inf-2', label: 'bearing' }] }], decode: json(FeedbackBatchSchema) },
  {
    name: 'ack',
    samples: [{ v: 1, type: 'ack', batchId: 'b-1', ok: true, ranges: [{ stream: 'inference', epoch: 1, from: 0, to: 9 }], stored: 10, duplicates: 0 }],
    decode: json(AckSchema),
  },
  {
    name: 'command',
    samples: [
      { v: 1, type: 'command', id: 'c1', ts: 1, name: 'model.install', args: { release: signed, artifactPath: `/v1/artifacts/${'c'.repeat(64)}`, rolloutId: 'r1', probationMs: 1000 } },
      { v: 1, type: 'command', id: 'c2', ts: 1, name: 'model.rollback', args: { name: 'machine-state', version: '1.1.0', reason: 'gate' } },
    ],
    decode: json(CommandSchema),
  },
  {
    name: 'install_args',
    samples: [{ release: signed, artifactPath: `/v1/artifacts/${'c'.repeat(64)}`, rolloutId: 'r1', probationMs: 1000 }],
    decode: viaSafeParse(InstallArgsSchema),
    // The agent verifies the release inside the args; verifyRelease never throws.
    after: (v) => void verifyRelease((v as { release: unknown }).release, trusted, { minCounter: 1 }),
  },
  { name: 'rollback_args', samples: [{ name: 'machine-state', version: '1.1.0', reason: 'gate', rolloutId: 'r1' }], decode: viaSafeParse(RollbackArgsSchema) },
  {
    name: 'reading',
    samples: [{ id: 'r1', ts: 5, values: [3.5, 14, 4, 3.7, 2.2, 2, 1.7, 56] }, { features: Object.fromEntries(tabularSpec.features.map((f) => [f.name, f.mean])) }],
    decode: (p) => decodeJson(ReadingSchema, p, 64 * 1024),
    after: (v) => void preprocessTabular(tabularSpec, v as z.infer<typeof ReadingSchema>),
  },
  {
    name: 'health_window',
    samples: [health],
    decode: viaSafeParse(HealthWindowSchema),
    after: (v) => {
      const t = addHealth(emptyTotals(2), v as z.infer<typeof HealthWindowSchema>);
      latencyQuantileMs(t, 0.95);
      meanConfidence(t);
    },
  },
  { name: 'model_event', samples: [modelEvent], decode: viaSafeParse(ModelEventSchema) },
  {
    name: 'drift_summary',
    samples: [drift],
    decode: viaSafeParse(DriftSummarySchema),
    after: (v) => {
      const s = v as DriftSummary;
      // Merged into an aggregate laid out like the valid sample, as the hub's aggregator does
      // with the first summary of a window: a different layout is a CONFLICT refusal.
      const hour = 3_600_000;
      addSummary(emptyAggregate(drift, { scope: 'device', id: s.deviceId, windowStart: alignWindow(s.windowStart, hour), windowMs: hour }), s);
    },
  },
  { name: 'manifest', samples: [manifest], decode: viaSafeParse(ManifestSchema) },
  {
    name: 'signed_release',
    samples: [signed],
    decode: (p) => {
      let raw: unknown;
      try {
        raw = JSON.parse(p.toString('utf8'));
      } catch (err) {
        return { ok: false, error: new EdgefleetError(ErrorCode.BAD_PAYLOAD, (err as Error).message) };
      }
      const r = verifyRelease(raw, trusted, { minCounter: 1 });
      return r.ok ? { ok: true, value: r.release } : { ok: false, error: new EdgefleetError(ErrorCode.BAD_MANIFEST, `${r.code}: ${r.message}`) };
    },
  },
];

/** The store's JSON.stringify of a record body, with a stack overflow reported as an input error. */
function storableJson(body: unknown): string {
  return JSON.stringify(body);
}

/** One fuzz input for a target: the bytes, and how they were made (for the failure message). */
function nextInput(t: Target, rng: Rng): { how: string; payload: Buffer } {
  const sample = rng.pick(t.samples);
  const r = rng.int(20);
  if (r < 10) return { how: 'mutateJson', payload: Buffer.from(jsonText(mutateJson(sample, rng))) };
  if (r < 15) return { how: 'mutateText', payload: Buffer.from(mutateText(jsonText(sample), rng)) };
  if (r < 17) return { how: 'mutateBytes', payload: mutateBytes(Buffer.from(jsonText(sample)), rng) };
  if (r < 18) return { how: 'randomJson', payload: Buffer.from(jsonText(randomJson(rng, 5))) };
  if (r < 19) return { how: 'randomBytes', payload: randomBytes(rng, rng.int(512)) };
  // Deep nesting where the schema takes anything (record bodies, command args, results).
  const depth = rng.pick([1000, 50_000, 200_000]);
  const deep = deepJsonText(depth, rng.next() < 0.5 ? 'array' : 'object');
  const text = jsonText(sample).replace(/"(body|args|result|release)":\{/, `"$1":{"deep":${deep},`);
  return { how: `deep${depth}`, payload: Buffer.from(text) };
}

describe('fuzz: message schemas and decoders', () => {
  test('regression: a record body nested 50,000 deep is refused at decode, not left to overflow the store', () => {
    // Found by this suite: TelemetryBatchSchema took it (bodies are free-form), then the store's
    // JSON.stringify threw RangeError, and the hub acked the batch as a store failure forever.
    const batch = jsonText(targets[0]!.samples[0]).replace('"body":{', `"body":{"deep":${deepJsonText(50_000, 'object')},`);
    const d = decodeJson(TelemetryBatchSchema, batch, MAX_PAYLOAD_BYTES);
    assert.equal(d.ok, false);
    assert.equal(d.ok ? undefined : d.error.code, ErrorCode.BAD_PAYLOAD);
    assert.match(d.ok ? '' : d.error.message, /nested deeper than 64/);
    // The limit is exact: 64 nested containers pass, 65 do not.
    assert.equal(nestedDeeperThan(deepValue(MAX_JSON_DEPTH, 'object'), MAX_JSON_DEPTH), false);
    assert.equal(nestedDeeperThan(deepValue(MAX_JSON_DEPTH + 1, 'array'), MAX_JSON_DEPTH), true);
    // A protocol message with some nesting in a body still passes.
    const ok = jsonText(targets[0]!.samples[0]).replace('"body":{', `"body":{"deep":${deepJsonText(50, 'array')},`);
    assert.equal(decodeJson(TelemetryBatchSchema, ok, MAX_PAYLOAD_BYTES).ok, true);
  });

  test('every decoder accepts or refuses with an input error, never throws, never hangs', { timeout: fuzzBudgetMs(SECONDS) + 120_000 }, () => {
    const { seed, budget, out, mem } = fuzzRun(SECONDS);
    const rng = rngFor(seed);
    const perTarget = new Map<string, { accepted: number; refused: number }>();
    const crashes: string[] = [];
    let slowest = 0;
    let slowestInput = '';

    // Every sample must decode: a stale sample would make the mutations test nothing.
    for (const t of targets) {
      for (const s of t.samples) {
        const d = t.decode(Buffer.from(jsonText(s)));
        assert.ok(d.ok, `${t.name} sample must be valid: ${d.ok ? '' : d.error.message}`);
        t.after?.(d.value);
      }
    }
    // The fast reading path and ReadingSchema agree on valid samples too.
    assert.deepEqual(fastReading({ id: 'a', ts: 1, values: [1, 2] }), ReadingSchema.parse({ id: 'a', ts: 1, values: [1, 2] }));

    const t0 = Date.now();
    // The seed is printed even when the generator itself throws, so the run reproduces.
    try {
    while (Date.now() - t0 < budget) {
      const t = rng.pick(targets);
      const { how, payload } = nextInput(t, rng);
      out.inputs++;
      const stats = perTarget.get(t.name) ?? { accepted: 0, refused: 0 };
      perTarget.set(t.name, stats);
      const started = performance.now();
      try {
        const d = t.decode(payload);
        if (d.ok) {
          t.after?.(d.value);
          stats.accepted++;
          out.count('accepted');
        } else {
          assert.ok(d.error instanceof EdgefleetError && INPUT_CODES.has(d.error.code), `refusal must be an input error, got ${String(d.error)}`);
          stats.refused++;
          out.count('refused');
        }
      } catch (err) {
        if (err instanceof EdgefleetError && AFTER_CODES.has(err.code)) {
          stats.refused++;
          out.count('refused_after_decode');
        } else {
          out.count('crash');
          if (crashes.length < 10) crashes.push(`${t.name} ${how}: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)} input=${payload.subarray(0, 200).toString('utf8')}`);
        }
      }
      const took = performance.now() - started;
      if (took > slowest) {
        slowest = took;
        slowestInput = `${t.name}/${how}/${payload.length}B`;
      }

      // Differential: what the agent's fast path accepts, ReadingSchema accepts identically.
      if (t.name === 'reading') {
        let raw: unknown;
        try {
          raw = JSON.parse(payload.toString('utf8'));
        } catch {
          continue;
        }
        const fast = fastReading(raw);
        if (fast) {
          const slow = ReadingSchema.safeParse(raw);
          if (!slow.success || !isDeepStrictEqual(fast, slow.data)) {
            out.count('crash');
            crashes.push(`fastReading accepted what ReadingSchema ${slow.success ? 'parses differently' : 'refuses'}: ${payload.subarray(0, 200).toString('utf8')}`);
          } else out.count('fast_path_agreed');
        }
      }
    }
    } catch (err) {
      console.log(`fuzz schemas: seed=${seed} failed after ${out.inputs} inputs`);
      throw err;
    }
    mem.stop();
    const accepted = [...perTarget.entries()].map(([k, v]) => `${k}:${v.accepted}/${v.accepted + v.refused}`).join(',');
    summaryLine('schemas', { seed, inputs: out.inputs, crashes: out.get('crash'), slowest_ms: Math.round(slowest), slowest_input: slowestInput, peak_rss: `${mem.peakRssMB}MB`, peak_heap: `${mem.peakHeapMB}MB`, accepted_by_target: accepted }, out);
    assert.deepEqual(crashes, [], `seed=${seed}`);
    assert.ok(slowest < HANG_MS, `an input took ${Math.round(slowest)} ms (seed=${seed})`);
    // Every target got inputs, and the mutations both passed and failed schemas.
    assert.equal(perTarget.size, targets.length);
    assert.ok(out.get('accepted') > 0 && out.get('refused') > 0);
  });
});

