"""``datamon pull`` and ``datamon lock verify``: exact bytes, nothing moved twice, offline checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from datamon.api import lock
from tests.conftest import make_tree
from tests.pin.conftest import V1, Dm, Reads, Store, files_under


def _add(dm: Dm, label: str = "prod") -> None:
    r = dm("lock", "add", "mnist", "--repo", "mnist", "--label", label, "--path", "data/mnist")
    assert r.code == 0, r


def _expected(tmp_path: Path) -> dict[str, bytes]:
    return files_under(make_tree(tmp_path / "expected", V1))


def test_pull_then_second_pull_moves_nothing(
    dm: Dm, store: Store, project: Path, reads: Reads, tmp_path: Path
) -> None:
    _add(dm)
    reads.reset()
    r = dm("pull", "--json")
    assert r.code == 0, r
    first = json.loads(r.out)
    assert first["action"] == "download" and first["files"] == 4 and first["bytes"] > 0
    assert reads.bytes > 0
    assert files_under(project / "data/mnist") == _expected(tmp_path)

    reads.reset()
    r = dm("pull", "--json")
    assert r.code == 0, r
    again = json.loads(r.out)
    assert (again["action"], again["files"], again["bytes"]) == ("none", 0, 0)
    assert "0 B transferred" in r.err
    assert (reads.calls, reads.bytes) == (0, 0), reads.names


def test_label_move_changes_nothing_until_lock_update(
    dm: Dm, store: Store, project: Path, reads: Reads, tmp_path: Path
) -> None:
    _add(dm)
    assert dm("pull").code == 0
    store.ctx.set_label("mnist", "prod", store.v2)
    r = dm("pull", "--json")
    assert json.loads(r.out)["action"] == "none"
    assert files_under(project / "data/mnist") == _expected(tmp_path)
    assert dm("lock", "update").code == 0
    reads.reset()
    r = dm("pull", "--json")
    assert r.code == 0, r
    moved = json.loads(r.out)
    # only the differences move: notes.txt changed, extra.txt added (test/labels.csv deleted)
    assert (moved["action"], moved["files"]) == ("update", 2)
    assert moved["bytes"] == len("v2\n") + len("new in v2\n")
    got = files_under(project / "data/mnist")
    assert got["train/notes.txt"] == b"v2\n" and got["extra.txt"] == b"new in v2\n"
    assert "test/labels.csv" not in got
    assert dm("lock", "verify").code == 0


def _flip_one_byte(p: Path) -> None:
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only content differs


@pytest.mark.parametrize("damage", ["flip", "add", "delete", "symlinked dir"])
def test_lock_verify_finds_damage_offline_and_pull_repairs(
    dm: Dm, store: Store, project: Path, tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add(dm)
    assert dm("pull").code == 0
    dest = project / "data/mnist"
    assert dm("lock", "verify").code == 0
    if damage == "flip":
        _flip_one_byte(dest / "train/labels.csv")
        want = "mnist\tchanged\ttrain/labels.csv"
    elif damage == "add":
        (dest / "train/stray.bin").write_bytes(b"x")
        want = "mnist\tadded\ttrain/stray.bin"
    elif damage == "delete":
        (dest / "README").unlink()
        want = "mnist\tmissing\tREADME"
    else:  # the same files, but reached through a symlink out of the pulled directory
        outside = tmp_path / "outside-test"
        os.rename(dest / "test", outside)
        os.symlink(outside, dest / "test")
        want = "mnist\tchanged\ttest"
    # the store is unreachable: verify needs only the lock and the local files
    monkeypatch.setenv("DATAMON_BLOB_URL", "file:///nonexistent/blobs")
    monkeypatch.setenv("DATAMON_META_URL", "sqlite:////nonexistent/meta.db")
    r = dm("lock", "verify")
    assert r.code == 4, r
    assert r.out.splitlines() == [want]
    assert "differ from their pins" in r.err
    r = dm("lock", "verify", "--json")
    assert json.loads(r.out)["ok"] is False
    monkeypatch.delenv("DATAMON_BLOB_URL")
    monkeypatch.delenv("DATAMON_META_URL")
    r = dm("pull")
    assert r.code == 0, r
    assert dm("lock", "verify").code == 0
    assert files_under(dest) == _expected(tmp_path)


def test_verify_uses_the_stat_cache_and_hashes_what_changed(dm: Dm, store: Store, project: Path) -> None:
    _add(dm)
    assert dm("pull").code == 0
    r = dm("lock", "verify", "--json")
    assert json.loads(r.out)["hashed_bytes"] == 0  # every file as datamon wrote it
    p = project / "data/mnist/train/labels.csv"
    os.utime(p, ns=(1, p.stat().st_mtime_ns))  # ctime changes, content does not
    r = dm("lock", "verify", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["hashed_bytes"] == p.stat().st_size


def test_verify_without_a_pull_and_with_a_tampered_manifest(dm: Dm, store: Store, project: Path) -> None:
    _add(dm)
    r = dm("lock", "verify")
    assert r.code == 4 and "was not pulled" in r.err, r
    assert dm("pull").code == 0
    pin = lock.load(project / "datamon.lock").get("mnist")
    manifest = Path(os.environ["DATAMON_HOME"]) / "cache" / "pins" / f"{pin.tree}.trees"
    raw = bytearray(manifest.read_bytes())
    raw[-3] ^= 0x20  # inside the last tree: its hash no longer matches
    manifest.write_bytes(bytes(raw))
    r = dm("lock", "verify")
    assert r.code == 4 and "manifest" in r.err, r


def test_pinned_bundle_missing_from_the_store_exits_2(dm: Dm, store: Store, project: Path) -> None:
    _add(dm)
    p = project / "datamon.lock"
    p.write_text(p.read_text().replace(store.v1, "ab" * 32))
    r = dm("pull")
    assert r.code == 2, r
    assert not (project / "data/mnist").exists()


def test_lock_that_disagrees_with_the_store_exits_4(dm: Dm, store: Store, project: Path) -> None:
    _add(dm)
    p = project / "datamon.lock"
    text = p.read_text()
    p.write_text(text.replace("files = 4", "files = 5"))
    r = dm("pull")
    assert r.code == 4 and "edited by hand" in r.err, r


def test_pull_refuses_a_directory_it_did_not_make(dm: Dm, store: Store, project: Path) -> None:
    _add(dm)
    make_tree(project / "data/mnist", {"mine.txt": "precious"})
    r = dm("pull")
    assert r.code == 1 and "not empty" in r.err, r
    assert (project / "data/mnist/mine.txt").read_text() == "precious"


def test_pull_path_override_and_several_datasets(dm: Dm, store: Store, project: Path, tmp_path: Path) -> None:
    _add(dm)
    assert dm("lock", "add", "new", "--repo", "mnist", "--bundle", store.v2, "--path", "data/new").code == 0
    elsewhere = tmp_path / "scratch" / "mnist"
    r = dm("pull", "mnist", "--path", elsewhere)
    assert r.code == 0, r
    assert files_under(elsewhere) == _expected(tmp_path)
    assert dm("lock", "verify", "mnist", "--path", elsewhere).code == 0
    assert dm("pull", "--path", elsewhere).code == 1  # --path needs one NAME
    r = dm("pull")
    assert r.code == 0 and "pulled 2 datasets" in r.err, r
    assert (project / "data/new/extra.txt").read_text() == "new in v2\n"
    assert dm("pull", "nope").code == 2


@pytest.mark.fuse
@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="/dev/fuse is absent: no kernel FUSE here")
def test_pull_mount(dm: Dm, store: Store, project: Path, tmp_path: Path) -> None:
    import subprocess

    from tests.fuse.test_mount import unmount

    _add(dm)
    dest = project / "data/mnist"
    r = dm("pull", "--mount")
    try:
        assert r.code == 0, r
        assert os.path.ismount(dest)
        assert "fusermount3 -u" in r.err
        assert files_under(dest) == _expected(tmp_path)
        with pytest.raises(OSError):
            (dest / "new.txt").write_text("read-only")
    finally:
        unmount(dest)
    assert not os.path.ismount(dest)
    subprocess.run(["sync"], check=False)
