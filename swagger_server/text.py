"""Small text helpers shared by every layer (it imports nothing of the service), and the one rule for
what text this service stores.

One identity per text: two strings a person cannot tell apart must not be two customers or two SKUs.
Every string of a request body is, at the edge (validation.py), and in the database
(schema/005_text_identity.sql, the same rule as a CHECK on every text column):
- in Unicode normalisation form C (NFC): a body's text is normalised, so `e` + U+0301 and `é` are one;
- free of control characters (Cc), format characters (Cf: zero-width spaces, the byte order mark,
  bidirectional overrides such as U+202E, tag characters), and line and paragraph separators (Zl, Zp,
  U+2028 and U+2029): refused with `400` naming the field and the code point;
- without whitespace at either end (str.isspace): refused, not trimmed, so what is stored is what was
  sent (NFC aside) and no two spellings of one name differ by a space nobody sees.
"""

from __future__ import annotations

import unicodedata

REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (libpq's run to several), or its type's name when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def canonical(value: str) -> str:
    """`value` in NFC (ASCII is already)."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def refusal(value: str) -> str | None:
    """Why `value` (already canonical) may not be stored, or None."""
    if value[:1].isspace() or value[-1:].isspace():
        return "may not begin or end with whitespace"
    if value.isascii():
        if value.isprintable():
            return None
        bad = next(c for c in value if not c.isprintable())
        return f"may not contain U+{ord(bad):04X} (a control character)"
    for char in value:
        kind = REFUSED_CATEGORIES.get(unicodedata.category(char))
        if kind is not None:
            return f"may not contain U+{ord(char):04X} ({kind})"
    return None


class TextRefused(ValueError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def canonical_strings(tree):
    """`tree` (parsed JSON, its depth already bounded) with every string made canonical, in place;
    TextRefused naming the first string `refusal` refuses (`lines[0].name`)."""
    if isinstance(tree, str):
        return _checked(tree, "")
    if not isinstance(tree, (dict, list)):
        return tree  # null, a number, a boolean: no text
    stack = [(tree, "")]
    while stack:
        container, path = stack.pop()
        pairs = list(container.items() if isinstance(container, dict) else enumerate(container))
        for key, value in pairs:
            if isinstance(value, (str, dict, list)):
                where = (f"{path}.{key}" if path else key) if isinstance(container, dict) else f"{path}[{key}]"
                if isinstance(value, str):
                    container[key] = _checked(value, where)
                else:
                    stack.append((value, where))
    return tree


def _checked(value: str, where: str) -> str:
    value = canonical(value)
    reason = refusal(value)
    if reason is not None:
        raise TextRefused(where, reason)
    return value
