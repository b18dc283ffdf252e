#!/usr/bin/env python3
"""Millions of entries without creating a file (issue 15): per-entry costs, measured, then scaled.

    python benchmarks/synthetic_bench.py [--sizes 100000,1000000] [--pieces tree,bundle,index,statcache]
                                         [--no-postgres] [--workdir DIR] [--json FILE]

Every piece runs in a fresh process (this script with ``_piece``), so its peak RSS (``wait4``) is
its own. At each size N (files, 1,000 per directory, names like ``dNNNNN/fNNNN.bin``):

- ``tree``: build N ``TreeEntry`` objects, ``encode_tree`` them as N/1000 directory trees and a root,
  hash every tree (``key_of``), zstd-3 them (what a pack stores), ``decode_tree`` them back.
  Per entry: µs of each step, encoded and compressed bytes, RSS of holding the N entries.
- ``bundle``: a store (SQLite + local blobs) holding three synthetic bundles whose file entries
  carry random keys (no file object is stored: listing and diffing read only trees): A, B = A with
  10 files changed, C = A with every mtime changed (so every directory tree differs). Then, each a
  fresh ``python -m datamon.cli`` process: ``bundle list files`` of B (whole; first line),
  ``bundle diff A..B`` (10 lines) and ``bundle diff A..C`` (walks every entry, prints nothing).
- ``index``: the object index (``MetadataStore.add_pack`` / ``lookup_objects``) on SQLite and on
  PostgreSQL (a throw-away server on 127.0.0.1, as tests/servers.py starts it; skipped when the
  binaries are missing or with ``--no-postgres``): N rows inserted as packs of 65,536 objects
  (what 32 MiB packs of ~500-byte files hold), N present and N absent keys looked up in batches of
  2,000 (the ingester's batch), then the database size per row.
- ``statcache``: ``StatCache.store`` of N rows and ``lookup_under`` of all of them (a re-upload's
  stat-cache read), file size per row.

Prints one table of per-entry costs and the same scaled linearly to 10M and 100M entries; the
paper estimate built on it is in benchmarks/README.md. Default sizes take about 3–5 minutes on
2 cores (PostgreSQL inserts are the slowest piece).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
MiB = 1 << 20
PER_DIR = 1000
PACK_OBJECTS = 65_536
LOOKUP_BATCH = 2000


def log(msg: str) -> None:
    print(f"[synthetic] {msg}", file=sys.stderr, flush=True)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    return 0.0


def keys(n: int, seed: int) -> list[bytes]:
    """n random 32-byte keys (BLAKE3-like: uniformly spread)."""
    blob = random.Random(seed).randbytes(32 * n)
    return [blob[i : i + 32] for i in range(0, 32 * n, 32)]


# -- pieces (each runs in its own process) ---------------------------------------------------------
def dir_entries(
    d: int, n: int, ks: list[bytes], mtime: int, changed: frozenset[int] = frozenset()
) -> list[Any]:
    from datamon.cas.tree import EntryKind, TreeEntry

    out = []
    for i in range(d * PER_DIR, min(n, (d + 1) * PER_DIR)):
        key = ks[i] if i not in changed else bytes(31) + b"\x01"
        out.append(TreeEntry(f"f{i % PER_DIR:04d}.bin", EntryKind.FILE, 0o644, mtime, 16 + i % 1009, key))
    return out


class Watch:
    """Wall and CPU seconds of a stretch of this process; with ``server`` (a postmaster's pid) the CPU
    of that server and its backends counts too. CPU is what the per-entry costs use: on a busy
    machine wall time measures the neighbours."""

    def __init__(self, server: int | None = None) -> None:
        self.server = server
        self.wall = self.cpu = 0.0

    def _cpu(self) -> float:
        c = time.process_time()
        if self.server:
            c += server_cpu(self.server)
        return c

    def __enter__(self) -> Watch:
        self._w, self._c = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, self._cpu() - self._c


def server_cpu(pid: int) -> float:
    """CPU seconds of process ``pid``, of its reaped children and of its live children."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(p: int | str) -> list[str]:
        with open(f"/proc/{p}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    f = fields(pid)
    total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                c = fields(d)
                if int(c[1]) == pid:
                    total += int(c[11]) + int(c[12])
            except (OSError, ValueError, IndexError):
                pass
    return total / tick


def per(n: int, **watches: Watch) -> dict[str, float]:
    """``NAME_us`` (CPU µs per entry) and ``NAME_wall_us`` for each watch."""
    out = {}
    for k, w in watches.items():
        out[f"{k}_us"] = w.cpu / n * 1e6
        out[f"{k}_wall_us"] = w.wall / n * 1e6
    return out


def piece_tree(n: int, _work: Path) -> dict[str, Any]:
    import zstandard

    from datamon.cas.hashing import key_of
    from datamon.cas.tree import decode_tree, encode_tree

    ks = keys(n, 1)
    ndirs = -(-n // PER_DIR)
    now = time.time_ns()
    base = rss_mib()
    with Watch() as build:
        dirs = [dir_entries(d, n, ks, now) for d in range(ndirs)]
    held = rss_mib() - base
    with Watch() as enc:
        raws = [encode_tree(es) for es in dirs]
    del dirs
    with Watch() as hashing:
        tkeys = [key_of(r) for r in raws]
    comp = zstandard.ZstdCompressor(level=3)
    with Watch() as zs:
        csize = sum(len(comp.compress(r)) for r in raws)
    with Watch() as dec:
        count = sum(len(decode_tree(r)) for r in raws)
    assert count == n and len(tkeys) == ndirs
    return {
        **per(n, build=build, encode=enc, hash=hashing, zstd=zs, decode=dec),
        "encoded_bytes": sum(map(len, raws)) / n,
        "stored_bytes": csize / n,
        "held_bytes": held * MiB / n,
    }


def build_bundle_store(home: Path, n: int) -> dict[str, Any]:
    os.environ["DATAMON_HOME"] = str(home)
    import datamon
    from datamon.api.bundles import make_bundle
    from datamon.cas.hashing import key_of
    from datamon.cas.pack import Kind
    from datamon.cas.tree import EntryKind, TreeEntry, encode_tree

    ks = keys(n, 2)
    ndirs = -(-n // PER_DIR)
    step = max(1, n // 10)
    changed = frozenset(k * step + 7 for k in range(10))
    now = time.time_ns()
    ids: dict[str, Any] = {}
    w = Watch().__enter__()
    with datamon.connect() as ctx:
        ctx.create_repo("syn")
        parent: list[str] = []
        for name, ch, mtime in (("A", frozenset(), now), ("B", changed, now), ("C", frozenset(), now + 1)):
            with ctx.cas.writing() as ing:
                top = []
                for d in range(ndirs):
                    raw = encode_tree(dir_entries(d, n, ks, mtime, ch))
                    key = key_of(raw)
                    ing.store_objects([(key, raw, Kind.TREE)])
                    top.append(TreeEntry(f"d{d:05d}", EntryKind.DIR, 0o755, mtime, 0, key))
                raw = encode_tree(top)
                root = key_of(raw)
                ing.store_objects([(root, raw, Kind.TREE)])
            who = ctx.contributor
            b = make_bundle(
                repo="syn",
                tree=root.hex(),
                parents=parent,
                message=name,
                contributor_name=who.name,
                contributor_email=who.email,
                time_ns=now,
                file_count=n,
                total_size=0,
            )
            ctx.meta.add_bundle(b)
            ids[name] = b.id
    w.__exit__()
    ids["build_s"], ids["build_cpu_s"] = w.wall, w.cpu
    return ids


def piece_index(n: int, work: Path, url: str, server: int | None = None) -> dict[str, Any]:
    from datamon.meta.store import MetadataStore

    store = MetadataStore(url)
    ks = keys(n, 3)
    with Watch(server) as ins:
        for p in range(0, n, PACK_OBJECTS):
            chunk = ks[p : p + PACK_OBJECTS]
            entries = [(k, i * 600, 500, 520, 1, 1) for i, k in enumerate(chunk)]
            store.add_pack(f"{p:064x}", 600 * len(chunk), entries)
    random.Random(4).shuffle(ks)
    found = 0
    with Watch(server) as hit:
        for b in range(0, n, LOOKUP_BATCH):
            found += len(store.lookup_objects(ks[b : b + LOOKUP_BATCH]))
    assert found == n, found
    absent = keys(n, 5)
    with Watch(server) as miss:
        for b in range(0, n, LOOKUP_BATCH):
            found += len(store.lookup_objects(absent[b : b + LOOKUP_BATCH]))
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    else:
        from sqlalchemy import text

        with store._engine.connect() as conn:
            size = int(conn.execute(text("SELECT pg_total_relation_size('objects')")).scalar_one())
    store.close()
    return {**per(n, insert=ins, lookup_hit=hit, lookup_miss=miss), "db_bytes": size / n}


def piece_statcache(n: int, work: Path) -> dict[str, Any]:
    from datamon.api.statcache import StatCache

    d = work / "statcache"
    shutil.rmtree(d, ignore_errors=True)
    root = "/data/some/where/tree"
    ks = keys(n, 6)
    rows = [
        (
            f"{root}/d{i // PER_DIR:05d}/f{i % PER_DIR:04d}.bin",
            (16 + i % 1009, 10**18 + i, 10**18 + i, 10**7 + i),
            ks[i],
        )
        for i in range(n)
    ]
    sc = StatCache(d)
    with Watch() as store:
        for b in range(0, n, 10_000):
            sc.store(rows[b : b + 10_000])
    del rows
    sc.close()
    base = rss_mib()
    sc = StatCache(d)
    with Watch() as look:
        got = sc.lookup_under(root)
    held = rss_mib() - base
    assert len(got) == n
    sc.close()
    return {
        **per(n, store=store, lookup_under=look),
        "held_bytes": held * MiB / n,
        "db_bytes": sum(p.stat().st_size for p in d.glob("statcache.db*")) / n,
    }


# -- running pieces in fresh processes -------------------------------------------------------------
def run_piece(
    argv: list[str], env: dict[str, str] | None = None, *, first_line: bool = False
) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert p.stdout is not None and p.stderr is not None
    out = bytearray()
    res: dict[str, Any] = {}
    fd = p.stdout.fileno()
    lines = 0
    while True:
        block = os.read(fd, 1 << 16)
        if not block:
            break
        if first_line and "first_line_s" not in res and b"\n" in block:
            res["first_line_s"] = time.perf_counter() - t0
        lines += block.count(b"\n")
        if len(out) < 1 << 20:
            out += block
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    res["seconds"] = time.perf_counter() - t0
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    p.stderr.close()
    if p.returncode:
        raise SystemExit(f"`{' '.join(argv)}` exited {p.returncode}: {err.decode(errors='replace')[-2000:]}")
    res.update(rss_mib=ru.ru_maxrss / 1024, lines=lines, out=bytes(out).decode(errors="replace"))
    return res


def self_piece(name: str, n: int, work: Path, *extra: str) -> dict[str, Any]:
    r = run_piece([sys.executable, __file__, "_piece", name, str(n), str(work), *extra])
    res = json.loads(r["out"].strip().splitlines()[-1])
    res["rss_mib"] = r["rss_mib"]
    res["seconds"] = r["seconds"]
    return res


def bench_bundle(n: int, work: Path) -> dict[str, Any]:
    home = work / f"home-{n}"
    shutil.rmtree(home, ignore_errors=True)
    built = self_piece("bundle-build", n, work, str(home))
    env = {**os.environ, "DATAMON_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    for var in ("DATAMON_BLOB_URL", "DATAMON_META_URL", "DATAMON_CONTEXT"):
        env.pop(var, None)
    cli = [sys.executable, "-m", "datamon.cli"]
    a, b, c = built["A"], built["B"], built["C"]
    ls = run_piece([*cli, "bundle", "list", "files", "--repo", "syn", "--bundle", b], env, first_line=True)
    assert ls["lines"] == n, ls["lines"]
    d10 = run_piece([*cli, "bundle", "diff", "--repo", "syn", f"{a}..{b}"], env)
    assert d10["lines"] == 10, d10["out"][:500]
    dall = run_piece([*cli, "bundle", "diff", "--repo", "syn", f"{a}..{c}"], env)
    assert dall["lines"] == 0, dall["out"][:500]
    get = run_piece([*cli, "bundle", "get", "--repo", "syn", "--bundle", b], env)
    blobs = sum(p.stat().st_size for p in (home / "blobs").rglob("*") if p.is_file())
    shutil.rmtree(home, ignore_errors=True)
    return {
        "build_s": built["build_s"],
        "build_cpu_s": built["build_cpu_s"],
        "build_rss_mib": built["rss_mib"],
        "list_s": ls["seconds"],
        "list_cpu_s": ls["cpu_s"],
        "list_first_line_s": ls.get("first_line_s"),
        "list_rss_mib": ls["rss_mib"],
        "diff10_s": d10["seconds"],
        "diff10_cpu_s": d10["cpu_s"],
        "diff10_rss_mib": d10["rss_mib"],
        "diff_all_s": dall["seconds"],
        "diff_all_cpu_s": dall["cpu_s"],
        "diff_all_rss_mib": dall["rss_mib"],
        "get_s": get["seconds"],
        "get_cpu_s": get["cpu_s"],
        "tree_bytes_per_entry": blobs / 3 / n,  # three bundles' trees
    }


# -- PostgreSQL ------------------------------------------------------------------------------------
class Postgres:
    """A throw-away server on 127.0.0.1 (fsync off), as tests/servers.py starts one."""

    def __init__(self) -> None:
        import glob

        bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
        cand = [Path(b) for b in bindirs if os.access(os.path.join(b, "initdb"), os.X_OK)]
        if not cand and shutil.which("initdb"):
            cand = [Path(os.path.realpath(shutil.which("initdb") or "")).parent]
        if not cand:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bindir = cand[0]
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.tmp = Path(tempfile.mkdtemp(prefix="dm-synpg-"))
        if self.as_user:
            shutil.chown(self.tmp, "postgres", "postgres")
        os.chmod(self.tmp, 0o700)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        data = self.tmp / "data"
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            cwd=self.tmp,
        )
        opts = (
            f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp}"
        )
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(self.tmp / "log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            cwd=self.tmp,
        )
        self.data = data
        self.n = 0

    def pid(self) -> int:
        """The postmaster's pid (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def fresh_url(self) -> str:
        self.n += 1
        name = f"syn{self.n}"
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-c",
                f"CREATE DATABASE {name}",
            ],
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            cwd=self.tmp,
        )
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- the table -------------------------------------------------------------------------------------
def fmt_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_b(b: float) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= k:
            return f"{b / k:.1f} {unit}"
    return f"{b:.0f} B"


def report(results: dict[str, Any], n: int) -> str:
    """Per-entry costs at size n, and the same times 1M, 10M and 100M."""
    rows: list[tuple[str, float, str]] = []  # what, per entry, unit ("us" or "B")
    t, b = results.get("tree"), results.get("bundle")
    if t:
        for k, what in (
            ("build_us", "build TreeEntry objects"),
            ("encode_us", "encode_tree"),
            ("hash_us", "BLAKE3 of the trees"),
            ("zstd_us", "zstd-3 of the trees"),
            ("decode_us", "decode_tree"),
        ):
            rows.append((what, t[k], "us"))
        rows += [
            ("tree bytes encoded", t["encoded_bytes"], "B"),
            ("tree bytes stored (zstd-3)", t["stored_bytes"], "B"),
            ("RSS of holding TreeEntry objects", t["held_bytes"], "B"),
        ]
    if b:
        rows += [
            ("`bundle list files` (whole process)", b["list_cpu_s"] / n * 1e6, "us"),
            ("`bundle list files` peak RSS", b["list_rss_mib"] * MiB / n, "B"),
            ("`bundle diff`, every directory differs", b["diff_all_cpu_s"] / n * 1e6, "us"),
            ("`bundle diff`, every directory differs, peak RSS", b["diff_all_rss_mib"] * MiB / n, "B"),
        ]
    for db in ("sqlite", "postgres"):
        i = results.get(f"index_{db}")
        if i:
            rows += [
                (f"index insert ({db})", i["insert_us"], "us"),
                (f"index lookup, present ({db})", i["lookup_hit_us"], "us"),
                (f"index lookup, absent ({db})", i["lookup_miss_us"], "us"),
                (f"index size ({db})", i["db_bytes"], "B"),
            ]
    s = results.get("statcache")
    if s:
        rows += [
            ("stat cache store", s["store_us"], "us"),
            ("stat cache lookup_under (all)", s["lookup_under_us"], "us"),
            ("stat cache: RSS of the dict lookup_under returns", s["held_bytes"], "B"),
            ("stat cache size", s["db_bytes"], "B"),
        ]
    out = [
        f"measured at {n:,} entries; CPU per entry (PostgreSQL: client + server), and linearly scaled",
        "",
        "| piece | per entry | × 1M | × 10M | × 100M |",
        "|---|---:|---:|---:|---:|",
    ]
    for what, v, unit in rows:
        per = f"{v:.2f} µs" if unit == "us" else f"{v:.0f} B"
        scaled = [fmt_s(v * m / 1e6) if unit == "us" else fmt_b(v * m) for m in (1e6, 1e7, 1e8)]
        out.append(f"| {what} | {per} | {' | '.join(scaled)} |")
    if b:
        out += [
            "",
            f"whole-process wall (CPU) seconds at {n:,}: list {b['list_s']:.2f} ({b['list_cpu_s']:.2f}), "
            f"first line {b['list_first_line_s'] or 0:.2f}; "
            f"diff with 10 changed {b['diff10_s']:.2f} ({b['diff10_cpu_s']:.2f}); "
            f"diff with every dir changed {b['diff_all_s']:.2f} ({b['diff_all_cpu_s']:.2f}); "
            f"bundle get {b['get_s']:.2f} ({b['get_cpu_s']:.2f})",
        ]
    return "\n".join(out)


def totals(res: dict[str, Any], n: int) -> dict[str, tuple[float, str]]:
    """Whole-run totals at n entries (seconds or bytes), fixed costs included."""
    out: dict[str, tuple[float, str]] = {}
    t, b = res.get("tree"), res.get("bundle")
    if t:
        out["tree: build + encode + hash + zstd of every directory"] = (
            (t["build_us"] + t["encode_us"] + t["hash_us"] + t["zstd_us"]) * n / 1e6,
            "s",
        )
        out["tree: decode_tree of every directory"] = (t["decode_us"] * n / 1e6, "s")
        out["tree: stored bytes (zstd-3), one bundle"] = (t["stored_bytes"] * n, "B")
    if b:
        out["`bundle list files`, whole process"] = (b["list_cpu_s"], "s")
        out["`bundle list files`, peak RSS"] = (b["list_rss_mib"] * MiB, "B")
        out["`bundle diff`, every directory differs, whole process"] = (b["diff_all_cpu_s"], "s")
        out["`bundle diff`, every directory differs, peak RSS"] = (b["diff_all_rss_mib"] * MiB, "B")
        out["`bundle diff`, 10 files differ, whole process"] = (b["diff10_cpu_s"], "s")
    for db in ("sqlite", "postgres"):
        i = res.get(f"index_{db}")
        if i:
            out[f"index ({db}): insert every key"] = (i["insert_us"] * n / 1e6, "s")
            out[f"index ({db}): look up every key (present)"] = (i["lookup_hit_us"] * n / 1e6, "s")
            out[f"index ({db}): size"] = (i["db_bytes"] * n, "B")
    s = res.get("statcache")
    if s:
        out["stat cache: store every row"] = (s["store_us"] * n / 1e6, "s")
        out["stat cache: lookup_under (whole tree)"] = (s["lookup_under_us"] * n / 1e6, "s")
        out["stat cache: RSS of lookup_under's dict"] = (s["held_bytes"] * n, "B")
        out["stat cache: size"] = (s["db_bytes"] * n, "B")
    return out


def extrapolate(all_results: dict[int, dict[str, Any]], lo: int, hi: int) -> str:
    """A straight line through the two measured sizes (fixed cost + marginal cost per entry)."""
    a, b = totals(all_results[lo], lo), totals(all_results[hi], hi)
    out = [
        f"straight line through {lo:,} and {hi:,} entries (fixed + marginal cost per entry; CPU seconds)",
        "",
        f"| what | {lo:,} (measured) | {hi:,} (measured) | per entry (slope) | 10M | 100M |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for k, (vb, unit) in b.items():
        if k not in a:
            continue
        va = a[k][0]
        slope = (vb - va) / (hi - lo)
        fmt = fmt_s if unit == "s" else fmt_b
        per = f"{slope * 1e6:.2f} µs" if unit == "s" else f"{slope:.0f} B"
        pred = [fmt(max(0.0, vb + slope * (m - hi))) for m in (10**7, 10**8)]
        out.append(f"| {k} | {fmt(va)} | {fmt(vb)} | {per} | {' | '.join(pred)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_piece":
        name, n, work = argv[1], int(argv[2]), Path(argv[3])
        if name == "tree":
            one = piece_tree(n, work)
        elif name == "bundle-build":
            one = build_bundle_store(Path(argv[4]), n)
        elif name == "index":
            one = piece_index(n, work, argv[4], int(argv[5]) if len(argv) > 5 else None)
        elif name == "statcache":
            one = piece_statcache(n, work)
        else:
            raise SystemExit(f"unknown piece {name}")
        print(json.dumps(one))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", default="100000,1000000", help="entry counts to measure (default 100000,1000000)"
    )
    p.add_argument("--pieces", default="tree,bundle,index,statcache")
    p.add_argument("--no-postgres", action="store_true", help="index on SQLite only")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    pieces = [s.strip() for s in args.pieces.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="datamon-synthetic-", dir=args.workdir))
    pg: Postgres | None = None
    if "index" in pieces and not args.no_postgres:
        try:
            pg = Postgres()
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            log(f"PostgreSQL not available ({e}): index on SQLite only")
    all_results: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    try:
        for n in sizes:
            res: dict[str, Any] = {}
            if "tree" in pieces:
                log(f"{n:,}: tree encode/decode")
                res["tree"] = self_piece("tree", n, work)
            if "bundle" in pieces:
                log(f"{n:,}: synthetic bundles, list, diff")
                res["bundle"] = bench_bundle(n, work)
            if "index" in pieces:
                log(f"{n:,}: index on SQLite")
                db = work / f"index-{n}.db"
                res["index_sqlite"] = self_piece("index", n, work, f"sqlite:///{db}")
                for f in work.glob(f"index-{n}.db*"):
                    f.unlink()
                if pg is not None:
                    log(f"{n:,}: index on PostgreSQL")
                    res["index_postgres"] = self_piece("index", n, work, pg.fresh_url(), str(pg.pid()))
            if "statcache" in pieces:
                log(f"{n:,}: stat cache")
                res["statcache"] = self_piece("statcache", n, work)
            all_results[n] = res
            log(f"{n:,} done ({time.perf_counter() - t0:.0f} s so far)")
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    for n in sizes:
        print(report(all_results[n], n))
        print()
    if len(sizes) > 1:
        print(extrapolate(all_results, sizes[0], sizes[-1]))
    print(f"\n({time.perf_counter() - t0:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in all_results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
