"""Pack format: many stored objects plus a trailing index (byte layout in docs/format.md).

::

    header  8 bytes   b"DMPACK\\x00\\x01"
    data    stored objects back to back (zstd frames or raw bytes)
    index   count × 52-byte entries: key(32) offset(u64) length(u32) raw_length(u32)
            kind(u8) compression(u8) reserved(u16), little-endian, in write order
    footer  52 bytes: index_offset(u64) count(u32) blake3(index)(32) b"DMPKEND1"

A pack is named by the BLAKE3 of all its bytes and is never modified, so the global index
can be rebuilt from the packs alone (``read_index``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from datamon.cas.hashing import key_of

PACK_MAGIC = b"DMPACK\x00\x01"
FOOTER_MAGIC = b"DMPKEND1"
ENTRY = struct.Struct("<32sQIIBBH")
FOOTER = struct.Struct("<QI32s8s")
HEADER_SIZE = len(PACK_MAGIC)


class Kind(IntEnum):
    CHUNK = 1
    FILEMAP = 2
    TREE = 3


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1


@dataclass(frozen=True)
class PackEntry:
    key: bytes
    offset: int
    length: int
    raw_length: int
    kind: int
    compression: int

    def as_tuple(self) -> tuple[bytes, int, int, int, int, int]:
        return (self.key, self.offset, self.length, self.raw_length, self.kind, self.compression)


class PackFormatError(ValueError):
    pass


def pack_blob_name(pack_name: str) -> str:
    return f"packs/{pack_name[:2]}/{pack_name}.pack"


class PackBuilder:
    """Accumulates stored objects in memory; ``finish`` returns (name, bytes, entries)."""

    def __init__(self) -> None:
        self._buf = bytearray(PACK_MAGIC)
        self.entries: list[PackEntry] = []
        self.replace_keys: list[bytes] = []  # keys whose existing index rows this pack replaces

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def count(self) -> int:
        return len(self.entries)

    def add(self, key: bytes, stored: bytes, raw_length: int, kind: int, compression: int) -> None:
        self.entries.append(PackEntry(key, len(self._buf), len(stored), raw_length, kind, compression))
        self._buf += stored

    def finish(self) -> tuple[str, bytes, list[PackEntry]]:
        index_offset = len(self._buf)
        index = b"".join(
            ENTRY.pack(e.key, e.offset, e.length, e.raw_length, e.kind, e.compression, 0)
            for e in self.entries
        )
        self._buf += index
        self._buf += FOOTER.pack(index_offset, len(self.entries), key_of(index), FOOTER_MAGIC)
        # Hand over the buffer itself: copying a 32 MiB pack would double its memory.
        data, self._buf = self._buf, bytearray()
        return key_of(data).hex(), data, self.entries  # type: ignore[return-value]


MAX_ENTRIES = 1 << 24  # objects per pack a reader accepts (a 32 MiB pack holds < 1M)


def parse_footer(footer: bytes | bytearray | memoryview, pack_size: int) -> tuple[int, int, bytes]:
    """(index_offset, count, index_hash) from the last ``FOOTER.size`` bytes of a pack.

    Checked before anything is allocated for the index: the count is bounded and the index
    must end exactly where the footer starts, at or after the header."""
    if len(footer) != FOOTER.size:
        raise PackFormatError("pack is too short to hold a footer")
    index_offset, count, index_hash, magic = FOOTER.unpack(bytes(footer))
    if magic != FOOTER_MAGIC:
        raise PackFormatError("pack footer magic is wrong")
    if count > MAX_ENTRIES:
        raise PackFormatError(f"pack footer claims {count} objects (at most {MAX_ENTRIES})")
    if index_offset < HEADER_SIZE or index_offset + count * ENTRY.size + FOOTER.size != pack_size:
        raise PackFormatError("pack footer does not match the pack size")
    return index_offset, count, index_hash


_KINDS = frozenset(int(k) for k in Kind)
_COMPRESSIONS = frozenset(int(c) for c in Compression)


def parse_index(
    index: bytes | bytearray | memoryview, count: int, index_hash: bytes, index_offset: int
) -> list[PackEntry]:
    """Decode and check a pack's index bytes: the hash, then every entry's kind, compression,
    reserved bytes, lengths (raw: stored == raw length; zstd: stored <= raw length; never 0)
    and placement inside ``[HEADER_SIZE, index_offset)``."""
    if not 0 <= count <= MAX_ENTRIES or len(index) != count * ENTRY.size:
        raise PackFormatError("pack index length does not match its count")
    index = bytes(index)
    if key_of(index) != index_hash:
        raise PackFormatError("pack index does not match its hash")
    entries = []
    for i in range(count):
        key, off, length, raw, kind, comp, reserved = ENTRY.unpack_from(index, i * ENTRY.size)
        if off < HEADER_SIZE or off + length > index_offset:
            raise PackFormatError(f"pack index entry {i} points outside the data")
        if kind not in _KINDS or comp not in _COMPRESSIONS or reserved:
            raise PackFormatError(
                f"pack index entry {i} has kind {kind}, compression {comp}, reserved {reserved}"
            )
        if length == 0 or length > raw or (comp == Compression.NONE and length != raw):
            raise PackFormatError(f"pack index entry {i} has stored length {length} for raw length {raw}")
        entries.append(PackEntry(key, off, length, raw, kind, comp))
    return entries


def read_index(data_or_reader: bytes | bytearray | memoryview) -> list[PackEntry]:
    """Index of a whole pack held in memory (used by tests and by ``verify --full``)."""
    data = bytes(data_or_reader)
    if not data.startswith(PACK_MAGIC):
        raise PackFormatError("not a datamon pack (bad magic)")
    index_offset, count, index_hash = parse_footer(data[-FOOTER.size :], len(data))
    return parse_index(
        data[index_offset : index_offset + count * ENTRY.size], count, index_hash, index_offset
    )
