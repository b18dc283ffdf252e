#!/usr/bin/env python3
"""``datamon://`` benchmarks (issue 13): one command, one table.

    python benchmarks/pin_bench.py [--scale 1.0] [--repeat 3] [--workdir DIR] [--keep]

1. A Parquet file of 1 GiB x scale (8 float64 columns, 4 row groups, no compression) is uploaded;
   one column (1/8 of the file) is read with ``pyarrow.parquet.read_table(columns=[...])``:
   * local: from a ``datamon bundle download`` of the file (page cache warm);
   * datamon:// cold: a fresh context, empty chunk cache, no remembered proof — the footer is in
     the last chunk, so the whole file is fetched and hashed once (the trust rule);
   * datamon:// proven: a fresh context and an empty chunk cache, the proof remembered from the
     cold run (a later process on the same machine): only the column's chunks move;
   * datamon:// warm: the same filesystem instance again (chunks in the local cache).
   Bytes read from the blob store are counted for each.
2. ``pd.read_csv`` of one file of a 200,000 x scale file bundle (built with mount_bench's builder):
   time from a fresh filesystem instance and context to the parsed frame. Target <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
sys.path.insert(0, str(Path(__file__).resolve().parent))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Counter:
    bytes = 0
    calls = 0


def count_reads() -> type[Counter]:
    from datamon.cas import blobstore

    real = blobstore.FsspecBlobStore.get

    def get(self, name, start=None, end=None):  # type: ignore[no-untyped-def]
        data = real(self, name, start, end)
        Counter.calls += 1
        Counter.bytes += len(data)
        return data

    blobstore.FsspecBlobStore.get = get  # type: ignore[method-assign]
    return Counter


def write_parquet(path: Path, size: int) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = size // (8 * 8)
    groups = 4
    rng = np.random.default_rng(1)
    schema = pa.schema([(f"c{i}", pa.float64()) for i in range(8)])
    with pq.ParquetWriter(path, schema, compression="none") as w:
        for _ in range(groups):
            n = rows // groups
            w.write_table(pa.table({f"c{i}": rng.random(n) for i in range(8)}, schema=schema))
    return path.stat().st_size


def best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def parquet_bench(work: Path, scale: float, repeat: int, counter: type[Counter]) -> list[tuple[str, str]]:
    import fsspec
    import pyarrow.parquet as pq

    import datamon
    from datamon.api.context import Context

    src = work / "src"
    src.mkdir()
    size = write_parquet(src / "t.parquet", int(GiB * scale))
    log(f"parquet file: {size / MiB:.0f} MiB")
    with datamon.connect() as ctx:
        ctx.create_repo("pq")
        t0 = time.perf_counter()
        ctx.upload("pq", src, "parquet", label="prod")
        log(f"upload: {time.perf_counter() - t0:.1f}s")
        ctx.download("pq", work / "local", label="prod")
        home = Path(os.environ["DATAMON_HOME"])
        blob_url, meta_url = ctx.blob_url, ctx.meta_url
    shutil.rmtree(src)
    local = work / "local" / "t.parquet"
    col = ["c3"]
    t_local = best(lambda: pq.read_table(local, columns=col), repeat)

    def fresh(cache: str) -> tuple[object, Context]:
        shutil.rmtree(home / cache, ignore_errors=True)
        c = Context(blob_url, meta_url, cache_dir=home / cache, state_dir=home / "cache")
        return fsspec.filesystem("datamon", context=c, skip_instance_cache=True), c

    shutil.rmtree(home / "cache" / "proofs.db", ignore_errors=True)
    for p in (home / "cache").glob("proofs.db*"):
        p.unlink()
    fs, c = fresh("bench-cold")
    counter.bytes = 0
    t0 = time.perf_counter()
    pq.read_table("pq@prod/t.parquet", columns=col, filesystem=fs)
    t_cold, b_cold = time.perf_counter() - t0, counter.bytes
    c.close()

    proven_t, proven_b = [], []
    for _ in range(repeat):
        fs, c = fresh("bench-proven")
        counter.bytes = 0
        t0 = time.perf_counter()
        pq.read_table("pq@prod/t.parquet", columns=col, filesystem=fs)
        proven_t.append(time.perf_counter() - t0)
        proven_b.append(counter.bytes)
        if _ < repeat - 1:
            c.close()
    counter.bytes = 0
    t_warm = best(lambda: pq.read_table("pq@prod/t.parquet", columns=col, filesystem=fs), repeat)
    b_warm = counter.bytes // repeat
    c.close()
    i = proven_t.index(min(proven_t))
    mb = size / MiB

    def row(t: float, b: int) -> str:
        share = f"{100 * b / size:.0f}% of the file"
        return f"{t:.2f} s, {b / MiB:.0f} MiB fetched ({share}), {t_local / t:.0%} of local"

    return [
        (f"local file ({mb:.0f} MiB), one of 8 columns", f"{t_local:.2f} s"),
        ("datamon:// cold (no proof yet: whole file hashed)", row(t_cold, b_cold)),
        ("datamon:// proven, empty chunk cache", row(proven_t[i], proven_b[i])),
        ("datamon:// warm (same instance, chunk cache)", row(t_warm, b_warm)),
    ]


def csv_bench(work: Path, scale: float, repeat: int) -> list[tuple[str, str]]:
    import fsspec
    import pandas as pd
    from mount_bench import build_files_bundle

    import datamon
    from datamon.api.context import Context

    files = int(200_000 * scale)
    with datamon.connect() as ctx:
        ctx.create_repo("many")
        t0 = time.perf_counter()
        bid = build_files_bundle(ctx, "many", files)
        log(f"built {files} files in {time.perf_counter() - t0:.1f}s")
        blob_url, meta_url, state = ctx.blob_url, ctx.meta_url, ctx.state_dir
    last = -(-files // 1000) - 1
    url = f"many@{bid[:12]}/part-{last:04d}/sample-{files - 1:07d}.txt"
    times = []
    for _ in range(repeat):
        c = Context(blob_url, meta_url, cache_dir=work / "csv-cache", state_dir=state)
        t0 = time.perf_counter()
        fs = fsspec.filesystem("datamon", context=c, skip_instance_cache=True)
        with fs.open(url) as f:
            df = pd.read_csv(f, header=None)
        times.append(time.perf_counter() - t0)
        assert len(df) == 1
        c.close()
    return [
        (
            f"`pd.read_csv` first byte+parse, {files:,}-file bundle, fresh context",
            f"{statistics.median(times):.3f} s median of {repeat} (min {min(times):.3f} s); target ≤ 1 s",
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pin-bench-", dir=args.workdir))
    os.environ["DATAMON_HOME"] = str(work / "home")
    counter = count_reads()
    try:
        rows = parquet_bench(work, args.scale, args.repeat, counter)
        rows += csv_bench(work, args.scale, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("| what | result |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")


if __name__ == "__main__":
    main()
