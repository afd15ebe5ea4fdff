-- Watching the models while they serve (drift, sensor events, challengers, live scores).
-- Every prediction and alert names the role of its model: the champion's alerts are
-- published; a challenger's are stored only, so it is scored by the same rule.
ALTER TABLE predictions ADD COLUMN role VARCHAR NOT NULL DEFAULT 'champion';
ALTER TABLE alerts ADD COLUMN role VARCHAR NOT NULL DEFAULT 'champion';

-- drift_events had no writer before this version: replaced by the documented columns.
DROP TABLE drift_events;
CREATE TABLE drift_events (
    ts        TIMESTAMP NOT NULL,   -- event time of the tick that started or ended it
    line      VARCHAR   NOT NULL,
    asset     VARCHAR   NOT NULL,   -- '*' for the whole line
    kind      VARCHAR   NOT NULL,   -- 'drift' | 'sensor'
    state     VARCHAR   NOT NULL,   -- 'started' | 'ended'
    features  JSON      NOT NULL,   -- drift: the features that moved most; sensor: its features
    statistic DOUBLE,               -- drift: the distance; sensor: NULL
    threshold DOUBLE,
    model     VARCHAR,              -- the reference it was measured against
    detail    JSON                  -- drift: per feature, how far and which way; sensor: kind, since
);

-- Live event scores of every model that predicted, per window of days; rewritten as
-- faults arrive (appliance models scores).
CREATE TABLE model_scores (
    refreshed_at         TIMESTAMP NOT NULL,
    model                VARCHAR   NOT NULL,
    role                 VARCHAR   NOT NULL,
    window_days          INTEGER   NOT NULL,
    faults               INTEGER   NOT NULL,
    caught               INTEGER   NOT NULL,
    recall               DOUBLE,
    episodes             INTEGER   NOT NULL,
    false_episodes       INTEGER   NOT NULL,
    asset_weeks          DOUBLE    NOT NULL,
    false_per_asset_week DOUBLE,
    median_lead_s        DOUBLE,
    episode_precision    DOUBLE
);
