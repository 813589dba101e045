-- walhook store, version 4: count skipped deliveries without reading the
-- history.
--
-- The status API counts skipped deliveries. Through deliveries_done (every
-- finished delivery) that count read the whole delivered history kept for
-- retention; this index holds only skipped rows, which are rare, and
-- delivered ones never touch it.
CREATE INDEX deliveries_skipped ON {{schema}}.deliveries (endpoint_id) WHERE status = 'skipped';
