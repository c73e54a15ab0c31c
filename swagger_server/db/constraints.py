"""What the client is told when a write breaks one of the database's constraints, by the constraint's
name (errors.integrity_problem renders it)."""

from __future__ import annotations

# Integrity errors, by constraint: what the client is told. A foreign key has two answers: a write that
# references a row that is gone (404, naming the field), and a delete of a row still referenced (409).
# Every write reaches these through the database's own constraints, so a race between two requests
# (an order placed as its customer is deleted, two creates with one email) is a 4xx here, whichever
# controller ran it: none has to catch them itself.
UNIQUE = {
    "customers_email_key": ("email", "a customer with this email already exists"),
    "products_sku_key": ("sku", "a product with this SKU already exists"),
    "idempotency_keys_pkey": ("Idempotency-Key", "a request with this Idempotency-Key is in progress; retry shortly"),
}
REFERENCES = {
    "orders_customer_id_fkey": (("customer_id", "the customer does not exist"), "the customer has orders"),
    "order_lines_product_id_fkey": (("lines", "a product of this order does not exist"), "the product has orders"),
    "api_keys_customer_id_fkey": (("customer_id", "the customer does not exist"), "the customer has API keys"),
}
CHECKS = {  # check constraints a valid request can still reach through a race
    "products_stock_check": ("stock", "the stock of a product may not go below zero"),
}
# The text rule's own constraints (schema 021), one a column: the API refuses what they refuse before
# the write, unless the database's Unicode is older than the API's (db/unicode.py); then the answer is
# the API's own, 400 naming the field.
TEXT_RULES = {
    "customers_name_canonical": ("name", None),
    "customers_email_canonical": ("email", None),
    "products_sku_canonical": ("sku", None),
    "products_name_canonical": ("name", None),
    "products_sku_ascii": ("sku", "'sku' must be printable ASCII without a space at either end"),
    # Free text (schema 023): the rule with line feeds between lines, and the spec's maxLength.
    "products_description_canonical": ("description", None),
    "products_description_length": ("description", "'description' may be at most 2000 characters"),
}
