"""A request body's sizes against its schema, measured before anything else reads the body, and the
shapes no body may have whatever its schema (too deep, NUL, lone surrogates, endless number literals)."""

from __future__ import annotations

import json


def over_size(body, schema) -> tuple[str, str] | None:
    """(field, detail) for a body with an array, object or string longer than its schema allows."""
    found = _first(body, schema, "")
    if found is None:
        return None
    field, what = found
    return (field, f"'{field}' {what}") if field else ("body", f"the body {what}")


def _first(value, schema, path: str) -> tuple[str, str] | None:
    """(path, what) for the first array, object or string longer than its schema allows, looked for
    before anything else reads the body: an array is measured before its items are, and only as many
    items as the schema allows are descended into, so the work before a refusal is bounded by what the
    spec allows, not by what was sent (150 000 lines where 100 are allowed took jsonschema 4 s of the
    event loop, collecting an error per line)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(value, list):
        most = schema.get("maxItems")
        if most is not None and len(value) > most:
            return path, f"has {len(value)} items; at most {most} are allowed"
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                found = _first(item, items, f"{path}[{i}]")
                if found is not None:
                    return found
    elif isinstance(value, dict):
        most = schema.get("maxProperties")
        if most is not None and len(value) > most:
            return path, f"has {len(value)} members; at most {most} are allowed"
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            if name in value:
                found = _first(value[name], sub, f"{path}.{name}" if path else name)
                if found is not None:
                    return found
    elif isinstance(value, str):
        most = schema.get("maxLength")
        if most is not None and len(value) > most:
            return path, f"is {len(value)} characters long; at most {most} are allowed"
    return None


NUMBER_BYTES = 32  # the longest number literal a body may hold (validation.py refuses longer ones)


def most_bytes(schema) -> int | None:
    """The most bytes a value valid against `schema` takes as JSON without whitespace, every character
    of every string written as an escape (`\\u0061` for `a`: JSON allows it); None when the schema does
    not bound it (a string without maxLength, an array without maxItems, an object open to members it
    does not list). Proportional to what the spec allows, so a body far longer than this is refused
    by its length, before a parser reads it (validation.py)."""
    if not isinstance(schema, dict):
        return None
    alternatives = [s for key in ("oneOf", "anyOf") for s in schema.get(key, ())]
    if alternatives:
        sizes = [most_bytes(s) for s in alternatives]
        return None if None in sizes else max(sizes)
    if "enum" in schema:
        return max(_escaped(json.dumps(value)) for value in schema["enum"])
    kind = schema.get("type")
    if kind in ("integer", "number"):
        size = NUMBER_BYTES
    elif kind == "boolean":
        size = len("false")
    elif kind == "string":
        if schema.get("maxLength") is None:
            return None
        size = 2 + 12 * schema["maxLength"]  # a code point beyond the BMP escaped is 12 bytes
    elif kind == "array":
        items = most_bytes(schema.get("items"))
        if items is None or schema.get("maxItems") is None:
            return None
        size = 2 + schema["maxItems"] * (items + 1)
    elif kind == "object" or "properties" in schema:
        if schema.get("additionalProperties", True) is not False:
            return None
        size = 2
        for name, sub in (schema.get("properties") or {}).items():
            value = most_bytes(sub)
            if value is None:
                return None
            size += _escaped(json.dumps(name)) + 1 + value + 1
    else:
        return None
    return max(size, len("null")) if schema.get("nullable") else size


def _escaped(literal: str) -> int:
    """Bytes of a JSON literal with every character of its strings written as an escape."""
    return sum(6 if ord(c) < 0x10000 else 12 for c in literal)


def hostile(body, max_depth: int) -> tuple[str, str] | None:
    """(what, where) if the parsed body nests deeper than `max_depth`, or holds a NUL or an unpaired
    surrogate in a string, else None. Iterative, so a hostile body cannot exhaust the recursion limit here."""
    stack = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > max_depth:
            return "depth", path
        if isinstance(value, str):
            if "\x00" in value:
                return "nul", path
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate (\ud800): not text PostgreSQL can store
                    return "surrogate", path
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else key
                if "\x00" in key:
                    return "nul", path
                stack.append((item, where, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
    return None


def bounded_int(literal: str) -> int:
    """json.loads' parse_int: at most NUMBER_BYTES characters (Python refuses over 4300 digits, slowly)."""
    if len(literal) > NUMBER_BYTES:
        raise ValueError("number literal too long")
    return int(literal)


def bounded_float(literal: str) -> float:
    if len(literal) > NUMBER_BYTES:
        raise ValueError("number literal too long")
    return float(literal)


def no_constant(name: str):
    """json.loads' parse_constant: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")
