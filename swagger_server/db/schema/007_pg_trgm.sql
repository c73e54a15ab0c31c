-- The trigram extension behind the customer search's indexes (008, 009): a GIN index of trigrams
-- serves `ILIKE '%term%'`, which a b-tree cannot. It ships with PostgreSQL (contrib) and is trusted
-- since PostgreSQL 13: a role with CREATE on the database may create it. A managed database without
-- it, or a role without that right, stops `db upgrade` here with what to do (docs/SCALING.md).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
