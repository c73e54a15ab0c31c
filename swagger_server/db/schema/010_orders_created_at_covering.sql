-- migrate: no-transaction
-- The dashboard's customer figures (distinct customers, top customers) read the orders of a range
-- from this index alone (an index-only scan), not from the table: 011 drops the index it replaces.
CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_at_covering_idx ON orders (created_at) INCLUDE (customer_id, total_cents);
