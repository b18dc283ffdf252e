"""Errors of the local file system a store can provoke or a user can fix are one line, exit 1.

A forged tree may hold a name the local file system cannot create (a 300-byte name is a valid
tree name, but Linux allows 255 bytes); a destination may be full or read-only. None of these
is a bug in datamon: each is one line naming the path and what to do, never a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path

from datamon.api.context import connect
from datamon.cli.common import os_error_line
from tests.trust.forge import RawEntry, put_bundle, put_chunk, put_tree


def _bundle_with_long_name(dm) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "r").code == 0
    name = "n" * 300
    with connect() as ctx:
        key = put_chunk(ctx, b"hello")
        root = put_tree(ctx, [RawEntry(name.encode(), size=5, key=key), RawEntry(b"ok", size=5, key=key)])
        return put_bundle(ctx, "r", root, files=2, size=10).id, name


def _one_line(r, code: int) -> None:  # type: ignore[no-untyped-def]
    assert r.code == code, r
    assert r.err.startswith("error: "), r
    assert r.err.count("\n") == 1, r
    assert "Traceback" not in r.err


def test_a_name_too_long_for_the_file_system_is_one_line(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bid, name = _bundle_with_long_name(dm)
    out = tmp_path / "out"
    r = dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out)
    _one_line(r, 1)
    assert "File name too long" in r.err and "--name-filter" in r.err
    assert not any(p.name.startswith(".datamon-tmp-") for p in out.rglob("*"))
    r = dm("bundle", "download", "file", "--repo", "r", "--bundle", bid, "--file", name, "--destination", out)
    _one_line(r, 1)
    # what the hint says works: the rest of the bundle downloads
    r = dm(
        "bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "o3",
        "--name-filter", "^ok$",
    )  # fmt: skip
    assert r.code == 0, r
    assert (tmp_path / "o3" / "ok").read_bytes() == b"hello"


def test_which_os_errors_are_the_users() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/x")
    line = os_error_line(full)
    assert line is not None and "'/data/x'" in line and "free some space" in line
    assert os_error_line(OSError(errno.EROFS, "Read-only file system")) is not None
    # anything else is a bug and keeps its traceback
    assert os_error_line(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert os_error_line(OSError("no errno")) is None
