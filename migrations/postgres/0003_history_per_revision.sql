-- A whole-config replace (restore, apply, rollback) is one revision with one history row per
-- changed resource: history is keyed by (revision, seq), seq being the row's place within its
-- revision (0 for every single write). Existing rows keep their revision with seq 0.
ALTER TABLE history ADD COLUMN seq BIGINT NOT NULL DEFAULT 0 CHECK (seq >= 0);
ALTER TABLE history DROP CONSTRAINT history_pkey;
ALTER TABLE history ADD PRIMARY KEY (revision, seq);
