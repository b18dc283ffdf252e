"""Hostile trees: every shape decode_tree refuses is an integrity error naming the tree, on
every read path (read_tree, download, verify, the mount's view), never a crash or a path."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from datamon.api.verify import CORRUPT, WRONG_KIND, verify
from datamon.cas.hashing import EMPTY_KEY, ZERO_KEY, key_of
from datamon.cas.tree import EntryKind, TreeEntry, TreeFormatError, decode_tree, encode_tree
from datamon.errors import CorruptObject, IntegrityError
from datamon.fuse.vfs import BundleView
from tests.integrity.helpers import run_cli
from tests.trust.forge import RawEntry, put_bundle, put_objects, put_tree, raw_tree
from tests.trust.test_cas_common import small_ctx

OK = RawEntry(b"ok.txt", size=0, key=EMPTY_KEY)
LINK = 3

HOSTILE: dict[str, tuple[list[RawEntry], bool]] = {
    # name: (entries, sorted by the forger)
    "empty name": ([RawEntry(b"", key=EMPTY_KEY)], True),
    "dot": ([RawEntry(b".", key=EMPTY_KEY)], True),
    "dotdot": ([RawEntry(b"..", kind=2, key=ZERO_KEY)], True),
    "slash": ([RawEntry(b"../../etc/passwd", key=EMPTY_KEY)], True),
    "nul": ([RawEntry(b"a\x00b", key=EMPTY_KEY)], True),
    "duplicate": ([OK, OK], True),
    "unsorted": ([RawEntry(b"b", key=EMPTY_KEY), RawEntry(b"a", key=EMPTY_KEY)], False),
    "unknown kind": ([RawEntry(b"x", kind=9, key=EMPTY_KEY)], True),
    "kind zero": ([RawEntry(b"x", kind=0, key=EMPTY_KEY)], True),
    "symlink empty target": ([RawEntry(b"l", kind=LINK, size=0)], True),
    "symlink nul target": ([RawEntry(b"l", kind=LINK, size=3, target=b"a\x00b")], True),
    "file with target": ([RawEntry(b"f", size=0, key=EMPTY_KEY, target=b"/etc/shadow")], True),
    "dir with target": ([RawEntry(b"d", kind=2, target=b"x")], True),
    "symlink size": ([RawEntry(b"l", kind=LINK, size=99, target=b"abc")], True),
    "setuid beyond 7777": ([RawEntry(b"f", mode=0o104755, key=EMPTY_KEY)], True),
    "size 2**64-1": ([RawEntry(b"f", size=2**64 - 1, key=EMPTY_KEY)], True),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tree_is_refused_naming_it(tmp_path: Path, case: str) -> None:
    entries, ordered = HOSTILE[case]
    raw = raw_tree(entries, sort=ordered)
    with pytest.raises(TreeFormatError):
        decode_tree(raw)
    with small_ctx(tmp_path / "s") as ctx:
        key = put_tree(ctx, entries, sort=ordered)
        b = put_bundle(ctx, "r", key)
        with pytest.raises(CorruptObject) as err:
            ctx.cas.read_tree(key)
        assert err.value.exit_code == 4 and key.hex() in str(err.value)
        with pytest.raises(IntegrityError) as err2:
            ctx.download("r", tmp_path / "dl", bundle=b.id)
        assert key.hex() in str(err2.value)
        assert not (tmp_path / "etc").exists()
        r = verify(ctx, full=True)
        assert not r.ok and r.problems[key.hex()].kind == CORRUPT
        assert [a.path for a in r.affected] == ["/"]
        view = BundleView(ctx, ctx.bundle("r", b.id), prefetch=0)
        with pytest.raises(OSError) as eio:
            view.readdir("/")
        assert eio.value.errno == errno.EIO
        view.close()


def test_cli_download_of_a_hostile_tree_exits_4_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with small_ctx(root) as ctx:
        key = put_tree(ctx, [RawEntry(b"..", kind=2)])
        bid = put_bundle(ctx, "r", key).id
    got = run_cli(root, "bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "d")
    assert got.returncode == 4, got.stderr
    assert key.hex() in got.stderr and "Traceback" not in got.stderr
    ver = run_cli(root, "verify", "--full")
    assert ver.returncode == 4 and key.hex() in ver.stdout + ver.stderr


def test_a_tree_indexed_as_another_kind_is_corrupt(tmp_path: Path) -> None:
    """The tree's bytes are honest, but the index row says chunk: that is corruption too."""
    raw = encode_tree([TreeEntry("a", EntryKind.FILE, 0o644, 0, 0, EMPTY_KEY)])
    key = key_of(raw)
    with small_ctx(tmp_path / "s") as ctx:
        put_objects(ctx, [(key, raw, 1)])
        b = put_bundle(ctx, "r", key)
        with pytest.raises(CorruptObject) as err:
            ctx.cas.read_tree(key)
        assert key.hex() in str(err.value)
        r = verify(ctx)
        assert r.problems[key.hex()].kind == WRONG_KIND
        with pytest.raises(IntegrityError):
            ctx.download("r", tmp_path / "dl", bundle=b.id)


def test_names_that_are_not_utf8_round_trip_and_pass(tmp_path: Path) -> None:
    entries = [
        RawEntry(b"caf\xe9", key=EMPTY_KEY),  # Latin-1
        RawEntry(b"\xed\xa0\x80", key=EMPTY_KEY),  # a UTF-8-encoded surrogate: invalid UTF-8
        RawEntry(b"\xff", kind=LINK, size=2, target=b"\xfe\xfd"),
    ]
    raw = raw_tree(entries)
    decoded = decode_tree(raw)
    assert [e.name.encode("utf-8", "surrogateescape") for e in decoded] == sorted(e.name for e in entries)
    assert encode_tree(decoded) == raw
    with small_ctx(tmp_path / "s") as ctx:
        key = put_tree(ctx, entries)
        put_bundle(ctx, "r", key)
        assert ctx.cas.read_tree(key) == decoded
        assert verify(ctx, full=True).ok


def test_symlink_size_in_code_points_is_accepted() -> None:
    """datamon has written a non-ASCII symlink's size as its length in code points: readers
    accept that and the byte length, nothing else."""
    target = "ünï"
    for size in (len(target), len(target.encode())):
        raw = raw_tree([RawEntry(b"l", kind=LINK, size=size, target=target.encode())])
        assert decode_tree(raw)[0].target == target
    with pytest.raises(TreeFormatError):
        decode_tree(raw_tree([RawEntry(b"l", kind=LINK, size=4, target=target.encode())]))


def test_encode_tree_refuses_what_decode_refuses() -> None:
    bad = [
        TreeEntry("l", EntryKind.SYMLINK, 0o777, 0, 0, ZERO_KEY, ""),
        TreeEntry("l", EntryKind.SYMLINK, 0o777, 0, 3, ZERO_KEY, "a\x00b"),
        TreeEntry("f", EntryKind.FILE, 0o644, 0, 0, EMPTY_KEY, "t"),
        TreeEntry("f", EntryKind.FILE, 0o644, 0, 2**63, EMPTY_KEY),
        TreeEntry("a\x00", EntryKind.FILE, 0o644, 0, 0, EMPTY_KEY),
    ]
    for e in bad:
        with pytest.raises(TreeFormatError):
            encode_tree([e])
    # mode bits beyond 0o7777 are masked by the honest encoder, never stored
    raw = encode_tree([TreeEntry("f", EntryKind.FILE, 0o104755, 0, 0, EMPTY_KEY)])
    assert decode_tree(raw)[0].mode == 0o4755


def test_a_truncated_or_padded_tree_is_refused() -> None:
    raw = raw_tree([RawEntry(b"a", key=EMPTY_KEY), RawEntry(b"b", key=EMPTY_KEY)])
    for bad in (raw[:-1], raw + b"\x00", raw[:12], raw[:8] + b"\xff\xff\xff\xff" + raw[12:]):
        with pytest.raises(TreeFormatError):
            decode_tree(bad)
