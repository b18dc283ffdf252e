"""Locating objects through pack indexes (``cas/packindex.py``): a pack's own index is store
content like an index row, so it can make a read fail over to the row, never deliver wrong
bytes, and a damaged copy it names never wins over the copy the index row names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datamon.api.context import connect
from datamon.cas.hashing import key_of
from datamon.cas.pack import ENTRY, Compression, Kind, PackBuilder, pack_blob_name
from tests.trust.forge import RawEntry, put_bundle, put_pack, put_tree

A, B = b"content of a", b"content of b"


def _bundle(ctx: Any, keys: list[tuple[bytes, bytes, int]]) -> str:
    root = put_tree(ctx, [RawEntry(name, size=size, key=key) for name, key, size in keys])
    return put_bundle(ctx, "r", root, files=len(keys), size=sum(s for _, _, s in keys)).id


def _download(dm: Any, bid: str, out: Path) -> None:
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out)
    assert r.code == 0, r
    assert (out / "a.bin").read_bytes() == A and (out / "b.bin").read_bytes() == B


def test_a_damaged_copy_in_a_pack_index_loses_to_the_index_row(dm: Any, tmp_path: Path) -> None:
    """Pack P1 holds a.bin's chunk and a damaged copy of b.bin's; the index row of b.bin's
    chunk names its good copy in pack P2 (an upload re-stored it). A download that finds
    b.bin in P1's index reads the damaged copy, refuses it, and takes the index row's."""
    assert dm("repo", "create", "--repo", "r").code == 0
    ka, kb = key_of(A), key_of(B)
    with connect() as ctx:
        p1 = PackBuilder()
        p1.add(ka, A, len(A), Kind.CHUNK, Compression.NONE)
        p1.add(kb, b"damaged of b", len(B), Kind.CHUNK, Compression.NONE)
        put_pack(ctx, p1)
        p2 = PackBuilder()
        p2.add(kb, B, len(B), Kind.CHUNK, Compression.NONE)
        name, data, entries = p2.finish()
        ctx.cas.blobs.put(pack_blob_name(name), bytes(data))
        ctx.meta.add_pack(name, len(data), [e.as_tuple() for e in entries], replace_keys=[kb])
        bid = _bundle(ctx, [(b"a.bin", ka, len(A)), (b"b.bin", kb, len(B))])
    _download(dm, bid, tmp_path / "out")


@pytest.mark.parametrize("damage", ["index hash", "entry offset"])
def test_a_lying_pack_index_is_not_believed(dm: Any, tmp_path: Path, damage: str) -> None:
    """A pack whose own index fails its hash is not used at all; one whose index (with a
    matching hash) points an entry at another object's bytes makes that read fail over to
    the index row. Either way the download writes the right bytes."""
    from datamon.cas.pack import FOOTER

    assert dm("repo", "create", "--repo", "r").code == 0
    ka, kb = key_of(A), key_of(B)
    with connect() as ctx:
        p = PackBuilder()
        p.add(ka, A, len(A), Kind.CHUNK, Compression.NONE)
        p.add(kb, B, len(B), Kind.CHUNK, Compression.NONE)
        name, data, entries = p.finish()
        raw = bytearray(data)
        index_offset = len(raw) - FOOTER.size - 2 * ENTRY.size
        if damage == "index hash":
            raw[index_offset + ENTRY.size + 32] ^= 1  # b's offset, without fixing the hash
        else:  # b's entry names a's offset and length; the footer's hash made to match
            ea = ENTRY.unpack_from(raw, index_offset)
            raw[index_offset + ENTRY.size : index_offset + 2 * ENTRY.size] = ENTRY.pack(kb, *ea[1:])
            index = bytes(raw[index_offset : index_offset + 2 * ENTRY.size])
            raw[-FOOTER.size :] = FOOTER.pack(index_offset, 2, key_of(index), b"DMPKEND1")
        ctx.cas.blobs.put(pack_blob_name(name), bytes(raw))
        ctx.meta.add_pack(name, len(raw), [e.as_tuple() for e in entries])  # honest rows
        bid = _bundle(ctx, [(b"a.bin", ka, len(A)), (b"b.bin", kb, len(B))])
    _download(dm, bid, tmp_path / "out")
