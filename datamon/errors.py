"""Errors a user can cause, each carrying its exit code and a hint saying what to do next.

Every layer raises these; only the CLI turns them into a message line and an exit code.
Anything that is not a ``DatamonError`` is a bug and is shown with a traceback.

Exit codes (documented in README and ``docs/cli.md``):
0 ok, 1 error, 2 not found, 3 conflict, 4 integrity failure.
"""

from __future__ import annotations

from collections.abc import Sequence


class DatamonError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is one line."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(DatamonError):
    """Bad input: a missing path, a non-empty destination, a malformed argument."""


class NotFound(DatamonError, KeyError):
    """A repo, bundle, label, file or object that does not exist (exit 2)."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would quote the message
        return DatamonError.__str__(self)


class AmbiguousId(DatamonError):
    """An id prefix that matches several bundles (exit 1); lists the candidates."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        shown = ", ".join(candidates[:10])
        super().__init__(
            f"bundle id prefix {prefix!r} is ambiguous: it matches {shown}",
            "give more characters of the id",
        )
        self.candidates = list(candidates)


class Conflict(DatamonError):
    """Something already exists or moved under us: repo exists, label moved (exit 3)."""

    exit_code = 3


class LabelMoved(Conflict):
    """A compare-and-swap label move lost the race; carries the label's current bundle."""

    def __init__(self, repo: str, label: str, expected: str | None, current: str | None) -> None:
        super().__init__(
            f"label {label!r} in repo {repo!r} points at {current or 'nothing'}, "
            f"not at {expected or 'nothing'} as expected",
            "check `datamon label get` and retry with --expected set to the current bundle",
        )
        self.repo = repo
        self.label = label
        self.expected = expected
        self.current = current


class IntegrityError(DatamonError):
    """Stored bytes do not hash to their key, or a referenced object is missing (exit 4)."""

    exit_code = 4


class CorruptObject(IntegrityError):
    def __init__(self, key: str, where: str, detail: str = "") -> None:
        super().__init__(
            f"object {key} in {where} is corrupt{': ' + detail if detail else ''}",
            "run `datamon verify --full --repair`, then upload the original data again to repair it",
        )
        self.key = key
        self.where = where


class MissingObject(IntegrityError):
    def __init__(self, key: str, detail: str = "") -> None:
        super().__init__(
            f"object {key} is missing from the store{': ' + detail if detail else ''}",
            "run `datamon verify --full --repair`, then upload the original data again to repair it",
        )
        self.key = key


class SchemaTooNew(DatamonError):
    """The metadata database was written by a newer datamon."""


class StoreUnavailable(DatamonError):
    """A blob store or database cannot be reached or refuses our credentials."""
