/**
 * The model registry: accepts a manifest, then its artifact; checks the bytes against the
 * manifest (size, sha256) while they stream in, checks the model against the manifest in a
 * guarded child process (model-probe.ts), and only then signs the release with the active key
 * and stores it with the next release counter (one transaction, store.createModelRelease).
 * Serves released artifacts and the trusted public keys.
 *
 * A v2 manifest may keep its test vectors in a sidecar (`testVectorsFile`, an .npz: a 640×640
 * model's vectors do not fit a JSON manifest). The sidecar is a second artifact of the release:
 * PUT to .../vectors after the manifest and before the model, checked against the manifest's
 * size and sha256 as it streams in, stored content-addressed beside the models, run by the
 * probe with the inline vectors, and served to devices like the model (they validate with it
 * too). The model PUT is refused until the sidecar is there.
 *
 * Upload in two steps (POST manifest, PUT artifact) rather than one request with the manifest
 * in a header: manifests with test vectors and drift bins are ~100 KB (part-defect), beyond
 * Node's 16 KB header limit and most proxies'; and multipart would mean parsing a framed body
 * instead of streaming raw bytes straight to disk. The manifest arrives first, so the artifact
 * stream is checked against a known size and hash as it arrives and cut off at the first byte
 * too many; a pending manifest lives in the store, so the PUT can be retried (or go to another
 * hub worker) without re-posting it.
 */
import type { Readable } from 'node:stream';
import { Counter, Histogram, type Registry } from 'prom-client';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';
import { signRelease, type TrustedKey } from '../../shared/signing.ts';
import type { HubStore, ModelRecord } from '../store/store.ts';
import { ArtifactStore, SHA256_RE, type ArtifactInfo } from './artifact-store.ts';
import { assertNoProblems, probeModel, type ProbeLimits } from '../../shared/validate/model-probe.ts';
import type { KeyRing } from './signing-keys.ts';

export interface ModelRegistryOptions {
  store: HubStore;
  keys: KeyRing;
  artifacts: ArtifactStore;
  probe: ProbeLimits;
  maxArtifactBytes: number;
  log: Logger;
  registry: Registry;
  now?: () => number;
}

export interface PendingModel {
  name: string;
  version: string;
  sha256: string;
  size: number;
  /** The manifest's test-vector sidecar, to PUT before the model. */
  testVectors?: { file: string; sha256: string; size: number };
}

export class ModelRegistry implements Component {
  readonly name = 'models';
  readonly #o: ModelRegistryOptions;
  readonly #now: () => number;
  /** Probes run one at a time: each is a Node process plus an ORT session on a small box. */
  #probeChain: Promise<unknown> = Promise.resolve();
  readonly #uploads: Counter<'result'>;
  readonly #probeSeconds: Histogram;

  constructor(opts: ModelRegistryOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#uploads = new Counter({
      name: 'edgefleet_hub_model_uploads_total',
      help: 'Model artifact uploads by result (released, rejected code)',
      labelNames: ['result'],
      registers: [opts.registry],
    });
    this.#probeSeconds = new Histogram({
      name: 'edgefleet_hub_model_probe_seconds',
      help: 'Time to load and check an uploaded model in the probe child process',
      buckets: [0.25, 0.5, 1, 2, 5, 10, 30, 60],
      registers: [opts.registry],
    });
  }

  async start(_signal: AbortSignal): Promise<void> {
    await this.#o.keys.load();
    await this.#o.artifacts.init();
    this.#o.log.info({ keyId: this.#o.keys.active.keyId, trusted: this.#o.keys.trusted.map((k) => k.keyId) }, 'model registry ready');
  }

  async stop(): Promise<void> {
    // Let a running probe finish (it is bounded by its own timeout) so no child outlives the hub.
    await this.#probeChain.catch(() => undefined);
  }

  trustedKeys(): { active: string; keys: readonly TrustedKey[] } {
    return { active: this.#o.keys.active.keyId, keys: this.#o.keys.trusted };
  }

  /** Step 1: validates a manifest and records it as waiting for its artifact. */
  async announce(raw: unknown): Promise<PendingModel> {
    const parsed = ManifestSchema.safeParse(raw);
    if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `manifest: ${formatIssues(parsed.error)}`);
    const m = parsed.data;
    if (m.artifact.size > this.#o.maxArtifactBytes) {
      throw new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `artifact of ${m.artifact.size} bytes exceeds the hub's limit of ${this.#o.maxArtifactBytes}`);
    }
    if (m.manifestVersion === 2 && m.testVectorsFile && m.testVectorsFile.size > this.#o.maxArtifactBytes) {
      throw new EdgefleetError(ErrorCode.PAYLOAD_TOO_LARGE, `test vectors file of ${m.testVectorsFile.size} bytes exceeds the hub's artifact limit of ${this.#o.maxArtifactBytes}`);
    }
    await this.#o.store.putPendingUpload({ name: m.name, version: m.version, manifest: JSON.stringify(m), createdAt: this.#now() });
    const tf = m.manifestVersion === 2 ? m.testVectorsFile : undefined;
    return { name: m.name, version: m.version, sha256: m.artifact.sha256, size: m.artifact.size, ...(tf ? { testVectors: { file: tf.file, sha256: tf.sha256, size: tf.size } } : {}) };
  }

  /**
   * Step 2: streams the artifact for an announced manifest, checks it, signs and stores the
   * release. Rejects NOT_FOUND (no manifest posted), CONFLICT (already released), BAD_INPUT
   * (size or sha256 differ), BAD_MODEL (the model does not load or does not match its manifest),
   * PROBE_FAILED (the probe itself could not run: nothing is known about the model, nothing is
   * stored, the manifest stays announced so the same PUT can be retried; issue #12).
   */
  async upload(name: string, version: string, body: Readable, contentLength?: number): Promise<ModelRecord> {
    try {
      const rec = await this.#upload(name, version, body, contentLength);
      this.#uploads.inc({ result: 'released' });
      return rec;
    } catch (err) {
      const e = toEdgefleetError(err);
      this.#uploads.inc({ result: e.code });
      throw e;
    }
  }

  /**
   * Between the two steps, for a manifest with a `testVectorsFile`: streams the sidecar into the
   * artifact store, checked against the manifest's size and sha256. Idempotent (same bytes, same
   * address). Rejects NOT_FOUND (no manifest posted, or it names no sidecar), CONFLICT (already
   * released), BAD_INPUT (size or sha256 differ).
   */
  async uploadTestVectors(name: string, version: string, body: Readable, contentLength?: number): Promise<{ sha256: string; size: number }> {
    const manifest = await this.#pendingManifest(name, version);
    const tf = manifest.manifestVersion === 2 ? manifest.testVectorsFile : undefined;
    if (!tf) throw new EdgefleetError(ErrorCode.NOT_FOUND, `the manifest of ${name}@${version} names no testVectorsFile`);
    if (contentLength !== undefined && contentLength !== tf.size) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `test vectors file has ${contentLength} bytes (Content-Length), the manifest says ${tf.size}`);
    }
    const staged = await this.#o.artifacts.stage(body, { sha256: tf.sha256, size: tf.size });
    await staged.commit();
    this.#o.log.info({ model: `${name}@${version}`, file: tf.file, sha256: tf.sha256, size: tf.size }, 'test vectors stored');
    return { sha256: tf.sha256, size: tf.size };
  }

  async #pendingManifest(name: string, version: string): Promise<Manifest> {
    if (await this.#o.store.getModel(name, version)) throw new EdgefleetError(ErrorCode.CONFLICT, `${name}@${version} is already released`);
    const pending = await this.#o.store.getPendingUpload(name, version);
    if (!pending) throw new EdgefleetError(ErrorCode.NOT_FOUND, `no manifest for ${name}@${version}: POST /v1/models first`);
    return ManifestSchema.parse(JSON.parse(pending.manifest));
  }

  async #upload(name: string, version: string, body: Readable, contentLength?: number): Promise<ModelRecord> {
    const manifest = await this.#pendingManifest(name, version);
    const { sha256, size } = manifest.artifact;
    const tf = manifest.manifestVersion === 2 ? manifest.testVectorsFile : undefined;
    const sidecar = tf ? await this.#o.artifacts.get(tf.sha256) : undefined;
    if (tf && sidecar?.size !== tf.size) {
      throw new EdgefleetError(ErrorCode.CONFLICT, `${name}@${version}: PUT its test vectors file ${tf.file} to /v1/models/${name}/${version}/vectors before the model`);
    }
    if (contentLength !== undefined && contentLength !== size) {
      throw new EdgefleetError(ErrorCode.BAD_INPUT, `artifact has ${contentLength} bytes (Content-Length), the manifest says ${size}`);
    }
    const staged = await this.#o.artifacts.stage(body, { sha256, size });
    try {
      const t0 = performance.now();
      const outcome = await this.#serialProbe(() => probeModel(staged.path, manifest, this.#o.probe, this.#o.log, sidecar?.path));
      this.#probeSeconds.observe((performance.now() - t0) / 1000);
      this.#o.log.info({ model: `${name}@${version}`, problems: outcome.problems.length, exit: outcome.exit, peakRssMiB: Math.round(outcome.peakRssBytes / 2 ** 20) }, 'model probed');
      assertNoProblems(outcome, `${name}@${version}`);
    } catch (err) {
      await staged.discard();
      const e = toEdgefleetError(err);
      // The API shows only the code of a 5xx; the operator finds the probe's own error here.
      if (e.code === ErrorCode.PROBE_FAILED) this.#o.log.error({ model: `${name}@${version}`, err: e }, 'model push not checked: the probe could not run (not the model)');
      throw e;
    }
    await staged.commit();
    const key = this.#o.keys.active;
    const createdAt = this.#now();
    const rec = await this.#o.store.createModelRelease(
      { name, version, sha256, size, manifest: JSON.stringify(manifest), createdAt },
      (counter) => {
        const signed = signRelease({ counter, manifest, createdAt: new Date(createdAt).toISOString() }, key);
        return { release: JSON.stringify(signed), keyId: key.keyId };
      },
    );
    this.#o.log.info({ model: `${name}@${version}`, counter: rec.counter, sha256, keyId: key.keyId }, 'model released');
    return rec;
  }

  #serialProbe<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#probeChain.then(fn, fn);
    this.#probeChain = run.catch(() => undefined);
    return run;
  }

  list(): Promise<ModelRecord[]> {
    return this.#o.store.listModels();
  }

  get(name: string, version: string): Promise<ModelRecord | undefined> {
    return this.#o.store.getModel(name, version);
  }

  /** A released artifact on disk; undefined for unknown, unreleased or missing files. */
  async artifact(sha256: string): Promise<ArtifactInfo | undefined> {
    if (!SHA256_RE.test(sha256)) return undefined;
    if (!(await this.#o.store.hasReleasedArtifact(sha256))) return undefined;
    return this.#o.artifacts.get(sha256);
  }

  readArtifact(sha256: string, range?: { start: number; end: number }): Readable {
    return this.#o.artifacts.read(sha256, range);
  }
}

/** The stored signed release envelope, parsed back for an API answer (the hub wrote it). */
export function storedRelease(rec: ModelRecord): unknown {
  return JSON.parse(rec.release);
}
