"""Local writes of download/update: never through a symlink, temp name + rename, sizes, modes.

Every test builds the hostile input (honest uploads of a symlink, or forged trees through
``tests/trust/forge.py``) and proves that nothing is written outside the destination, that
nothing is lost, and, where the CLI shows it, one error line with the documented exit code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamon.api.context import connect
from tests.conftest import make_tree
from tests.trust.forge import DIR, SYMLINK, RawEntry, put_bundle, put_chunk, put_filemap, put_tree


def one_line(r, code: int) -> None:  # type: ignore[no-untyped-def]
    assert r.code == code, r
    assert r.err.startswith("error: "), r
    assert r.err.count("\n") == 1, r
    assert "Traceback" not in r.err


def upload(dm, path: Path, label: str) -> str:  # type: ignore[no-untyped-def]
    r = dm("bundle", "upload", "--repo", "r", "--path", path, "--message", label, "--label", label)
    assert r.code == 0, r
    return str(r.out.strip())


def leftovers(root: Path) -> list[str]:
    """Temporary files of datamon anywhere below ``root``."""
    return [n for _, _, files in os.walk(root) for n in files if n.startswith(".datamon-tmp-")]


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    (d / "keep.txt").write_text("outside the destination")
    return d


@pytest.fixture
def link_then_dir(dm, tmp_path: Path, elsewhere: Path) -> Path:  # type: ignore[no-untyped-def]
    """Bundle A: ``a -> elsewhere`` (a symlink); bundle B: ``a/sub/x`` (a file). ``out`` holds A."""
    a = tmp_path / "A"
    a.mkdir()
    os.symlink(elsewhere, a / "a")
    (a / "other.txt").write_text("o")
    b = make_tree(tmp_path / "B", {"a": {"sub": {"x": "from bundle B"}}, "other.txt": "o"})
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, a, "A")
    upload(dm, b, "B")
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--label", "A", "--destination", out).code == 0
    assert os.readlink(out / "a") == str(elsewhere)
    return out


def assert_untouched(elsewhere: Path) -> None:
    assert sorted(os.listdir(elsewhere)) == ["keep.txt"], os.listdir(elsewhere)
    assert (elsewhere / "keep.txt").read_text() == "outside the destination"


def test_force_dest_download_over_a_symlink_does_not_write_through_it(dm, link_then_dir, elsewhere) -> None:  # type: ignore[no-untyped-def]
    out = link_then_dir
    r = dm("bundle", "download", "--repo", "r", "--label", "B", "--destination", out, "--force-dest")
    assert r.code == 0, r
    assert_untouched(elsewhere)
    assert not (out / "a").is_symlink() and (out / "a/sub/x").read_text() == "from bundle B"
    assert leftovers(out) == []


def test_update_over_a_symlink_does_not_write_through_it(dm, link_then_dir, elsewhere) -> None:  # type: ignore[no-untyped-def]
    out = link_then_dir
    r = dm("bundle", "update", "--repo", "r", "--label", "B", "--destination", out)
    assert r.code == 0, r
    assert_untouched(elsewhere)
    assert (out / "a/sub/x").read_text() == "from bundle B"
    # and back: the directory is removed without following anything, the link comes back
    assert dm("bundle", "update", "--repo", "r", "--label", "A", "--destination", out).code == 0
    assert os.readlink(out / "a") == str(elsewhere)
    assert_untouched(elsewhere)


def test_download_file_over_a_symlink_does_not_write_through_it(dm, link_then_dir, elsewhere) -> None:  # type: ignore[no-untyped-def]
    out = link_then_dir
    r = dm(
        "bundle", "download", "file", "--repo", "r", "--label", "B", "--file", "a/sub/x", "--destination", out
    )
    assert r.code == 0, r
    assert_untouched(elsewhere)
    assert (out / "a/sub/x").read_text() == "from bundle B"


def test_symlink_as_the_final_component_is_replaced_not_followed(dm, tmp_path: Path, elsewhere: Path) -> None:  # type: ignore[no-untyped-def]
    """Bundle A: ``keep.txt -> elsewhere/keep.txt``; bundle B: a file ``keep.txt``."""
    a = tmp_path / "A"
    a.mkdir()
    os.symlink(elsewhere / "keep.txt", a / "keep.txt")
    b = make_tree(tmp_path / "B", {"keep.txt": "bundle B's own"})
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, a, "A")
    upload(dm, b, "B")
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--label", "A", "--destination", out).code == 0
    assert dm("bundle", "update", "--repo", "r", "--label", "B", "--destination", out).code == 0
    assert_untouched(elsewhere)
    assert not (out / "keep.txt").is_symlink() and (out / "keep.txt").read_text() == "bundle B's own"


def _forged(tmp_path: Path, entries: list[RawEntry], files: int = 1) -> str:
    with connect() as ctx:
        root = put_tree(ctx, entries, sort=False)
        return put_bundle(ctx, "r", root, files=files).id


@pytest.mark.parametrize(
    "name",
    [b"a/sub/x", b"../escape.txt", b"..", b"a/../../escape.txt", b"./a/sub/x"],
)
def test_forged_names_never_leave_the_destination(
    dm, link_then_dir, elsewhere, tmp_path: Path, name: bytes
) -> None:  # type: ignore[no-untyped-def]
    """A forged tree whose file name is a path (slashes, ``..``): the decoder may refuse it
    (exit 4); if it does not, the writer still stays below the destination."""
    out = link_then_dir
    with connect() as ctx:
        key = put_chunk(ctx, b"forged content")
    bid = _forged(tmp_path, [RawEntry(name, size=14, key=key)])
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out, "--force-dest")
    assert r.code in (0, 4), r
    if r.code == 4:
        one_line(r, 4)
    assert_untouched(elsewhere)
    assert not (tmp_path / "escape.txt").exists() and not (out.parent / "escape.txt").exists()
    assert leftovers(tmp_path) == []
    fresh = tmp_path / "fresh"
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", fresh)
    assert r.code in (0, 4), r
    assert not (tmp_path / "escape.txt").exists()


def test_forged_duplicate_link_and_directory(dm, link_then_dir, elsewhere, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One tree holding both a symlink ``a -> elsewhere`` and a directory ``a/sub/x``."""
    out = link_then_dir
    with connect() as ctx:
        key = put_chunk(ctx, b"forged content")
        sub = put_tree(ctx, [RawEntry(b"x", size=14, key=key)])
        a_dir = put_tree(ctx, [RawEntry(b"sub", kind=DIR, size=14, key=sub)])
    target = os.fsencode(str(elsewhere))
    entries = [
        RawEntry(b"a", kind=SYMLINK, mode=0o777, size=len(target), target=target),
        RawEntry(b"a", kind=DIR, mode=0o755, size=14, key=a_dir),
    ]
    bid = _forged(tmp_path, entries)
    for dest, force in ((out, True), (tmp_path / "fresh", False)):
        args = ["--force-dest"] if force else []
        r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", dest, *args)
        assert r.code in (0, 4), r
        assert_untouched(elsewhere)
        assert leftovers(dest) == []


def test_corrupt_content_leaves_nothing_under_its_name(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A file map whose chunks do not hash to the file key (found only at the end of the
    stream): exit 4, the old file under that name is intact, no temporary file is left."""
    assert dm("repo", "create", "--repo", "r").code == 0
    c1, c2 = os.urandom(300_000), os.urandom(300_000)
    with connect() as ctx:
        k1, k2 = put_chunk(ctx, c1), put_chunk(ctx, c2)
        lie = bytes(32 * [7])
        put_filemap(ctx, lie, [(k1, len(c1)), (k2, len(c2))])
        root = put_tree(ctx, [RawEntry(b"big.bin", size=600_000, key=lie)])
        bid = put_bundle(ctx, "r", root, files=1, size=600_000).id
    out = make_tree(tmp_path / "out", {"big.bin": "precious", "mine.txt": "mine"})
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out, "--force-dest")
    one_line(r, 4)
    assert (out / "big.bin").read_text() == "precious" and (out / "mine.txt").read_text() == "mine"
    assert leftovers(out) == []
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "new")
    one_line(r, 4)
    assert not (tmp_path / "new/big.bin").exists() and leftovers(tmp_path / "new") == []


@pytest.mark.parametrize("claimed", [10, 5000, 700_000])
def test_size_differing_from_the_tree_entry_fails(dm, tmp_path: Path, claimed: int) -> None:  # type: ignore[no-untyped-def]
    """Honest bytes (4000 of them, or two chunks of 300,000) under an entry claiming another size."""
    assert dm("repo", "create", "--repo", "r").code == 0
    with connect() as ctx:
        if claimed == 700_000:
            from datamon.cas.hashing import key_of

            c1, c2 = os.urandom(300_000), os.urandom(300_000)
            k1, k2 = put_chunk(ctx, c1), put_chunk(ctx, c2)
            key = key_of(c1 + c2)
            put_filemap(ctx, key, [(k1, len(c1)), (k2, len(c2))])
        else:
            key = put_chunk(ctx, os.urandom(4000))
        root = put_tree(ctx, [RawEntry(b"f.bin", size=claimed, key=key)])
        bid = put_bundle(ctx, "r", root, size=claimed).id
    out = tmp_path / "out"
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out)
    one_line(r, 4)
    assert not (out / "f.bin").exists() and leftovers(out) == []


def test_small_entry_naming_a_file_map_is_checked(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A 'small' file whose key is a file map: its map bytes must not become the file."""
    from datamon.cas.filemap import encode_filemap

    assert dm("repo", "create", "--repo", "r").code == 0
    c1, c2 = os.urandom(300_000), os.urandom(300_000)
    with connect() as ctx:
        k1, k2 = put_chunk(ctx, c1), put_chunk(ctx, c2)
        lie = bytes(32 * [9])
        put_filemap(ctx, lie, [(k1, len(c1)), (k2, len(c2))])
        n = len(encode_filemap([(k1, len(c1)), (k2, len(c2))]))
        root = put_tree(ctx, [RawEntry(b"f.bin", size=n, key=lie)])
        bid = put_bundle(ctx, "r", root, size=n).id
    out = tmp_path / "out"
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out)
    one_line(r, 4)
    assert not (out / "f.bin").exists() and leftovers(out) == []


def test_modes_lose_setuid_and_get_the_umask(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "r").code == 0
    with connect() as ctx:
        key = put_chunk(ctx, b"#!/bin/sh\n")
        sub = put_tree(ctx, [RawEntry(b"inner", mode=0o666, size=10, key=key)])
        root = put_tree(
            ctx,
            [
                RawEntry(b"suid", mode=0o6777, size=10, key=key),
                RawEntry(b"plain", mode=0o644, size=10, key=key),
                RawEntry(b"d", kind=DIR, mode=0o3777, size=10, key=sub),
            ],
        )
        bid = put_bundle(ctx, "r", root, files=3, size=30).id
    old = os.umask(0o027)
    try:
        out = tmp_path / "out"
        assert dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out).code == 0
    finally:
        os.umask(old)
    mode = lambda p: (out / p).stat().st_mode & 0o7777  # noqa: E731
    assert mode("suid") == 0o750
    assert mode("plain") == 0o640
    assert mode("d") == 0o750
    assert mode("d/inner") == 0o640


def test_download_file_into_a_file_and_backslash_names(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "src", {"a\\b.txt": "backslash", "dir": {"c\\d": "deeper"}})
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, src, "one")
    afile = tmp_path / "afile"
    afile.write_text("i am a file")
    r = dm("bundle", "download", "file", "--repo", "r", "--file", "a\\b.txt", "--destination", afile)
    one_line(r, 1)
    assert afile.read_text() == "i am a file"
    out = tmp_path / "out"
    for name in ("a\\b.txt", "dir/c\\d"):
        r = dm("bundle", "download", "file", "--repo", "r", "--file", name, "--destination", out)
        assert r.code == 0, r
    assert (out / "a\\b.txt").read_text() == "backslash" and (out / "dir/c\\d").read_text() == "deeper"
    assert not (out / "a").exists()
