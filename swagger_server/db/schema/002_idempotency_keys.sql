-- Idempotency-Keys are scoped to the caller (a digest of its token, never the token) and expire.
-- One row per (client, key); an expired row is overwritten by the next use of the same key and
-- purged, a hundred at a time, by later keyed orders (see queries/orders.py), so the table stays
-- as large as one TTL's worth of keyed orders.
CREATE TABLE idempotency_keys (
    client        text NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    order_id      bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    request_hash  text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client, key)
);
-- why: the table is created above in this file: an empty table, nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Keys stored with the orders before this change belonged to no client: they expire with them.
INSERT INTO idempotency_keys (client, key, order_id, request_hash, created_at)
SELECT '', idempotency_key, id, request_hash, created_at FROM orders WHERE idempotency_key IS NOT NULL;
-- The columns this replaces are dropped by 004, a release later (expand/contract, docs/UPGRADING.md):
-- the release before this one still writes them while a rolling upgrade runs. (Until 1.1.0 this file
-- dropped them here; databases that applied it then have no such columns, and 004 changes nothing.)
