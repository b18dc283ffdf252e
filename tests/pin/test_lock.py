"""``datamon lock add|update|remove|show``: round trips, the file's exact format, hostile lock files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datamon.api import lock
from tests.pin.conftest import Dm, Store

GOLDEN = """\
# datamon.lock: bundles pinned by `datamon lock add|update|remove`. Commit this file.
version = 1

[datasets.digits]
bundle = "{v2}"
files = 4
path = "data/digits"
repo = "mnist"
size = {size2}
tree = "{tree2}"

[datasets.mnist]
bundle = "{v1}"
files = 4
label = "prod"
path = "data/mnist"
repo = "mnist"
size = {size1}
tree = "{tree1}"
"""


def golden(store: Store) -> str:
    b1 = store.ctx.bundle("mnist", bundle=store.v1)
    b2 = store.ctx.bundle("mnist", bundle=store.v2)
    return GOLDEN.format(
        v1=b1.id, v2=b2.id, tree1=b1.tree, tree2=b2.tree, size1=b1.total_size, size2=b2.total_size
    )


def test_lock_file_is_stable_and_diff_friendly(dm: Dm, store: Store, project: Path) -> None:
    r = dm("lock", "add", "mnist", "--repo", "mnist", "--label", "prod", "--path", "data/mnist")
    assert r.code == 0, r
    assert r.out.strip() == store.v1
    r = dm("lock", "add", "digits", "--repo", "mnist", "--bundle", store.v2[:8], "--path", "data/digits")
    assert r.code == 0, r
    text = (project / "datamon.lock").read_text()
    assert text == golden(store)
    # loading and saving again changes nothing, byte for byte
    lf = lock.load(project / "datamon.lock")
    lf.save()
    assert (project / "datamon.lock").read_text() == text


def test_round_trip_add_show_update_remove(dm: Dm, store: Store, project: Path) -> None:
    assert dm("lock", "add", "mnist", "--repo", "mnist", "--label", "prod", "--path", "data/mnist").code == 0
    r = dm("lock", "show", "--json")
    assert r.code == 0, r
    row = json.loads(r.out)
    assert row == {
        "name": "mnist",
        "bundle": store.v1,
        "files": 4,
        "label": "prod",
        "path": "data/mnist",
        "repo": "mnist",
        "size": row["size"],
        "tree": row["tree"],
    }
    assert dm("lock", "show").out.split("\t")[:3] == ["mnist", "mnist", store.v1[:12]]
    assert dm("lock", "show", "--format", "{name}={bundle}").out.strip() == f"mnist={store.v1}"

    # nothing moved: update and --check say so
    r = dm("lock", "update", "--check")
    assert r.code == 0, r
    assert "up to date" in r.out
    # the label moves in the store; the lock does not follow until `lock update`
    store.ctx.set_label("mnist", "prod", store.v2)
    assert lock.load(project / "datamon.lock").get("mnist").bundle == store.v1
    r = dm("lock", "update", "--check")
    assert r.code == 1, r
    assert f"{store.v1[:12]} → {store.v2[:12]}" in r.out
    assert lock.load(project / "datamon.lock").get("mnist").bundle == store.v1  # --check wrote nothing
    r = dm("lock", "update", "mnist")
    assert r.code == 0, r
    # v2: train/notes.txt changed, test/labels.csv deleted, extra.txt added
    assert f"mnist: {store.v1[:12]} → {store.v2[:12]} (label prod): 1 added, 1 changed, 1 deleted" in r.out
    pin = lock.load(project / "datamon.lock").get("mnist")
    assert (pin.bundle, pin.label) == (store.v2, "prod")
    assert dm("lock", "update", "--check").code == 0
    r = dm("lock", "update", "--json")
    assert json.loads(r.out)["new"] == store.v2

    r = dm("lock", "remove", "mnist")
    assert r.code == 0, r
    assert lock.load(project / "datamon.lock").pins == {}
    assert dm("lock", "remove", "mnist").code == 2


def test_add_refuses_duplicates_overlaps_and_paths_outside(
    dm: Dm, store: Store, project: Path, tmp_path: Path
) -> None:
    assert dm("lock", "add", "a", "--repo", "mnist", "--label", "prod", "--path", "data/a").code == 0
    r = dm("lock", "add", "a", "--repo", "mnist", "--label", "prod", "--path", "data/b")
    assert r.code == 3 and "already pinned" in r.err, r
    assert (
        dm("lock", "add", "a", "--repo", "mnist", "--bundle", store.v2, "--path", "data/a", "--force").code
        == 0
    )
    r = dm("lock", "add", "b", "--repo", "mnist", "--label", "prod", "--path", "data/a/inner")
    assert r.code == 1 and "overlaps" in r.err, r
    for bad in (str(tmp_path / "elsewhere"), "..", ".", ".git/hooks"):
        r = dm("lock", "add", "c", "--repo", "mnist", "--label", "prod", "--path", bad)
        assert r.code == 1, (bad, r)
        assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1, r
    assert dm("lock", "add", "c", "--repo", "mnist", "--label", "nope", "--path", "data/c").code == 2
    assert (
        dm("lock", "add", "c", "--repo", "mnist", "--path", "data/c").code == 1
    )  # neither --label nor --bundle
    assert dm("lock", "add", "c", "--repo", "nope", "--label", "prod", "--path", "data/c").code == 2
    assert sorted(lock.load(project / "datamon.lock").pins) == ["a"]


def test_lock_is_found_by_walking_up_and_stops_at_the_git_root(
    dm: Dm, store: Store, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = project / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert dm("lock", "add", "m", "--repo", "mnist", "--label", "prod", "--path", "../../data/m").code == 0
    assert (project / "datamon.lock").is_file()  # created at the top of the work tree
    assert lock.load(project / "datamon.lock").get("m").path == "data/m"
    assert dm("lock", "show").code == 0
    # a lock above the git root is not this project's
    (tmp_path / "datamon.lock").write_text("version = 1\n")
    (project / "datamon.lock").unlink()
    r = dm("lock", "show")
    assert r.code == 2 and "no datamon.lock" in r.err, r
    # --lock names one explicitly
    assert dm("lock", "show", "--lock", str(tmp_path / "datamon.lock")).code == 0


def test_context_is_recorded_unless_default(dm: Dm, store: Store, project: Path, tmp_path: Path) -> None:
    home = os.environ["DATAMON_HOME"]
    r = dm(
        "context", "create", "other", "--blob", f"file://{home}/blobs", "--meta", f"sqlite:///{home}/meta.db"
    )
    assert r.code == 0, r
    assert (
        dm("lock", "add", "a", "--repo", "mnist", "--label", "prod", "--path", "a", "--context", "other").code
        == 0
    )
    assert (
        dm(
            "lock", "add", "b", "--repo", "mnist", "--label", "prod", "--path", "b", "--context", "default"
        ).code
        == 0
    )
    lf = lock.load(project / "datamon.lock")
    assert lf.get("a").context == "other"
    assert lf.get("b").context is None
    assert 'context = "other"' in (project / "datamon.lock").read_text()


HOSTILE = {
    "escapes": ('path = "../outside"', "escapes"),
    "absolute": ('path = "/etc"', "absolute"),
    "git": ('path = "sub/.GIT/hooks"', ".git"),
    "short id": ('bundle = "abc123"', "64 lowercase hex"),
    "unknown key": ('surprise = "x"', "unknown keys"),
    "bad name": (None, "dataset"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_lock_files_are_refused_with_one_line(dm: Dm, store: Store, project: Path, case: str) -> None:
    assert dm("lock", "add", "m", "--repo", "mnist", "--label", "prod", "--path", "data/m").code == 0
    p = project / "datamon.lock"
    text = p.read_text()
    line, mention = HOSTILE[case]
    if line is None:
        text = text.replace("[datasets.m]", '[datasets."a/b"]')
    else:
        key = line.split(" =")[0]
        lines = [ln for ln in text.splitlines() if not ln.startswith(key + " =")]
        text = "\n".join([*lines, line]) + "\n"
    p.write_text(text)
    for args in (("lock", "show"), ("pull",), ("lock", "verify")):
        r = dm(*args)
        assert r.code == 1, (args, r)
        lines_ = [ln for ln in r.err.splitlines() if ln.strip()]
        assert len(lines_) == 1 and lines_[0].startswith("error: ") and mention in lines_[0], r


def test_symlink_out_of_the_project_is_refused(dm: Dm, store: Store, project: Path, tmp_path: Path) -> None:
    assert dm("lock", "add", "m", "--repo", "mnist", "--label", "prod", "--path", "data/m").code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, project / "data")
    r = dm("pull")
    assert r.code == 1 and "symlink" in r.err, r
    assert list(outside.iterdir()) == []
