-- migrate: no-transaction
-- The email half of the customer search (see 008).
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_trgm_idx ON customers USING gin (email gin_trgm_ops);
