-- A whole-config replace (restore, apply, rollback) is one revision with one history row per
-- changed resource: history is keyed by (revision, seq), seq being the row's place within its
-- revision (0 for every single write). SQLite cannot change a primary key in place, so the table
-- is rebuilt; existing rows keep their revision with seq 0.
CREATE TABLE history_new (
    revision BIGINT NOT NULL,
    seq      BIGINT NOT NULL DEFAULT 0 CHECK (seq >= 0),
    -- Unix seconds.
    at       BIGINT NOT NULL,
    kind     TEXT   NOT NULL,
    id       TEXT   NOT NULL,
    op       TEXT   NOT NULL CHECK (op IN ('put', 'delete')),
    -- The stored body before and after the write (NULL for a create's before and a delete's
    -- after).
    before   TEXT,
    after    TEXT,
    actor    TEXT,
    PRIMARY KEY (revision, seq)
);

INSERT INTO history_new (revision, seq, at, kind, id, op, before, after, actor)
    SELECT revision, 0, at, kind, id, op, before, after, actor FROM history;

DROP TABLE history;

ALTER TABLE history_new RENAME TO history;
