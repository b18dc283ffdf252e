"""``datamon://`` and ``datamon pull`` against a team deployment: S3 (moto) + PostgreSQL."""

from __future__ import annotations

import io
import random
from pathlib import Path

import fsspec
import pytest

from tests.conftest import make_tree
from tests.pin.conftest import Dm, Reads
from tests.teams.conftest import Team

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def test_fsspec_reads_on_s3_and_postgres(team: Team, tmp_path: Path, reads: Reads) -> None:
    rnd = random.Random(5)
    table = pa.table({c: [rnd.random() for _ in range(150_000)] for c in ("a", "b", "c")})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none")
    data = buf.getvalue()
    src = make_tree(
        tmp_path / "src",
        {"t.parquet": data, "csv": {f"{i}.csv": f"x,y\n{i},{i * i}\n" for i in range(5)}},
    )
    ctx = team.context()
    ctx.create_repo("ds")
    ctx.upload("ds", src, "on s3", label="prod")
    ctx.close()

    df = pd.read_csv("datamon://ds@prod/csv/3.csv?context=team")
    assert df.to_dict("list") == {"x": [3], "y": [9]}
    fs = fsspec.filesystem("datamon", context="team")
    assert fs.glob("ds@prod/csv/*.csv") == [f"ds@prod/csv/{i}.csv" for i in range(5)]
    assert fs.cat_file("ds@prod/t.parquet", 0, 4) == b"PAR1"
    assert fs.cat_file("ds@prod/t.parquet", -4) == b"PAR1"
    t = pq.read_table("ds@prod/t.parquet", columns=["c"], filesystem=fs)
    assert t.column("c").to_pylist() == table.column("c").to_pylist()
    # another process on this machine: the proof is remembered, only part of the file moves
    reads.reset()
    fs2 = fsspec.filesystem("datamon", context="team", skip_instance_cache=True, ref_ttl=1)
    fs2._ctx(None).cas.cache = None
    fs2._ctx(None).cas.reader.cache = None
    t2 = pq.read_table("ds@prod/t.parquet", columns=["c"], filesystem=fs2)
    assert t2.equals(t)
    assert 0 < reads.bytes < len(data) * 0.7, (reads.bytes, len(data))


def test_pull_and_verify_on_s3_and_postgres(
    team: Team, dm: Dm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "a\n", "d": {"b.bin": bytes(range(256)) * 100}})
    ctx = team.context()
    ctx.create_repo("ds")
    b = ctx.upload("ds", src, "v1", label="prod").bundle
    ctx.close()
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    r = dm("--context", "team", "lock", "add", "ds", "--repo", "ds", "--label", "prod", "--path", "data/ds")
    assert r.code == 0, r
    assert 'context = "team"' in (proj / "datamon.lock").read_text()
    r = dm("pull")  # the pin names its context: no --context needed
    assert r.code == 0, r
    assert (proj / "data/ds/d/b.bin").read_bytes() == bytes(range(256)) * 100
    assert dm("lock", "verify").code == 0
    assert b.id in (proj / "datamon.lock").read_text()
