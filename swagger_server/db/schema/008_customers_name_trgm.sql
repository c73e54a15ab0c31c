-- migrate: no-transaction
-- The customer search (`GET /api/customers?q=`) by index: without it, a rare or absent term reads
-- every customer (1.3 s at a million). CONCURRENTLY: writes go on while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_name_trgm_idx ON customers USING gin (name gin_trgm_ops);
