"""Fuzzing the decoders of hostile store bytes: random and mutated trees, file maps, pack
footers/indexes and compressed objects either decode to something valid or raise the
documented error (``ValueError`` subclasses, ``CorruptObject``) — never anything else."""

from __future__ import annotations

import struct

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamon.cas.filemap import decode_filemap, encode_filemap
from datamon.cas.hashing import key_of
from datamon.cas.objects import Location, decode_object
from datamon.cas.pack import FOOTER, PackBuilder, PackFormatError, parse_footer, parse_index, read_index
from datamon.cas.tree import MAX_SIZE, EntryKind, TreeEntry, decode_tree, encode_tree, scan_tree
from datamon.errors import CorruptObject
from tests.trust.forge import RawEntry, raw_tree

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_CHUNK = 1 << 20

names = st.binary(min_size=0, max_size=12)
raw_entries = st.builds(
    RawEntry,
    name=names,
    kind=st.integers(0, 5),
    mode=st.sampled_from([0, 0o644, 0o755, 0o7777, 0o10000, 2**32 - 1]),
    mtime_ns=st.integers(-(2**63), 2**63 - 1),
    size=st.sampled_from([0, 1, 3, 255, 2**63 - 1, 2**63, 2**64 - 1]),
    key=st.binary(min_size=32, max_size=32),
    target=st.binary(max_size=8),
)


def honest_trees() -> st.SearchStrategy[bytes]:
    def entry(name: str, kind: EntryKind, target: str, size: int) -> TreeEntry:
        if kind == EntryKind.SYMLINK:
            target = target.replace("\x00", "") or "t"
            return TreeEntry(
                name, kind, 0o777, 0, len(target.encode("utf-8", "surrogateescape")), bytes(32), target
            )
        return TreeEntry(name, kind, 0o644, 1, size, b"\x11" * 32)

    good_names = st.text(min_size=1, max_size=8).filter(
        lambda s: "/" not in s and "\x00" not in s and s not in (".", "..")
    )
    ents = st.lists(
        st.builds(
            entry, good_names, st.sampled_from(list(EntryKind)), st.text(max_size=5), st.integers(0, MAX_SIZE)
        ),
        unique_by=lambda e: e.name,
        max_size=6,
    )
    return ents.map(encode_tree)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with bit flips, truncation, or bytes (maybe another valid encoding)
    inserted."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "count"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(base)
        elif op == "count" and len(data) >= 12:
            data[8:12] = struct.pack("<I", draw(st.sampled_from([0, 1, 2, 255, 2**16, 2**32 - 1])))
    return bytes(data)


def check_tree(raw: bytes) -> None:
    try:
        entries = decode_tree(raw)
    except ValueError as e:
        # the mount's columnar decoder refuses the same trees with the same error
        with pytest.raises(ValueError) as other:
            scan_tree(raw)
        assert str(other.value) == str(e)
        return
    cols = scan_tree(raw)
    assert [cols.entry(i) for i in range(len(cols))] == entries
    assert cols.names == [e.name.encode("utf-8", "surrogateescape") for e in entries]
    assert list(cols.kinds) == [e.kind for e in entries] and list(cols.modes) == [e.mode for e in entries]
    names_ = [e.name.encode("utf-8", "surrogateescape") for e in entries]
    assert names_ == sorted(set(names_))
    for e in entries:
        assert e.name not in ("", ".", "..") and "/" not in e.name and "\x00" not in e.name
        assert 0 <= e.mode <= 0o7777 and 0 <= e.size <= MAX_SIZE
        if e.is_symlink:
            assert e.target and "\x00" not in e.target
        else:
            assert e.target == ""
    assert encode_tree(entries) == raw  # canonical: re-encoding gives the input back


@FUZZ
@given(st.lists(raw_entries, max_size=5), st.booleans())
def test_fuzz_forged_trees(entries: list[RawEntry], ordered: bool) -> None:
    check_tree(raw_tree(entries, sort=ordered))


@FUZZ
@given(st.one_of(st.binary(max_size=200), mutated(honest_trees())))
def test_fuzz_random_and_mutated_trees(raw: bytes) -> None:
    check_tree(raw)


def honest_maps() -> st.SearchStrategy[bytes]:
    chunk = st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, MAX_CHUNK))
    return st.lists(chunk, min_size=2, max_size=6).map(encode_filemap)


def fix_checksum(raw: bytes) -> bytes:
    return raw[:-32] + key_of(raw[:-32]) if len(raw) >= 44 else raw


@FUZZ
@given(st.one_of(st.binary(max_size=200), mutated(honest_maps()), mutated(honest_maps()).map(fix_checksum)))
def test_fuzz_file_maps(raw: bytes) -> None:
    try:
        chunks = decode_filemap(raw, MAX_CHUNK)
    except ValueError:
        return
    assert len(chunks) >= 2 and all(len(k) == 32 and 1 <= n <= MAX_CHUNK for k, n in chunks)
    assert encode_filemap(chunks) == raw


def honest_packs() -> st.SearchStrategy[bytes]:
    obj = st.tuples(
        st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=40), st.integers(1, 3)
    )

    def build(objs: list[tuple[bytes, bytes, int]]) -> bytes:
        b = PackBuilder()
        for k, data, kind in objs:
            b.add(k, data, len(data), kind, 0)
        return bytes(b.finish()[1])

    return st.lists(obj, max_size=4).map(build)


def fix_index_hash(data: bytes) -> bytes:
    """Recompute the footer's index hash so mutations reach the entry checks."""
    if len(data) < FOOTER.size:
        return data
    off, count, _, magic = FOOTER.unpack(data[-FOOTER.size :])
    index = data[off : len(data) - FOOTER.size] if 8 <= off <= len(data) - FOOTER.size else b""
    return data[: -FOOTER.size] + FOOTER.pack(off, count, key_of(index), magic)


@FUZZ
@given(
    st.one_of(st.binary(max_size=300), mutated(honest_packs()), mutated(honest_packs()).map(fix_index_hash))
)
def test_fuzz_packs(data: bytes) -> None:
    try:
        entries = read_index(data)
    except PackFormatError:
        pass
    else:
        for e in entries:
            assert e.offset >= 8 and e.offset + e.length <= len(data) - FOOTER.size - 52 * len(entries)
            assert e.kind in (1, 2, 3) and e.compression in (0, 1) and 1 <= e.length <= e.raw_length
    # the pieces on their own, as verify reads them (footer, then index by ranged reads)
    try:
        off, count, h = parse_footer(data[-FOOTER.size :], len(data))
        parse_index(data[off : off + 52 * count], count, h, off)
    except PackFormatError:
        pass


_ZSTD = zstandard.ZstdCompressor(level=1, write_content_size=True)
locations = st.builds(
    Location,
    key=st.binary(min_size=0, max_size=33),
    pack=st.just("p" * 64),
    offset=st.sampled_from([-1, 0, 8, 2**63]),
    length=st.integers(-1, 300),
    raw_length=st.sampled_from([-1, 0, 1, 10, 100, 1000, MAX_CHUNK, MAX_CHUNK + 1, 2**32 - 1, 2**40]),
    kind=st.integers(0, 4),
    compression=st.integers(0, 2),
)


@FUZZ
@given(
    locations,
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(_ZSTD.compress),
        mutated(st.binary(min_size=1, max_size=300).map(_ZSTD.compress)),
    ),
    st.booleans(),
)
def test_fuzz_decode_object(loc: Location, stored: bytes, consistent: bool) -> None:
    if consistent:  # a row whose lengths agree with the bytes, so decoding gets further
        loc = Location(key_of(stored), loc.pack, 8, len(stored), loc.raw_length, loc.kind, loc.compression)
    try:
        raw = decode_object(loc, stored, "pack p", max_chunk=MAX_CHUNK)
    except CorruptObject as e:
        assert "corrupt" in str(e)
        return
    assert len(raw) == loc.raw_length
