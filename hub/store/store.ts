/**
 * The hub's storage contract. Everything the hub keeps (principals and their reported state,
 * telemetry, per-device counters, operator tokens) goes through this interface, so the SQLite
 * implementation can be swapped for PostgreSQL when the hub outgrows one process
 * (ARCHITECTURE "Beyond one machine"). Methods are async for that reason, even though SQLite
 * answers synchronously. Storage failures reject with EdgefleetError STORAGE.
 */
import type { Component } from '../../shared/lifecycle.ts';
import type { Hello, ModelRef, TelemetryRecord } from '../../shared/protocol.ts';
import type { TokenHash } from '../auth/tokens.ts';

/** device: an agent; sensor: feeds one device's inputs; consumer: reads results (MES, SCADA, dashboards). */
export type PrincipalKind = 'device' | 'sensor' | 'consumer';
export type ApiRole = 'admin' | 'operator' | 'viewer';

export interface NewPrincipal {
  id: string;
  kind: PrincipalKind;
  group: string;
  labels: Record<string, string>;
  /** For sensors: the device whose `in/` topics they feed. */
  deviceId?: string;
  token: TokenHash;
  createdAt: number;
}

/** What MQTT authentication needs, nothing more. */
export interface PrincipalCredentials {
  id: string;
  kind: PrincipalKind;
  deviceId: string | null;
  token: TokenHash;
}

export interface StreamPosition {
  stream: string;
  epoch: number;
  nextSeq: number;
  pending: number;
}

export interface DeviceCounters {
  /** Telemetry records stored (first arrival). */
  stored: number;
  /** Records received again after they were stored. */
  duplicates: number;
  /** Messages from this principal that were refused or could not be decoded. */
  badMessages: number;
  /** Sequence numbers missing inside the received range of each (stream, epoch). */
  gaps: number;
  /** Records the agent reported as committed locally and not yet acked (last hello). */
  backlog: number;
}

export interface DeviceRecord {
  id: string;
  kind: PrincipalKind;
  group: string;
  labels: Record<string, string>;
  deviceId: string | null;
  createdAt: number;
  lastSeen: number | null;
  online: boolean;
  agentVersion: string | null;
  bootEpoch: number | null;
  models: ModelRef[];
  streams: StreamPosition[];
  counters: DeviceCounters;
}

/** Per (device, stream, epoch): what arrived, so gaps are visible. */
export interface StreamStat {
  stream: string;
  epoch: number;
  minSeq: number;
  maxSeq: number;
  count: number;
  gaps: number;
}

export interface IngestResult {
  stored: number;
  duplicates: number;
}

export interface TelemetryRow {
  /** Position in arrival order; pass as `after` to get the next page. */
  cursor: number;
  deviceId: string;
  stream: string;
  epoch: number;
  seq: number;
  ts: number;
  kind: string;
  body: Record<string, unknown>;
  receivedAt: number;
}

export interface TelemetryQuery {
  deviceId?: string;
  stream?: string;
  kind?: string;
  after?: number;
  limit: number;
}

export interface ApiTokenRecord {
  id: string;
  name: string;
  role: ApiRole;
  token: TokenHash;
  createdAt: number;
}

export interface FleetTotals {
  devices: number;
  devicesOnline: number;
  sensors: number;
  sensorsOnline: number;
  recordsStored: number;
}

/** A signed model release as stored: the manifest and the signed envelope as JSON text. */
export interface ModelRecord {
  name: string;
  version: string;
  sha256: string;
  size: number;
  /** Manifest JSON exactly as signed inside `release`. */
  manifest: string;
  /** The signed release envelope (shared/signing.ts) as JSON. */
  release: string;
  counter: number;
  keyId: string;
  createdAt: number;
}

export interface NewModelRelease {
  name: string;
  version: string;
  sha256: string;
  size: number;
  manifest: string;
  createdAt: number;
}

export interface PendingUpload {
  name: string;
  version: string;
  manifest: string;
  createdAt: number;
}

export interface HubStore extends Component {
  /** Rejects with CONFLICT when the id exists, NOT_FOUND when a sensor's device does not. */
  createPrincipal(p: NewPrincipal): Promise<void>;
  getCredentials(id: string): Promise<PrincipalCredentials | undefined>;
  getDevice(id: string): Promise<DeviceRecord | undefined>;
  listDevices(): Promise<DeviceRecord[]>;
  streamStats(deviceId: string): Promise<StreamStat[]>;

  /** At start-up of an embedded broker nobody is connected yet. */
  markAllOffline(at: number): Promise<void>;
  setOnline(id: string, online: boolean, at: number): Promise<void>;
  recordHello(hello: Hello, at: number): Promise<void>;
  /**
   * Stores a batch in one transaction: each record once (INSERT OR IGNORE on its identity),
   * counters and stream statistics with it. Resolves only after the commit.
   */
  ingestTelemetry(deviceId: string, records: readonly TelemetryRecord[], receivedAt: number): Promise<IngestResult>;
  countBadMessage(id: string, at: number): Promise<void>;
  queryTelemetry(q: TelemetryQuery): Promise<TelemetryRow[]>;
  fleetTotals(): Promise<FleetTotals>;

  createApiToken(t: ApiTokenRecord): Promise<void>;
  getApiToken(id: string): Promise<ApiTokenRecord | undefined>;
  findApiTokensByName(name: string): Promise<ApiTokenRecord[]>;
  deleteApiToken(id: string): Promise<void>;

  /** Records (or replaces) a manifest waiting for its artifact; CONFLICT when that version is released. */
  putPendingUpload(p: PendingUpload): Promise<void>;
  getPendingUpload(name: string, version: string): Promise<PendingUpload | undefined>;
  /**
   * Allocates the next release counter, has `sign` build the signed release for it, and stores
   * the release, all in one transaction: counters are strictly increasing in commit order and a
   * counter is never reused, even when a release is later deleted. `sign` must be synchronous.
   * Removes the pending upload. Rejects CONFLICT when name@version exists.
   */
  createModelRelease(m: NewModelRelease, sign: (counter: number) => { release: string; keyId: string }): Promise<ModelRecord>;
  getModel(name: string, version: string): Promise<ModelRecord | undefined>;
  /** Every release, newest first. */
  listModels(): Promise<ModelRecord[]>;
  /** Whether some release references this artifact (only those are served). */
  hasReleasedArtifact(sha256: string): Promise<boolean>;
  /** The last release counter handed out (0 before the first). */
  lastReleaseCounter(): Promise<number>;
}
