/**
 * The agent's model updater (issue #3, agent side): installs signed releases the hub commands,
 * rolls back (hub command or probation breach), and decides at start-up which installed version
 * each model name serves. Layout under `updates.dir`:
 *
 *   state.json                            the single commit point (state.ts)
 *   <name>/<version>-<counter>/           model.onnx, manifest.json, release.json, and the test-vector
 *                                         sidecar the manifest names, if any (fsynced, then
 *                                         renamed from `.staging-*` into place)
 *   .partial/<sha256>.part                downloads in progress (resumed with Range)
 *   .quarantine/<sha256>-<ts>.onnx        artifacts the validator child refused or died on
 *
 * An install runs verify → download → validate → activate, one at a time per model name; a
 * second command for the same release joins the running one. Activation swaps the model in the
 * workers (ModelSet.swap: in-flight requests finish on the old session) and only then commits
 * state.json, so a SIGKILL anywhere leaves either the old or the new version active, complete
 * and verified (test/fault/install-crash.test.ts). A bundle (InstallArgs.bundle: a chain's
 * stages whose interface changed together) runs the same phases for all its releases, each phase
 * for all before the next, holds all their names, swaps back what it swapped if one activation
 * fails, and commits once; state.json records the unit (`bundle`), so a rollback of any of its
 * releases, and a start-up where one of them cannot start, takes all of them back.
 * manifest.json is the signed manifest with `artifact.file` set to `model.onnx`, so the ordinary
 * start-up path (openLocalModel: size + sha256) reads installed versions exactly as it reads
 * config models; release.json keeps the signed envelope as received.
 *
 * Start-up: ModelSet opens the manifest paths in the list it was given; `start()` (which runs
 * before ModelSet's) rewrites that list in place, per name, to the state's active version, else
 * its previous one, else the config model, after re-checking size and sha256, and logs why.
 */
import { mkdir, readdir, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { formatIssues } from '../../shared/codec.ts';
import { EdgefleetError, ErrorCode, toEdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Logger } from '../../shared/log.ts';
import type { Manifest } from '../../shared/manifest.ts';
import type { ReleaseBody, TrustedKey } from '../../shared/signing.ts';
import {
  EVENTS_STREAM,
  InstallArgsSchema,
  MODEL_EVENT_KIND,
  RollbackArgsSchema,
  type BundleMemberRef,
  type InstallArgs,
  type InstallOutcome,
  type InstallPhase,
  type InstalledVersion,
  type ModelEvent,
  type ModelSlot,
} from '../../shared/updates.ts';
import { probeModel, type ProbeLimits } from '../../shared/validate/model-probe.ts';
import type { BackoffOptions } from '../../shared/backoff.ts';
import { openLocalModel, readManifest, type LocalModel } from '../models/local-models.ts';
import type { FetchLike } from '../../shared/tls.ts';
import { ArtifactMismatch, downloadArtifact } from './download.ts';
import { fsyncPath } from '../../shared/files.ts';
import { loadState, saveState, versionDirName, withFailed, type SlotState, type UpdaterState } from './state.ts';
import { verifyInstall, type Identity, type Verdict } from './verify.ts';

export const PARTIAL_DIR = '.partial';
export const QUARANTINE_DIR = '.quarantine';
const STAGING_PREFIX = '.staging-';
const KEEP_QUARANTINED = 4;
/** .part files younger than this survive a restart, so a re-sent install resumes them. */
const PARTIAL_MAX_AGE_MS = 3600_000;

/** What the updater needs from the model set (agent/models/model-set.ts). */
export interface ModelSwapper {
  /** Loads and checks `model`, switches its name to it atomically, returns the one it replaced. */
  swap(model: LocalModel): Promise<LocalModel | undefined>;
}

/** What the updater needs from the probation monitor (agent/health/probation.ts). */
export interface ProbationWatcher {
  /** `untilMs`: epoch ms when probation ends. */
  watch(w: { name: string; version: string; previousVersion?: string; untilMs: number }): void;
  cancel(name: string): void;
  onBreach(cb: (b: { name: string; version: string; reason: string }) => void): void;
  onPass(cb: (p: { name: string; version: string }) => void): void;
}

export interface UpdaterOptions {
  identity: Identity;
  /** http(s)://host:port of the hub API; undefined = installs fail with BAD_CONFIG. */
  hubHttpUrl: string | undefined;
  hubToken: string;
  /** https with the agent's hub.tls (shared/tls.ts tlsFetch); default: global fetch. */
  fetch?: FetchLike;
  dir: string;
  trustedKeys: readonly TrustedKey[];
  probationMs: number;
  download: { stallTimeoutMs: number; maxBytes: number; attempts: number; backoff: BackoffOptions };
  validator: ProbeLimits;
  keepVersions: number;
  /** The list ModelSet opens at start; rewritten in place by start() (see the header). */
  /** The config's model manifests; `startupManifests()` says which files to load instead. */
  configManifests: readonly string[];
  models: ModelSwapper;
  /**
   * Why this device cannot serve a release (agent/models/pipeline-fit.ts), checked before
   * download; undefined = it can. `replacements`: the releases of the unit being installed (this
   * one included), judged in place of the versions they replace.
   */
  fits?: (manifest: Manifest, replacements: readonly Manifest[]) => string | undefined;
  events: { append(stream: string, kind: string, body: Record<string, unknown>): Promise<unknown> };
  /** Called after every change of the reported state (re-publish hello). */
  onStateChange?: () => void;
  probation?: ProbationWatcher;
  log: Logger;
  registry?: Registry;
  now?: () => number;
}

interface Running {
  key: string;
  promise: Promise<InstallOutcome>;
}

/** A release as an install command carries it: its own, or one of its bundle. */
type RawMember = { release: unknown; artifactPath: string };

/** A release of an install, verified (signature, counter, target) against the current state. */
interface Member {
  signed: unknown;
  artifactPath: string;
  release: ReleaseBody;
  verdict: Verdict;
}

/** A downloaded, sha256-checked candidate in .partial (and its test-vector sidecar). */
interface Fetched {
  part: string;
  sidecar?: { path: string; file: string };
}

/** The command's own release first, then its bundle's. */
const membersOf = (args: InstallArgs): RawMember[] => [{ release: args.release, artifactPath: args.artifactPath }, ...(args.bundle ?? [])];

const refOf = (x: Member): BundleMemberRef => ({ name: x.release.manifest.name, version: x.release.manifest.version, counter: x.release.counter });

interface Metrics {
  installs: Counter<'result' | 'phase'>;
  bytes: Counter;
  duration: Histogram;
  active: Gauge<'name' | 'version' | 'counter'>;
}

/** A refusal with the phase it happened in; becomes a `rejected` event and a command error. */
class PhaseError extends EdgefleetError {
  constructor(
    readonly phase: InstallPhase,
    readonly verdictCode: string,
    code: ErrorCode,
    message: string,
    readonly recordFailed: boolean,
    cause?: unknown,
  ) {
    super(code, message, { cause, details: { phase, code: verdictCode } });
  }
}

const VERIFY_CODES: Record<string, ErrorCode> = {
  NO_TRUSTED_KEYS: ErrorCode.BAD_CONFIG,
  UNKNOWN_KEY: ErrorCode.FORBIDDEN,
  BAD_SIGNATURE: ErrorCode.FORBIDDEN,
  BAD_RELEASE: ErrorCode.BAD_PAYLOAD,
  REPLAY: ErrorCode.CONFLICT,
  FAILED_BEFORE: ErrorCode.CONFLICT,
  CONFLICT: ErrorCode.CONFLICT,
  NOT_TARGETED: ErrorCode.FORBIDDEN,
};

export class ModelUpdater implements Component {
  readonly name = 'updater';
  readonly #o: UpdaterOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #metrics: Metrics | undefined;
  #state: UpdaterState = { v: 1, models: {} };
  /** Config model per name (counter 0 fallback). */
  readonly #configModels = new Map<string, { path: string; manifest: Manifest }>();
  #startup: string[] = [];
  /** Per model name: the tail of its serialized operations. */
  readonly #chains = new Map<string, Promise<unknown>>();
  readonly #running = new Map<string, Running>();
  readonly #installing = new Map<string, { version: string; counter: number; phase: InstallPhase }>();
  readonly #abort = new AbortController();
  /** Serializes writes of state.json. */
  #saving: Promise<void> = Promise.resolve();

  constructor(opts: UpdaterOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    this.#metrics = opts.registry ? createMetrics(opts.registry) : undefined;
    opts.probation?.onBreach((b) => {
      this.#serial(this.#unitOf(b.name), () => this.#rollback(b.name, b.version, b.reason, 'probation')).catch((err: unknown) =>
        this.#log.error({ err, model: b.name, version: b.version }, 'probation rollback failed'),
      );
    });
    opts.probation?.onPass((p) => {
      this.#serial(p.name, () => this.#probationPassed(p.name, p.version)).catch((err: unknown) => this.#log.error({ err }, 'probation pass not recorded'));
    });
  }

  // ---- lifecycle ----

  /**
   * The manifest each configured model name starts from: its installed active version (or the
   * previous one, or the config's) as chosen in start(). The ModelSet starts after the updater.
   */
  startupManifests(): readonly string[] {
    return this.#startup;
  }

  async start(signal: AbortSignal): Promise<void> {
    const { dir } = this.#o;
    await mkdir(join(dir, PARTIAL_DIR), { recursive: true, mode: 0o700 });
    await mkdir(join(dir, QUARANTINE_DIR), { recursive: true, mode: 0o700 });
    const loaded = await loadState(dir, this.#now());
    if (loaded.problem) this.#log.error({ problem: loaded.problem }, 'model state unreadable; starting from the config models');
    this.#state = loaded.state;
    let changed = false;
    this.#startup = [...this.#o.configManifests];
    const startupIndex = new Map<string, number>();
    for (const [i, path] of this.#o.configManifests.entries()) {
      if (signal.aborted) throw new EdgefleetError(ErrorCode.ABORTED, 'updater start aborted');
      const manifest = await readManifest(path);
      this.#configModels.set(manifest.name, { path, manifest });
      startupIndex.set(manifest.name, i);
      const slot = this.#state.models[manifest.name];
      if (!slot) continue;
      const chosen = await this.#chooseStartup(manifest.name, slot, signal);
      this.#startup[i] = chosen.path;
      changed ||= chosen.changed;
    }
    // A unit installed together starts together: when one release of it could not start (and fell
    // back), the others that still would go back to their previous versions too.
    for (let again = true; again; ) {
      again = false;
      for (const [name, slot] of Object.entries(this.#state.models)) {
        const i = startupIndex.get(name);
        const lost = slot.bundle?.find((b) => {
          const a = this.#state.models[b.name]?.active;
          return a?.version !== b.version || a.counter !== b.counter;
        });
        if (i === undefined || !lost) continue;
        this.#startup[i] = (await this.#chooseStartup(name, slot, signal, `${lost.name}@${lost.version}, installed with it, could not start`)).path;
        changed = again = true;
      }
    }
    if (changed) await this.#save();
    this.#refreshActiveGauge();
    for (const [name, slot] of Object.entries(this.#state.models)) {
      if (slot.active && slot.probationUntil !== undefined && this.#o.probation) {
        if (slot.probationUntil > this.#now()) {
          this.#o.probation.watch({ name, version: slot.active.version, previousVersion: slot.previous?.version, untilMs: slot.probationUntil });
        }
      }
    }
    await this.#collectGarbage().catch((err: unknown) => this.#log.warn({ err }, 'model garbage collection failed'));
  }

  async stop(): Promise<void> {
    this.#abort.abort(new EdgefleetError(ErrorCode.ABORTED, 'agent stopping'));
    await Promise.allSettled([...this.#running.values()].map((r) => r.promise));
    await Promise.allSettled([...this.#chains.values()]);
    await this.#saving.catch(() => undefined);
  }

  /** Reported state per model name (hello `modelState`). */
  modelState(): ModelSlot[] {
    const names = new Set([...Object.keys(this.#state.models), ...this.#configModels.keys(), ...this.#installing.keys()]);
    return [...names].sort().map((name) => {
      const slot = this.#state.models[name];
      const cfg = this.#configModels.get(name);
      const configActive: InstalledVersion | null = cfg ? { version: cfg.manifest.version, counter: 0, sha256: cfg.manifest.artifact.sha256 } : null;
      const installing = this.#installing.get(name);
      return {
        name,
        active: slot ? slot.active : configActive,
        ...(slot?.previous ? { previous: slot.previous } : {}),
        highestCounter: slot?.highestCounter ?? 0,
        ...(slot?.probationUntil !== undefined ? { probationUntil: slot.probationUntil } : {}),
        ...(installing ? { installing } : {}),
        failed: slot?.failed ?? [],
      };
    });
  }

  // ---- commands ----

  /** `model.install`. Resolves with the outcome; rejects with an EdgefleetError naming the phase. */
  install(rawArgs: unknown): Promise<InstallOutcome> {
    const parsed = InstallArgsSchema.safeParse(rawArgs);
    if (!parsed.success) return Promise.reject(new EdgefleetError(ErrorCode.BAD_PAYLOAD, `model.install: ${formatIssues(parsed.error)}`));
    const args = parsed.data;
    const raws = membersOf(args);
    const key = raws.map((r) => `${(r.release as { signature?: { sig?: unknown } } | null)?.signature?.sig as string}|${r.artifactPath}`).join(',');
    const joined = [...this.#running.values()].find((r) => r.key === key);
    if (joined) return joined.promise;
    const t0 = performance.now();
    const slotOf = (name: string): SlotState | undefined => this.#state.models[name];
    // Verify once up front (cheap, no state change) to learn the names; again inside the chain,
    // where the state it reads cannot change under it.
    const first = raws.map((r) => verifyInstall(r.release, this.#o.trustedKeys, this.#peekSlot(r.release, slotOf), this.#o.identity));
    const unverified = first.findIndex((v) => v.kind === 'refuse' && !v.release);
    if (unverified >= 0) return this.#refuseUnverifiedMember(raws, first, unverified, args.rolloutId);
    const names = first.map((v) => v.release!.manifest.name);
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice !== undefined) return Promise.reject(new EdgefleetError(ErrorCode.BAD_PAYLOAD, `model.install: the bundle names model ${twice} twice`));
    const promise = this.#serial(names, () => this.#install(args, t0)).finally(() => this.#running.delete(key));
    this.#running.set(key, { key, promise });
    return promise;
  }

  /** `model.rollback`. A release installed with others as one unit takes them back with it. */
  rollback(rawArgs: unknown): Promise<InstallOutcome> {
    const parsed = RollbackArgsSchema.safeParse(rawArgs);
    if (!parsed.success) return Promise.reject(new EdgefleetError(ErrorCode.BAD_PAYLOAD, `model.rollback: ${formatIssues(parsed.error)}`));
    const a = parsed.data;
    return this.#serial(this.#unitOf(a.name), () => this.#rollback(a.name, a.version, a.reason, 'rollback', a.rolloutId));
  }

  // ---- install ----

  /**
   * One release, or a bundle (InstallArgs.bundle) as one unit: every release is verified and
   * fitted with the others in place, then all are downloaded, then all validated, then all
   * activated; a failure at any step leaves none of them active (those already swapped in are
   * swapped back) and state.json is committed once, after the last swap.
   */
  async #install(args: InstallArgs, t0: number): Promise<InstallOutcome> {
    const raws = membersOf(args);
    const verdicts = raws.map((r) => verifyInstall(r.release, this.#o.trustedKeys, this.#peekSlot(r.release, (n) => this.#state.models[n]), this.#o.identity));
    const unverified = verdicts.findIndex((v) => v.kind === 'refuse' && !v.release);
    if (unverified >= 0) return this.#refuseUnverifiedMember(raws, verdicts, unverified, args.rolloutId);
    const all: Member[] = verdicts.map((verdict, i) => ({ signed: raws[i]!.release, artifactPath: raws[i]!.artifactPath, release: verdict.release!, verdict }));
    const ref = refOf(all[0]!);
    const bundleRefs = all.length > 1 ? all.map(refOf) : undefined;
    const outcomeBundle = (state: 'active' | 'already_active'): Pick<InstallOutcome, 'bundle'> =>
      bundleRefs ? { bundle: all.map((x) => ({ ...refOf(x), state: x.verdict.kind === 'already_active' ? 'already_active' : state })) } : {};
    // Releases already serving are left as they are (and out of the unit a rollback takes back).
    const unit = all.filter((x) => x.verdict.kind !== 'already_active');
    if (unit.length === 0) {
      this.#metrics?.installs.inc({ result: 'already_active', phase: 'none' });
      return { ...ref, state: 'already_active', ...outcomeBundle('already_active') };
    }
    let phase: InstallPhase = 'verify';
    /** The release the install is at: a failure is its failure. */
    let at = unit[0]!;
    const setPhase = (p: InstallPhase): void => {
      phase = p;
      for (const x of unit) this.#installing.set(x.release.manifest.name, { version: x.release.manifest.version, counter: x.release.counter, phase: p });
      this.#o.onStateChange?.();
    };
    try {
      const replacements = unit.map((x) => x.release.manifest);
      for (const x of unit) {
        at = x;
        this.#precheck(x, replacements);
      }
      setPhase('download');
      const fetched: Fetched[] = [];
      for (const x of unit) {
        at = x;
        fetched.push(await this.#download(x));
      }
      setPhase('validate');
      for (const [i, x] of unit.entries()) {
        at = x;
        await this.#validate(x, fetched[i]!);
      }
      setPhase('activate');
      const placed: LocalModel[] = [];
      for (const [i, x] of unit.entries()) {
        at = x;
        placed.push(await this.#placeVersion(fetched[i]!.part, x.release, x.signed, fetched[i]!.sidecar));
      }
      const swapped: (LocalModel | undefined)[] = [];
      for (const [i, x] of unit.entries()) {
        at = x;
        try {
          swapped.push(await this.#o.models.swap(placed[i]!));
        } catch (err) {
          await this.#swapBack(swapped);
          for (const y of unit) await rm(join(this.#o.dir, y.release.manifest.name, versionDirName({ version: y.release.manifest.version, counter: y.release.counter })), { recursive: true, force: true });
          const e = toEdgefleetError(err);
          throw new PhaseError('activate', e.code, e.code, `activation failed: ${e.message}`, true, err);
        }
      }
      const probationMs = args.probationMs ?? this.#o.probationMs;
      const unitRefs = unit.length > 1 ? unit.map(refOf) : undefined;
      const previous = new Map<string, InstalledVersion | null>();
      for (const x of unit) {
        const m = x.release.manifest;
        const prevSlot = this.#state.models[m.name];
        const prev = prevSlot?.active ?? this.#configVersion(m.name);
        previous.set(m.name, prev);
        this.#state.models[m.name] = {
          active: { version: m.version, counter: x.release.counter, sha256: m.artifact.sha256 },
          ...(prev ? { previous: prev } : {}),
          highestCounter: x.release.counter,
          ...(probationMs > 0 && this.#o.probation ? { probationUntil: this.#now() + probationMs } : {}),
          failed: prevSlot?.failed ?? [],
          ...(unitRefs ? { bundle: unitRefs } : {}),
        };
      }
      await this.#save(); // the commit point, once for the whole unit
      for (const x of unit) this.#installing.delete(x.release.manifest.name);
      const durationMs = performance.now() - t0;
      this.#metrics?.installs.inc({ result: 'installed', phase: 'none' });
      this.#metrics?.duration.observe(durationMs / 1000);
      this.#refreshActiveGauge();
      for (const [i, x] of unit.entries()) {
        const m = x.release.manifest;
        const prev = previous.get(m.name);
        this.#log.info(
          { model: `${m.name}@${m.version}`, counter: x.release.counter, replaced: swapped[i]?.key, durationMs: Math.round(durationMs), ...(bundleRefs ? { bundle: bundleRefs.map((b) => `${b.name}@${b.version}`) } : {}) },
          'model release installed',
        );
        await this.#event({ event: 'installed', ...refOf(x), rolloutId: args.rolloutId, ...(prev ? { previous: prev } : {}), durationMs, bundle: bundleRefs });
        const until = this.#state.models[m.name]?.probationUntil;
        if (until !== undefined && this.#o.probation) {
          this.#o.probation.watch({ name: m.name, version: m.version, previousVersion: prev?.version, untilMs: until });
        }
      }
      this.#o.onStateChange?.();
      void this.#collectGarbage().catch((err: unknown) => this.#log.warn({ err }, 'model garbage collection failed'));
      return { ...ref, state: 'active', ...outcomeBundle('active') };
    } catch (err) {
      for (const x of unit) this.#installing.delete(x.release.manifest.name);
      const pe = err instanceof PhaseError ? err : new PhaseError(phase, toEdgefleetError(err).code, toEdgefleetError(err).code, toEdgefleetError(err).message, false, err);
      await this.#reject(at.release, args.rolloutId, pe, bundleRefs);
      throw pe;
    }
  }

  /** The verify phase's refusals of one release (its fit judged with `replacements` in place). */
  #precheck(x: Member, replacements: readonly Manifest[]): void {
    const { verdict } = x;
    const m = x.release.manifest;
    if (verdict.kind === 'refuse') {
      throw new PhaseError('verify', verdict.code, VERIFY_CODES[verdict.code] ?? ErrorCode.FORBIDDEN, verdict.message, verdict.code !== 'FAILED_BEFORE' && verdict.code !== 'REPLAY');
    }
    const unfit = this.#o.fits?.(m, replacements);
    // Not recorded as a failed release: the same release installs once a pipeline needs it.
    if (unfit !== undefined) throw new PhaseError('verify', 'NOT_SERVED', ErrorCode.CONFLICT, `release not installed: ${unfit}`.slice(0, 480), false);
    if (!this.#o.hubHttpUrl) {
      throw new PhaseError('download', 'BAD_CONFIG', ErrorCode.BAD_CONFIG, 'hub.httpUrl is not configured: the agent cannot download model artifacts', false);
    }
    if (m.artifact.sha256 !== x.artifactPath.slice(x.artifactPath.lastIndexOf('/') + 1)) {
      throw new PhaseError('verify', 'BAD_RELEASE', ErrorCode.BAD_PAYLOAD, 'artifactPath does not name the signed artifact', true);
    }
  }

  /** Downloads one release's artifact (and its test-vector sidecar) into .partial. */
  async #download(x: Member): Promise<Fetched> {
    const m = x.release.manifest;
    const part = join(this.#o.dir, PARTIAL_DIR, `${m.artifact.sha256}.part`);
    // A v2 release may carry its test vectors in a sidecar: a second artifact, named by the
    // signed manifest's sha256, downloaded the same way and validated with the model.
    const tf = m.manifestVersion === 2 ? m.testVectorsFile : undefined;
    const sidecar = tf ? { path: join(this.#o.dir, PARTIAL_DIR, `${tf.sha256}.part`), file: tf.file } : undefined;
    try {
      const download = (path: string, want: { sha256: string; size: number }, url: string): Promise<unknown> =>
        downloadArtifact(
          { url, authorization: `Bearer ${this.#o.identity.deviceId}:${this.#o.hubToken}`, path, sha256: want.sha256, size: want.size },
          { ...this.#o.download, fetch: this.#o.fetch, log: this.#log, signal: this.#abort.signal, onBytes: (n) => this.#metrics?.bytes.inc(n) },
        );
      await download(part, m.artifact, `${this.#o.hubHttpUrl}${x.artifactPath}`);
      if (tf && sidecar) await download(sidecar.path, tf, `${this.#o.hubHttpUrl}${x.artifactPath.slice(0, x.artifactPath.lastIndexOf('/') + 1)}${tf.sha256}`);
    } catch (err) {
      const e = toEdgefleetError(err);
      throw new PhaseError('download', e.code, e.code, e.message, err instanceof ArtifactMismatch, err);
    }
    return { part, ...(sidecar ? { sidecar } : {}) };
  }

  /** Runs one downloaded candidate through the validator child; a refusal quarantines it. */
  async #validate(x: Member, { part, sidecar }: Fetched): Promise<void> {
    const m = x.release.manifest;
    let outcome: Awaited<ReturnType<typeof probeModel>>;
    try {
      outcome = await probeModel(part, m, this.#o.validator, this.#log, sidecar?.path);
    } catch (err) {
      // The validator itself could not run (issue #12): nothing is known about the model, so it
      // is neither quarantined nor recorded as failed; the verified download stays in .partial
      // and a retry of the install reuses it.
      const e = toEdgefleetError(err);
      this.#log.error({ model: `${m.name}@${m.version}`, err: e }, 'the validator could not run; the candidate is kept for a retry');
      throw new PhaseError('validate', e.code, e.code, e.message.slice(0, 480), false, err);
    }
    if (outcome.problems.length) {
      if (sidecar) await rm(sidecar.path, { force: true });
      const q = await this.#quarantine(part, m.artifact.sha256);
      this.#log.error({ model: `${m.name}@${m.version}`, exit: outcome.exit, problems: outcome.problems, quarantined: q, peakRssMiB: Math.round(outcome.peakRssBytes / 2 ** 20) }, 'candidate model refused by the validator');
      throw new PhaseError('validate', ErrorCode.BAD_MODEL, ErrorCode.BAD_MODEL, `validation failed: ${outcome.problems.join('; ')}`.slice(0, 480), true);
    }
  }

  /** Swaps back, newest first, the versions a failed unit replaced (best effort, logged). */
  async #swapBack(replaced: readonly (LocalModel | undefined)[]): Promise<void> {
    for (const old of [...replaced].reverse()) {
      if (!old) continue;
      try {
        await this.#o.models.swap(old);
      } catch (err) {
        this.#log.error({ err, model: old.key }, 'could not swap a version of the unit back');
      }
    }
  }

  /** `bundle`: the releases of the command; each of the others gets a `rejected` event naming why. */
  async #reject(release: ReleaseBody, rolloutId: string | undefined, e: PhaseError, bundle?: BundleMemberRef[]): Promise<void> {
    const m = release.manifest;
    this.#metrics?.installs.inc({ result: 'rejected', phase: e.phase });
    this.#log.warn({ model: `${m.name}@${m.version}`, counter: release.counter, phase: e.phase, code: e.verdictCode, reason: e.message, ...(bundle ? { bundle: bundle.map((b) => `${b.name}@${b.version}`) } : {}) }, 'model release rejected');
    if (e.recordFailed && e.code !== ErrorCode.ABORTED) {
      const slot = this.#state.models[m.name] ?? { active: this.#configVersion(m.name), highestCounter: 0, failed: [] };
      slot.failed = withFailed(slot.failed, { version: m.version, counter: release.counter, phase: e.phase, code: e.verdictCode.slice(0, 64), message: e.message.slice(0, 500), ts: this.#now() });
      this.#state.models[m.name] = slot;
      await this.#save().catch((err: unknown) => this.#log.error({ err }, 'could not record a failed release'));
    }
    const code = e.verdictCode.slice(0, 64);
    await this.#event({ event: 'rejected', name: m.name, version: m.version, counter: release.counter, rolloutId, phase: e.phase, code, message: e.message.slice(0, 500), bundle });
    for (const b of bundle ?? []) {
      if (b.name === m.name) continue;
      const message = `not installed: ${m.name}@${m.version}, installed with it, failed (${e.phase} ${code}: ${e.message})`.slice(0, 500);
      await this.#event({ event: 'rejected', ...b, rolloutId, phase: e.phase, code, message, bundle });
    }
    this.#o.onStateChange?.();
  }

  /** A bundle with a release whose signature did not verify: refused whole, naming which. */
  #refuseUnverifiedMember(raws: readonly RawMember[], verdicts: readonly Verdict[], i: number, rolloutId: string | undefined): Promise<never> {
    const v = verdicts[i] as Extract<Verdict, { kind: 'refuse' }>;
    return this.#refuseUnverified(raws[i]!.release, rolloutId, v.code, i === 0 ? v.message : `bundle release ${i}: ${v.message}`);
  }

  /** A release whose signature did not verify: nothing in it is trusted, nothing recorded in state. */
  async #refuseUnverified(raw: unknown, rolloutId: string | undefined, code: string, message: string): Promise<never> {
    this.#metrics?.installs.inc({ result: 'rejected', phase: 'verify' });
    this.#log.warn({ code, reason: message }, 'model release rejected (unverified)');
    const claimed = claimedRef(raw);
    if (claimed) await this.#event({ event: 'rejected', ...claimed, rolloutId, phase: 'verify', code, message: `(unverified claim) ${message}`.slice(0, 500) });
    throw new EdgefleetError(VERIFY_CODES[code] ?? ErrorCode.FORBIDDEN, message, { details: { phase: 'verify', code } });
  }

  /** Moves the verified artifact into its version dir with manifest.json and release.json. */
  async #placeVersion(part: string, release: ReleaseBody, signed: unknown, sidecar?: { path: string; file: string }): Promise<LocalModel> {
    const m = release.manifest;
    const nameDir = join(this.#o.dir, m.name);
    const finalDir = join(nameDir, versionDirName({ version: m.version, counter: release.counter }));
    const staging = join(nameDir, `${STAGING_PREFIX}${versionDirName({ version: m.version, counter: release.counter })}`);
    await mkdir(nameDir, { recursive: true, mode: 0o700 });
    await rm(staging, { recursive: true, force: true });
    await rm(finalDir, { recursive: true, force: true });
    await mkdir(staging, { mode: 0o700 });
    const manifest: Manifest = { ...m, artifact: { ...m.artifact, file: 'model.onnx' } };
    await rename(part, join(staging, 'model.onnx'));
    await writeFile(join(staging, 'manifest.json'), `${JSON.stringify(manifest, null, 1)}\n`, { mode: 0o600 });
    await writeFile(join(staging, 'release.json'), `${JSON.stringify(signed)}\n`, { mode: 0o600 });
    // The sidecar keeps the name the manifest gives it, beside the manifest (where loaders look).
    if (sidecar) await rename(sidecar.path, join(staging, sidecar.file));
    for (const f of ['model.onnx', 'manifest.json', 'release.json', ...(sidecar ? [sidecar.file] : [])]) await fsyncPath(join(staging, f));
    await fsyncPath(staging);
    await rename(staging, finalDir);
    await fsyncPath(nameDir);
    await fsyncPath(join(this.#o.dir, PARTIAL_DIR));
    const manifestPath = join(finalDir, 'manifest.json');
    return { manifest, manifestPath, onnxPath: join(finalDir, 'model.onnx'), key: `${m.name}@${m.version}` };
  }

  async #quarantine(part: string, sha256: string): Promise<string | undefined> {
    const dest = join(this.#o.dir, QUARANTINE_DIR, `${sha256}-${this.#now()}.onnx`);
    try {
      await rename(part, dest);
      return dest;
    } catch (err) {
      this.#log.warn({ err }, 'could not quarantine the refused artifact; deleting it');
      await unlink(part).catch(() => undefined);
      return undefined;
    }
  }

  // ---- rollback and probation ----

  async #rollback(name: string, version: string, reason: string, phase: 'rollback' | 'probation', rolloutId?: string): Promise<InstallOutcome> {
    const slot = this.#state.models[name];
    if (!slot?.active || slot.active.version !== version) {
      return { name, version, counter: slot?.failed.find((f) => f.version === version)?.counter ?? 0, state: 'not_active' };
    }
    // A release installed with others as one unit goes back with them: one alone would break the chain.
    const steps = this.#unitOf(name).map((n) => {
      const s = this.#state.models[n]!;
      return { name: n, slot: s, bad: s.active!, prev: s.previous };
    });
    const lacking = steps.find((s) => !s.prev);
    if (lacking) throw new EdgefleetError(ErrorCode.ILLEGAL_STATE, `${lacking.name}@${lacking.bad.version} has no previous version to roll back to`);
    const models: LocalModel[] = [];
    for (const s of steps) models.push(await this.#openVersion(s.name, s.prev!));
    const replaced: (LocalModel | undefined)[] = [];
    try {
      for (const m of models) replaced.push(await this.#o.models.swap(m));
    } catch (err) {
      await this.#swapBack(replaced);
      throw err;
    }
    const bundle = steps.length > 1 ? steps.map((s) => ({ name: s.name, version: s.bad.version, counter: s.bad.counter })) : undefined;
    const why = (s: (typeof steps)[number]): string => (s.name === name ? reason : `rolled back with ${name}@${version}: ${reason}`).slice(0, 500);
    for (const s of steps) {
      s.slot.active = s.prev!;
      delete s.slot.previous;
      delete s.slot.probationUntil;
      delete s.slot.bundle;
      s.slot.failed = withFailed(s.slot.failed, { version: s.bad.version, counter: s.bad.counter, phase, code: 'ROLLED_BACK', message: why(s), ts: this.#now() });
    }
    await this.#save();
    this.#metrics?.installs.inc({ result: 'rolled_back', phase });
    this.#refreshActiveGauge();
    for (const s of steps) {
      this.#o.probation?.cancel(s.name);
      this.#log.warn({ model: `${s.name}@${s.bad.version}`, restored: `${s.name}@${s.prev!.version}`, phase, reason: why(s) }, 'model rolled back');
      await this.#event({ event: 'rolled_back', name: s.name, version: s.bad.version, counter: s.bad.counter, rolloutId, restored: s.prev, phase, message: why(s), bundle });
    }
    this.#o.onStateChange?.();
    const bad = steps[0]!.bad;
    return { name, version: bad.version, counter: bad.counter, state: 'rolled_back', ...(bundle ? { bundle: bundle.map((b) => ({ ...b, state: 'rolled_back' as const })) } : {}) };
  }

  async #probationPassed(name: string, version: string): Promise<void> {
    const slot = this.#state.models[name];
    if (!slot?.active || slot.active.version !== version || slot.probationUntil === undefined) return;
    delete slot.probationUntil;
    await this.#save();
    await this.#event({ event: 'probation_passed', name, version, counter: slot.active.counter });
    this.#o.onStateChange?.();
  }

  // ---- start-up ----

  /** Opens an installed version (or the config model for counter 0), re-checking size and sha256. */
  async #openVersion(name: string, v: InstalledVersion, signal?: AbortSignal): Promise<LocalModel> {
    const path = v.counter === 0 ? this.#configModels.get(name)?.path : join(this.#o.dir, name, versionDirName(v), 'manifest.json');
    if (!path) throw new EdgefleetError(ErrorCode.NOT_FOUND, `${name}@${v.version}: no config model to fall back to`);
    const model = await openLocalModel(path, signal);
    if (model.manifest.artifact.sha256 !== v.sha256 || model.manifest.version !== v.version) {
      throw new EdgefleetError(ErrorCode.BAD_MODEL, `${path} holds ${model.manifest.version} (${model.manifest.artifact.sha256}), state says ${v.version} (${v.sha256})`);
    }
    return model;
  }

  /** `lostWith`: why the active version may not start though its files are fine (its unit fell back). */
  async #chooseStartup(name: string, slot: SlotState, signal: AbortSignal, lostWith?: string): Promise<{ path: string; changed: boolean }> {
    const cfg = this.#configModels.get(name)!;
    const candidates: { which: 'active' | 'previous'; v: InstalledVersion }[] = [];
    if (slot.active && lostWith === undefined) candidates.push({ which: 'active', v: slot.active });
    if (slot.previous) candidates.push({ which: 'previous', v: slot.previous });
    for (const c of candidates) {
      if (c.v.counter === 0) {
        if (c.v.sha256 !== cfg.manifest.artifact.sha256) {
          this.#log.warn({ model: name, state: c.v.version, config: cfg.manifest.version }, 'the config model changed since it was last active');
        }
        return this.#settle(slot, c.which, { ...c.v, version: cfg.manifest.version, sha256: cfg.manifest.artifact.sha256 }, cfg.path, lostWith);
      }
      try {
        const model = await this.#openVersion(name, c.v, signal);
        return this.#settle(slot, c.which, c.v, model.manifestPath, lostWith);
      } catch (err) {
        this.#log.error({ err, model: `${name}@${c.v.version}`, counter: c.v.counter, which: c.which }, 'installed model version unusable at start-up; falling back');
      }
    }
    this.#log.error({ model: name }, 'no installed version usable: serving the config model');
    return this.#settle(slot, 'config', this.#configVersion(name)!, cfg.path, lostWith);
  }

  #settle(slot: SlotState, which: 'active' | 'previous' | 'config', v: InstalledVersion, path: string, why = 'installed files failed verification at start-up'): { path: string; changed: boolean } {
    if (which === 'active' && slot.active?.sha256 === v.sha256 && slot.active.version === v.version) return { path, changed: false };
    const lost = slot.active;
    if (lost && lost.counter > 0 && which !== 'active') {
      slot.failed = withFailed(slot.failed, { version: lost.version, counter: lost.counter, phase: 'activate', code: 'BAD_MODEL', message: why.slice(0, 500), ts: this.#now() });
    }
    slot.active = v;
    if (which !== 'active') {
      delete slot.previous;
      delete slot.probationUntil;
      delete slot.bundle;
    }
    return { path, changed: true };
  }

  // ---- helpers ----

  #configVersion(name: string): InstalledVersion | null {
    const cfg = this.#configModels.get(name);
    return cfg ? { version: cfg.manifest.version, counter: 0, sha256: cfg.manifest.artifact.sha256 } : null;
  }

  #peekSlot(raw: unknown, slotOf: (name: string) => SlotState | undefined): SlotState | undefined {
    const name = claimedRef(raw)?.name;
    return name ? slotOf(name) : undefined;
  }

  /** Runs `fn` after every operation queued before it on any of `names` (a bundle holds all its names). */
  #serial<T>(names: string | readonly string[], fn: () => Promise<T>): Promise<T> {
    const list = typeof names === 'string' ? [names] : names;
    const prev = Promise.all(list.map((n) => this.#chains.get(n) ?? Promise.resolve()));
    const run = prev.then(fn, fn);
    const tail = run.catch(() => undefined);
    for (const n of list) this.#chains.set(n, tail);
    void tail.then(() => {
      for (const n of list) if (this.#chains.get(n) === tail) this.#chains.delete(n);
    });
    return run;
  }

  /**
   * `name` and the releases installed with its active version as one unit that still serve
   * (state `bundle`); just `name` for a release installed alone.
   */
  #unitOf(name: string): string[] {
    const others = (this.#state.models[name]?.bundle ?? []).filter((b) => {
      const a = this.#state.models[b.name]?.active;
      return b.name !== name && a?.version === b.version && a.counter === b.counter;
    });
    return [name, ...others.map((b) => b.name)];
  }

  #save(): Promise<void> {
    const snapshot = structuredClone(this.#state);
    const run = this.#saving.then(() => saveState(this.#o.dir, snapshot));
    this.#saving = run.catch(() => undefined);
    return run;
  }

  async #event(e: ModelEvent): Promise<void> {
    const body = Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined));
    await this.#o.events.append(EVENTS_STREAM, MODEL_EVENT_KIND, body).catch((err: unknown) => this.#log.error({ err, event: e.event }, 'model event not stored'));
  }

  #refreshActiveGauge(): void {
    const g = this.#metrics?.active;
    if (!g) return;
    g.reset();
    for (const slot of this.modelState()) if (slot.active) g.set({ name: slot.name, version: slot.active.version, counter: String(slot.active.counter) }, 1);
  }

  /** Removes version dirs beyond keepVersions (never active/previous), staging dirs, old .part files, old quarantine. */
  async #collectGarbage(): Promise<void> {
    const { dir, keepVersions } = this.#o;
    for (const [name, slot] of Object.entries(this.#state.models)) {
      const nameDir = join(dir, name);
      const entries = await readdir(nameDir).catch(() => [] as string[]);
      const keep = new Set([slot.active, slot.previous].filter((v): v is InstalledVersion => !!v && v.counter > 0).map(versionDirName));
      const busy = this.#installing.get(name);
      const versions = entries
        .filter((e) => !e.startsWith('.'))
        .map((e) => ({ e, counter: Number(/-(\d+)$/.exec(e)?.[1] ?? -1) }))
        .sort((a, b) => b.counter - a.counter);
      let kept = keep.size;
      for (const { e } of versions) {
        if (keep.has(e)) continue;
        if (kept < keepVersions) {
          kept++;
          continue;
        }
        await rm(join(nameDir, e), { recursive: true, force: true });
      }
      if (!busy) for (const e of entries.filter((x) => x.startsWith(STAGING_PREFIX))) await rm(join(nameDir, e), { recursive: true, force: true });
    }
    const now = this.#now();
    if (this.#installing.size === 0) {
      for (const e of await readdir(join(dir, PARTIAL_DIR)).catch(() => [] as string[])) {
        const p = join(dir, PARTIAL_DIR, e);
        const st = await stat(p).catch(() => undefined);
        if (!st || !e.endsWith('.part') || now - st.mtimeMs > PARTIAL_MAX_AGE_MS) await rm(p, { recursive: true, force: true });
      }
    }
    const q = await readdir(join(dir, QUARANTINE_DIR)).catch(() => [] as string[]);
    const dated = await Promise.all(q.map(async (e) => ({ e, t: (await stat(join(dir, QUARANTINE_DIR, e)).catch(() => undefined))?.mtimeMs ?? 0 })));
    for (const { e } of dated.sort((a, b) => b.t - a.t).slice(KEEP_QUARANTINED)) await rm(join(dir, QUARANTINE_DIR, e), { force: true });
  }
}

/** name/version/counter a release claims, before (or without) verification. */
function claimedRef(raw: unknown): { name: string; version: string; counter: number } | undefined {
  const r = (raw as { release?: { counter?: unknown; manifest?: { name?: unknown; version?: unknown } } } | null)?.release;
  const name = r?.manifest?.name;
  const version = r?.manifest?.version;
  const counter = r?.counter;
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) return undefined;
  if (typeof version !== 'string' || version.length === 0 || version.length > 64) return undefined;
  return { name, version, counter: typeof counter === 'number' && Number.isSafeInteger(counter) && counter >= 0 ? counter : 0 };
}

function createMetrics(registry: Registry): Metrics {
  return {
    installs: new Counter({
      name: 'edgefleet_agent_model_installs_total',
      help: 'Model install commands by result (installed, already_active, rejected, rolled_back) and the phase a refusal happened in.',
      labelNames: ['result', 'phase'],
      registers: [registry],
    }),
    bytes: new Counter({ name: 'edgefleet_agent_model_download_bytes_total', help: 'Model artifact bytes downloaded (resumes included).', registers: [registry] }),
    duration: new Histogram({
      name: 'edgefleet_agent_model_install_duration_seconds',
      help: 'Time from an install command to the new version serving (verify, download, validate, activate).',
      buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900],
      registers: [registry],
    }),
    active: new Gauge({ name: 'edgefleet_agent_model_active', help: 'The model version each model name serves (value 1).', labelNames: ['name', 'version', 'counter'], registers: [registry] }),
  };
}
