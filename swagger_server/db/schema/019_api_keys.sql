-- API keys the service issues (swagger_server/identity/keys.py; docs/SECURITY.md, "Who may do what").
-- A key is `sk_<id>_<secret>`: the id names its row, so checking a key is one lookup whatever the
-- number of keys; the secret (32 random bytes) is kept only as its SHA-256 digest (a digest of a
-- random 256-bit secret needs no slow hash: there is no dictionary to try). A key is revoked, never
-- deleted by the service (each worker keeps the keys in memory and reads what changed since its last
-- look, `changed_at`); a customer's keys go with it.
CREATE TABLE api_keys (
    id              text PRIMARY KEY CHECK (id ~ '^[a-z2-7]{12}$'),
    secret_sha256   bytea NOT NULL CHECK (length(secret_sha256) = 32),
    name            text NOT NULL DEFAULT '' CHECK (length(name) <= 100 AND text_is_canonical(name)),
    scopes          text[] NOT NULL CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'write', 'admin']),
    customer_id     bigint REFERENCES customers (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    last_used_at    timestamptz,
    changed_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX api_keys_changed_at_idx ON api_keys (changed_at);
CREATE INDEX api_keys_customer_id_idx ON api_keys (customer_id) WHERE customer_id IS NOT NULL;
