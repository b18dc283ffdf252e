#!/usr/bin/env python3
"""datamon mount benchmarks (issue 4 targets): one command, one table.

    python benchmarks/mount_bench.py [--scale 1.0] [--repeat 3] [--workdir DIR] [--keep] [--drop-caches]

1. Sequential read of one large file (1 GiB x scale; alternating 1 MiB blocks of random bytes and
   CSV-like text) with `cat FILE > /dev/null` through `datamon bundle mount`, against getting the same
   file with `datamon bundle download` and against `cat` of the downloaded copy. "cold" empties the
   chunk cache first (and, with --drop-caches, the kernel page cache: that affects the whole machine);
   "warm" reads with the chunk cache filled. Every mount is fresh, so the kernel page cache of the
   mount is always cold. Best of --repeat runs.
2. A bundle of 200,000 x scale small files (200 per thousand: 1,000 files per directory, built directly
   through the CAS API to keep the run short): time from starting `datamon bundle mount` to the first
   byte of a file (foreground process, and with --daemonize), and `find DIR -type f | wc -l` on a fresh
   mount (then again, with the kernel's caches warm).

Targets: mount/download >= 50% cold, >= 80% warm; first byte <= 1 s; find <= 10 s.
Needs /dev/fuse, fuse3 and root (or a user allowed to mount). Standard library + datamon.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
CLI = [sys.executable, "-m", "datamon.cli"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(*args: object, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise SystemExit(f"datamon {' '.join(map(str, args))} failed ({r.returncode}): {r.stderr}")
    return r


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cat(path: Path) -> None:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)


def drop_page_cache() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")


def unmount(mnt: Path) -> None:
    for flag in ("-u", "-uz"):
        if not os.path.ismount(mnt):
            return
        subprocess.run(["fusermount3", flag, str(mnt)], capture_output=True)
        time.sleep(0.05)


def wait_mounted(mnt: Path, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"mount process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{mnt} not mounted after {timeout}s")
        time.sleep(0.005)


# -- data ---------------------------------------------------------------------------------------
def write_big_file(path: Path, size: int) -> None:
    from blake3 import blake3

    row = b"%08d,2024-05-17,14:22:51,%08d.17,SKU-%04d,FR,paid,042\n"
    with open(path, "wb") as f:
        written, block = 0, 0
        while written < size:
            n = min(MiB, size - written)
            if block % 2 == 0:
                data = blake3(b"mount-bench-%d" % block).digest(length=n)
            else:
                base = block * 20000
                data = b"".join(
                    row % (base + i, (base + i) * 7 % 10**8, i % 9973) for i in range(n // 40 + 1)
                )
                data = data[:n]
            f.write(data)
            written += n
            block += 1


def build_files_bundle(  # type: ignore[no-untyped-def]
    ctx,
    repo: str,
    files: int,
    *,
    changed: frozenset[int] = frozenset(),
    parent: str | None = None,
    now: int | None = None,
    per_dir: int = 1000,
) -> str:
    """A bundle of ``files`` small files in directories of ``per_dir``, stored through the CAS API
    (what an upload does, minus reading files from disk); returns its id. Files whose number is in
    ``changed`` get other bytes. Every entry has the mtime ``now``, as an upload of a tree whose
    other files were not touched records: unchanged directories keep their tree key."""
    from datamon.api.bundles import make_bundle
    from datamon.cas.hashing import key_of
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

    now = time.time_ns() if now is None else now
    dirs: list[TreeEntry] = []
    total = 0
    with ctx.cas.writing() as ing:
        for d in range(-(-files // per_dir)):
            ids = range(d * per_dir, min(files, (d + 1) * per_dir))
            names = [f"sample-{i:07d}.txt" for i in ids]
            datas = [
                b"sample %d of the many-files bundle%s\n" % (i, b" (changed)" if i in changed else b"")
                for i in ids
            ]
            results = ing.ingest_buffers(datas)
            entries = [
                TreeEntry(n, EntryKind.FILE, 0o644, now, r.size, r.key)
                for n, r in zip(names, results, strict=True)
            ]
            raw = encode_tree(entries)
            key = key_of(raw)
            ing.store_objects([(key, raw, Kind.TREE)])
            size = sum(r.size for r in results)
            dirs.append(TreeEntry(f"part-{d:04d}", EntryKind.DIR, 0o755, now, size, key))
            total += size
        raw = encode_tree(dirs)
        root = key_of(raw)
        ing.store_objects([(root, raw, Kind.TREE)])
    who = ctx.contributor
    b = make_bundle(
        repo=repo,
        tree=root.hex(),
        parents=[parent] if parent else [],
        message=f"{files} small files, {len(changed)} changed",
        contributor_name=who.name,
        contributor_email=who.email,
        time_ns=now,
        file_count=files,
        total_size=total,
    )
    ctx.meta.add_bundle(b)
    return b.id


def build_many_files_bundle(home: Path, repo: str, files: int, per_dir: int = 1000) -> tuple[str, str]:
    """A new repo with one bundle of ``files`` small files. Returns (bundle id, a deep file's path)."""
    os.environ["DATAMON_HOME"] = str(home)
    import datamon

    with datamon.connect() as ctx:
        ctx.create_repo(repo)
        bid = build_files_bundle(ctx, repo, files, per_dir=per_dir)
    last = -(-files // per_dir) - 1
    return bid, f"part-{last:04d}/sample-{files - 1:07d}.txt"


# -- measurements -------------------------------------------------------------------------------
def bench_big(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, float]:
    size = int(GiB * args.scale)
    src = work / "big-src"
    src.mkdir()
    log(f"writing a {size / MiB:.0f} MiB file")
    write_big_file(src / "big.bin", size)
    run("repo", "create", "--repo", "big", env=env)
    t_up = timed(lambda: run("bundle", "upload", "--repo", "big", "--path", src, "--message", "big", env=env))
    log(f"uploaded in {t_up:.1f}s")
    shutil.rmtree(src)
    chunks = Path(env["DATAMON_HOME"]) / "cache" / "chunks"
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    cache = str(2 * size + GiB)  # room for the whole file: warm means every chunk is cached
    res: dict[str, float] = {"size": size, "upload_s": t_up}

    def download(dest: Path) -> float:
        # through the Python API: `datamon bundle download` minus the interpreter's start-up,
        # which the mount reads do not pay either (they start timing once mounted)
        import datamon

        shutil.rmtree(dest, ignore_errors=True)
        os.environ["DATAMON_HOME"] = env["DATAMON_HOME"]
        with datamon.connect() as ctx:
            return timed(lambda: ctx.download("big", dest))

    def mount_read() -> float:
        run("bundle", "mount", "--repo", "big", "--mount", mnt, "--cache-size", cache, "--daemonize", env=env)
        try:
            return timed(lambda: cat(mnt / "big.bin"))
        finally:
            unmount(mnt)

    def best(fn, cold: bool) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(args.repeat):
            if cold:
                shutil.rmtree(chunks, ignore_errors=True)
                if args.drop_caches:
                    drop_page_cache()
            times.append(fn())
        return min(times)

    dest = work / "download"
    res["download_cold_s"] = best(lambda: download(dest), cold=True)
    res["mount_cold_s"] = best(mount_read, cold=True)
    # the last cold mount read left the chunk cache full: everything below is warm
    res["mount_warm_s"] = best(mount_read, cold=False)
    res["download_warm_s"] = best(lambda: download(dest), cold=False)
    if args.drop_caches:
        drop_page_cache()
    res["disk_read_s"] = min(timed(lambda: cat(dest / "big.bin")) for _ in range(args.repeat))
    shutil.rmtree(dest)
    return res


def bench_many(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, float]:
    files = max(1000, int(200_000 * args.scale))
    log(f"building a bundle of {files} files")
    t0 = time.perf_counter()
    _, deep = build_many_files_bundle(Path(env["DATAMON_HOME"]), "many", files)
    t_build = time.perf_counter() - t0
    log(f"built in {t_build:.1f}s")
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    res: dict[str, float] = {"files": files, "build_s": t_build}

    def first_byte_foreground() -> float:
        t = time.perf_counter()
        proc = subprocess.Popen(
            [*CLI, "bundle", "mount", "--repo", "many", "--mount", str(mnt)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_mounted(mnt, proc)
            with open(mnt / deep, "rb") as f:
                assert f.read(1)
            return time.perf_counter() - t
        finally:
            unmount(mnt)
            proc.wait()

    def first_byte_daemonized() -> float:
        t = time.perf_counter()
        run("bundle", "mount", "--repo", "many", "--mount", mnt, "--daemonize", env=env)
        try:
            with open(mnt / deep, "rb") as f:
                assert f.read(1)
            return time.perf_counter() - t
        finally:
            unmount(mnt)

    res["first_byte_s"] = min(first_byte_foreground() for _ in range(args.repeat))
    res["first_byte_daemonized_s"] = min(first_byte_daemonized() for _ in range(args.repeat))

    def find_count() -> tuple[float, float]:
        run("bundle", "mount", "--repo", "many", "--mount", mnt, "--daemonize", env=env)
        try:
            cmd = f"find '{mnt}' -type f | wc -l"
            t = time.perf_counter()
            out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
            cold = time.perf_counter() - t
            assert int(out) == files, out
            again = timed(lambda: subprocess.run(["sh", "-c", cmd], capture_output=True, check=True))
            return cold, again
        finally:
            unmount(mnt)

    runs = [find_count() for _ in range(args.repeat)]
    res["find_s"] = min(c for c, _ in runs)
    res["find_again_s"] = min(a for _, a in runs)
    return res


def report(big: dict[str, float], many: dict[str, float]) -> str:
    size = big["size"]

    def mbps(seconds: float) -> str:
        return f"{size / MiB / seconds:7.0f} MiB/s"

    cold = big["download_cold_s"] / big["mount_cold_s"]
    warm = big["download_warm_s"] / big["mount_warm_s"]
    rows = [
        ("`bundle download`, cold chunk cache", "download_cold_s"),
        ("`cat` through the mount, cold chunk cache", "mount_cold_s"),
        ("`bundle download`, warm chunk cache", "download_warm_s"),
        ("`cat` through the mount, warm chunk cache", "mount_warm_s"),
        ("`cat` of the downloaded copy", "disk_read_s"),
    ]
    lines = [
        f"## {size / MiB:.0f} MiB file, sequential read (best of runs)",
        "| how | seconds | throughput |",
        "|---|---:|---:|",
        *(f"| {what} | {big[k]:.2f} | {mbps(big[k])} |" for what, k in rows),
        "",
        f"mount / download: cold {cold:.0%} (target >= 50%), warm {warm:.0%} (target >= 80%)",
        "",
        f"## bundle of {many['files']:,} files ({many['files'] // 1000} directories of 1,000)",
        "| what | seconds | target |",
        "|---|---:|---:|",
        f"| start `bundle mount` → first byte of a file | {many['first_byte_s']:.2f} | ≤ 1 |",
        f"| same with `--daemonize` | {many['first_byte_daemonized_s']:.2f} | |",
        f"| `find DIR -type f \\| wc -l`, fresh mount | {many['find_s']:.2f} | ≤ 10 |",
        f"| the same again (kernel caches warm) | {many['find_again_s']:.2f} | |",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="size factor (1: 1 GiB file, 200,000 files)")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is reported)")
    p.add_argument("--workdir", type=Path, help="where to put stores and data (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--drop-caches", action="store_true", help="drop the kernel page cache for cold runs")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args()
    if not os.path.exists("/dev/fuse"):
        raise SystemExit("/dev/fuse is absent: cannot mount")
    work = Path(tempfile.mkdtemp(prefix="datamon-mount-bench-", dir=args.workdir))
    env = {**os.environ, "DATAMON_HOME": str(work / "home")}
    for var in ("DATAMON_BLOB_URL", "DATAMON_META_URL", "DATAMON_CONTEXT"):
        env.pop(var, None)
    t0 = time.perf_counter()
    try:
        big = bench_big(args, work, env)
        many = bench_many(args, work, env)
    finally:
        unmount(work / "mnt")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(big, many))
    print(f"\n(scale {args.scale}, {args.repeat} runs each, {time.perf_counter() - t0:.0f}s in all)")
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "big": big, "many": many}, indent=1))


if __name__ == "__main__":
    main()
