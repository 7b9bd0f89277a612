-- Config store schema, mirroring migrations/sqlite/0001_init.sql statement by statement.
-- Ids and kinds use COLLATE "C" so that they sort by bytes, exactly as in SQLite, whatever the
-- database's default collation is.
-- Bodies stay TEXT (not jsonb): the JSON is kept as accepted, key order included.

-- The single global revision: bumped once by every accepted write, 0 for a new store. Every
-- write starts by updating this row, so its row lock serialises writers across all control
-- plane replicas sharing the database.
-- store_id is random per store: a control plane that sees it change knows the store was
-- replaced or wiped, and does not mirror that into data planes on its own.
CREATE TABLE meta (
    id       BIGINT NOT NULL PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL CHECK (revision >= 0),
    -- 32 lowercase hex digits, like SQLite's lower(hex(randomblob(16))).
    store_id TEXT   NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '')
);

INSERT INTO meta (id, revision) VALUES (1, 0);

-- Current resources. body is the JSON as accepted, with "id" set to the resource id.
CREATE TABLE resources (
    kind            TEXT COLLATE "C" NOT NULL,
    id              TEXT COLLATE "C" NOT NULL,
    body            TEXT   NOT NULL,
    create_revision BIGINT NOT NULL,
    mod_revision    BIGINT NOT NULL,
    -- Unix seconds.
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);

-- One row per reference held by a resource, rewritten on every put and cleared on delete, so
-- "is X in use?" is one indexed lookup instead of a scan of every body.
CREATE TABLE refs (
    from_kind  TEXT COLLATE "C" NOT NULL,
    from_id    TEXT COLLATE "C" NOT NULL,
    from_field TEXT COLLATE "C" NOT NULL,
    to_kind    TEXT COLLATE "C" NOT NULL,
    to_id      TEXT COLLATE "C" NOT NULL,
    -- The key's prefix (from_kind, from_id) also serves "drop the refs of this resource".
    PRIMARY KEY (from_kind, from_id, from_field, to_kind, to_id)
);

CREATE INDEX refs_to ON refs (to_kind, to_id);

-- One row per accepted write, keyed by the revision it created.
CREATE TABLE history (
    revision BIGINT NOT NULL PRIMARY KEY,
    -- Unix seconds.
    at       BIGINT NOT NULL,
    kind     TEXT COLLATE "C" NOT NULL,
    id       TEXT COLLATE "C" NOT NULL,
    op       TEXT   NOT NULL CHECK (op IN ('put', 'delete')),
    -- The stored body before and after the write (NULL for a create's before and a delete's
    -- after).
    before   TEXT,
    after    TEXT,
    actor    TEXT
);
