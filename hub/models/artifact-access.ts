/**
 * Which artifacts a device may fetch (GET/HEAD /v1/artifacts/<sha256>; issue #14: before, any
 * device could download any released artifact). A device may fetch the files of the releases
 * assigned to it:
 *   - its desired models (hub/rollouts/: set for a device when its rollout wave starts, kept
 *     after the rollout ends, reverted by a rollback) — the device's pinned/assigned versions;
 *   - the versions it reports in its hello (active and previous: it may need them again).
 * A release's files are its model (manifest artifact.sha256) and its test-vector sidecar
 * (manifest testVectorsFile.sha256). Anything else is answered exactly like an unknown artifact
 * (404, same body), so a device cannot probe which artifacts exist; refusals are counted
 * (edgefleet_hub_artifact_requests_refused_total{reason}) and logged throttled, not audited.
 *
 * Decisions are cached per device (the set of sha256s it may fetch) for ttlMs, and concurrent
 * lookups of one device share one, so a wave of 10,000 devices costs two indexed reads per
 * device, not per range request. A sha256 missing from a cached set is looked up again (no
 * cache for a refusal by default): a device whose wave just started is served at once, and a
 * device asking for what it may not have costs what every download cost before (one lookup),
 * with at most one in flight per device. The release index (release → its files) is rebuilt
 * from the store every indexTtlMs, or sooner (at most once per indexRecheckMs) when a device is
 * assigned a release it does not know yet.
 */
import { Counter, type Registry } from 'prom-client';
import { z } from 'zod';
import { LogThrottle, type Logger } from '../../shared/log.ts';
import type { HubStore } from '../store/store.ts';

export interface ArtifactAccessOptions {
  store: Pick<HubStore, 'listModels' | 'desiredModels' | 'getRolloutCandidate' | 'getRollout'>;
  log: Logger;
  registry: Registry;
  /**
   * Ages the caches; monotonic real time by default, not the hub's clock: freshness of a cache is
   * not business time, and a test's frozen clock must not freeze decisions.
   */
  clock?: () => number;
  /** How long a device's set of allowed artifacts is reused. */
  ttlMs?: number;
  /** A sha256 not in a cached set is looked up again once the set is this old (0: always). */
  recheckMs?: number;
  indexTtlMs?: number;
  /** A device assigned a release the index lacks rebuilds it, at most this often. */
  indexRecheckMs?: number;
  /** Devices whose decisions are kept (oldest dropped first). */
  maxDevices?: number;
}

/** Releases a rollout installs with its own (hub/rollouts/spec.ts `with`): assigned with it. */
const RolloutWithSchema = z.object({ with: z.array(z.object({ model: z.string(), version: z.string() })).optional() });

/** The files of a release in the stored manifest (v1 has no sidecar). */
const ReleaseFilesSchema = z.object({ testVectorsFile: z.object({ sha256: z.string() }).optional() });

interface Grant {
  shas: Set<string>;
  at: number;
}

interface ReleaseIndex {
  /** name@version → the sha256s of its files. */
  files: Map<string, string[]>;
  /** Every file of every release. */
  all: Set<string>;
  at: number;
}

export class ArtifactAccess {
  readonly #o: ArtifactAccessOptions;
  readonly #ttlMs: number;
  readonly #recheckMs: number;
  readonly #indexTtlMs: number;
  readonly #indexRecheckMs: number;
  readonly #clock: () => number;
  readonly #maxDevices: number;
  readonly #grants = new Map<string, Grant>();
  readonly #pending = new Map<string, Promise<Grant>>();
  #index: ReleaseIndex | undefined;
  #indexing: Promise<ReleaseIndex> | undefined;
  readonly #refused: Counter<'reason'>;
  readonly #lookups: Counter<'result'>;
  readonly #throttle: LogThrottle;

  constructor(opts: ArtifactAccessOptions) {
    this.#o = opts;
    this.#ttlMs = opts.ttlMs ?? 30_000;
    this.#recheckMs = opts.recheckMs ?? 0;
    this.#indexTtlMs = opts.indexTtlMs ?? 30_000;
    this.#indexRecheckMs = opts.indexRecheckMs ?? 1000;
    this.#clock = opts.clock ?? (() => performance.now());
    this.#maxDevices = opts.maxDevices ?? 100_000;
    this.#throttle = new LogThrottle(10_000);
    this.#refused = new Counter({
      name: 'edgefleet_hub_artifact_requests_refused_total',
      help: 'Artifact downloads refused with 404, by reason: not_assigned (a release not assigned to the device), unknown (no such release file).',
      labelNames: ['reason'],
      registers: [opts.registry],
    });
    this.#lookups = new Counter({
      name: 'edgefleet_hub_artifact_access_lookups_total',
      help: 'Artifact access decisions, by result: cached (no store read) or lookup (the device read from the store).',
      labelNames: ['result'],
      registers: [opts.registry],
    });
    for (const reason of ['not_assigned', 'unknown']) this.#refused.inc({ reason }, 0);
  }

  /** Whether the device may fetch this artifact; a refusal is counted and logged (throttled). */
  async allows(deviceId: string, sha256: string): Promise<boolean> {
    const now = this.#clock();
    let g = this.#grants.get(deviceId);
    if (g && now - g.at < this.#ttlMs && (g.shas.has(sha256) || now - g.at < this.#recheckMs)) {
      this.#lookups.inc({ result: 'cached' });
    } else {
      this.#lookups.inc({ result: 'lookup' });
      g = await this.#lookup(deviceId);
    }
    if (g.shas.has(sha256)) return true;
    const reason = this.#index?.all.has(sha256) ? 'not_assigned' : 'unknown';
    this.#refused.inc({ reason });
    this.#throttle.run(`artifact:${reason}`, (suppressed) =>
      this.#o.log.warn({ deviceId, sha256: sha256.slice(0, 64), reason, suppressed }, 'artifact download refused (404): not assigned to the device'),
    );
    return false;
  }

  /** Drops cached decisions (one device's, or all and the release index): callers that know assignments changed, tests. */
  forget(deviceId?: string): void {
    if (deviceId !== undefined) return void this.#grants.delete(deviceId);
    this.#grants.clear();
    this.#index = undefined;
  }

  #lookup(deviceId: string): Promise<Grant> {
    let p = this.#pending.get(deviceId);
    if (!p) {
      p = this.#read(deviceId).finally(() => this.#pending.delete(deviceId));
      this.#pending.set(deviceId, p);
    }
    return p;
  }

  async #read(deviceId: string): Promise<Grant> {
    const [desired, candidate] = await Promise.all([this.#o.store.desiredModels(deviceId), this.#o.store.getRolloutCandidate(deviceId)]);
    const shas = new Set<string>();
    const releases = desired.map((d) => `${d.name}@${d.version}`);
    for (const d of desired) {
      const r = d.rolloutId === null ? undefined : await this.#o.store.getRollout(d.rolloutId);
      const spec = r && RolloutWithSchema.safeParse(JSON.parse(r.spec));
      for (const w of (spec?.success && spec.data.with) || []) releases.push(`${w.model}@${w.version}`);
    }
    for (const slot of candidate?.modelState ?? []) {
      for (const v of [slot.active, slot.previous]) {
        if (!v) continue;
        shas.add(v.sha256);
        releases.push(`${slot.name}@${v.version}`);
      }
    }
    let index = await this.#releaseIndex(false);
    if (releases.some((r) => !index.files.has(r))) index = await this.#releaseIndex(true);
    for (const r of releases) for (const sha of index.files.get(r) ?? []) shas.add(sha);
    // Installed versions the hub has no release of (deleted) keep only their reported sha256,
    // and only if the hub serves it at all.
    for (const sha of [...shas]) if (!index.all.has(sha)) shas.delete(sha);
    const g: Grant = { shas, at: this.#clock() };
    this.#grants.delete(deviceId);
    this.#grants.set(deviceId, g);
    while (this.#grants.size > this.#maxDevices) this.#grants.delete(this.#grants.keys().next().value as string);
    return g;
  }

  /** The release index; `stale` asks for a rebuild (at most once per indexRecheckMs). */
  async #releaseIndex(stale: boolean): Promise<ReleaseIndex> {
    const now = this.#clock();
    const i = this.#index;
    if (i && now - i.at < (stale ? this.#indexRecheckMs : this.#indexTtlMs)) return i;
    this.#indexing ??= this.#buildIndex().finally(() => (this.#indexing = undefined));
    return this.#indexing;
  }

  async #buildIndex(): Promise<ReleaseIndex> {
    const files = new Map<string, string[]>();
    const all = new Set<string>();
    for (const m of await this.#o.store.listModels()) {
      const shas = [m.sha256];
      try {
        const p = ReleaseFilesSchema.safeParse(JSON.parse(m.manifest));
        if (p.success && p.data.testVectorsFile) shas.push(p.data.testVectorsFile.sha256);
      } catch {
        // The hub wrote the manifest; an unreadable one still serves its model file.
      }
      files.set(`${m.name}@${m.version}`, shas);
      for (const s of shas) all.add(s);
    }
    this.#index = { files, all, at: this.#clock() };
    return this.#index;
  }
}
