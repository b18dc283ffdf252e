"""Which repo and label names datamon accepts, and the checks every entry point shares.

The rule (``docs/security.md``): a name is 1 to 255 characters, each of them

* a Unicode letter (categories Lu, Ll, Lt, Lm, Lo) or decimal digit (Nd),
* a hyphen (the Unicode ``Hyphen`` property: ``-`` and its look-alikes, as Go's ``unicode.Hyphen``),
* connector punctuation (category Pc: ``_`` and its look-alikes), or
* ``.``, but not as the first character and never two in a row (``v1.2`` yes; ``.``, ``..``,
  ``.hidden`` and ``a..b`` no).

That is a superset of what the original Go datamon accepts (``pkg/model/repo.go`` ``ValidateRepo``:
letters, digits and hyphens; ``pkg/model/label.go`` ``ValidateLabel``: letters, digits, hyphens and
connector punctuation; neither allows an empty name), plus the dot that labels such as ``v1.2``
need. Everything else is refused when a name is created or a label is set: ``/``, spaces,
control characters, NUL, characters that are not valid UTF-8 (surrogate escapes from a non-UTF-8
command line), ``..``. 255 characters is the width of the name columns.

Names stored by an older datamon that break the rule stay usable where that cannot hurt: they are
listed (escaped when shown) and can be deleted, because lookups only apply ``check_lookup`` (not
empty, no NUL, valid UTF-8, at most 1024 characters).
"""

from __future__ import annotations

import unicodedata
from typing import Final

from datamon.errors import UsageError

MAX_LENGTH: Final = 255
_LOOKUP_MAX: Final = 1024
# Go's unicode.Hyphen range table.
HYPHENS: Final = frozenset("\u002d\u00ad\u058a\u1806\u2010\u2011\u2e17\u30fb\ufe63\uff0d\uff65")
_RULE: Final = (
    "use letters, digits, '-', '_' and '.' (not first, not doubled), at most "
    f"{MAX_LENGTH} characters, e.g. prod or v1.2"
)


def _char_ok(c: str) -> bool:
    if c in HYPHENS or c == ".":
        return True
    cat = unicodedata.category(c)
    return cat[0] == "L" or cat in ("Nd", "Pc")


def name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid repo or label name, or ``None`` if it is."""
    if not isinstance(name, str):
        return "it is not a string"
    if not name:
        return "it is empty"
    if len(name) > MAX_LENGTH:
        return f"it is longer than {MAX_LENGTH} characters"
    if name[0] == ".":
        return "it starts with '.'"
    if ".." in name:
        return "it contains '..'"
    for c in name:
        if not _char_ok(c):
            return f"it contains {_describe(c)}"
    return None


def _describe(c: str) -> str:
    if "\udc80" <= c <= "\udcff":
        return "bytes that are not UTF-8"
    if c == "/":
        return "'/'"
    if c == "\x00":
        return "a NUL character"
    if c.isspace():
        return "white space"
    if not c.isprintable():
        return f"the control character U+{ord(c):04X}"
    return f"{c!r}"


def is_valid(name: object) -> bool:
    return name_problem(name) is None


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid ``kind`` (``"repo"``/``"label"``) name to create; else ``UsageError``."""
    why = name_problem(name)
    if why is not None:
        raise UsageError(f"{kind} name {_shown(name)} is not allowed: {why}", _RULE)
    return name


def check_lookup(kind: str, name: str) -> str:
    """``name`` if it can name an existing ``kind`` at all (names stored by older versions included):
    not empty, no NUL, valid UTF-8, not absurdly long. Else ``UsageError``."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"the {kind} name is empty", f"give a {kind} name; {_RULE}")
    if len(name) > _LOOKUP_MAX or "\x00" in name or any("\ud800" <= c <= "\udfff" for c in name):
        raise UsageError(f"{kind} name {_shown(name)} is not allowed: {name_problem(name)}", _RULE)
    return name


def check_text(what: str, text: str) -> str:
    """``text`` (a message, a description) if it can be stored: valid UTF-8 and no NUL."""
    if "\x00" in text:
        raise UsageError(f"the {what} contains a NUL character", f"remove it from the {what}")
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise UsageError(f"the {what} is not valid UTF-8", f"write the {what} in UTF-8")
    return text


def _shown(name: object) -> str:
    s = repr(name)
    return s if len(s) <= 80 else s[:77] + "..."
