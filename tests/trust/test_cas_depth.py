"""A tree 1,500 directories deep (deeper than Python's recursion limit) works in every part
of the CAS, verify and the mount that walks trees: nothing recurses on the depth of user data."""

from __future__ import annotations

import sys
from pathlib import Path

from datamon.api.verify import verify
from datamon.fuse.commit import MANIFEST, commit, retry, save_manifest
from datamon.fuse.overlay import MutableView
from datamon.fuse.vfs import BundleView
from tests.trust.test_cas_common import deep_bundle, small_ctx

DEPTH = 1500


def test_deep_tree_verify_mount_and_commit(tmp_path: Path) -> None:
    assert sys.getrecursionlimit() < DEPTH
    with small_ctx(tmp_path / "s") as ctx:
        bid, leaf = deep_bundle(ctx, DEPTH, b"deep leaf\n")
        b = ctx.bundle("r", bid)
        assert verify(ctx, full=True).ok
        view = BundleView(ctx, b, prefetch=0)
        fh = view.open("/" + leaf)
        assert view.read(fh, 0, 100) == b"deep leaf\n"
        assert [d.name for d in view.readdir("/" + leaf.rsplit("/", 1)[0])] == ["leaf.bin"]
        view.close()
        # copy-on-write view: change the deepest file, add a file beside it, commit
        mv = MutableView(ctx, b, tmp_path / "staging")
        fh = mv.open("/" + leaf, 1)  # O_WRONLY
        mv.write(fh, b"changed!!", 0)
        mv.release(fh)
        parent = "/" + leaf.rsplit("/", 1)[0]
        fh = mv.create(parent + "/new.txt", 0o644)
        mv.write(fh, b"new", 0)
        mv.release(fh)
        save_manifest(mv, "r", "deep edit")  # written and read back without recursion
        assert (tmp_path / "staging" / MANIFEST).is_file()
        mv.close()
        new = retry(ctx, tmp_path / "staging")
        assert new is not None and new.file_count == 2
        view = BundleView(ctx, new, prefetch=0)
        fh = view.open("/" + leaf)
        assert view.read(fh, 0, 100) == b"changed!!\n"  # 9 bytes written over "deep leaf\n"
        fh = view.open(parent + "/new.txt")
        assert view.read(fh, 0, 10) == b"new"
        view.close()
        assert verify(ctx, full=True).ok
        # and a direct commit of a deep view
        mv = MutableView(ctx, new, tmp_path / "staging2")
        mv.unlink(parent + "/new.txt")
        again = commit(ctx, "r", mv, message="drop")
        mv.close()
        assert again is not None and again.file_count == 1


def test_verify_names_a_bad_object_deep_down(tmp_path: Path) -> None:
    with small_ctx(tmp_path / "s") as ctx:
        bid, leaf = deep_bundle(ctx, DEPTH, b"x" * 5000)
        leaf_key = BundleView(ctx, ctx.bundle("r", bid), prefetch=0).lookup("/" + leaf).key
        ctx.meta.remove_objects([leaf_key])
        r = verify(ctx)
        assert [a.path for a in r.affected] == [leaf]
