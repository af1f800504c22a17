/**
 * Models the agent serves from local files: reads each manifest, validates it, checks the
 * artifact's size and sha256 before anything loads it. (Rolled-out models arrive through the
 * updater, issue #3; this is the start-up path.)
 */
import { readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode } from '../../shared/errors.ts';
import { sha256File } from '../../shared/files.ts';
import { ManifestSchema, type Manifest } from '../../shared/manifest.ts';

export interface LocalModel {
  manifest: Manifest;
  manifestPath: string;
  onnxPath: string;
  /** `name@version`: the engine key. */
  key: string;
}

export async function readManifest(manifestPath: string): Promise<Manifest> {
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(manifestPath, 'utf8'));
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `cannot read manifest ${manifestPath}: ${(err as Error).message}`, { cause: err });
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) throw new EdgefleetError(ErrorCode.BAD_MANIFEST, `manifest ${manifestPath}: ${formatIssues(parsed.error)}`);
  return parsed.data;
}

/** Reads the manifest and verifies the artifact it names (size, then sha256). */
export async function openLocalModel(manifestPath: string, signal?: AbortSignal): Promise<LocalModel> {
  const manifest = await readManifest(manifestPath);
  const onnxPath = join(dirname(manifestPath), manifest.artifact.file);
  let size: number;
  try {
    size = (await stat(onnxPath)).size;
  } catch (err) {
    throw new EdgefleetError(ErrorCode.BAD_MODEL, `model file ${onnxPath}: ${(err as Error).message}`, { cause: err });
  }
  if (size !== manifest.artifact.size) {
    throw new EdgefleetError(ErrorCode.BAD_MODEL, `model file ${onnxPath} has ${size} bytes, manifest says ${manifest.artifact.size}`);
  }
  const digest = await sha256File(onnxPath, signal);
  if (digest !== manifest.artifact.sha256) {
    throw new EdgefleetError(ErrorCode.BAD_MODEL, `model file ${onnxPath} sha256 ${digest} does not match manifest ${manifest.artifact.sha256}`);
  }
  return { manifest, manifestPath, onnxPath, key: `${manifest.name}@${manifest.version}` };
}
