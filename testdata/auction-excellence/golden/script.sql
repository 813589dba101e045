-- Golden script for Auction Excellence (seed 000): every one of the 17
-- event types, plus changes that must produce nothing. Run by
-- mapper/golden_test.go statement by statement (a statement ends with a
-- line ending in ";"), each in its own transaction unless inside
-- BEGIN ... COMMIT. Ids and timestamps are fixed so the expected events
-- (events.json) need no normalising except the commit time.

-- The auction itself is not published (no rule reads it): no event.
INSERT INTO auctions (id, name, created_at)
VALUES ('a0000000-0000-4000-8000-000000000001', 'Spring estate sale', '2024-03-01 09:00:00+00');

-- Owner, already accepted: member.invited's `when` is false.
INSERT INTO members (id, auction_id, user_id, email, display_name, role, invited_at, accepted_at)
VALUES ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        'c0000000-0000-4000-8000-000000000001', 'owner@example.com', 'Olive Owner', 'owner',
        '2024-03-01 09:00:00+00', '2024-03-01 09:00:00+00');

-- member.invited
INSERT INTO members (id, auction_id, email, role, invited_by, invited_at)
VALUES ('b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001',
        'kim@example.com', 'counter', 'b0000000-0000-4000-8000-000000000001', '2024-03-01 09:05:00+00');

-- member.joined (invitation accepted)
UPDATE members SET accepted_at = '2024-03-01 10:00:00.250+00', user_id = 'c0000000-0000-4000-8000-000000000002',
       display_name = 'Kim Counter'
 WHERE id = 'b0000000-0000-4000-8000-000000000002';

-- member.role_changed
UPDATE members SET role = 'inspector' WHERE id = 'b0000000-0000-4000-8000-000000000002';

-- No event: role set to itself, display name edited.
UPDATE members SET role = role, display_name = 'Kim C.' WHERE id = 'b0000000-0000-4000-8000-000000000002';

-- channel.created and message.created in one transaction (two events, in
-- change order).
BEGIN;
INSERT INTO channels (id, auction_id, name, topic, created_by, created_at)
VALUES ('d0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'floor',
        'Counting floor', 'b0000000-0000-4000-8000-000000000001', '2024-03-01 10:05:00+00');
INSERT INTO messages (id, auction_id, channel_id, author_id, body, attachments, created_at)
VALUES ('e0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        'd0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002',
        'Lot 17 is short two items <see photo> & "receipt"', '[{"url": "https://files.example.com/17.jpg", "size": 52311}]',
        '2024-03-01 10:06:00+00');
COMMIT;

-- message.edited
UPDATE messages SET body = 'Lot 17 is short two items (recounted)', edited_at = '2024-03-01 10:07:00+00'
 WHERE id = 'e0000000-0000-4000-8000-000000000001';

-- message.deleted (soft delete); message.edited does not fire: body unchanged.
UPDATE messages SET deleted_at = '2024-03-01 10:08:00+00' WHERE id = 'e0000000-0000-4000-8000-000000000001';

-- submission.created
INSERT INTO lot_submissions (id, auction_id, member_id, lot_number, item_count, notes, submitted_at, updated_at)
VALUES ('f0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        'b0000000-0000-4000-8000-000000000002', 17, 12, 'two boxes', '2024-03-01 11:00:00+00', '2024-03-01 11:00:00+00');

-- No event: only updated_at changed.
UPDATE lot_submissions SET updated_at = '2024-03-01 11:01:00+00' WHERE id = 'f0000000-0000-4000-8000-000000000001';

-- submission.updated
UPDATE lot_submissions SET item_count = 14, updated_at = '2024-03-01 11:02:00+00'
 WHERE id = 'f0000000-0000-4000-8000-000000000001';

-- inspection.created and inspection.defect_added
BEGIN;
INSERT INTO inspections (id, auction_id, submission_id, inspector_id, grade, notes, inspected_at)
VALUES ('10000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        'f0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002', 'B', NULL,
        '2024-03-01 12:00:00+00');
INSERT INTO inspection_defects (id, auction_id, inspection_id, kind, severity, description, details, created_at)
VALUES ('11000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        '10000000-0000-4000-8000-000000000001', 'scratch', 'minor', 'Scratch on the lid',
        '{"photos": ["https://files.example.com/d1.jpg"], "length_mm": 12.5}', '2024-03-01 12:01:00+00');
COMMIT;

-- problem.created
INSERT INTO problem_reports (id, auction_id, reported_by, title, description, priority, created_at, updated_at)
VALUES ('12000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        'b0000000-0000-4000-8000-000000000002', 'Lot 17 count mismatch', 'Counted 12, sheet says 14', 'high',
        '2024-03-01 13:00:00+00', '2024-03-01 13:00:00+00');

-- One update, two events in rule order: problem.status_changed, then
-- problem.assigned.
UPDATE problem_reports SET status = 'in_progress', assignee_id = 'b0000000-0000-4000-8000-000000000001',
       updated_at = '2024-03-01 13:05:00+00'
 WHERE id = '12000000-0000-4000-8000-000000000001';

-- No event: SET status = status.
UPDATE problem_reports SET status = status WHERE id = '12000000-0000-4000-8000-000000000001';

-- No event: unassigned (problem.assigned requires an assignee).
UPDATE problem_reports SET assignee_id = NULL, updated_at = '2024-03-01 13:06:00+00'
 WHERE id = '12000000-0000-4000-8000-000000000001';

-- problem.action_completed (the insert of the action is no event)
INSERT INTO problem_actions (id, auction_id, problem_id, description, assignee_id, created_at)
VALUES ('13000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        '12000000-0000-4000-8000-000000000001', 'Recount lot 17', 'b0000000-0000-4000-8000-000000000002',
        '2024-03-01 13:10:00+00');
UPDATE problem_actions SET completed_at = '2024-03-01 14:00:00+00', completed_by = 'b0000000-0000-4000-8000-000000000002'
 WHERE id = '13000000-0000-4000-8000-000000000001';

-- problem.status_changed (closed)
UPDATE problem_reports SET status = 'closed', updated_at = '2024-03-01 14:05:00+00'
 WHERE id = '12000000-0000-4000-8000-000000000001';

-- channel.archived
UPDATE channels SET archived = true, archived_at = '2024-03-02 09:00:00+00'
 WHERE id = 'd0000000-0000-4000-8000-000000000001';

-- member.removed (soft: removed_at set)
UPDATE members SET removed_at = '2024-03-02 10:00:00+00', removed_by = 'b0000000-0000-4000-8000-000000000001'
 WHERE id = 'b0000000-0000-4000-8000-000000000002';

-- member.invited, then member.removed by deleting the row outright.
INSERT INTO members (id, auction_id, email, role, invited_by, invited_at)
VALUES ('b0000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000001',
        'lee@example.com', 'viewer', 'b0000000-0000-4000-8000-000000000001', '2024-03-02 11:00:00+00');
DELETE FROM members WHERE id = 'b0000000-0000-4000-8000-000000000003';
