"""Small text helpers shared by every layer (it imports nothing of the service), and the one rule for
what text this service stores.

One identity per text: two strings a person cannot tell apart must not be two customers or two SKUs.
Every string of a request body is, at the edge (validation.py), and in the database (schema 021, the
same rule as a CHECK on every text column, generated from these tables):
- in Unicode normalisation form C (NFC): a body's text is normalised, so `e` + U+0301 and `é` are one;
- free of control characters (Cc), format characters (Cf: zero-width spaces, the byte order mark,
  bidirectional overrides such as U+202E, tag characters), line and paragraph separators (Zl, Zp),
  every other default-ignorable code point (Unicode's Default_Ignorable_Code_Point, UAX #44: the
  combining grapheme joiner U+034F, variation selectors, Hangul fillers such as U+3164, Khmer
  inherent vowels), and code points not assigned in the rule's Unicode version (Cn, noncharacters
  included): refused with `400` naming the field and the code point;
- without whitespace at either end: refused, not trimmed, so what is stored is what was sent (NFC
  aside) and no two spellings of one name differ by a space nobody sees.

One Unicode version governs it: the `unicodedata2` package's (pinned in requirements.txt), whatever
Python runs the service (3.11's own tables are 14.0, 3.13's 15.1). Text made only of code points
assigned in it is in NFC under any later version too (Unicode's normalisation stability policy), so a
database whose Unicode is as new or newer judges NFC as the API does; the service checks at start-up
(db/unicode.py) and says what it does when the database's is older.

Identifiers (a SKU; an email, by its pattern) are held to more: UTS #39's "ASCII-only" restriction
level, so no look-alike from another script (Cyrillic Р for P) or compatibility form (the ligature ﬁ)
can be a second SKU that reads like the first (docs/SECURITY.md, "Text").
"""

from __future__ import annotations

import re

import unicodedata2 as ucd

UNICODE_VERSION = ucd.unidata_version

REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a format character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cn": "a code point not assigned in Unicode " + UNICODE_VERSION,
}

# UAX #44's derivation of Default_Ignorable_Code_Point: Other_Default_Ignorable_Code_Point + Cf +
# Variation_Selector - White_Space - FFF9..FFFB - 13430..1343F - Prepended_Concatenation_Mark. The
# Cf part is refused as a format character already; these are the rest (PropList.txt, Unicode 16.0;
# tests/db/test_text_identity.py checks the derivation against the `regex` library's own tables).
OTHER_DEFAULT_IGNORABLE = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x2065, 0x2065),
    (0x3164, 0x3164),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0xE0000, 0xE0000),
    (0xE0002, 0xE001F),
    (0xE0080, 0xE00FF),
    (0xE01F0, 0xE0FFF),
)
VARIATION_SELECTORS = ((0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
DEFAULT_IGNORABLE = frozenset(
    cp for low, high in OTHER_DEFAULT_IGNORABLE + VARIATION_SELECTORS for cp in range(low, high + 1)
)


def is_space(char: str) -> bool:
    """Python's `str.isspace` (bidirectional class WS, B or S, or category Zs), by the rule's tables."""
    return ucd.bidirectional(char) in ("WS", "B", "S") or ucd.category(char) == "Zs"


def refused_kind(char: str) -> str | None:
    """Why `char` may not be in stored text, or None."""
    why = REFUSED_CATEGORIES.get(ucd.category(char))
    if why is None and ord(char) in DEFAULT_IGNORABLE:
        why = "a default-ignorable code point"
    return why


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (libpq's run to several), or its type's name when empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def canonical(value: str, lines: bool = False) -> str:
    """`value` in NFC (ASCII is already); for free text (`lines`), each line break a line feed (CR LF
    and CR alone, as a browser's form sends them, are one LF)."""
    if lines and "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    return value if value.isascii() else ucd.normalize("NFC", value)


def refusal(value: str, lines: bool = False) -> str | None:
    """Why `value` (already canonical) may not be stored, or None. Free text (`lines`: a description,
    a review) may hold line feeds between its lines; the rest of the rule is the same (the database's
    check reads it so too: `text_is_canonical(replace(value, E'\n', ' '))`)."""
    if lines:
        value = value.replace("\n", " ")
    if value.isascii():
        if value[:1].isspace() or value[-1:].isspace():
            return "may not begin or end with whitespace"
        if value.isprintable():
            return None
        bad = next(c for c in value if not c.isprintable())
        return f"may not contain U+{ord(bad):04X} (a control character)"
    if is_space(value[:1]) or is_space(value[-1:]):
        return "may not begin or end with whitespace"
    for char in value:
        why = refused_kind(char)
        if why is not None:
            return f"may not contain U+{ord(char):04X} ({why})"
    return None


class TextRefused(ValueError):
    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where, self.reason = where, reason


def line_fields(schema) -> frozenset[str]:
    """The members of a body's schema that are free text (`x-text: lines`), as paths with `[]` for an
    array's items: `description`, `lines[].note`."""
    found: set[str] = set()
    stack = [(schema, "")]
    while stack:
        node, path = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("x-text") == "lines":
            found.add(path)
        stack += [(sub, f"{path}.{key}" if path else key) for key, sub in (node.get("properties") or {}).items()]
        stack += [(node["items"], f"{path}[]")] if isinstance(node.get("items"), dict) else []
        stack += [(sub, path) for combo in ("allOf", "anyOf", "oneOf") for sub in node.get(combo, ())]
    return frozenset(found)


_INDEX = re.compile(r"\[\d+\]")


def canonical_strings(tree, lines: frozenset[str] = frozenset()):
    """`tree` (parsed JSON, its depth already bounded) with every string made canonical, in place;
    TextRefused naming the first string `refusal` refuses (`lines[0].name`). The members named in
    `lines` (line_fields) are free text."""
    if isinstance(tree, str):
        return _checked(tree, "", "" in lines)
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
                    container[key] = _checked(value, where, bool(lines) and _INDEX.sub("[]", where) in lines)
                else:
                    stack.append((value, where))
    return tree


def _checked(value: str, where: str, lines: bool = False) -> str:
    value = canonical(value, lines)
    reason = refusal(value, lines)
    if reason is not None:
        raise TextRefused(where, reason)
    return value
