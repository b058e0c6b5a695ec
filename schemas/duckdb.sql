-- sysmon-blt DuckDB schema, as numbered migrations applied in order.
-- A database records the last migration it holds in schema_version; opening it with a newer
-- release applies the missing ones, each in its own transaction. Never edit a released migration:
-- add a new one below it. No secondary ART indexes on events: they slow bulk inserts several
-- fold, and DuckDB's zone maps already serve time-range and equality scans.

-- migration: 1
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    applied TIMESTAMPTZ NOT NULL,
    tool_version VARCHAR
);

CREATE TABLE IF NOT EXISTS events (
    event_key   VARCHAR PRIMARY KEY,   -- see DESIGN.md: sha256(computer|channel|record_id|utc_time) or raw bytes
    source      VARCHAR NOT NULL,      -- input path as given, PATH!member in archives, kafka:topic/partition
    position    BIGINT,                -- record index in the file, or Kafka offset
    event_id    INTEGER NOT NULL,
    computer    VARCHAR,
    user_name   VARCHAR,
    ts          TIMESTAMPTZ,           -- the event's own UTC creation time (UtcTime, else System TimeCreated)
    record_id   BIGINT,
    channel     VARCHAR,
    shape       VARCHAR,               -- evtx, xml, winlogbeat6/7/8, nxlog, flat, sentinel
    normalized  VARCHAR NOT NULL,      -- canonical text
    text_hash   VARCHAR NOT NULL,      -- sha256 of normalized: the embedding cache key
    fields      JSON,                  -- every parsed field, RuleName included
    raw         VARCHAR,               -- the original record
    imported_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS dead_letters (
    source   VARCHAR NOT NULL,
    position BIGINT,
    reason   VARCHAR NOT NULL,
    payload  VARCHAR,                  -- truncated when huge
    "at"     TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS imports (
    path               VARCHAR NOT NULL,  -- file as given; PATH!member for archive members
    sha256             VARCHAR,
    bytes              BIGINT,
    records            BIGINT,
    sysmon_events      BIGINT,
    new_events         BIGINT,
    duplicates         BIGINT,
    skipped_non_sysmon BIGINT,
    dead_letters       BIGINT,
    started            TIMESTAMPTZ,
    finished           TIMESTAMPTZ,
    status             VARCHAR NOT NULL,  -- running, complete, failed, skipped_same_sha256
    tool_version       VARCHAR,
    model_version      VARCHAR,
    config_hash        VARCHAR
);


-- migration: 2
-- Embeddings, stored once per distinct canonical text, model and model version (OTRF repeats
-- each distinct text about 7 times); event_vectors gives one row per event over them. The view
-- is re-created with a fixed-size FLOAT[d] cast once the models' dimension is known.
CREATE TABLE IF NOT EXISTS text_vectors (
    model         VARCHAR NOT NULL,   -- 'blt' or 'linformer'
    model_version VARCHAR NOT NULL,   -- hash of the model's weights
    text_hash     VARCHAR NOT NULL,   -- events.text_hash
    vector        FLOAT[] NOT NULL,
    created       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, model_version, text_hash)
);

CREATE TABLE IF NOT EXISTS models (
    model         VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    dim           INTEGER NOT NULL,
    directory     VARCHAR,
    first_used    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, model_version)
);

CREATE OR REPLACE VIEW event_vectors AS
SELECT e.event_key, v.model, v.model_version, v.vector
FROM events e JOIN text_vectors v ON v.text_hash = e.text_hash;


-- migration: 3
-- Clusters, scores and alerts. A fit is a new `version` per model; every assignment records the
-- version it was scored with. Version 0 is the model directory's shipped reference centroids.
CREATE TABLE IF NOT EXISTS fits (
    model           VARCHAR NOT NULL,
    model_version   VARCHAR NOT NULL,
    version         INTEGER NOT NULL,
    created         TIMESTAMPTZ NOT NULL,
    origin          VARCHAR NOT NULL,     -- 'shipped' or 'fit'
    scorer          VARCHAR NOT NULL,     -- how score is computed (centroid, knn, ...)
    baseline_events BIGINT,
    params          JSON,
    PRIMARY KEY (model, version)
);

CREATE TABLE IF NOT EXISTS baseline (     -- the distinct texts a fit learned as normal
    model     VARCHAR NOT NULL,
    version   INTEGER NOT NULL,
    text_hash VARCHAR NOT NULL,
    weight    BIGINT NOT NULL,               -- events carrying that text
    PRIMARY KEY (model, version, text_hash)
);

CREATE TABLE IF NOT EXISTS clusters (
    model         VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    version       INTEGER NOT NULL,
    cluster       INTEGER NOT NULL,
    centroid      FLOAT[] NOT NULL,
    threshold     DOUBLE NOT NULL,
    size          BIGINT NOT NULL,
    medoid        VARCHAR NOT NULL,     -- a typical canonical text; empty for shipped centroids
    PRIMARY KEY (model, version, cluster)
);

CREATE TABLE IF NOT EXISTS assignments (
    event_key   VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,
    version     INTEGER NOT NULL,      -- the fits/clusters version used
    cluster     INTEGER,
    distance    DOUBLE,
    score       DOUBLE NOT NULL,       -- calibrated: 1.0 is the outlier threshold
    is_outlier  BOOLEAN NOT NULL,
    detail      JSON,
    explanation JSON,
    PRIMARY KEY (event_key, model)
);

CREATE TABLE IF NOT EXISTS alerts (
    alert_id   VARCHAR PRIMARY KEY,
    event_key  VARCHAR NOT NULL,
    model      VARCHAR NOT NULL,
    score      DOUBLE NOT NULL,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen  TIMESTAMPTZ NOT NULL,
    count      BIGINT NOT NULL,
    status     VARCHAR NOT NULL        -- open, suppressed, false_positive
);


-- migration: 4
-- What the BLT-vs-shadow report reads besides vectors and assignments: labels (written by
-- `eval`, or by an analyst) for detection metrics, each model's throughput per run, and the
-- results of `eval` runs kept with --db.
CREATE TABLE IF NOT EXISTS labels (
    event_key VARCHAR PRIMARY KEY,
    is_attack BOOLEAN NOT NULL,
    source    VARCHAR NOT NULL          -- who labelled it, e.g. 'eval --attack-seed winx64_payload'
);

CREATE TABLE IF NOT EXISTS model_runs (
    run_started      TIMESTAMPTZ NOT NULL,
    command          VARCHAR NOT NULL,  -- import, rescore, eval, consume
    model            VARCHAR NOT NULL,
    model_version    VARCHAR NOT NULL,
    events           BIGINT NOT NULL,   -- events of the run this model saw (the shadow samples)
    texts_embedded   BIGINT NOT NULL,   -- distinct texts it embedded (the rest came from the cache)
    embed_seconds    DOUBLE NOT NULL,
    texts_per_second DOUBLE,            -- texts_embedded / embed_seconds
    run_seconds      DOUBLE NOT NULL,   -- wall time of the whole run
    events_per_second DOUBLE            -- all events of the run / run_seconds
);

CREATE TABLE IF NOT EXISTS evaluations (
    created TIMESTAMPTZ NOT NULL,
    spec    JSON NOT NULL,              -- baseline, test, attack seed or inputs
    results JSON NOT NULL               -- per scorer: roc_auc, average_precision, tpr_at_1pct_fpr, ...
);


-- migration: 5
-- Triage without SQL: every status change of an alert with who, when and why (`alerts mark`,
-- the service's POST /feedback); alerts.status holds the current one.
CREATE TABLE IF NOT EXISTS alert_changes (
    alert_id VARCHAR NOT NULL,
    status   VARCHAR NOT NULL,             -- open, suppressed, false_positive
    note     VARCHAR,
    analyst  VARCHAR NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL
);


-- migration: 6
-- Incidents: the primary model's outliers grouped by host, process tree and time
-- (plugin/detect/incidents.py). One row per incident id (a hash of model, computer and root
-- process GUID); `events` and `outliers` count the assignments linked to it (a replay links the
-- same rows again and counts nothing), `alerts` the distinct alerts in incident_alerts.
CREATE TABLE IF NOT EXISTS incidents (
    incident_id VARCHAR PRIMARY KEY,
    model       VARCHAR NOT NULL,
    computer    VARCHAR,
    root_guid   VARCHAR NOT NULL,       -- ProcessGuid of the root (no braces, lower case)
    root_image  VARCHAR,                -- the root's Image as logged
    first_seen  TIMESTAMPTZ,            -- NULL while a rescore rebuilds it
    last_seen   TIMESTAMPTZ,
    events      BIGINT NOT NULL,        -- events of the root's process tree in the window
    outliers    BIGINT NOT NULL,        -- outlier events among them
    alerts      BIGINT NOT NULL,        -- distinct alerts their outliers fold into
    score       DOUBLE NOT NULL,        -- ranking score (breadth, outliers, root novelty, peak)
    status      VARCHAR NOT NULL,       -- open, suppressed, false_positive
    texts       VARCHAR[],              -- distinct outlier texts, the first ten
    event_types INTEGER[],              -- distinct event ids
    root_novel  INTEGER NOT NULL,       -- never-seen paths the root's own events name
    created     TIMESTAMPTZ NOT NULL,
    updated     TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS incident_alerts (   -- which alerts' events belong to which incidents
    incident_id VARCHAR NOT NULL,
    alert_id    VARCHAR NOT NULL,
    PRIMARY KEY (incident_id, alert_id)
);

ALTER TABLE assignments ADD COLUMN IF NOT EXISTS incident_id VARCHAR;  -- NULL outside any incident


-- migration: 7
-- Integrity findings of forensic imports (plugin/detect/integrity.py): per input (imports.path:
-- the file as given, PATH!member in archives), computer and channel, what an examiner asks of a
-- log before trusting it. Other providers' records are still never stored as events: they are
-- read as they pass. Written once per input when its events are durable, replacing the rows of
-- the same path and SHA-256 (a resumed import writes them again; a skipped one writes nothing).
CREATE TABLE IF NOT EXISTS integrity (
    computer             VARCHAR,
    channel              VARCHAR,
    first_ts             TIMESTAMPTZ,        -- earliest event time (Sysmon UtcTime, else System TimeCreated; never a local time)
    last_ts              TIMESTAMPTZ,
    records              BIGINT NOT NULL,    -- records of this computer and channel in the input
    record_id_gaps       JSON NOT NULL,      -- the first 100 holes in EventRecordID as [after, before] (both present)
    log_clears           JSON NOT NULL,      -- Security 1102 / System 104: [{ts, event_id, what, record_id, user, sid, log}], first 100
    sysmon_changes       JSON NOT NULL,      -- Sysmon 4 / 16 / 255: [{ts, event_id, what, record_id, key fields}], first 100
    import_path          VARCHAR NOT NULL,
    sha256               VARCHAR,            -- imports.sha256 of the input
    gaps                 BIGINT NOT NULL,    -- all holes (record_id_gaps lists the first 100)
    missing_records      BIGINT NOT NULL,    -- record ids inside the holes
    first_record_id      BIGINT,
    last_record_id       BIGINT,
    duplicate_record_ids BIGINT NOT NULL,    -- a record id seen again in the same input
    records_without_id   BIGINT NOT NULL,    -- shapes that carry no record number (OTRF flat JSON)
    log_clear_count      BIGINT NOT NULL,
    sysmon_change_count  BIGINT NOT NULL,
    recorded_at          TIMESTAMPTZ NOT NULL
);


-- migration: 8
-- Every status change of an incident with who, when and why (`incidents mark`, POST /feedback
-- with an incident_id, the incident page's buttons); incidents.status holds the current one.
-- Marking an incident marks each of its alerts (incident_alerts) too, each change kept in
-- alert_changes with a note naming the incident.
CREATE TABLE IF NOT EXISTS incident_changes (
    incident_id VARCHAR NOT NULL,
    status      VARCHAR NOT NULL,          -- open, suppressed, false_positive
    previous    VARCHAR,                   -- the status it had before
    note        VARCHAR,
    analyst     VARCHAR NOT NULL,
    alerts      BIGINT NOT NULL,           -- alerts of the incident marked with it
    changed_at  TIMESTAMPTZ NOT NULL
);


-- migration: 9
-- file only
-- `events` and `assignments` without primary keys. DuckDB keeps a key index whole in its buffer
-- pool, and these two tables gain a key per event and per event and model: a consumer with both
-- models ran out of a 256 MB pool after ~700,000 events (measured), and its memory grew with every
-- event stored. The writer enforces the keys instead, as it does on a DuckLake (one writer per
-- file): an event is inserted when no row in its time range holds its key, and scores of events
-- the batch stored new are appended. The tables are copied once, in this migration's transaction,
-- in their stored order (no sort: sorting a large file's events ran out of a 512 MB pool).
CREATE TABLE events_keyless (
    event_key   VARCHAR NOT NULL,
    source      VARCHAR NOT NULL,
    position    BIGINT,
    event_id    INTEGER NOT NULL,
    computer    VARCHAR,
    user_name   VARCHAR,
    ts          TIMESTAMPTZ,
    record_id   BIGINT,
    channel     VARCHAR,
    shape       VARCHAR,
    normalized  VARCHAR NOT NULL,
    text_hash   VARCHAR NOT NULL,
    fields      JSON,
    raw         VARCHAR,
    imported_at TIMESTAMPTZ NOT NULL
);
INSERT INTO events_keyless SELECT * FROM events;
DROP TABLE events;
ALTER TABLE events_keyless RENAME TO events;

CREATE TABLE assignments_keyless (
    event_key   VARCHAR NOT NULL,
    model       VARCHAR NOT NULL,
    version     INTEGER NOT NULL,
    cluster     INTEGER,
    distance    DOUBLE,
    score       DOUBLE NOT NULL,
    is_outlier  BOOLEAN NOT NULL,
    detail      JSON,
    explanation JSON,
    incident_id VARCHAR
);
INSERT INTO assignments_keyless SELECT * FROM assignments;
DROP TABLE assignments;
ALTER TABLE assignments_keyless RENAME TO assignments;


-- migration: 10
-- file only
-- `text_vectors` without its primary key, for the reason of migration 9: the key index of one row
-- per model and distinct text lives whole in DuckDB's pool, and a store of both models ran out of
-- a 64 MB pool at 175,000 distinct texts (measured; a consumer meeting ~50 new texts a second
-- gets there within an hour, and a large import's pool later). The writer keeps one vector per
-- (model, version, text).
CREATE TABLE text_vectors_keyless (
    model         VARCHAR NOT NULL,
    model_version VARCHAR NOT NULL,
    text_hash     VARCHAR NOT NULL,
    vector        FLOAT[] NOT NULL,
    created       TIMESTAMPTZ NOT NULL
);
INSERT INTO text_vectors_keyless SELECT * FROM text_vectors;
DROP TABLE text_vectors;
ALTER TABLE text_vectors_keyless RENAME TO text_vectors;


-- migration: 11
-- Each BLT text vector keeps the summary of the entropy-model pass that scoring reads: the highest
-- mean surprisal (bits per byte) over 12 consecutive bytes (plugin/models/blt/surprisal.py). A
-- text embedded by an earlier run, or read back because it left the in-memory cache, is then
-- scored without a second pass of the entropy model (an import after a fit re-ran it on every
-- text it found already stored). NULL for the shadow model and for vectors stored before.
ALTER TABLE text_vectors ADD COLUMN window_bits DOUBLE;
