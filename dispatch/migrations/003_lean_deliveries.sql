-- walhook store, version 3: fewer writes per delivery.
--
-- Every delivery row is written three times (fanned out, claimed,
-- finished), and each write of a row touches every index whose predicate
-- it matches, plus a foreign-key check per reference for inserts. Under
-- load that bookkeeping, not the webhook, was most of the store's CPU.

-- Foreign keys: the rows they guard are written only by walhook, which
-- inserts an event and its deliveries in one statement batch, reads the
-- endpoints it fans out to FOR KEY SHARE (so a concurrent delete waits),
-- and writes attempts only for deliveries it holds. The cascades they gave
-- (endpoint deletion, retention) are done explicitly by those statements.
ALTER TABLE {{schema}}.deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE {{schema}}.deliveries DROP CONSTRAINT deliveries_endpoint_id_fkey;
ALTER TABLE {{schema}}.attempts DROP CONSTRAINT attempts_delivery_id_fkey;

-- Claiming walks deliveries_endpoint_due; nothing reads the global due
-- order. In-flight counts are kept by each process (a count over this
-- partial index cost O(recent history): every claim leaves a dead entry).
DROP INDEX {{schema}}.deliveries_due;
DROP INDEX {{schema}}.deliveries_endpoint_delivering;
