-- migrate: no-transaction
-- 010's index leads with the same column and serves every query this one did: one index less to
-- write on every order.
DROP INDEX CONCURRENTLY IF EXISTS orders_created_at_idx;
