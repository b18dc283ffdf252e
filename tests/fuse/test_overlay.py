"""The copy-on-write view and its commit, without FUSE: the same edits applied to the view and to a
local copy must give a bundle equal to the local copy, downloading only what was modified."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datamon.api.context import Context
from datamon.errors import StoreUnavailable
from datamon.fuse.commit import MANIFEST, commit, retry, save_manifest
from datamon.fuse.overlay import MutableView
from datamon.meta.records import BundleRecord
from tests.conftest import tree_files

MTIME2 = 1_500_000_000_000_000_007
NEW = os.O_WRONLY | os.O_CREAT


class Both:
    """Applies each edit to a ``MutableView`` and to a local directory."""

    def __init__(self, view: MutableView, local: Path) -> None:
        self.view = view
        self.local = local

    def _l(self, path: str) -> Path:
        return self.local / path

    def create(self, path: str, data: bytes) -> None:
        fh = self.view.create("/" + path, 0o644, os.O_WRONLY)
        assert self.view.write(fh, data, 0) == len(data)
        self.view.release(fh)
        fd = os.open(self._l(path), NEW | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        os.chmod(self._l(path), 0o644)

    def append(self, path: str, data: bytes) -> None:
        size = self.view.getattr("/" + path).size
        fh = self.view.open("/" + path, os.O_WRONLY | os.O_APPEND)
        self.view.write(fh, data, size)
        self.view.release(fh)
        with open(self._l(path), "ab") as f:
            f.write(data)

    def overwrite(self, path: str, data: bytes) -> None:
        fh = self.view.open("/" + path, os.O_WRONLY | os.O_TRUNC)
        self.view.write(fh, data, 0)
        self.view.release(fh)
        self._l(path).write_bytes(data)

    def do(self, name: str, *args: Any) -> None:
        view_args = ["/" + a if isinstance(a, str) else a for a in args]
        if name == "symlink":
            view_args[1] = args[1]  # the target is link text, not a path in the view
        getattr(self.view, name)(*view_args)
        local: dict[str, Callable[..., Any]] = {
            "truncate": lambda p, n: os.truncate(self._l(p), n),
            "rename": lambda a, b: os.rename(self._l(a), self._l(b)),
            "unlink": lambda p: os.unlink(self._l(p)),
            "mkdir": lambda p, m: os.mkdir(self._l(p), m),
            "rmdir": lambda p: os.rmdir(self._l(p)),
            "chmod": lambda p, m: os.chmod(self._l(p), m),
            "symlink": lambda p, t: os.symlink(t, self._l(p)),
            "utimens": lambda p, t: os.utime(self._l(p), ns=t),
        }
        local[name](*args)


def _no_mtimes(files: dict[str, object]) -> dict[str, object]:
    return {k: (v[:2] if isinstance(v, tuple) and isinstance(v[0], bytes) else v) for k, v in files.items()}


def _spy(ctx: Context) -> set[bytes]:
    """Record every object key the reader fetches or takes from the chunk cache."""
    seen: set[bytes] = set()
    reader = ctx.cas.reader
    get, get_many = reader.get, reader.get_many

    def spy_get(key: bytes) -> bytes:
        seen.add(key)
        return get(key)

    def spy_many(keys: Any, **kw: Any) -> Any:
        seen.update(keys)
        return get_many(keys, **kw)

    reader.get = spy_get  # type: ignore[method-assign]
    reader.get_many = spy_many  # type: ignore[method-assign]
    return seen


def _edits(b: Both) -> None:
    b.create("new.txt", b"hello\n")
    b.append("text.csv", b"more,rows\n")
    b.do("truncate", "big.bin", 1000)
    b.overwrite("one.bin", b"replaced")
    b.do("rename", "deep/a", "moved")
    b.do("rename", "run.sh", "ünïcødé/run2.sh")
    b.do("unlink", "empty.bin")
    b.do("mkdir", "newdir", 0o750)
    b.do("mkdir", "newdir/sub", 0o755)
    b.create("newdir/sub/n.bin", os.urandom(300_000))
    b.do("rmdir", "empty-dir")
    b.do("chmod", "text.csv", 0o640)
    b.do("chmod", "spaces in name", 0o700)
    b.do("utimens", "spaces in name/file with spaces.txt", (MTIME2, MTIME2))
    b.do("rename", "new.txt", "ünïcødé/日本語.txt")  # replaces a file: one file fewer


def _download(ctx: Context, b: BundleRecord, dest: Path) -> dict[str, object]:
    ctx.download("r", dest, bundle=b.id)
    return tree_files(dest)


def test_edits_commit_a_bundle_equal_to_the_same_edits_on_disk(
    ctx: Context, bundle: BundleRecord, source: Path, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    shutil.copytree(source, local, symlinks=True)
    seen = _spy(ctx)
    view = MutableView(ctx, bundle, tmp_path / "staging")
    b = Both(view, local)
    _edits(b)
    b.do("symlink", "newdir/ln", "../text.csv")
    view.close()
    new = commit(ctx, "r", view, message="edited", label="next")
    fetched = set(seen)
    assert new is not None
    assert new.parents == (bundle.id,)
    assert ctx.get_label("r", "next").bundle_id == new.id
    got = _download(ctx, new, tmp_path / "dl")
    want = tree_files(local)
    assert _no_mtimes(got) == _no_mtimes(want)
    for rel in ("moved/b/leaf.txt", "ünïcødé/run2.sh"):  # moved, untouched: mtimes kept
        assert got[rel] == want[rel], rel
    assert got["spaces in name/file with spaces.txt"][2] == MTIME2  # type: ignore[index]
    files = [p for p in local.rglob("*") if p.is_file() and not p.is_symlink()]
    assert new.file_count == len(files)
    assert new.total_size == sum(p.stat().st_size for p in files)
    # nothing that was only renamed, chmod-ed, touched or replaced was downloaded
    old = {e.path: e.entry.key for e in ctx.entries("r", bundle=bundle.id)}
    for rel in ("deep/a/b/leaf.txt", "spaces in name/file with spaces.txt", "ünïcødé/日本語.txt", "run.sh"):
        assert old[rel] not in fetched, rel


def test_no_change_or_a_reverted_change_makes_no_bundle(
    ctx: Context, bundle: BundleRecord, tmp_path: Path
) -> None:
    view = MutableView(ctx, bundle, tmp_path / "s1")
    view.readdir("/deep/a")
    fh = view.open("/text.csv")
    assert view.read(fh, 0, 5) == b"0,0,h"
    view.release(fh)
    assert not view.changed
    assert commit(ctx, "r", view, message="m") is None
    view2 = MutableView(ctx, bundle, tmp_path / "s2")
    view2.release(view2.create("/tmp.txt", 0o644, os.O_WRONLY))
    view2.unlink("/tmp.txt")
    assert view2.changed
    assert commit(ctx, "r", view2, message="m") is None
    assert len(ctx.list_bundles("r")) == 1
    empty = MutableView(ctx, None, tmp_path / "s3")
    assert commit(ctx, "r", empty, message="m") is None
    # a file deleted while open, still under libfuse's hidden name when the mount ended
    view4 = MutableView(ctx, bundle, tmp_path / "s4")
    fh = view4.create("/tmp.txt", 0o644, os.O_WRONLY)
    view4.rename("/tmp.txt", "/.fuse_hidden0000000a00000001")
    assert commit(ctx, "r", view4, message="m") is None


def test_starting_empty_makes_a_bundle_without_parents(
    ctx: Context, bundle: BundleRecord, tmp_path: Path
) -> None:
    view = MutableView(ctx, None, tmp_path / "staging")
    view.mkdir("/a", 0o755)
    fh = view.create("/a/b.txt", 0o600, os.O_WRONLY)
    view.write(fh, b"abc", 0)
    view.write(fh, b"XY", 1)
    view.release(fh)
    new = commit(ctx, "r", view, message="fresh")
    assert new is not None and new.parents == () and new.file_count == 1 and new.total_size == 3
    got = _download(ctx, new, tmp_path / "dl")
    assert got["a/b.txt"][:2] == (b"aXY", 0o600)  # type: ignore[index]


def test_posix_errors(ctx: Context, bundle: BundleRecord, tmp_path: Path) -> None:
    view = MutableView(ctx, bundle, tmp_path / "staging")
    cases = [
        (lambda: view.mkdir("/deep", 0o755), errno.EEXIST),
        (lambda: view.rmdir("/deep"), errno.ENOTEMPTY),
        (lambda: view.rmdir("/one.bin"), errno.ENOTDIR),
        (lambda: view.rmdir("/"), errno.EBUSY),
        (lambda: view.unlink("/deep"), errno.EISDIR),
        (lambda: view.unlink("/nope"), errno.ENOENT),
        (lambda: view.rename("/deep", "/deep/a/inside"), errno.EINVAL),
        (lambda: view.rename("/one.bin", "/deep"), errno.EISDIR),
        (lambda: view.rename("/empty-dir", "/one.bin"), errno.ENOTDIR),
        (lambda: view.rename("/empty-dir", "/deep"), errno.ENOTEMPTY),
        (lambda: view.create("/one.bin", 0o644, os.O_WRONLY | os.O_EXCL), errno.EEXIST),
        (lambda: view.create("/nodir/x", 0o644, os.O_WRONLY), errno.ENOENT),
        (lambda: view.create("/one.bin/x", 0o644, os.O_WRONLY), errno.ENOTDIR),
        (lambda: view.create("/" + "n" * 256, 0o644, os.O_WRONLY), errno.ENAMETOOLONG),
        (lambda: view.open("/deep"), errno.EISDIR),
        (lambda: view.write(view.open("/one.bin"), b"x", 0), errno.EBADF),
    ]
    for call, code in cases:
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == code, call
    view.rename("/empty-dir", "/deep/a/b/was-empty")  # into a subdirectory: fine
    view.mkdir("/e", 0o755)
    view.rename("/deep/a/b/was-empty", "/e")  # over an empty directory: fine
    assert view.getattr("/e").ino != view.getattr("/deep").ino


def test_an_open_file_survives_unlink_and_its_staged_copy_goes_at_close(
    ctx: Context, bundle: BundleRecord, tmp_path: Path
) -> None:
    view = MutableView(ctx, bundle, tmp_path / "staging")
    fh = view.create("/t.txt", 0o644, os.O_RDWR)
    view.write(fh, b"still here", 0)
    view.unlink("/t.txt")
    assert view.read(fh, 0, 100) == b"still here"
    assert len(os.listdir(tmp_path / "staging/files")) == 1
    view.release(fh)
    assert os.listdir(tmp_path / "staging/files") == []
    # a reader opened before a writer sees the written bytes
    r = view.open("/one.bin")
    w = view.open("/one.bin", os.O_WRONLY)
    view.write(w, b"y", 0)
    assert view.read(r, 0, 10) == b"y"


def test_a_failed_commit_keeps_the_staged_changes_and_retry_stores_them(
    ctx: Context, bundle: BundleRecord, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "local"
    shutil.copytree(source, local, symlinks=True)
    staging = tmp_path / "staging"
    view = MutableView(ctx, bundle, staging)
    _edits(Both(view, local))
    view.close()

    def unreachable(b: BundleRecord) -> None:
        raise StoreUnavailable("database unreachable")

    monkeypatch.setattr(ctx.meta, "add_bundle", unreachable)
    with pytest.raises(StoreUnavailable):
        commit(ctx, "r", view, message="edited", label="next")
    save_manifest(view, "r", "edited", "next")
    assert (staging / MANIFEST).is_file() and os.listdir(staging / "files")
    monkeypatch.undo()
    new = retry(ctx, staging)
    assert new is not None and new.parents == (bundle.id,)
    assert not staging.exists()
    assert ctx.get_label("r", "next").bundle_id == new.id
    assert _no_mtimes(_download(ctx, new, tmp_path / "dl")) == _no_mtimes(tree_files(local))


def test_mount_commit_cli_stores_kept_changes_and_explains_a_bad_directory(
    ctx: Context, bundle: BundleRecord, tmp_path: Path, dm: Any
) -> None:
    staging = tmp_path / "staging"
    view = MutableView(ctx, bundle, staging)
    fh = view.create("/new.txt", 0o644)
    view.write(fh, b"kept across a failed commit\n", 0)
    view.release(fh)
    view.close()
    save_manifest(view, "r", "kept", None)

    assert dm("context", "create", "t", "--blob", ctx.blob_url, "--meta", ctx.meta_url).code == 0
    empty = tmp_path / "not-staging"
    empty.mkdir()
    bad = dm("--context", "t", "bundle", "mount", "commit", "--staging", empty)
    assert bad.code == 1 and "manifest.json" in bad.err and "Traceback" not in bad.err
    assert len(bad.err.strip().splitlines()) == 1

    res = dm("--context", "t", "bundle", "mount", "commit", "--staging", staging)
    assert res.code == 0, res.err
    new_id = res.out.strip()
    new = ctx.meta.get_bundle("r", new_id)
    assert new.parents == (bundle.id,) and not staging.exists()
    with ctx.open_file("r", "new.txt", bundle=new_id) as f:
        assert f.read() == b"kept across a failed commit\n"
