/**
 * The hub's storage contract. Everything the hub keeps (principals and their reported state,
 * telemetry, per-device counters, operator tokens) goes through this interface, so the SQLite
 * implementation can be swapped for PostgreSQL when the hub outgrows one process
 * (ARCHITECTURE "Beyond one machine"). Methods are async for that reason, even though SQLite
 * answers synchronously. Storage failures reject with EdgefleetError STORAGE.
 */
import type { ChainedAuditRow } from '../../shared/audit-chain.ts';
import type { EdgefleetError } from '../../shared/errors.ts';
import type { Component } from '../../shared/lifecycle.ts';
import type { Hello, ModelRef, TelemetryRecord } from '../../shared/protocol.ts';
import type { HealthWindow, ModelSlot } from '../../shared/updates.ts';
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
  /** Set once the principal is revoked: it never authenticates again. */
  revokedAt: number | null;
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
  revokedAt: number | null;
  /** The enrollment token it registered itself with; null when an operator added it. */
  enrolledBy: string | null;
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

/** online and offline: not revoked, by presence; revoked: revoked whatever the presence. */
export type DeviceStatus = 'online' | 'offline' | 'revoked';

/**
 * One page of principals (issues #15, #16), in id order, with keyset paging: `after` is the last
 * id of the previous page, so a page costs the same wherever it is and adding principals while
 * a client pages never repeats or skips one that existed when it started.
 */
export interface DeviceQuery {
  /** Ids strictly after this one. */
  after?: string;
  limit: number;
  /** Case-insensitive substring of the id or of a label value. */
  search?: string;
  group?: string;
  kind?: PrincipalKind;
  status?: DeviceStatus;
  /** Every pair must be among the principal's labels. */
  labels?: readonly (readonly [key: string, value: string])[];
}

export interface DevicePage {
  items: DeviceRecord[];
  /** Principals matching the filter, on every page (not only after `after`). */
  total: number;
  /** Whether principals matching the filter follow the last item. */
  more: boolean;
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
  /** Indexes (into the batch) of the records stored now for the first time. */
  fresh: number[];
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
  /** The operator who created it (audit actor), absent for the bootstrap admin token. */
  createdBy?: string;
  revokedAt?: number | null;
}

export interface EnrollmentTokenRecord {
  id: string;
  group: string;
  labels: Record<string, string>;
  /** Label keys an enrolling device may add to the token's labels (never override them). */
  allowDeviceLabels: string[];
  token: TokenHash;
  maxUses: number;
  uses: number;
  expiresAt: number;
  createdAt: number;
  createdBy: string;
  revokedAt: number | null;
}

export type AuditOutcome = 'ok' | 'denied' | 'failed';

export interface AuditEntry {
  ts: number;
  /** Operator token name, `enrollment:<tokenId>`, or `anonymous` for a request without valid credentials. */
  actor: string;
  actorId: string | null;
  role: string | null;
  /** e.g. rollout.create, device.revoke, token.create, device.enroll. */
  action: string;
  target: string | null;
  outcome: AuditOutcome;
  status: number | null;
  remote: string | null;
  /** Never secrets. */
  details: Record<string, unknown>;
}

export interface AuditRecord extends AuditEntry {
  id: number;
}

export interface AuditQuery {
  since?: number;
  until?: number;
  actor?: string;
  action?: string;
  outcome?: AuditOutcome;
  /** Entries with ids below this (paging newest first). */
  before?: number;
  limit: number;
}

/** What the audit retention prune may delete (sqlite-security.ts pruneAudit). */
export interface AuditPrune {
  /** Rows with ts before this are due. */
  olderThan: number;
  /** Rows beyond the newest maxRows (counting the checkpoint written) are due. */
  maxRows: number;
  /** Most rows deleted by one call (one transaction); the caller calls again while some were. */
  batch: number;
  /** The checkpoint row's ts. */
  at: number;
}

export interface AuditPruneResult {
  pruned: number;
  /** The last pruned id: the first kept row links to its hash, which the checkpoint records. */
  through: number;
  checkpointId: number;
}

/** Why an enrollment was refused: the token is unknown, used up, expired or revoked. */
export type EnrollRefusal = 'unknown' | 'used_up' | 'expired' | 'revoked';

/** Revocation, self-enrollment and the operator audit log (migration 6, sqlite-security.ts). */
export interface SecurityStore {
  /** Marks the principal revoked (idempotent: keeps the first time); undefined when it does not exist. */
  revokePrincipal(id: string, at: number): Promise<{ id: string; kind: PrincipalKind; revokedAt: number } | undefined>;
  listApiTokens(): Promise<ApiTokenRecord[]>;
  /** Marks an operator token revoked; false when it does not exist. */
  revokeApiToken(id: string, at: number): Promise<boolean>;
  createEnrollmentToken(t: EnrollmentTokenRecord): Promise<void>;
  getEnrollmentToken(id: string): Promise<EnrollmentTokenRecord | undefined>;
  listEnrollmentTokens(): Promise<EnrollmentTokenRecord[]>;
  revokeEnrollmentToken(id: string, at: number): Promise<boolean>;
  /**
   * In one transaction: re-checks the (already verified) enrollment token is still usable at
   * `p.createdAt`, creates the principal in the token's group and counts the use. Returns the
   * refusal instead when the token cannot be used; rejects CONFLICT when the id exists.
   */
  enrollPrincipal(tokenId: string, p: Omit<NewPrincipal, 'group' | 'kind'>): Promise<{ group: string } | { refused: EnrollRefusal }>;
  /** Appends one row to the hash chain (shared/audit-chain.ts). */
  appendAudit(e: AuditEntry): Promise<void>;
  /** Newest first. */
  queryAudit(q: AuditQuery): Promise<AuditRecord[]>;
  /** Up to `limit` rows with ids above `afterId`, oldest first, exactly as stored (verify, export). */
  readAuditChain(afterId: number, limit: number): Promise<ChainedAuditRow[]>;
  getAuditRow(id: number): Promise<ChainedAuditRow | undefined>;
  /** Hashes rows written before the chain existed; how many. */
  sealAudit(): Promise<number>;
  /** Deletes due rows behind a checkpoint row; undefined when none are due; CONFLICT when the rows to delete do not verify. */
  pruneAudit(p: AuditPrune): Promise<AuditPruneResult | undefined>;
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

// ---------------------------------------------------------------------------------------------
// Rollouts (hub/rollouts/): every transition is one transaction guarded by the state it leaves,
// so an outcome reported twice (command result, telemetry event, hello) counts once.

export type RolloutState = 'running' | 'paused' | 'completed' | 'aborted' | 'rolled_back';
export type RolloutDeviceState = 'pending' | 'dispatched' | 'succeeded' | 'failed' | 'rolled_back';

export interface RolloutRecord {
  id: string;
  model: string;
  version: string;
  counter: number;
  sha256: string;
  /** The validated request (hub/rollouts/spec.ts) as JSON. */
  spec: string;
  /** Cumulative device count per wave, resolved at creation. */
  plan: number[];
  state: RolloutState;
  reason: string | null;
  currentWave: number;
  waveStartedAt: number;
  bakeStartedAt: number | null;
  bakeUntil: number | null;
  bakeExtensions: number;
  /** Highest wave index an operator approved (approval: each-wave); wave 0 needs none. */
  approvedWave: number;
  /** Gate results as JSON (hub/rollouts/gates.ts GateResult[]). */
  gateResults: string;
  createdAt: number;
  updatedAt: number;
  endedAt: number | null;
}

export interface NewRollout {
  id: string;
  model: string;
  version: string;
  counter: number;
  sha256: string;
  spec: string;
  plan: number[];
  createdAt: number;
}

export interface RolloutDeviceRecord {
  rolloutId: string;
  deviceId: string;
  wave: number;
  state: RolloutDeviceState;
  assignedAt: number | null;
  fromVersion: string | null;
  fromCounter: number | null;
  attempts: number;
  dispatchedAt: number | null;
  finishedAt: number | null;
  detail: string | null;
}

export interface DesiredModel {
  deviceId: string;
  name: string;
  version: string;
  counter: number;
  rolloutId: string | null;
}

export interface HistoryEntry {
  deviceId: string;
  ts: number;
  event: string;
  name?: string;
  version?: string;
  counter?: number;
  rolloutId?: string;
  details?: Record<string, unknown>;
  /** Entries with the same key are recorded once (model events from several sources). */
  dedupeKey?: string;
}
export interface HistoryRecord extends Omit<HistoryEntry, 'dedupeKey' | 'details'> {
  id: number;
  details: Record<string, unknown>;
}

/** What selectors and the dispatcher need to know about a device. */
export interface RolloutCandidate {
  id: string;
  group: string;
  labels: Record<string, string>;
  online: boolean;
  /** The last reported model state (hello.modelState); empty before the first. */
  modelState: ModelSlot[];
}

/** A transition of one rollout device, with the history entry that records it. */
export interface DeviceTransition {
  rolloutId: string;
  deviceId: string;
  from: readonly RolloutDeviceState[];
  to: RolloutDeviceState;
  at: number;
  detail?: string;
  /** Known when the outcome says what served before (model event `installed.previous`). */
  fromVersion?: { version: string; counter: number };
  history?: HistoryEntry;
}

export interface RolloutPatch {
  state?: RolloutState;
  reason?: string | null;
  currentWave?: number;
  waveStartedAt?: number;
  bakeStartedAt?: number | null;
  bakeUntil?: number | null;
  bakeExtensions?: number;
  approvedWave?: number;
  gateResults?: string;
  endedAt?: number | null;
}

export interface RolloutStore {
  /** Stores the rollout and its devices; CONFLICT when the model has an active rollout. */
  createRollout(r: NewRollout, devices: readonly { deviceId: string; wave: number }[]): Promise<RolloutRecord>;
  getRollout(id: string): Promise<RolloutRecord | undefined>;
  /** Newest first. */
  listRollouts(): Promise<RolloutRecord[]>;
  /**
   * Applies `patch` only if the rollout is in one of `from` (and at `wave` when given);
   * returns the updated record, or undefined when the guard did not hold.
   */
  updateRollout(id: string, from: readonly RolloutState[], patch: RolloutPatch, at: number, wave?: number): Promise<RolloutRecord | undefined>;
  /**
   * Moves the rollout to wave `to` (guarded by `from`), sets the desired model of every device
   * of that wave (and records `assigned`), in one transaction. False when the guard failed.
   */
  startWave(id: string, from: number, to: number, at: number): Promise<boolean>;
  /** Adds devices that match after creation (once each); sets desired when their wave started. */
  addRolloutDevices(id: string, devices: readonly { deviceId: string; wave: number }[], at: number): Promise<number>;
  rolloutDevices(id: string): Promise<RolloutDeviceRecord[]>;
  /** The rollouts (newest first) of `model`@`version` that include the device. */
  rolloutsOfDevice(deviceId: string, model: string, version?: string): Promise<RolloutDeviceRecord[]>;
  /** Applies a device transition; false (history still recorded, deduplicated) when `from` did not hold. */
  transitionDevice(t: DeviceTransition): Promise<boolean>;
  /**
   * Records a dispatch: pending|dispatched → dispatched, attempts + 1, and the version the
   * device served before (for a later rollback). History `command_sent`.
   */
  markDispatched(rolloutId: string, deviceId: string, at: number, from: { version: string; counter: number } | null, commandId: string): Promise<boolean>;
  /**
   * Ends the rollout as `rolled_back` (guarded by `from`): desired state of the devices that
   * got the release goes back to what they served before (or is removed), pending devices lose
   * theirs. Returns the devices that may run the release (succeeded or dispatched).
   */
  rollbackRollout(id: string, from: readonly RolloutState[], at: number, reason: string): Promise<RolloutDeviceRecord[] | undefined>;
  /** Ends the rollout as `aborted`: pending devices lose their desired state, installed ones keep it. */
  abortRollout(id: string, from: readonly RolloutState[], at: number, reason: string): Promise<RolloutRecord | undefined>;
  desiredModels(deviceId: string): Promise<DesiredModel[]>;
  appendHistory(e: HistoryEntry): Promise<boolean>;
  deviceHistory(deviceId: string): Promise<HistoryRecord[]>;
  listRolloutCandidates(): Promise<RolloutCandidate[]>;
  getRolloutCandidate(id: string): Promise<RolloutCandidate | undefined>;
  /** Health windows (stream `health`) of these devices for one model, windowStart in [from, to). */
  healthWindows(deviceIds: readonly string[], model: string, from: number, to: number): Promise<{ deviceId: string; window: HealthWindow }[]>;
}

// ---------------------------------------------------------------------------------------------
// Feedback and KPIs (hub/feedback/, hub/kpis/; tables of migration 5)

/** One inference the hub indexed from telemetry (kind `inference`), with its ground truth. */
export interface IndexedInference {
  deviceId: string;
  /** The inference's correlation id (agent/pipeline.ts), unique per device. */
  id: string;
  model: string;
  version: string;
  /** Predicted (top-1) label and its confidence. */
  label: string;
  confidence: number;
  /** Prediction time (epoch ms). */
  ts: number;
  truth?: string | null;
  feedbackAt?: number | null;
  /** Manifest v2 task (absent: a v1 record, classification); migration 7. */
  task?: string;
  /** Compact prediction fields of a non-classification task (hub/feedback/task-truth.ts). */
  pred?: string | null;
}

/** One health window in columns (shared/updates.ts HealthWindow plus its device). */
export interface IndexedHealthWindow {
  deviceId: string;
  model: string;
  version: string;
  windowStart: number;
  windowMs: number;
  ok: number;
  errors: number;
  latency: number[];
  confidence: number[];
  classCounts: number[];
  cpuMs?: number;
}

/** Predictions of one model version in one window of prediction time. */
export interface AccuracyBucket {
  /** Start of the window (epoch ms, aligned to the window length). */
  start: number;
  predictions: number;
  /** Sum of top-1 confidences of the predictions (mean = estimated accuracy). */
  confidenceSum: number;
  labelled: number;
  correct: number;
}

export interface PresenceChange {
  deviceId: string;
  ts: number;
  online: boolean;
}

export interface KpiStore {
  /** Indexes inferences; an inference already indexed (device, id) keeps its first row. */
  indexInferences(rows: readonly IndexedInference[]): Promise<void>;
  indexHealthWindows(rows: readonly IndexedHealthWindow[]): Promise<void>;
  /** Indexed inferences with these ids (any device when `deviceId` is not given). */
  findInferences(keys: readonly { id: string; deviceId?: string }[]): Promise<IndexedInference[]>;
  /** Sets the ground truth of indexed inferences; returns how many rows it changed. */
  recordFeedback(items: readonly { deviceId: string; id: string; truth: string; at: number }[]): Promise<number>;
  /** Accuracy buckets by PREDICTION time, ts in [from, to). */
  accuracyBuckets(model: string, version: string, from: number, to: number, windowMs: number): Promise<AccuracyBucket[]>;
  /** Labelled predictions counted by (truth, predicted), ts in [from, to). */
  confusion(model: string, version: string, from: number, to: number): Promise<{ truth: string; label: string; n: number }[]>;
  /** Predictions (indexed) counted by predicted label, ts in [from, to). */
  predictedLabels(model: string, version: string, from: number, to: number): Promise<{ label: string; n: number }[]>;
  /** Indexed predictions of a non-classification version and its alarms (anomaly), ts in [from, to). */
  taskPredictions(model: string, version: string, from: number, to: number): Promise<{ predictions: number; alarms: number }>;
  /** Labelled predictions of a non-classification version (label, compact prediction, truth), ts in [from, to). */
  taskFeedback(model: string, version: string, from: number, to: number): Promise<{ label: string; pred: string | null; truth: string }[]>;
  /** Indexed health windows, windowStart in [from, to). */
  kpiHealthWindows(model: string, version: string, from: number, to: number): Promise<IndexedHealthWindow[]>;
  /** Model versions with health windows or indexed inferences in [from, to). */
  modelVersionsSeen(from: number, to: number, model?: string): Promise<{ model: string; version: string }[]>;
  /** For each device: its last presence change before `from` (the state at `from`) and every change in [from, to). */
  presenceChanges(deviceIds: readonly string[], from: number, to: number): Promise<PresenceChange[]>;
  /** Deletes index rows and presence changes older than `before` (keeping each device's state at `before`). */
  pruneKpiData(before: number): Promise<{ inferences: number; healthWindows: number; presence: number }>;
}

// ---------------------------------------------------------------------------------------------
// Drift and alerts (hub/drift/, hub/alerts/; tables of migration 4)

/** One (model version, device, hub window) row of merged drift counts. */
export interface DriftDeviceWindow {
  model: string;
  version: string;
  deviceId: string;
  windowStart: number;
  windowMs: number;
  summaries: number;
  count: number;
  /** JSON of a DriftAggregate (shared/drift/merge.ts) without its summary id set. */
  aggregate: string;
}

export type MergeOutcome = 'merged' | 'duplicate';

export interface DriftMergeItem {
  summaryId: string;
  deviceId: string;
  model: string;
  version: string;
  windowStart: number;
  windowMs: number;
  receivedAt: number;
  merge: (stored: string | undefined) => { aggregate: string; count: number };
}

export interface DriftReportRow {
  model: string;
  version: string;
  windowStart: number;
  windowMs: number;
  evaluatedAt: number;
  /** Why the window was not tested (no reference for the model version), or null. */
  skipped: string | null;
  /** JSON of the report without findings. */
  report: string;
}

export interface DriftFindingRow {
  model: string;
  version: string;
  windowStart: number;
  scope: string;
  scopeId: string;
  feature: string;
  /** JSON of a DriftFinding (shared/drift/detector.ts). */
  finding: string;
}

export interface DriftFindingQuery {
  model?: string;
  version?: string;
  scope?: string;
  scopeId?: string;
  feature?: string;
  from?: number;
  to?: number;
  limit: number;
}

export type AlertState = 'open' | 'acknowledged' | 'resolved';

export interface AlertRecord {
  id: string;
  model: string;
  version: string;
  scope: string;
  scopeId: string;
  feature: string;
  state: AlertState;
  message: string;
  devices: string[];
  /** JSON evidence (hub/alerts/alerts.ts AlertEvidence). */
  evidence: string;
  firstWindow: number;
  lastWindow: number;
  windows: number;
  cleanWindows: number;
  openedAt: number;
  updatedAt: number;
  ackedAt: number | null;
  ackedBy: string | null;
  resolvedAt: number | null;
  resolvedBy: string | null;
}

export type DeliveryState = 'pending' | 'delivered' | 'failed';

export interface DeliveryRecord {
  id: number;
  alertId: string;
  /** `webhook` or `retraining`. */
  target: string;
  url: string;
  event: string;
  payload: string;
  state: DeliveryState;
  attempts: number;
  nextAt: number;
  lastError: string | null;
  log: { at: number; ok: boolean; status?: number; error?: string }[];
  createdAt: number;
  deliveredAt: number | null;
}

export interface NewDelivery {
  alertId: string;
  target: string;
  url: string;
  event: string;
  payload: string;
  at: number;
}

/** What one window's evaluation changes in the alerts, applied in one transaction. */
export interface AlertWindowUpdate {
  model: string;
  version: string;
  windowStart: number;
  at: number;
  /** Keys with findings this window: opened (new alert) or refreshed (open one updated). */
  hits: {
    scope: string;
    scopeId: string;
    feature: string;
    message: string;
    devices: string[];
    evidence: string;
    /** Id for a new alert, used only when no unresolved alert has this key. */
    newId: string;
  }[];
  /** Unresolved alerts of this model version without a hit gain a clean window; at this many they resolve. */
  autoResolveAfter: number;
}

export interface AlertWindowResult {
  opened: AlertRecord[];
  updated: AlertRecord[];
  resolved: AlertRecord[];
}

export interface DriftStore {
  /**
   * Merges summaries into their (model version, device, window) rows, all in one transaction
   * (one fsync for a burst, not one per summary): each summary id is recorded first and its row
   * left alone when the id was already known. `merge` gets the row's stored aggregate (undefined
   * for the first summary) and returns the new one; it must be synchronous, and an EdgefleetError
   * it throws refuses that summary alone (its outcome is the error; nothing of it is stored).
   */
  mergeDriftSummaries(items: readonly DriftMergeItem[]): Promise<(MergeOutcome | EdgefleetError)[]>;
  driftDeviceWindows(model: string, version: string, windowStart: number): Promise<DriftDeviceWindow[]>;
  /** Telemetry records of kind `drift` received at or after `receivedAt`, paged by cursor (rowid). */
  driftRecordsSince(receivedAt: number, after: number, limit: number): Promise<{ cursor: number; deviceId: string; record: TelemetryRecord }[]>;
  /** (model version, window) pairs with device rows and no report whose window ended at or before `windowEndBefore`, oldest first. */
  pendingDriftWindows(windowEndBefore: number): Promise<{ model: string; version: string; windowStart: number; windowMs: number }[]>;
  /** Stores a window's report and findings; false when the window was already evaluated. */
  putDriftReport(r: DriftReportRow, findings: readonly DriftFindingRow[]): Promise<boolean>;
  /** The newest reports (newest first), optionally of one model version, windowStart in [from, to). */
  driftReports(q: { model?: string; version?: string; from?: number; to?: number; limit: number }): Promise<DriftReportRow[]>;
  driftFindings(q: DriftFindingQuery): Promise<DriftFindingRow[]>;
  /** Deletes drift data of windows that started before `before`, and resolved alerts (with their deliveries) resolved before it. */
  pruneDrift(before: number): Promise<{ summaries: number; windows: number; reports: number; findings: number; alerts: number }>;

  applyAlertWindow(u: AlertWindowUpdate): Promise<AlertWindowResult>;
  getAlert(id: string): Promise<AlertRecord | undefined>;
  /** Newest first. */
  listAlerts(q: { state?: AlertState; model?: string; version?: string; limit: number }): Promise<AlertRecord[]>;
  /** Moves an alert (guarded by `from`); undefined when it does not exist, CONFLICT when the guard failed. */
  transitionAlert(id: string, from: readonly AlertState[], to: AlertState, at: number, by: string): Promise<AlertRecord | undefined>;

  addDeliveries(d: readonly NewDelivery[]): Promise<void>;
  dueDeliveries(at: number, limit: number): Promise<DeliveryRecord[]>;
  /** Records one attempt: delivered, or pending again at `nextAt`, or failed for good. */
  recordDeliveryAttempt(id: number, attempt: { at: number; ok: boolean; status?: number; error?: string; nextAt?: number; giveUp?: boolean }): Promise<void>;
  deliveries(alertId: string): Promise<DeliveryRecord[]>;
}

export interface HubStore extends Component, RolloutStore, KpiStore, DriftStore, SecurityStore {
  /** Rejects with CONFLICT when the id exists, NOT_FOUND when a sensor's device does not. */
  createPrincipal(p: NewPrincipal): Promise<void>;
  getCredentials(id: string): Promise<PrincipalCredentials | undefined>;
  getDevice(id: string): Promise<DeviceRecord | undefined>;
  listDevices(): Promise<DeviceRecord[]>;
  /** A bounded, indexed page of principals matching the filter (keyset on id). */
  queryDevices(q: DeviceQuery): Promise<DevicePage>;
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
