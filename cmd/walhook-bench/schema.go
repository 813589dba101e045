package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"
)

// Fixed rows every generated change hangs off. They are written before any
// slot exists, so they are not part of any measure.
const (
	auctionID = "a0000000-0000-4000-8000-000000000001"
	ownerID   = "b0000000-0000-4000-8000-000000000001"
	channelID = "c0000000-0000-4000-8000-000000000001"
	// problems is how many problem reports pgbench's script updates
	// (ids problemUUID(1..problems)): enough that 16 clients rarely wait on
	// the same row lock.
	problems = 10000
)

// problemSQL is the id of pgbench's problem report :p, as SQL.
const problemSQL = `('00000000-0000-4000-8000-' || lpad(:p::text, 12, '0'))::uuid`

// triggerSQL is seed 000's design ("a database trigger fires and queues the
// webhook delivery"): AFTER row triggers that insert the event into a queue
// table and pg_notify a worker, in the application's transaction. The
// functions and the table are created once; the triggers only for the
// rounds that measure this design.
const triggerSQL = `
CREATE TABLE webhook_queue (
    id          bigserial   PRIMARY KEY,
    event       text        NOT NULL,
    auction_id  uuid        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    int         NOT NULL DEFAULT 0,
    delivered_at timestamptz
);
CREATE INDEX ON webhook_queue (created_at) WHERE delivered_at IS NULL;

CREATE FUNCTION queue_message_created() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE qid bigint;
BEGIN
    INSERT INTO webhook_queue (event, auction_id, payload)
    VALUES ('message.created', NEW.auction_id, jsonb_build_object(
        'id', NEW.id, 'channel_id', NEW.channel_id, 'author_id', NEW.author_id,
        'body', NEW.body, 'attachments', NEW.attachments, 'created_at', NEW.created_at))
    RETURNING id INTO qid;
    PERFORM pg_notify('webhooks', qid::text);
    RETURN NULL;
END $$;

CREATE FUNCTION queue_problem_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE qid bigint;
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO webhook_queue (event, auction_id, payload)
        VALUES ('problem.status_changed', NEW.auction_id, jsonb_build_object(
            'id', NEW.id, 'title', NEW.title, 'previous_status', OLD.status,
            'status', NEW.status, 'updated_at', NEW.updated_at))
        RETURNING id INTO qid;
        PERFORM pg_notify('webhooks', qid::text);
    END IF;
    RETURN NULL;
END $$;
`

const createTriggers = `
CREATE TRIGGER messages_webhook AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION queue_message_created();
CREATE TRIGGER problem_reports_webhook AFTER UPDATE ON problem_reports
    FOR EACH ROW EXECUTE FUNCTION queue_problem_status();`

const dropTriggers = `
DROP TRIGGER messages_webhook ON messages;
DROP TRIGGER problem_reports_webhook ON problem_reports;`

// loadSchema creates the bench database with the sample schema, the fixed
// rows, pgbench's problem reports and the trigger design's table and
// functions.
func (e *env) loadSchema(ctx context.Context) error {
	schema, err := os.ReadFile(filepath.Join(e.samples, "schema.sql"))
	if err != nil {
		return err
	}
	if err := e.cluster.Exec(ctx, "postgres", "CREATE DATABASE "+e.db); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	if err := e.cluster.Exec(ctx, e.db, string(schema)); err != nil {
		return fmt.Errorf("load %s/schema.sql: %w", e.samples, err)
	}
	base := fmt.Sprintf(`
INSERT INTO auctions (id, name) VALUES ('%[1]s', 'bench auction');
INSERT INTO members (id, auction_id, email, display_name, role, accepted_at)
    VALUES ('%[2]s', '%[1]s', 'owner@example.com', 'Owner', 'owner', now());
INSERT INTO channels (id, auction_id, name, topic, created_by)
    VALUES ('%[3]s', '%[1]s', 'general', 'bench', '%[2]s');
INSERT INTO problem_reports (id, auction_id, reported_by, title, description)
    SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, '%[1]s', '%[2]s',
           'problem ' || g, 'seeded for pgbench'
    FROM generate_series(1, %[4]d) g;`, auctionID, ownerID, channelID, problems)
	if err := e.cluster.Exec(ctx, e.db, base); err != nil {
		return fmt.Errorf("base rows: %w", err)
	}
	if err := e.cluster.Exec(ctx, e.db, "VACUUM ANALYZE"); err != nil {
		return err
	}
	if err := e.cluster.Exec(ctx, e.db, triggerSQL); err != nil {
		return fmt.Errorf("trigger design: %w", err)
	}
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&e.pgVersion)
}
