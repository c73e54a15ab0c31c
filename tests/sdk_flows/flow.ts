// A user's flow with the typescript-fetch SDK. Env: BASE_URL, DOWN_URL, TOKEN. Prints OK.
import * as assert from 'assert';
import {
  Configuration, CustomersApi, DashboardApi, OrdersApi, ProductsApi, ResponseError, Problem, ProblemFromJSON,
} from './sdk';

const base = process.env.BASE_URL as string;
const down = process.env.DOWN_URL as string;
const token = process.env.TOKEN as string;

async function problemOf(call: () => Promise<unknown>, status: number): Promise<{ problem: Problem, retryAfter: string | null }> {
  try {
    await call();
  } catch (e) {
    assert.ok(e instanceof ResponseError, `expected a ResponseError, got ${e}`);
    assert.strictEqual(e.response.status, status);
    return { problem: ProblemFromJSON(await e.response.json()), retryAfter: e.response.headers.get('Retry-After') };
  }
  throw new Error(`expected ${status}`);
}

async function main() {
  const config = new Configuration({ basePath: `${base}/api`, accessToken: token });
  const customers = new CustomersApi(config);
  const products = new ProductsApi(config);
  const orders = new OrdersApi(config);
  const stamp = Date.now();
  const email = `ts-${stamp}@example.com`;

  const customer = await customers.createCustomer({ newCustomer: { name: 'SDK User', email } });
  assert.ok(customer.id > 0);
  assert.ok(customer.createdAt instanceof Date);
  assert.strictEqual((await customers.getCustomer({ customerId: customer.id })).email, email);
  const product = await products.createProduct({ newProduct: { sku: `TS-${stamp}`, name: 'Widget', priceCents: 250, stock: 3 } });
  const order = await orders.createOrder({ newOrder: { customerId: customer.id, lines: [{ productId: product.id, quantity: 2 }] } });
  assert.strictEqual(order.totalCents, 500);
  const report = await new DashboardApi(config).getDashboard({ top: 5 });
  assert.ok(report.totals.orders >= 1);

  const conflict = await problemOf(() => customers.createCustomer({ newCustomer: { name: 'Again', email } }), 409);
  assert.ok((conflict.problem.type ?? '').endsWith('/conflict'));
  assert.strictEqual(conflict.problem.field, 'email');
  const short = await problemOf(() => orders.createOrder({ newOrder: { customerId: customer.id, lines: [{ productId: product.id, quantity: 2 }] } }), 409);
  assert.ok((short.problem.type ?? '').endsWith('/insufficient-stock'));

  // Optimistic concurrency: change the product only as last read (If-Match); a stale ETag is 412.
  const etag = (await products.getProductRaw({ productId: product.id })).raw.headers.get('ETag') as string;
  assert.ok(etag);
  const updated = await products.updateProductRaw({ productId: product.id, productUpdate: { priceCents: 260 }, ifMatch: etag });
  assert.strictEqual((await updated.value()).priceCents, 260);
  const stale = await problemOf(() => products.updateProduct({ productId: product.id, productUpdate: { priceCents: 270 }, ifMatch: etag }), 412);
  assert.ok((stale.problem.type ?? '').endsWith('/precondition-failed'));

  const downApi = new CustomersApi(new Configuration({ basePath: `${down}/api`, accessToken: token }));
  const unavailable = await problemOf(() => downApi.getCustomer({ customerId: 1 }), 503);
  assert.ok((unavailable.problem.type ?? '').endsWith('/database-unavailable'));
  assert.ok(Number(unavailable.retryAfter) >= 1);
  console.log('OK');
}

main().catch((e) => { console.error(e); process.exit(1); });
