"""Retention: the forget policy against a table of expected survivors, and forget/squash through the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from datamon.api.bundles import make_bundle
from datamon.api.forget import Policy, apply_policy
from datamon.meta.records import BundleRecord
from tests.conftest import make_tree

H = 3600 * 10**9
D = 24 * H


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def b(name: str, when: str) -> BundleRecord:
    r = make_bundle(
        repo="r", tree="00" * 32, parents=[], message=name, contributor_name="A", contributor_email="",
        time_ns=at(when), file_count=0, total_size=0,
    )  # fmt: skip
    return r


# newest first: two on Dec 3 (a tie on one day), Dec 2, Nov 30 (same ISO week as Dec 2? no: W48 vs W49),
# Nov 15, Oct 1, last year.
HISTORY = [
    b("d3-late", "2026-12-03T18:00:00"),
    b("d3-early", "2026-12-03T06:00:00"),
    b("d2", "2026-12-02T12:00:00"),
    b("n30", "2026-11-30T12:00:00"),
    b("n29", "2026-11-29T12:00:00"),
    b("n15", "2026-11-15T12:00:00"),
    b("o1", "2026-10-01T12:00:00"),
    b("y25", "2025-06-01T12:00:00"),
]


def kept(policy: Policy, **kw: object) -> list[str]:
    return [d.bundle.message for d in apply_policy(HISTORY, policy, **kw) if d.keep]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "survivors"),
    [
        (Policy(last=2), ["d3-late", "d3-early"]),
        (Policy(daily=2), ["d3-late", "d2"]),  # the newest of each day; the tie on Dec 3 keeps the later one
        (Policy(daily=3), ["d3-late", "d2", "n30"]),
        (Policy(weekly=2), ["d3-late", "n29"]),  # W49 (Nov 30 - Dec 6) and W48
        (Policy(monthly=3), ["d3-late", "n30", "o1"]),
        (Policy(yearly=5), ["d3-late", "y25"]),
        (Policy(hourly=2), ["d3-late", "d3-early"]),
        (Policy(last=1, monthly=2), ["d3-late", "n30"]),
        (Policy(within_ns=2 * D), ["d3-late", "d3-early", "d2"]),  # newer than newest - 2 days
        (Policy(within_ns=4 * D + 6 * H + 1), ["d3-late", "d3-early", "d2", "n30", "n29"]),
        (Policy(daily=100), ["d3-late", "d2", "n30", "n29", "n15", "o1", "y25"]),
    ],
)
def test_policy_table(policy: Policy, survivors: list[str]) -> None:
    assert kept(policy) == survivors


def test_labelled_and_run_inputs_are_kept_unless_said_otherwise() -> None:
    ids = {x.message: x.id for x in HISTORY}
    extra = {"labelled": {ids["o1"]}, "run_inputs": {ids["n15"]}}
    assert kept(Policy(last=1), **extra) == ["d3-late", "n15", "o1"]
    assert kept(Policy(last=1, keep_labelled=False), **extra) == ["d3-late", "n15"]
    assert kept(Policy(last=1, keep_labelled=False, keep_run_inputs=False), **extra) == ["d3-late"]
    reasons = {d.bundle.message: d.reasons for d in apply_policy(HISTORY, Policy(last=1, daily=2), **extra)}  # type: ignore[arg-type]
    assert reasons["d3-late"] == ["last", "daily 2026-12-03"]
    assert reasons["o1"] == ["labelled"] and reasons["n15"] == ["run input"] and reasons["y25"] == []


def _repo_with_history(dm, tmp_path: Path, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    assert dm("repo", "create", "--repo", "r").code == 0
    ids = []
    for i in range(n):
        src = make_tree(tmp_path / f"v{i}", {"f.txt": f"version {i}\n"})
        r = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", f"v{i}", "--format", "{id}")
        assert r.code == 0, r
        ids.append(r.out.strip())
    return ids


def test_forget_and_squash_through_the_cli(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ids = _repo_with_history(dm, tmp_path, 5)
    assert dm("label", "set", "--repo", "r", "--label", "v1", "--bundle", ids[1]).code == 0
    r = dm("forget", "--repo", "r")
    assert r.code == 1 and "no --keep-* rule" in r.err, r
    r = dm("forget", "--repo", "r", "--keep-last", "2", "--dry-run", "--json")
    assert r.code == 0, r
    rows = {x["id"]: x for x in map(json.loads, r.out.splitlines())}
    assert rows[ids[4]]["reasons"] == ["last"] and rows[ids[1]]["reasons"] == ["labelled"]
    assert {i for i, x in rows.items() if x["action"] == "forget"} == {ids[0], ids[2]}
    assert "would forget 2 of 5" in r.err
    assert len(dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split()) == 5  # dry run
    r = dm("forget", "--repo", "r", "--keep-last", "2")
    assert r.code == 0 and "forgot 2 of 5" in r.err, r
    left = dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split()
    assert set(left) == {ids[4], ids[3], ids[1]}
    assert dm("gc", "--grace", "0s").code == 0
    out = tmp_path / "out"
    assert dm("bundle", "download", "--repo", "r", "--bundle", ids[1], "--destination", out).code == 0
    assert (out / "f.txt").read_text() == "version 1\n"
    # squash: the latest only, or the latest and the labelled ones
    r = dm("repo", "squash", "--repo", "r", "--retain-labels")
    assert r.code == 0, r
    assert set(dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split()) == {ids[4], ids[1]}
    r = dm("repo", "squash", "--repo", "r")
    assert r.code == 0, r
    assert dm("bundle", "list", "--repo", "r", "--format", "{id}").out.split() == [ids[4]]
    r = dm("forget", "--repo", "nope", "--keep-last", "1")
    assert r.code == 2, r
