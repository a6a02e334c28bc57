-- Rollouts: a fleet updated in waves, each wave a campaign of its own (a row of `campaigns`
-- with `rollout_id` and `wave`, created when the wave starts). A rollout is event-sourced
-- like a campaign: `rollout_inputs` holds every input (uplinks routed to it, timeouts,
-- refused frames, operator actions with who made them) written before it is applied; a
-- restart rebuilds the rollout by feeding them again. Each wave's outputs go to `outputs`
-- under its campaign's id, written before they are published.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    firmware_id BIGINT NOT NULL REFERENCES firmware(id),
    state TEXT NOT NULL,
    reason TEXT,
    request TEXT NOT NULL,
    config TEXT NOT NULL,
    mc_key BLOB NOT NULL,
    created_gps BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    finished_gps BIGINT,
    waves TEXT NOT NULL,
    devices_total BIGINT NOT NULL
);

CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    dev_eui TEXT NOT NULL,
    key_kind TEXT NOT NULL,
    root_key BLOB NOT NULL,
    device_group TEXT,
    -- The wave the device is in now (planned, running or ended).
    wave BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, dev_eui)
);

CREATE TABLE rollout_inputs (
    rollout_id BIGINT NOT NULL REFERENCES rollouts(id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    at_gps BIGINT NOT NULL,
    dev_eui TEXT,
    port BIGINT,
    fcnt BIGINT,
    wave BIGINT,
    ref_seq BIGINT,
    data BLOB,
    actor TEXT NOT NULL,
    PRIMARY KEY (rollout_id, seq)
);

ALTER TABLE campaigns ADD COLUMN rollout_id BIGINT;
ALTER TABLE campaigns ADD COLUMN wave BIGINT;
CREATE INDEX campaigns_by_rollout ON campaigns (rollout_id, wave);
