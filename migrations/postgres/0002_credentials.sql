-- Mirrors migrations/sqlite/0002_credentials.sql.
-- Credentials (a consumer's jwt-auth key, key-auth key) that must belong to one resource only.
-- One row per credential held, rewritten on every put and cleared on delete; the primary key
-- makes a second holder impossible even if a check were skipped. digest is the hex SHA-256 of
-- the value: key-auth keys are secrets, so they are not indexed in the clear.
CREATE TABLE credentials (
    plugin TEXT COLLATE "C" NOT NULL,
    digest TEXT NOT NULL,
    kind   TEXT COLLATE "C" NOT NULL,
    id     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (plugin, digest)
);

CREATE INDEX credentials_holder ON credentials (kind, id);
