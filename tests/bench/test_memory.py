"""Peak memory of uploading and downloading 200,000 small files stays bounded (issue 15).

Not a timing test. Each measured command is a fresh ``python -m datamon.cli`` process with its own
DATAMON_HOME, started by a tiny wrapper process (``_WRAPPER``) that waits for it and reports
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the wrapper has no other child, so that is the
peak RSS of exactly that one command (and of any process it started and waited for). RUSAGE_CHILDREN
gives the *largest* process, not a sum, so the wrapper also samples the summed RSS of the command's
whole process tree every 100 ms: if datamon ever moves work into worker processes, their memory
counts together. The bound is the issue's target for a million files (memory must not grow with
the number of files), so 200,000 files already show per-file growth: at 1.5-2 KiB per file (what
main holds today) 200,000 files cost 300-400 MiB on top of the interpreter's ~60 MiB.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # minutes on a loaded machine

ROOT = Path(__file__).resolve().parents[2]
FILES = 200_000
PER_DIR = 1000
MAX_RSS_MIB = 300  # issue 15's target for upload and download of 1,000,000 files

# Main at 0365309 measured ~420 MiB (upload) and ~470 MiB (download) for this tree: both held
# per-file state for the whole bundle. The fixes (issue 15's upload and download work) flip these
# to False (upload: the streaming walk measured ~190 MiB, ~56 MiB unchanged; download ~86 MiB). The
# xfail is strict: once a fix lands, the test XPASSes, which *fails* the run, so whoever merges the
# fix must flip the constant here in the same change (and CI stays honest).
UPLOAD_GROWS_TODAY = False
DOWNLOAD_GROWS_TODAY = False

# Runs argv, waits for it, prints JSON: its exit code, ru_maxrss of RUSAGE_CHILDREN (KiB on Linux)
# the largest summed RSS of its process tree seen by a 100 ms sampler (KiB) and its CPU seconds.
_WRAPPER = r"""
import json, os, resource, subprocess, sys, threading

def tree_rss_kib(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, ValueError, IndexError):
            pass
        todo += kids.get(p, [])
    return total

p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
peak = [0]
done = threading.Event()

def sample():
    while not done.wait(0.1):
        peak[0] = max(peak[0], tree_rss_kib(p.pid))

t = threading.Thread(target=sample, daemon=True)
t.start()
code = p.wait()
done.set()
t.join()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"code": code, "maxrss_kib": usage.ru_maxrss, "tree_peak_kib": peak[0], "cpu_s": cpu}))
"""


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "DATAMON_HOME": str(home)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    for var in ("DATAMON_BLOB_URL", "DATAMON_META_URL", "DATAMON_CONTEXT"):
        env.pop(var, None)
    return env


def _measured(env: dict[str, str], *args: str) -> dict[str, float]:
    """Run one datamon command in a fresh process under the wrapper; its peak RSS in MiB."""
    r = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "datamon.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, f"datamon {' '.join(args)} exited {out['code']}: {r.stderr[-3000:]}"
    res = {"maxrss_mib": out["maxrss_kib"] / 1024, "tree_peak_mib": out["tree_peak_kib"] / 1024}
    print(f"datamon {args[0]} {args[1]}: {res}, CPU {out['cpu_s']:.1f} s", end=", ")  # pytest -s
    return res


def _make_tree(root: Path) -> None:
    """FILES files of 16-271 bytes (all different) in FILES/PER_DIR directories."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range(FILES // PER_DIR):
        sub = root / f"d{d:04d}"
        sub.mkdir(parents=True)
        for i in range(PER_DIR):
            n = d * PER_DIR + i
            fd = os.open(sub / f"f{i:04d}.txt", flags, 0o644)
            os.write(fd, b"%d\n" % n * (1 + n % 32))
            os.close(fd)


def _scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory in /dev/shm when there is room (the trees take ~2 GiB of tmpfs), else in pytest's
    tmp. The bound is on datamon's own RSS, which tmpfs pages do not count in; what tmpfs saves is
    creating and deleting 400,000 files on a disk that may be busy (minutes on a shared machine)."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
        if st.f_bavail * st.f_frsize >= 4 << 30 and avail >= 8 << 30 and os.access(shm, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="datamon-memory-", dir=shm))
    except (OSError, StopIteration, ValueError):
        pass
    return tmp_path_factory.mktemp("memory")


@pytest.fixture(scope="module")
def memory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, float]]]:
    """Upload the tree, then download it, each measured once; the numbers for both tests."""
    base = _scratch(tmp_path_factory)
    src, dest, home = base / "src", base / "dest", base / "home"
    t = time.perf_counter()

    def lap(what: str) -> None:  # where the test's time goes, shown with pytest -s
        nonlocal t
        print(f"{what} {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()

    try:
        _make_tree(src)
        lap("generate")
        env = _env(home)
        subprocess.run(
            [sys.executable, "-m", "datamon.cli", "repo", "create", "--repo", "mem", "--description", "x"],
            env=env,
            check=True,
            capture_output=True,
        )
        up = _measured(env, "bundle", "upload", "--repo", "mem", "--path", str(src), "--message", "m")
        lap("upload")
        # unchanged: answered by the stat cache, whose rows must not be loaded all at once either
        again = _measured(env, "bundle", "upload", "--repo", "mem", "--path", str(src), "--message", "m2")
        lap("upload again")
        down = _measured(env, "bundle", "download", "--repo", "mem", "--destination", str(dest))
        lap("download")
        n = sum(len(files) for _, _, files in os.walk(dest))
        assert n == FILES, f"{n} files downloaded"
        sample = dest / "d0123" / "f0456.txt"
        assert sample.read_bytes() == (src / "d0123" / "f0456.txt").read_bytes()
        yield {"upload": up, "upload again": again, "download": down}
    finally:
        t = time.perf_counter()
        shutil.rmtree(base, ignore_errors=True)  # 400,000 files: not left for pytest's next sessions
        lap("clean up")


def _peak(m: dict[str, float]) -> float:
    return max(m["maxrss_mib"], m["tree_peak_mib"])


@pytest.mark.xfail(
    UPLOAD_GROWS_TODAY, strict=True, raises=AssertionError, reason="upload holds per-file state (issue 15)"
)
@pytest.mark.parametrize("step", ["upload", "upload again"])
def test_upload_peak_rss_is_bounded(memory: dict[str, dict[str, float]], step: str) -> None:
    m = memory[step]
    assert _peak(m) <= MAX_RSS_MIB, f"{step} of {FILES:,} files: peak RSS {m} MiB > {MAX_RSS_MIB}"


@pytest.mark.xfail(
    DOWNLOAD_GROWS_TODAY,
    strict=True,
    raises=AssertionError,
    reason="download holds per-file state (issue 15)",
)
def test_download_peak_rss_is_bounded(memory: dict[str, dict[str, float]]) -> None:
    m = memory["download"]
    assert _peak(m) <= MAX_RSS_MIB, f"download of {FILES:,} files: peak RSS {m} MiB > {MAX_RSS_MIB}"
