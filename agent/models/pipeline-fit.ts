/**
 * Whether this device can serve a model release at all (issue #13): some configured pipeline
 * must run the model (as its `model` or in its `chain`), and feed it what it takes — images to
 * an image model, JSON readings to a reading or window model; a chain stage must take `upstream`
 * inputs. A release that fails this is refused at the device before download, with the reason,
 * instead of being installed, loaded and never used.
 */
import type { Manifest } from '../../shared/manifest.ts';
import { modelSpec } from '../../shared/model-spec.ts';
import type { PipelineConfig } from '../config.ts';

const requestKind = (m: Manifest): 'image' | 'json' | undefined => {
  const kind = modelSpec(m).primary?.source.kind;
  return kind === undefined ? undefined : kind === 'image' ? 'image' : 'json';
};

/**
 * What a pipeline's input hands its model: images or JSON readings. An MQTT input without a
 * `format` took it from the model it started with, so that model's kind is what it feeds.
 */
function feeds(p: PipelineConfig, current: Manifest | undefined): 'image' | 'json' | undefined {
  if (p.input.type === 'folder') return 'image';
  return p.input.format ?? (current ? requestKind(current) : undefined);
}

/**
 * Why no pipeline of `pipelines` can serve `manifest`, or undefined when one can. `current`
 * gives the model a name serves now (ModelSet.byName), for inputs that took their format from it.
 * `replacements`: releases installed with `manifest` as one unit (a rollout's `with`); the chains
 * are checked with them in place of the versions they replace.
 */
export function releaseFitProblem(
  pipelines: readonly PipelineConfig[],
  manifest: Manifest,
  current: (name: string) => Manifest | undefined = () => undefined,
  replacements: readonly Manifest[] = [],
): string | undefined {
  const name = manifest.name;
  const after = (n: string): Manifest | undefined => replacements.find((r) => r.name === n) ?? current(n);
  const users = pipelines.filter((p) => p.model === name || p.chain.includes(name));
  if (users.length === 0) return `no pipeline on this device runs model ${name} (pipelines: ${pipelines.map((p) => `${p.name} → ${[p.model, ...p.chain].join(' → ')}`).join(', ') || 'none'})`;
  const spec = modelSpec(manifest);
  const problems: string[] = [];
  for (const p of users) {
    if (p.model === name) {
      const kind = spec.primary?.source.kind;
      if (!kind) {
        problems.push(`pipeline ${p.name} feeds ${name} its requests, but ${name}@${manifest.version} has no image, reading or window input`);
        continue;
      }
      const wants = kind === 'image' ? 'image' : 'json';
      const given = feeds(p, current(p.model));
      if (given !== undefined && given !== wants) {
        problems.push(`pipeline ${p.name} feeds ${given === 'image' ? 'images' : 'JSON readings'}, ${name}@${manifest.version} takes ${kind === 'image' ? 'images' : `${kind}s of JSON readings`}`);
        continue;
      }
      if (manifest.manifestVersion === 1 && p.chain.length) {
        problems.push(`pipeline ${p.name} chains ${p.chain.join(', ')} after ${name}, which needs a manifest v2 model`);
        continue;
      }
      return chainFit(users, manifest, after);
    }
    if (!spec.inputs.some((i) => i.source.kind === 'upstream')) {
      problems.push(`pipeline ${p.name} runs ${name} after ${[p.model, ...p.chain.slice(0, p.chain.indexOf(name))].join(' → ')}, but ${name}@${manifest.version} has no upstream input`);
      continue;
    }
    return chainFit(users, manifest, after);
  }
  return problems.join('; ');
}

/** The chain problem `manifest` would make in the pipelines that chain it, with the others as `current` gives them. */
function chainFit(users: readonly PipelineConfig[], manifest: Manifest, current: (name: string) => Manifest | undefined): string | undefined {
  for (const p of users) {
    if (!p.chain.length) continue;
    const stages = [p.model, ...p.chain].map((n) => (n === manifest.name ? manifest : current(n)));
    if (stages.some((m) => m === undefined)) continue;
    const problem = chainProblem(stages as Manifest[]);
    if (problem) return `pipeline ${p.name}: ${problem}`;
  }
  return undefined;
}

const fixedElements = (shape: readonly (number | string)[]): number | undefined =>
  shape.every((d) => typeof d === 'number') ? (shape as number[]).reduce((a, b) => a * b, 1) : undefined;

/**
 * Why the models of a chain (pipeline `model` then `chain`, in order) cannot run together, or
 * undefined: every later model takes `upstream` inputs, each from an output the model before it
 * declares, and that output's values split into the input's rows (input elements / frames).
 */
export function chainProblem(stages: readonly Manifest[]): string | undefined {
  const problems: string[] = [];
  for (let i = 1; i < stages.length; i++) {
    const prev = stages[i - 1]!;
    const m = stages[i]!;
    const spec = modelSpec(m);
    const ups = spec.inputs.filter((x) => x.source.kind === 'upstream');
    if (ups.length === 0) problems.push(`${m.name}@${m.version} follows ${prev.name} but has no upstream input`);
    for (const input of ups) {
      if (input.source.kind !== 'upstream') continue;
      const out = modelSpec(prev).outputs.find((o) => o.name === (input.source as { output: string }).output);
      if (!out) {
        problems.push(`${m.name}@${m.version} input ${input.name} takes output ${input.source.output}, which ${prev.name}@${prev.version} does not have (${modelSpec(prev).outputs.map((o) => o.name).join(', ')})`);
        continue;
      }
      const need = fixedElements(input.shape);
      const give = fixedElements(out.shape);
      if (need !== undefined && need % input.source.frames !== 0) problems.push(`${m.name}@${m.version} input ${input.name}: ${need} elements do not split into ${input.source.frames} frames`);
      else if (need !== undefined && give !== undefined && give % (need / input.source.frames) !== 0) {
        problems.push(`${prev.name}@${prev.version} output ${out.name} gives ${give} values, not whole rows of ${need / input.source.frames} for ${m.name} input ${input.name}`);
      }
    }
  }
  return problems.length ? problems.join('; ') : undefined;
}
