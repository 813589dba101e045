-- walhook store, version 8: the fan-out reads again only the endpoints
-- that changed.
--
-- Since version 7 an Append reads the endpoints again when
-- endpoints_version moved, but all of them: with 5,000 endpoints every
-- change of one (an admin's PATCH, a disable) cost the replication
-- consumer 20 ms, and a steady stream of API edits made that its main
-- cost. Each endpoint row now carries the version that last changed it
-- (changed_version, stamped by a BEFORE trigger from endpoints_version),
-- so an Append reads the rows past the version it holds. A delete or
-- TRUNCATE, which leaves no row to read, moves deleted_version, and the
-- next Append reads them all again. epoch tells this store from one
-- dropped and set up again, whose versions start at 1 again.
ALTER TABLE {{schema}}.endpoints_version
    ADD COLUMN epoch uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN deleted_version bigint NOT NULL DEFAULT 0;

ALTER TABLE {{schema}}.endpoints ADD COLUMN changed_version bigint NOT NULL DEFAULT 0;
CREATE INDEX endpoints_changed_version ON {{schema}}.endpoints (changed_version);

-- GET /api/v1/webhooks pages by (created_at, id): without an index each
-- page sorted every endpoint (6 times as long at 5,000 endpoints as at
-- 100).
CREATE INDEX endpoints_created ON {{schema}}.endpoints (created_at, id);

-- Deletes and TRUNCATE.
CREATE OR REPLACE FUNCTION {{schema}}.endpoints_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE {{schema}}.endpoints_version SET version = version + 1, deleted_version = version + 1;
    RETURN NULL;
END
$$;

-- Inserts and the updates the fan-out depends on; an id changed is the
-- old id deleted.
CREATE FUNCTION {{schema}}.endpoints_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
        UPDATE {{schema}}.endpoints_version SET version = version + 1, deleted_version = version + 1
            RETURNING version INTO NEW.changed_version;
    ELSE
        UPDATE {{schema}}.endpoints_version SET version = version + 1 RETURNING version INTO NEW.changed_version;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER endpoints_changed_rows ON {{schema}}.endpoints;
DROP TRIGGER endpoints_changed_update ON {{schema}}.endpoints;
CREATE TRIGGER endpoints_changed_delete AFTER DELETE ON {{schema}}.endpoints
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.endpoints_changed();
CREATE TRIGGER endpoints_stamp_insert BEFORE INSERT ON {{schema}}.endpoints
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.endpoints_stamp();
CREATE TRIGGER endpoints_stamp_update BEFORE UPDATE ON {{schema}}.endpoints
    FOR EACH ROW WHEN (ROW(OLD.id, OLD.url, OLD.events, OLD.auctions, OLD.active, OLD.secret, OLD.previous_secret, OLD.previous_secret_until)
        IS DISTINCT FROM ROW(NEW.id, NEW.url, NEW.events, NEW.auctions, NEW.active, NEW.secret, NEW.previous_secret, NEW.previous_secret_until))
    EXECUTE FUNCTION {{schema}}.endpoints_stamp();
