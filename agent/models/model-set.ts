/**
 * The set of models the agent serves. At start it opens every configured model (manifest,
 * size, sha256), loads it into the inference workers, checks the model's own input/output
 * metadata against the manifest and runs the manifest's test vectors. A model that fails any
 * check is refused with a clear error: the agent never serves a model it could not verify.
 *
 * Hot swap (issue #3): `swap()` loads and checks a new version under its own engine key while
 * the old one keeps serving, then switches the active version of the name in one synchronous
 * step. Requests hold a lease (`acquire`) from before preprocessing until their inference
 * returns, so the old version is unloaded only once no request still holds it: a request that
 * picked the old version finishes on it, and none sees NOT_FOUND from an unload in between.
 * Swaps of one name are serialised (a rollback queued behind an install waits for it).
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import { engineInput, modelSpec } from '../../shared/model-spec.ts';
import { toTensorData, type TensorData } from '../../shared/tensor.ts';
import { loadTestVectors } from '../../shared/test-vectors.ts';
import { access } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { InferenceEngine, InferInput } from '../runtime/engine.ts';
import { checkModelAgainstManifest } from '../runtime/session-check.ts';
import { openLocalModel, type LocalModel } from './local-models.ts';

/** A request's hold on one model version: the version is not unloaded before `release()`. */
export interface ModelLease {
  readonly model: LocalModel;
  /** Idempotent. */
  release(): void;
}

interface Slot {
  model: LocalModel;
  leases: number;
  /** Set once the slot is replaced: resolves when the last lease is released. */
  drained?: () => void;
}

/** How long a swap waits for requests on the old version before unloading it anyway. */
const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;

export class ModelSet implements Component {
  readonly name = 'models';
  readonly #active = new Map<string, Slot>();
  /** Tail of the swaps queued per model name. */
  readonly #swaps = new Map<string, Promise<unknown>>();

  /**
   * `manifests` is read at start: a function lets the updater decide first which installed
   * version each model name serves (agent/updater/updater.ts `startupManifests`).
   */
  constructor(private readonly opts: { manifests: readonly string[] | (() => readonly string[]); engine: InferenceEngine; log: Logger; drainTimeoutMs?: number }) {}

  async start(signal: AbortSignal): Promise<void> {
    const manifests = typeof this.opts.manifests === 'function' ? this.opts.manifests() : this.opts.manifests;
    for (const path of manifests) {
      if (signal.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'model loading aborted');
      const model = await openLocalModel(path, signal);
      if (this.#active.has(model.manifest.name)) {
        throw new EdgefleetError(ErrorCode.BAD_CONFIG, `two configured models are named ${model.manifest.name}`);
      }
      await this.activate(model);
    }
  }

  /** Loads, checks and verifies one model and makes it the active one of its name (start-up path). */
  async activate(model: LocalModel): Promise<void> {
    await this.#loadChecked(model);
    this.#active.set(model.manifest.name, { model, leases: 0 });
    this.opts.log.info({ model: model.key, quantization: model.manifest.quantization, sha256: model.manifest.artifact.sha256 }, 'model active');
  }

  /**
   * Replaces the active version of `model.manifest.name` with `model` (or adds the name): loads
   * and checks the new version while the old one serves, switches atomically, waits until no
   * request holds the old version, unloads it and returns it. Throws (BAD_MODEL, CONFLICT, ...)
   * with the old version still active and serving.
   */
  swap(model: LocalModel): Promise<LocalModel | undefined> {
    const name = model.manifest.name;
    const prior = this.#swaps.get(name) ?? Promise.resolve();
    const run = prior.catch(() => undefined).then(() => this.#swap(model));
    const tail = run.catch(() => undefined);
    this.#swaps.set(name, tail);
    void tail.then(() => {
      if (this.#swaps.get(name) === tail) this.#swaps.delete(name);
    });
    return run;
  }

  async #swap(model: LocalModel): Promise<LocalModel | undefined> {
    const name = model.manifest.name;
    const current = this.#active.get(name);
    if (current?.model.key === model.key) {
      throw new EdgefleetError(ErrorCode.CONFLICT, `${model.key} is already active`);
    }
    const t0 = performance.now();
    await this.#loadChecked(model);
    // The switch itself: one synchronous step, so every acquire() sees either version whole.
    const next: Slot = { model, leases: 0 };
    this.#active.set(name, next);
    this.opts.log.info({ model: model.key, previous: current?.model.key, sha256: model.manifest.artifact.sha256 }, 'model swapped in');
    if (!current) return undefined;
    await this.#drain(current);
    await this.opts.engine.unload(current.model.key).catch((err: unknown) => {
      this.opts.log.warn({ model: current.model.key, err }, 'unloading the replaced model failed');
    });
    this.opts.log.info({ model: current.model.key, ms: Math.round(performance.now() - t0) }, 'replaced model unloaded');
    return current.model;
  }

  #drain(slot: Slot): Promise<void> {
    if (slot.leases === 0) return Promise.resolve();
    const timeoutMs = this.opts.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        // A request stuck this long is the engine's to fail (unload waits for its queue anyway).
        this.opts.log.warn({ model: slot.model.key, leases: slot.leases, timeoutMs }, 'requests still hold the replaced model; unloading it anyway');
        resolve();
      }, timeoutMs);
      slot.drained = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /**
   * The active version of `name`, held until `release()`: it stays loaded until then even if a
   * swap replaces it. Undefined when no version of `name` is active.
   */
  acquire(name: string): ModelLease | undefined {
    const slot = this.#active.get(name);
    if (!slot) return undefined;
    slot.leases++;
    let released = false;
    return {
      model: slot.model,
      release: () => {
        if (released) return;
        released = true;
        slot.leases--;
        if (slot.leases === 0 && slot.drained) slot.drained();
      },
    };
  }

  /** Loads, checks and verifies one model; on any failure it is unloaded again. */
  async #loadChecked(model: LocalModel): Promise<void> {
    const { engine } = this.opts;
    const handle = await engine.load(model.key, model.onnxPath, model.manifest.manifestVersion === 2 ? { primaryInput: engineInput(modelSpec(model.manifest)) } : {});
    try {
      const mismatches = checkModelAgainstManifest(handle, model.manifest);
      if (mismatches.length) {
        throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key} does not match its manifest: ${mismatches.join('; ')}`);
      }
      await this.runTestVectors(model);
    } catch (err) {
      await engine.unload(model.key).catch(() => undefined);
      throw err;
    }
  }

  async runTestVectors(model: LocalModel): Promise<void> {
    const spec = modelSpec(model.manifest);
    const primary = engineInput(spec);
    const m = model.manifest;
    // Inline vectors, and for a v2 manifest with a sidecar its .npz beside the manifest (size and
    // sha256 checked against the manifest before it is parsed).
    const cases: { inputs: Record<string, { dims: number[]; data: TensorData }>; expected: Record<string, { data: ArrayLike<number> }>; tolerance: number }[] =
      m.manifestVersion === 2 && m.testVectorsFile && (await this.#sidecarPresent(model, m.testVectorsFile.file))
        ? await loadTestVectors(m, dirname(model.manifestPath))
        : spec.testVectors.map((tv) => ({
            inputs: Object.fromEntries(
              Object.entries(tv.inputs).map(([name, t]) => [name, { dims: t.dims, data: toTensorData((spec.inputs.find((x) => x.name === name)?.dtype ?? 'float32'), t.values) }]),
            ),
            expected: Object.fromEntries(Object.entries(tv.expected).map(([name, t]) => [name, { data: t.values }])),
            tolerance: tv.tolerance,
          }));
    for (const [i, tv] of cases.entries()) {
      const feed = (name: string): { data: InferInput['data']; dims: number[] } => {
        const t = tv.inputs[name];
        if (!t) throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key}: test vector ${i} has no input ${name}`);
        return { data: t.data, dims: t.dims };
      };
      const req: InferInput = feed(primary);
      const others = spec.inputs.filter((x) => x.name !== primary);
      if (others.length) req.extra = Object.fromEntries(others.map((x) => [x.name, feed(x.name)]));
      const res = await this.opts.engine.infer(model.key, req);
      for (const [name, want] of Object.entries(tv.expected)) {
        const out = res.outputs[name];
        if (!out) throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key}: no output ${name}`);
        if (out.data.length !== want.data.length) {
          throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key}: test vector ${i} gave ${out.data.length} values, expected ${want.data.length}`);
        }
        for (let k = 0; k < want.data.length; k++) {
          const diff = Math.abs((out.data[k] as number) - (want.data[k] as number));
          if (!(diff <= tv.tolerance)) {
            throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key}: test vector ${i} output ${name} element ${k} is ${out.data[k]}, expected ${want.data[k]} ± ${tv.tolerance}`);
          }
        }
      }
    }
  }

  /**
   * Releases from the hub carry the manifest and the model, not the .npz sidecar (the hub's probe
   * checks the inline vectors only): an installed version without it runs its inline vectors,
   * said in the log. A sidecar that is there must match the manifest.
   */
  async #sidecarPresent(model: LocalModel, file: string): Promise<boolean> {
    try {
      await access(join(dirname(model.manifestPath), file));
      return true;
    } catch {
      this.opts.log.warn({ model: model.key, file }, 'test vectors sidecar not beside the manifest: only inline test vectors are run');
      return false;
    }
  }

  byName(name: string): LocalModel | undefined {
    return this.#active.get(name)?.model;
  }

  active(): LocalModel[] {
    return [...this.#active.values()].map((s) => s.model);
  }

  stop(): Promise<void> {
    this.#active.clear();
    return Promise.resolve();
  }
}
