-- migrate: no-transaction
-- The customer search's email half, in two: the local part (before the first @), here, and the
-- domain (015). One index over the whole address made every address search intersect the domain's
-- trigrams, which nearly every row shares (db/queries/customers.py, _search).
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_local_trgm_idx
    ON customers USING gin (split_part(email, '@', 1) gin_trgm_ops);
