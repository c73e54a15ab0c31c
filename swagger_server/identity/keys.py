"""API keys the service issues: `sk_<id>_<secret>`, checked in memory, kept in PostgreSQL (schema 019).

The id (12 letters and digits of base32) names the key's row, so checking a key is one dictionary
lookup and one constant-time comparison of SHA-256 digests, whatever the number of keys. The secret
is 32 random bytes (43 characters of base64url), kept only as its digest: a random 256-bit secret
needs no slow hash, as there is no dictionary to try against a stolen digest.

Each process keeps every key in memory (`ApiKeys`) and reads what changed every `[API] key_refresh`
seconds (`KeyRefresher`, a thread on a connection borrowed from the pool), from the first key it is
shown on (a worker no key reaches costs nothing): a revoked key is refused by every worker of every
host within that interval plus one pass (docs/SECURITY.md). A pass is one
statement, the rows changed since the last pass (a little before it, `OVERLAP`, for a change
committed late) and the number of keys, which tells that a key went with its customer (then it
reads them all again, as it does every `FULL_EVERY` seconds). Each pass also writes the last use of
the keys used since the previous one, in one statement: no request writes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from swagger_server.db.queries import keys as queries

logger = logging.getLogger(__name__)

PREFIX = "sk_"
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_FORMAT = re.compile(r"sk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})")
OVERLAP = timedelta(seconds=30)
FULL_EVERY = 600.0
SCOPES = ("read", "write", "admin")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def new_key() -> tuple[str, str, bytes]:
    """(id, the key as the caller presents it, the digest kept)."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return key_id, f"{PREFIX}{key_id}_{secret}", digest(secret)


def looks_like_key(token: str) -> bool:
    return token.startswith(PREFIX)


@dataclass(frozen=True)
class Key:
    id: str
    digest: bytes
    scopes: frozenset[str]
    customer_id: int | None
    expires_at: float | None  # epoch seconds
    revoked: bool


class KeysNotLoaded(Exception):
    """The keys have not been read yet in this process (its first pass has not finished)."""


class ApiKeys:
    """One app's API keys in this process, and their uses since the last pass."""

    def __init__(self, clock=time.time):
        self._clock = clock
        self._keys: dict[str, Key] = {}
        self._used: dict[str, float] = {}
        self.loaded = threading.Event()
        self._since = _EPOCH
        self._full_at = float("-inf")
        self._lock = threading.Lock()  # one pass at a time
        # Set by the app's lifespan: starts this process's KeyRefresher. Called on the first key this
        # process sees: a worker no key reaches never reads the table (nor borrows a connection for it).
        self.starter = None
        self._started = False
        self._start_lock = threading.Lock()

    def check(self, token: str) -> Key | None:
        """The key `token` is, if it is a live one (known, its secret right, not revoked or expired);
        None otherwise. KeysNotLoaded before the first pass. Records the use."""
        match = _FORMAT.fullmatch(token)
        if match is None:
            return None
        if not self.loaded.is_set():
            self.start_refreshing()
            raise KeysNotLoaded()
        key = self._keys.get(match.group(1))
        candidate = digest(match.group(2))
        # Compared even for an unknown id (against a digest of nothing), so that a wrong secret and an
        # unknown key take the same time.
        if not hmac.compare_digest(candidate, key.digest if key is not None else b"\0" * 32) or key is None:
            return None
        now = self._clock()
        if key.revoked or (key.expires_at is not None and key.expires_at <= now):
            return None
        self._used[key.id] = now
        return key

    def start_refreshing(self) -> None:
        with self._start_lock:  # not the pass's lock: a pass may wait on the database, the loop may not
            if self._started or self.starter is None:
                return
            self._started = True
        self.starter()

    def __len__(self) -> int:
        return len(self._keys)

    def refresh(self, conn) -> None:
        """One pass on `conn` (committed here): write the uses since the last pass, read the changes."""
        with self._lock:
            used, self._used = self._used, {}
            try:
                if used:
                    queries.record_use(conn, list(used), list(used.values()))
                full = self._clock() - self._full_at >= FULL_EVERY
                count, rows = queries.changed_keys(conn, _EPOCH if full else self._since - OVERLAP)
                if not full:
                    self._apply(rows, replace=False)
                    if len(self._keys) != count:  # a key went with its customer: read them all
                        full = True
                        count, rows = queries.changed_keys(conn, _EPOCH)
                if full:
                    self._apply(rows, replace=True)
                    self._full_at = self._clock()
                conn.commit()
            except BaseException:
                for key_id, at in used.items():  # written next time
                    self._used.setdefault(key_id, at)
                conn.rollback()
                raise
        self.loaded.set()

    def _apply(self, rows: list[tuple], replace: bool) -> None:
        keys = {} if replace else dict(self._keys)
        for key_id, key_digest, scopes, customer_id, expires_at, revoked, changed_at in rows:
            keys[key_id] = Key(key_id, bytes(key_digest), frozenset(scopes), customer_id, expires_at, revoked)
            self._since = max(self._since, changed_at)
        self._keys = keys  # one assignment: a check reads the old dictionary or the new one


class KeyRefresher:
    """`keys.refresh` every `interval` seconds in a daemon thread, on a connection borrowed from `pool`;
    the first pass at once."""

    def __init__(self, keys: ApiKeys, pool, interval: float):
        self.keys = keys
        self.pool = pool
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="api-keys")

    def start(self) -> KeyRefresher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        failing = False
        wait = 0.0
        while not self._stop.wait(wait) and not self.pool.closed:
            wait = self.interval
            try:
                conn = self.pool.getconn(timeout=self.interval)
                try:
                    self.keys.refresh(conn)
                finally:
                    self.pool.putconn(conn)
            except Exception as exc:  # the database down, a restart: the keys read last stay
                if not failing:
                    logger.warning("API keys not refreshed (%s); the keys read last stay in use", exc)
                failing = True
                wait = min(self.interval, 1.0)
                continue
            if failing:
                logger.info("API keys refreshed again")
            failing = False
