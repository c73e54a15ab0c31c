-- migrate: no-transaction
-- The domain half of the email search (see 014): everything after the first @.
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_domain_trgm_idx
    ON customers USING gin (substr(email, strpos(email, '@') + 1) gin_trgm_ops);
