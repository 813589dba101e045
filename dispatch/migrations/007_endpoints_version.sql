-- walhook store, version 7: the fan-out reads the endpoints only when they
-- changed.
--
-- Every Append read every endpoint row and locked it FOR KEY SHARE (a
-- tuple lock is a WAL record per row): with 1,000 endpoints a lone
-- transaction's append took 3 ms instead of 1. endpoints_version counts
-- every change the fan-out depends on, kept by triggers so that no path
-- (the API, the disable rule, static endpoints at start, a DBA's UPDATE)
-- can forget it. Append locks this one row FOR SHARE, which waits for a
-- transaction changing endpoints and holds the next one off until the
-- append commits (as the row locks did), and reads the endpoints again
-- only when the version moved.
CREATE TABLE {{schema}}.endpoints_version (
    one      boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (one),
    version  bigint  NOT NULL
);
INSERT INTO {{schema}}.endpoints_version (one, version) VALUES (true, 1);

CREATE FUNCTION {{schema}}.endpoints_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {{schema}}.endpoints_version SET version = version + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER endpoints_changed_rows AFTER INSERT OR DELETE ON {{schema}}.endpoints
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.endpoints_changed();
CREATE TRIGGER endpoints_changed_update AFTER UPDATE ON {{schema}}.endpoints
    FOR EACH ROW WHEN (ROW(OLD.id, OLD.url, OLD.events, OLD.auctions, OLD.active, OLD.secret, OLD.previous_secret, OLD.previous_secret_until)
        IS DISTINCT FROM ROW(NEW.id, NEW.url, NEW.events, NEW.auctions, NEW.active, NEW.secret, NEW.previous_secret, NEW.previous_secret_until))
    EXECUTE FUNCTION {{schema}}.endpoints_changed();
CREATE TRIGGER endpoints_changed_truncate AFTER TRUNCATE ON {{schema}}.endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION {{schema}}.endpoints_changed();

-- An endpoint deleted (by the API, or a static endpoint gone from the
-- config) leaves a tombstone here. Its delete transaction changes the
-- endpoint row only, so appends wait for it no longer than for any other
-- endpoint change; its deliveries and attempts are deleted after it in
-- batches (claims pass them by: they claim for existing active endpoints
-- only), and the maintenance loop finishes that if the process stops
-- before, then removes the tombstone.
CREATE TABLE {{schema}}.endpoints_deleted (
    id          text        NOT NULL PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
