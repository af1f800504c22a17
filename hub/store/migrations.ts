/**
 * The hub's SQLite schema as numbered migrations, applied in order, each in its own transaction
 * and recorded in `schema_migrations`. Append new migrations; never edit an applied one.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'principals, telemetry, counters, api tokens',
    sql: `
      CREATE TABLE principals (
        id            TEXT PRIMARY KEY,
        kind          TEXT NOT NULL CHECK (kind IN ('device', 'sensor', 'consumer')),
        grp           TEXT NOT NULL,
        labels        TEXT NOT NULL DEFAULT '{}',
        token_kdf     TEXT NOT NULL,
        token_salt    BLOB NOT NULL,
        token_hash    BLOB NOT NULL,
        device_id     TEXT REFERENCES principals(id),
        created_at    INTEGER NOT NULL,
        last_seen     INTEGER,
        online        INTEGER NOT NULL DEFAULT 0,
        agent_version TEXT,
        boot_epoch    INTEGER,
        models        TEXT NOT NULL DEFAULT '[]',
        streams       TEXT NOT NULL DEFAULT '[]',
        hello_at      INTEGER,
        CHECK ((kind = 'sensor') = (device_id IS NOT NULL))
      );
      CREATE INDEX principals_by_device ON principals(device_id) WHERE device_id IS NOT NULL;

      -- The identity (device, stream, epoch, seq) is the primary key: INSERT OR IGNORE stores a
      -- resent record once. The table keeps its implicit rowid, which grows in arrival order and
      -- serves as the paging cursor of GET /v1/telemetry (the hub never runs VACUUM, which could
      -- renumber it).
      CREATE TABLE telemetry (
        device_id   TEXT NOT NULL,
        stream      TEXT NOT NULL,
        epoch       INTEGER NOT NULL,
        seq         INTEGER NOT NULL,
        ts          INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        body        TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        PRIMARY KEY (device_id, stream, epoch, seq)
      );

      CREATE TABLE stream_stats (
        device_id  TEXT NOT NULL,
        stream     TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        min_seq    INTEGER NOT NULL,
        max_seq    INTEGER NOT NULL,
        count      INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (device_id, stream, epoch)
      ) WITHOUT ROWID;

      CREATE TABLE device_counters (
        device_id    TEXT PRIMARY KEY,
        stored       INTEGER NOT NULL DEFAULT 0,
        duplicates   INTEGER NOT NULL DEFAULT 0,
        bad_messages INTEGER NOT NULL DEFAULT 0,
        updated_at   INTEGER NOT NULL
      ) WITHOUT ROWID;

      CREATE TABLE api_tokens (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
        token_kdf  TEXT NOT NULL,
        token_salt BLOB NOT NULL,
        token_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL
      );
      CREATE INDEX api_tokens_by_name ON api_tokens(name);
    `,
  },
  {
    version: 2,
    name: 'model registry: releases, pending uploads, release counter',
    sql: `
      -- Monotonic counters that must survive deletes: the release counter lives here, not in
      -- MAX(models.counter), so deleting the newest release never lets its number be reused.
      CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL CHECK (value >= 0)
      ) WITHOUT ROWID;
      INSERT INTO counters (name, value) VALUES ('release', 0);

      CREATE TABLE models (
        name       TEXT NOT NULL,
        version    TEXT NOT NULL,
        sha256     TEXT NOT NULL,
        size       INTEGER NOT NULL,
        manifest   TEXT NOT NULL,
        release    TEXT NOT NULL,
        counter    INTEGER NOT NULL UNIQUE,
        key_id     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (name, version)
      );
      CREATE INDEX models_by_sha256 ON models(sha256);

      -- Manifests accepted by POST /v1/models whose artifact has not been uploaded yet.
      CREATE TABLE model_uploads (
        name       TEXT NOT NULL,
        version    TEXT NOT NULL,
        manifest   TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, version)
      ) WITHOUT ROWID;
    `,
  },
  {
    version: 3,
    name: 'rollouts: rollouts, rollout devices, desired models, device history, reported model state',
    sql: `
      -- The agent's reported model state (hello.modelState), kept for reconciliation after a
      -- hub restart and to know each device's previous version when a rollout rolls back.
      ALTER TABLE principals ADD COLUMN model_state TEXT;

      -- One row per rollout; spec holds the request as validated (waves, thresholds, policy),
      -- plan the cumulative device count per wave resolved at creation. All progress is here
      -- (current wave, bake, approvals, gate results), so a restarted hub resumes where it was.
      CREATE TABLE rollouts (
        id               TEXT PRIMARY KEY,
        model            TEXT NOT NULL,
        version          TEXT NOT NULL,
        counter          INTEGER NOT NULL,
        sha256           TEXT NOT NULL,
        spec             TEXT NOT NULL,
        plan             TEXT NOT NULL,
        state            TEXT NOT NULL CHECK (state IN ('running', 'paused', 'completed', 'aborted', 'rolled_back')),
        reason           TEXT,
        current_wave     INTEGER NOT NULL DEFAULT 0,
        wave_started_at  INTEGER NOT NULL,
        bake_started_at  INTEGER,
        bake_until       INTEGER,
        bake_extensions  INTEGER NOT NULL DEFAULT 0,
        approved_wave    INTEGER NOT NULL DEFAULT 0,
        gate_results     TEXT NOT NULL DEFAULT '[]',
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        ended_at         INTEGER
      );
      -- Only one active rollout per model name: the database refuses a second one.
      CREATE UNIQUE INDEX rollouts_one_active ON rollouts(model) WHERE state IN ('running', 'paused');

      CREATE TABLE rollout_devices (
        rollout_id    TEXT NOT NULL REFERENCES rollouts(id),
        device_id     TEXT NOT NULL,
        wave          INTEGER NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('pending', 'dispatched', 'succeeded', 'failed', 'rolled_back')),
        assigned_at   INTEGER,
        from_version  TEXT,
        from_counter  INTEGER,
        attempts      INTEGER NOT NULL DEFAULT 0,
        dispatched_at INTEGER,
        finished_at   INTEGER,
        detail        TEXT,
        PRIMARY KEY (rollout_id, device_id)
      ) WITHOUT ROWID;
      CREATE INDEX rollout_devices_by_device ON rollout_devices(device_id);

      -- The hub's desired model set per device (ARCHITECTURE §4), reconciled on every hello.
      CREATE TABLE desired_models (
        device_id  TEXT NOT NULL,
        name       TEXT NOT NULL,
        version    TEXT NOT NULL,
        counter    INTEGER NOT NULL,
        rollout_id TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (device_id, name)
      ) WITHOUT ROWID;

      -- Append-only. dedupe_key makes model events idempotent: the same step reported by a
      -- command result, a telemetry event and a hello is recorded once.
      CREATE TABLE device_history (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id  TEXT NOT NULL,
        ts         INTEGER NOT NULL,
        event      TEXT NOT NULL,
        name       TEXT,
        version    TEXT,
        counter    INTEGER,
        rollout_id TEXT,
        details    TEXT NOT NULL DEFAULT '{}',
        dedupe_key TEXT UNIQUE
      );
      CREATE INDEX device_history_by_device ON device_history(device_id, id);
    `,
  },
  {
    version: 4,
    name: 'drift and alerts: summary ids, device window aggregates, window reports and findings, alerts, alert deliveries',
    sql: `
      -- Every drift summary id merged, so a re-sent or replayed summary is recognised and never
      -- merged twice (merging is not idempotent, PITFALLS "Drift statistics"). Pruned with the
      -- aggregates after drift.retentionDays.
      CREATE TABLE drift_summaries (
        summary_id   TEXT PRIMARY KEY,
        device_id    TEXT NOT NULL,
        model        TEXT NOT NULL,
        version      TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        received_at  INTEGER NOT NULL
      );
      CREATE INDEX drift_summaries_by_window ON drift_summaries(window_start);
      -- Drift records stored as telemetry but maybe not merged (hub killed between the batch's
      -- commit and the merge) are merged again at start from the recent ones; the partial index
      -- keeps that from scanning the whole telemetry table and costs nothing for other kinds.
      CREATE INDEX telemetry_drift_by_received ON telemetry(received_at) WHERE kind = 'drift';

      -- Merged counts per (model version, device, hub window) as the JSON of a DriftAggregate
      -- (shared/drift/merge.ts) without its summary id set. Group and fleet aggregates are
      -- combined from these rows on demand, exactly.
      CREATE TABLE drift_device_windows (
        model        TEXT NOT NULL,
        version      TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        device_id    TEXT NOT NULL,
        window_ms    INTEGER NOT NULL,
        summaries    INTEGER NOT NULL,
        count        INTEGER NOT NULL,
        aggregate    TEXT NOT NULL,
        updated_at   INTEGER NOT NULL,
        PRIMARY KEY (model, version, window_start, device_id)
      ) WITHOUT ROWID;
      CREATE INDEX drift_device_windows_by_window ON drift_device_windows(window_start);

      -- One row per evaluated (model version, window): the detector's report without findings,
      -- or why it was skipped. Its existence marks the window as evaluated.
      CREATE TABLE drift_reports (
        model        TEXT NOT NULL,
        version      TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        window_ms    INTEGER NOT NULL,
        evaluated_at INTEGER NOT NULL,
        skipped      TEXT,
        report       TEXT NOT NULL,
        PRIMARY KEY (model, version, window_start)
      ) WITHOUT ROWID;

      CREATE TABLE drift_findings (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        model        TEXT NOT NULL,
        version      TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        scope        TEXT NOT NULL,
        scope_id     TEXT NOT NULL,
        feature      TEXT NOT NULL,
        finding      TEXT NOT NULL
      );
      CREATE INDEX drift_findings_by_model ON drift_findings(model, version, window_start);

      -- Alerts: open -> acknowledged -> resolved. At most one unresolved alert per key
      -- (model version, scope, scope id, feature); the partial unique index enforces it.
      CREATE TABLE alerts (
        id            TEXT PRIMARY KEY,
        model         TEXT NOT NULL,
        version       TEXT NOT NULL,
        scope         TEXT NOT NULL,
        scope_id      TEXT NOT NULL,
        feature       TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
        message       TEXT NOT NULL,
        devices       TEXT NOT NULL DEFAULT '[]',
        evidence      TEXT NOT NULL,
        first_window  INTEGER NOT NULL,
        last_window   INTEGER NOT NULL,
        windows       INTEGER NOT NULL DEFAULT 1,
        clean_windows INTEGER NOT NULL DEFAULT 0,
        opened_at     INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        acked_at      INTEGER,
        acked_by      TEXT,
        resolved_at   INTEGER,
        resolved_by   TEXT
      );
      CREATE UNIQUE INDEX alerts_one_unresolved ON alerts(model, version, scope, scope_id, feature) WHERE state <> 'resolved';
      CREATE INDEX alerts_by_state ON alerts(state, opened_at);

      -- Outgoing webhook deliveries (alert webhooks, the retraining hook), persisted so a hub
      -- restart does not drop them; log holds every attempt (time, status or error).
      CREATE TABLE alert_deliveries (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_id     TEXT NOT NULL,
        target       TEXT NOT NULL,
        url          TEXT NOT NULL,
        event        TEXT NOT NULL,
        payload      TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        last_error   TEXT,
        log          TEXT NOT NULL DEFAULT '[]',
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER
      );
      CREATE INDEX alert_deliveries_due ON alert_deliveries(state, next_at);
      CREATE INDEX alert_deliveries_by_alert ON alert_deliveries(alert_id);
    `,
  },
  {
    version: 5,
    name: 'feedback and KPIs: inference index with ground truth, health window index, presence log',
    sql: `
      -- One row per inference the hub was told about (telemetry kind \`inference\`), kept for
      -- kpis.retentionDays: enough to match ground truth posted later by inference id and to
      -- key accuracy by PREDICTION time (ts). truth/feedback_at are set by feedback; a later
      -- feedback for the same inference replaces the earlier one (a correction), so accuracy is
      -- always recomputed from rows and never double counts.
      CREATE TABLE inference_index (
        device_id   TEXT NOT NULL,
        id          TEXT NOT NULL,
        model       TEXT NOT NULL,
        version     TEXT NOT NULL,
        label       TEXT NOT NULL,
        confidence  REAL NOT NULL,
        ts          INTEGER NOT NULL,
        truth       TEXT,
        feedback_at INTEGER,
        PRIMARY KEY (device_id, id)
      ) WITHOUT ROWID;
      CREATE INDEX inference_index_by_id ON inference_index(id);
      CREATE INDEX inference_index_by_model ON inference_index(model, version, ts);

      -- Health windows (telemetry kind \`health\`) in columns, so KPI queries by model version and
      -- time use an index instead of parsing every stored health record. Filled from records
      -- stored for the first time, so each window is counted once.
      CREATE TABLE kpi_health (
        device_id    TEXT NOT NULL,
        model        TEXT NOT NULL,
        version      TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        window_ms    INTEGER NOT NULL,
        ok           INTEGER NOT NULL,
        errors       INTEGER NOT NULL,
        latency      TEXT NOT NULL,
        confidence   TEXT NOT NULL,
        class_counts TEXT NOT NULL,
        cpu_ms       REAL
      );
      CREATE INDEX kpi_health_by_model ON kpi_health(model, version, window_start);

      -- Presence transitions of devices (setOnline), for uptime over a period.
      CREATE TABLE presence_log (
        device_id TEXT NOT NULL,
        ts        INTEGER NOT NULL,
        online    INTEGER NOT NULL
      );
      CREATE INDEX presence_log_by_device ON presence_log(device_id, ts);
    `,
  },
  {
    version: 6,
    name: 'security: revocation, enrollment tokens, operator audit log',
    sql: `
      -- Revoked principals keep their row (history, audit, the id stays taken) and can never
      -- authenticate again; revocation is not undone, a replacement device gets a new id.
      ALTER TABLE principals ADD COLUMN revoked_at INTEGER;
      -- The enrollment token a device registered itself with (NULL: added by an operator).
      ALTER TABLE principals ADD COLUMN enrolled_by TEXT;
      ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
      ALTER TABLE api_tokens ADD COLUMN created_by TEXT;

      -- Per group: lets up to max_uses new devices register themselves until expires_at. The
      -- secret is stored as a scrypt hash like every other token.
      CREATE TABLE enrollment_tokens (
        id         TEXT PRIMARY KEY,
        grp        TEXT NOT NULL,
        labels     TEXT NOT NULL DEFAULT '{}',
        token_kdf  TEXT NOT NULL,
        token_salt BLOB NOT NULL,
        token_hash BLOB NOT NULL,
        max_uses   INTEGER NOT NULL CHECK (max_uses >= 1),
        uses       INTEGER NOT NULL DEFAULT 0,
        expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        revoked_at INTEGER
      );

      -- Append-only: every operator action (allowed, denied or failed) and every enrollment.
      CREATE TABLE audit_log (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        ts       INTEGER NOT NULL,
        actor    TEXT NOT NULL,
        actor_id TEXT,
        role     TEXT,
        action   TEXT NOT NULL,
        target   TEXT,
        outcome  TEXT NOT NULL CHECK (outcome IN ('ok', 'denied', 'failed')),
        status   INTEGER,
        remote   TEXT,
        details  TEXT NOT NULL DEFAULT '{}'
      );
      CREATE INDEX audit_log_by_ts ON audit_log(ts);
      CREATE INDEX audit_log_by_actor ON audit_log(actor, ts);
      CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    `,
  },
  {
    version: 7,
    name: 'feedback and KPIs per task: task and compact prediction of indexed inferences',
    sql: `
      -- Manifest v2 tasks (issue #13). task: NULL for v1 records (classification); pred: the
      -- prediction fields task KPIs need, compact JSON written by the hub (hub/feedback/task-truth.ts):
      -- detection [[label, score, x1, y1, x2, y2], ...] (at most MAX_STORED_DETECTIONS),
      -- regression {"<target>": value}, anomaly [score, alarm 0|1]; NULL for classification.
      -- truth holds the label for classification and anomaly ('anomaly'|'normal'), JSON for
      -- detection ([[label, x1, y1, x2, y2], ...]) and regression ({"<target>": value}).
      ALTER TABLE inference_index ADD COLUMN task TEXT;
      ALTER TABLE inference_index ADD COLUMN pred TEXT;
    `,
  },
  {
    version: 8,
    name: 'audit log: hash chain, delete guard, prune checkpoints',
    sql: `
      -- Tamper evidence (issue #14): each row stores the hash of the row before it and its own
      -- hash, sha256 over a canonical encoding of the row and prev_hash (hub/store/sqlite-security.ts
      -- auditHash). Rows written before this migration have NULL hashes until the hub seals them
      -- (in id order, once) at its next audit write; the update guard below allows exactly that.
      ALTER TABLE audit_log ADD COLUMN prev_hash TEXT;
      ALTER TABLE audit_log ADD COLUMN hash TEXT;

      -- Rows with ids up to \`through\` may be deleted: the retention prune moves it forward, and
      -- only right after appending the checkpoint row (action audit.prune, details.through) that
      -- carries the hash of the last pruned row, so verify can start from the first kept row.
      CREATE TABLE audit_prune_cut (
        one     INTEGER PRIMARY KEY CHECK (one = 1),
        through INTEGER NOT NULL
      );
      INSERT INTO audit_prune_cut (one, through) VALUES (1, 0);
      CREATE TRIGGER audit_prune_cut_needs_checkpoint BEFORE UPDATE ON audit_prune_cut
      WHEN NEW.through < OLD.through OR NOT EXISTS (
        SELECT 1 FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)
          AND action = 'audit.prune' AND json_extract(details, '$.through') = NEW.through)
      BEGIN SELECT RAISE(ABORT, 'the audit log is pruned only behind a checkpoint row'); END;
      CREATE TRIGGER audit_prune_cut_no_delete BEFORE DELETE ON audit_prune_cut
      BEGIN SELECT RAISE(ABORT, 'the audit prune cut cannot be deleted'); END;

      CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
      WHEN OLD.id > (SELECT through FROM audit_prune_cut)
      BEGIN SELECT RAISE(ABORT, 'audit log rows are deleted only by the retention prune'); END;
      CREATE TRIGGER audit_log_chained BEFORE INSERT ON audit_log
      WHEN NEW.hash IS NULL OR NEW.prev_hash IS NULL
      BEGIN SELECT RAISE(ABORT, 'audit log rows must be chained'); END;
      DROP TRIGGER audit_log_no_update;
      CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
      WHEN NOT (OLD.hash IS NULL AND NEW.hash IS NOT NULL AND NEW.prev_hash IS NOT NULL
        AND NEW.id = OLD.id AND NEW.ts IS OLD.ts AND NEW.actor IS OLD.actor AND NEW.actor_id IS OLD.actor_id
        AND NEW.role IS OLD.role AND NEW.action IS OLD.action AND NEW.target IS OLD.target
        AND NEW.outcome IS OLD.outcome AND NEW.status IS OLD.status AND NEW.remote IS OLD.remote
        AND NEW.details IS OLD.details)
      BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
    `,
  },
  {
    version: 10,
    name: 'enrollment tokens: label keys an enrolling device may add',
    sql: `
      -- Issue #14: the token's labels win; a device may add only these keys (JSON array of label
      -- keys, default none). Tokens created before keep '[]': their devices get the token's labels.
      ALTER TABLE enrollment_tokens ADD COLUMN allow_device_labels TEXT NOT NULL DEFAULT '[]';
    `,
  },
  {
    version: 11,
    name: 'device listing: group index, labels as rows',
    sql: `
      -- Issues #15/#16: GET /v1/devices pages through 10,000+ principals in id order (keyset) with
      -- filters. A group filter walks this index from the cursor on instead of the whole table.
      CREATE INDEX principals_by_group ON principals(grp, id);

      -- Each principal's labels as rows, so a label filter is an index lookup rather than a JSON
      -- parse of every principal. Kept by triggers, so every writer of principals.labels
      -- (registration, enrollment) stays as it is; labels that are not a JSON object give no rows.
      CREATE TABLE principal_labels (
        principal_id TEXT NOT NULL REFERENCES principals(id) ON DELETE CASCADE,
        key          TEXT NOT NULL,
        value        TEXT NOT NULL,
        PRIMARY KEY (principal_id, key)
      ) WITHOUT ROWID;
      CREATE INDEX principal_labels_by_pair ON principal_labels(key, value, principal_id);
      INSERT INTO principal_labels (principal_id, key, value)
        SELECT p.id, l.key, CAST(l.value AS TEXT) FROM principals p,
          json_each(CASE WHEN json_valid(p.labels) AND json_type(p.labels) = 'object' THEN p.labels ELSE '{}' END) l;
      CREATE TRIGGER principal_labels_on_insert AFTER INSERT ON principals BEGIN
        INSERT INTO principal_labels (principal_id, key, value)
          SELECT NEW.id, key, CAST(value AS TEXT)
          FROM json_each(CASE WHEN json_valid(NEW.labels) AND json_type(NEW.labels) = 'object' THEN NEW.labels ELSE '{}' END);
      END;
      CREATE TRIGGER principal_labels_on_update AFTER UPDATE OF labels ON principals BEGIN
        DELETE FROM principal_labels WHERE principal_id = OLD.id;
        INSERT INTO principal_labels (principal_id, key, value)
          SELECT NEW.id, key, CAST(value AS TEXT)
          FROM json_each(CASE WHEN json_valid(NEW.labels) AND json_type(NEW.labels) = 'object' THEN NEW.labels ELSE '{}' END);
      END;
    `,
  },
];
