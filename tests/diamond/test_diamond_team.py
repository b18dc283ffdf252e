"""Diamonds as a team uses them: the real PostgreSQL server and an S3 server (moto), split
processes in parallel, a killed and retried worker, racing commits, exit codes of the CLI."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from datamon.api import diamond as dia
from datamon.meta.diamonds import DiamondsMixin
from tests.diamond.helpers import listing, make_dataset
from tests.teams.conftest import Team, contents, finish, team  # noqa: F401

# The issue asks for 8 processes × 1/8 of 10,000 files (DATAMON_DIAMOND_FILES=10000: ~75 s on 2 cores);
# the default is scaled down to stay under a minute. The 8 processes run in parallel at any size.
N_FILES = int(os.environ.get("DATAMON_DIAMOND_FILES", "4000"))
N_SPLITS = 8


def _lists(tmp_path: Path, src: Path, k: int) -> list[Path]:
    items = listing(src)
    out = []
    for i in range(k):
        p = tmp_path / f"part{i}.txt"
        p.write_text("\n".join(items[i::k]) + "\n")
        out.append(p)
    return out


def _diamond(t: Team, *args: object) -> str:
    r = t.run("diamond", "initialize", "--repo", "r", *args)
    assert r.code == 0, r
    return r.out.strip()


@pytest.mark.slow
def test_eight_parallel_splits_equal_one_upload(team: Team, tmp_path: Path) -> None:  # noqa: F811
    src = make_dataset(tmp_path / "src", n=N_FILES, big=1)
    parts = _lists(tmp_path, src, N_SPLITS)
    assert team.run("repo", "create", "--repo", "r").code == 0
    d = _diamond(team, "--tag", "ci")
    t0 = time.monotonic()
    # split 3 is killed mid-upload, then retried with the same id: it must not count twice
    victim = team.start(
        "diamond",
        "split",
        "add",
        "--repo",
        "r",
        "--diamond",
        d,
        "--path",
        src,
        "--files",
        parts[3],
        "--split-id",
        "w3",
    )
    with team.context() as ctx:
        deadline = time.monotonic() + 60
        while not any(s.id == "w3" for s in ctx.meta.list_splits("r", d)) and time.monotonic() < deadline:
            time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    procs = [
        team.start(
            "diamond",
            "split",
            "add",
            "--repo",
            "r",
            "--diamond",
            d,
            "--path",
            src,
            "--files",
            parts[i],
            "--split-id",
            f"w{i}",
            "--split-tag",
            f"pod-{i}",
        )
        for i in range(N_SPLITS)
    ]
    results = [finish(p, timeout=600) for p in procs]
    assert all(r.code == 0 for r in results), [r for r in results if r.code]
    assert [r.out.strip() for r in results] == [f"w{i}" for i in range(N_SPLITS)]
    splits_seconds = time.monotonic() - t0

    r = team.run("diamond", "split", "list", "--repo", "r", "--diamond", d, "--json")
    assert r.code == 0 and len(r.out.splitlines()) == N_SPLITS  # no duplicate of the killed w3
    r = team.run("diamond", "commit", "--repo", "r", "--diamond", d, "--message", "eight", "--label", "prod")
    assert r.code == 0, r
    bundle = r.out.strip()
    single = team.run("bundle", "upload", "--repo", "r", "--path", src, "--message", "one", "--json")
    assert single.code == 0, single
    one = json.loads(single.out)
    with team.context() as ctx:
        b = ctx.meta.get_bundle("r", bundle)
        assert (b.tree, b.file_count, b.total_size) == (one["tree"], one["files"], one["size"])
        assert b.file_count == N_FILES + 1
    out = tmp_path / "out"
    assert team.run("bundle", "download", "--repo", "r", "--label", "prod", "--destination", out).code == 0
    assert contents(out) == contents(src)
    again = team.run("diamond", "commit", "--repo", "r", "--diamond", d, "--message", "again")
    assert again.code == 3 and "already committed" in again.err
    print(f"{N_SPLITS} splits of {N_FILES} files in {splits_seconds:.1f}s")


def test_conflicts_through_the_cli(team: Team, tmp_path: Path) -> None:  # noqa: F811
    a, b = tmp_path / "a", tmp_path / "b"
    for root, text in ((a, "one"), (b, "two")):
        (root / "d").mkdir(parents=True)
        (root / "d" / "clash.txt").write_text(text)
        (root / "d" / "same.txt").write_text("same")
    assert team.run("repo", "create", "--repo", "r").code == 0
    d = _diamond(team)
    for sid, root in (("sa", a), ("sb", b)):
        r = team.run("diamond", "split", "add", "--repo", "r", "--diamond", d, "--path", root, "--split", sid)
        assert r.code == 0, r
    r = team.run("diamond", "commit", "--repo", "r", "--diamond", d, "--message", "m")
    assert r.code == 3, r
    assert "conflict: d/clash.txt: split sa: file" in r.err and "split sb: file" in r.err
    assert "d/clash.txt (sa, sb)" in r.err.splitlines()[-1]
    r = team.run(
        "diamond", "commit", "--repo", "r", "--diamond", d, "--message", "m", "--conflicts", "last-wins"
    )
    assert r.code == 0, r
    assert "conflict: d/clash.txt: split sb won over sa" in r.err
    r = team.run("diamond", "get", "--repo", "r", "--diamond", d, "--conflicts", "--json")
    got = json.loads(r.out)
    assert got["state"] == "committed" and got["conflicts"] == 1 and got["conflicts_blob"]
    assert {(c["path"], c["split"], c["winner"]) for c in got["conflict_list"]} == {
        ("d/clash.txt", "sa", False),
        ("d/clash.txt", "sb", True),
    }
    assert team.run("diamond", "cancel", "--repo", "r", "--diamond", d).code == 3


def test_racing_commits_on_postgres_exactly_one_wins(team: Team, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    src = make_dataset(tmp_path / "src", n=50)
    assert team.run("repo", "create", "--repo", "r").code == 0
    with team.context() as ctx:
        d = dia.initialize(ctx, "r")
        dia.add_split(ctx, "r", d.id, src, files=listing(src)[::2])
        dia.add_split(ctx, "r", d.id, src, files=listing(src)[1::2])

    barrier = threading.Barrier(2, timeout=60)
    real = DiamondsMixin.commit_diamond

    def racing(self, *args, **kw):  # type: ignore[no-untyped-def]
        barrier.wait()  # both commits merged; now both try to land at once
        return real(self, *args, **kw)

    monkeypatch.setattr(DiamondsMixin, "commit_diamond", racing)
    outcomes: list[object] = []

    def one(i: int) -> None:
        with team.context() as ctx:
            try:
                outcomes.append(dia.commit(ctx, "r", d.id, message=f"commit {i}").bundle.id)
            except Exception as e:
                outcomes.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    won = [o for o in outcomes if isinstance(o, str)]
    lost = [o for o in outcomes if not isinstance(o, str)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert getattr(lost[0], "exit_code", None) == 3 and "already committed" in str(lost[0])
    with team.context() as ctx:
        assert [b.id for b in ctx.meta.list_bundles("r")] == won
        assert dia.get(ctx, "r", d.id).bundle_id == won[0]
