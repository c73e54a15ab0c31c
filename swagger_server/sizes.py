"""A request body's sizes against its schema, measured before anything else reads the body."""

from __future__ import annotations


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
