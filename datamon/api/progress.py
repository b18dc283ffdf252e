"""How long-running verbs report progress; the CLI renders it, the api only counts."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, files: int, nbytes: int) -> None: ...

    def advance(self, files: int, nbytes: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int, nbytes: int) -> None:
        pass

    def finish(self) -> None:
        pass
