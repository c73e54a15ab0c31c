// One GET scenario, parameterised by environment: BASE_URL, TARGET (customer | health | dashboard),
// TOKEN (customer reads need one), VUS, DURATION, MAX_ID, ACCEPT_503 (overload: 503 with Retry-After is an expected answer).
// Every response is checked for status and body; failures are counted, never ignored.
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE = __ENV.BASE_URL;
const TARGET = __ENV.TARGET || 'customer';
const MAX_ID = parseInt(__ENV.MAX_ID || '10000');
const ACCEPT_503 = __ENV.ACCEPT_503 === '1';
const PARAMS = { headers: { Authorization: `Bearer ${__ENV.TOKEN || ''}` } };

export const unavailable = new Counter('unavailable_503');
export const good = new Counter('good_answers');
export const bad = new Counter('bad_answers');

export const options = {
  vus: parseInt(__ENV.VUS || '32'),
  duration: __ENV.DURATION || '10s',
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  discardResponseBodies: false,
};

if (ACCEPT_503) {
  http.setResponseCallback(http.expectedStatuses(200, 503));
}

export default function () {
  let url;
  let id = 0;
  if (TARGET === 'health') {
    url = `${BASE}/api/health`;
  } else if (TARGET === 'dashboard') {
    url = `${BASE}/api/dashboard?top=5`;    // the last 30 days: seeded data always covers them
  } else {
    id = 1 + Math.floor(Math.random() * MAX_ID);
    url = `${BASE}/api/customers/${id}`;
  }
  const res = http.get(url, PARAMS);
  if (res.status === 503 && ACCEPT_503) {
    const ok = check(res, { '503 has Retry-After': (r) => !!r.headers['Retry-After'] });
    unavailable.add(1);
    if (!ok) bad.add(1);
    return;
  }
  const ok = check(res, {
    'status 200': (r) => r.status === 200,
    'body is right': (r) => {
      if (r.status !== 200) return false;
      const body = r.json();
      if (TARGET === 'health') return body.status === 'ok';
      if (TARGET === 'dashboard') return body.totals !== undefined;
      return body.id === id && typeof body.email === 'string';
    },
  });
  if (ok) good.add(1); else bad.add(1);
}
