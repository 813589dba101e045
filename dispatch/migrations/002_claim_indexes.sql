-- walhook store, version 2: indexes for per-endpoint claiming and the
-- disable rule.

-- Claiming walks endpoints and takes each one's earliest due pending rows
-- (a LATERAL probe per endpoint), so one endpoint's backlog never hides
-- another endpoint's due rows behind it in a global next_attempt_at order.
CREATE INDEX deliveries_endpoint_due ON {{schema}}.deliveries (endpoint_id, next_attempt_at) WHERE status = 'pending';
-- In-flight count per endpoint (the per-endpoint cap).
CREATE INDEX deliveries_endpoint_delivering ON {{schema}}.deliveries (endpoint_id) WHERE status = 'delivering';
-- The disable rule counts an endpoint's exhausted deliveries within a window.
CREATE INDEX deliveries_endpoint_failed ON {{schema}}.deliveries (endpoint_id, updated_at) WHERE status = 'failed';
