-- The snapshot builder reads only what changed since the revision it last built
-- (`changes_since`): the rows with a newer mod_revision, found through this index.
CREATE INDEX resources_mod_revision ON resources (mod_revision);
