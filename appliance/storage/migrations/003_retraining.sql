-- The retraining loop's story (appliance models history): every trigger, training run,
-- validation, shadow start, promotion, rejection and rollback, in order.
CREATE TABLE model_history (
    logged_at TIMESTAMP NOT NULL, -- wall-clock time of the step
    ts      TIMESTAMP NOT NULL,   -- event time (the newest reading's) the loop acted at
    event   VARCHAR   NOT NULL,   -- trigger | training_started | training_failed | rejected |
                                  -- shadow | promoted | probation_ended | rolled_back |
                                  -- reconciled | interrupted
    model   VARCHAR,
    other   VARCHAR,              -- the champion compared with, or the model replaced
    reason  VARCHAR   NOT NULL,
    detail  JSON      NOT NULL,   -- both models' numbers, data window, duration, peak memory
    champion    VARCHAR,          -- the roles after the step
    challengers JSON    NOT NULL
);
