-- Readings are stored normalised: a small `series` table and a narrow hot table
-- without keys or indexes (a PRIMARY KEY on the hot table makes inserts ~5x
-- slower and the file ~20x larger).  The `readings` view gives the documented
-- columns ts, line, asset, sensor, value.
CREATE TABLE series (
    id      INTEGER NOT NULL PRIMARY KEY,
    line    VARCHAR NOT NULL,
    asset   VARCHAR NOT NULL,
    sensor  VARCHAR NOT NULL,
    UNIQUE (line, asset, sensor)
);

CREATE TABLE readings_raw (
    ts        TIMESTAMP NOT NULL,   -- event time, UTC
    series_id INTEGER   NOT NULL,
    value     DOUBLE    NOT NULL
);

CREATE VIEW readings AS
    SELECT r.ts, s.line, s.asset, s.sensor, r.value
    FROM readings_raw r JOIN series s ON s.id = r.series_id;

CREATE TABLE faults (
    ts     TIMESTAMP NOT NULL,
    line   VARCHAR   NOT NULL,
    asset  VARCHAR   NOT NULL,
    state  VARCHAR   NOT NULL,      -- 'start' | 'end'
    code   VARCHAR   NOT NULL,
    source VARCHAR   NOT NULL       -- 'mqtt' | 'import'
);

CREATE TABLE predictions (
    ts          TIMESTAMP NOT NULL, -- the tick's event time
    line        VARCHAR   NOT NULL,
    asset       VARCHAR   NOT NULL,
    probability DOUBLE    NOT NULL,
    threshold   DOUBLE    NOT NULL,
    model       VARCHAR   NOT NULL
);

CREATE TABLE alerts (
    ts          TIMESTAMP NOT NULL,
    line        VARCHAR   NOT NULL,
    asset       VARCHAR   NOT NULL,
    state       VARCHAR   NOT NULL, -- 'raised' | 'cleared'
    probability DOUBLE    NOT NULL,
    threshold   DOUBLE    NOT NULL,
    horizon_s   DOUBLE    NOT NULL,
    model       VARCHAR   NOT NULL,
    top_factors JSON      NOT NULL
);

CREATE TABLE dead_letters (
    received_at TIMESTAMP NOT NULL,
    topic       VARCHAR   NOT NULL,
    payload     BLOB      NOT NULL, -- first 1 KiB
    reason      VARCHAR   NOT NULL
);

CREATE TABLE models (
    name        VARCHAR   NOT NULL,
    sha256      VARCHAR   NOT NULL,
    path        VARCHAR   NOT NULL,
    spec_hash   VARCHAR   NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    promoted_at TIMESTAMP,
    status      VARCHAR   NOT NULL, -- 'candidate' | 'active' | 'retired' | 'refused'
    metrics     JSON
);

CREATE TABLE drift_events (
    ts       TIMESTAMP NOT NULL,
    feature  VARCHAR   NOT NULL,
    score    DOUBLE    NOT NULL,
    detail   JSON
);

CREATE TABLE training_runs (
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    model       VARCHAR,
    status      VARCHAR   NOT NULL,
    detail      JSON
);
