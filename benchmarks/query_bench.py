#!/usr/bin/env python3
"""Queries over a large bundle with file attributes (issue 11's scale targets): one command, one table.

    python benchmarks/query_bench.py [--files 1000000] [--tree PATH] [--engines sqlite,postgresql]
                                     [--changes 10] [--workdir DIR] [--keep]

A tree of N small files (default 1,000,000, 1,000 per directory; `--tree` reuses an existing tree of
that shape, it is never modified) gets five attribute columns per file — `label` (cat/dog/bird/fish),
`width` (int, 0..533, so `width > 512` holds for ~4%), `score` (float), `reviewed` (bool), `source`
(string) — in a JSON Lines file, under a repo schema. On each engine (SQLite embedded; PostgreSQL
started on 127.0.0.1 with the test suite's helper), whole-process seconds of:

1. `bundle upload` without attributes, then (fresh store) with them: the cost of attributes;
2. `datamon query` of a selective filter (~1% of rows; target <= 1 s) and of a `GROUP BY label`
   count over all rows (target <= 3 s), each after a first query has indexed nothing new;
3. `bundle slice` of ~100,000 files (`width < 53`; target <= 10 s) — and the object count before
   and after (target: 0 new objects besides the slice's own trees and attributes object);
4. `--changes` bundles (default 10) that each change 10 files and their attribute rows: growth of
   the metadata database (SQLite: file size; PostgreSQL: pg_database_size), target <= 5 MiB total.

Best of one run (each step is minutes at 1M files on 2 cores); the table says the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "datamon"]
SCHEMA = {
    "attributes": {
        "label": {"type": "string", "values": ["cat", "dog", "bird", "fish"]},
        "width": {"type": "int"},
        "score": {"type": "float"},
        "reviewed": {"type": "bool"},
        "source": {"type": "string"},
    }
}


def log(msg: str) -> None:
    print(f"[query] {msg}", file=sys.stderr, flush=True)


def make_tree(root: Path, n: int) -> None:
    rng = random.Random(7)
    for d in range((n + 999) // 1000):
        sub = root / f"d{d:05d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(min(1000, n - d * 1000)):
            (sub / f"f{i:04d}.bin").write_bytes(rng.randbytes(rng.randint(16, 1024)))


def paths_of(root: Path) -> list[str]:
    out = []
    for d in sorted(os.listdir(root)):
        for f in sorted(os.listdir(root / d)):
            out.append(f"{d}/{f}")
    return out


def write_attrs(path: Path, rel: list[str], seed: int) -> None:
    rng = random.Random(seed)
    labels = ["cat", "dog", "bird", "fish"]
    with path.open("w") as out:
        for p in rel:
            row = {
                "path": p,
                "label": labels[rng.randrange(4)],
                "width": rng.randrange(534),
                "score": round(rng.random(), 4),
                "reviewed": rng.random() < 0.5,
                "source": f"cam-{rng.randrange(20)}",
            }
            out.write(json.dumps(row) + "\n")


class Engine:
    def __init__(self, name: str, work: Path) -> None:
        self.name = name
        self.work = work
        self.server = None
        self.url: str | None = None

    def start(self) -> None:
        if self.name == "postgresql":  # the test suite's server: initdb + pg_ctl on 127.0.0.1
            sys.path.insert(0, str(REPO_ROOT))
            from tests import servers

            self.server = servers.postgres_server.__wrapped__()  # type: ignore[attr-defined]
            self.url = next(self.server)  # type: ignore[call-overload]

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()  # runs the generator's finally: stops the server, removes its files

    def _sql(self, statement: str, db: str = "postgres") -> object:
        import psycopg

        base = str(self.url).replace("postgresql+psycopg://", "postgresql://", 1).rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/{db}", autocommit=True) as conn:
            cur = conn.execute(statement)
            row = cur.fetchone() if cur.description else None
        return row[0] if row else None

    def home(self, tag: str) -> dict[str, str]:
        """An environment with a fresh store (its own home, blob dir and database)."""
        home = self.work / f"home-{tag}"
        shutil.rmtree(home, ignore_errors=True)
        env = {**os.environ, "DATAMON_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
        env.pop("DATAMON_CONTEXT", None)
        if self.url is not None:
            db = f"bench_{tag}_{os.getpid()}"
            self._sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            self._sql(f'CREATE DATABASE "{db}"')
            env["DATAMON_META_URL"] = str(self.url).rsplit("/", 1)[0] + "/" + db
            env["DATAMON_BLOB_URL"] = f"file://{home}/blobs"
            env["BENCH_DB"] = db
        return env

    def db_bytes(self, env: dict[str, str]) -> int:
        if self.url is None:
            return sum(p.stat().st_size for p in Path(env["DATAMON_HOME"]).glob("meta.db*"))
        return int(self._sql(f"SELECT pg_database_size('{env['BENCH_DB']}')"))  # type: ignore[call-overload]


def run(args: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    p = subprocess.run(args, env=env, capture_output=True, text=True, input=stdin)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(args)[:300]}\n{p.stderr[-2000:]}")
    return p.stdout


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = run(args, env)
    return time.perf_counter() - t0, out


def object_count(env: dict[str, str]) -> int:
    code = "from datamon.api.context import connect\nwith connect() as c: print(c.meta.count_objects())\n"
    return int(run([sys.executable, "-c", code], env).strip())


def warm(tree: Path, rel: list[str], attrs: Path) -> None:
    """Read the tree and the attributes file once, so that neither timed upload pays for a cold
    page cache (the first upload of a run used to: a plain upload 32 s instead of 21 s)."""
    for p in rel:
        (tree / p).read_bytes()
    attrs.read_bytes()


def bench_engine(eng: Engine, tree: Path, rel: list[str], attrs: Path, schema: Path, changes: int) -> dict:
    r: dict[str, object] = {"engine": eng.name}
    warm(tree, rel, attrs)
    log(f"{eng.name}: upload without attributes")
    env0 = eng.home("plain")
    run([*CLI, "repo", "create", "--repo", "q"], env0)
    r["upload_plain_s"], _ = timed(
        [*CLI, "bundle", "upload", "--repo", "q", "--path", str(tree), "--message", "m"], env0
    )
    log(f"{eng.name}: upload with attributes")
    env = eng.home("attrs")
    run([*CLI, "repo", "create", "--repo", "q"], env)
    run([*CLI, "repo", "schema", "set", "--repo", "q", "--file", str(schema)], env)
    r["upload_attrs_s"], _ = timed(
        [*CLI, "bundle", "upload", "--repo", "q", "--path", str(tree), "--message", "m", "--label", "v0",
         "--attributes", str(attrs)], env)  # fmt: skip
    selective = "SELECT path FROM files WHERE repo = 'q' AND label = 'cat' AND width > 512"
    run([*CLI, "query", "--format", "{path}", selective], env)  # warm: indexes nothing new
    r["query_selective_s"], out = timed([*CLI, "query", "--format", "{path}", selective], env)
    r["query_selective_rows"] = len(out.splitlines())
    group = "SELECT label, count(*) AS n FROM files WHERE repo = 'q' GROUP BY label ORDER BY label"
    r["query_group_s"], out = timed([*CLI, "query", "--json", group], env)
    r["query_group_rows"] = sum(json.loads(x)["n"] for x in out.splitlines())
    before = object_count(env)
    r["slice_s"], _ = timed(
        [*CLI, "bundle", "slice", "--repo", "q", "--label", "v0", "--where", "width < 53", "--message", "s",
         "--set-label", "small"], env)  # fmt: skip
    r["slice_new_objects"] = object_count(env) - before
    r["slice_files"] = int(
        run([*CLI, "bundle", "get", "--repo", "q", "--label", "small", "--format", "{files}"], env)
    )
    log(f"{eng.name}: {changes} bundles of 10 changed files")
    work = eng.work / "edit"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(tree, work, symlinks=True)
    size0 = eng.db_bytes(env)
    rng = random.Random(99)
    # Each edit names its parent: the latest bundle of the repo is now the slice, and carry-over
    # keeps the rows of the first parent only (docs/query.md), so an edit parented on the slice
    # would drop the attributes of the 900,000 files outside it and index a different dataset.
    parent = run([*CLI, "bundle", "get", "--repo", "q", "--label", "v0", "--format", "{id}"], env).strip()
    for k in range(changes):
        picked = rng.sample(rel, 10)
        rows = []
        for p in picked:
            (work / p).write_bytes(rng.randbytes(100))
            rows.append(json.dumps({"path": p, "label": "fish", "width": 1, "score": 0.5, "reviewed": True,
                                    "source": f"edit-{k}"}))  # fmt: skip
        a = eng.work / f"edit-{k}.jsonl"
        a.write_text("\n".join(rows) + "\n")
        parent = run(
            [*CLI, "bundle", "upload", "--repo", "q", "--path", str(work), "--message", f"e{k}",
             "--parent", parent, "--attributes", str(a)],
            env,
        ).strip()  # fmt: skip
    run([*CLI, "query", "--format", "{n}", "SELECT count(*) AS n FROM bundles"], env)
    r["db_growth_mib"] = round((eng.db_bytes(env) - size0) / (1 << 20), 2)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--tree", type=Path, help="reuse a tree of N files in N/1000 directories (read-only)")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dm-query-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = args.tree
    if tree is None:
        tree = work / f"tree-{args.files}"
        if not tree.exists():
            log(f"generating {args.files} files")
            make_tree(tree, args.files)
    rel = paths_of(tree)
    attrs, schema = work / "attrs.jsonl", work / "schema.json"
    write_attrs(attrs, rel, seed=1)
    schema.write_text(json.dumps(SCHEMA))
    results = []
    try:
        for name in args.engines.split(","):
            eng = Engine(name, work / name)
            eng.work.mkdir(parents=True, exist_ok=True)
            eng.start()
            try:
                results.append(bench_engine(eng, tree, rel, attrs, schema, args.changes))
                log(f"{name}: {json.dumps(results[-1])}")  # kept if a later engine fails
            finally:
                eng.stop()
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print(
        f"\nquery benchmark, {len(rel)} files, {time.strftime('%Y-%m-%d %H:%M')}, load average {load:.1f}\n"
    )
    print(
        "| engine | upload s (no attrs) | upload s (attrs) | attrs cost | selective query s (rows) "
        "| GROUP BY s | slice s (files, new objects) | DB growth, 10-file changes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        cost = r["upload_attrs_s"] / r["upload_plain_s"] - 1
        print(
            f"| {r['engine']} | {r['upload_plain_s']:.1f} | {r['upload_attrs_s']:.1f} | {cost:+.0%} | "
            f"{r['query_selective_s']:.2f} ({r['query_selective_rows']}) | {r['query_group_s']:.2f} | "
            f"{r['slice_s']:.1f} ({r['slice_files']}, {r['slice_new_objects']}) | {r['db_growth_mib']} MiB |"
        )
    print(
        "\ntargets: attrs cost <= +30%, selective <= 1 s, GROUP BY <= 3 s, slice of 100k <= 10 s "
        "with 0 new chunks, growth <= 5 MiB"
    )


if __name__ == "__main__":
    main()
