-- Golden script for SNS Auctions (seed 004): the six auction.* events,
-- plus changes that must produce nothing. Run by mapper/golden_test.go
-- statement by statement (a statement ends with a line ending in ";"),
-- each in its own transaction unless inside BEGIN ... COMMIT. Ids and
-- timestamps are fixed; only the commit time is normalised.

-- auction.created
INSERT INTO auctions (id, domain, seller, start_price, reserve_price, starts_at, ends_at, created_at)
VALUES ('auction_123', 'example.sol', '7B4X5wUohEzB8UZjfAvaxS1huNY6q5p5XqvCH7r6T1Hj', 1.5, 5,
        '2024-06-01 12:00:00+00', '2024-06-02 12:00:00+00', '2024-06-01 11:00:00+00');

-- auction.bid (twice, in one transaction)
BEGIN;
INSERT INTO bids (id, auction_id, domain, bidder, amount, tx_signature, placed_at)
VALUES ('20000000-0000-4000-8000-000000000001', 'auction_123', 'example.sol',
        '9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin', 2.5, '5h6x...sig1', '2024-06-02 11:58:00+00');
INSERT INTO bids (id, auction_id, domain, bidder, amount, tx_signature, placed_at)
VALUES ('20000000-0000-4000-8000-000000000002', 'auction_123', 'example.sol',
        'HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH', 6.25, NULL, '2024-06-02 11:59:30+00');
COMMIT;

-- auction.bid.extended (snipe protection)
UPDATE auctions SET ends_at = ends_at + interval '5 minutes', extension_count = extension_count + 1
 WHERE id = 'auction_123';

-- No event: end time moved back (a correction), and metadata touched.
UPDATE auctions SET ends_at = ends_at - interval '1 minute' WHERE id = 'auction_123';
UPDATE auctions SET metadata = '{"featured": true}' WHERE id = 'auction_123';

-- auction.settled (reserve met)
UPDATE auctions SET status = 'settled', winner = 'HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH',
       final_price = 6.25, settled_at = '2024-06-02 12:04:00+00'
 WHERE id = 'auction_123';

-- auction.created, auction.bid, then auction.settled_unsold (reserve not met:
-- 10 < 12, which would be "more" compared as text).
INSERT INTO auctions (id, domain, seller, start_price, reserve_price, starts_at, ends_at, created_at)
VALUES ('auction_124', 'rare-name.sol', '7B4X5wUohEzB8UZjfAvaxS1huNY6q5p5XqvCH7r6T1Hj', 2, 12,
        '2024-06-01 12:00:00+00', '2024-06-03 12:00:00+00', '2024-06-01 11:30:00+00');
INSERT INTO bids (id, auction_id, domain, bidder, amount, placed_at)
VALUES ('20000000-0000-4000-8000-000000000003', 'auction_124', 'rare-name.sol',
        '9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin', 10, '2024-06-03 10:00:00+00');
UPDATE auctions SET status = 'settled', final_price = 10, settled_at = '2024-06-03 12:00:01+00'
 WHERE id = 'auction_124';

-- auction.created, then auction.cancelled
INSERT INTO auctions (id, domain, seller, start_price, starts_at, ends_at, created_at)
VALUES ('auction_125', 'gone.sol', 'HN7cABqLq46Es1jh92dQQisAq662SmxELLLsHHe4YWrH', 0.75,
        '2024-06-01 12:00:00+00', '2024-06-04 12:00:00+00', '2024-06-01 11:45:00+00');
UPDATE auctions SET status = 'cancelled', cancelled_at = '2024-06-02 08:00:00+00', cancel_reason = 'Listed by mistake'
 WHERE id = 'auction_125';
