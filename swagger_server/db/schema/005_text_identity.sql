-- One identity per text (swagger_server/text.py, docs/SECURITY.md): two strings a person cannot tell
-- apart must not be two customers or two SKUs, whatever path writes them (the API, psql, a future
-- endpoint). Text is in Unicode NFC, holds no control (Cc), format (Cf) or separator (Zl, Zp)
-- character, and no whitespace at either end. The classes below are generated from Python's Unicode
-- tables (14.0.0); tests/test_text_identity.py checks they equal the API's rule.
-- Needs a UTF8 database (IS NFC NORMALIZED).
CREATE FUNCTION text_is_canonical(value text) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT value IS NFC NORMALIZED
        AND value !~ '[\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]'
        AND value !~ '^[\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000]|[\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028-\u2029\u202f\u205f\u3000]$'
$$;

-- Rows written before this release in another normal form are brought to NFC (a row that then takes a
-- unique value another row has stops this file: nothing is kept, and the error names the value).
UPDATE customers SET name = normalize(name, NFC) WHERE NOT name IS NFC NORMALIZED;
UPDATE products SET sku = normalize(sku, NFC), name = normalize(name, NFC)
    WHERE NOT (sku IS NFC NORMALIZED AND name IS NFC NORMALIZED);

-- NOT VALID: new and changed rows are checked from here on, without a scan under the table's lock;
-- 006 validates the existing rows without blocking reads or writes. A row that breaks the rule stops
-- them, naming the constraint: find it with `SELECT id FROM customers WHERE NOT text_is_canonical(name)`.
ALTER TABLE customers ADD CONSTRAINT customers_text_canonical
    CHECK (text_is_canonical(name) AND text_is_canonical(email)) NOT VALID;
ALTER TABLE products ADD CONSTRAINT products_text_canonical
    CHECK (text_is_canonical(sku) AND text_is_canonical(name)) NOT VALID;
