"""BLAKE3 keys: 32 bytes, shown as 64 lowercase hex characters (what ``b3sum`` prints)."""

from __future__ import annotations

from blake3 import blake3

KEY_SIZE = 32
ZERO_KEY = bytes(KEY_SIZE)
EMPTY_KEY = blake3(b"").digest()
_BIG = 8 << 20  # buffers this large are hashed with several threads


def key_of(data: bytes | bytearray | memoryview) -> bytes:
    """The BLAKE3 key of ``data``."""
    if len(data) >= _BIG:
        return blake3(data, max_threads=blake3.AUTO).digest()
    return blake3(data).digest()


def hex_key(key: bytes) -> str:
    return key.hex()


def parse_key(text: str) -> bytes:
    """Parse a 64-char hex key; raises ``ValueError`` on anything else."""
    if len(text) != 2 * KEY_SIZE:
        raise ValueError(f"not a {2 * KEY_SIZE}-character hex key: {text!r}")
    return bytes.fromhex(text)


class Hasher:
    """Incremental BLAKE3 of a stream (a whole file's key)."""

    def __init__(self) -> None:
        self._h = blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()
