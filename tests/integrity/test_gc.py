"""gc: frees what no bundle reaches, keeps what is young or in use, never races an upload."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from datamon.api import gc as gc_mod
from datamon.api.gc import ORPHANS_BLOB, gc, parse_duration
from datamon.api.upload import UploadResult
from datamon.api.verify import verify
from datamon.cas.hashing import key_of
from datamon.cas.pack import PackBuilder, pack_blob_name
from datamon.errors import Conflict, IntegrityError, UsageError
from tests.integrity.helpers import (
    age_packs,
    cli_env,
    datamon_cmd,
    dataset,
    download_bytes,
    open_ctx,
    pack_files,
    rand,
    run_cli,
    write_tree,
)

HOUR = 3600 * 10**9


def _blob_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in pack_files(root))


def test_parse_duration() -> None:
    assert parse_duration("24h") == 24 * HOUR
    assert parse_duration("1h30m") == 90 * 60 * 10**9
    assert parse_duration("0") == 0 and parse_duration("90") == 90 * 10**9
    assert parse_duration("2d") == 48 * HOUR and parse_duration("1w") == 168 * HOUR
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_gc_frees_deleted_bundles_and_keeps_everything_reachable(tmp_path: Path) -> None:
    root = tmp_path / "s"
    keep = dataset(1, big=2, small=5)
    gone = {**keep, "extra/only-here.bin": rand(3_000_000, 9)}
    with open_ctx(root) as ctx:
        ctx.cas.pack_size = 2 << 20
        ctx.create_repo("r")
        b_gone = ctx.upload("r", write_tree(tmp_path / "a", gone), message="a").bundle.id
        b_keep = ctx.upload("r", write_tree(tmp_path / "b", keep), message="b").bundle.id
        before = _blob_bytes(root)

        assert gc(ctx, grace_ns=0).garbage_objects == 0  # nothing deleted yet: nothing to free
        assert _blob_bytes(root) == before

        ctx.meta.delete_bundle("r", b_gone)
        dry = gc(ctx, grace_ns=0, dry_run=True)
        assert dry.freed_bytes > 2_500_000 and _blob_bytes(root) == before
        rep = gc(ctx, grace_ns=0)
        assert rep.garbage_objects >= 3 and rep.freed_bytes == dry.freed_bytes
        assert before - _blob_bytes(root) == rep.freed_bytes
        assert verify(ctx, full=True).ok
        assert download_bytes(ctx, "r", b_keep, tmp_path / "d") == keep
        again = gc(ctx, grace_ns=0)
        assert again.garbage_objects == again.freed_bytes == 0


def test_repo_delete_then_gc_empties_the_store(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        ctx.upload("r", write_tree(tmp_path / "a", dataset(2, big=1, small=3)), message="a")
    assert run_cli(root, "repo", "delete", "--repo", "r", "--force-yes").returncode == 0
    res = run_cli(root, "gc", "--grace", "0", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["deleted_packs"] >= 1
    assert pack_files(root) == [] and "freed" in res.stderr


def test_grace_period_protects_young_packs(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        bid = ctx.upload("r", write_tree(tmp_path / "a", dataset(3, big=1)), message="a").bundle.id
        ctx.meta.delete_bundle("r", bid)
        young = gc(ctx, grace_ns=HOUR)
        assert young.fresh_packs == 1 and young.garbage_objects == 0 and young.freed_bytes == 0
        age_packs(root, 2 * 3600)
        assert gc(ctx, grace_ns=HOUR).deleted_packs == 1
        assert pack_files(root) == []


def test_partly_garbage_pack_is_rewritten_and_long_lived_readers_follow(tmp_path: Path) -> None:
    root = tmp_path / "s"
    keep = {"keep.bin": rand(1_500_000, 1), "keep.txt": b"k" * 1000}
    both = {**keep, "drop.bin": rand(1_500_000, 2)}
    with open_ctx(root) as ctx, open_ctx(root) as reader:
        ctx.create_repo("r")
        b_both = ctx.upload("r", write_tree(tmp_path / "a", both), message="both").bundle.id
        b_keep = ctx.upload("r", write_tree(tmp_path / "b", keep), message="keep").bundle.id
        k = key_of(keep["keep.bin"])
        old = ctx.meta.lookup_objects([k])[k][1]
        with reader.open_file("r", "keep.bin", bundle=b_keep) as f:  # caches the old location
            assert f.read(10) == keep["keep.bin"][:10]
        ctx.meta.delete_bundle("r", b_both)
        rep = gc(ctx, grace_ns=0)
        assert (rep.repacked_packs, rep.new_packs, rep.deleted_packs) == (1, 1, 0)
        new = ctx.meta.lookup_objects([k])[k][1]
        assert new != old and not (root / "blobs" / pack_blob_name(old)).exists()
        assert (root / "blobs" / pack_blob_name(new)).stat().st_size < 1_600_000
        with reader.open_file("r", "keep.bin", bundle=b_keep) as f:
            assert f.read() == keep["keep.bin"]
        assert verify(ctx, full=True).ok
        assert download_bytes(ctx, "r", b_keep, tmp_path / "d") == keep


def test_only_one_gc_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        assert ctx.meta.try_lock("gc", "someone else", HOUR)
        res = run_cli(root, "gc")
        assert res.returncode == 3 and "another gc" in res.stderr
        with pytest.raises(Conflict):
            gc(ctx)
        import sqlite3

        with sqlite3.connect(root / "meta.db") as db:  # a gc killed two hours ago
            db.execute("UPDATE locks SET acquired_ns = acquired_ns - ?", (2 * HOUR,))
        assert gc(ctx).bundles == 0
        assert ctx.meta.try_lock("gc", "after", HOUR)  # released again


def test_damaged_store_is_not_collected(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        b1 = ctx.upload("r", write_tree(tmp_path / "a", {"a.txt": b"a" * 100}), message="1").bundle.id
        ctx.upload("r", write_tree(tmp_path / "b", {"b.txt": b"b" * 100}), message="2")
        ctx.meta.remove_objects([bytes.fromhex(ctx.bundle("r", b1).tree)])
        before = sorted(pack_files(root))
        with pytest.raises(IntegrityError, match="stopped before removing anything"):
            gc(ctx, grace_ns=0)
        assert sorted(pack_files(root)) == before
    assert run_cli(root, "gc", "--grace", "0").returncode == 4


def test_orphan_packs_wait_for_the_grace_period(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        b = PackBuilder()
        b.add(key_of(b"lost"), b"lost", 4, 1, 0)
        name, data, _ = b.finish()
        ctx.cas.blobs.put(pack_blob_name(name), data)  # as if an upload died before indexing it
        first = gc(ctx, grace_ns=HOUR)
        assert (first.orphans, first.deleted_orphans) == (1, 0)
        seen = json.loads(ctx.cas.blobs.get(ORPHANS_BLOB))
        assert list(seen) == [name]
        ctx.cas.blobs.put(ORPHANS_BLOB, json.dumps({name: seen[name] - 2 * HOUR}).encode())
        second = gc(ctx, grace_ns=HOUR)
        assert second.deleted_orphans == 1 and second.freed_bytes == len(data)
        assert pack_files(root) == []


def test_objects_left_unindexed_by_a_crash_are_adopted_not_deleted(tmp_path: Path) -> None:
    root = tmp_path / "s"
    files = dataset(4, big=1, small=4)
    with open_ctx(root) as ctx:
        ctx.create_repo("r")
        bid = ctx.upload("r", write_tree(tmp_path / "a", files), message="a").bundle.id
        for p in ctx.meta.list_packs():  # what a gc killed inside a repack can leave
            ctx.meta.remove_pack(p.name)
        rep = gc(ctx, grace_ns=0)
        assert rep.adopted_objects > 5 and rep.deleted_orphans == 0
        assert verify(ctx, full=True).ok
        assert download_bytes(ctx, "r", bid, tmp_path / "d") == files


# --- the race: an upload deduplicates against an old object gc finds unreachable -----------------

X = rand(300_000, 77)  # one chunk
Y = rand(200_000, 78)


def _old_garbage(tmp_path: Path, files: dict[str, bytes], **kw: object) -> Path:
    """A store whose only bundle (with ``files``) was deleted two hours ago."""
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        for k, v in kw.items():
            setattr(ctx.cas, k, v)
        ctx.create_repo("r")
        bid = ctx.upload("r", write_tree(tmp_path / "old", files), message="old").bundle.id
        ctx.meta.delete_bundle("r", bid)
    age_packs(root, 2 * 3600)
    return root


def _upload_with_gc_at(
    tmp_path: Path, root: Path, hook: str, src: Path | None = None
) -> tuple[UploadResult, list[gc_mod.GcReport]]:
    """Upload X and Y; run a gc (grace 1 h, other connection) at ``hook``:
    'lookup' (just after the upload's first lookup that finds X), 'mark' (just after it leaves
    a used mark), 'bundle' (just before its bundle row)."""
    reports: list[gc_mod.GcReport] = []
    src = src or write_tree(tmp_path / "new", {"x.bin": X, "y.bin": Y})
    with open_ctx(root) as up, open_ctx(root) as other:

        def run_gc() -> None:
            if not reports:
                reports.append(gc(other, grace_ns=HOUR))

        def wrap(obj: object, name: str, when: Callable[..., bool]) -> None:
            real = getattr(obj, name)

            def hooked(*a: object, **k: object) -> object:
                out = real(*a, **k)
                if when(a, out):
                    run_gc()
                return out

            setattr(obj, name, hooked)

        if hook == "lookup":
            wrap(up.meta, "lookup_objects", lambda a, out: bool(out))
        elif hook == "mark":
            wrap(up.cas.blobs, "put", lambda a, out: str(a[0]).startswith("used/"))
        else:
            real_add = up.meta.add_bundle

            def add(b: object) -> None:
                run_gc()
                real_add(b)  # type: ignore[arg-type]

            up.meta.add_bundle = add  # type: ignore[method-assign]
        result = up.upload("r", src, message="new")
    return result, reports


def _check(tmp_path: Path, root: Path, bid: str, files: dict[str, bytes]) -> None:
    with open_ctx(root) as ctx:
        r = verify(ctx, full=True)
        assert r.ok, r.affected
        assert download_bytes(ctx, "r", bid, tmp_path / f"d{time.monotonic_ns()}") == files
        gc(ctx, grace_ns=0)
        assert verify(ctx, full=True).ok


@pytest.mark.parametrize("hook", ["lookup", "mark", "bundle"])
def test_gc_during_upload_that_reuses_old_garbage(tmp_path: Path, hook: str) -> None:
    root = _old_garbage(tmp_path, {"x.bin": X})
    up, [rep] = _upload_with_gc_at(tmp_path, root, hook)
    bid = up.bundle.id
    if hook == "lookup":  # gc saw the old pack unused: it went, and the upload wrote X again
        assert rep.deleted_packs == 1
    else:  # gc saw the used mark: the old pack stays
        assert rep.garbage_objects == 0 and rep.fresh_packs >= 1
    _check(tmp_path, root, bid, {"x.bin": X, "y.bin": Y})


def test_without_used_marks_the_race_loses_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: the interleaving above really is the race (plain lookups break the bundle)."""

    def plain(index, blobs, keys, marked):  # type: ignore[no-untyped-def]
        return set(index.lookup_objects(keys))

    monkeypatch.setattr("datamon.cas.ingest.reusable", plain)
    root = _old_garbage(tmp_path, {"x.bin": X})
    _upload_with_gc_at(tmp_path, root, "lookup")
    with open_ctx(root) as ctx:
        assert {a.path for a in verify(ctx).affected} == {"x.bin"}


@pytest.mark.parametrize("hook", ["lookup", "mark"])
def test_gc_during_stat_cache_reuse_of_an_old_file_map(tmp_path: Path, hook: str) -> None:
    """The stat cache reuses a file key without reading the file; its chunks are in other packs."""
    big = rand(5_000_000, 5)
    src = write_tree(tmp_path / "src", {"big.bin": big})
    root = tmp_path / "s"
    with open_ctx(root) as ctx:
        ctx.cas.pack_size = 1 << 20  # file map and chunks in different packs
        ctx.create_repo("r")
        old = ctx.upload("r", src, message="old").bundle.id
        ctx.meta.delete_bundle("r", old)
    age_packs(root, 2 * 3600)
    up, [rep] = _upload_with_gc_at(tmp_path, root, hook, src=src)
    if hook == "mark":
        assert rep.deleted_packs == 0  # the reused file map is a root: its chunks stay too
        assert up.read_files == 0
    else:
        assert rep.deleted_packs >= 3 and up.read_files == 1  # gone: the file is read again
    _check(tmp_path, root, up.bundle.id, {"big.bin": big})


def test_upload_marking_during_gc_gets_hidden_rows_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookup before gc hides X, mark after: gc's re-check puts X back and keeps its pack."""
    root = _old_garbage(tmp_path, {"x.bin": X})
    hidden, marked = threading.Event(), threading.Event()
    real_recheck = gc_mod._Collector._recheck

    def recheck(self, *a):  # type: ignore[no-untyped-def]
        hidden.set()
        assert marked.wait(30)
        return real_recheck(self, *a)

    monkeypatch.setattr(gc_mod._Collector, "_recheck", recheck)
    reports: list[gc_mod.GcReport] = []
    with open_ctx(root) as up, open_ctx(root) as other:
        gc_thread = threading.Thread(target=lambda: reports.append(gc(other, grace_ns=HOUR)))
        real_lookup, real_put = up.meta.lookup_objects, up.cas.blobs.put

        def lookup(keys):  # type: ignore[no-untyped-def]
            out = real_lookup(keys)
            if out and not gc_thread.is_alive() and not reports:
                gc_thread.start()
                assert hidden.wait(30)
            return out

        def put(name: str, data: bytes) -> None:
            real_put(name, data)
            if name.startswith("used/") and gc_thread.is_alive():
                marked.set()
                gc_thread.join(30)

        up.meta.lookup_objects = lookup  # type: ignore[method-assign]
        up.cas.blobs.put = put  # type: ignore[method-assign]
        bid = up.upload("r", write_tree(tmp_path / "new", {"x.bin": X, "y.bin": Y}), message="n").bundle.id
    [rep] = reports
    assert rep.restored_objects >= 1 and rep.deleted_packs == 0
    _check(tmp_path, root, bid, {"x.bin": X, "y.bin": Y})


def test_gc_while_an_upload_runs_in_another_process(tmp_path: Path) -> None:
    old = dataset(5, big=4, small=10)
    root = _old_garbage(tmp_path, old)
    new = {**old, **dataset(6, big=4, small=50)}
    src = write_tree(tmp_path / "new", new)
    with open_ctx(root) as ctx:
        proc = subprocess.Popen(
            datamon_cmd("bundle", "upload", "--repo", "r", "--path", src, "--message", "m", "--json"),
            env=cli_env(root),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runs = 0
        while proc.poll() is None:
            gc(ctx, grace_ns=HOUR)
            runs += 1
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert runs >= 2
        bid = json.loads(out)["id"]
    _check(tmp_path, root, bid, new)
