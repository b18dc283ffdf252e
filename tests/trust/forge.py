"""Building hostile store content through the same public calls an uploader uses.

A teammate with write access to a shared store can put any bytes in a pack and any row in
the index: these helpers do exactly that (``PackBuilder`` + ``BlobStore.put`` +
``add_pack``, ``make_bundle`` + ``add_bundle``), skipping only the validation that an honest
writer applies to its own input (``encode_tree`` refuses bad names, so ``raw_tree`` encodes
by hand).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from datamon.api.bundles import make_bundle
from datamon.api.context import Context
from datamon.cas.filemap import encode_filemap
from datamon.cas.hashing import ZERO_KEY, key_of
from datamon.cas.pack import Compression, Kind, PackBuilder, pack_blob_name
from datamon.meta.records import BundleRecord

FILE, DIR, SYMLINK = 1, 2, 3


@dataclass(frozen=True)
class RawEntry:
    """A tree entry with nothing checked: any name bytes, kind, size, key."""

    name: bytes
    kind: int = FILE
    mode: int = 0o644
    mtime_ns: int = 1_700_000_000_000_000_000
    size: int = 0
    key: bytes = ZERO_KEY
    target: bytes = b""


def raw_tree(entries: Sequence[RawEntry], *, sort: bool = True) -> bytes:
    """The tree encoding of ``entries`` (docs/format.md) without any validation."""
    items = sorted(entries, key=lambda e: e.name) if sort else list(entries)
    out = [b"DMTREE\x00\x01", struct.pack("<I", len(items))]
    for e in items:
        out += [
            struct.pack("<H", len(e.name)),
            e.name,
            struct.pack("<BIqQ32s", e.kind, e.mode, e.mtime_ns, e.size, e.key),
            struct.pack("<H", len(e.target)),
            e.target,
        ]
    return b"".join(out)


def put_objects(ctx: Context, objects: Sequence[tuple[bytes, bytes, int]]) -> None:
    """Store (key, raw bytes, kind) objects in a new pack, indexed under the given keys
    (the key need not be the hash of the bytes: that is the point). Existing index rows for
    a key win, as for any upload (first writer wins)."""
    b = PackBuilder()
    for key, raw, kind in objects:
        b.add(key, raw, len(raw), kind, Compression.NONE)
    put_pack(ctx, b)


def put_stored(ctx: Context, key: bytes, stored: bytes, raw_length: int, kind: int, compression: int) -> None:
    """One object whose stored bytes (e.g. a hand-made zstd frame) and index lengths are given."""
    b = PackBuilder()
    b.add(key, stored, raw_length, kind, compression)
    put_pack(ctx, b)


def put_pack(ctx: Context, builder: PackBuilder) -> str:
    name, data, entries = builder.finish()
    ctx.cas.blobs.put(pack_blob_name(name), bytes(data))
    ctx.meta.add_pack(name, len(data), [e.as_tuple() for e in entries])
    return name


def put_tree(ctx: Context, entries: Sequence[RawEntry], *, sort: bool = True) -> bytes:
    """Store a (possibly hostile) tree; returns its key (the hash of its bytes, as honest)."""
    raw = raw_tree(entries, sort=sort)
    key = key_of(raw)
    put_objects(ctx, [(key, raw, Kind.TREE)])
    return key


def put_chunk(ctx: Context, data: bytes) -> bytes:
    key = key_of(data)
    put_objects(ctx, [(key, data, Kind.CHUNK)])
    return key


def put_filemap(ctx: Context, file_key: bytes, chunks: Sequence[tuple[bytes, int]]) -> None:
    """A file map (well-formed, self-checksummed) stored under ``file_key``, lying or not."""
    put_objects(ctx, [(file_key, encode_filemap(chunks), Kind.FILEMAP)])


def put_bundle(
    ctx: Context, repo: str, root: bytes, *, files: int = 1, size: int = 0, message: str = "forged"
) -> BundleRecord:
    """A bundle record (valid id) naming ``root`` as its tree, added to ``repo``."""
    b = make_bundle(
        repo=repo,
        tree=root.hex(),
        parents=[],
        message=message,
        contributor_name="Mallory",
        contributor_email="mallory@example.com",
        time_ns=1_700_000_000_000_000_000 + files,
        file_count=files,
        total_size=size,
    )
    ctx.meta.add_bundle(b)
    return b
