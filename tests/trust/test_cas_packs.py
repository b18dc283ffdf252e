"""Hostile pack footers and indexes: bounded before anything is allocated, every field checked."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from datamon.api.verify import CORRUPT, read_pack_index, verify
from datamon.cas.hashing import key_of
from datamon.cas.pack import (
    ENTRY,
    FOOTER,
    FOOTER_MAGIC,
    MAX_ENTRIES,
    PACK_MAGIC,
    PackBuilder,
    PackFormatError,
    pack_blob_name,
    parse_footer,
    parse_index,
    read_index,
)
from tests.trust.test_cas_common import small_ctx


def _pack(entries: list[tuple[bytes, int, int, int, int, int, int]], data: bytes = b"x" * 100) -> bytes:
    index = b"".join(ENTRY.pack(*e) for e in entries)
    body = PACK_MAGIC + data
    return body + index + FOOTER.pack(len(body), len(entries), key_of(index), FOOTER_MAGIC)


def test_a_footer_claiming_2_32_entries_is_refused_without_allocating() -> None:
    footer = FOOTER.pack(8, 2**32 - 1, bytes(32), FOOTER_MAGIC)
    with pytest.raises(PackFormatError, match="claims"):
        parse_footer(footer, 10_000)
    assert MAX_ENTRIES < 2**32 - 1
    # a count that fits the bound but not the pack size
    with pytest.raises(PackFormatError, match="size"):
        parse_footer(FOOTER.pack(8, 1000, bytes(32), FOOTER_MAGIC), 8 + 52 * 999 + 52)
    with pytest.raises(PackFormatError):
        parse_footer(FOOTER.pack(0, 0, bytes(32), FOOTER_MAGIC), 52)  # index inside the header
    with pytest.raises(PackFormatError):
        parse_footer(footer[:-1], 10_000)


K = b"k" * 32
BAD_ENTRIES = {
    "kind 0": (K, 8, 10, 10, 0, 0, 0),
    "kind 4": (K, 8, 10, 10, 4, 0, 0),
    "compression 2": (K, 8, 10, 10, 1, 2, 0),
    "reserved set": (K, 8, 10, 10, 1, 0, 1),
    "raw with other length": (K, 8, 10, 11, 1, 0, 0),
    "zstd longer than raw": (K, 8, 50, 10, 1, 1, 0),
    "empty": (K, 8, 0, 0, 1, 0, 0),
    "past the data": (K, 8, 101, 101, 1, 0, 0),
    "in the header": (K, 0, 10, 10, 1, 0, 0),
    "huge offset": (K, 2**63, 10, 10, 1, 0, 0),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_bad_index_entries_are_refused(case: str) -> None:
    data = _pack([BAD_ENTRIES[case]])
    with pytest.raises(PackFormatError):
        read_index(data)


def test_honest_packs_still_parse() -> None:
    b = PackBuilder()
    b.add(K, b"abc", 3, 1, 0)
    b.add(b"j" * 32, b"z" * 10, 4000, 3, 1)
    _, data, entries = b.finish()
    assert read_index(bytes(data)) == entries
    index_offset, count, h = parse_footer(bytes(data[-52:]), len(data))
    assert parse_index(bytes(data[index_offset:-52]), count, h, index_offset) == entries


def test_verify_reports_a_pack_with_a_hostile_index(tmp_path: Path) -> None:
    with small_ctx(tmp_path / "s") as ctx:
        src = tmp_path / "src"
        src.mkdir()
        (src / "a.txt").write_bytes(b"hello")
        ctx.upload("r", src, message="m")
        (pack,) = [r[1] for r in ctx.meta.lookup_objects([key_of(b"hello")]).values()]
        blob = tmp_path / "s" / "blobs" / pack_blob_name(pack)
        data = bytearray(blob.read_bytes())
        # rewrite the footer: 2**32-1 entries
        data[-52:] = FOOTER.pack(8, 2**32 - 1, bytes(32), FOOTER_MAGIC)
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))
        got = read_pack_index(ctx.cas.blobs, pack)
        assert not isinstance(got, list) and got.kind == CORRUPT
        r = verify(ctx)
        assert not r.ok and any(p.kind == CORRUPT for p in r.problems.values())


def test_fields_the_format_fixes() -> None:
    assert struct.calcsize("<32sQIIBBH") == ENTRY.size == 52 and FOOTER.size == 52
