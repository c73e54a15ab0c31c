-- Callers bound to one customer (an API key's customer, a token's claim) read and change that
-- customer and its orders only, enforced by PostgreSQL itself (docs/SECURITY.md, "Who may do what").
-- A bound caller's statements run as the role `store_bound` with the customer in `store.customer_id`,
-- both set by SET LOCAL in the same message as the statement (db/connection.py, Cursor): no round
-- trip of their own, no session state, safe through PgBouncer in transaction mode. Every other role
-- (the service's own, the owner, migrations, the roller) meets a policy that lets it see every row,
-- as before; `store_bound` meets a restrictive one besides.
--
-- Needs a role that may create roles (the owner on a managed PostgreSQL usually may: RDS's master
-- user, Cloud SQL's cloudsqlsuperuser, Azure's azure_pg_admin); when the service connects as a role
-- other than the one running `db upgrade`, grant it the new role too:
-- GRANT store_bound TO <role> WITH INHERIT FALSE, SET TRUE.
-- if refused: This role may not create or grant the role store_bound: have an administrator run `CREATE ROLE store_bound NOLOGIN NOINHERIT; GRANT store_bound TO <the role that runs db upgrade and the one that serves> WITH INHERIT FALSE, SET TRUE;` (before PostgreSQL 16: without WITH ..., and give those roles NOINHERIT), then run `db upgrade` again (docs/UPGRADING.md)
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'store_bound') THEN
        CREATE ROLE store_bound NOLOGIN NOINHERIT;
    END IF;
END
$$;
-- Not inherited (PostgreSQL 16 and later; before, give the serving role NOINHERIT): a role that held
-- store_bound's privileges would meet its policy on every statement, bound or not.
DO $$
BEGIN
    IF pg_has_role(current_user, 'store_bound', 'MEMBER') THEN
        RETURN;  -- an administrator granted it already (or this is a superuser)
    ELSIF current_setting('server_version_num')::int >= 160000 THEN
        EXECUTE format('GRANT store_bound TO %I WITH INHERIT FALSE, SET TRUE', current_user);
    ELSE
        EXECUTE format('GRANT store_bound TO %I', current_user);
    END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO store_bound;
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders, order_lines, idempotency_keys TO store_bound;
GRANT SELECT, UPDATE ON products TO store_bound;  -- an order takes its stock; product writes are refused
GRANT SELECT ON sales_rollup_state TO store_bound;  -- the order lines' trigger reads the watermark
GRANT INSERT ON sales_rollup_dirty TO store_bound;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO store_bound;

ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON customers USING (true) WITH CHECK (true);
CREATE POLICY bound_customer ON customers AS RESTRICTIVE TO store_bound
    USING (id = current_setting('store.customer_id')::bigint)
    WITH CHECK (id = current_setting('store.customer_id')::bigint);

ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON orders USING (true) WITH CHECK (true);
CREATE POLICY bound_customer ON orders AS RESTRICTIVE TO store_bound
    USING (customer_id = current_setting('store.customer_id')::bigint)
    WITH CHECK (customer_id = current_setting('store.customer_id')::bigint);

-- A line is the caller's when its order is (the subquery meets the orders' policy: one probe of the
-- orders' primary key a line). An order's lines are inserted in the same statement as the order
-- (queries/orders.py, insert_order), which cannot see its own new order row; the order itself passed
-- the orders' policy, and its id is the one this session just drew from the orders' sequence, so a
-- new line may name that order too (evaluated only when the first test fails; a session that drew
-- none gets an error, never a row). The insert returns no line (a returned row must pass USING).
ALTER TABLE order_lines ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON order_lines USING (true) WITH CHECK (true);
CREATE POLICY bound_customer ON order_lines AS RESTRICTIVE TO store_bound
    USING (EXISTS (SELECT 1 FROM orders o WHERE o.id = order_lines.order_id))
    WITH CHECK (
        EXISTS (SELECT 1 FROM orders o WHERE o.id = order_lines.order_id)
        OR order_id = currval(pg_get_serial_sequence('orders', 'id'))
    );
