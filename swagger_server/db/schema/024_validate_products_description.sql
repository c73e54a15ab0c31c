-- 023's checks over the rows written before it: VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE, so
-- reads and writes go on while it scans. Every row then held the default ''.
ALTER TABLE products VALIDATE CONSTRAINT products_description_length;
ALTER TABLE products VALIDATE CONSTRAINT products_description_canonical;
