-- How common each trigram of the searched expressions is, for the customer search to ask its trigram
-- indexes for the rarest few rather than all (db/queries/trigrams.py). ANALYZE and autovacuum keep
-- it; it is analysed here so that a large store has it at once (a few seconds at a million
-- customers, under a lock that blocks neither reads nor writes). The expressions are the indexed ones
-- (008, 014, 015), spelled the same.
CREATE STATISTICS IF NOT EXISTS customers_search_trigrams
    ON (show_trgm(name)), (show_trgm(split_part(email, '@', 1))), (show_trgm(substr(email, strpos(email, '@') + 1)))
    FROM customers;

-- pg_stats_ext_exprs shows a table's statistics to its owner only: the service may run as a role
-- that only reads and writes the rows, so the frequencies are read through this function, which runs
-- as the schema's owner and hands back nothing but them (shares of trigrams among all customers).
CREATE OR REPLACE FUNCTION customers_search_trigram_shares()
RETURNS TABLE (expr text, trigrams text[], shares real[])
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.expr, s.most_common_elems::text::text[], s.most_common_elem_freqs
    FROM pg_stats_ext_exprs s
    WHERE s.statistics_name = 'customers_search_trigrams' AND NOT s.inherited AND s.most_common_elems IS NOT NULL
$$;

ANALYZE customers;
