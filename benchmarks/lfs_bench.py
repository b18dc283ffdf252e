#!/usr/bin/env python3
"""Git LFS push and pull through datamon versus git-lfs's own file:// transfer, in one run.

    python benchmarks/lfs_bench.py [--scale 1.0] [--files 8] [--keep]
                                   [--modes builtin,datamon,datamon-concurrent]

The data set is ``--files`` files totalling 1 GiB × ``--scale`` (half pseudo-random bytes,
half compressible CSV-like text), committed once in one working repository. Each mode pushes
it to its own bare ``file://`` remote, then a second version in which every file has a small
insertion, then pulls both into a fresh clone. Modes:

- ``builtin``: git-lfs with no configuration. For a ``file://`` remote git-lfs 3.x uses its
  built-in standalone agent (``git lfs standalone-file``) and copies objects into
  ``remote.git/lfs/objects``.
- ``datamon``: ``datamon lfs agent`` as the standalone agent, one agent process
  (``concurrent=false``, what ``datamon lfs install`` writes).
- ``datamon-concurrent``: the same with ``concurrent=true`` (git-lfs starts 8 agents).

Timed: ``git push`` of v1, ``git push`` of v2, and ``git lfs pull`` in a clone made with
``GIT_LFS_SKIP_SMUDGE=1`` (so the clone itself is not timed and the pull moves every byte).
Every pulled file is compared with the original. Needs git, git-lfs and datamon on PATH.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from blake3 import blake3

MiB = 1 << 20
GiB = 1 << 30
MODES = ("builtin", "datamon", "datamon-concurrent")


def prng(key: str, n: int) -> bytes:
    return blake3(f"lfs-bench/{key}".encode()).digest(length=n) if n else b""


_TEXT = bytes(b"0123456789,,\n.-0"[i % 16] for i in range(256))


def text(key: str, n: int) -> bytes:
    """Compressible bytes: digits, commas and newlines (zstd-3 shrinks them ~2x)."""
    return prng("text/" + key, n).translate(_TEXT)


def make_file(i: int, size: int) -> bytes:
    half = size // 2
    return prng(f"rand/{i}", half) + text(str(i), size - half)


def insert(data: bytes, i: int) -> bytes:
    at = random.Random(i).randrange(len(data) or 1)
    return data[:at] + b"a small edit " * 8 + data[at:]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{r.stdout}\n{r.stderr}")
    return dt


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


@dataclass
class Result:
    mode: str
    push1: float
    push2: float
    pull: float
    store1: int
    store2: int


def agent_config(mode: str, exe: str) -> list[str]:
    if mode == "builtin":
        return []
    concurrent = "true" if mode == "datamon-concurrent" else "false"
    return [
        "-c",
        "lfs.standalonetransferagent=datamon",
        "-c",
        f"lfs.customtransfer.datamon.path={exe}",
        "-c",
        "lfs.customtransfer.datamon.args=lfs agent --repo bench",
        "-c",
        f"lfs.customtransfer.datamon.concurrent={concurrent}",
    ]


def bench_mode(
    mode: str, root: Path, work: Path, env: dict[str, str], exe: str, originals: dict[str, bytes]
) -> Result:
    bare = root / f"remote-{mode}.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], root, env)
    home = root / f"home-{mode}"
    env = {**env, "DATAMON_HOME": str(home)}
    if mode != "builtin":
        run([exe, "repo", "create", "--repo", "bench"], root, env)
    cfg = agent_config(mode, exe)
    store = (lambda: du(bare / "lfs")) if mode == "builtin" else (lambda: du(home / "blobs"))

    run(["git", "checkout", "-q", "v1"], work, env)
    push1 = run(["git", *cfg, "push", "-q", bare.as_uri(), "HEAD:refs/heads/main"], work, env)
    store1 = store()
    run(["git", "checkout", "-q", "v2"], work, env)
    push2 = run(["git", *cfg, "push", "-q", bare.as_uri(), "HEAD:refs/heads/main"], work, env)
    store2 = store()

    clone = root / f"clone-{mode}"
    run(["git", "clone", "-q", *cfg, bare.as_uri(), str(clone)], root, {**env, "GIT_LFS_SKIP_SMUDGE": "1"})
    pull = run(["git", "lfs", "pull"], clone, env)
    for name, data in originals.items():
        if (clone / name).read_bytes() != data:
            sys.exit(f"{mode}: {name} differs after pull")
    shutil.rmtree(clone)
    return Result(mode, push1, push2, pull, store1, store2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="data size in GiB (default 1)")
    ap.add_argument("--files", type=int, default=8, help="number of files (default 8)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--dir", type=Path, help="work directory (default: a new temporary one)")
    a = ap.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        sys.exit(f"unknown modes: {', '.join(sorted(unknown))}")
    for tool in ("git", "git-lfs", "datamon"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH")
    exe = str(Path(shutil.which("datamon") or "datamon").absolute())

    root = a.dir or Path(tempfile.mkdtemp(prefix="lfs-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": str(root / "gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    env.pop("GIT_TRACE", None)
    (root / "gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n")
    run(["git", "lfs", "install", "--skip-repo"], root, env)

    total = int(a.scale * GiB)
    size = total // a.files
    total_mib = a.files * size / MiB
    print(
        f"data: {a.files} files x {size / MiB:.0f} MiB = {total_mib:.0f} MiB; v2 inserts ~100 bytes per file"
    )
    work = root / "work"
    run(["git", "init", "-q", "-b", "main", str(work)], root, env)
    run(["git", "lfs", "track", "*.bin"], work, env)
    v1 = {f"f{i}.bin": make_file(i, size) for i in range(a.files)}
    for name, data in v1.items():
        (work / name).write_bytes(data)
    t_add = run(["git", "add", "."], work, env)
    run(["git", "commit", "-q", "-m", "v1"], work, env)
    run(["git", "tag", "v1"], work, env)
    v2 = {name: insert(data, i) for i, (name, data) in enumerate(v1.items())}
    del v1
    for name, data in v2.items():
        (work / name).write_bytes(data)
    t_add += run(["git", "add", "."], work, env)
    run(["git", "commit", "-q", "-m", "v2"], work, env)
    run(["git", "tag", "v2"], work, env)
    print(f"(git add of both versions, the LFS clean filter: {t_add:.1f} s, not counted)")

    results = [bench_mode(m, root, work, env, exe, v2) for m in modes]

    mib = a.files * size / MiB
    print()
    lfs_version = subprocess.run(["git", "lfs", "version"], capture_output=True, text=True).stdout.split()[0]
    py = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"{lfs_version} · {py} · {os.cpu_count()} cores · load average {os.getloadavg()[0]:.1f}")
    head = f"{'mode':<20} {'push v1':>16} {'push v2':>9} {'pull v2':>16} {'store v1':>10} {'store v1+v2':>12}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.mode:<20} {r.push1:6.1f} s {mib / r.push1:5.0f} MiB/s {r.push2:7.1f} s "
            f"{r.pull:6.1f} s {mib / r.pull:5.0f} MiB/s {r.store1 / MiB:7.0f} MiB {r.store2 / MiB:9.0f} MiB"
        )
    if not a.keep and a.dir is None:
        shutil.rmtree(root)
    else:
        print(f"kept {root}")


if __name__ == "__main__":
    main()
