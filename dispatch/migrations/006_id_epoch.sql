-- walhook store, version 6: event ids of their own after an accepted fork.
--
-- Event ids are made from the transaction's xid, commit LSN and position.
-- On one history of the source these never repeat. After a fork (a
-- failover to a standby that was behind, a point-in-time restore) the new
-- history reuses xids and WAL positions the old one had already used, and
-- walhook setup --accept-gap moves the cursor back: a new transaction with
-- the xid and commit LSN of a stored one would be taken for a replay of it
-- (ON CONFLICT DO NOTHING) and lost. Accepting a fork counts id_epoch up,
-- and the epoch goes into the ids of transactions committed at or past
-- id_epoch_from: where the new history begins (the server's last
-- promotion, or the slot's position if that is later). Transactions
-- before it are in both histories and keep the ids they had (epoch 0
-- leaves the ids as they were).
ALTER TABLE {{schema}}.cursor ADD COLUMN id_epoch int NOT NULL DEFAULT 0,
    ADD COLUMN id_epoch_from pg_lsn;
