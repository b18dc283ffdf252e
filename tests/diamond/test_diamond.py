"""Diamonds on SQLite and a local blob store: merge equals a single upload, retries replace,
conflicts, commit once, cancel + gc, gc keeps open splits, verify sees a broken split."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamon.api import diamond as dia
from datamon.api.gc import gc
from datamon.api.treemerge import SplitTree, merge_trees
from datamon.api.verify import verify
from datamon.errors import Conflict, NotFound, UsageError
from tests.diamond.helpers import files_of, make_dataset, partition
from tests.integrity.helpers import contents, open_ctx, pack_files


def test_merge_of_interleaved_splits_equals_single_upload(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=400)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r", tag="t")
        for i, part in enumerate(partition(src, 3)):
            dia.add_split(ctx, "r", d.id, src, split=f"p{i}", files=part)
        r = dia.commit(ctx, "r", d.id, message="diamond", label="L")
        single = ctx.upload("r", src, message="single")
        assert r.bundle.tree == single.bundle.tree
        assert (r.bundle.file_count, r.bundle.total_size) == (single.files, single.bytes)
        assert r.trees_written > 0 and r.conflicts == []
        assert ctx.get_label("r", "L").bundle_id == r.bundle.id
        assert dia.get(ctx, "r", d.id).state == dia.COMMITTED
        ctx.download("r", tmp_path / "out", bundle=r.bundle.id)
        assert contents(tmp_path / "out") == contents(src)
        assert os.readlink(tmp_path / "out" / "links" / "to-a") == "../a/0.txt"
        assert (tmp_path / "out" / "empty" / "dir").is_dir()
        assert verify(ctx, full=True).ok


def test_disjoint_splits_reuse_subtrees_without_reading_them(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=200)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        tops = sorted(p.name for p in src.iterdir())
        for name in tops:
            dia.add_split(ctx, "r", d.id, src, files=files_of(src, name))
        r = dia.commit(ctx, "r", d.id, message="m")
        assert r.trees_read == len(tops)  # the roots; every subtree below is reused as it is
        assert r.bundle.tree == ctx.upload("r", src, message="single").bundle.tree


def test_single_split_commits_its_own_tree(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=20)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        s = dia.add_split(ctx, "r", d.id, src)
        r = dia.commit(ctx, "r", d.id, message="m")
        assert r.bundle.tree == s.split.tree and r.trees_written == 0


def test_retried_split_replaces_the_earlier_run(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=60)
    parts = partition(src, 2)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        dia.add_split(ctx, "r", d.id, src, split="w0", files=parts[1])  # wrong data first
        dia.add_split(ctx, "r", d.id, src, split="w0", files=parts[0])  # the retry replaces it
        dia.add_split(ctx, "r", d.id, src, split="w1", files=parts[1])
        splits = dia.list_splits(ctx, "r", d.id)
        assert [s.id for s in splits] == ["w0", "w1"] and all(s.state == dia.DONE for s in splits)
        r = dia.commit(ctx, "r", d.id, message="m")
        assert r.conflicts == []
        assert r.bundle.tree == ctx.upload("r", src, message="single").bundle.tree


def test_a_stale_run_of_a_split_cannot_land_over_its_retry(tmp_path: Path) -> None:
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        meta = ctx.meta
        meta.start_split("r", d.id, "s", generation="old", now_ns=1)
        meta.start_split("r", d.id, "s", generation="new", now_ns=2)
        with pytest.raises(Conflict, match="restarted"):
            meta.finish_split(
                "r", d.id, "s", generation="old", tree="00" * 32, file_count=0, total_size=0, now_ns=3
            )
        (s,) = meta.list_splits("r", d.id)
        assert s.generation == "new" and s.state == dia.RUNNING


def test_running_split_blocks_commit_unless_ignored(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=10)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        done = dia.add_split(ctx, "r", d.id, src)
        ctx.meta.start_split("r", d.id, "dead-worker", generation="g", now_ns=1)
        with pytest.raises(Conflict, match="dead-worker"):
            dia.commit(ctx, "r", d.id, message="m")
        r = dia.commit(ctx, "r", d.id, message="m", ignore_running=True)
        assert r.bundle.tree == done.split.tree


def _conflicting(tmp_path: Path) -> tuple[Path, Path, Path]:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, text in ((a, "one"), (b, "two"), (c, "one")):
        (root / "d").mkdir(parents=True)
        (root / "d" / "same.txt").write_text("identical")
        (root / "d" / "clash.txt").write_text(text)
        (root / f"only-{root.name}.txt").write_text(root.name)
    (b / "kind").write_text("a file here")
    (c / "kind").mkdir()
    (c / "kind" / "inside.txt").write_text("a dir here")
    return a, b, c


def test_conflicts_fail_by_default_and_name_paths_and_splits(tmp_path: Path) -> None:
    a, b, c = _conflicting(tmp_path)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        for split, root in (("sa", a), ("sb", b), ("sc", c)):
            dia.add_split(ctx, "r", d.id, root, split=split)
        with pytest.raises(dia.DiamondConflicts) as err:
            dia.commit(ctx, "r", d.id, message="m")
        assert err.value.exit_code == 3
        paths = {c.path: [v.split for v in c.versions] for c in err.value.conflicts}
        assert paths == {"d/clash.txt": ["sa", "sb", "sc"], "kind": ["sb", "sc"]}
        assert "d/clash.txt (sa, sb, sc)" in str(err.value)
        assert dia.get(ctx, "r", d.id).state == dia.INITIALIZED  # nothing happened
        assert ctx.meta.list_bundles("r") == []


def test_last_wins_keeps_the_latest_and_records_every_conflict(tmp_path: Path) -> None:
    a, b, c = _conflicting(tmp_path)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        for split, root in (("sa", a), ("sb", b), ("sc", c)):
            dia.add_split(ctx, "r", d.id, root, split=split)
        r = dia.commit(ctx, "r", d.id, message="m", conflicts=dia.LAST_WINS)
        ctx.download("r", tmp_path / "out", bundle=r.bundle.id)
        got = contents(tmp_path / "out")
        assert got == {
            "d/same.txt": b"identical",
            "d/clash.txt": b"one",  # sc finished last
            "kind/inside.txt": b"a dir here",
            "only-a.txt": b"a",
            "only-b.txt": b"b",
            "only-c.txt": b"c",
        }
        assert r.bundle.file_count == len(got)
        rows = ctx.meta.list_conflicts("r", d.id)
        assert {(x.path, x.split, x.winner) for x in rows} == {
            ("d/clash.txt", "sa", True),  # same content as the winner's
            ("d/clash.txt", "sb", False),
            ("d/clash.txt", "sc", True),
            ("kind", "sb", False),
            ("kind", "sc", True),
        }
        row = dia.get(ctx, "r", d.id)
        assert row.conflict_count == 2 and row.conflict_mode == "last-wins" and row.conflicts_blob
        record = dia.read_conflict_record(ctx, row)
        assert record is not None and [x["path"] for x in record["conflicts"]] == ["d/clash.txt", "kind"]
        # the losing version stays readable: gc keeps what a commit recorded
        gc(ctx, grace_ns=0)
        loser = next(x for x in rows if x.split == "sb" and x.path == "d/clash.txt")
        assert ctx.cas.get_many([bytes.fromhex(loser.key)]) == {bytes.fromhex(loser.key): b"two"}


def test_ignore_keeps_the_latest_without_a_record(tmp_path: Path) -> None:
    a, b, c = _conflicting(tmp_path)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        for split, root in (("sa", a), ("sb", b), ("sc", c)):
            dia.add_split(ctx, "r", d.id, root, split=split)
        r = dia.commit(ctx, "r", d.id, message="m", conflicts=dia.IGNORE)
        assert ctx.meta.list_conflicts("r", d.id) == [] and r.conflicts == []
        assert dia.get(ctx, "r", d.id).conflicts_blob is None


def test_last_wins_when_a_file_beats_a_directory_counts_files_right(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "x" / "deep").mkdir(parents=True)
    for i in range(5):
        (a / "x" / "deep" / f"{i}").write_text(str(i))
    (a / "keep.txt").write_text("k")
    b.mkdir()
    (b / "x").write_text("now a file")
    (b / "keep.txt").write_text("k")
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        dia.add_split(ctx, "r", d.id, a, split="a")
        dia.add_split(ctx, "r", d.id, b, split="b")
        r = dia.commit(ctx, "r", d.id, message="m", conflicts=dia.LAST_WINS)
        assert r.bundle.file_count == 2 and r.bundle.total_size == len("now a file") + 1
        assert [c.path for c in r.conflicts] == ["x"]


def test_merge_is_order_independent_for_identical_overlap(tmp_path: Path) -> None:
    """Overlapping splits that agree are no conflict, and the result is the union."""
    src = make_dataset(tmp_path / "src", n=120)
    parts = partition(src, 3)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        dia.add_split(ctx, "r", d.id, src, files=parts[0] + parts[1])
        dia.add_split(ctx, "r", d.id, src, files=parts[1] + parts[2])
        dia.add_split(ctx, "r", d.id, src, files=parts[0] + parts[2])
        r = dia.commit(ctx, "r", d.id, message="m")
        single = ctx.upload("r", src, message="single")
        assert r.conflicts == []
        assert (r.bundle.tree, r.bundle.file_count, r.bundle.total_size) == (
            single.bundle.tree,
            single.files,
            single.bytes,
        )


def test_commit_once_cancel_and_closed_diamonds(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=10)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        with pytest.raises(NotFound):
            dia.initialize(ctx, "nope")
        d = dia.initialize(ctx, "r", diamond="my-diamond")
        with pytest.raises(Conflict):
            dia.initialize(ctx, "r", diamond="my-diamond")
        with pytest.raises(UsageError):
            dia.initialize(ctx, "r", diamond="bad/id")
        with pytest.raises(UsageError, match="no finished split"):
            dia.commit(ctx, "r", d.id, message="m")
        dia.add_split(ctx, "r", d.id, src)
        dia.commit(ctx, "r", d.id, message="m")
        with pytest.raises(Conflict, match="already committed"):
            dia.commit(ctx, "r", d.id, message="again")
        with pytest.raises(Conflict):
            dia.add_split(ctx, "r", d.id, src)
        with pytest.raises(Conflict):
            dia.cancel(ctx, "r", d.id)
        e = dia.initialize(ctx, "r")
        assert dia.cancel(ctx, "r", e.id).state == dia.CANCELED
        assert dia.cancel(ctx, "r", e.id).state == dia.CANCELED  # idempotent
        with pytest.raises(Conflict, match="canceled"):
            dia.commit(ctx, "r", e.id, message="m")
        assert [x.id for x in dia.list_diamonds(ctx, "r", dia.CANCELED)] == [e.id]
        assert len(ctx.meta.list_bundles("r")) == 1


def test_gc_keeps_open_splits_and_cancel_leaves_nothing(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=80)
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        assert pack_files(root) == []
        d = dia.initialize(ctx, "r")
        for part in partition(src, 2):
            dia.add_split(ctx, "r", d.id, src, files=part)
        before = sorted(pack_files(root))
        rep = gc(ctx, grace_ns=0)  # the splits are roots: nothing of theirs goes
        assert rep.garbage_objects == 0 and sorted(pack_files(root)) == before
        assert verify(ctx, full=True).ok
        dia.cancel(ctx, "r", d.id)
        gc(ctx, grace_ns=0)
        assert pack_files(root) == []
        assert ctx.meta.list_packs() == []


def test_verify_reports_a_split_whose_tree_is_missing(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=10)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        s = dia.add_split(ctx, "r", d.id, src, split="broken")
        assert verify(ctx).ok and verify(ctx).splits == 1
        ctx.meta.remove_objects([bytes.fromhex(s.split.tree or "")])
        rep = verify(ctx)
        assert not rep.ok
        assert [(a.repo, a.bundle, a.problem.kind) for a in rep.affected] == [
            ("r", f"diamond {d.id} split broken", "missing")
        ]


def test_merge_trees_refuses_unknown_modes_and_nothing(tmp_path: Path) -> None:
    with open_ctx(tmp_path / "s") as ctx:
        with pytest.raises(UsageError):
            merge_trees(ctx.cas, [], "fail")
        with pytest.raises(UsageError):
            merge_trees(ctx.cas, [SplitTree("a", 1, b"\0" * 32, 0, 0)], "sometimes")


def test_new_ids_are_sortable_and_unique() -> None:
    ids = [dia.new_id() for _ in range(200)]
    assert len(set(ids)) == 200 and all(len(i) == 27 and i.isalnum() for i in ids)
