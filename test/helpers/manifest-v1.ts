/**
 * Narrowing for tests that read the v1 demo manifests (models/*.manifest.json) or build v1
 * manifests by hand: `Manifest` is `ManifestV1 | ManifestV2` since manifest v2 (issue #13), and
 * these tests rely on v1 fields (`preprocessing`, `postprocessing.labels`, `testVectors[].input`).
 * Asserts the version at run time so a demo model moving to v2 fails loudly here, not as an
 * `undefined` deep inside a test.
 */
import assert from 'node:assert/strict';
import type { Manifest, ManifestV1 } from '../../shared/manifest.ts';

/** The manifest as v1; fails the test when it is not. */
export function v1(m: Manifest): ManifestV1 {
  assert.equal(m.manifestVersion, 1, `expected a v1 manifest, ${m.name} is v${m.manifestVersion}`);
  return m;
}
