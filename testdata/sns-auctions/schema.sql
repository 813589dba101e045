-- SNS Auctions (seed 004): auctions of Solana Name Service (.sol) domains.
--
-- auctions carries the whole life cycle (active → settled | cancelled);
-- snipe protection moves ends_at forward and counts extensions; settlement
-- records the winner and price, or none when the reserve was not met.
-- auctions is REPLICA IDENTITY FULL because the rules compare old and new
-- status and end time (DEFAULT identity sends no old row for such updates).
--
-- bids carries the auction's domain, denormalised at insert (the bidding
-- service has it at hand): the sns envelope needs a domain on every event,
-- and the mapper is pure — it never queries the database for a lookup.

CREATE TABLE auctions (
    id               text        PRIMARY KEY,            -- e.g. 'auction_123'
    domain           text        NOT NULL CHECK (domain ~ '^[a-z0-9-]+\.sol$'),
    seller           text        NOT NULL,               -- base58 wallet address
    start_price      numeric     NOT NULL CHECK (start_price >= 0),
    reserve_price    numeric     NOT NULL DEFAULT 0 CHECK (reserve_price >= 0),
    currency         text        NOT NULL DEFAULT 'SOL',
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    extension_count  int         NOT NULL DEFAULT 0,     -- snipe extensions so far
    status           text        NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'settled', 'cancelled')),
    winner           text,                               -- set on settlement when the reserve is met
    final_price      numeric,                            -- highest bid at settlement (NULL: no bids)
    settled_at       timestamptz,
    cancelled_at     timestamptz,
    cancel_reason    text,
    metadata         jsonb       NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (winner IS NULL OR status = 'settled')
);
ALTER TABLE auctions REPLICA IDENTITY FULL;

CREATE TABLE bids (
    id            uuid        PRIMARY KEY,
    auction_id    text        NOT NULL REFERENCES auctions (id),
    domain        text        NOT NULL,   -- = auctions.domain, denormalised for the envelope
    bidder        text        NOT NULL,   -- base58 wallet address
    amount        numeric     NOT NULL CHECK (amount > 0),
    tx_signature  text,
    placed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bids_auction ON bids (auction_id, amount DESC);
