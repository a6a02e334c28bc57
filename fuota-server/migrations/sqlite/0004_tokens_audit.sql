-- API tokens with a role (viewer, operator, admin). Only the SHA-256 of a token is kept: the
-- token itself is shown once, when it is made. A revoked token keeps its row (the audit log
-- names it).
CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_unix_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_unix_ms BIGINT
);

-- The audit log: every operator action and every campaign, rollout and wave state change,
-- with who and when. Append-only: the service only ever INSERTs here (no UPDATE or DELETE
-- anywhere in its code), and these triggers refuse any change made behind its back.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit (subject, id);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- Small facts about the database: a value sealed under the server key, so that a key
-- rotation cut short can be finished at the next start.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
