"""Memory does not grow with the number of files (issue 15): a 200,000-file tree is uploaded
(first time, then again unchanged) by the CLI in a subprocess, whose peak RSS is read from
/proc (``VmHWM``; ``resource.getrusage`` where there is no /proc; with its upload workers',
sampled every 20 ms) and held to a bound that per-file state in memory would break (the
client before issue 15 needed about 400 MiB for the first upload of this tree and 530 MiB
for the second).

Not timed: it checks memory only, so a slow CI machine passes as well as a fast one."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

MiB = 1 << 20
FILES = 200_000
PER_DIR = 1000
MAIN_BOUND_MIB = 300  # the target, for the upload process (what `/usr/bin/time -f %M` reports)
TREE_BOUND_MIB = 400  # the upload process and its worker processes together

# Runs the CLI in this process and reports on stderr's last line its peak RSS (KiB) and the
# peak of the sum of its RSS and its children's (the upload workers), sampled from /proc every
# 20 ms, whatever the CLI's exit.
_WRAP = """
import json, os, resource, runpy, sys, threading, time
def rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
def children():
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                out += f.read().split()
        except OSError:
            pass
    return out
peak = [0]
done = threading.Event()
def watch():
    while not done.is_set():
        peak[0] = max(peak[0], rss("self") + sum(rss(c) for c in children()))
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
sys.argv = ["datamon"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("datamon.cli", run_name="__main__")
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
done.set()
sys.stdout.flush()
# VmHWM: this process's own peak. ru_maxrss would also count the memory of the process that
# started it (the high-water mark of the address space it was forked from survives exec).
try:
    with open("/proc/self/status") as f:
        me = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_kib": me, "tree_kib": peak[0]}), file=sys.stderr)
sys.exit(code)
"""


def make_small_files(root: Path, files: int, per_dir: int = PER_DIR, seed: int = 15) -> Path:
    """``files`` files of 16 B–1 KiB (random bytes) in directories of ``per_dir``."""
    rng = random.Random(seed)
    blob = rng.randbytes(1 << 20)
    for d in range((files + per_dir - 1) // per_dir):
        sub = root / f"d{d:05d}"
        sub.mkdir(parents=True)
        base = os.fsencode(sub)
        for i in range(min(per_dir, files - d * per_dir)):
            size = rng.randint(16, 1024)
            off = rng.randrange(len(blob) - size)
            fd = os.open(base + b"/f%04d.bin" % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, blob[off : off + size] + i.to_bytes(4, "little") + d.to_bytes(4, "little"))
            finally:
                os.close(fd)
    return root


def cli_peak_rss(
    *args: object, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], int, int]:
    """Run ``datamon ARGS``; returns (result, peak RSS of the process in MiB, peak RSS of the
    process and its children together in MiB)."""
    p = subprocess.run(
        [sys.executable, "-c", _WRAP, *map(str, args)],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
    )
    last = json.loads(p.stderr.strip().splitlines()[-1])
    return p, last["rss_kib"] // 1024, last["tree_kib"] // 1024


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_upload_of_200k_files_in_bounded_memory(tmp_path: Path) -> None:
    src = make_small_files(tmp_path / "src", FILES)
    p, _, _ = cli_peak_rss("repo", "create", "--repo", "mem")
    assert p.returncode == 0, p.stderr
    for what in ("first", "again"):
        p, rss, tree = cli_peak_rss("bundle", "upload", "--repo", "mem", "--path", src, "--message", what)
        assert p.returncode == 0, p.stderr
        assert f"uploaded {FILES} files" in p.stderr
        if what == "again":
            assert " 0 read" in p.stderr
        print(f"{what}: upload process {rss} MiB, with its workers {tree} MiB")
        assert rss <= MAIN_BOUND_MIB, f"{what} upload of {FILES} files peaked at {rss} MiB"
        assert tree <= TREE_BOUND_MIB, f"{what} upload with its workers peaked at {tree} MiB"
