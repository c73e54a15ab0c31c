"""The start-up connection budget against a real PostgreSQL: every term of the sum, and each mode.

available = max_connections - reserved - other clients - headroom, and no more than a role's or a
database's CONNECTION LIMIT minus that role's (database's) other connections, minus headroom, for a
role that is not a superuser (superusers are exempt from both). needed = workers x min(pool size,
threads). The app's own connections (store-api:*) are not "other clients": they belong to workers
being replaced.
"""

from __future__ import annotations

import logging
import re
import time

import psycopg2
import pytest

from harness.waiting import wait_until
from swagger_server.db.budget import BudgetExceeded, check_connection_budget, measure
from swagger_server.db.database import application_name, host_label
from tests.support.database import admin_connect, make_settings, query


def budget_settings(url, workers=2, size=4, threads=None, **pool):
    return make_settings(
        url,
        server={"workers": workers, "threads": threads or size},
        pool={"max_connections": size, "budget_headroom": 0, **pool},
    )


@pytest.fixture
def role(db, database_url):
    """A login role (not a superuser) with a connection limit; its DSN."""
    made = []

    def make(limit: int) -> str:
        query(db, "DROP ROLE IF EXISTS budget_app")
        query(db, f"CREATE ROLE budget_app LOGIN CONNECTION LIMIT {int(limit)}")
        made.append("budget_app")
        return database_url.replace("postgres@", "budget_app@")

    yield make
    for name in made:
        query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        # A terminated backend lingers a moment: gone before the next test counts the role's connections
        # (one left over once made "only 9 are free" of a limit of 10, in a parallel run).
        wait_until(
            lambda name=name: query(db, "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (name,))[0][0] == 0,
            timeout=10,
            message=f"{name}'s backends to end",
        )
        query(db, f"DROP ROLE IF EXISTS {name}")


def steady(measurement, holds, seconds=10.0):
    """`measurement()` until `holds(result)`: other tests' connections may still be ending while a
    test counts (a closed connection's backend lingers a moment, over a second beside a parallel run).
    The last result either way, after `seconds` at most."""
    deadline = time.monotonic() + seconds
    while True:
        result = measurement()
        if holds(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)  # retry: a closed connection's backend lingers a moment (see the docstring)


def test_available_is_max_connections_less_reserved_and_other_clients(database_url, db):
    max_connections, superuser_reserved = (
        int(query(db, "SELECT current_setting('max_connections')")[0][0]),
        int(query(db, "SELECT current_setting('superuser_reserved_connections')")[0][0]),
    )
    extra = query(db, "SELECT COALESCE(NULLIF(current_setting('reserved_connections', true), ''), '0')::int")[0][0]

    def with_clients():
        before = measure(budget_settings(database_url))
        others = [psycopg2.connect(database_url, application_name="someone-else") for _ in range(5)]
        ours = [psycopg2.connect(database_url, application_name=application_name(12345)) for _ in range(3)]
        try:
            return before, measure(budget_settings(database_url))
        finally:
            for conn in others + ours:
                conn.close()

    before, during = steady(with_clients, lambda r: r[1].others == r[0].others + 5)
    assert before.max_connections == max_connections and before.reserved == superuser_reserved + extra
    assert during.others == before.others + 5  # the app's own three are not counted
    assert during.available == max_connections - during.reserved - during.others
    assert during.role_limit is None and during.db_limit is None  # a superuser: exempt


def test_headroom_is_kept_free(database_url):
    without, with_headroom = steady(
        lambda: (measure(budget_settings(database_url)), measure(budget_settings(database_url, budget_headroom=7))),
        lambda r: r[1].available == r[0].available - 7,
    )
    assert with_headroom.available == without.available - 7


def refusal(settings) -> str:
    """The budget check's refusal for `settings`, "" if it passes."""
    try:
        check_connection_budget(settings)
    except BudgetExceeded as exc:
        return str(exc)
    return ""


def test_exactly_at_the_limit_fits_and_one_more_is_refused(role):
    url = role(10)
    assert check_connection_budget(budget_settings(url, workers=2, size=5)).needed == 10

    # The check above connected as the role: its backend may linger a moment and count (steady()).
    message = steady(lambda: refusal(budget_settings(url, workers=2, size=6)), lambda text: "only 10 are free" in text)
    assert re.search(r"2 workers x 6 connections = 12, but only 10 are free.*role limit 10", message), message


def test_a_roles_other_connections_count_against_its_limit(role):
    url = role(10)
    held = [psycopg2.connect(url, application_name="a-script") for _ in range(3)]
    try:
        budget = steady(lambda: measure(budget_settings(url)), lambda b: b.available == 7)
        assert budget.role_limit == 10 and budget.available == 7
        # The measurement above connected as the role: its backend may linger a moment and count.
        message = steady(
            lambda: refusal(budget_settings(url, workers=2, size=4)), lambda text: "only 7 are free" in text
        )
        assert "2 workers x 4 connections = 8, but only 7 are free" in message, message
    finally:
        for conn in held:
            conn.close()


def test_a_database_limit_binds_too(database_url, db, role):
    """CONNECTION LIMIT 20 on the database: what is free is 20 less its other clients (here the
    fixture's `db` and four scripts at least), and each script opened takes one away."""
    url = role(-1)
    query(db, "ALTER DATABASE store_test CONNECTION LIMIT 20")

    def with_scripts():
        without = measure(budget_settings(url))
        held = [psycopg2.connect(database_url, application_name="a-script") for _ in range(4)]
        try:
            return without, measure(budget_settings(url))
        finally:
            for conn in held:
                conn.close()

    try:
        without, with_four = steady(with_scripts, lambda r: r[1].available == r[0].available - 4)
    finally:
        query(db, "ALTER DATABASE store_test CONNECTION LIMIT -1")
    assert with_four.db_limit == 20 and with_four.available == without.available - 4, (without, with_four)
    assert with_four.available <= 20 - 5 and with_four.available < 100 - 3 - with_four.others


def test_a_role_limit_of_zero_refuses_to_start(role):
    url = role(0)
    with pytest.raises(BudgetExceeded, match=r"refused even the check's one connection \(.*too many connections"):
        check_connection_budget(budget_settings(url))


def test_the_pool_counts_at_most_one_connection_per_handler_thread(role):
    url = role(10)
    # 2 workers x a pool of 20, but 4 threads each: 8 connections can ever be held.
    assert check_connection_budget(budget_settings(url, workers=2, size=20, threads=4)).needed == 8


def test_warn_mode_starts_with_a_warning_and_off_mode_does_not_check(role, caplog):
    url = role(4)
    with caplog.at_level(logging.WARNING):
        budget = check_connection_budget(budget_settings(url, size=5, budget_check="warn"))
    assert budget is not None and not budget.fits
    assert any("connection budget exceeded" in r.getMessage() for r in caplog.records)
    assert check_connection_budget(budget_settings(url, size=50, budget_check="off")) is None


def test_behind_pgbouncer_the_budget_is_its_client_limit_less_headroom(database_url):
    fits = budget_settings(database_url, workers=9, size=10, pgbouncer_max_client_conn=100, budget_headroom=10)
    assert check_connection_budget(fits).needed == 90
    over = budget_settings(database_url, workers=10, size=10, pgbouncer_max_client_conn=100, budget_headroom=10)
    with pytest.raises(BudgetExceeded, match=r"= 100, but PgBouncer accepts 100 clients .* - headroom 10 = 90"):
        check_connection_budget(over)


def test_an_unreachable_server_is_a_warning_not_a_refusal(caplog):
    from swagger_server.db.embedded import free_port

    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    with caplog.at_level(logging.WARNING):
        assert check_connection_budget(budget_settings(nowhere)) is None
    assert any("connection budget not checked" in r.getMessage() for r in caplog.records)


def test_a_role_without_stats_privileges_still_sees_other_roles_clients(database_url, role):
    """PostgreSQL hides another role's backend_type from such a role: those clients count anyway."""
    url = role(-1)

    def both():
        as_superuser = measure(budget_settings(database_url)).others
        held = [admin_connect(database_url) for _ in range(3)]
        try:
            return as_superuser, measure(budget_settings(url)).others
        finally:
            for conn in held:
                conn.close()

    as_superuser, as_role = steady(both, lambda r: r[1] >= r[0] + 3)
    assert as_role >= as_superuser + 3


def test_this_services_connections_on_other_hosts_count(database_url):
    """store-api:<this host>:* are this host's workers being replaced: not counted. The same service
    on another host is: the budget is the fleet's."""

    def with_connections():
        before = measure(budget_settings(database_url))
        here = [psycopg2.connect(database_url, application_name=application_name(4242)) for _ in range(2)]
        there = [psycopg2.connect(database_url, application_name="store-api:other-host:4242") for _ in range(3)]
        try:
            return before, measure(budget_settings(database_url))
        finally:
            for conn in here + there:
                conn.close()
            # A closed connection's backend lingers for a moment: gone before anything counts again.
            wait_until(lambda: query_count(database_url, "store-api:other-host:%") == 0, message="them to end")

    before, during = steady(with_connections, lambda r: r[1].others == r[0].others + 3)
    assert during.others == before.others + 3 and during.fleet == before.fleet + 3
    assert application_name(7).startswith(f"store-api:{host_label()}:")


@pytest.mark.slow
def test_a_second_host_that_would_overflow_the_server_is_refused(database_url, role):
    """Two "hosts" on this machine: two gunicorn masters with different HOSTNAMEs, one role with
    CONNECTION LIMIT 20 (headroom 5). Host A holds 2 x 6 = 12; host B asking for 12 more is refused
    at start, naming the other host's connections; B asking for 2 x 1 fits and starts."""
    from swagger_server.db.embedded import free_port
    from tests.support.servers import Gunicorn, gunicorn_env, refused_start

    url = role(20)
    wait_until(lambda: query_count(url, "store-api:host-_:%") == 0, message="no connection of an earlier run")
    a = Gunicorn(url, HOSTNAME="host-a", DB_POOL_MIN_CONNECTIONS=6, DB_POOL_MAX_CONNECTIONS=6, WEB_THREADS=6)
    try:
        assert wait_until(
            lambda: query_count(url, "store-api:host-a:%") == 12, timeout=10, message="host A's 12 connections"
        )
        code, _, err = refused_start(
            gunicorn_env(
                url,
                free_port(),
                HOSTNAME="host-b",
                DB_POOL_MIN_CONNECTIONS="6",
                DB_POOL_MAX_CONNECTIONS="6",
                WEB_THREADS="6",
            )
        )
        assert code == 3, err
        assert "2 workers x 6 connections = 12, but only 3 are free" in err
        # Host A's 12, and any other connection of this service not of host B (the test process's own).
        named = re.search(r"\((\d+) of them this service on other hosts\)", err)
        assert named and int(named.group(1)) >= 12, err
        b = Gunicorn(url, HOSTNAME="host-b", DB_POOL_MIN_CONNECTIONS=1, DB_POOL_MAX_CONNECTIONS=1, WEB_THREADS=6)
        try:
            assert wait_until(lambda: query_count(url, "store-api:host-b:%") == 2, timeout=10)
        finally:
            b.stop()
    finally:
        a.stop()


def query_count(url: str, pattern: str) -> int:
    """Connections whose application_name is LIKE `pattern`, as the superuser sees them."""
    conn = admin_connect(url.replace("budget_app@", "postgres@"))
    try:
        return query(conn, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s", (pattern,))[0][0]
    finally:
        conn.close()
