// A realistic mix against any running instance of the API:
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e TOKEN=... bench/k6/mix.js
// Reads 75% (a customer, a product, a page of customers or products, a customer's orders),
// dashboard 10%, writes 15% (orders 10%, new customers 5%). Every response is checked for its
// status and body; an order refused for short stock (409 insufficient-stock) is an expected answer.
// Thresholds fail the run (exit code 99) when more than 1% of requests fail or p95 is over P95_MS.
// Environment: BASE_URL, TOKEN (a bearer token from API_TOKENS), VUS (16), DURATION (30s),
// MAX_CUSTOMER (10000), MAX_PRODUCT (1000), P95_MS (500), DASHBOARD_FROM/DASHBOARD_TO.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const TOKEN = __ENV.TOKEN || '';
const MAX_CUSTOMER = parseInt(__ENV.MAX_CUSTOMER || '10000');
const MAX_PRODUCT = parseInt(__ENV.MAX_PRODUCT || '1000');
// Default: the dashboard's own default range (the last 30 days, which the seeded data always covers).
const RANGE = __ENV.DASHBOARD_FROM ? `from=${__ENV.DASHBOARD_FROM}&to=${__ENV.DASHBOARD_TO}&` : '';

export const outOfStock = new Counter('orders_out_of_stock');

export const options = {
  vus: parseInt(__ENV.VUS || '16'),
  duration: __ENV.DURATION || '30s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(95)<${parseInt(__ENV.P95_MS || '500')}`],
    checks: ['rate>0.99'],
  },
};

const auth = { Authorization: `Bearer ${TOKEN}` };
const json = { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` } };
const orderParams = Object.assign({}, json, {
  responseCallback: http.expectedStatuses(201, 409),
  tags: { name: 'create_order' },
});

function pick(max) {
  return 1 + Math.floor(Math.random() * max);
}

function isPage(r) {
  const body = r.json();
  return Array.isArray(body.items);
}

export default function () {
  const roll = Math.random() * 100;
  if (roll < 30) {
    const id = pick(MAX_CUSTOMER);
    const r = http.get(`${BASE}/api/customers/${id}`, { headers: auth, tags: { name: 'get_customer' } });
    check(r, { 'customer 200': (x) => x.status === 200 && x.json().id === id });
  } else if (roll < 50) {
    const id = pick(MAX_PRODUCT);
    const r = http.get(`${BASE}/api/products/${id}`, { tags: { name: 'get_product' } });
    check(r, { 'product 200': (x) => x.status === 200 && x.json().id === id });
  } else if (roll < 60) {
    const r = http.get(`${BASE}/api/customers?limit=20&after=${pick(MAX_CUSTOMER)}`, { headers: auth, tags: { name: 'list_customers' } });
    check(r, { 'customer page 200': (x) => x.status === 200 && isPage(x) });
  } else if (roll < 68) {
    const r = http.get(`${BASE}/api/products?limit=20&in_stock=true`, { tags: { name: 'list_products' } });
    check(r, { 'product page 200': (x) => x.status === 200 && isPage(x) });
  } else if (roll < 75) {
    const r = http.get(`${BASE}/api/customers/${pick(MAX_CUSTOMER)}/orders?limit=10`, { headers: auth, tags: { name: 'list_customer_orders' } });
    check(r, { 'orders page 200': (x) => x.status === 200 && isPage(x) });
  } else if (roll < 85) {
    const r = http.get(`${BASE}/api/dashboard?${RANGE}top=5`, { headers: auth, tags: { name: 'get_dashboard' } });
    check(r, { 'dashboard 200': (x) => x.status === 200 && x.json().totals !== undefined });
  } else if (roll < 95) {
    const body = JSON.stringify({
      customer_id: pick(MAX_CUSTOMER),
      lines: [{ product_id: pick(MAX_PRODUCT), quantity: 1 }],
    });
    const r = http.post(`${BASE}/api/orders`, body, orderParams);
    if (r.status === 409) outOfStock.add(1);
    check(r, {
      'order 201 or out of stock': (x) => (x.status === 201 && x.json().id > 0)
        || (x.status === 409 && x.json().type.endsWith('insufficient-stock')),
    });
  } else {
    const email = `k6-${__VU}-${__ITER}-${Date.now()}@example.com`;
    const r = http.post(`${BASE}/api/customers`, JSON.stringify({ name: 'k6 user', email }),
      Object.assign({}, json, { tags: { name: 'create_customer' } }));
    check(r, { 'customer 201': (x) => x.status === 201 && x.json().email === email });
  }
}
