"""Run records in the store: gc keeps what runs read, verify reports broken lineage, admin reindex
rebuilds runs from the blob store, hostile records are refused; the same on PostgreSQL + S3."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from datamon.api.context import connect
from datamon.api.runs import RUN_BLOB_PREFIX, decode_run, encode_run, list_runs
from datamon.errors import IntegrityError
from datamon.meta.runs import RunLink
from tests.lineage.conftest import PY
from tests.teams.conftest import Team

H = "ab" * 32


def _step(dm) -> None:  # type: ignore[no-untyped-def]
    r = dm(
        "run", "--input", "raw=raw@prod", "--output", "clean=clean", "--param", "seed=1", "--", PY, "clean.py"
    )  # fmt: skip
    assert r.code == 0, r


def test_gc_keeps_run_inputs_verify_reports_and_reproduce_still_works(dm, project: Path, repos: str) -> None:  # type: ignore[no-untyped-def]
    raw_id = repos
    _step(dm)
    ctx = connect()
    (run,) = list_runs(ctx, "clean")
    r = dm("bundle", "delete", "--repo", "raw", "--bundle", raw_id, "--force-yes")
    assert r.code == 0 and "recorded run" in r.err, r
    r = dm("gc", "--grace", "0s")
    assert r.code == 0 and "kept 1 deleted bundle" in r.err, r
    r = dm("verify", "--full")
    assert r.code == 4 and "run-bundle-missing" in r.out and raw_id in r.out, r
    # the deleted input's data is still there: the step reproduces from the recorded tree
    r = dm("run", "reproduce", run.id, "--check")
    assert r.code == 0, r
    # dropped on request: now it cannot
    r = dm("gc", "--grace", "0s", "--drop-run-inputs")
    assert r.code == 0, r
    r = dm("run", "reproduce", run.id, "--check")
    assert r.code == 4, r


def test_reindex_rebuilds_runs_from_the_blob_store(dm, project: Path, repos: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _step(dm)
    ctx = connect()
    (run,) = list_runs(ctx, "clean")
    engine = create_engine(ctx.meta_url)
    with engine.begin() as conn:
        for t in ("run_inputs", "run_outputs", "runs"):
            conn.execute(text(f"DELETE FROM {t}"))
    engine.dispose()
    assert list_runs(ctx) == []
    r = dm("admin", "reindex", "--json")
    assert r.code == 0, r
    rep = json.loads(r.out)
    assert rep["runs"] == 1 and rep["added_runs"] == 1
    assert [x.id for x in list_runs(ctx)] == [run.id]
    r = dm("lineage", "--repo", "clean", "--upstream", "--json")
    assert run.id in r.out
    # a lost blob copy is reported, and reindex writes it back from the row
    ctx.cas.blobs.delete(RUN_BLOB_PREFIX + run.id)
    r = dm("verify")
    assert r.code == 4 and "run-blob-missing" in r.out, r
    r = dm("admin", "reindex", "--json")
    assert json.loads(r.out)["restored_run_blobs"] == 1
    assert dm("verify").code == 0


def test_a_forged_run_row_is_exit_4(dm, project: Path, repos: str) -> None:  # type: ignore[no-untyped-def]
    _step(dm)
    ctx = connect()
    (run,) = list_runs(ctx, "clean")
    engine = create_engine(ctx.meta_url)
    with engine.begin() as conn:  # someone edits the params column behind datamon's back
        conn.execute(text('UPDATE runs SET params = \'{"seed": "9"}\''))
    engine.dispose()
    for args in (("run", "get", run.id), ("run", "list"), ("lineage", "--repo", "clean")):
        r = dm(*args)
        assert r.code == 4 and r.err.count("\n") == 1 and "damaged" in r.err, (args, r)
    r = dm("verify")
    assert r.code == 4 and "run-record" in r.out


def _honest() -> bytes:
    return encode_run(
        status="succeeded",
        exit_code=0,
        inputs=[RunLink("raw", "mnist", H, H)],
        outputs=[RunLink("out", "feats", H, H)],
        command=["python", "x.py"],
        params={"lr": "0.1"},
        cwd="/w",
        git={"commit": "a" * 40, "dirty": False},
        python={"version": "3.11.7", "packages": 3, "digest": H},
        env={"CUDA": "0"},
        host="h",
        contributor_name="A",
        contributor_email="a@x",
        start_ns=1,
        end_ns=2,
        external=False,
    ).raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_run_records(data: st.DataObject) -> None:
    raw = bytearray(_honest())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        r = decode_run(bytes(raw), "x")
    except IntegrityError:
        return
    assert r.status in ("succeeded", "failed", "interrupted")
    assert all(len(k.bundle) == 64 for k in r.inputs + r.outputs)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["status", "inputs", "outputs", "command", "params", "git", "python", "exit_code"]),
    st.from_type(object)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    ),
)
def test_fields_replaced_by_anything(key: str, value: object) -> None:
    d = json.loads(_honest())
    d[key] = value
    try:
        raw = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError, UnicodeEncodeError):
        return
    try:
        decode_run(raw, "x")
    except IntegrityError:
        pass


def test_runs_and_lineage_on_postgres_and_s3(team: Team, dm, project: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_tree

    for repo in ("raw", "clean"):
        assert team.run("repo", "create", "--repo", repo).code == 0
    src = make_tree(tmp_path / "raw", {"a.csv": "x\n"})
    assert (
        team.run("bundle", "upload", "--repo", "raw", "--path", src, "--message", "m", "--label", "prod").code
        == 0
    )
    r = team.run(
        "run", "--input", "raw=raw@prod", "--output", "clean=clean", "--param", "seed=2", "--", PY, "clean.py"
    )
    assert r.code == 0, r
    r = team.run("run", "list", "--json")
    (row,) = [json.loads(x) for x in r.out.splitlines()]
    assert row["status"] == "succeeded"
    r = team.run("lineage", "--repo", "raw", "--label", "prod", "--downstream", "--json")
    assert row["id"] in r.out
    r = team.run("run", "reproduce", row["id"][:8], "--check")
    assert r.code == 0, r
    assert team.run("verify").code == 0
