#!/usr/bin/env python3
"""datamon at scale (the issue 3 targets run.py does not cover): one command, one table.

    python benchmarks/scale_bench.py [--big-gib 4] [--files 200000] [--repeat 3] [--workdir DIR] [--keep]
                                     [--attributes [--attr-files 1000000] [--attr-tree PATH] [--engines E]]

1. Peak memory of `datamon bundle upload` of one big file (4 GiB; alternating 1 MiB blocks of random
   bytes and CSV-like text, written to disk first), measured as the process's peak RSS with GNU time
   (`/usr/bin/time -f %M`). Target: <= 300 MiB (streaming, never whole files in memory).
2. Two bundles of 200,000 small files (1,000 per directory, built directly through the CAS API to keep
   the run short, by mount_bench.py's builder), the second with 10 files changed and the first as parent;
   unchanged files keep their mtime, as in an upload of a tree where only those 10 were edited.
   Whole-process seconds of `datamon bundle list files` (all 200,000 lines to /dev/null) and of
   `datamon bundle diff A..B` (10 `U` lines). Targets: <= 3 s and <= 0.5 s. Best of --repeat runs.

Also prints whole-process seconds of `datamon label get` and `datamon bundle get` on that repo
(target <= 0.3 s). `--attributes` then runs issue 11's targets (a 1,000,000-file bundle with 5
attribute columns, on SQLite and PostgreSQL: upload cost of attributes, a selective filter, a
GROUP BY, a slice of 100,000 files, database growth): `query_bench.py`, with its own table.
`--big-gib 0 --files 0 --attributes` runs only those. Standard library + datamon; needs GNU time
(`apt-get install time`) for item 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mount_bench import build_files_bundle, write_big_file

MiB = 1 << 20
GiB = 1 << 30
CLI = [sys.executable, "-m", "datamon.cli"]
GNU_TIME = "/usr/bin/time"


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def run(args: list[str], env: dict[str, str], stdout: int | None = subprocess.PIPE) -> str:
    p = subprocess.run(args, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(args)}\n{p.stderr}")
    return p.stdout or ""


def best_seconds(args: list[str], env: dict[str, str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run(args, env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_big_file_rss(work: Path, env: dict[str, str], gib: float) -> dict[str, float]:
    if not os.access(GNU_TIME, os.X_OK):
        log(f"{GNU_TIME} not found (apt-get install time): peak RSS is not measured")
        return {}
    src = work / "one-big-file"
    src.mkdir()
    size = int(gib * GiB)
    log(f"writing one {size / GiB:.1f} GiB file")
    write_big_file(src / "weights.bin", size)
    run([*CLI, "repo", "create", "--repo", "big", "--description", "one big file"], env)
    os.sync()
    log("uploading it under GNU time")
    t0 = time.perf_counter()
    p = subprocess.run(
        [
            GNU_TIME,
            "-f",
            "%M",
            *CLI,
            "bundle",
            "upload",
            "--repo",
            "big",
            "--path",
            str(src),
            "--message",
            "big",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"upload failed: {p.stderr}")
    rss_kib = int(p.stderr.strip().splitlines()[-1])
    shutil.rmtree(src)
    return {"big_bytes": size, "big_seconds": seconds, "big_rss_mib": rss_kib / 1024}


def bench_many_files(home: Path, env: dict[str, str], files: int, repeat: int) -> dict[str, float]:
    os.environ["DATAMON_HOME"] = str(home)
    import datamon

    log(f"building two bundles of {files:,} files (10 differ)")
    with datamon.connect() as ctx:
        ctx.create_repo("many")
        now = time.time_ns()
        a = build_files_bundle(ctx, "many", files, now=now)
        step = max(1, files // 10)
        changed = frozenset(i * step + 7 for i in range(10))
        b = build_files_bundle(ctx, "many", files, changed=changed, parent=a, now=now)
    run([*CLI, "label", "set", "--repo", "many", "--label", "v2", "--bundle", b], env)
    listed = run([*CLI, "bundle", "list", "files", "--repo", "many", "--bundle", b], env).count("\n")
    diff = run([*CLI, "bundle", "diff", "--repo", "many", f"{a}..{b}"], env).splitlines()
    if listed != files or len(diff) != 10 or not all(line.startswith("U ") for line in diff):
        raise SystemExit(f"unexpected output: {listed} files listed, diff {diff[:12]}")
    log("timing list files, diff, label get, bundle get")
    return {
        "files": files,
        "list_files_s": best_seconds(
            [*CLI, "bundle", "list", "files", "--repo", "many", "--bundle", b], env, repeat
        ),
        "diff_s": best_seconds([*CLI, "bundle", "diff", "--repo", "many", f"{a}..{b}"], env, repeat),
        "label_get_s": best_seconds([*CLI, "label", "get", "--repo", "many", "--label", "v2"], env, repeat),
        "bundle_get_s": best_seconds([*CLI, "bundle", "get", "--repo", "many", "--bundle", b], env, repeat),
    }


def verdict(value: float, limit: float) -> str:
    return "ok" if value <= limit else "MISS"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--big-gib", type=float, default=4.0, help="size of the one big file (0 skips it)")
    p.add_argument("--files", type=int, default=200_000, help="files per bundle in the many-files test")
    p.add_argument("--repeat", type=int, default=3, help="best of N for the timed commands")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument(
        "--attributes",
        action="store_true",
        help="then issue 11's bundle with 5 attribute columns on SQLite and PostgreSQL (query_bench.py)",
    )
    p.add_argument("--attr-files", type=int, default=1_000_000, help="files of that bundle")
    p.add_argument("--attr-tree", type=Path, help="an existing tree of that many files (read-only)")
    p.add_argument("--engines", default="sqlite,postgresql", help="engines of the attributes benchmark")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="datamon-scale-", dir=args.workdir))
    home = work / "home"
    env = {**os.environ, "DATAMON_HOME": str(home)}
    try:
        big = bench_big_file_rss(work, env, args.big_gib) if args.big_gib > 0 else {}
        many = bench_many_files(home, env, args.files, args.repeat) if args.files > 0 else {}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = []
    if big:
        gib = big["big_bytes"] / GiB
        rows.append(
            (
                f"peak RSS, upload of one {gib:.2g} GiB file ({big['big_seconds']:.1f} s)",
                f"{big['big_rss_mib']:.0f} MiB",
                "<= 300 MiB",
                verdict(big["big_rss_mib"], 300),
            )
        )
    n = f"{int(many['files']):,}" if many else ""
    for what, key, limit in (
        (f"`bundle list files`, {n}-file bundle", "list_files_s", 3.0),
        (f"`bundle diff A..B`, {n} files, 10 differ", "diff_s", 0.5),
        ("`label get`, whole process", "label_get_s", 0.3),
        ("`bundle get`, whole process", "bundle_get_s", 0.3),
    ):
        if key in many:
            rows.append((what, f"{many[key]:.2f} s", f"<= {limit:g} s", verdict(many[key], limit)))
    print("| what | result | target | |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |")
    if args.attributes:  # issue 11's scale targets, with their own table
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("query_bench.py")),
            "--files",
            str(args.attr_files),
        ]
        cmd += ["--engines", args.engines] + (["--tree", str(args.attr_tree)] if args.attr_tree else [])
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
