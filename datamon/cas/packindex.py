"""Locating many objects through the index every pack ends with, instead of one row each.

A download of a million small files needs the pack, offset and lengths of a million chunks.
Asked of the metadata database that is one B-tree probe per key (8 µs of CPU per key on
SQLite, a round trip per batch on PostgreSQL); yet the chunks of one directory were written
together, so they sit in one or two packs, and every pack carries its own index of what it
holds (``cas/pack.py``). ``PackLocator.locate`` asks the database for *one* key of a batch,
reads that pack's trailing index (once: the last few are kept), and takes the locations of
every other key of the batch that the pack holds from it; only keys no kept pack holds are
looked up in the database, as before.

Trust: a pack's index is store content like an index row. Its hash is checked against the
footer, and each entry used is checked as ``cas.pack.parse_index`` checks it (known kind and
compression, reserved bytes zero, lengths consistent, the object inside the data section);
a bad pack index, or a pack that cannot be read, is simply not used. What a location says is
then checked again before anything is fetched (``check_location``) and every object read is
verified against its key, so a pack index can make a read fail, never return wrong bytes. A
caller that gets ``CorruptObject`` for an object located this way retries with the
database's row (``ObjectReader.locate``): an upload may have re-stored an object whose old
copy was damaged, and the database row names the good copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from datamon.cas.blobstore import BlobStore
from datamon.cas.hashing import key_of
from datamon.cas.objects import Location, ObjectIndex
from datamon.cas.pack import (
    ENTRY,
    FOOTER,
    HEADER_SIZE,
    Compression,
    PackFormatError,
    pack_blob_name,
    parse_footer,
)
from datamon.errors import DatamonError, MissingObject

KEEP_PACKS = 4  # pack indexes kept (about 100 bytes per object: 6 MB for a 32 MiB pack of 500 B objects)
PROBES = 2  # database lookups of single keys per batch before the rest is looked up at once
MAX_INDEX_BYTES = 64 << 20  # a pack index larger than this is not read (the database answers)
_KINDS = frozenset((1, 2, 3))
_COMPRESSIONS = frozenset(int(c) for c in Compression)
_unpack = ENTRY.unpack_from


class _PackIndex:
    __slots__ = ("data", "end", "name", "pos")

    def __init__(self, name: str, data: bytes, end: int) -> None:
        self.name = name
        self.data = data  # the index entries, hash checked
        self.end = end  # where the data section ends (the index offset)
        size = ENTRY.size
        self.pos = {data[i : i + 32]: i for i in range(0, len(data), size)}

    def location(self, key: bytes) -> Location | None:
        i = self.pos.get(key)
        if i is None:
            return None
        _, off, length, raw, kind, comp, reserved = _unpack(self.data, i)
        if (
            off < HEADER_SIZE
            or off + length > self.end
            or kind not in _KINDS
            or comp not in _COMPRESSIONS
            or reserved
            or length == 0
            or length > raw
            or (comp == Compression.NONE and length != raw)
        ):
            return None  # an entry parse_index refuses: the database decides
        return Location(key, self.name, off, length, raw, kind, comp)


class PackLocator:
    """Locations of objects, from pack indexes where possible (module docstring). Thread-safe."""

    def __init__(self, blobs: BlobStore, index: ObjectIndex, keep: int = KEEP_PACKS) -> None:
        self.blobs = blobs
        self.index = index
        self.keep = keep
        self._packs: OrderedDict[str, _PackIndex | None] = OrderedDict()  # None: not usable
        self._lock = threading.Lock()
        self.db_keys = 0  # keys looked up in the database (statistics, tests)
        self.pack_keys = 0  # keys located through a pack index

    def locate(self, keys: Sequence[bytes]) -> dict[bytes, Location]:
        """Locations of ``keys``; ``MissingObject`` for a key neither a kept pack nor the
        database knows."""
        out: dict[bytes, Location] = {}
        with self._lock:
            packs = [p for p in reversed(self._packs.values()) if p is not None]
        todo = self._from_packs(keys, packs, out)
        probes = 0
        while todo and probes < PROBES:
            probes += 1
            first = todo[0]
            row = self.index.lookup_objects([first]).get(first)
            self.db_keys += 1
            if row is None:
                raise MissingObject(first.hex(), "not in the object index")
            out[first] = Location.from_row(row)
            pack = self._load(row[1])
            if pack is None:
                todo = todo[1:]
                break
            todo = self._from_packs(todo[1:], [pack], out)
        if todo:
            rows = self.index.lookup_objects(todo)
            self.db_keys += len(todo)
            for k in todo:
                row = rows.get(k)
                if row is None:
                    raise MissingObject(k.hex(), "not in the object index")
                out[k] = Location.from_row(row)
        return out

    def _from_packs(
        self, keys: Sequence[bytes], packs: list[_PackIndex], out: dict[bytes, Location]
    ) -> list[bytes]:
        """Locate what ``packs`` hold into ``out``; the keys left."""
        todo = []
        found = 0
        for k in keys:
            if k in out:
                continue
            for p in packs:
                loc = p.location(k)
                if loc is not None:
                    out[k] = loc
                    found += 1
                    break
            else:
                todo.append(k)
        self.pack_keys += found
        return todo

    def _load(self, name: str) -> _PackIndex | None:
        with self._lock:
            if name in self._packs:
                self._packs.move_to_end(name)
                return self._packs[name]
            pack = self._read(name)
            self._packs[name] = pack
            while len(self._packs) > self.keep:
                self._packs.popitem(last=False)
            return pack

    def _read(self, name: str) -> _PackIndex | None:
        blob = pack_blob_name(name)
        try:
            size = self.blobs.size(blob)
            if size is None or size < HEADER_SIZE + FOOTER.size:
                return None
            index_offset, count, index_hash = parse_footer(
                self.blobs.get(blob, size - FOOTER.size, size), size
            )
            length = count * ENTRY.size
            if length > MAX_INDEX_BYTES:
                return None
            data = self.blobs.get(blob, index_offset, index_offset + length)
        except (DatamonError, PackFormatError, OSError):
            return None
        if len(data) != length or key_of(data) != index_hash:
            return None
        return _PackIndex(name, bytes(data), index_offset)
