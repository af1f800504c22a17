/**
 * The set of models the agent serves. At start it opens every configured model (manifest,
 * size, sha256), loads it into the inference workers, checks the model's own input/output
 * metadata against the manifest and runs the manifest's test vectors. A model that fails any
 * check is refused with a clear error: the agent never serves a model it could not verify.
 */
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import type { InferenceEngine } from '../runtime/engine.ts';
import { checkModelAgainstManifest } from '../runtime/session-check.ts';
import { openLocalModel, type LocalModel } from './local-models.ts';

export class ModelSet implements Component {
  readonly name = 'models';
  readonly #active = new Map<string, LocalModel>();

  constructor(private readonly opts: { manifests: readonly string[]; engine: InferenceEngine; log: Logger }) {}

  async start(signal: AbortSignal): Promise<void> {
    for (const path of this.opts.manifests) {
      if (signal.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'model loading aborted');
      const model = await openLocalModel(path, signal);
      if (this.#active.has(model.manifest.name)) {
        throw new EdgefleetError(ErrorCode.BAD_CONFIG, `two configured models are named ${model.manifest.name}`);
      }
      await this.activate(model);
    }
  }

  /** Loads, checks and verifies one model; on any failure it is unloaded again. */
  async activate(model: LocalModel): Promise<void> {
    const { engine, log } = this.opts;
    const handle = await engine.load(model.key, model.onnxPath);
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
    this.#active.set(model.manifest.name, model);
    log.info({ model: model.key, quantization: model.manifest.quantization, sha256: model.manifest.artifact.sha256 }, 'model active');
  }

  async runTestVectors(model: LocalModel): Promise<void> {
    for (const [i, tv] of model.manifest.testVectors.entries()) {
      const res = await this.opts.engine.infer(model.key, { data: Float32Array.from(tv.input), dims: tv.shape });
      const out = res.outputs[model.manifest.outputs[0]!.name];
      if (!out) throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key}: no output ${model.manifest.outputs[0]!.name}`);
      if (out.data.length !== tv.expected.length) {
        throw new EdgefleetError(ErrorCode.BAD_MODEL, `${model.key}: test vector ${i} gave ${out.data.length} values, expected ${tv.expected.length}`);
      }
      for (let k = 0; k < tv.expected.length; k++) {
        const diff = Math.abs((out.data[k] as number) - (tv.expected[k] as number));
        if (!(diff <= tv.tolerance)) {
          throw new EdgefleetError(
            ErrorCode.BAD_MODEL,
            `${model.key}: test vector ${i} element ${k} is ${out.data[k]}, expected ${tv.expected[k]} ± ${tv.tolerance}`,
          );
        }
      }
    }
  }

  byName(name: string): LocalModel | undefined {
    return this.#active.get(name);
  }

  active(): LocalModel[] {
    return [...this.#active.values()];
  }

  stop(): Promise<void> {
    this.#active.clear();
    return Promise.resolve();
  }
}
