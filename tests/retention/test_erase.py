"""``repo delete files``: paths erased from every bundle, labels and history moved, the rewrite map,
and after ``gc`` not a byte of the erased content left in any blob (unless another live bundle
still holds it, which the command reports) — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import CliResult, make_tree, tree_files
from tests.teams.conftest import assert_one_line_error

MiB = 1 << 20


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


BIG = rand(3 * MiB + 12345, 1)  # several chunks: a file map, chunks
SMALL1 = rand(300, 2)  # one chunk, in a pack with a lot else
SMALL2 = rand(200, 3)  # in a pack whose other 1 MiB stays live (a pack gc would not rewrite for 200 B)
LIVE = rand(1 * MiB, 4)
BASE = rand(50_000, 5)


def windows(data: bytes, step: int = 4096, size: int = 48) -> list[bytes]:
    """Slices of ``data`` every ``step`` bytes (at least one per chunk of any file): if any byte
    range of ``data`` were still stored raw, one of these would be found."""
    return [data[i : i + size] for i in range(0, max(1, len(data) - size), step)] + [data[-size:]]


def blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def traces(root: Path, *secrets: bytes) -> list[str]:
    """Blob files (packs and everything else) holding any window of any secret."""
    found = []
    for p in blob_files(root):
        data = p.read_bytes()
        for s in secrets:
            if any(w in data for w in windows(s)):
                found.append(f"{p.relative_to(root)} holds {s[:4].hex()}…")
    return found


def lines(r: CliResult) -> list[dict[str, object]]:
    return [json.loads(x) for x in r.out.splitlines() if x.strip()]


def upload(dm, repo: str, src: Path, msg: str, *extra: object) -> str:  # type: ignore[no-untyped-def]
    r = dm("bundle", "upload", "--repo", repo, "--path", src, "--message", msg, "--format", "{id}", *extra)
    assert r.code == 0, r
    return str(r.out.strip())


def history(dm, repo: str, label: str) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    r = dm("label", "history", "--repo", repo, "--label", label, "--json")
    assert r.code == 0, r
    return lines(r)


def build_repo(dm, tmp: Path, repo: str = "r") -> dict[str, str]:  # type: ignore[no-untyped-def]
    """v0 without secrets, v1..v3 with; labels ``old`` (v1) and ``prod`` (v2, then v3)."""
    assert dm("repo", "create", "--repo", repo).code == 0
    v0 = {"keep": {"a.csv": "x,y\n1,2\n", "base.bin": BASE}}
    v1 = {**v0, "secret": {"big.bin": BIG}, "small.key": SMALL1}
    v2 = {**v1, "data": {"more.bin": LIVE}, "secret": {"big.bin": BIG, "small2.key": SMALL2}}
    v3 = {"keep": {"a.csv": "x,y\n1,2\n3,4\n", "base.bin": BASE}, "data": {"more.bin": LIVE}}
    v3["secret"] = {"big.bin": BIG, "small2.key": SMALL2}
    ids = {}
    for name, spec in (("v0", v0), ("v1", v1), ("v2", v2), ("v3", v3)):
        ids[name] = upload(dm, repo, make_tree(tmp / repo / name, spec), name)  # type: ignore[arg-type]
    for label, which in (("old", "v1"), ("prod", "v2"), ("prod", "v3")):
        assert dm("label", "set", "--repo", repo, "--label", label, "--bundle", ids[which]).code == 0
    return ids


ERASE = ["secret/big.bin", "small.key", "secret/small2.key", "not/there.txt"]


def erase_list(tmp: Path, paths: list[str] = ERASE) -> Path:
    import hashlib

    p = tmp / f"erase-{hashlib.sha256(repr(paths).encode()).hexdigest()[:8]}.txt"
    p.write_text("".join(x + "\n" for x in paths))
    return p


def check_erased_repo(dm, tmp: Path, blobs: Path, ids: dict[str, str], repo: str = "r") -> None:  # type: ignore[no-untyped-def]
    """The whole flow after ``build_repo``: erase, check the rewrite, gc, grep, download, verify."""
    r = dm("repo", "delete", "files", "--repo", repo, "--files", erase_list(tmp), "--dry-run", "--json")
    assert r.code == 0, r
    planned = {x["old"]: x["new"] for x in lines(r) if x["type"] == "rewrite"}
    assert set(planned) == {ids["v1"], ids["v2"], ids["v3"]}, r  # v0 holds none of the paths
    assert [x["path"] for x in lines(r) if x["type"] == "missing"] == ["not/there.txt"]
    assert not [x for x in lines(r) if x["type"] == "held"], r
    assert dm("bundle", "list", "--repo", repo, "--format", "{id}").out.split()[-1] == ids["v0"]

    r = dm("repo", "delete", "files", "--repo", repo, "--files", erase_list(tmp), "--force-yes", "--json")
    assert r.code == 0 and "rewrote 3 of 4 bundles" in r.err, r
    rows = {x["old"]: x for x in lines(r) if x["type"] == "rewrite"}
    new = {k: str(rows[ids[k]]["new"]) for k in ("v1", "v2", "v3")}
    assert new == {k: planned[ids[k]] for k in new}  # the dry run planned exactly these ids
    assert rows[ids["v1"]]["removed"] == ["secret/big.bin", "small.key"]
    assert rows[ids["v3"]]["removed"] == ["secret/big.bin", "secret/small2.key"]
    listed = dm("bundle", "list", "--repo", repo, "--format", "{id}").out.split()
    assert listed == [new["v3"], new["v2"], new["v1"], ids["v0"]]  # unaffected v0 keeps its id

    # parents re-linked: each rewritten bundle names the rewritten parent
    def parents(b: str) -> list[str]:
        got = dm("bundle", "get", "--repo", repo, "--bundle", b, "--json")
        assert got.code == 0, got
        return list(json.loads(got.out)["parents"])

    assert parents(new["v1"]) == [ids["v0"]]
    assert parents(new["v2"]) == [new["v1"]] and parents(new["v3"]) == [new["v2"]]

    # labels and their history moved to the new ids; the rewrite event keeps the old id
    r = dm("label", "get", "--repo", repo, "--label", "prod", "--format", "{bundle}")
    assert r.out.strip() == new["v3"], r
    r = dm("label", "get", "--repo", repo, "--label", "old", "--format", "{bundle}")
    assert r.out.strip() == new["v1"], r
    prod = history(dm, repo, "prod")
    assert [(e["old"], e["new"]) for e in prod] == [
        (ids["v3"], new["v3"]),
        (new["v2"], new["v3"]),
        (None, new["v2"]),
    ], prod

    # every read of an old id explains where it went (exit 2)
    for v in ("v1", "v2", "v3"):
        for ref in (ids[v], ids[v][:10]):
            r = dm("bundle", "get", "--repo", repo, "--bundle", ref)
            line = assert_one_line_error(
                r, f"bundle {ids[v]} was rewritten as {new[v]} by repo delete files on", code=2
            )
            assert "UTC" in line
    out = tmp / "out-old"
    r = dm("bundle", "download", "--repo", repo, "--bundle", ids["v2"], "--destination", out)
    assert_one_line_error(r, "was rewritten as", code=2)
    r = dm("label", "set", "--repo", repo, "--label", "x", "--bundle", ids["v1"])
    assert_one_line_error(r, "was rewritten as", code=2)

    # before gc the bytes are still in the packs; after it not one window of them is in any blob
    assert traces(blobs, BIG, SMALL1, SMALL2)
    r = dm("gc", "--grace", "0s")
    assert r.code == 0 and "erased objects gone from every pack" in r.err, r
    assert "still stored" not in r.err, r
    assert traces(blobs, BIG, SMALL1, SMALL2) == []
    assert traces(blobs, LIVE, BASE) != []  # the grep does find what must stay

    # every surviving bundle downloads (verified) with exactly the files that are left
    expect = {
        ids["v0"]: {"keep/a.csv", "keep/base.bin"},
        new["v1"]: {"keep/a.csv", "keep/base.bin"},
        new["v2"]: {"keep/a.csv", "keep/base.bin", "data/more.bin"},
        new["v3"]: {"keep/a.csv", "keep/base.bin", "data/more.bin"},
    }
    for b, files in expect.items():
        dest = tmp / f"out-{b[:8]}"
        r = dm("bundle", "download", "--repo", repo, "--bundle", b, "--destination", dest)
        assert r.code == 0, r
        got = {k for k, v in tree_files(dest).items() if isinstance(v, tuple) and isinstance(v[0], bytes)}
        assert got == files, (b, got)
        assert (dest / "data" / "more.bin").read_bytes() == LIVE if "data/more.bin" in files else True
    r = dm("verify", "--full")
    assert r.code == 0 and "no problems" in r.err, r
    # the queue is empty: a second gc has nothing erased to report
    r = dm("gc", "--grace", "0s")
    assert r.code == 0 and "erased" not in r.err, r
    # rerunning the erase finds nothing to do
    r = dm("repo", "delete", "files", "--repo", repo, "--files", erase_list(tmp), "--force-yes")
    assert r.code == 0 and "nothing to do" in r.err, r


def test_delete_files_across_bundles_then_gc_leaves_no_trace(dm, tmp_path: Path, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    ids = build_repo(dm, tmp_path)
    check_erased_repo(dm, tmp_path, datamon_home / "blobs", ids)


def test_delete_files_on_postgresql(dm, tmp_path: Path, postgres_url: str) -> None:  # type: ignore[no-untyped-def]
    blobs = tmp_path / "pg-blobs"
    assert dm("context", "create", "pg", "--blob", blobs.as_uri(), "--meta", postgres_url).code == 0

    def run(*args: object) -> CliResult:
        return dm("--context", "pg", *args)  # type: ignore[no-any-return]

    ids = build_repo(run, tmp_path)
    check_erased_repo(run, tmp_path, blobs, ids)


def test_bytes_still_held_elsewhere_are_reported_before_acting(
    dm, tmp_path: Path, datamon_home: Path
) -> None:  # type: ignore[no-untyped-def]
    secret = rand(5000, 10)
    big = rand(6 * MiB, 11)
    sharing = big[: 4 * MiB] + rand(MiB, 12)  # its first chunk (4 MiB, the maximum) is big's first chunk
    for repo in ("a", "b"):
        assert dm("repo", "create", "--repo", repo).code == 0
    a = upload(
        dm,
        "a",
        make_tree(tmp_path / "a", {"x": {"s.bin": secret}, "y": {"dup.bin": secret}, "big.bin": big}),
        "a",
    )
    b = upload(dm, "b", make_tree(tmp_path / "b", {"copy.bin": secret, "other.bin": sharing}), "b")
    lst = erase_list(tmp_path, ["x/s.bin", "big.bin"])
    r = dm("repo", "delete", "files", "--repo", "a", "--files", lst, "--force-yes", "--json")
    assert r.code == 0, r
    rows = lines(r)
    new_a = next(str(x["new"]) for x in rows if x["type"] == "rewrite")
    held = {(x["repo"], x["ref"], x["path"], x["shares_chunks"]) for x in rows if x["type"] == "held"}
    assert held == {
        ("a", new_a, "y/dup.bin", False),  # the same bytes under another path of the rewritten bundle
        ("b", b, "copy.bin", False),  # the same bytes in another repo
        ("b", b, "other.bin", True),  # another file sharing a chunk
    }, rows
    assert "warning: 3 live references listed above (held) hold some of the erased bytes" in r.err, r
    assert dm("gc", "--grace", "0s").code == 0
    blobs = datamon_home / "blobs"
    assert traces(blobs, secret)  # held: stays
    assert traces(blobs, big[: 4 * MiB]) and not traces(blobs, big[4 * MiB :])  # the shared chunk stays
    dest = tmp_path / "b-out"
    assert dm("bundle", "download", "--repo", "b", "--bundle", b, "--destination", dest).code == 0
    assert (dest / "copy.bin").read_bytes() == secret and (dest / "other.bin").read_bytes() == sharing
    assert dm("verify", "--full").code == 0
    assert a != new_a


def test_refuses_without_confirmation_and_checks_its_input(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "r").code == 0
    upload(dm, "r", make_tree(tmp_path / "v", {"s.txt": "secret"}), "v")
    lst = erase_list(tmp_path, ["s.txt"])
    r = dm("repo", "delete", "files", "--repo", "r", "--files", lst)
    assert_one_line_error(
        r, "refusing to delete files from every bundle of repo 'r' without confirmation", "--force-yes"
    )
    r = dm("repo", "delete", "files", "--repo", "nope", "--files", lst, "--force-yes")
    assert_one_line_error(r, "repo 'nope' does not exist", code=2)
    r = dm("repo", "delete", "files", "--repo", "r", "--files", erase_list(tmp_path, ["../x"]), "--force-yes")
    assert_one_line_error(r, "escapes the bundle")
    r = dm("repo", "delete", "files", "--repo", "r", "--files", erase_list(tmp_path, ["."]), "--force-yes")
    assert_one_line_error(r, "is the bundle root")
    r = dm("repo", "delete", "files", "--repo", "r", "--files", erase_list(tmp_path, []), "--force-yes")
    assert_one_line_error(r, "the list names no path")
    # `repo delete` itself still deletes a repo; the group options can also come first
    r = dm("repo", "delete", "--repo", "r", "--force-yes", "files", "--files", lst)
    assert r.code == 0 and "rewrote 1 of 1" in r.err, r
    assert dm("repo", "delete", "--repo", "r", "--force-yes").code == 0
    assert dm("repo", "get", "--repo", "r").code == 2


def test_directories_symlinks_and_untouched_subtrees(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from datamon.api.context import connect

    assert dm("repo", "create", "--repo", "r").code == 0
    src = make_tree(
        tmp_path / "v", {"pii": {"a.csv": "1", "deep": {"b.csv": "2"}}, "ok": {"c.csv": "3"}, "n.txt": "n"}
    )
    (src / "link").symlink_to("ok/c.csv")
    old = upload(dm, "r", src, "v")
    ctx = connect()
    before = {e.path: e.entry.key for e in ctx.entries("r")}
    lst = erase_list(tmp_path, ["pii", "link"])
    r = dm("repo", "delete", "files", "--repo", "r", "--files", lst, "--force-yes", "--json")
    assert r.code == 0, r
    (row,) = [x for x in lines(r) if x["type"] == "rewrite"]
    assert row["removed"] == ["link", "pii/"] and row["old"] == old
    b = ctx.bundle("r")
    after = {e.path: e.entry.key for e in ctx.entries("r")}
    assert set(after) == {"ok", "ok/c.csv", "n.txt"}
    assert after["ok"] == before["ok"]  # the untouched subtree is the same tree object
    assert (b.file_count, b.total_size) == (2, 2)


def test_a_crash_before_the_switch_changes_nothing_and_a_rerun_finishes(
    dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from datamon.api.context import connect
    from datamon.api.erase import apply_erase, plan_erase
    from datamon.errors import Conflict
    from datamon.meta.store import MetadataStore

    assert dm("repo", "create", "--repo", "r").code == 0
    v1 = upload(
        dm, "r", make_tree(tmp_path / "v1", {"s.txt": "secret", "k.txt": "k"}), "v1", "--label", "prod"
    )
    ctx = connect()
    plan = plan_erase(ctx, "r", ["s.txt"])

    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(MetadataStore, "apply_rewrite", crash)
        with pytest.raises(KeyboardInterrupt):
            apply_erase(ctx, plan)
    assert [b.id for b in ctx.list_bundles("r")] == [v1]  # the new trees are stored, unreferenced
    assert ctx.get_label("r", "prod").bundle_id == v1
    # the repo changes between plan and switch: nothing switches
    stale = plan_erase(ctx, "r", ["s.txt"])
    v2 = upload(dm, "r", make_tree(tmp_path / "v2", {"s.txt": "secret", "k.txt": "k2"}), "v2")
    with pytest.raises(Conflict):
        apply_erase(ctx, stale)
    assert {b.id for b in ctx.list_bundles("r")} == {v1, v2}
    # a rerun plans the same ids and finishes
    again = plan_erase(ctx, "r", ["s.txt"])
    assert {c.old.id: c.new.id for c in again.rewritten if c.new}[v1] == plan.rewritten[0].new.id  # type: ignore[union-attr]
    apply_erase(ctx, again)
    new_v1 = plan.rewritten[0].new.id  # type: ignore[union-attr]
    assert ctx.get_label("r", "prod").bundle_id == new_v1
    assert dm("verify").code == 0
    # an upload that raced the switch lands on the old id (and the erased file): a rerun fixes it
    from datamon.api.bundles import make_bundle

    old_v1 = ctx.meta.find_bundle(v1)
    assert old_v1 is None
    late = make_bundle(
        repo="r", tree=plan.changes[0].old.tree, parents=[v1], message="late", contributor_name="T",
        contributor_email="", time_ns=plan.changes[0].old.created_ns + 1, file_count=2, total_size=7,
    )  # fmt: skip
    ctx.meta.add_bundle(late)
    (fix,) = plan_erase(ctx, "r", ["s.txt"]).rewritten
    assert fix.old.id == late.id and fix.new is not None and fix.new.parents == (new_v1,)


def test_recorded_runs_keep_their_records_and_do_not_keep_erased_bytes(
    dm, tmp_path: Path, datamon_home: Path
) -> None:  # type: ignore[no-untyped-def]
    secret = rand(9000, 20)
    for repo in ("raw", "clean"):
        assert dm("repo", "create", "--repo", repo).code == 0
    raw = upload(dm, "raw", make_tree(tmp_path / "raw", {"s.bin": secret, "a.csv": "1"}), "raw")
    clean = upload(dm, "clean", make_tree(tmp_path / "clean", {"c.csv": "1"}), "clean")
    io = ("--input", f"in=raw@{raw}", "--output", f"out=clean@{clean}")
    r = dm("run", "record", *io, "--command", "clean", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["id"]
    lst = erase_list(tmp_path, ["s.bin"])
    r = dm("repo", "delete", "files", "--repo", "raw", "--files", lst, "--force-yes", "--json")
    assert r.code == 0, r
    (row,) = [x for x in lines(r) if x["type"] == "rewrite"]
    # the run record is unchanged; lineage goes from the recorded id to what it became
    r = dm("lineage", "--repo", "clean", "--bundle", clean, "--json")
    assert r.code == 0, r
    nodes = {x["id"]: x for x in lines(r) if x["type"] == "node"}
    assert nodes[raw]["missing"] and nodes[raw]["rewritten_as"] == row["new"], nodes
    assert row["new"] in nodes
    # gc does not keep the erased bytes for the run; verify does not call the input missing
    assert dm("gc", "--grace", "0s").code == 0
    assert traces(datamon_home / "blobs", secret) == []
    r = dm("verify", "--full")
    assert r.code == 0, r
    # forget keeps the rewritten input of a recorded run
    upload(dm, "raw", make_tree(tmp_path / "raw2", {"a.csv": "2"}), "raw2")
    r = dm("forget", "--repo", "raw", "--keep-last", "1", "--json")
    assert r.code == 0, r
    kept = {x["id"]: x["reasons"] for x in lines(r) if x["action"] == "keep"}
    assert kept[row["new"]] == ["run input"], kept


def test_this_machines_chunk_cache_is_purged(dm, tmp_path: Path, datamon_home: Path) -> None:  # type: ignore[no-untyped-def]
    secret = rand(7000, 30)
    assert dm("repo", "create", "--repo", "r").code == 0
    b = upload(dm, "r", make_tree(tmp_path / "v", {"s.bin": secret, "k.bin": rand(7000, 31)}), "v")
    from datamon.api.context import connect

    with connect() as ctx, ctx.open_file("r", "s.bin", bundle=b) as f:  # random access: cached chunks
        assert f.read() == secret
    cache = datamon_home / "cache" / "chunks"
    assert traces(cache, secret), "the download should have cached the chunk"
    r = dm(
        "repo", "delete", "files", "--repo", "r", "--files", erase_list(tmp_path, ["s.bin"]), "--force-yes"
    )
    assert r.code == 0, r
    assert traces(cache, secret) == []


def test_erase_keeps_meta_and_drops_the_attribute_rows_of_erased_paths(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "keep.txt").write_text("keep")
    (src / "d" / "secret.txt").write_text("secret")
    attrs = tmp_path / "attrs.jsonl"
    attrs.write_text('{"path": "keep.txt", "split": "train"}\n{"path": "d/secret.txt", "split": "test"}\n')
    assert dm("repo", "create", "--repo", "r").code == 0
    old = upload(dm, "r", src, "v1", "--meta", "source=cam", "--attributes", attrs, "--label", "prod")
    listing = tmp_path / "erase.txt"
    listing.write_text("d\n")
    r = dm("repo", "delete", "files", "--repo", "r", "--files", listing, "--force-yes")
    assert r.code == 0, r
    new = json.loads(dm("bundle", "get", "--repo", "r", "--label", "prod", "--json").out)
    assert new["id"] != old and new["meta"] == {"source": "cam"}
    q = dm(
        "query", "--json", "SELECT path, attrs FROM files WHERE repo = 'r' AND bundle = '" + new["id"] + "'"
    )
    assert q.code == 0, q
    rows = [json.loads(x) for x in q.out.splitlines()]
    assert [(r["path"], json.loads(r["attrs"])) for r in rows] == [("keep.txt", {"split": "train"})]
