-- 021's checks over the rows written before it, as 006 did for 005's: VALIDATE CONSTRAINT takes SHARE
-- UPDATE EXCLUSIVE, so reads and writes go on while it scans.
-- A row written before 021 breaks the text rule of Unicode 16.0 (a default-ignorable or unassigned code point, or a SKU that is not printable ASCII): find it with `SELECT id, name, email FROM customers WHERE NOT (text_is_canonical(name) AND text_is_canonical(email))` and `SELECT id, sku, name FROM products WHERE NOT (text_is_canonical(sku) AND text_is_canonical(name) AND sku ~ '^[!-~]([ -~]*[!-~])?$')`, correct it, then run `db upgrade` again (docs/UPGRADING.md)
ALTER TABLE customers VALIDATE CONSTRAINT customers_name_canonical;
ALTER TABLE customers VALIDATE CONSTRAINT customers_email_canonical;
ALTER TABLE products VALIDATE CONSTRAINT products_sku_canonical;
ALTER TABLE products VALIDATE CONSTRAINT products_name_canonical;
ALTER TABLE products VALIDATE CONSTRAINT products_sku_ascii;
