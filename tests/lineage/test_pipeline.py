"""A three-step pipeline (raw → clean → ext → feats) through `datamon run`, `run record` and the
Python context manager, read back with `lineage`, `run list/get` and `run reproduce`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datamon.api.context import connect
from datamon.api.runs import list_runs
from tests.conftest import make_tree
from tests.lineage.conftest import PY, git


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _step1(dm) -> None:  # type: ignore[no-untyped-def]
    r = dm(
        "run", "--input", "raw=raw@prod", "--output", "clean=clean", "--param", "seed=7", "--label", "prod",
        "--", PY, "clean.py",
    )  # fmt: skip
    assert r.code == 0, r


def test_three_step_pipeline_and_its_lineage(dm, project: Path, repos: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw_id = repos
    # 1. a step datamon runs
    _step1(dm)
    ctx = connect()
    (run1,) = list_runs(ctx, "clean")
    clean_b = ctx.bundle("clean", label="prod")
    assert run1.status == "succeeded" and run1.exit_code == 0 and not run1.external
    assert [(k.name, k.repo, k.bundle) for k in run1.inputs] == [("raw", "raw", raw_id)]
    assert [(k.name, k.repo, k.bundle) for k in run1.outputs] == [("clean", "clean", clean_b.id)]
    assert run1.params == {"seed": "7"}
    assert run1.command == (PY, "clean.py")
    assert run1.git == {"commit": git(project, "rev-parse", "HEAD").strip(), "dirty": False}
    assert run1.python is not None and run1.python["packages"] > 0
    assert clean_b.parents == (raw_id,)  # the output's parents are the inputs
    with ctx.open_file("clean", "a.csv", label="prod") as f:
        assert f.read() == b"X,Y\n1,2\nseed=7\n"

    # 2. a step something else ran, recorded afterwards
    out = make_tree(tmp_path / "ext-out", {"e.txt": "external\n"})
    ext_b = ctx.upload("ext", out, "external step", parents=[clean_b.id]).bundle
    assert ext_b.parents == (clean_b.id,)
    r = dm(
        "run", "record", "--input", f"clean=clean@{clean_b.id[:10]}", "--output", f"e=ext@{ext_b.id}",
        "--command", "python ext.py --k 3", "--param", "k=3",
    )  # fmt: skip
    assert r.code == 0, r
    run2_id = r.out.strip()
    assert len(run2_id) == 64

    # 3. a step in Python (a notebook)
    with ctx.run(
        inputs={"e": "ext", "clean": "clean@prod"}, outputs={"feats": "feats"}, params={"model": "lin"}
    ) as s:
        text = Path(s.input("e"), "e.txt").read_text() + Path(s.input("clean"), "b.csv").read_text()
        Path(s.output("feats"), "f.txt").write_text(text)
    run3 = s.record
    assert run3 is not None and run3.status == "succeeded"
    feats_b = ctx.bundle("feats")
    assert run3.outputs[0].bundle == feats_b.id
    assert set(feats_b.parents) == {ext_b.id, clean_b.id}

    # downstream of raw: every derived bundle and run
    r = dm("lineage", "--repo", "raw", "--label", "prod", "--downstream", "--json")
    assert r.code == 0, r
    items = _json_lines(r.out)
    nodes = {n["id"]: n for n in items if n["type"] == "node"}
    assert {run1.id, run2_id, run3.id, clean_b.id, ext_b.id, feats_b.id, raw_id} <= set(nodes)
    edges = {(e["from"], e["to"], e["kind"]) for e in items if e["type"] == "edge"}
    assert (raw_id, run1.id, "input") in edges and (run1.id, clean_b.id, "output") in edges
    assert (run3.id, feats_b.id, "output") in edges
    assert (raw_id, clean_b.id, "parent") not in edges  # explained by run1

    # upstream of feats: the exact inputs, git commit and params of each step
    r = dm("lineage", "--repo", "feats", "--upstream", "--json")
    nodes = {n["id"]: n for n in _json_lines(r.out) if n["type"] == "node"}
    assert raw_id in nodes and run1.id in nodes and run2_id in nodes
    n3 = nodes[run3.id]
    assert {i["name"]: i["bundle"] for i in n3["inputs"]} == {"e": ext_b.id, "clean": clean_b.id}  # type: ignore[index, union-attr]
    assert n3["params"] == {"model": "lin"}
    assert nodes[run1.id]["git"] == run1.git and nodes[run1.id]["params"] == {"seed": "7"}
    r = dm("lineage", "--repo", "feats", "--upstream")
    assert r.code == 0 and run3.id[:12] in r.out and "model=lin" in r.out and "seed=7" in r.out
    assert r.out.index(run3.id[:12]) < r.out.index(run1.id[:12])  # nearest first
    r = dm("lineage", "--repo", "feats", "--upstream", "--depth", "1", "--json")
    assert run1.id not in {n["id"] for n in _json_lines(r.out) if n["type"] == "node"}

    # Graphviz renders the dot output
    r = dm("lineage", "--repo", "raw", "--label", "prod", "--format", "dot")
    assert r.code == 0 and r.out.startswith("digraph lineage {")
    if shutil.which("dot") is None and os.environ.get("CI") != "true":
        pytest.skip("graphviz is not installed (scripts/install-test-deps.sh installs it)")
    svg = subprocess.run(["dot", "-Tsvg"], input=r.out, capture_output=True, text=True, check=True).stdout
    assert "<svg" in svg and run1.id[:12] in svg

    # run list / get
    r = dm("run", "list", "--repo", "clean", "--format", "{id} {status}")
    assert {line.split()[0] for line in r.out.splitlines()} == {run1.id, run2_id, run3.id}
    r = dm("run", "get", run2_id[:8])
    assert r.code == 0 and "external" in r.out and "param: k=3" in r.out
    r = dm("run", "get", run1.id[:8], "--json")
    assert json.loads(r.out)["id"] == run1.id


def test_reproduce_check(dm, project: Path, repos: str) -> None:  # type: ignore[no-untyped-def]
    _step1(dm)
    ctx = connect()
    (run1,) = list_runs(ctx, "clean")
    r = dm("run", "reproduce", run1.id[:10], "--check")
    assert r.code == 0, r
    assert "reproduced" in r.err
    again = [x for x in list_runs(ctx, "clean") if x.reproduces == run1.id]
    assert len(again) == 1 and again[0].inputs == run1.inputs and again[0].params == run1.params

    r = dm("run", "--input", "raw=raw", "--output", "out=feats", "--", PY, "stamp.py")
    assert r.code == 0, r
    (stamp,) = list_runs(ctx, "feats")
    r = dm("run", "reproduce", stamp.id, "--check")
    assert r.code == 4, r
    assert "stamp.txt" in r.err and "same.txt" not in r.err
    assert r.err.strip().splitlines()[-1].startswith("error: ")


def test_failed_step_records_a_failed_run_and_uploads_nothing(dm, project: Path, repos: str) -> None:  # type: ignore[no-untyped-def]
    code = "import os, sys; open(os.environ['DATAMON_OUTPUT_CLEAN'] + '/x', 'w').write('x'); sys.exit(3)"
    r = dm("run", "--input", "raw=raw@prod", "--output", "clean=clean", "--", PY, "-c", code)
    assert r.code == 3, r
    ctx = connect()
    (run,) = list_runs(ctx, "raw")
    assert run.status == "failed" and run.exit_code == 3 and run.outputs == ()
    assert ctx.list_bundles("clean") == []

    with pytest.raises(ValueError), ctx.run(inputs={"raw": "raw@prod"}, outputs={"clean": "clean"}) as s:
        Path(s.output("clean"), "y").write_text("y")
        raise ValueError("boom")
    assert s.record is not None and s.record.status == "failed" and s.record.outputs == ()
    assert ctx.list_bundles("clean") == []

    r = dm("run", "--input", "raw=nope@prod", "--output", "clean=clean", "--", PY, "-c", "pass")
    assert r.code == 2 and r.err.count("\n") == 1, r
    r = dm("run", "--input", "raw", "--", PY, "-c", "pass")
    assert r.code == 1 and "NAME=REPO" in r.err, r
    r = dm("run", "--output", "clean=clean")
    assert r.code == 1 and "no command" in r.err, r


def test_ctrl_c_leaves_an_interrupted_run(project: Path, repos: str) -> None:
    sleeper = "import time; print('ready', flush=True); time.sleep(120)"
    p = subprocess.Popen(
        [sys.executable, "-m", "datamon", "run", "--input", "raw=raw@prod", "--output", "clean=clean",
         "--", PY, "-c", sleeper],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err
    ctx = connect()
    (run,) = list_runs(ctx, "raw")
    assert run.status == "interrupted" and run.outputs == ()
    assert ctx.list_bundles("clean") == []
