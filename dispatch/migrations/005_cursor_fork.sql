-- walhook store, version 5: remember a fork.
--
-- When the store's cursor is past the source's WAL end (a failover to a
-- standby that was behind, a point-in-time restore), walhook refuses to
-- stream until an operator accepts it (walhook setup --accept-gap). The
-- server's WAL soon passes the old cursor, after which the positions
-- alone no longer show the fork: fork_wal_end keeps the WAL end seen when
-- it was detected, and check, setup and run refuse until it is accepted.
ALTER TABLE {{schema}}.cursor ADD COLUMN fork_wal_end pg_lsn;
