"""How long-running verbs report progress; the CLI renders it, the api only counts.

A streaming verb (``upload`` walks the tree a directory at a time) does not know its totals
up front: it calls ``start(0, 0)`` and then ``grow`` as it discovers files. ``grow`` is
optional for implementations (the api checks for it), so an older ``Progress`` keeps working
with totals that stay at what ``start`` said.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, files: int, nbytes: int) -> None: ...

    def advance(self, files: int, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class GrowingProgress(Progress, Protocol):
    def grow(self, files: int, nbytes: int) -> None:
        """Raise the totals given to ``start`` by ``files`` and ``nbytes``."""
        ...


class NoProgress:
    def start(self, files: int, nbytes: int) -> None:
        pass

    def grow(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass
