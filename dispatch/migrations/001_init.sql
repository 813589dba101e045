-- walhook store, version 1. {{schema}} is replaced by the configured schema
-- name (quoted identifier). Applied by `walhook setup`, checked by `walhook run`.

CREATE TABLE {{schema}}.schema_version (
    version     int         NOT NULL PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- The replication cursor: the end LSN of the last transaction whose events
-- are durable here. cdc confirms only positions recorded in this row.
CREATE TABLE {{schema}}.cursor (
    slot        text        NOT NULL PRIMARY KEY,
    system_id   text        NOT NULL,
    lsn         pg_lsn      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Static endpoints come from the config (id 'static:<name>', static = true,
-- rewritten at every start); API endpoints have ids 'whk_…'.
CREATE TABLE {{schema}}.endpoints (
    id                     text        NOT NULL PRIMARY KEY,
    static                 boolean     NOT NULL DEFAULT false,
    url                    text        NOT NULL,
    description            text        NOT NULL DEFAULT '',
    events                 text[]      NOT NULL DEFAULT '{}',  -- exact or 'prefix.*'; empty = all
    auctions               text[]      NOT NULL DEFAULT '{}',  -- empty = all
    secret                 text        NOT NULL,               -- whsec_…
    previous_secret        text,                               -- still signs until previous_secret_until
    previous_secret_until  timestamptz,
    active                 boolean     NOT NULL DEFAULT true,
    disabled_reason        text,
    disabled_at            timestamptz,
    failing_since          timestamptz,                        -- first failure after the last 2xx
    last_success_at        timestamptz,
    last_attempt_at        timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Events exactly as mapped. data is json (not jsonb) so its bytes and key
-- order are kept; the body is rendered per delivery at send time.
CREATE TABLE {{schema}}.events (
    id           text        NOT NULL PRIMARY KEY,
    type         text        NOT NULL,
    auction_id   text,
    domain       text,
    envelope     text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    data         json        NOT NULL,
    table_name   text,
    xid          bigint,
    commit_lsn   pg_lsn,
    position     int,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_created_at ON {{schema}}.events (created_at);

-- One row per event × matching endpoint. status: pending (due at
-- next_attempt_at), delivering (claimed until locked_until), delivered,
-- failed (retries exhausted), skipped (endpoint disabled when fanned out or
-- while pending).
CREATE TABLE {{schema}}.deliveries (
    id                text        NOT NULL PRIMARY KEY,     -- X-Webhook-ID
    event_id          text        NOT NULL REFERENCES {{schema}}.events (id) ON DELETE CASCADE,
    endpoint_id       text        NOT NULL REFERENCES {{schema}}.endpoints (id) ON DELETE CASCADE,
    event_type        text        NOT NULL,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'delivering', 'delivered', 'failed', 'skipped')),
    attempts          int         NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    locked_by         text,
    locked_until      timestamptz,
    last_status_code  int,
    last_error        text,
    last_duration_ms  int,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz
);
-- Claiming reads only due pending rows: O(batch) however many delivered rows exist.
CREATE INDEX deliveries_due ON {{schema}}.deliveries (next_attempt_at) WHERE status = 'pending';
-- Rescue of leases held by crashed workers.
CREATE INDEX deliveries_leased ON {{schema}}.deliveries (locked_until) WHERE status = 'delivering';
-- History per endpoint, newest first; retention by age.
CREATE INDEX deliveries_endpoint_created ON {{schema}}.deliveries (endpoint_id, created_at DESC, id);
CREATE INDEX deliveries_event ON {{schema}}.deliveries (event_id);
CREATE INDEX deliveries_done ON {{schema}}.deliveries (updated_at) WHERE status IN ('delivered', 'failed', 'skipped');

-- The delivery log: one row per attempt.
CREATE TABLE {{schema}}.attempts (
    id             bigserial   NOT NULL PRIMARY KEY,
    delivery_id    text        NOT NULL REFERENCES {{schema}}.deliveries (id) ON DELETE CASCADE,
    attempt        int         NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_ms    int         NOT NULL,
    status_code    int,
    error          text,
    response_body  text,
    signed_by      int         NOT NULL DEFAULT 1          -- number of signatures sent
);
CREATE INDEX attempts_delivery ON {{schema}}.attempts (delivery_id, attempt);
