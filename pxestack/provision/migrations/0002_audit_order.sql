-- Audit entries are numbered in commit order: each change takes the next number from this
-- one row at its very end and holds the row lock until it commits, so an entry never becomes
-- visible after one with a higher number.  The git exporter relies on it: it exports the
-- entries above the last one it exported, and must never skip one that committed late.
CREATE TABLE audit_order (
    id smallint PRIMARY KEY CHECK (id = 1),
    last_id bigint NOT NULL
);
INSERT INTO audit_order (id, last_id) SELECT 1, coalesce(max(id), 0) FROM audit;

-- What an entry records: 'change' (the record after it), 'remove' (the record is gone),
-- 'history' (copied from a cluster directory's git history by an import; no record) or
-- 'cluster' (a cluster-level file changed).
ALTER TABLE audit ADD COLUMN kind text NOT NULL DEFAULT 'change'
    CHECK (kind IN ('change', 'remove', 'history', 'cluster'));
UPDATE audit SET kind = CASE
    WHEN serial IS NULL THEN 'cluster'
    WHEN record IS NULL AND server LIKE 'imported from %' THEN 'history'
    WHEN record IS NULL THEN 'remove'
    ELSE 'change' END;
