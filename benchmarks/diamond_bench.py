"""Diamond benchmarks (issue 14): what a commit costs next to an upload.

A. ``--files N`` small files (and ``--big`` 8 MiB files): one ``upload`` of the whole tree versus
   ``--splits`` split processes in parallel and the commit that merges them, for two layouts:
   ``contiguous`` (``datamon.distributed.partition``: runs of the sorted listing of equal bytes)
   and ``interleaved`` (file ``i`` to split ``i mod k``: every directory in every split, the
   merge's worst case). Target: the commit costs at most 10% of the single upload.
B. ``--commit-files M`` (default 1,000,000) files from 8 splits, interleaved over 1,000
   directories: the commit alone (reading 8 × 1,001 trees, merging, writing 1,001 trees, the
   transaction). The split trees are built directly (file keys of fake contents; a commit reads
   trees, never file contents). Target: at most 30 s.

    python benchmarks/diamond_bench.py                  # A with 20,000 files, B with 1,000,000
    python benchmarks/diamond_bench.py --files 2000 --commit-files 50000   # quick
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamon.api import diamond as dia
from datamon.api.context import Context
from datamon.config import Contributor

WHO = Contributor("bench", "bench@example.com")


def ctx_at(root: Path) -> Context:
    return Context(f"file://{root / 'blobs'}", f"sqlite:///{root / 'meta.db'}", contributor=WHO)


def make_tree(root: Path, n: int, big: int) -> list[str]:
    rnd = random.Random(1)
    rels = []
    for i in range(n):
        rel = f"d{i % 50:02d}/s{i % 7}/f{i:06d}.bin"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(rnd.randint(200, 8000)))
        rels.append(rel)
    for i in range(big):
        rel = f"big/{i}.bin"
        (root / "big").mkdir(exist_ok=True)
        (root / rel).write_bytes(rnd.randbytes(8 << 20))
        rels.append(rel)
    return sorted(rels)


def _split_worker(store: str, diamond: str, src: str, part: list[str], split: str) -> None:
    with ctx_at(Path(store)) as ctx:
        dia.add_split(ctx, "r", diamond, src, split=split, files=part, concurrency=1)


def bench_a(work: Path, n: int, big: int, k: int) -> dict[str, object]:
    from datamon.distributed import Item, partition

    src = work / "src"
    rels = make_tree(src, n, big)
    one = work / "one"
    with ctx_at(one) as ctx:
        ctx.create_repo("r")
        t = time.perf_counter()
        ctx.upload("r", src, message="single")
        upload_s = time.perf_counter() - t
        single_tree = ctx.meta.latest_bundle("r").tree  # type: ignore[union-attr]
    layouts = {
        # what datamon.distributed does: contiguous runs of the sorted listing, equal bytes
        "contiguous": [
            [i.rel for i in p] for p in partition([Item(r, (src / r).stat().st_size) for r in rels], k)
        ],
        # the worst case for the merge: every directory in every split
        "interleaved": [rels[i::k] for i in range(k)],
    }
    out: dict[str, object] = {"files": len(rels), "upload_s": round(upload_s, 2), "splits": k}
    for name, parts in layouts.items():
        many = work / f"many-{name}"
        with ctx_at(many) as ctx:
            ctx.create_repo("r")
            d = dia.initialize(ctx, "r")
            mp = multiprocessing.get_context("spawn")
            t = time.perf_counter()
            procs = [
                mp.Process(target=_split_worker, args=(str(many), d.id, str(src), part, f"s{i}"))
                for i, part in enumerate(parts)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            splits_s = time.perf_counter() - t
        with ctx_at(many) as ctx:  # as a commit job would: a fresh process, nothing cached
            t = time.perf_counter()
            r = dia.commit(ctx, "r", d.id, message="diamond")
            commit_s = time.perf_counter() - t
        out[name] = {
            "splits_wall_s": round(splits_s, 2),
            "commit_s": round(commit_s, 3),
            "merge_s": round(r.merge_seconds, 3),
            "trees_read": r.trees_read,
            "commit_vs_upload": round(commit_s / upload_s, 4),
            "same_tree": r.bundle.tree == single_tree,
        }
    return out


def bench_b(work: Path, m: int, k: int = 8, dirs: int = 1000) -> dict[str, float]:
    from datamon.cas.hashing import key_of
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

    root = work / "b"
    with ctx_at(root) as ctx:
        ctx.create_repo("r")
        d = dia.initialize(ctx, "r")
        t = time.perf_counter()
        per_dir = m // dirs
        for s in range(k):
            objects = []
            top = []
            files = 0
            for j in range(dirs):
                entries = [
                    TreeEntry(
                        f"f{i:07d}",
                        EntryKind.FILE,
                        0o644,
                        1_700_000_000 * 10**9,
                        100,
                        key_of(b"%d/%d" % (j, i)),
                    )
                    for i in range(s, per_dir, k)
                ]
                files += len(entries)
                raw = encode_tree(entries)
                objects.append((key_of(raw), raw, Kind.TREE))
                top.append(TreeEntry(f"d{j:04d}", EntryKind.DIR, 0o755, 1, 100 * len(entries), key_of(raw)))
            raw = encode_tree(top)
            objects.append((key_of(raw), raw, Kind.TREE))
            with ctx.cas.writing() as ing:
                ing.store_objects(objects)
            ctx.meta.start_split("r", d.id, f"s{s}", generation=f"g{s}", now_ns=s)
            ctx.meta.finish_split(
                "r", d.id, f"s{s}", generation=f"g{s}", tree=key_of(raw).hex(), file_count=files,
                total_size=100 * files, now_ns=s,
            )  # fmt: skip
        build_s = time.perf_counter() - t
    with ctx_at(root) as ctx:  # a fresh process-like start: no tree cached
        t = time.perf_counter()
        r = dia.commit(ctx, "r", d.id, message="1M")
        commit_s = time.perf_counter() - t
    return {
        "files": r.bundle.file_count,
        "splits": k,
        "trees_read": r.trees_read,
        "trees_written": r.trees_written,
        "build_s": round(build_s, 2),
        "commit_s": round(commit_s, 2),
        "merge_s": round(r.merge_seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--big", type=int, default=4)
    ap.add_argument("--splits", type=int, default=4)
    ap.add_argument("--commit-files", type=int, default=1_000_000)
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="datamon-diamond-bench-"))
    out: dict[str, object] = {"cpus": os.cpu_count()}
    try:
        if not args.skip_a:
            out["upload_vs_splits"] = bench_a(work, args.files, args.big, args.splits)
            print(json.dumps(out["upload_vs_splits"]), flush=True)
        if not args.skip_b:
            out["commit"] = bench_b(work, args.commit_files)
            print(json.dumps(out["commit"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
