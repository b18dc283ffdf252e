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
from collections.abc import Sequence
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
    """Accumulates stored objects in memory; ``finish`` returns (name, bytes, entries).

    Entries are kept as plain tuples (an upload of a million small files adds a million):
    ``finish_rows`` hands them over as such, ``finish`` and ``entries`` as ``PackEntry``.
    The buffer grows once, from 64 KiB straight to ``capacity`` (a bytearray grows by an
    eighth at a time, copying a 32 MiB pack about eight times over while it fills)."""

    _INITIAL = 1 << 16

    def __init__(self, capacity: int = (32 << 20) + (1 << 20)) -> None:
        """``capacity``: the size the buffer grows to when 64 KiB are not enough (then by an
        eighth as needed); the writer passes its pack size plus a little."""
        self._cap = capacity
        self._buf = bytearray(self._INITIAL)
        self._buf[: len(PACK_MAGIC)] = PACK_MAGIC
        self._len = len(PACK_MAGIC)
        self._rows: list[tuple[bytes, int, int, int, int, int]] = []
        self.replace_keys: list[bytes] = []  # keys whose existing index rows this pack replaces

    def __len__(self) -> int:
        return self._len

    @property
    def count(self) -> int:
        return len(self._rows)

    @property
    def entries(self) -> list[PackEntry]:
        return [PackEntry(*r) for r in self._rows]

    def keys(self) -> list[bytes]:
        return [r[0] for r in self._rows]

    def _reserve(self, end: int) -> None:
        cap = len(self._buf)
        if end > cap:
            new = self._cap if end <= self._cap else end + (end >> 3)
            self._buf.extend(bytes(new - cap))

    def add(
        self, key: bytes, stored: bytes | memoryview, raw_length: int, kind: int, compression: int
    ) -> None:
        off = self._len
        end = off + len(stored)
        self._reserve(end)
        self._buf[off:end] = stored
        self._rows.append((key, off, end - off, raw_length, kind, compression))
        self._len = end

    def add_many(
        self, items: Sequence[tuple[bytes, bytes | memoryview, int, int, int]], start: int, limit: int
    ) -> int:
        """Add ``items[start:]`` — (key, stored, raw_length, kind, compression) — until the pack
        holds ``limit`` bytes or more; returns the index of the first item not added."""
        rows = self._rows
        buf = self._buf
        off = self._len
        i, n = start, len(items)
        while i < n:
            key, stored, raw_length, kind, compression = items[i]
            end = off + len(stored)
            if end > len(buf):
                self._reserve(end)
                buf = self._buf
            buf[off:end] = stored
            rows.append((key, off, end - off, raw_length, kind, compression))
            off = end
            i += 1
            if off >= limit:
                break
        self._len = off
        return i

    def finish_rows(self) -> tuple[str, bytes, list[tuple[bytes, int, int, int, int, int]]]:
        """Seal the pack: (name, bytes, index rows as ``(key, offset, length, raw_length, kind,
        compression)`` tuples). The builder is empty afterwards."""
        index_offset = self._len
        pack = ENTRY.pack
        index = b"".join([pack(*r, 0) for r in self._rows])
        footer = FOOTER.pack(index_offset, len(self._rows), key_of(index), FOOTER_MAGIC)
        end = index_offset + len(index) + len(footer)
        self._reserve(end)
        buf = self._buf
        buf[index_offset : index_offset + len(index)] = index
        buf[index_offset + len(index) : end] = footer
        del buf[end:]
        # Hand over the buffer itself: copying a 32 MiB pack would double its memory.
        data, self._buf, self._len = buf, bytearray(), 0
        rows, self._rows = self._rows, []
        return key_of(data).hex(), data, rows  # type: ignore[return-value]

    def finish(self) -> tuple[str, bytes, list[PackEntry]]:
        name, data, rows = self.finish_rows()
        return name, data, [PackEntry(*r) for r in rows]


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
