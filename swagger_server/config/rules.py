"""What one setting must satisfy, declared beside it in settings.py: `setting(default, env=..., rule=...)`.

A rule is a predicate and the message an error gives; it also names one value it admits and one it
refuses (as they would be written in the file or the environment), so that a test generated from the
table sets every environment variable twice: once to change the effective value, once to be refused.
The relations between settings (min <= max, an audience with an issuer) are in checks.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    message: str | Callable[[Any], str]  # a str may hold {value!r}: never for a secret
    admits: str  # a value (raw, as written) the rule admits, other than the default
    refuses: str | None  # a value the rule refuses; None: every value its type parses is admitted

    def problem(self, value) -> str | None:
        if self.ok(value):
            return None
        return self.message(value) if callable(self.message) else self.message.format(value=value)


def setting(default, *, env: str | None = None, rule: Rule, secret: bool = False):
    """A field of a section: its default, the environment variable that overrides it, its rule; a
    secret is never shown (repr, check-config, errors)."""
    return field(default=default, repr=not secret, metadata={"env": env, "rule": rule})


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def at_least(low: float, unit: str = "", *, strict: bool = False) -> Rule:
    """value >= low (value > low when strict). It admits low + 7 (no default's value)."""
    sign = ">" if strict else ">="
    return Rule(
        (lambda v: v > low) if strict else (lambda v: v >= low),
        f"must be {sign} {_number(low)}{unit}",
        admits=_number(low + 7),
        refuses=_number(low - 1) if not strict else _number(low),
    )


def between(low: float, high: float, unit: str = "", *, strict: bool = False, off: float | None = None) -> Rule:
    """low <= value <= high (low < value when strict); `off`, when given, is admitted too (0 = off)."""
    sign = ">" if strict else ">="

    def ok(v):
        return v == off or ((v > low) if strict else (v >= low)) and v <= high

    if off is not None:
        message = f"must be {_number(off)} (off) or between {_number(low)} and {_number(high)}{unit}"
    else:
        message = f"must be {sign} {_number(low)} and <= {_number(high)}{unit}"
    return Rule(ok, message, admits=_number(high), refuses=_number(high * 2 + 1))


def one_of(*choices: str) -> Rule:
    shown = ", ".join(choices[:-1]) + f" or {choices[-1]}"
    return Rule(lambda v: v in choices, f"must be {shown}, got {{value!r}}", admits=choices[-1], refuses="maybe")


def port(*, off: bool = False) -> Rule:
    if off:
        return Rule(
            lambda v: v == 0 or 1 <= v <= 65535, "must be 0 (off) or a TCP port", admits="9464", refuses="65536"
        )
    return Rule(lambda v: 1 <= v <= 65535, "must be a TCP port, got {value}", admits="9000", refuses="65536")


def postgres_url() -> Rule:
    return Rule(
        lambda v: not v or v.startswith(("postgres://", "postgresql://")),
        "must start with postgresql://",
        admits="postgresql://app@db.internal:5432/store",
        refuses="mysql://app@db.internal/store",
    )


def not_empty(admits: str) -> Rule:
    return Rule(lambda v: bool(v), "must not be empty", admits=admits, refuses=" ")


def anything(admits: str) -> Rule:
    """Every value its type parses (a password, a flag)."""
    return Rule(lambda v: True, "", admits=admits, refuses=None)


def each(ok: Callable[[str], bool], message: str, admits: str, refuses: str) -> Rule:
    """Every item of a list."""
    return Rule(lambda items: all(ok(item) for item in items), message, admits=admits, refuses=refuses)


TOKEN_SCOPES = ("read", "write", "admin")


def parse_token(entry: str) -> tuple[str, str, str]:
    """`[read:|write:|admin:][sha256:]<secret or hex digest>` -> (scope, "sha256" or "plain", value).

    A token without a scope may write (and read); an admin token may also issue and revoke API keys.
    `sha256:` followed by 64 hex digits is the token's SHA-256 digest, so that a config file need not
    hold the token itself.
    """
    scope, rest = "write", entry
    head, sep, tail = entry.partition(":")
    if sep and head in TOKEN_SCOPES:
        scope, rest = head, tail
    if rest.startswith("sha256:"):
        return scope, "sha256", rest[len("sha256:") :].lower()
    return scope, "plain", rest


def token_problem(entry: str) -> str | None:
    """Why a token entry is malformed (without echoing it), or None."""
    _, form, value = parse_token(entry)
    if form == "sha256":
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            return "a sha256: entry must be followed by 64 hex digits"
        return None
    if len(value) < 8:
        return "each token must be at least 8 characters long"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "tokens may not contain spaces or control characters"
    return None


def tokens() -> Rule:
    return Rule(
        lambda entries: all(token_problem(t) is None for t in entries),
        lambda entries: next(p for p in map(token_problem, entries) if p),
        admits="token-abcdef12,read:token-xyz98765",
        refuses="short",
    )


def rule_of(f) -> Rule:
    return f.metadata["rule"]
