-- migrate: no-transaction
-- "The local part ends with ...", for a term like "ab@example.com" whose local part is too short for a
-- trigram: a prefix of the reversed local part, which a btree serves (see 014).
CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_email_local_reversed_idx
    ON customers (reverse(lower(split_part(email, '@', 1))) text_pattern_ops);
