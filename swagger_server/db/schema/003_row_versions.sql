-- A version per row, for ETags and conditional requests (If-Match, If-None-Match). It starts at 1 and
-- a trigger adds 1 on every UPDATE of the row, whoever runs it (a PATCH, the stock an order takes, a
-- manual fix in psql), so no code path can change a row and keep its ETag. A counter, not xmin: it
-- is the same on the primary, on a replica and through PgBouncer, never wraps, and orders versions
-- (a replica's older row has a smaller one: see docs/CONDITIONAL_REQUESTS.md).
ALTER TABLE customers ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE products ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE orders ADD COLUMN version bigint NOT NULL DEFAULT 1;

CREATE FUNCTION bump_row_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

CREATE TRIGGER customers_version BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION bump_row_version();
CREATE TRIGGER products_version BEFORE UPDATE ON products FOR EACH ROW EXECUTE FUNCTION bump_row_version();
CREATE TRIGGER orders_version BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION bump_row_version();
