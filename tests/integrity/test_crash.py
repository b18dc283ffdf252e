"""kill -9 of uploads at many points: what landed verifies, and a rerun completes the bundle."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from datamon.api.verify import verify
from tests.integrity.helpers import (
    cli_env,
    datamon_cmd,
    dataset,
    download_bytes,
    open_ctx,
    run_cli,
    write_tree,
)

RUNS = 10


def _check_store(
    tmp_path: Path, root: Path, sources: dict[str, dict[str, bytes]], checked: set[str], *, full: bool = False
) -> set[str]:
    """verify is clean and every bundle not ``checked`` yet is byte-identical to its source;
    returns the messages of all bundles."""
    with open_ctx(root) as ctx:
        r = verify(ctx, full=full)
        assert r.ok, r.affected
        for b in ctx.list_bundles("r"):
            if b.message not in checked:
                dest = tmp_path / f"check-{b.id[:12]}"
                assert download_bytes(ctx, "r", b.id, dest) == sources[b.message], b.message
                checked.add(b.message)
        return {b.message for b in ctx.list_bundles("r")}


@pytest.mark.slow
def test_kill_9_during_uploads_then_rerun(tmp_path: Path) -> None:
    root = tmp_path / "s"
    assert run_cli(root, "repo", "create", "--repo", "r").returncode == 0
    base = dataset(1, big=6, small=150)
    sources: dict[str, dict[str, bytes]] = {}
    killed = 0
    checked: set[str] = set()
    # Calibrate on a throwaway store: kill times are spread over one upload's own duration,
    # so the test means the same on a fast machine and on a loaded one.
    cal = tmp_path / "calibrate"
    assert run_cli(cal, "repo", "create", "--repo", "r").returncode == 0
    cal_src = write_tree(tmp_path / "cal-src", {**base, **dataset(99, big=6, small=100)})
    t0 = time.perf_counter()
    calibration = run_cli(cal, "bundle", "upload", "--repo", "r", "--path", cal_src, "--message", "c")
    assert calibration.returncode == 0
    duration = time.perf_counter() - t0
    for i in range(RUNS):
        files = {**base, **dataset(100 + i, big=6, small=100)}
        src = write_tree(tmp_path / f"src{i}", files)
        sources[f"run {i}"] = files
        proc = subprocess.Popen(
            datamon_cmd("bundle", "upload", "--repo", "r", "--path", src, "--message", f"run {i}"),
            env=cli_env(root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # from start-up through chunking, packing, indexing and trees, up to just before the end
        time.sleep(duration * (0.1 + 0.8 * i / (RUNS - 1)))
        proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        _check_store(tmp_path, root, sources, checked)
    assert killed >= RUNS // 2  # most kills landed in the middle of an upload

    done = _check_store(tmp_path, root, sources, checked, full=True)
    for i in range(RUNS):  # rerun every upload that did not finish: each deduplicates what landed
        if f"run {i}" not in done:
            src = tmp_path / f"src{i}"
            res = run_cli(root, "bundle", "upload", "--repo", "r", "--path", src, "--message", f"run {i}")
            assert res.returncode == 0, res.stderr
    assert _check_store(tmp_path, root, sources, checked, full=True) == set(sources)
