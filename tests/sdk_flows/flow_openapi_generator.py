"""A user's flow with the openapi-generator Python SDK (package store_api_client).
Env: BASE_URL (a live server), DOWN_URL (one whose database is unreachable), TOKEN. Prints OK."""

import os
import time

import store_api_client as sdk
from store_api_client.exceptions import ApiException, ConflictException, ServiceException

base, down, token = os.environ["BASE_URL"], os.environ["DOWN_URL"], os.environ["TOKEN"]
client = sdk.ApiClient(sdk.Configuration(host=f"{base}/api", access_token=token))
customers, products = sdk.CustomersApi(client), sdk.ProductsApi(client)
orders, dashboard = sdk.OrdersApi(client), sdk.DashboardApi(client)
stamp = time.time_ns()

customer = customers.create_customer(sdk.NewCustomer(name="SDK User", email=f"sdk-{stamp}@example.com"))
assert isinstance(customer, sdk.Customer) and customer.id > 0
assert customers.get_customer(customer.id).email == f"sdk-{stamp}@example.com"
product = products.create_product(sdk.NewProduct(sku=f"SDK-{stamp}", name="SDK Widget", price_cents=250, stock=3))
order = orders.create_order(
    sdk.NewOrder(customer_id=customer.id, lines=[sdk.NewOrderLine(product_id=product.id, quantity=2)])
)
assert isinstance(order, sdk.Order) and order.total_cents == 500
report = dashboard.get_dashboard(top=5)
assert isinstance(report, sdk.Dashboard) and report.totals.orders >= 1

try:  # 409: the same email again
    customers.create_customer(sdk.NewCustomer(name="Again", email=f"sdk-{stamp}@example.com"))
    raise AssertionError("expected a 409")
except ConflictException as exc:
    assert exc.status == 409 and isinstance(exc.data, sdk.Problem), exc
    assert exc.data.type.endswith("/conflict") and exc.data.var_field == "email", exc.data
try:  # 409: more than the stock left (1)
    orders.create_order(
        sdk.NewOrder(customer_id=customer.id, lines=[sdk.NewOrderLine(product_id=product.id, quantity=2)])
    )
    raise AssertionError("expected a 409")
except ConflictException as exc:
    assert exc.data.type.endswith("/insufficient-stock"), exc.data


# Optimistic concurrency: change the product only as last read (If-Match); a stale ETag is 412.
def etag_of(headers) -> str:
    return {name.lower(): value for name, value in headers.items()}["etag"]


etag = etag_of(products.get_product_with_http_info(product.id).headers)
try:  # the generator treats any status outside 2xx as an exception, 304 included
    products.get_product(product.id, if_none_match=etag)
    raise AssertionError("expected a 304")
except ApiException as exc:
    assert exc.status == 304 and etag_of(exc.headers) == etag, exc
updated = products.update_product_with_http_info(product.id, sdk.ProductUpdate(price_cents=260), if_match=etag)
assert updated.data.price_cents == 260 and etag_of(updated.headers) != etag
try:
    products.update_product(product.id, sdk.ProductUpdate(price_cents=270), if_match=etag)
    raise AssertionError("expected a 412")
except ApiException as exc:
    assert exc.status == 412 and etag_of(exc.headers) == etag_of(updated.headers), exc

down_client = sdk.ApiClient(sdk.Configuration(host=f"{down}/api", access_token=token))
try:  # 503: the database is unreachable
    sdk.CustomersApi(down_client).get_customer(1)
    raise AssertionError("expected a 503")
except ServiceException as exc:
    assert exc.status == 503 and isinstance(exc.data, sdk.Problem), exc
    assert exc.data.type.endswith("/database-unavailable") and int(exc.headers["Retry-After"]) >= 1
print("OK")
