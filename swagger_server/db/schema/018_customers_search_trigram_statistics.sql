-- How common each trigram of the searched expressions is, for the customer search to ask its trigram
-- indexes for the rarest few rather than all (db/queries/trigrams.py). ANALYZE and autovacuum keep
-- it; it is analysed here so that a large store has it at once (a few seconds at a million
-- customers, under a lock that blocks neither reads nor writes). The expressions are the indexed ones
-- (008, 014, 015), spelled the same.
CREATE STATISTICS IF NOT EXISTS customers_search_trigrams
    ON (show_trgm(name)), (show_trgm(split_part(email, '@', 1))), (show_trgm(substr(email, strpos(email, '@') + 1)))
    FROM customers;
ANALYZE customers;
