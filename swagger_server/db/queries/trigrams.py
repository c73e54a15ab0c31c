"""Which of a search term's trigrams a GIN index should look up.

A trigram index answers `x ILIKE '%term%'` by intersecting the posting list of every trigram pg_trgm
finds in the term, and reading a list costs in proportion to its length. A term made only of common
trigrams that are rare together ("ada.turing.1" at a million customers: 13 trigrams of 5-11 % of the
rows each, 283 rows in all) spent 14 ms decoding lists to find them, though two or three of those
trigrams narrow it to a few hundred rows.

So the index is asked for a few substrings of the term instead (`x ILIKE '%ada%' AND x ILIKE
'%tur%' AND x ILIKE '%.1%'`), each implied by the match itself, chosen by how common their trigrams
are; the whole term is then checked on the rows they give. How common a trigram is comes from
PostgreSQL's own statistics: an extended statistics object on each indexed expression's trigrams
(schema 018; ANALYZE and autovacuum keep its most common elements and their frequencies), read once
per STATS_TTL per process and connection target, through a function that runs as the tables' owner
(only an owner may read them). Without them (not analysed yet) the whole term goes to the index, as
before: slower on such terms, never wrong.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

STATS_TTL = 300.0
# Stop adding substrings once the rows they are estimated to leave are at most this share of the table
# (300 rows at a million: a bitmap heap scan rechecks them in about 2 ms; reading one more posting
# list of a trigram in 5 % of the rows costs about 0.7 ms there).
ENOUGH = 0.0003
MOST = 4
# A trigram ANALYZE did not keep is rarer than the rarest it kept, and rarer than this: it keeps every
# element found in more than roughly 0.1 % of its sample (array_typanalyze.c's lossy counting, at the
# default statistics target), so a short list (the domain's: twelve trigrams, in every row) says
# nothing of the rest but that they are rare.
RARE = 0.001
_WORD = re.compile(r"[a-z0-9]+")


def like_trigrams(text: str) -> frozenset[str]:
    """The trigrams pg_trgm looks up for `ILIKE '%text%'` with no wildcard in `text`, for ASCII text:
    lowered words (runs of letters and digits) padded with two blanks before when something precedes
    them in `text`, one after when something follows, and cut into threes."""
    found = set()
    lowered = text.lower()
    for word in _WORD.finditer(lowered):
        padded = ("  " if word.start() > 0 else "") + word.group() + (" " if word.end() < len(lowered) else "")
        found.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return frozenset(found)


@dataclass(frozen=True)
class Frequencies:
    """One expression's most common trigrams and the share of rows holding each; a trigram not among
    them is rarer than the rarest that is (`floor`)."""

    shares: dict[str, float]
    floor: float

    def of(self, trigram: str) -> float:
        return self.shares.get(trigram, self.floor)


def substrings(term: str, frequencies: Frequencies) -> list[str] | None:
    """Up to MOST substrings of `term` whose trigrams, looked up together, are estimated to leave at most
    ENOUGH of the rows; None when the whole term should go to the index: a term that is not plain ASCII
    (pg_trgm may read its trigrams otherwise), or one no few substrings narrow enough."""
    if not term.isascii():
        return None
    candidates = []  # (cost: the posting lists read, start, end, trigrams)
    for length in (2, 3, 4):
        for start in range(len(term) - length + 1):
            trigrams = like_trigrams(term[start : start + length])
            if trigrams:
                candidates.append((sum(map(frequencies.of, trigrams)), start, start + length, trigrams))
    if not candidates:
        return None
    candidates.sort(key=lambda c: (c[0], c[2] - c[1], c[1]))
    words = [range(w.start(), w.end()) for w in _WORD.finditer(term.lower())]
    chosen: list[tuple[int, int]] = []
    used: set[int] = set()
    covered: set[str] = set()
    estimate = 1.0
    # Trigrams of one word are mostly found together ("tur" and "ing" in "turing"): first only
    # substrings of words no chosen substring touches count as narrowing the rows, each by its rarest
    # trigram's share; then, if that is not enough, more substrings apart from the chosen ones.
    for independent in (True, False):
        for _cost, start, end, trigrams in candidates:
            if estimate <= ENOUGH or len(chosen) == MOST:
                break
            touched = {i for i, word in enumerate(words) if start < word.stop and word.start < end}
            if trigrams <= covered or any(start < e and s < end for s, e in chosen) or (independent and touched & used):
                continue
            chosen.append((start, end))
            used |= touched
            covered |= trigrams
            estimate *= min(map(frequencies.of, trigrams))
    if estimate > ENOUGH:
        return None  # no few substrings narrow it enough: all its trigrams narrow it most
    return [term[s:e] for s, e in sorted(chosen)]


class Statistics:
    """The trigram frequencies of the indexed expressions, per connection target, refreshed every
    STATS_TTL by the search that finds them stale (one small catalogue read)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, Frequencies]]] = {}

    def get(self, conn) -> dict[str, Frequencies]:
        key = conn.dsn
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        read = _read(conn)
        with self._lock:
            self._cache[key] = (now + STATS_TTL, read)
        return read


def _read(conn) -> dict[str, Frequencies]:
    """{"name", "local" or "domain": Frequencies} from the statistics object (schema 018); empty if it
    has not been analysed or may not be read."""
    with conn.cursor() as cur:
        cur.execute("SELECT expr, trigrams, shares FROM customers_search_trigram_shares()")
        found = {}
        for expr, elements, freqs in cur.fetchall():
            # most_common_elem_freqs ends with the smallest and largest frequency and the null share.
            shares = dict(zip(elements, freqs[: len(elements)], strict=True))
            part = "local" if "split_part" in expr else "domain" if "substr" in expr else "name"
            found[part] = Frequencies(shares, floor=min([RARE, *freqs[: len(elements)]]))
        return found


STATS = Statistics()
