/**
 * Zod schemas of the HTTP API's RESPONSES (issue #7, OpenAPI), one per shape the handlers send:
 * hub/api/openapi.ts turns them into `components.schemas` of /openapi.json. Request schemas are
 * not here on purpose: the document uses the very schemas the server validates with, exported
 * from where they live (hub/api/server.ts, hub/rollouts/spec.ts, hub/feedback/feedback.ts, ...).
 *
 * The handlers build their replies with plain functions (deviceView, modelView, rolloutView,
 * alertView); nothing parses a reply through these schemas at run time (that would cost every
 * request a walk of the reply). test/unit/openapi.test.ts instead checks live replies of an
 * in-process hub against the generated document, which refuses fields it does not list, so a
 * view that grows a field fails the test until its schema here says so.
 *
 * Where a part of a reply is open-ended (a release manifest inside a rollout's spec, gate
 * figures, drift test evidence) it is `z.record(z.string(), z.unknown())`: an honest `type: object`.
 */
import { z } from 'zod';
import { ErrorCode } from '../../shared/errors.ts';
import { ModelRefSchema } from '../../shared/ids.ts';
import { ManifestSchema, ManifestV2Schema } from '../../shared/manifest.ts';
import { ReleaseSchema } from '../../shared/signing.ts';

const IsoTime = z.iso.datetime();
const AnyObject = z.record(z.string(), z.unknown());

/** Every error reply: `{ error: { code, message } }` with the status from shared/errors.ts httpStatusOf. */
export const ErrorReplySchema = z.object({
  error: z.object({ code: z.enum(Object.values(ErrorCode) as [ErrorCode, ...ErrorCode[]]), message: z.string() }),
});

export const HealthzSchema = z.object({ ok: z.literal(true) });

// ---- devices ---------------------------------------------------------------------------------

const DeviceCountersSchema = z.object({
  stored: z.number().int(),
  duplicates: z.number().int(),
  badMessages: z.number().int(),
  gaps: z.number().int(),
  backlog: z.number().int(),
});

/** hub/api/server.ts deviceView: a device, sensor or consumer. */
export const DeviceSchema = z.object({
  id: z.string(),
  kind: z.enum(['device', 'sensor', 'consumer']),
  group: z.string(),
  labels: z.record(z.string(), z.string()),
  /** Sensors only: the device whose inputs they feed. */
  device: z.string().optional(),
  /** Set once revoked: the principal never authenticates again. */
  revokedAt: IsoTime.nullable(),
  /** The enrollment token it registered itself with; null when an operator registered it. */
  enrolledBy: z.string().nullable(),
  online: z.boolean(),
  lastSeen: IsoTime.nullable(),
  createdAt: IsoTime,
  agentVersion: z.string().nullable(),
  bootEpoch: z.number().int().nullable(),
  models: z.array(ModelRefSchema),
  counters: DeviceCountersSchema,
});

/** GET /v1/devices: one page in id order (hub/api/device-list.ts). */
export const DevicePageSchema = z.object({
  items: z.array(DeviceSchema),
  /** Pass as `cursor` (with the same filters) for the next page; null on the last page. */
  nextCursor: z.string().nullable(),
  /** Principals matching the filters, on every page. */
  total: z.number().int(),
});

export const DeviceDetailSchema = DeviceSchema.extend({
  streams: z.array(z.object({ stream: z.string(), epoch: z.number().int(), nextSeq: z.number().int(), pending: z.number().int() })),
  streamStats: z.array(
    z.object({ stream: z.string(), epoch: z.number().int(), minSeq: z.number().int(), maxSeq: z.number().int(), count: z.number().int(), gaps: z.number().int() }),
  ),
});

/** POST /v1/devices: the only reply that ever holds the principal's token. */
export const CreatedPrincipalSchema = z.object({
  id: z.string(),
  kind: z.enum(['device', 'sensor', 'consumer']),
  group: z.string(),
  device: z.string().optional(),
  token: z.string(),
});

export const DeviceHistorySchema = z.object({
  device: z.string(),
  history: z.array(
    z.object({
      id: z.number().int(),
      deviceId: z.string(),
      ts: z.number().int(),
      at: IsoTime,
      event: z.string(),
      name: z.string().optional(),
      version: z.string().optional(),
      counter: z.number().int().optional(),
      rolloutId: z.string().optional(),
      details: AnyObject,
    }),
  ),
});

export const TelemetryPageSchema = z.object({
  records: z.array(
    z.object({
      cursor: z.number().int(),
      deviceId: z.string(),
      stream: z.string(),
      epoch: z.number().int(),
      seq: z.number().int(),
      ts: z.number().int(),
      kind: z.string(),
      body: AnyObject,
      receivedAt: z.number().int(),
    }),
  ),
  /** Pass as `after` for the next page; null on the last page. */
  next: z.number().int().nullable(),
});

export const FleetSchema = z.object({
  devices: z.object({ total: z.number().int(), online: z.number().int() }),
  sensors: z.object({ total: z.number().int(), online: z.number().int() }),
  records: z.object({ stored: z.number().int(), perSecondLastMinute: z.number() }),
});

// ---- security: operator tokens, enrollment, revocation, audit (issue #6) ----------------------

const RoleSchema = z.enum(['viewer', 'operator', 'admin']);

/** GET /v1/whoami: the caller's token. */
export const WhoamiSchema = z.object({ name: z.string(), role: RoleSchema });

/** hub/auth/security.ts operatorTokenView. */
export const OperatorTokenSchema = z.object({
  id: z.string(),
  name: z.string(),
  role: RoleSchema,
  createdAt: IsoTime,
  /** The operator who created it; null for the bootstrap admin token. */
  createdBy: z.string().nullable(),
  revokedAt: IsoTime.nullable(),
});
export const OperatorTokenListSchema = z.object({ tokens: z.array(OperatorTokenSchema) });
/** POST /v1/tokens: the only reply that ever holds the token (`<id>.<secret>`). */
export const CreatedOperatorTokenSchema = OperatorTokenSchema.extend({ token: z.string() });

/** hub/auth/security.ts enrollmentTokenView. */
export const EnrollmentTokenSchema = z.object({
  id: z.string(),
  group: z.string(),
  labels: z.record(z.string(), z.string()),
  /** Label keys an enrolling device may add; the token's labels win (issue #14). */
  allowDeviceLabels: z.array(z.string()),
  maxUses: z.number().int(),
  uses: z.number().int(),
  expiresAt: IsoTime,
  createdAt: IsoTime,
  createdBy: z.string(),
  revokedAt: IsoTime.nullable(),
  /** Not revoked, not expired, uses left. */
  usable: z.boolean(),
});
export const EnrollmentTokenListSchema = z.object({ tokens: z.array(EnrollmentTokenSchema) });
/** POST /v1/enrollment-tokens: the only reply that ever holds the token (`enr_<id>.<secret>`). */
export const CreatedEnrollmentTokenSchema = EnrollmentTokenSchema.extend({ token: z.string() });

export const RevokedPrincipalSchema = z.object({ id: z.string(), kind: z.enum(['device', 'sensor', 'consumer']), revokedAt: IsoTime });

/** GET /v1/audit/verify (issue #14, shared/audit-chain.ts AuditVerifyResult). */
export const AuditVerifySchema = z.object({
  ok: z.boolean(),
  /** Rows checked. */
  rows: z.number().int(),
  firstId: z.number().int().nullable(),
  /** The newest row; keep its hash elsewhere and pass it as the anchor later. */
  head: z.object({ id: z.number().int(), hash: z.string() }).nullable(),
  /** What vouches for the first kept row: the start of the log or a prune checkpoint. */
  start: z.enum(['genesis', 'checkpoint']).nullable(),
  /** The first problem in id order: gap (deleted rows), hash_mismatch (edited row), prev_hash_mismatch, unsealed, bad_checkpoint, head_mismatch. */
  broken: z
    .object({
      id: z.number().int(),
      reason: z.enum(['hash_mismatch', 'prev_hash_mismatch', 'gap', 'unsealed', 'bad_checkpoint', 'head_mismatch']),
      message: z.string(),
    })
    .optional(),
});

export const AuditPageSchema = z.object({
  entries: z.array(
    z.object({
      id: z.number().int(),
      ts: z.number().int(),
      at: IsoTime,
      /** Operator token name, `enrollment:<tokenId>`, or `anonymous`. */
      actor: z.string(),
      actorId: z.string().nullable(),
      role: z.string().nullable(),
      action: z.string(),
      target: z.string().nullable(),
      outcome: z.enum(['ok', 'denied', 'failed']),
      status: z.number().int().nullable(),
      remote: z.string().nullable(),
      /** Never secrets. */
      details: AnyObject,
    }),
  ),
  /** Pass as `before` for the next (older) page; null on the last page. */
  next: z.number().int().nullable(),
});

// ---- models ----------------------------------------------------------------------------------

export const KeysSchema = z.object({
  /** keyId of the key that signs new releases. */
  active: z.string(),
  keys: z.array(z.object({ keyId: z.string(), alg: z.literal('ed25519'), publicKeyPem: z.string() })),
});

/** hub/api/server.ts modelView: a released model version. */
export const ModelSchema = z.object({
  name: z.string(),
  version: z.string(),
  counter: z.number().int(),
  sha256: z.string(),
  size: z.number().int(),
  keyId: z.string(),
  quantization: ManifestV2Schema.shape.quantization,
  description: z.string().optional(),
  createdAt: IsoTime,
  /** Where devices download the artifact (device credentials). */
  artifactPath: z.string(),
});

export const ModelListSchema = z.object({ models: z.array(ModelSchema) });
export const ReleasedModelSchema = ModelSchema.extend({ release: ReleaseSchema });
export const ModelDetailSchema = ReleasedModelSchema.extend({ manifest: ManifestSchema });

/** POST /v1/models 202: the manifest is accepted; PUT the artifact next. */
export const AnnouncedModelSchema = z.object({
  name: z.string(),
  version: z.string(),
  artifact: z.object({ sha256: z.string(), size: z.number().int() }),
  upload: z.object({ method: z.literal('PUT'), path: z.string() }),
  /** Present when the manifest names a testVectorsFile: PUT it here before the artifact. */
  vectors: z.object({ method: z.literal('PUT'), path: z.string(), file: z.string(), sha256: z.string(), size: z.number().int() }).optional(),
});

export const StoredVectorsSchema = z.object({ sha256: z.string(), size: z.number().int() });

// ---- rollouts --------------------------------------------------------------------------------

const RolloutCountsSchema = z.object({
  pending: z.number().int(),
  dispatched: z.number().int(),
  succeeded: z.number().int(),
  failed: z.number().int(),
  rolled_back: z.number().int(),
  total: z.number().int(),
});

/** hub/rollouts/view.ts RolloutStatus. */
export const RolloutStatusSchema = z.object({
  id: z.string(),
  model: z.string(),
  version: z.string(),
  /** Releases installed with model@version as one unit on each device (spec `with`); [] for one release. */
  with: z.array(z.object({ model: z.string(), version: z.string() })),
  counter: z.number().int(),
  state: z.enum(['running', 'paused', 'completed', 'aborted', 'rolled_back']),
  phase: z.enum(['dispatching', 'baking', 'awaiting_approval', 'paused', 'ended']),
  reason: z.string().nullable(),
  currentWave: z.number().int(),
  waves: z.array(
    z.object({
      index: z.number().int(),
      cumulative: z.number().int(),
      devices: z.number().int(),
      counts: RolloutCountsSchema,
      status: z.enum(['done', 'current', 'waiting']),
    }),
  ),
  counts: RolloutCountsSchema,
  bake: z.object({ startedAt: IsoTime.nullable(), until: IsoTime.nullable(), extensions: z.number().int() }),
  /** The validated spec the rollout was created with (defaults filled in). */
  spec: AnyObject,
  /** Health gate results per wave: verdict, breaches and the figures behind them. */
  gates: z.array(AnyObject),
  createdAt: IsoTime,
  updatedAt: IsoTime,
  endedAt: IsoTime.nullable(),
  /** GET /v1/rollouts/{id} only. */
  devices: z
    .array(
      z.object({
        id: z.string(),
        wave: z.number().int(),
        state: z.enum(['pending', 'dispatched', 'succeeded', 'failed', 'rolled_back']),
        attempts: z.number().int(),
        from: z.string().nullable(),
        detail: z.string().nullable(),
      }),
    )
    .optional(),
});

export const RolloutListSchema = z.object({ rollouts: z.array(RolloutStatusSchema) });

// ---- feedback and KPIs -----------------------------------------------------------------------

/** hub/feedback/feedback.ts FeedbackResult. */
export const FeedbackResultSchema = z.object({
  received: z.number().int(),
  matched: z.number().int(),
  unknown: z.number().int(),
  ambiguous: z.number().int(),
  invalidLabel: z.number().int(),
  refused: z.array(
    z.object({
      id: z.string(),
      device: z.string().optional(),
      /** The item's label, or a summary of its truth (`3 boxes`, `rul=12`, `anomaly`). */
      label: z.string(),
      reason: z.enum(['unknown', 'ambiguous', 'invalid_label']),
      detail: z.string().optional(),
    }),
  ),
});

const ProportionSchema = z.object({ value: z.number(), n: z.number().int(), ci95: z.tuple([z.number(), z.number()]) }).nullable();

/** hub/feedback/task-kpis.ts TaskKpis. */
const TaskKpisSchema = z.object({
  kind: z.enum(['detection', 'regression', 'anomaly']),
  predictions: z.number().int(),
  labelled: z.number().int(),
  detection: z
    .object({
      iouThreshold: z.number(),
      scoreThreshold: z.number(),
      labelled: z.number().int(),
      tp: z.number().int(),
      fp: z.number().int(),
      fn: z.number().int(),
      precision: ProportionSchema,
      recall: ProportionSchema,
      meanIou: z.number().nullable(),
      byLabel: z.array(
        z.object({ label: z.string(), tp: z.number().int(), fp: z.number().int(), fn: z.number().int(), precision: z.number().nullable(), recall: z.number().nullable() }),
      ),
    })
    .optional(),
  regression: z
    .object({ targets: z.array(z.object({ target: z.string(), n: z.number().int(), mae: z.number().nullable(), rmse: z.number().nullable() })) })
    .optional(),
  anomaly: z
    .object({
      labelled: z.number().int(),
      tp: z.number().int(),
      fp: z.number().int(),
      fn: z.number().int(),
      tn: z.number().int(),
      precision: ProportionSchema,
      recall: ProportionSchema,
      alarmRate: ProportionSchema,
    })
    .optional(),
});

/** hub/kpis/kpis.ts ModelVersionKpis. */
const ModelVersionKpisSchema = z.object({
  model: z.string(),
  version: z.string(),
  from: z.number(),
  to: z.number(),
  devices: z.number().int(),
  inferences: z.number().int(),
  errors: z.number().int(),
  errorRate: z.number().nullable(),
  latencyMs: z.object({ p50: z.number(), p95: z.number() }).nullable(),
  uptime: z.number().nullable(),
  cpu: z.object({ secondsPer1000: z.number(), inferences: z.number(), cpuSeconds: z.number() }).nullable(),
  accuracy: z.object({
    realized: z.object({ n: z.number(), correct: z.number(), value: z.number(), ci95: z.tuple([z.number(), z.number()]) }).nullable(),
    estimated: z.object({ value: z.number(), n: z.number(), basis: z.string() }).nullable(),
    predictions: z.number().int(),
    labelled: z.number().int(),
    windows: z.array(
      z.object({
        start: z.number(),
        predictions: z.number().int(),
        labelled: z.number().int(),
        correct: z.number().int(),
        accuracy: z.number().nullable(),
        estimated: z.number(),
      }),
    ),
  }),
  /** Business cost from the configured cost matrix; null without one. */
  cost: AnyObject.nullable(),
  /** KPIs of detection, regression and anomaly versions from feedback; null for classifiers. */
  task: TaskKpisSchema.nullable(),
});

export const KpisSchema = z.object({ from: IsoTime, to: IsoTime, windowMs: z.number().int(), kpis: z.array(ModelVersionKpisSchema) });

// ---- drift, alerts, samples ------------------------------------------------------------------

/** hub/drift/api.ts drift(): tested windows and findings; test details are open-ended. */
export const DriftSchema = z.object({
  windows: z.array(
    z
      .object({
        model: z.string(),
        version: z.string(),
        windowStart: IsoTime,
        windowMs: z.number().int(),
        evaluatedAt: IsoTime,
        skipped: z.string().optional(),
      })
      .catchall(z.unknown()),
  ),
  findings: z.array(
    z
      .object({
        model: z.string(),
        version: z.string(),
        windowStart: IsoTime,
        scope: z.string(),
        id: z.string(),
        feature: z.string(),
        message: z.unknown(),
      })
      .catchall(z.unknown()),
  ),
  /** With `series=fleet`: per tested window, oldest first, each numeric feature's fleet mean and its shift in reference SDs. */
  series: z
    .array(
      z.object({
        windowStart: IsoTime,
        windowMs: z.number().int(),
        devices: z.number().int(),
        features: z.record(z.string(), z.object({ n: z.number().int(), mean: z.number().nullable(), shiftSd: z.number().nullable() })),
      }),
    )
    .optional(),
});

/** hub/alerts/alerts.ts alertView. */
export const AlertSchema = z.object({
  id: z.string(),
  model: z.string(),
  version: z.string(),
  scope: z.string(),
  scopeId: z.string(),
  feature: z.string(),
  state: z.enum(['open', 'acknowledged', 'resolved']),
  message: z.string(),
  devices: z.array(z.string()),
  firstWindow: IsoTime,
  lastWindow: IsoTime,
  windows: z.number().int(),
  cleanWindows: z.number().int(),
  openedAt: IsoTime,
  updatedAt: IsoTime,
  ackedAt: IsoTime.nullable(),
  ackedBy: z.string().nullable(),
  resolvedAt: IsoTime.nullable(),
  resolvedBy: z.string().nullable(),
  /** The drift test results that opened the alert. */
  evidence: z.unknown(),
});

export const AlertListSchema = z.object({ alerts: z.array(AlertSchema) });

export const AlertDetailSchema = AlertSchema.extend({
  deliveries: z.array(
    z.object({
      id: z.number().int(),
      /** `webhook` or `retraining`. */
      target: z.string(),
      url: z.string(),
      event: z.string(),
      state: z.enum(['pending', 'delivered', 'failed']),
      attempts: z.number().int(),
      lastError: z.string().nullable(),
      nextAt: IsoTime.nullable(),
      deliveredAt: IsoTime.nullable(),
      log: z.array(z.object({ at: IsoTime, ok: z.boolean(), status: z.number().int().optional(), error: z.string().optional() })),
    }),
  ),
});

export const SampleStoredSchema = z.object({ file: z.string(), items: z.number().int() });

export const SampleListSchema = z.object({
  samples: z.array(z.object({ deviceId: z.string(), file: z.string(), bytes: z.number().int(), receivedAt: IsoTime })),
});
