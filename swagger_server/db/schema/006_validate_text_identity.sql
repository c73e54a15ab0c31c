-- 005's checks over the rows written before it. VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE:
-- reads and writes go on while it scans (only other DDL and VACUUM wait), and 005's brief ACCESS
-- EXCLUSIVE was released when 005 committed. A transactional file, so it runs under the runner's
-- lock and statement timeouts and works through PgBouncer in transaction mode. A row that breaks the
-- rule stops it, naming the constraint (docs/UPGRADING.md).
ALTER TABLE customers VALIDATE CONSTRAINT customers_text_canonical;
ALTER TABLE products VALIDATE CONSTRAINT products_text_canonical;
