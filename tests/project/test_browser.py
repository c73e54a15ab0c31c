"""A real browser (headless Chromium, Debian's package, driven by Playwright) as the user.

Swagger UI: every operation listed, Authorize with a bearer token, Try it out on a GET and a POST.
CORS: a page served from an allowed origin calls the API on another origin with fetch (a GET, a
POST with a JSON body that needs a preflight, and 400, 404 and 503 problem bodies it can read), and
a page from an origin not on the list is refused by the browser.

Skipped, with the reason, where Chromium or Playwright is missing; `.ci/run` installs Chromium.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from harness.waiting import wait_until
from swagger_server.db.embedded import free_port
from tests.support.auth import TOKEN
from tests.support.database import TEST_DB
from tests.support.servers import Gunicorn

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next(
    (
        path
        for path in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if path and Path(path).exists()
    ),
    None,
)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - requirements-dev.txt installs it
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run does)"),
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (requirements-dev.txt)"),
]


class StaticSite:
    """A page on its own origin (http://127.0.0.1:<port>), served by the standard library."""

    def __init__(self, html: str):
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def browser():
    # Playwright's assertions wait 5 s by default for what they look for: Swagger UI drawing a spec of
    # this size beside a parallel `make test` on 2 cores once took longer. These are waits for the
    # page to get there, not bounds on its speed; 20 s still ends a test whose page never does.
    expect.set_options(timeout=20_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def sites():
    allowed, other = (
        StaticSite("<!doctype html><title>front-end</title>"),
        StaticSite("<!doctype html><title>x</title>"),
    )
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module")
def api(database_url, sites):
    allowed, _ = sites
    live = Gunicorn(database_url, WEB_CONCURRENCY=1, CORS_ORIGINS=allowed.origin)
    down = Gunicorn(
        f"postgresql://postgres@127.0.0.1:{free_port()}/{TEST_DB}",
        WEB_CONCURRENCY=1,
        DB_POOL_MIN_CONNECTIONS=0,
        CORS_ORIGINS=allowed.origin,
    )
    yield live, down
    live.stop()
    down.stop()


def test_swagger_ui_lists_every_operation_and_tries_a_get_and_a_post(browser, api, store):
    live, _ = api
    spec = yaml.safe_load((ROOT / "swagger" / "swagger.yaml").read_text())
    operations = {
        (op["tags"][0], op["operationId"])
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    page = browser.new_page()
    try:
        page.goto(f"{live.base}/api/ui/")
        for tag, operation_id in operations:
            expect(page.locator(f"#operations-{tag}-{operation_id}")).to_be_visible()
        assert page.locator(".opblock").count() == len(operations)

        # Authorize with the bearer token.
        page.locator(".auth-wrapper button.authorize").click()
        page.locator(".modal-ux input").first.fill(TOKEN)
        page.locator(".modal-ux .auth-btn-wrapper button.authorize").click()
        expect(page.locator(".modal-ux .auth-btn-wrapper button.btn-done, .modal-ux button.btn-done")).to_be_visible()
        page.locator(".modal-ux button.btn-done").first.click()

        # Try it out: GET /customers/{customer_id}.
        get = page.locator("#operations-customers-get_customer")
        get.locator(".opblock-summary").first.click()
        get.locator("button.try-out__btn").click()
        get.locator("tr[data-param-name='customer_id'] input").fill("1")
        get.locator("button.execute").click()
        expect(get.locator(".live-responses-table tr.response .response-col_status").first).to_have_text("200")
        expect(get.locator(".live-responses-table .microlight").first).to_contain_text("ada@example.com")

        # Try it out: POST /customers, which needs the token given to Authorize.
        post = page.locator("#operations-customers-create_customer")
        post.locator(".opblock-summary").first.click()
        post.locator("button.try-out__btn").click()
        post.locator("textarea.body-param__text").fill(json.dumps({"name": "From the UI", "email": "ui@example.com"}))
        post.locator("button.execute").click()
        expect(post.locator(".live-responses-table tr.response .response-col_status").first).to_have_text("201")
        expect(post.locator(".live-responses-table .microlight").first).to_contain_text("ui@example.com")
    finally:
        page.close()
    assert _customer_exists(store, "ui@example.com")


def _customer_exists(db, email: str) -> bool:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM customers WHERE email = %s", (email,))
        return cur.fetchone()[0] == 1


CALLS = """async ([base, down, token]) => {
  const read = async (r) => ({status: r.status, type: r.headers.get('content-type'), body: await r.json(),
                              location: r.headers.get('Location'), retryAfter: r.headers.get('Retry-After'),
                              requestId: r.headers.get('X-Request-ID')});
  const auth = {headers: {'Authorization': `Bearer ${token}`}};
  return {
    get: await read(await fetch(`${base}/api/customers/1`, auth)),
    anonymous: await read(await fetch(`${base}/api/customers/1`)),
    post: await read(await fetch(`${base}/api/customers`, {method: 'POST',
        headers: {'Content-Type': 'application/json', 'Authorization': `Bearer ${token}`},
        body: JSON.stringify({name: 'From a browser', email: 'cors@example.com'})})),
    bad: await read(await fetch(`${base}/api/customers`, {method: 'POST',
        headers: {'Content-Type': 'application/json', 'Authorization': `Bearer ${token}`},
        body: JSON.stringify({name: 'No email'})})),
    missing: await read(await fetch(`${base}/api/customers/999999`, auth)),
    unavailable: await read(await fetch(`${down}/api/customers/1`, auth)),
  };
}"""


def test_cors_from_an_allowed_origin_reads_answers_and_problems(browser, api, sites, store):
    live, down = api
    allowed, _ = sites
    page = browser.new_page()
    try:
        page.goto(allowed.origin)
        results = page.evaluate(CALLS, [live.base, down.base, TOKEN])
    finally:
        page.close()
    assert results["get"]["status"] == 200 and results["get"]["body"]["email"] == "ada@example.com"
    assert results["get"]["requestId"]  # exposed to scripts
    assert results["post"]["status"] == 201 and results["post"]["body"]["email"] == "cors@example.com"
    assert results["post"]["location"] == f"/api/customers/{results['post']['body']['id']}"
    for name, status in (("bad", 400), ("anonymous", 401), ("missing", 404), ("unavailable", 503)):
        answer = results[name]
        assert answer["status"] == status, answer
        assert answer["type"].startswith("application/problem+json")
        assert answer["body"]["status"] == status and answer["body"]["detail"]
    assert "email" in results["bad"]["body"]["detail"]
    assert results["unavailable"]["body"]["type"].endswith("database-unavailable")
    assert int(results["unavailable"]["retryAfter"]) >= 1

    # The POST with a JSON body and a token was preflighted: the API logged the OPTIONS request.
    def preflights():
        return [
            entry
            for entry in (json.loads(line) for line in live.stdout().splitlines() if line.startswith('{"ts"'))
            if entry.get("method") == "OPTIONS" and entry.get("path") == "/api/customers" and entry.get("status") == 200
        ]

    wait_until(preflights, timeout=5, message="the preflight's access line")


def test_cors_from_another_origin_is_refused_by_the_browser(browser, api, sites, store):
    live, _ = api
    _, other = sites
    page = browser.new_page()
    errors = []
    page.on("console", lambda message: errors.append(message.text))
    try:
        page.goto(other.origin)
        outcome = page.evaluate(
            """async ([base, token]) => {
          const attempt = async (init) => { try { await fetch(`${base}/api/customers`, init); return 'read'; }
                                            catch (e) { return e.name; } };
          return {get: await attempt({}),
                  post: await attempt({method: 'POST', headers: {'Content-Type': 'application/json',
                        'Authorization': `Bearer ${token}`}, body: JSON.stringify({name: 'x', email: 'no@example.com'})})};
        }""",
            [live.base, TOKEN],
        )
    finally:
        page.close()
    assert outcome == {"get": "TypeError", "post": "TypeError"}
    assert any("CORS" in e for e in errors), errors
    assert not _customer_exists(store, "no@example.com"), "the preflight failed, so the POST was never sent"


def test_swagger_ui_authorizes_with_an_api_key_and_with_the_openid_provider(browser, database_url, store, tmp_path):
    """With an OpenID provider configured, Swagger UI's Authorize offers its scheme (read from the
    provider's discovery document, by the browser) beside the bearer one: a client of the provider
    authorizes by the client credentials flow and calls an operation; so does an API key, pasted as
    a bearer token."""
    from harness import oidc as harness
    from swagger_server.identity.keys import new_key
    from tests.support.database import admin_connect, query

    if harness.NODE is None or not harness.INSTALLED:
        pytest.skip("node and tools/node_modules are needed for the OpenID provider")
    client = {"client_id": "swagger-ui", "client_secret": "swagger-ui-secret-" + "s" * 24, "scope": "read write"}
    provider = harness.Provider(tmp_path / "oidc", [client], "https://store-api.test").start()
    key_id, key, digest = new_key()
    conn = admin_connect(database_url)
    query(conn, "INSERT INTO api_keys (id, secret_sha256, scopes) VALUES (%s, %s, '{read}')", (key_id, digest))
    conn.close()
    live = Gunicorn(
        database_url, WEB_CONCURRENCY=1, API_OIDC_ISSUER=provider.issuer, API_OIDC_AUDIENCE=provider.audience
    )
    page = browser.new_page()
    try:
        page.goto(f"{live.base}/api/ui/")
        get = page.locator("#operations-customers-get_customer")
        expect(get).to_be_visible()

        get.locator(".opblock-summary").first.click()
        get.locator("button.try-out__btn").click()
        get.locator("tr[data-param-name='customer_id'] input").fill("1")

        def call_get_customer() -> str:
            """Execute GET /customers/1 with what Authorize holds now: the status of this answer."""
            get.locator("button.execute").click()
            status = get.locator(".live-responses-table tr.response .response-col_status").first
            expect(status).to_be_visible()
            text = status.inner_text()
            get.locator("button.btn-clear").click()  # cleared for the next call
            return text

        assert call_get_customer() == "401"  # not authorized yet: the observer sees a refusal

        # The OpenID provider: its scheme in the dialog, the client credentials flow.
        page.locator(".auth-wrapper button.authorize").click()
        modal = page.locator(".modal-ux")
        expect(modal).to_contain_text("openIdConnect")
        expect(modal).to_contain_text("openIdConnect (OAuth2, client_credentials)")
        oidc = modal.locator(".auth-container", has_text="openIdConnect (OAuth2, client_credentials)")
        oidc.locator("input[id^='client_id']").fill(client["client_id"])
        oidc.locator("input[id^='client_secret']").fill(client["client_secret"])
        oidc.locator("label[for='read-client_credentials-checkbox-openIdConnect']").click()  # the box is styled
        oidc.locator("button.authorize").click()
        expect(oidc.locator("button.authorize", has_text="Logout")).to_be_visible(timeout=10_000)
        modal.locator("button.btn-done, button.close-modal").first.click()
        assert call_get_customer() == "200"

        # An API key, as the bearer token (after logging the provider out).
        page.locator(".auth-wrapper button.authorize").click()
        oidc.locator("button.authorize", has_text="Logout").click()
        bearer = modal.locator(".auth-container", has_text="bearerAuth")
        bearer.locator("input").first.fill(key)
        bearer.locator("button.authorize").click()
        modal.locator("button.btn-done, button.close-modal").first.click()
        assert call_get_customer() == "200"
    finally:
        page.close()
        live.stop()
        provider.stop()
