"""What datamon remembers about local directories: the stat cache (recorded when each file is
closed), the download registry (update only in a download; an interrupted download resumes),
``--files`` through symlinks, depth, growing files and names that are not UTF-8."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamon.api.context import connect
from tests.conftest import make_tree


def one_line(r, code: int) -> None:  # type: ignore[no-untyped-def]
    assert r.code == code, r
    assert r.err.startswith("error: "), r
    assert r.err.count("\n") == 1, r
    assert "Traceback" not in r.err


def upload(dm, path: Path, label: str, *extra: object) -> str:  # type: ignore[no-untyped-def]
    r = dm("bundle", "upload", "--repo", "r", "--path", path, "--message", label, "--label", label, *extra)
    assert r.code == 0, r
    return str(r.out.strip())


def cat(ctx, bundle: str, path: str) -> bytes:  # type: ignore[no-untyped-def]
    with ctx.open_file("r", path, bundle=bundle) as f:
        return bytes(f.read())


class EditMidway:
    """A progress callback that, once the first batch is written, edits an already-written
    file keeping its size and its mtime: only its ctime tells the edit apart."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.done = path, data, False

    def start(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int, nbytes: int) -> None:
        if files and not self.done and self.path.exists():
            st = self.path.stat()
            self.path.write_bytes(self.data)
            os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
            self.done = True

    def finish(self) -> None:
        pass


def test_edit_during_download_is_seen_by_diff_and_upload(
    dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import datamon.api.materialize as materialize_mod

    monkeypatch.setattr(materialize_mod, "BATCH_FILES", 2)
    src = make_tree(tmp_path / "src", {f"f{i}.txt": f"original {i}" for i in range(6)})
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, src, "v1")
    out = tmp_path / "out"
    edit = EditMidway(out / "f0.txt", b"EDITED   0")
    with connect() as ctx:
        ctx.download("r", out, label="v1", progress=edit, concurrency=1)
    assert edit.done and (out / "f0.txt").read_bytes() == b"EDITED   0"
    r = dm("bundle", "diff", "--repo", "r", "--label", "v1", "--destination", out)
    assert r.code == 0 and r.out.split("\n")[0].split("\t")[0] == "U f0.txt", r
    new = upload(dm, out, "v2")
    with connect() as ctx:
        assert cat(ctx, new, "f0.txt") == b"EDITED   0"
        assert cat(ctx, new, "f1.txt") == b"original 1"


def test_update_refuses_a_directory_that_is_not_a_download(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_tree(tmp_path / "src", {"a.txt": "a"})
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, src, "v1")
    mine = make_tree(tmp_path / "mine", {"thesis.tex": "years of work", "data": {"x.csv": "1,2"}})
    r = dm("bundle", "update", "--repo", "r", "--label", "v1", "--destination", mine)
    one_line(r, 1)
    assert "--force-dest" in r.err
    assert (mine / "thesis.tex").read_text() == "years of work" and (mine / "data/x.csv").exists()
    # --force-dest into it is allowed, but the directory stays "not datamon's"
    assert (
        dm("bundle", "download", "--repo", "r", "--label", "v1", "--destination", mine, "--force-dest").code
        == 0
    )
    r = dm("bundle", "update", "--repo", "r", "--label", "v1", "--destination", mine)
    one_line(r, 1)
    assert (mine / "thesis.tex").read_text() == "years of work"
    # a directory re-created under the name of a download is not that download
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--label", "v1", "--destination", out).code == 0
    os.rename(out, tmp_path / "moved")
    make_tree(out, {"other.txt": "someone else's"})
    one_line(dm("bundle", "update", "--repo", "r", "--label", "v1", "--destination", out), 1)
    assert (out / "other.txt").exists()
    # the api's override
    from datamon.api.diff import update

    with connect() as ctx:
        update(ctx, "r", out, label="v1", force=True)
    assert sorted(os.listdir(out)) == ["a.txt"]
    assert dm("bundle", "update", "--repo", "r", "--label", "v1", "--destination", out).code == 0


class Interrupt:
    def __init__(self) -> None:
        self.calls = 0

    def start(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int, nbytes: int) -> None:
        if files:
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt

    def finish(self) -> None:
        pass


def test_interrupted_download_resumes_and_can_be_updated(
    dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import datamon.api.materialize as materialize_mod

    monkeypatch.setattr(materialize_mod, "BATCH_FILES", 2)
    src = make_tree(tmp_path / "src", {"d": {f"f{i}.txt": f"{i}" * 100 for i in range(8)}, "top.txt": "t"})
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, src, "v1")
    other = make_tree(tmp_path / "other", {"x.txt": "x"})
    upload(dm, other, "v2")
    out = tmp_path / "out"
    import datamon.api.localfs as localfs_mod

    real_create, created = localfs_mod.create_new, []

    def create_then_interrupt(dfd: int, name: str) -> int | None:  # Ctrl-C as the 4th file is made
        created.append(name)
        if len(created) == 4:
            raise KeyboardInterrupt
        return real_create(dfd, name)

    monkeypatch.setattr(localfs_mod, "create_new", create_then_interrupt)
    with connect() as ctx, pytest.raises(KeyboardInterrupt):
        ctx.download("r", out, label="v1", progress=Interrupt(), concurrency=1)
    monkeypatch.setattr(localfs_mod, "create_new", real_create)
    assert 0 < len(os.listdir(out / "d")) < 8
    assert not [n for n in os.listdir(out / "d") if n.startswith(".datamon")]
    assert sorted(os.listdir(tmp_path / "out")) == ["d"]  # no marker file, and the download is unfinished
    # a rerun of the same download finishes it
    r = dm("bundle", "download", "--repo", "r", "--label", "v1", "--destination", out)
    assert r.code == 0, r
    assert sorted(os.listdir(out / "d")) == [f"f{i}.txt" for i in range(8)]
    assert (out / "top.txt").read_text() == "t"
    assert dm("bundle", "diff", "--repo", "r", "--label", "v1", "--destination", out).out == ""
    # a download of another bundle into it says how to get there
    r = dm("bundle", "download", "--repo", "r", "--label", "v2", "--destination", out)
    one_line(r, 1)
    assert "datamon bundle update --repo r --bundle" in r.err
    # and update works on it (it is a registered download)
    assert dm("bundle", "update", "--repo", "r", "--label", "v2", "--destination", out).code == 0
    assert sorted(os.listdir(out)) == ["x.txt"]


def test_listed_path_through_a_symlinked_directory_stores_the_link(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outside = make_tree(tmp_path / "outside", {"private.key": "SECRET"})
    src = make_tree(tmp_path / "src", {"a.txt": "a", "real": {"b.txt": "b"}})
    os.symlink(outside, src / "lnk")
    assert dm("repo", "create", "--repo", "r").code == 0
    listing = tmp_path / "list.txt"
    listing.write_text("lnk/private.key\na.txt\nreal/b.txt\n")
    listed = upload(dm, src, "listed", "--files", listing)
    plain = upload(dm, src, "plain")
    files = lambda b: dm("bundle", "list", "files", "--repo", "r", "--bundle", b).out  # noqa: E731
    assert "private.key" not in files(listed)
    assert files(listed) == files(plain)
    with connect() as ctx:
        entries = {e.path: e.entry for e in ctx.entries("r", bundle=listed)}
    assert entries["lnk"].is_symlink and entries["lnk"].target == str(outside)
    assert "lnk/private.key" not in entries
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--bundle", listed, "--destination", out).code == 0
    assert os.readlink(out / "lnk") == str(outside)
    # NUL in a listed line: one line, exit 1
    listing.write_bytes(b"a.txt\x00../../etc/passwd\n")
    r = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--files", listing)
    one_line(r, 1)


@pytest.fixture
def deep_cleanup(tmp_path: Path):  # type: ignore[no-untyped-def]
    """pytest's own cleanup of old temporary directories (shutil.rmtree) recurses: remove the
    deep trees here with datamon's iterative, fd-based removal."""
    yield
    from datamon.api.localfs import remove_at

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in os.listdir(tmp_path):
            remove_at(fd, name)
    finally:
        os.close(fd)


def test_a_tree_1500_directories_deep(dm, tmp_path: Path, deep_cleanup) -> None:  # type: ignore[no-untyped-def]
    depth = 1500
    src = tmp_path / "s"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):  # os.makedirs and Path.mkdir(parents=True) recurse
        os.mkdir("d", dir_fd=fd)
        fd, old = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    deep = Path(src, *(["d"] * depth))
    (deep / "leaf.txt").write_text("at the bottom")
    (src / "top.txt").write_text("top")
    assert dm("repo", "create", "--repo", "r").code == 0
    v1 = upload(dm, src, "v1")
    (deep / "leaf.txt").write_text("changed bottom")
    v2 = upload(dm, src, "v2")
    listed = dm("bundle", "list", "files", "--repo", "r", "--bundle", v1)
    assert listed.code == 0 and "leaf.txt" in listed.out, listed
    r = dm("bundle", "diff", "--repo", "r", f"{v1[:12]}..{v2[:12]}")
    assert r.code == 0 and r.out.strip().split("\t")[0] == "U " + "d/" * depth + "leaf.txt", r
    out = tmp_path / "o"
    assert dm("bundle", "download", "--repo", "r", "--bundle", v1, "--destination", out).code == 0
    leaf = Path(out, *(["d"] * depth), "leaf.txt")
    assert leaf.read_text() == "at the bottom"
    r = dm("bundle", "diff", "--repo", "r", "--bundle", v2, "--destination", out)
    assert r.code == 0 and r.out.strip().split("\t")[0] == "U " + "d/" * depth + "leaf.txt", r
    assert dm("bundle", "update", "--repo", "r", "--bundle", v2, "--destination", out).code == 0
    assert leaf.read_text() == "changed bottom"
    # a deep directory deleted by update (iteratively, without following anything)
    flat = make_tree(tmp_path / "flat", {"top.txt": "top"})
    upload(dm, flat, "flat")
    assert dm("bundle", "update", "--repo", "r", "--label", "flat", "--destination", out).code == 0
    assert sorted(os.listdir(out)) == ["top.txt"]


def test_file_growing_after_the_scan_is_read_bounded(
    dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import datamon.api.dirscan as ds
    import datamon.api.uploadwalk as up

    src = make_tree(tmp_path / "src", {"grows.log": "x" * 100, "same.txt": "s"})
    big = os.urandom(1 << 20) * 3  # 3 MiB appended after the scan
    real_list = ds._list_entries

    def list_then_grow(path, end):  # type: ignore[no-untyped-def]
        out = real_list(path, end)
        with open(src / "grows.log", "ab") as f:
            f.write(big)
        return out

    limits: list[int] = []
    real_read = ds._read_upto
    monkeypatch.setattr(ds, "_list_entries", list_then_grow)
    monkeypatch.setattr(ds, "_read_upto", lambda fd, n: limits.append(n) or real_read(fd, n))
    monkeypatch.setattr(up, "_read_upto", lambda fd, n: limits.append(n) or real_read(fd, n))
    assert dm("repo", "create", "--repo", "r").code == 0
    bid = upload(dm, src, "v1")
    assert max(limits) <= 101
    with connect() as ctx:
        assert cat(ctx, bid, "grows.log") == b"x" * 100 + big
        entry = {e.path: e.entry for e in ctx.entries("r", bundle=bid)}["grows.log"]
        assert entry.size == 100 + len(big)


def test_names_that_are_not_utf8_round_trip(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    bsrc = os.fsencode(src)
    os.mkdir(bsrc + b"/r\xe9p")
    for name, data in ((b"caf\xe9.txt", b"latin-1 name"), (b"r\xe9p/\xff\xfe.bin", b"two bad bytes")):
        with open(bsrc + b"/" + name, "wb") as f:
            f.write(data)
    os.symlink(b"caf\xe9.txt", bsrc + b"/l\xe9nk")
    assert dm("repo", "create", "--repo", "r").code == 0
    bid = upload(dm, src, "v1")
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--bundle", bid, "--destination", out).code == 0
    bout = os.fsencode(out)
    assert sorted(os.listdir(bout)) == sorted(os.listdir(bsrc))
    assert sorted(os.listdir(bout + b"/r\xe9p")) == [b"\xff\xfe.bin"]
    with open(bout + b"/caf\xe9.txt", "rb") as f:
        assert f.read() == b"latin-1 name"
    assert os.readlink(bout + b"/l\xe9nk") == b"caf\xe9.txt"
    r = dm("bundle", "diff", "--repo", "r", "--bundle", bid, "--destination", out)
    assert r.code == 0 and r.out == "", r
    with open(bout + b"/caf\xe9.txt", "wb") as f:
        f.write(b"edited")
    r = dm("bundle", "diff", "--repo", "r", "--bundle", bid, "--destination", out, "--json")
    assert r.code == 0 and r.out.count("\n") == 1, r
    assert dm("bundle", "update", "--repo", "r", "--bundle", bid, "--destination", out).code == 0
    with open(bout + b"/caf\xe9.txt", "rb") as f:
        assert f.read() == b"latin-1 name"
    # the stat cache holds these names too: a re-upload reads nothing
    with connect() as ctx:
        assert ctx.upload("r", src, message="again").read_files == 0
        assert ctx.upload("r", out, message="from the download").read_files == 0


def test_a_cached_tree_is_reused_only_while_indexed_and_current(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The stat cache's directory rows (docs/security.md, "What a re-upload takes from the stat
    cache"): a cached tree is reused only while the index has it as a tree and the index epoch
    is the one it was recorded under; the documented gap (a hand-deleted row below a cached
    tree) is found by verify and closed by verify --repair and a re-upload."""
    from datamon.api.verify import verify
    from datamon.cas.ingest import INDEX_EPOCH_BLOB

    src = make_tree(tmp_path / "src", {"a": {"x.txt": "x" * 100, "y.txt": "y" * 200}, "b": {"z.txt": "z"}})
    assert dm("repo", "create", "--repo", "r").code == 0
    with connect() as ctx:
        first = ctx.upload("r", src, message="v1")
        assert ctx.upload("r", src, message="v2").reused_dirs == 3
        trees = {e.path: e.entry.key for e in ctx.entries("r", bundle=first.bundle.id) if e.entry.is_dir}
        x = next(e.entry.key for e in ctx.entries("r", bundle=first.bundle.id) if e.path == "a/x.txt")

        # the tree row is gone: not reused, written again
        ctx.meta.remove_objects([trees["a"]])
        again = ctx.upload("r", src, message="v3")
        assert again.reused_dirs == 0 and again.read_files == 0
        assert trees["a"] in ctx.meta.lookup_objects([trees["a"]])
        assert verify(ctx, full=True).ok

        # another epoch (verify --repair, admin reindex): nothing cached before is reused
        ctx.cas.blobs.put(INDEX_EPOCH_BLOB, b"another")
        assert ctx.upload("r", src, message="v4").reused_dirs == 0
        assert ctx.upload("r", src, message="v5").reused_dirs == 3

        # the gap: a row below a cached tree deleted by hand; the tree is reused, verify says so
        ctx.meta.remove_objects([x])
        gap = ctx.upload("r", src, message="v6")
        assert gap.reused_dirs == 3 and gap.read_files == 0
        report = verify(ctx)
        assert not report.ok and {a.path for a in report.affected if a.bundle == gap.bundle.id} == {"a/x.txt"}
        verify(ctx, repair=True)  # changes the epoch
        fixed = ctx.upload("r", src, message="v7")
        assert fixed.reused_dirs == 0 and fixed.read_files == 1
        assert x in ctx.meta.lookup_objects([x])
        assert verify(ctx, full=True).ok


def test_a_changed_directory_takes_its_unchanged_keys_from_its_cached_tree(tmp_path: Path) -> None:
    """In a directory where one file changed, the others keep their cached keys on the word of the
    directory's cached tree (one index lookup instead of one per file) — only while that tree is
    indexed and current: without it, every cached key is looked up and a missing one is read."""
    src = make_tree(tmp_path / "src", {"d": {f"f{i}.txt": f"{i}" * 50 for i in range(20)}})
    with connect() as ctx:
        ctx.create_repo("r")
        first = ctx.upload("r", src, message="v1")
        tree_d = next(e.entry.key for e in ctx.entries("r", bundle=first.bundle.id) if e.path == "d")
        (src / "d" / "f0.txt").write_text("changed")
        second = ctx.upload("r", src, message="v2")
        assert second.read_files == 1
        # the tree that vouched for the 19 unchanged keys is gone: they are looked up one by one
        gone = next(e.entry.key for e in ctx.entries("r", bundle=first.bundle.id) if e.path == "d/f1.txt")
        tree_d2 = next(e.entry.key for e in ctx.entries("r", bundle=second.bundle.id) if e.path == "d")
        ctx.meta.remove_objects([tree_d, tree_d2, gone])
        (src / "d" / "f0.txt").write_text("changed again")
        third = ctx.upload("r", src, message="v3")
        assert third.read_files == 2  # the changed file, and the one whose object is not stored
        assert gone in ctx.meta.lookup_objects([gone])
        from datamon.api.verify import verify

        assert verify(ctx, repo="r", bundle=third.bundle.id, full=True).ok
