"""The read side at scale, without timing anything: listings stream (the first entry comes
before the rest of the bundle is decoded), a diff never decodes the subtrees two bundles
share, a download streams its trees and records directory digests that let ``update`` skip
every unchanged directory without comparing (or reading) a file, small files are located
through pack indexes (their trust: ``tests/trust/test_pack_index.py``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import datamon.cas.tree as tree_mod
from datamon.api.bundles import iter_entries
from datamon.api.context import Context, connect
from tests.conftest import make_tree

DIRS = 6
PER_DIR = 5


def _spec(changed: str = "") -> dict[str, object]:
    spec: dict[str, object] = {
        f"d{d}": {
            f"f{i}.txt": f"file {d}/{i}" + (" changed" if f"d{d}/f{i}.txt" == changed else "")
            for i in range(PER_DIR)
        }
        for d in range(DIRS)
    }
    spec["top.txt"] = "top"
    return spec


def _fixed_times(root: Path) -> Path:
    """Every file and directory at one mtime, as in two uploads of a tree where one file changed."""
    t = 1_700_000_000_000_000_000
    for d, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(d, name), ns=(t, t))
        os.utime(d, ns=(t, t))
    return root


@pytest.fixture
def two_bundles(tmp_path: Path) -> tuple[str, str]:
    """Bundle one, and bundle two with one file of d3 changed (every other directory shared)."""
    a = _fixed_times(make_tree(tmp_path / "a", _spec()))
    b = _fixed_times(make_tree(tmp_path / "b", _spec(changed="d3/f2.txt")))
    with connect() as ctx:
        ctx.create_repo("r")
        one = ctx.upload("r", a, "one").bundle.id
        two = ctx.upload("r", b, "two").bundle.id
    return one, two


class Decodes:
    """Counts tree objects decoded (every reader of a tree goes through ``decode_tree`` or
    ``scan_tree``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = tree_mod.decode_tree

        def counting(raw: bytes) -> list[Any]:
            self.count += 1
            return real(raw)

        monkeypatch.setattr(tree_mod, "decode_tree", counting)


def test_listing_yields_before_the_bundle_is_decoded(
    two_bundles: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = two_bundles
    decodes = Decodes(monkeypatch)
    with connect() as ctx:
        it = iter_entries(ctx, ctx.bundle("r", one), files_only=True)
        first = next(it)
        assert first.path == "d0/f0.txt"
        assert decodes.count == 2  # the root and d0, not the other directories
        rest = [first, *it]
    assert decodes.count == 1 + DIRS
    assert len(rest) == DIRS * PER_DIR + 1
    assert [e.path for e in rest] == sorted(e.path for e in rest)


def test_list_files_cli_output(dm: Any, two_bundles: tuple[str, str]) -> None:
    import json

    one, _ = two_bundles
    r = dm("bundle", "list", "files", "--repo", "r", "--bundle", one)
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0] == f"d0/f0.txt\t{len('file 0/0')}" and lines[-1] == "top.txt\t3"
    assert len(lines) == DIRS * PER_DIR + 1
    rows = [
        json.loads(x)
        for x in dm("bundle", "list", "files", "--repo", "r", "--bundle", one, "--json").out.splitlines()
    ]
    assert [x["path"] for x in rows] == [ln.split("\t")[0] for ln in lines]
    assert rows[0]["kind"] == "file" and rows[0]["mode"] == "644" and rows[0]["mtime"].endswith("Z")
    fmt = dm("bundle", "list", "files", "--repo", "r", "--bundle", one, "--format", "{path}:{size}").out
    assert fmt.splitlines()[-1] == "top.txt:3"


def test_diff_skips_shared_subtrees(two_bundles: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from datamon.api.diff import diff_bundles

    one, two = two_bundles
    decodes = Decodes(monkeypatch)
    with connect() as ctx:
        changes = diff_bundles(ctx, "r", one, two)
    assert [(c.op, c.path) for c in changes] == [("U", "d3/f2.txt")]
    assert decodes.count == 4  # both roots and both d3: none of the shared directories


def _download(ctx: Context, bundle: str, dest: Path) -> None:
    ctx.download("r", dest, bundle=bundle)


def test_update_checks_directories_not_files(
    two_bundles: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a download every directory's digest is recorded: an update (or diff) of an
    untouched download compares no file, and only the directories that differ are read."""
    import datamon.api.diff as diff_mod

    one, two = two_bundles
    out = tmp_path / "out"
    views: list[diff_mod._LocalView] = []
    real_init = diff_mod._LocalView.__init__

    def keep(self: Any, *a: Any, **kw: Any) -> None:
        real_init(self, *a, **kw)
        views.append(self)

    monkeypatch.setattr(diff_mod._LocalView, "__init__", keep)

    def no_hashing(self: Any, path: str, st: Any) -> bytes:
        raise AssertionError(f"{path} was compared file by file")

    with connect() as ctx:
        _download(ctx, one, out)
        monkeypatch.setattr(diff_mod._LocalView, "file_key", no_hashing)
        assert diff_mod.diff_destination(ctx, "r", out, bundle=one) == []
        assert (views[-1].fast_dirs, views[-1].slow_dirs) == (1 + DIRS, 0)
        r = diff_mod.update(ctx, "r", out, bundle=two)
        assert [(c.op, c.path) for c in r.changes] == [("U", "d3/f2.txt")]
        assert (out / "d3/f2.txt").read_text() == "file 3/2 changed"
        # the update recorded what it wrote: back to bundle one, again without a file compared
        r = diff_mod.update(ctx, "r", out, bundle=one)
        assert [(c.op, c.path) for c in r.changes] == [("U", "d3/f2.txt")]
        assert views[-1].slow_dirs == 0
        monkeypatch.undo()
        # a local edit (same size, mtime put back) is seen: its directory is compared file by file
        f = out / "d1/f1.txt"
        st = f.stat()
        f.write_text("file 1/X")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        monkeypatch.setattr(diff_mod._LocalView, "__init__", keep)
        changes = diff_mod.diff_destination(ctx, "r", out, bundle=one)
        assert [(c.op, c.path) for c in changes] == [("U", "d1/f1.txt")]
        assert views[-1].slow_dirs == 1
        # as are a new file and a removed one
        (out / "d2/new.txt").write_text("new")
        (out / "d4/f0.txt").unlink()
        changes = diff_mod.diff_destination(ctx, "r", out, bundle=one)
        assert sorted((c.op, c.path) for c in changes) == [
            ("A", "d4/f0.txt"),
            ("D", "d2/new.txt"),
            ("U", "d1/f1.txt"),
        ]
        diff_mod.update(ctx, "r", out, bundle=one)
        assert diff_mod.diff_destination(ctx, "r", out, bundle=one) == []
        assert views[-1].slow_dirs == 0  # the update recorded the directories it compared


def test_download_locates_small_files_through_pack_indexes(
    two_bundles: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamon.api.materialize as materialize_mod
    from datamon.cas.packindex import PackLocator

    one, _ = two_bundles
    locators: list[PackLocator] = []
    real = PackLocator.__init__

    def keep(self: Any, *a: Any, **kw: Any) -> None:
        real(self, *a, **kw)
        locators.append(self)

    monkeypatch.setattr(PackLocator, "__init__", keep)
    monkeypatch.setattr(materialize_mod, "BATCH_FILES", 1000)
    with connect() as ctx:
        _download(ctx, one, tmp_path / "out")
    (loc,) = locators
    assert loc.pack_keys + loc.db_keys == DIRS * PER_DIR + 1
    assert loc.db_keys <= 2  # one probe per pack the batch needed
    assert (tmp_path / "out/d5/f4.txt").read_text() == "file 5/4"


def test_interrupted_download_keeps_digests_of_finished_directories(
    two_bundles: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datamon.api.diff as diff_mod
    import datamon.api.materialize as materialize_mod

    one, _ = two_bundles
    monkeypatch.setattr(materialize_mod, "BATCH_FILES", PER_DIR)

    class Stop:
        calls = 0

        def start(self, files: int, nbytes: int) -> None:
            pass

        def advance(self, files: int, nbytes: int) -> None:
            if files:
                Stop.calls += 1
                if Stop.calls == 3:
                    raise KeyboardInterrupt

        def finish(self) -> None:
            pass

    out = tmp_path / "out"
    with connect() as ctx:
        ctx.cas  # noqa: B018 (opened before the fds are counted)
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(KeyboardInterrupt):
            ctx.download("r", out, bundle=one, progress=Stop(), concurrency=1)
        assert len(os.listdir("/proc/self/fd")) == fds  # every directory fd of every task closed
        views: list[diff_mod._LocalView] = []
        real_init = diff_mod._LocalView.__init__

        def keep(self: Any, *a: Any, **kw: Any) -> None:
            real_init(self, *a, **kw)
            views.append(self)

        monkeypatch.setattr(diff_mod._LocalView, "__init__", keep)
        ctx.download("r", out, bundle=one)  # finishes it (an update)
        assert views[0].fast_dirs >= 2  # d0 and d1 were complete
        assert diff_mod.diff_destination(ctx, "r", out, bundle=one) == []
        assert views[-1].slow_dirs == 0


def test_a_retargeted_symlink_misses_its_directory_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink's target is part of its directory's digest: pointed elsewhere (same name, no
    file touched), the directory is compared entry by entry and the link is a change."""
    import datamon.api.diff as diff_mod

    src = make_tree(tmp_path / "src", {"d": {"a.txt": "a", "b.txt": "b"}})
    os.symlink("a.txt", src / "d" / "link")
    out = tmp_path / "out"
    views: list[diff_mod._LocalView] = []
    real_init = diff_mod._LocalView.__init__

    def keep(self: Any, *a: Any, **kw: Any) -> None:
        real_init(self, *a, **kw)
        views.append(self)

    monkeypatch.setattr(diff_mod._LocalView, "__init__", keep)
    with connect() as ctx:
        ctx.create_repo("r")
        one = ctx.upload("r", src, "one").bundle.id
        _download(ctx, one, out)
        assert diff_mod.diff_destination(ctx, "r", out, bundle=one) == []
        assert (views[-1].fast_dirs, views[-1].slow_dirs) == (2, 0)
        os.unlink(out / "d" / "link")
        os.symlink("b.txt", out / "d" / "link")
        changes = diff_mod.diff_destination(ctx, "r", out, bundle=one)
        assert [(c.op, c.path) for c in changes] == [("U", "d/link")]
        assert (views[-1].fast_dirs, views[-1].slow_dirs) == (1, 1)


def test_a_large_update_streams_its_changes(
    two_bundles: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update with more than CHANGES_KEPT changes applies them as they are compared (the
    result keeps the first CHANGES_KEPT, the counts are complete) and ends equal to the bundle,
    deleting what it does not hold, also where a file stands in for a directory."""
    import datamon.api.diff as diff_mod

    one, two = two_bundles
    out = tmp_path / "out"
    monkeypatch.setattr(diff_mod, "CHANGES_KEPT", 3)
    with connect() as ctx:
        _download(ctx, one, out)
        for d in range(DIRS):  # every directory differs, its digest no longer matches
            (out / f"d{d}" / "f0.txt").unlink()
            (out / f"d{d}" / "extra.txt").write_text("not in the bundle")
        shutil.rmtree(out / "d5")
        (out / "d5").write_text("a file where the bundle has a directory")
        r = diff_mod.update(ctx, "r", out, bundle=two)
        assert len(r.changes) == 3
        assert (r.added, r.updated, r.deleted) == (DIRS - 1 + PER_DIR, 1, DIRS - 1 + 1)
        assert r.files == DIRS - 1 + PER_DIR + 1 and r.bytes > 0
        assert diff_mod.diff_destination(ctx, "r", out, bundle=two) == []
        assert (out / "d3/f2.txt").read_text() == "file 3/2 changed"
        assert (out / "d5/f4.txt").read_text() == "file 5/4"
        assert not (out / "d1/extra.txt").exists()
