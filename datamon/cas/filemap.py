"""File maps: the chunk list of a file of several chunks, stored under the file's key.

::

    b"DMFMAP\\x00\\x01" | count u32 | count × (chunk key 32 bytes | length u32) | blake3(all before) 32 bytes

The file key is the hash of the file's content, not of the map, so the map carries its
own checksum; readers also check the whole file's hash when they read all of it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from datamon.cas.hashing import key_of

MAGIC = b"DMFMAP\x00\x01"
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<32sI")


def encode_filemap(chunks: Sequence[tuple[bytes, int]]) -> bytes:
    body = MAGIC + _COUNT.pack(len(chunks)) + b"".join(_ENTRY.pack(k, n) for k, n in chunks)
    return body + key_of(body)


def check_filemap(raw: bytes) -> bool:
    return len(raw) >= len(MAGIC) + 4 + 32 and raw.startswith(MAGIC) and key_of(raw[:-32]) == raw[-32:]


def decode_filemap(raw: bytes) -> list[tuple[bytes, int]]:
    """(chunk key, length) pairs; raises ``ValueError`` on a damaged map."""
    if not check_filemap(raw):
        raise ValueError("damaged file map")
    (count,) = _COUNT.unpack_from(raw, len(MAGIC))
    base = len(MAGIC) + 4
    if base + count * _ENTRY.size + 32 != len(raw):
        raise ValueError("file map length mismatch")
    return [_ENTRY.unpack_from(raw, base + i * _ENTRY.size) for i in range(count)]
