-- migrate: no-transaction
-- 005's check over the rows written before it (SHARE UPDATE EXCLUSIVE: reads and writes go on).
ALTER TABLE products VALIDATE CONSTRAINT products_text_canonical
