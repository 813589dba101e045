-- Auction Excellence (seed 000): the source database walhook attaches to.
--
-- Modelled on the seed's event catalogue: auctions; members with roles and
-- invitations; lot submissions; quality inspections and their defects;
-- problem reports with status, assignee and action items; chat channels and
-- messages with edit and soft delete.
--
-- Every table that a rule in walhook.yaml compares old and new values on
-- (`changed:` or a `when:` that reads `old.`) is REPLICA IDENTITY FULL:
-- under DEFAULT identity PostgreSQL sends no old row for an update that does
-- not change the primary key, so "status changed" could not be decided.
-- Child tables carry auction_id (denormalised, as applications usually do)
-- so every event names its auction without a lookup.

CREATE TABLE auctions (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    starts_at   timestamptz,
    ends_at     timestamptz,
    settings    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE members (
    id           uuid        PRIMARY KEY,
    auction_id   uuid        NOT NULL REFERENCES auctions (id),
    user_id      uuid,
    email        text        NOT NULL,
    display_name text,
    role         text        NOT NULL DEFAULT 'counter'
                 CHECK (role IN ('owner', 'admin', 'counter', 'inspector', 'viewer')),
    invited_by   uuid,
    invited_at   timestamptz NOT NULL DEFAULT now(),
    accepted_at  timestamptz,          -- set when the invitation is accepted
    removed_at   timestamptz,          -- set when the member is removed
    removed_by   uuid,
    UNIQUE (auction_id, email)
);
ALTER TABLE members REPLICA IDENTITY FULL;

CREATE TABLE lot_submissions (
    id            uuid        PRIMARY KEY,
    auction_id    uuid        NOT NULL REFERENCES auctions (id),
    member_id     uuid        NOT NULL REFERENCES members (id),
    lot_number    int         NOT NULL,
    item_count    int         NOT NULL CHECK (item_count >= 0),
    notes         text,
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE lot_submissions REPLICA IDENTITY FULL;

CREATE TABLE inspections (
    id             uuid        PRIMARY KEY,
    auction_id     uuid        NOT NULL REFERENCES auctions (id),
    submission_id  uuid        NOT NULL REFERENCES lot_submissions (id),
    inspector_id   uuid        NOT NULL REFERENCES members (id),
    grade          text        NOT NULL CHECK (grade IN ('A', 'B', 'C', 'fail')),
    notes          text,
    inspected_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inspection_defects (
    id             uuid        PRIMARY KEY,
    auction_id     uuid        NOT NULL REFERENCES auctions (id),
    inspection_id  uuid        NOT NULL REFERENCES inspections (id),
    kind           text        NOT NULL,
    severity       text        NOT NULL CHECK (severity IN ('minor', 'major', 'critical')),
    description    text,
    details        jsonb       NOT NULL DEFAULT '{}',   -- photos, measurements
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE problem_reports (
    id           uuid        PRIMARY KEY,
    auction_id   uuid        NOT NULL REFERENCES auctions (id),
    reported_by  uuid        NOT NULL REFERENCES members (id),
    title        text        NOT NULL,
    description  text,
    priority     text        NOT NULL DEFAULT 'normal'
                 CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    status       text        NOT NULL DEFAULT 'open'
                 CHECK (status IN ('open', 'in_progress', 'closed')),
    assignee_id  uuid        REFERENCES members (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE problem_reports REPLICA IDENTITY FULL;

CREATE TABLE problem_actions (
    id            uuid        PRIMARY KEY,
    auction_id    uuid        NOT NULL REFERENCES auctions (id),
    problem_id    uuid        NOT NULL REFERENCES problem_reports (id),
    description   text        NOT NULL,
    assignee_id   uuid        REFERENCES members (id),
    due_at        timestamptz,
    completed_at  timestamptz,
    completed_by  uuid        REFERENCES members (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE problem_actions REPLICA IDENTITY FULL;

CREATE TABLE channels (
    id           uuid        PRIMARY KEY,
    auction_id   uuid        NOT NULL REFERENCES auctions (id),
    name         text        NOT NULL,
    topic        text,
    created_by   uuid        REFERENCES members (id),
    archived     boolean     NOT NULL DEFAULT false,
    archived_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE channels REPLICA IDENTITY FULL;

CREATE TABLE messages (
    id           uuid        PRIMARY KEY,
    auction_id   uuid        NOT NULL REFERENCES auctions (id),
    channel_id   uuid        NOT NULL REFERENCES channels (id),
    author_id    uuid        NOT NULL REFERENCES members (id),
    body         text        NOT NULL,       -- may exceed 2 kB: stored out of line (TOAST)
    attachments  jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    edited_at    timestamptz,
    deleted_at   timestamptz                 -- soft delete
);
ALTER TABLE messages REPLICA IDENTITY FULL;
