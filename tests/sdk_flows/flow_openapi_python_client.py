"""A user's flow with the openapi-python-client SDK (package store_api_pyclient).
Env: BASE_URL, DOWN_URL, TOKEN. Prints OK."""

import os
import time

from store_api_pyclient import AuthenticatedClient
from store_api_pyclient.api.customers import create_customer, get_customer
from store_api_pyclient.api.dashboard import get_dashboard
from store_api_pyclient.api.orders import create_order
from store_api_pyclient.api.products import create_product, get_product, update_product
from store_api_pyclient.models import (
    Customer,
    Dashboard,
    NewCustomer,
    NewOrder,
    NewOrderLine,
    NewProduct,
    Order,
    Problem,
    ProductUpdate,
)

base, down, token = os.environ["BASE_URL"], os.environ["DOWN_URL"], os.environ["TOKEN"]
client = AuthenticatedClient(base_url=f"{base}/api", token=token, raise_on_unexpected_status=True)
stamp = time.time_ns()

customer = create_customer.sync(client=client, body=NewCustomer(name="SDK User", email=f"py-{stamp}@example.com"))
assert isinstance(customer, Customer) and customer.id > 0
assert get_customer.sync(customer.id, client=client).email == f"py-{stamp}@example.com"
product = create_product.sync(
    client=client, body=NewProduct(sku=f"PY-{stamp}", name="Widget", price_cents=250, stock=3)
)
order = create_order.sync(
    client=client, body=NewOrder(customer_id=customer.id, lines=[NewOrderLine(product_id=product.id, quantity=2)])
)
assert isinstance(order, Order) and order.total_cents == 500
report = get_dashboard.sync(client=client, top=5)
assert isinstance(report, Dashboard) and report.totals.orders >= 1

again = create_customer.sync_detailed(client=client, body=NewCustomer(name="Again", email=f"py-{stamp}@example.com"))
assert again.status_code == 409 and isinstance(again.parsed, Problem), again
assert again.parsed.type_.endswith("/conflict") and again.parsed.field == "email", again.parsed
short = create_order.sync_detailed(
    client=client, body=NewOrder(customer_id=customer.id, lines=[NewOrderLine(product_id=product.id, quantity=2)])
)
assert short.status_code == 409 and short.parsed.type_.endswith("/insufficient-stock"), short.parsed

# Optimistic concurrency: change the product only as last read (If-Match); a stale ETag is 412.
etag = get_product.sync_detailed(product.id, client=client).headers["ETag"]
assert get_product.sync_detailed(product.id, client=client, if_none_match=etag).status_code == 304
updated = update_product.sync_detailed(product.id, client=client, body=ProductUpdate(price_cents=260), if_match=etag)
assert updated.status_code == 200 and updated.parsed.price_cents == 260 and updated.headers["ETag"] != etag
stale = update_product.sync_detailed(product.id, client=client, body=ProductUpdate(price_cents=270), if_match=etag)
assert stale.status_code == 412 and isinstance(stale.parsed, Problem), stale
assert stale.parsed.type_.endswith("/precondition-failed") and stale.headers["ETag"] == updated.headers["ETag"]

down_client = AuthenticatedClient(base_url=f"{down}/api", token=token)
unavailable = get_customer.sync_detailed(1, client=down_client)
assert unavailable.status_code == 503 and isinstance(unavailable.parsed, Problem), unavailable
assert unavailable.parsed.type_.endswith("/database-unavailable")
assert int(unavailable.headers["Retry-After"]) >= 1
print("OK")
