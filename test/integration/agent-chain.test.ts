/**
 * A chain configured the way an operator configures it (issue #13): a real agent (createAgent,
 * real hub in-process, config file) with `pipelines[].chain`, serving the openWakeWord mel →
 * embedding → head models (npm-packed into the test cache) over its local HTTP API. The agent
 * must hand the pipeline its chain models (main.ts) and refuse a chain whose stages do not fit.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { tmpdir } from 'node:os';
import { after, before, describe, test } from 'node:test';
import { ManifestV2Schema, type ManifestV2 } from '../../shared/manifest.ts';
import { bareSession, OWW, speechLike, wakewordChain, type BareSession } from '../helpers/third-party-manifests.ts';
import { ensureThirdPartyModels, type ThirdPartyModel } from '../helpers/third-party-models.ts';
import { InProcessFleet } from '../helpers/fleet-in-process.ts';

const fetched = await ensureThirdPartyModels();
const skip = fetched.available ? false : (fetched.reason ?? 'third-party models unavailable');

void describe('agent: a configured chain', { skip }, () => {
  const fleet = new InProcessFleet();
  let dir: string;
  const sessions: BareSession[] = [];
  const manifests: Record<string, string> = {};

  async function place(m: ManifestV2, model: ThirdPartyModel): Promise<string> {
    const d = await mkdtemp(join(dir, `${m.name}-`));
    await symlink(model.path, join(d, basename(model.path)));
    const path = join(d, 'manifest.json');
    await writeFile(path, JSON.stringify(ManifestV2Schema.parse({ ...m, artifact: { ...m.artifact, file: basename(model.path) } })));
    return path;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'edgefleet-agent-chain-'));
    const models = { mel: fetched.models['oww-melspectrogram']!, embedding: fetched.models['oww-embedding']!, head: fetched.models['oww-hey-jarvis']! };
    for (const m of Object.values(models)) sessions.push(await bareSession(m.path));
    const [mel, emb, head] = sessions as [BareSession, BareSession, BareSession];
    const built = await wakewordChain(models, { mel: mel.run, embedding: emb.run, head: head.run });
    const [toEmb, toHead] = built.links;
    const frames = (m: ManifestV2, f: { size: number; hop: number }, affine?: { scale: number; offset: number }): ManifestV2 =>
      ManifestV2Schema.parse({ ...m, inputs: m.inputs.map((i) => (i.source.kind === 'upstream' ? { ...i, source: { ...i.source, frames: f.size, hop: f.hop, ...affine } } : i)) });
    manifests['mel'] = await place(built.stages.mel, models.mel);
    manifests['embedding'] = await place(frames(built.stages.embedding, toEmb.frames, OWW.melTransform), models.embedding);
    manifests['head'] = await place(frames(built.stages.head, toHead.frames), models.head);
    await fleet.startHub();
  });

  after(async () => {
    await fleet.stop();
    for (const s of sessions) await s.release();
    await rm(dir, { recursive: true, force: true });
  });

  test('HTTP readings through mel → embedding → head: buffered until the windows fill, then the head\'s score with the chain listed', async () => {
    const agent = await fleet.startAgent('kws-1', {
      models: [{ manifest: manifests['mel'] }, { manifest: manifests['embedding'] }, { manifest: manifests['head'] }],
      pipelines: [{ name: 'kws', model: 'oww-melspectrogram', chain: ['oww-embedding', 'oww-hey-jarvis'], input: { type: 'mqtt', format: 'json' } }],
    });
    const audio = speechLike(30 * OWW.chunk, 7);
    const post = async (body: unknown): Promise<Record<string, unknown>> => {
      const res = await fetch(`http://127.0.0.1:${agent.httpPort}/v1/infer/kws`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
      assert.equal(res.status, 200, await res.clone().text());
      return (await res.json()) as Record<string, unknown>;
    };
    const samples = (x: Float32Array): number[][] => Array.from(x, (v) => [v]);
    assert.equal((await post({ stream: 'mic', ts: 1, samples: samples(new Float32Array(OWW.melContext)) }))['buffered'], true);
    let last: Record<string, unknown> = {};
    let scored = 0;
    for (let k = 0; k < 30; k++) {
      last = await post({ stream: 'mic', ts: 31 + k * 80, samples: samples(audio.subarray(k * OWW.chunk, (k + 1) * OWW.chunk)) });
      if (last['buffered'] !== true) scored++;
    }
    assert.equal(scored, 30 - 24, 'the head scores from chunk 25 on');
    assert.equal(last['task'], 'anomaly');
    assert.equal((last['model'] as { name: string }).name, 'oww-hey-jarvis');
    assert.deepEqual((last['chain'] as { name: string }[]).map((c) => c.name), ['oww-melspectrogram', 'oww-embedding', 'oww-hey-jarvis']);
    assert.equal(typeof last['score'], 'number');
  });

  test('a chain whose stages do not fit is refused at start with BAD_CONFIG naming the mismatch', async () => {
    // Each manifest is true to its model; the head straight after mel (no embedding) is not a chain.
    await assert.rejects(
      fleet.startAgent('kws-2', {
        models: [{ manifest: manifests['mel'] }, { manifest: manifests['head'] }],
        pipelines: [{ name: 'kws', model: 'oww-melspectrogram', chain: ['oww-hey-jarvis'], input: { type: 'mqtt', format: 'json' } }],
      }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'BAD_CONFIG', err.message);
        assert.match(err.message, /the chain oww-melspectrogram → oww-hey-jarvis cannot run: .*takes output conv2d_19, which oww-melspectrogram@0.1.1 does not have \(output\)/);
        return true;
      },
    );
  });
});
