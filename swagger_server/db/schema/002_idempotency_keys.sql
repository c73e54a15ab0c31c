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
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Keys stored with the orders before this change belonged to no client: they expire with them.
INSERT INTO idempotency_keys (client, key, order_id, request_hash, created_at)
SELECT '', idempotency_key, id, request_hash, created_at FROM orders WHERE idempotency_key IS NOT NULL;
ALTER TABLE orders DROP COLUMN idempotency_key, DROP COLUMN request_hash;
