-- The dashboard's rollups (docs/SCALING.md, "Data volume"): orders and revenue per day, units and
-- revenue per product per day and per month, so that the totals, the days and the top products over
-- three years read some ten thousand rows, not every order line (the customer figures read the
-- orders' covering indexes, 010 and 012). The design is Citus's incremental rollup: orders are rolled up by id, in ranges known
-- to be complete (db/rollups.py waits for the transactions in flight, then aggregates in another),
-- and never inside an order's own transaction: an order writes no rollup row (no hot row).
--
-- A report reads the rollups up to the watermark (`sales_rollup_state.last_order_id`) plus the raw
-- orders past it, in one snapshot: exact, whenever the roller last ran (TimescaleDB's real-time
-- aggregates). An order already rolled up that is deleted or changed (psql, a fix-up script; the API
-- changes no order's day, customer, total or lines) marks its day dirty through the triggers below;
-- reports read a dirty day from the raw rows until the roller recomputes it.

CREATE TABLE sales_rollup_state (
    name            text PRIMARY KEY,
    last_order_id   bigint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sales_days (
    day             date PRIMARY KEY,
    orders          bigint NOT NULL,
    revenue_cents   bigint NOT NULL
);

CREATE TABLE sales_product_days (
    day             date NOT NULL,
    product_id      bigint NOT NULL,
    units           bigint NOT NULL,
    revenue_cents   bigint NOT NULL,
    PRIMARY KEY (day, product_id)
);

CREATE TABLE sales_product_months (
    month           date NOT NULL,
    product_id      bigint NOT NULL,
    units           bigint NOT NULL,
    revenue_cents   bigint NOT NULL,
    PRIMARY KEY (month, product_id)
);

-- Days whose rolled-up figures an UPDATE or DELETE has made stale; not unique: a trigger only ever
-- inserts (no row that two transactions wait on), and the roller takes them all.
CREATE TABLE sales_rollup_dirty (
    day             date NOT NULL
);
-- why: the table is created above in this file: an empty table, nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE INDEX sales_rollup_dirty_day_idx ON sales_rollup_dirty (day);

-- The day of each order a statement changed, deleted, or added lines to after it was rolled up.
-- (A status change, the one update the API makes, changes no figure: nothing is written.)
CREATE FUNCTION sales_dirty_orders_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sales_rollup_dirty (day)
    SELECT DISTINCT day FROM old_rows o JOIN new_rows n USING (id),
        LATERAL (VALUES ((o.created_at AT TIME ZONE 'UTC')::date), ((n.created_at AT TIME ZONE 'UTC')::date)) AS d (day)
    WHERE (o.created_at, o.total_cents) IS DISTINCT FROM (n.created_at, n.total_cents);
    RETURN NULL;
END
$$;

CREATE FUNCTION sales_dirty_orders_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sales_rollup_dirty (day) SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM old_rows;
    RETURN NULL;
END
$$;

-- Lines inserted with their order (every order the API places) are past the watermark: nothing to
-- mark, and no row written. Lines added later to a rolled-up order mark its day.
CREATE FUNCTION sales_dirty_lines_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sales_rollup_dirty (day)
    SELECT DISTINCT (o.created_at AT TIME ZONE 'UTC')::date
    FROM new_lines l JOIN orders o ON o.id = l.order_id
    WHERE l.order_id <= (SELECT last_order_id FROM sales_rollup_state WHERE name = 'sales');
    RETURN NULL;
END
$$;

CREATE FUNCTION sales_dirty_lines_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sales_rollup_dirty (day)
    SELECT DISTINCT (o.created_at AT TIME ZONE 'UTC')::date
    FROM (SELECT order_id FROM old_lines UNION SELECT order_id FROM new_lines) l JOIN orders o ON o.id = l.order_id;
    RETURN NULL;
END
$$;

-- A line deleted with its order (ON DELETE CASCADE) finds no order here: the order's trigger marks it.
CREATE FUNCTION sales_dirty_lines_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sales_rollup_dirty (day)
    SELECT DISTINCT (o.created_at AT TIME ZONE 'UTC')::date
    FROM (SELECT DISTINCT order_id FROM old_lines) l JOIN orders o ON o.id = l.order_id;
    RETURN NULL;
END
$$;

-- Statement-level, with transition tables: one trigger call per statement, not per row.
CREATE TRIGGER orders_sales_update AFTER UPDATE ON orders
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sales_dirty_orders_updated();
CREATE TRIGGER orders_sales_delete AFTER DELETE ON orders
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION sales_dirty_orders_deleted();
CREATE TRIGGER order_lines_sales_insert AFTER INSERT ON order_lines
    REFERENCING NEW TABLE AS new_lines FOR EACH STATEMENT EXECUTE FUNCTION sales_dirty_lines_inserted();
CREATE TRIGGER order_lines_sales_update AFTER UPDATE ON order_lines
    REFERENCING OLD TABLE AS old_lines NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION sales_dirty_lines_updated();
CREATE TRIGGER order_lines_sales_delete AFTER DELETE ON order_lines
    REFERENCING OLD TABLE AS old_lines FOR EACH STATEMENT EXECUTE FUNCTION sales_dirty_lines_deleted();
