"""A tiny run of the benchmark harness: it must work from a fresh checkout (not a timing test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/run.py"),
            "--scale",
            "0.002",
            "--tools",
            "datamon",
            "--no-install",
            "--strict",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = [row for row in results["rows"] if row["tool"] == "datamon"]
    assert {row["dataset"] for row in rows} == {"big", "small"}
    for row in rows:
        assert row["ok"], row
        for step in ("ingest_v1", "ingest_v2", "reingest", "restore"):
            assert row["steps"][step]["ok"], (row["dataset"], step, row["steps"][step])
        assert row["check"]["ok"], row["check"]
        assert row["stored_v2_mib"] > 0


def test_million_bench_smoke(tmp_path: Path) -> None:
    """benchmarks/million_bench.py end to end on 2,000 files (datamon only, no mount): it prints its table."""
    out = tmp_path / "million.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/million_bench.py"),
            "--files",
            "2000",
            "--tools",
            "datamon",
            "--no-mount",
            "--no-install",
            "--repeat",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| step | datamon s (CPU) | datamon RSS MiB | restic s (CPU) | restic RSS MiB |" in r.stdout
    for row in (
        "| first upload / backup |",
        "| re-upload, 10 files changed |",
        "| `bundle update` (10 files",
    ):
        assert row in r.stdout, r.stdout
    results = json.loads(out.read_text())
    steps = results["best"]["datamon"]
    for step in ("first", "again", "changed", "list", "diff", "bundle_get", "label_get", "restore", "update"):
        assert steps[step]["seconds"] > 0 and steps[step]["rss_mib"] > 0, (step, steps[step])
    assert steps["shared"]["dirs_differ"] <= 2  # 2 directories; the 10 changed files are in both
