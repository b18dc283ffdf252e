"""Several processes on one PostgreSQL database and one bucket at once, with no coordinator.

- 4 uploader processes push overlapping trees (shared files + files of their own) into one repo while
  readers poll: every upload succeeds, every shared chunk is indexed once, every bundle downloads
  byte-identical, and no reader ever sees a bundle it cannot download completely.
- 2 processes move one label with ``--expected`` (compare-and-swap): one wins, the other exits 3
  naming the label's current value.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from datamon.cas.hashing import key_of
from datamon.cas.pack import Kind, pack_blob_name
from tests.teams.conftest import Team, cli_env, contents, finish, rand, text, write_files

UPLOADERS = 4
REPO = "shared"


def _datasets() -> list[dict[str, bytes]]:
    shared = {
        "shared/big.bin": rand(3_000_000, 100),  # several chunks, stored by whoever is first
        "shared/table.csv": text(600_000, 101),
        **{f"shared/small/{i:02d}.txt": text(2_000 + i, 200 + i) for i in range(20)},
    }
    out = []
    for n in range(UPLOADERS):
        own = {
            f"own-{n}/data.bin": rand(1_200_000, n),
            f"own-{n}/notes.txt": text(5_000, 300 + n),
        }
        out.append({**shared, **own})
    return out


class Reader(threading.Thread):
    """Polls the bundle list and downloads every bundle as soon as it is listed (api, own stores)."""

    def __init__(self, team: Team, expected: dict[str, dict[str, bytes]], root: Path) -> None:
        super().__init__(daemon=True)
        self.ctx = team.context()
        self.expected = expected  # message -> files
        self.root = root
        self.stop = threading.Event()
        self.seen: dict[str, float] = {}  # bundle id -> when it was first listed
        self.polls = 0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            while True:
                last = self.stop.is_set()  # one more poll after being told to stop
                for b in self.ctx.list_bundles(REPO):
                    if b.id in self.seen:
                        continue
                    self.seen[b.id] = time.monotonic()
                    dest = self.root / b.id
                    self.ctx.download(REPO, dest, bundle=b.id)
                    if contents(dest) != self.expected[b.message]:
                        self.errors.append(f"bundle {b.id} ({b.message}) downloaded different bytes")
                self.polls += 1
                if last:
                    return
                self.stop.wait(0.05)
        except BaseException as e:
            self.errors.append(repr(e))
        finally:
            self.ctx.close()


def test_four_uploaders_with_readers(team: Team, tmp_path: Path, dm: Any) -> None:
    assert dm("--context", team.name, "repo", "create", "--repo", REPO).code == 0
    datasets = _datasets()
    sources = [write_files(tmp_path / f"src{n}", files) for n, files in enumerate(datasets)]
    expected = {f"uploader {n}": files for n, files in enumerate(datasets)}

    # Two readers: a thread of this process on the api, and a process polling through the CLI.
    reader = Reader(team, expected, tmp_path / "reader")
    reader.start()
    stopfile = tmp_path / "stop-reading"
    reader_args = [team.name, REPO, str(tmp_path / "cli-reader"), str(stopfile)]
    cli_reader = subprocess.Popen(
        [sys.executable, "-m", "tests.teams._cli_reader", *reader_args],
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs = [
        team.start("bundle", "upload", "--repo", REPO, "--path", src, "--message", f"uploader {n}", "--json")
        for n, src in enumerate(sources)
    ]
    results = [finish(p) for p in procs]
    stopfile.touch()
    read = finish(cli_reader)
    reader.stop.set()
    reader.join(60)

    for r in results:
        assert r.code == 0, r
        assert "Traceback" not in r.err
    uploads = [json.loads(r.out) for r in results]
    ids = {u["id"] for u in uploads}
    assert len(ids) == UPLOADERS

    # Whatever a reader listed, it could download completely and byte-identical.
    assert not reader.errors, reader.errors
    assert set(reader.seen) == ids
    assert read.code == 0 and "Traceback" not in read.err, read
    seen = [json.loads(line) for line in read.out.splitlines()]
    assert all("error" not in s for s in seen), seen
    assert {s["id"] for s in seen} == ids
    for s in seen:
        files = expected[s["message"]]
        assert s["files"] == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}

    # And once more through the CLI, after the fact.
    for n, u in enumerate(uploads):
        dest = tmp_path / f"d{n}"
        r = dm("--context", team.name, "bundle", "download", "--repo", REPO, "--bundle", u["id"],
               "--destination", dest)  # fmt: skip
        assert r.code == 0, r
        assert contents(dest) == expected[u["message"]]

    # Shared data: every distinct chunk is indexed exactly once and its pack exists; a chunk two
    # uploaders wrote at the same moment sits in both packs (harmless), the index names one.
    with team.context() as ctx:
        chunker = ctx.cas.chunker
        chunk_sizes: dict[bytes, int] = {}
        for files in datasets:
            for data in files.values():
                for c in chunker.cut(data):
                    chunk_sizes[key_of(c)] = len(c)
        rows = ctx.meta.lookup_objects(list(chunk_sizes))
        assert set(rows) == set(chunk_sizes)
        assert all(rows[k][4] == n for k, n in chunk_sizes.items())
        packs = ctx.meta.list_packs()
        chunk_rows = [r for p in packs for r in ctx.meta.objects_in_pack(p.name) if r[5] == Kind.CHUNK]
        assert len(chunk_rows) == len(chunk_sizes)
        for p in packs:
            assert ctx.cas.blobs.size(pack_blob_name(p.name)) == p.size
        unique = sum(chunk_sizes.values())
        written = sum(u["new_bytes"] for u in uploads)
        shared = sum(len(v) for k, v in datasets[0].items() if k.startswith("shared/"))
        # at worst every uploader stored the shared files once (all raced), never more
        assert unique <= written <= unique + (UPLOADERS - 1) * shared


def test_label_compare_and_swap_race(team: Team, tmp_path: Path, dm: Any) -> None:
    ctx = ("--context", team.name)
    assert dm(*ctx, "repo", "create", "--repo", "r").code == 0
    ids = []
    for n in range(3):
        src = write_files(tmp_path / f"s{n}", {"f.txt": b"version %d\n" % n})
        r = dm(*ctx, "bundle", "upload", "--repo", "r", "--path", src, "--message", f"v{n}")
        assert r.code == 0, r
        ids.append(r.out.strip())
    base, rivals = ids[0], ids[1:]
    assert dm(*ctx, "label", "set", "--repo", "r", "--label", "prod", "--bundle", base).code == 0

    procs = [
        team.start("label", "set", "--repo", "r", "--label", "prod", "--bundle", b, "--expected", base)
        for b in rivals
    ]
    results = [finish(p) for p in procs]
    codes = sorted(r.code for r in results)
    assert codes == [0, 3], results
    winner = rivals[[r.code for r in results].index(0)]
    loser = results[[r.code for r in results].index(3)]
    assert "Traceback" not in loser.err
    lines = [ln for ln in loser.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and winner in lines[0], loser.err

    r = dm(*ctx, "label", "get", "--repo", "r", "--label", "prod", "--format", "{bundle}")
    assert r.out.strip() == winner
    r = dm(*ctx, "label", "history", "--repo", "r", "--label", "prod", "--json")
    moves = [(e["old"], e["new"]) for e in map(json.loads, r.out.splitlines())]
    assert moves == [(base, winner), (None, base)]
