/**
 * Checks a loaded model's own metadata against its manifest before the model is activated
 * (ARCHITECTURE §7). The comparison itself lives in shared/model-check.ts, because the hub runs
 * the same check before it signs a release; this adapts the engine's ModelHandle to it.
 */
import type { Manifest } from '../../shared/manifest.ts';
import { checkModelMetadata } from '../../shared/model-check.ts';
import type { ModelHandle } from './engine.ts';

/**
 * Returns every way the loaded model disagrees with its manifest, one sentence each;
 * an empty list means the model may be activated.
 */
export function checkModelAgainstManifest(handle: ModelHandle, manifest: Manifest): string[] {
  return checkModelMetadata({ inputs: handle.inputs, outputs: handle.outputs }, manifest);
}
