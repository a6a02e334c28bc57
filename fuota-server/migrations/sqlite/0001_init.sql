-- The service's state. Campaign engines are rebuilt from `inputs` (write-ahead: every engine
-- input is stored before it is fed); `outputs` holds what the engine handed out (stored before
-- it is published, so that nothing is published twice); the other tables are views kept for
-- the API.
CREATE TABLE firmware (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    target_fw_version BIGINT,
    data BLOB NOT NULL,
    created_unix_ms BIGINT NOT NULL
);

CREATE TABLE campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    firmware_id BIGINT NOT NULL REFERENCES firmware(id),
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    config TEXT NOT NULL,
    mc_key BLOB NOT NULL,
    created_gps BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    finished_gps BIGINT,
    counters TEXT NOT NULL,
    devices_total BIGINT NOT NULL,
    devices_updated BIGINT NOT NULL,
    devices_failed BIGINT NOT NULL,
    frames_sent BIGINT NOT NULL DEFAULT 0,
    frames_refused BIGINT NOT NULL DEFAULT 0,
    reason TEXT
);

CREATE TABLE devices (
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    dev_eui TEXT NOT NULL,
    key_kind TEXT NOT NULL,
    root_key BLOB NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT,
    progress TEXT NOT NULL,
    changed_gps BIGINT NOT NULL,
    updated_gps BIGINT,
    PRIMARY KEY (campaign_id, dev_eui)
);

CREATE TABLE inputs (
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    at_gps BIGINT NOT NULL,
    dev_eui TEXT,
    port BIGINT,
    fcnt BIGINT,
    ref_seq BIGINT,
    data BLOB,
    PRIMARY KEY (campaign_id, seq)
);

CREATE TABLE outputs (
    campaign_id BIGINT NOT NULL REFERENCES campaigns(id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    at_gps BIGINT NOT NULL,
    dev_eui TEXT,
    port BIGINT NOT NULL,
    fcnt BIGINT,
    frame_kind TEXT,
    data BLOB NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (campaign_id, seq)
);

CREATE TABLE transmissions (
    downlink_id BIGINT PRIMARY KEY,
    campaign_id BIGINT NOT NULL,
    output_seq BIGINT NOT NULL,
    gateway_id TEXT NOT NULL,
    status TEXT NOT NULL
);

-- The next multicast FCnt of each McAddr: raised in the same transaction that records a
-- frame, before the frame is published.
CREATE TABLE mc_groups (
    mc_addr BIGINT PRIMARY KEY,
    next_fcnt BIGINT NOT NULL
);

CREATE TABLE device_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id BIGINT NOT NULL,
    dev_eui TEXT NOT NULL,
    at_gps BIGINT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX device_log_by_device ON device_log (campaign_id, dev_eui, id);
CREATE INDEX transmissions_by_output ON transmissions (campaign_id, output_seq);
