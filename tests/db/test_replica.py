"""The read-replica pool against a real streaming replica (pg_basebackup of the test server).

Which server answered is proven by what it can see: replay on the replica is paused, a row is
written on the primary, and a read that returns the row came from the primary, one that does not
came from the replica.
"""

from __future__ import annotations

import threading
import time

import pytest

from harness.faultproxy import FaultProxy
from harness.waiting import wait_until
from swagger_server import create_app, get_database
from swagger_server.db.budget import BudgetExceeded, check_connection_budget
from swagger_server.db.replica import parse_lsn
from tests.support.auth import AUTH
from tests.support.database import TEST_DB, admin_connect, make_settings, query


@pytest.fixture(scope="module")
def replica_server(pg_server, database_url, tmp_path_factory):
    if not getattr(pg_server, "restartable", False):
        pytest.skip("TEST_DATABASE_URL is an external server: no replica can be made of it here")
    replica = pg_server.make_replica(tmp_path_factory.mktemp("replica") / "data")
    replica.start()
    conn = admin_connect(replica.url(TEST_DB))
    assert query(conn, "SELECT pg_is_in_recovery()")[0][0] is True
    conn.close()
    yield replica
    replica.destroy()


@pytest.fixture
def replica_admin(replica_server):
    """An autocommit connection to the replica, replay resumed after the test."""
    conn = admin_connect(replica_server.url(TEST_DB))
    yield conn
    if not conn.closed:
        query(conn, "SELECT pg_wal_replay_resume()")
        conn.close()


def caught_up(replica_admin, db) -> bool:
    # The embedded server commits asynchronously (synchronous_commit off), so the flush position can
    # trail the last commit, and the insert position can sit on the next page's header, which no
    # record reaches while the primary is idle. A transactional WAL message committed synchronously
    # flushes everything before it (a transaction that writes no WAL of its own, such as one that
    # only takes an xid, commits without a flush even with synchronous_commit on): once the replica
    # has replayed that far, it has every earlier commit.
    query(db, "SET synchronous_commit = on")
    query(db, "SELECT pg_logical_emit_message(true, 'store-api-test', 'caught up?')")
    primary_lsn = query(db, "SELECT pg_current_wal_flush_lsn()::text")[0][0]
    replayed = query(replica_admin, "SELECT pg_last_wal_replay_lsn()::text")[0][0]
    return parse_lsn(replayed) >= parse_lsn(primary_lsn)


def replica_has_the_store(replica_admin) -> bool:
    """The known rows (conftest's `store`), as a read on the replica sees them."""
    counts = query(
        replica_admin,
        "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM products), (SELECT count(*) FROM orders)",
    )[0]
    if counts != (3, 3, 2):
        print(f"caught up, but the replica shows {counts}")  # evidence for the flake hunt
    return counts == (3, 3, 2)


def make_app(database_url, replica_server, **replica):
    settings = make_settings(
        database_url,
        replica={"url": replica_server.url(TEST_DB), "check_interval": 0.1, "max_lag": 60, **replica},
        # Reads from four threads with one token: these tests are about where reads go, not about a
        # caller's share of the threads (a fourth read waited 5 s behind slow dashboards and was 429
        # in a parallel run).
        api={"caller_share": 1.0},
    )
    return create_app(settings)


@pytest.fixture
def replica_app(database_url, replica_server, store, replica_admin):
    wait_until(lambda: caught_up(replica_admin, store), timeout=10)
    wait_until(lambda: replica_has_the_store(replica_admin), timeout=10, message="the replica to show the known rows")
    app = make_app(database_url, replica_server)
    replica = get_database(app).replica
    wait_until(lambda: replica.why_not() is None, timeout=10)
    yield app
    get_database(app).close(timeout=2)


def insert_customer_on_primary(db, email: str) -> int:
    return query(db, "INSERT INTO customers (name, email) VALUES ('Replica Test', %s) RETURNING id", (email,))[0][0]


def test_reads_go_to_the_replica_and_writes_to_the_primary(replica_app, replica_admin, store):
    query(replica_admin, "SELECT pg_wal_replay_pause()")
    wait_until(lambda: query(replica_admin, "SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused")
    new_id = insert_customer_on_primary(store, "unseen@example.com")
    replica = get_database(replica_app).replica
    with replica_app.test_client(headers=AUTH) as client:
        # The replica has not replayed the insert: a read served by it does not see the row.
        assert client.get(f"/api/customers/{new_id}").status_code == 404
        emails = [c["email"] for c in client.get("/api/customers?limit=100").json()["items"]]
        assert "unseen@example.com" not in emails
        assert replica.stats()["replica_reads"] >= 2
        # A write goes to the primary, even with replay paused, and returns its WAL position.
        created = client.post("/api/customers", json={"name": "Written", "email": "written@example.com"}, headers=AUTH)
        assert created.status_code == 201
        token = created.headers["X-Consistency-Token"]
        assert parse_lsn(token) > 0
        written = created.json()["id"]
        # Without the token, the replica answers (not replayed yet: 404); with it, the primary does.
        assert client.get(f"/api/customers/{written}").status_code == 404
        again = client.get(f"/api/customers/{written}", headers={"X-Consistency-Token": token})
        assert again.status_code == 200 and again.json()["email"] == "written@example.com"
        assert replica.stats()["fallbacks"]["behind_token"] >= 1
        # Once the replica has replayed past the token, the same read is served by the replica.
        query(replica_admin, "SELECT pg_wal_replay_resume()")
        wait_until(lambda: replica.why_not(parse_lsn(token)) is None, timeout=10)
        before = replica.stats()["replica_reads"]
        assert client.get(f"/api/customers/{written}", headers={"X-Consistency-Token": token}).status_code == 200
        assert replica.stats()["replica_reads"] == before + 1


def test_a_malformed_consistency_token_is_a_400_naming_the_header(replica_app):
    with replica_app.test_client(headers=AUTH) as client:
        response = client.get("/api/customers/1", headers={"X-Consistency-Token": "yesterday"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "X-Consistency-Token" in response.json()["detail"]


def test_a_lagging_replica_sends_reads_to_the_primary_without_errors(
    database_url, replica_server, store, replica_admin
):
    wait_until(lambda: caught_up(replica_admin, store), timeout=10)
    app = make_app(database_url, replica_server, max_lag=1.0)
    replica = get_database(app).replica
    try:
        wait_until(lambda: replica.why_not() is None, timeout=10)
        query(replica_admin, "SELECT pg_wal_replay_pause()")
        new_id = insert_customer_on_primary(store, "lagged@example.com")
        with app.test_client(headers=AUTH) as client:
            assert client.get(f"/api/customers/{new_id}").status_code == 404  # replica, not lagging yet
            # Keep writing so that WAL waits for replay: lag grows past max_lag (1 s).
            wait_until(
                lambda: (
                    insert_customer_on_primary(store, f"w{time.monotonic_ns()}@example.com")
                    and replica.why_not() == "lagging"
                ),
                timeout=15,
                interval=0.2,
            )
            response = client.get(f"/api/customers/{new_id}")
            assert response.status_code == 200 and response.json()["email"] == "lagged@example.com"
            health = client.get("/api/health/db", headers=AUTH).json()
            assert health["replica"]["routing"] == "primary (lagging)"
            assert health["replica"]["lag_s"] > 1.0
            assert health["status"] == "warning"
            assert health["replica"]["fallbacks"]["lagging"] >= 1
            query(replica_admin, "SELECT pg_wal_replay_resume()")
            wait_until(lambda: replica.why_not() is None, timeout=10)
            assert client.get("/api/health/db", headers=AUTH).json()["replica"]["routing"] == "replica"
    finally:
        get_database(app).close(timeout=2)


def test_health_shows_both_pools(replica_app):
    with replica_app.test_client(headers=AUTH) as client:
        client.get("/api/products")
        body = client.get("/api/health/db", headers=AUTH).json()
    assert body["status"] == "healthy"
    assert body["pool"]["name"] == "primary"
    assert body["replica"]["pool"]["name"] == "replica"
    assert body["replica"]["in_recovery"] is True
    assert body["replica"]["routing"] == "replica"


def test_metrics_show_both_pools_and_where_reads_went(replica_app):
    with replica_app.test_client(headers=AUTH) as client:
        assert client.get("/api/products/1").status_code == 200
        text = client.get("/metrics").text
    assert 'store_api_pool_connections{pool="replica",state="size"}' in text
    assert 'store_api_pool_connections{pool="primary",state="size"}' in text
    assert 'store_api_pool_wait_seconds_count{pool="replica"}' in text
    assert 'store_api_replica_routed_reads_total{destination="replica",reason=""}' in text
    assert "store_api_replica_lag_seconds" in text


def test_budget_check_covers_the_replica(database_url, replica_server):
    settings = make_settings(
        database_url,
        replica={"url": replica_server.url(TEST_DB), "max_connections": 60},
        server={"workers": 2, "threads": 60},
        pool={"max_connections": 2},
    )
    with pytest.raises(BudgetExceeded, match=r"replica connection budget exceeded: 2 workers x 60"):
        check_connection_budget(settings)
    fits = settings.with_overrides(replica={"max_connections": 2})
    assert check_connection_budget(fits).needed == 4


def test_a_read_cut_off_mid_query_on_the_replica_is_run_again_on_the_primary(
    database_url, replica_server, store, replica_admin
):
    """Reads in flight on the replica when its link drops: each fails mid-query and is answered by
    the primary (fallback `error`), none with an error. A proxy adds 0.5 s each way, so the reads are
    still waiting for their answers when the link is cut."""
    wait_until(lambda: caught_up(replica_admin, store), timeout=10)
    proxy = FaultProxy("127.0.0.1", replica_server.port).start()
    proxied = f"postgresql://postgres@127.0.0.1:{proxy.port}/{TEST_DB}"
    app = make_app(database_url, replica_server, url=proxied, check_interval=30, min_connections=3)
    replica = get_database(app).replica
    statuses: list[int] = []
    errors: list[BaseException] = []
    try:
        wait_until(lambda: replica.why_not() is None and replica.pool.stats()["idle"] == 3, timeout=10)
        proxy.delay = 0.5  # each read holds its connection for over a second: all three overlap
        with app.test_client(headers=AUTH) as client:
            assert client.get("/api/customers/1").status_code == 200  # routes registered, one thread
            before = replica.stats()["replica_reads"]

            def reader():
                try:
                    statuses.append(app.test_client(headers=AUTH).get("/api/customers/1").status_code)
                except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=reader) for _ in range(3)]
            for thread in threads:
                thread.start()
            wait_until(lambda: replica.pool.stats()["in_use"] == 3, message="three reads in flight on the replica")
            proxy.cut()
            for thread in threads:
                thread.join(30)
        assert errors == [] and statuses == [200, 200, 200]
        stats = replica.stats()
        assert stats["fallbacks"].get("error") == 3 and stats["retried_on_primary"] == 3, stats
        assert stats["replica_reads"] == before  # all three counted where they were served: the primary
        assert replica.why_not() == "down"  # until the monitor's next check succeeds
    finally:
        get_database(app).close(timeout=2)
        proxy.stop()


def test_a_migrations_lock_replayed_on_the_replica_sends_the_cancelled_reads_to_the_primary(
    database_url, replica_server, store, replica_admin
):
    """A migration's ACCESS EXCLUSIVE lock, replayed on the replica, cancels the replica's reads of that
    table (conflict with recovery, at once with max_standby_streaming_delay = 0). Over real gunicorn
    under a read load: every cancelled read is run again on the primary, never a 5xx."""
    import requests

    from tests.support.servers import Gunicorn

    wait_until(lambda: caught_up(replica_admin, store), timeout=10)
    query(replica_admin, "ALTER SYSTEM SET max_standby_streaming_delay = 0")
    query(replica_admin, "SELECT pg_reload_conf()")

    def conflicts() -> int:
        return query(
            replica_admin, "SELECT confl_lock FROM pg_stat_database_conflicts WHERE datname = current_database()"
        )[0][0]

    server = Gunicorn(
        database_url, DATABASE_REPLICA_URL=replica_server.url(TEST_DB), DB_REPLICA_MAX_LAG="60", WEB_CONCURRENCY="2"
    )
    statuses: list = []
    running = True

    def reader():
        session = requests.Session()
        session.headers.update(AUTH)
        while running:
            for path in (
                "/api/customers?limit=100",
                "/api/customers/1",
                "/api/dashboard?from=2026-01-01&to=2026-01-31",
            ):
                try:
                    statuses.append(session.get(server.base + path, timeout=10).status_code)
                except requests.RequestException as exc:
                    statuses.append(repr(exc))

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(6)]
    before = conflicts()
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(statuses) > 50, timeout=20, message="the read load")
        for _ in range(300):  # the lock a migration takes, again and again, until reads were cancelled
            query(store, "SET lock_timeout = '500ms'; ALTER TABLE customers ADD COLUMN conflict_probe text")
            query(store, "SET lock_timeout = '500ms'; ALTER TABLE customers DROP COLUMN conflict_probe")
            if conflicts() - before >= 5:
                break
            time.sleep(0.02)  # pacing: conflicts provoked in a loop until five are counted
        time.sleep(0.5)  # time passing: the replica replays the conflicts
    finally:
        running = False
        for thread in threads:
            thread.join(30)
        server.stop()
        query(store, "RESET lock_timeout; ALTER TABLE customers DROP COLUMN IF EXISTS conflict_probe")
        query(replica_admin, "ALTER SYSTEM RESET max_standby_streaming_delay")
        query(replica_admin, "SELECT pg_reload_conf()")
    cancelled = conflicts() - before
    assert cancelled >= 5, f"only {cancelled} replica reads were cancelled: the test proved nothing"
    assert statuses and set(statuses) == {200}, {s for s in statuses if s != 200}


def test_reads_survive_the_replica_going_down_and_return_to_it(database_url, replica_server, store, replica_admin):
    """Last in this module: stops the replica. Every read answers 200, before, during and after.

    The monitor checks only every hour here, so it cannot mark the replica down first (every 30 s
    was not enough: on a loaded machine the test reached its check 30 s after the start): reads run
    from four threads at once on the replica pool's connections just after they were killed, and
    each one that fails there is run again on the primary (fallback `error`). Only then is the
    monitor's check run, which sees the replica down; after a restart, the next check sends reads
    back to it.
    """
    wait_until(lambda: caught_up(replica_admin, store), timeout=10)
    replica_admin.close()
    app = make_app(database_url, replica_server, check_interval=3600)
    replica = get_database(app).replica
    statuses: list[int] = []
    errors: list[BaseException] = []

    def read(client):
        statuses.append(client.get("/api/customers/1").status_code)
        statuses.append(client.get("/api/dashboard?from=2026-01-01&to=2026-01-31").status_code)

    def concurrently(rounds: int):
        def reader():
            try:
                client = app.test_client(headers=AUTH)
                for _ in range(rounds):
                    read(client)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [] and not any(thread.is_alive() for thread in threads)

    try:
        wait_until(lambda: replica.why_not() is None, timeout=10)
        # One client context for the whole test (leaving it shuts the app down, pools included);
        # the reader threads use clients of their own inside it.
        with app.test_client(headers=AUTH) as client:
            read(client)  # Connexion registers its routes on the first request: not from four threads at once
            concurrently(3)
            assert replica.stats()["pool"]["size"] >= 2  # the replica pool holds connections
            assert replica.stats()["fallbacks"] == {}
            replica_server.stop("immediate")  # they are now dead, and the monitor does not know
            assert replica.why_not() is None
            concurrently(2)
            stats = replica.stats()
            assert stats["fallbacks"].get("error", 0) >= 1, stats  # failed on the replica, served by the primary
            assert stats["retried_on_primary"] == stats["fallbacks"]["error"]
            assert stats["lag_check_errors"] == 0  # the monitor had not run: the reads found it
            replica.check()  # what the monitor runs every check_interval
            assert replica.why_not() == "down" and replica.stats()["lag_check_errors"] == 1
            before = replica.stats()["fallbacks"].get("down", 0)
            for _ in range(3):
                read(client)
            assert replica.stats()["fallbacks"].get("down", 0) == before + 6
            body = client.get("/api/health/db", headers=AUTH).json()
            assert body["replica"]["routing"] == "primary (down)"
            assert body["status"] == "warning"  # reads are served: not an error
            replica_server.start()
            wait_until(lambda: replica.check() or replica.why_not() is None, timeout=30, interval=0.2)
            before = replica.stats()["replica_reads"]
            read(client)
            assert replica.stats()["replica_reads"] == before + 2
        assert statuses and set(statuses) == {200}, statuses
        stats = replica.stats()  # each read counted once, where it was finally served
        assert stats["replica_reads"] + stats["primary_reads"] == len(statuses)
        assert sum(stats["fallbacks"].values()) == stats["primary_reads"]
    finally:
        get_database(app).close(timeout=2)
        if not replica_server.running:
            replica_server.start()


def test_a_replica_behind_the_clients_etag_never_answers_with_an_older_row(replica_app, replica_admin, store):
    """Issue 22: with replay paused, the product changes on the primary (version 2). A client that
    has seen version 2 asks If-None-Match: "2". The replica's row is version 1: older than what the
    client has, so the read runs again on the primary, which answers 304. A client that has seen only
    version 1 is answered by the replica (its row is not older than what that client has)."""
    replica = get_database(replica_app).replica
    query(replica_admin, "SELECT pg_wal_replay_pause()")
    wait_until(lambda: query(replica_admin, "SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused")
    query(store, "UPDATE products SET price_cents = 1234 WHERE id = 1")  # version 2, on the primary only
    with replica_app.test_client(headers=AUTH) as client:
        plain = client.get("/api/products/1")  # the observer: the replica really is behind
        assert plain.status_code == 200 and plain.headers["ETag"] == '"1"' and plain.json()["price_cents"] == 1000
        before = replica.stats()
        newer = client.get("/api/products/1", headers={"If-None-Match": '"2"'})
        assert newer.status_code == 304 and newer.headers["ETag"] == '"2"'
        after = replica.stats()
        assert after["fallbacks"].get("behind_etag", 0) == before["fallbacks"].get("behind_etag", 0) + 1
        assert after["retried_on_primary"] == before["retried_on_primary"] + 1
        older = client.get("/api/products/1", headers={"If-None-Match": '"1"'})
        assert older.status_code == 304 and older.headers["ETag"] == '"1"'  # the replica's own answer
        assert replica.stats()["replica_reads"] == after["replica_reads"] + 1
