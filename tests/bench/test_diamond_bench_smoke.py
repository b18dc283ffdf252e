"""A tiny run of benchmarks/diamond_bench.py: it must work from a fresh checkout (not a timing test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_diamond_bench_smoke() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/diamond_bench.py"), "--files", "300", "--big", "0",
         "--splits", "2", "--commit-files", "4000"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    a = out["upload_vs_splits"]
    assert a["files"] == 300
    assert a["contiguous"]["same_tree"] and a["interleaved"]["same_tree"]
    assert out["commit"]["files"] == 4000 and out["commit"]["trees_written"] == 1001
