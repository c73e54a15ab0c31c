-- migrate: no-transaction
-- 005's check over the rows written before it (SHARE UPDATE EXCLUSIVE: reads and writes go on).
ALTER TABLE customers VALIDATE CONSTRAINT customers_text_canonical
