-- migrate: no-transaction
-- 014-016 serve every email search this index did: one GIN index less to write on every customer.
DROP INDEX CONCURRENTLY IF EXISTS customers_email_trgm_idx;
