"""File maps: the chunk list of a file of several chunks, stored under the file's key.

::

    b"DMFMAP\\x00\\x01" | count u32 | count × (chunk key 32 bytes | length u32) | blake3(all before) 32 bytes

The file key is the hash of the file's content, not of the map, so the map's own checksum
proves only that the map is undamaged, never that it belongs to the key it is stored under.
A writer with access to the store can index a well-formed map of *other* chunks under any
file key; what proves a map is the whole file's hash, which every reader checks
(``ContentStore.iter_file``, ``LazyFile``, the FUSE mount, ``verify --full``) and which an
upload checks by comparing the stored map with the one it computed (``cas/ingest.py``).

``decode_filemap`` refuses what no honest writer stores: fewer than 2 chunks (a file of one
chunk is stored as that chunk, under its own key), a chunk length of 0 or above the
chunker's maximum, and a count that does not match the length. The total of the lengths
is checked against the tree entry's size by ``ContentStore.file_chunks``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from datamon.cas.hashing import key_of

MAGIC = b"DMFMAP\x00\x01"
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<32sI")
OVERHEAD = len(MAGIC) + _COUNT.size + 32  # bytes of a map beyond its entries
ENTRY_SIZE = _ENTRY.size
MIN_CHUNKS = 2


class FileMapFormatError(ValueError):
    """A file map that no honest writer produces."""


def filemap_size(count: int) -> int:
    """Length in bytes of the encoding of a map of ``count`` chunks."""
    return OVERHEAD + ENTRY_SIZE * count


def encode_filemap(chunks: Sequence[tuple[bytes, int]]) -> bytes:
    body = MAGIC + _COUNT.pack(len(chunks)) + b"".join(_ENTRY.pack(k, n) for k, n in chunks)
    return body + key_of(body)


def check_filemap(raw: bytes | bytearray | memoryview) -> bool:
    raw = bytes(raw)
    return len(raw) >= OVERHEAD and raw.startswith(MAGIC) and key_of(raw[:-32]) == raw[-32:]


def decode_filemap(
    raw: bytes | bytearray | memoryview, max_chunk: int | None = None
) -> list[tuple[bytes, int]]:
    """(chunk key, length) pairs; raises ``FileMapFormatError`` (a ``ValueError``) on a damaged
    or impossible map. ``max_chunk`` is the store's largest chunk (``ChunkerParams.max_size``)."""
    raw = bytes(raw)
    if not check_filemap(raw):
        raise FileMapFormatError("damaged file map")
    (count,) = _COUNT.unpack_from(raw, len(MAGIC))
    if filemap_size(count) != len(raw):
        raise FileMapFormatError("file map length mismatch")
    if count < MIN_CHUNKS:
        raise FileMapFormatError(f"file map of {count} chunks (a file of one chunk has no map)")
    base = len(MAGIC) + _COUNT.size
    out = [_ENTRY.unpack_from(raw, base + i * ENTRY_SIZE) for i in range(count)]
    limit = max_chunk if max_chunk is not None else 0xFFFFFFFF
    for i, (_, n) in enumerate(out):
        if not 1 <= n <= limit:
            raise FileMapFormatError(f"file map chunk {i} has impossible length {n}")
    return out
