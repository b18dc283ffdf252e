"""Content-defined chunking (FastCDC, via the compiled ``pyfastcdc``).

Boundaries depend only on content, so an insertion early in a file leaves later chunks
unchanged. The parameters are a store setting written once (``storeconfig.py``): changing
them changes every key and ruins deduplication. ``tests/cas/test_chunker.py`` pins the
boundaries of a fixed input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

KiB = 1024
MiB = 1024 * KiB


def _bounds() -> dict[str, tuple[int, int]]:
    """FastCDC's accepted sizes: from its pure-Python class (the compiled one does not expose them),
    else the values pyfastcdc 1.x documents."""
    try:
        from pyfastcdc.py.fastcdc import FastCDC as PyFastCDC

        return {
            k: (
                int(getattr(PyFastCDC, f"{k}_SIZE_LOWER_BOUND")),
                int(getattr(PyFastCDC, f"{k}_SIZE_UPPER_BOUND")),
            )
            for k in ("MIN", "AVG", "MAX")
        }
    except (ImportError, AttributeError):  # pragma: no cover - other pyfastcdc layouts
        return {"MIN": (64, 1 * MiB), "AVG": (256, 4 * MiB), "MAX": (1024, 16 * MiB)}


_BOUNDS = _bounds()


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB

    def to_dict(self) -> dict[str, int]:
        return {"min_size": self.min_size, "avg_size": self.avg_size, "max_size": self.max_size}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ChunkerParams:
        """Parameters read from a store's settings; ``ValueError`` unless they are whole numbers
        that FastCDC accepts (its own bounds, and ``min_size <= avg_size <= max_size``)."""
        if not isinstance(d, dict):
            raise ValueError("the chunker settings are not an object")
        values = []
        for key in ("min_size", "avg_size", "max_size"):
            v = d.get(key)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"chunker {key} is {str(v)[:40]!r}, not a whole number")
            values.append(v)
        params = cls(*values)
        params.validate()
        return params

    def validate(self) -> None:
        """``ValueError`` unless FastCDC accepts these sizes (its bounds are read from it)."""
        for key, value, lo, hi in (
            ("min_size", self.min_size, *_BOUNDS["MIN"]),
            ("avg_size", self.avg_size, *_BOUNDS["AVG"]),
            ("max_size", self.max_size, *_BOUNDS["MAX"]),
        ):
            if not lo <= value <= hi:
                raise ValueError(f"chunker {key} {value} is outside [{lo}, {hi}]")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(
                f"chunker sizes must satisfy min <= avg <= max, not {self.min_size}, "
                f"{self.avg_size}, {self.max_size}"
            )


class Chunker:
    """Cuts buffers and streams into chunks. Thread-safe (``FastCDC`` holds no per-call state)."""

    def __init__(self, params: ChunkerParams = ChunkerParams()) -> None:
        self.params = params
        self._cdc = FastCDC(
            avg_size=params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=1,
            seed=0,
        )
        # A window holds several maximal chunks so that carrying the last (possibly cut
        # short) chunk over to the next window costs little.
        self.window = max(16 * MiB, 4 * params.max_size)

    def cut(self, buf: bytes | bytearray | memoryview) -> list[memoryview]:
        """All chunks of a complete buffer (views into ``buf``)."""
        if not len(buf):
            return []
        view = memoryview(buf)
        return [view[c.offset : c.offset + c.length] for c in self._cdc.cut_buf(view)]

    def stream(self, f: BinaryIO) -> Iterator[list[memoryview]]:
        """Chunks of a stream, a window at a time, identical to cutting the whole stream.

        Each yielded list covers consecutive bytes. The views stay valid after the next
        window is read (each window is a fresh buffer), but holding them holds memory.
        Only the last chunk of a window can end at the window's edge rather than at a
        content-defined boundary, so it is carried over and cut again with what follows.
        """
        carry: bytes | memoryview = b""
        readinto = getattr(f, "readinto", None)
        while True:
            # A fresh buffer per window (the caller may still hold the previous window's views),
            # filled in place: no concatenation copy of the carried-over bytes.
            buf = bytearray(self.window)
            view = memoryview(buf)
            n = len(carry)
            view[:n] = carry
            while n < self.window:
                if readinto is not None:
                    got = readinto(view[n:])
                else:  # a plain reader (the Git LFS agent hashes what passes through read)
                    data = f.read(self.window - n)
                    got = len(data)
                    view[n : n + got] = data
                if not got:
                    break
                n += got
            eof = n < self.window
            if n == 0:
                return
            chunks = self.cut(view[:n])
            if eof:
                yield chunks
                return
            last = chunks.pop()
            carry = bytes(last)
            if chunks:
                yield chunks
