-- Contract step of 002 (expand/contract, docs/UPGRADING.md): orders.idempotency_key and request_hash
-- have been neither read nor written since 002 moved the keys to idempotency_keys, so no release that
-- can still be running uses them. IF EXISTS: databases that applied 002 before 1.1.0 dropped them there.
-- why: no running release reads or writes these columns (see above); dropping them is the contract step.
-- squawk-ignore ban-drop-column
ALTER TABLE orders DROP COLUMN IF EXISTS idempotency_key, DROP COLUMN IF EXISTS request_hash;
