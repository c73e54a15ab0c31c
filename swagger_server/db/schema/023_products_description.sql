-- A product's description: free text, which may run to paragraphs: line feeds between its lines, and
-- otherwise the text rule of every other column (swagger_server/text.py, lines=True: the API reads it
-- so too), at most 2000 characters; '' when it has none.
-- ADD COLUMN with a constant default rewrites nothing (PostgreSQL 11+): a moment's ACCESS EXCLUSIVE,
-- waited for under the migration's lock_timeout. The checks are NOT VALID: new and changed rows are
-- checked from here on, and 024 validates the rows already there (each holds the default '').
ALTER TABLE products ADD COLUMN description text NOT NULL DEFAULT '';
ALTER TABLE products
    ADD CONSTRAINT products_description_length CHECK (length(description) <= 2000) NOT VALID,
    ADD CONSTRAINT products_description_canonical CHECK (text_is_canonical(replace(description, E'\n', ' '))) NOT VALID;
