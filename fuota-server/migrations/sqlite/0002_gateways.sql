-- Gateways learned from state/conn and uplinks, so that a restarted service knows where to
-- send multicast frames before any gateway speaks again.
CREATE TABLE gateways (
    gateway_id TEXT PRIMARY KEY,
    online BIGINT NOT NULL,
    seen_unix_ms BIGINT NOT NULL
);
