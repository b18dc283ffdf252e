"""Golden tests of the byte formats in docs/format.md: a change here breaks existing stores."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datamon.api.bundles import encode_record
from datamon.cas.filemap import decode_filemap, encode_filemap
from datamon.cas.hashing import EMPTY_KEY, key_of
from datamon.cas.pack import (
    FOOTER,
    PACK_MAGIC,
    Compression,
    Kind,
    PackBuilder,
    PackFormatError,
    read_index,
)
from datamon.cas.tree import EntryKind, TreeEntry, decode_tree, encode_tree


def test_blake3_matches_b3sum() -> None:
    assert EMPTY_KEY.hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert key_of(b"hello\n").hex() == "8e4c7c1b99dbfd50e7a95185fead5ee1448fa904a2fdd778eaf5f2dbfd629a99"


def test_pack_layout() -> None:
    b = PackBuilder()
    b.add(b"\x01" * 32, b"abc", 3, Kind.CHUNK, Compression.NONE)
    b.add(b"\x02" * 32, b"zz", 10, Kind.TREE, Compression.ZSTD)
    name, data, entries = b.finish()
    assert data[:8] == PACK_MAGIC == b"DMPACK\x00\x01"
    assert data[8:13] == b"abczz"
    # index: 2 entries of 52 bytes, then the 52-byte footer
    assert len(data) == 8 + 5 + 2 * 52 + 52
    assert data[13 : 13 + 52] == b"\x01" * 32 + struct.pack("<QIIBBH", 8, 3, 3, 1, 0, 0)
    index_offset, count, index_hash, magic = FOOTER.unpack(data[-52:])
    assert (index_offset, count, magic) == (13, 2, b"DMPKEND1")
    assert index_hash == key_of(data[13 : 13 + 104])
    assert name == key_of(data).hex()
    assert [e.as_tuple() for e in read_index(data)] == [e.as_tuple() for e in entries]


def test_pack_golden_name() -> None:
    b = PackBuilder()
    b.add(b"\x01" * 32, b"abc", 3, Kind.CHUNK, Compression.NONE)
    name, _, _ = b.finish()
    assert name == GOLDEN_PACK_NAME


def test_damaged_pack_index_is_detected() -> None:
    b = PackBuilder()
    b.add(b"\x01" * 32, b"abc", 3, Kind.CHUNK, Compression.NONE)
    _, data, _ = b.finish()
    bad = bytearray(data)
    bad[12] ^= 0xFF  # inside the index
    with pytest.raises(PackFormatError):
        read_index(bytes(bad))
    with pytest.raises(PackFormatError):
        read_index(b"nope" + data[4:])


def _entries() -> list[TreeEntry]:
    return [
        TreeEntry("b.txt", EntryKind.FILE, 0o644, 1_700_000_000_000_000_000, 5, b"\x11" * 32),
        TreeEntry("a", EntryKind.DIR, 0o755, 1_700_000_000_000_000_001, 10, b"\x22" * 32),
        TreeEntry("ln", EntryKind.SYMLINK, 0o777, 3, 5, bytes(32), "b.txt"),
        TreeEntry("é", EntryKind.FILE, 0o755, -1, 0, EMPTY_KEY),
    ]


def test_tree_layout_and_golden_key() -> None:
    raw = encode_tree(_entries())
    assert raw.startswith(b"DMTREE\x00\x01" + struct.pack("<I", 4))
    # sorted by UTF-8 bytes: "a" < "b.txt" < "ln" < "é"
    assert [e.name for e in decode_tree(raw)] == ["a", "b.txt", "ln", "é"]
    first = raw[12:]
    assert first[:3] == struct.pack("<H", 1) + b"a"
    assert first[3 : 3 + 53] == struct.pack("<BIqQ32s", 2, 0o755, 1_700_000_000_000_000_001, 10, b"\x22" * 32)
    assert key_of(raw).hex() == GOLDEN_TREE_KEY


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20).filter(
                lambda s: "/" not in s and "\x00" not in s and s not in (".", "..")
            ),
            st.sampled_from(list(EntryKind)),
            st.integers(0, 0o7777),
            st.integers(-(2**63), 2**63 - 1),
            st.integers(0, 2**64 - 1),
            st.binary(min_size=32, max_size=32),
            st.text(max_size=30),
        ),
        unique_by=lambda t: t[0].encode("utf-8", "surrogateescape"),
        max_size=20,
    )
)
def test_tree_round_trip(items: list[tuple]) -> None:  # type: ignore[type-arg]
    # Only entries an honest writer produces (decode_tree refuses the rest): a target only on
    # a symlink (non-empty, no NUL, size = its length), sizes below 2**63.
    def valid(
        name: str, kind: EntryKind, mode: int, mtime: int, size: int, key: bytes, target: str
    ) -> TreeEntry:
        if kind == EntryKind.SYMLINK:
            target = target.replace("\x00", "") or "t"
            return TreeEntry(
                name, kind, mode, mtime, len(target.encode("utf-8", "surrogateescape")), key, target
            )
        return TreeEntry(name, kind, mode, mtime, size % 2**63, key)

    entries = [valid(*t) for t in items]
    decoded = decode_tree(encode_tree(entries))
    assert sorted(decoded, key=lambda e: e.name.encode("utf-8", "surrogateescape")) == decoded
    assert {e.name: e for e in decoded} == {e.name: e for e in entries}


def test_tree_rejects_bad_names() -> None:
    for bad in ["", ".", "..", "a/b"]:
        with pytest.raises(ValueError):
            encode_tree([TreeEntry(bad, EntryKind.FILE, 0o644, 0, 0)])
    with pytest.raises(ValueError):
        decode_tree(encode_tree(_entries())[:-3])


def test_filemap_layout() -> None:
    raw = encode_filemap([(b"\x01" * 32, 7), (b"\x02" * 32, 9)])
    assert raw[:8] == b"DMFMAP\x00\x01"
    assert raw[8:12] == struct.pack("<I", 2)
    assert raw[12:48] == b"\x01" * 32 + struct.pack("<I", 7)
    assert raw[-32:] == key_of(raw[:-32])
    assert decode_filemap(raw) == [(b"\x01" * 32, 7), (b"\x02" * 32, 9)]
    with pytest.raises(ValueError):
        decode_filemap(raw[:-1] + bytes([raw[-1] ^ 1]))


def test_bundle_record_is_canonical() -> None:
    raw = encode_record(
        repo="r",
        tree="ab" * 32,
        parents=["cd" * 32],
        message="first ünïcode",
        contributor_name="Ada",
        contributor_email="ada@example.com",
        time_ns=1_700_000_000_000_000_000,
        file_count=2,
        total_size=10,
    )
    assert raw == GOLDEN_RECORD
    assert key_of(raw).hex() == GOLDEN_RECORD_ID


GOLDEN_RECORD = (
    '{"contributor":{"email":"ada@example.com","name":"Ada"},"files":2,"message":"first ünïcode",'
    '"parents":["'
    + "cd" * 32
    + '"],"repo":"r","size":10,"time_ns":1700000000000000000,"tree":"'
    + "ab" * 32
    + '","version":1}'
).encode()
GOLDEN_PACK_NAME = "4a97ee126103957fb131324b3ee517e80c0df6103a30551f496f8df581f120a2"
GOLDEN_TREE_KEY = "2614e17efd66b339f05bd28aebddde1ee835ea8309ff50c777bbe2f4cbf859ef"
GOLDEN_RECORD_ID = "079f5c80438498b9cbad36211a7f6af8b17546125a9d456fc829dadc78fa2b9b"
