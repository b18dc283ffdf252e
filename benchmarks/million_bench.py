#!/usr/bin/env python3
"""A million small files (issue 15): datamon and restic side by side, one command, one table.

    python benchmarks/million_bench.py [--files 1000000] [--tree PATH] [--tools datamon,restic]
                                       [--repeat 2] [--no-mount] [--no-install] [--workdir DIR]
                                       [--keep] [--json FILE]

The data: N files of 16 B–1 KiB (random bytes, sizes uniform, ``random.Random(42)``; the same
bytes as ``/tmp/data/gen.py``) in N/1000 directories ``dNNNNN/fNNNN.bin``. Generated once into
``WORKDIR/data/files-N`` and reused; ``--tree PATH`` uses an existing tree of that shape instead
(read-only: it is copied, never modified).

Per repeat, in fresh repositories, every step a fresh process timed whole (start-up included),
``os.sync()`` before each, peak RSS from ``wait4``'s rusage of that one process (``ru_maxrss``):

 1. working copy: ``cp -a`` of the tree (untimed, once per run; page cache warm for both tools);
 2. first upload (``datamon bundle upload``) / first backup (``restic backup``);
 3. the same again, nothing changed;
 4. 10 files rewritten in place (same inode, new size and mtime), upload / backup again;
 5. ``bundle list files`` vs ``restic ls latest`` (whole, and time to the first line of output);
 6. ``bundle diff A..B`` (first vs 10-changed bundle; 10 ``U`` lines) vs ``restic diff``;
 7. ``bundle get`` / ``label get`` (whole process) vs ``restic snapshots --latest 1``;
 8. download / ``restic restore latest`` into an empty directory, checked (file count, the 10
    changed files and 1,000 others compared byte for byte with the working copy);
 9. ``bundle update`` of that download back to the first bundle (10 files differ), against the
    time a fresh Python process needs just to ``lstat`` every entry of the tree (the "stat scan");
10. FUSE (datamon only; ``--no-mount`` skips it): ``bundle mount`` in the foreground, seconds from
    starting it to the first byte of the deepest file, ``find MNT -type f | wc -l`` on that fresh
    mount, then the mount process's RSS (``VmRSS`` from /proc) after the find.

Best of ``--repeat`` for seconds; peak RSS is the largest over the repeats. Prints a markdown
table with the issue's targets and ok/MISS, and writes everything to ``WORKDIR/million.json``.
Needs restic (``apt-get install restic`` when missing, unless ``--no-install``) and, for the mount,
/dev/fuse and fusermount3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
PER_DIR = 1000
CHANGED = 10
SAMPLE = 1000  # files compared byte for byte after each restore (besides the changed ones)
CLI = [sys.executable, "-m", "datamon.cli"]


def log(msg: str) -> None:
    print(f"[million] {msg}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------
def rel_path(i: int) -> str:
    return f"d{i // PER_DIR:05d}/f{i % PER_DIR:04d}.bin"


def generate(dest: Path, n: int) -> None:
    """The same bytes as /tmp/data/gen.py: N files of 16..1024 random bytes, 1,000 per directory."""
    rng = random.Random(42)
    for d in range(-(-n // PER_DIR)):
        dd = dest / f"d{d:05d}"
        dd.mkdir(parents=True, exist_ok=True)
        for i in range(min(PER_DIR, n - d * PER_DIR)):
            size = rng.randint(16, 1024)
            with open(dd / f"f{i:04d}.bin", "wb") as f:
                f.write(rng.randbytes(size))


def count_files(root: Path) -> int:
    n = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    n += 1
    return n


def ensure_tree(args: argparse.Namespace, work: Path) -> Path:
    if args.tree:
        tree = args.tree.resolve()
        n = count_files(tree)
        if n != args.files:
            raise SystemExit(f"--tree {tree} has {n:,} files, --files says {args.files:,}")
        return tree
    tree = work / "data" / f"files-{args.files}"
    done = tree.with_name(tree.name + ".done")
    if not done.exists():
        shutil.rmtree(tree, ignore_errors=True)
        log(f"generating {args.files:,} files in {tree}")
        t = time.perf_counter()
        generate(tree, args.files)
        done.write_text("ok\n")
        log(f"generated in {time.perf_counter() - t:.0f} s")
    return tree


def changed_indices(n: int) -> list[int]:
    return sorted({(k * n) // CHANGED + min(7, n // CHANGED - 1) for k in range(CHANGED)})


def mutate(data: Path, n: int, rep: int) -> list[str]:
    """Rewrite 10 files in place (same inode, another size, new mtime), as an edit would."""
    paths = []
    for k, i in enumerate(changed_indices(n)):
        p = rel_path(i)
        with open(data / p, "r+b") as f:
            f.truncate(0)
            f.write(b"changed in repeat %d, file %d\n" % (rep, k) * (k + 2))
        paths.append(p)
    return paths


def check_restore(restored: Path, data: Path, n: int, must: list[str], seed: int) -> str:
    """'' when ``restored`` has n files and the changed ones plus a sample equal ``data``'s."""
    got = count_files(restored)
    if got != n:
        return f"{got:,} files restored, expected {n:,}"
    sample = random.Random(seed).sample(range(n), min(SAMPLE, n))
    for p in [*must, *(rel_path(i) for i in sample)]:
        if (restored / p).read_bytes() != (data / p).read_bytes():
            return f"{p} differs"
    return ""


# -- measuring one process -------------------------------------------------------------------------
class Failed(Exception):
    pass


def run_timed(
    argv: list[str],
    env: dict[str, str],
    logs: Path,
    name: str,
    cwd: Path | None = None,
    *,
    first_line: str | None = None,
) -> dict[str, Any]:
    """Run one process; wall seconds, its peak RSS and CPU from ``wait4``, its stdout saved.

    With ``first_line`` (a regex), stdout is read through a pipe and the seconds until the first
    line matching it arrived are recorded too (``first_line_s``), and lines are counted."""
    os.sync()  # no write-back of an earlier step's dirty pages during this one
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    res: dict[str, Any] = {"argv": argv}
    with open(err_path, "wb") as err:
        t0 = time.perf_counter()
        if first_line is None:
            with open(out_path, "wb") as out:
                p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        else:
            pat = re.compile(first_line.encode())
            p = subprocess.Popen(
                argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
            assert p.stdout is not None
            fd = p.stdout.fileno()
            lines, pending, head = 0, b"", bytearray()
            while True:
                block = os.read(fd, 1 << 16)
                if not block:
                    break
                lines += block.count(b"\n")
                if "first_line_s" not in res:
                    pending += block
                    *complete, pending = pending.split(b"\n")
                    if any(pat.search(ln) for ln in complete):
                        res["first_line_s"] = time.perf_counter() - t0
                if len(head) < 4096:
                    head += block[:4096]
            p.stdout.close()
            res["lines"] = lines
            out_path.write_bytes(bytes(head))
        _, status, ru = os.wait4(p.pid, 0)
        res["seconds"] = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    res["rss_mib"] = ru.ru_maxrss / 1024
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    res["load_after"] = os.getloadavg()[0]  # 1-minute load average as the step ends (noise)
    if p.returncode != 0:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise Failed(f"{name}: `{' '.join(argv)}` exited {p.returncode}: " + " | ".join(tail))
    note = f"  first line {res['first_line_s']:.2f} s" if "first_line_s" in res else ""
    log(
        f"  {name:<22} {res['seconds']:8.2f} s  rss {res['rss_mib']:7.0f} MiB"
        f"  cpu {res['cpu_s']:6.1f} s{note}"
    )
    return res


def run_quiet(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    p = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise Failed(f"`{' '.join(argv)}` exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return p.stdout


def stat_scan(root: Path, logs: Path) -> dict[str, Any]:
    """A fresh Python process that lstat()s every entry under root: the floor of any update."""
    code = (
        "import os,sys\n"
        "st=[sys.argv[1]];n=0\n"
        "while st:\n"
        "  for e in os.scandir(st.pop()):\n"
        "    s=e.stat(follow_symlinks=False);n+=1\n"
        "    if e.is_dir(follow_symlinks=False): st.append(e.path)\n"
        "print(n)\n"
    )
    return run_timed([sys.executable, "-c", code, str(root)], dict(os.environ), logs, "stat-scan")


def dir_mib(path: Path, exclude: tuple[str, ...] = ()) -> float:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if Path(dirpath) == path:
            dirnames[:] = [d for d in dirnames if d not in exclude]
        for f in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total / MiB


def rmtree(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=False)


# -- datamon ---------------------------------------------------------------------------------------
class Datamon:
    name = "datamon"

    def __init__(self, run: Path) -> None:
        self.run = run
        self.home = run / "datamon-home"
        pp = os.environ.get("PYTHONPATH")
        self.env = {
            **os.environ,
            "DATAMON_HOME": str(self.home),
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + pp if pp else ""),
        }
        for var in ("DATAMON_BLOB_URL", "DATAMON_META_URL", "DATAMON_CONTEXT"):
            self.env.pop(var, None)
        self.logs = run / "logs-datamon"
        self.logs.mkdir(parents=True)
        self.ids: dict[str, str] = {}

    def cli(self, *args: str) -> list[str]:
        return [*CLI, *args]

    def timed(self, step: str, *args: str, **kw: Any) -> dict[str, Any]:
        return run_timed(self.cli(*args), self.env, self.logs, step, **kw)

    def prepare(self) -> None:
        run_quiet(self.cli("repo", "create", "--repo", "m", "--description", "million"), self.env)

    def backup(self, step: str, data: Path, key: str) -> dict[str, Any]:
        r = self.timed(
            step, "bundle", "upload", "--repo", "m", "--path", str(data), "--message", key, "--format", "{id}"
        )
        found = re.findall(r"\b[0-9a-f]{16,64}\b", (self.logs / f"{step}.out").read_text())
        if not found:
            raise Failed(f"{step}: no bundle id in the output of the upload")
        self.ids[key] = found[-1]
        return r

    def shared_dirs(self, a: str, b: str) -> dict[str, int]:
        """Top-level directories of bundle b whose tree key differs from bundle a's."""
        code = (
            "import sys, datamon\n"
            "from datamon.api.bundles import resolve\n"
            "def top(c, b):\n"
            "    root = bytes.fromhex(resolve(c, 'm', bundle=b).tree)\n"
            "    return {e.name: e.key for e in c.cas.read_tree(root)}\n"
            "with datamon.connect() as c:\n"
            "    ta, tb = top(c, sys.argv[1]), top(c, sys.argv[2])\n"
            "print(len(tb), sum(1 for k, v in tb.items() if ta.get(k) != v))\n"
        )
        total, differ = map(int, run_quiet([sys.executable, "-c", code, a, b], self.env).split())
        return {"dirs": total, "dirs_differ": differ}

    def metadata_mib(self) -> dict[str, float]:
        return {
            "store_mib": dir_mib(self.home, ("cache",)),
            "meta_db_mib": sum(p.stat().st_size for p in self.home.glob("meta.db*")) / MiB,
            "cache_mib": dir_mib(self.home / "cache") if (self.home / "cache").exists() else 0.0,
        }


def bench_datamon_read(d: Datamon, res: dict[str, Any], n: int) -> None:
    v1, v2 = d.ids["v1"], d.ids["v2"]
    r = d.timed("list", "bundle", "list", "files", "--repo", "m", "--bundle", v2, first_line=r".")
    if r["lines"] != n:
        raise Failed(f"bundle list files printed {r['lines']:,} lines, expected {n:,}")
    res["list"] = r
    r = d.timed("diff", "bundle", "diff", "--repo", "m", f"{v1}..{v2}")
    lines = (d.logs / "diff.out").read_text().splitlines()
    if len(lines) != CHANGED or not all(ln.startswith("U ") for ln in lines):
        raise Failed(f"bundle diff printed {lines[:12]}")
    res["diff"] = r
    run_quiet(d.cli("label", "set", "--repo", "m", "--label", "v2", "--bundle", v2), d.env)
    res["bundle_get"] = d.timed("bundle-get", "bundle", "get", "--repo", "m", "--bundle", v2)
    res["label_get"] = d.timed("label-get", "label", "get", "--repo", "m", "--label", "v2")


def bench_mount(d: Datamon, res: dict[str, Any], n: int) -> None:
    mnt = d.run / "mnt"
    mnt.mkdir(exist_ok=True)
    deep = rel_path(n - 1)
    argv = d.cli("bundle", "mount", "--repo", "m", "--bundle", d.ids["v2"], "--mount", str(mnt))
    with open(d.logs / "mount.err", "wb") as errf:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=d.env, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf)
        try:
            deadline = time.monotonic() + 300
            while not os.path.ismount(mnt):
                if p.poll() is not None:
                    raise Failed(
                        f"mount exited with {p.returncode}: {(d.logs / 'mount.err').read_text()[-500:]}"
                    )
                if time.monotonic() > deadline:
                    raise Failed("not mounted after 300 s")
                time.sleep(0.002)
            mounted = time.perf_counter() - t0
            with open(mnt / deep, "rb") as f:
                if not f.read(1):
                    raise Failed(f"{deep} is empty on the mount")
            first = time.perf_counter() - t0
            t1 = time.perf_counter()
            out = subprocess.run(
                ["sh", "-c", f"find '{mnt}' -type f | wc -l"], capture_output=True, text=True, check=True
            ).stdout
            find_s = time.perf_counter() - t1
            if int(out) != n:
                raise Failed(f"find counted {out.strip()} files on the mount, expected {n:,}")
            status = Path(f"/proc/{p.pid}/status").read_text()
            kib = {
                k: int(v.split()[0])
                for k, v in (ln.split(":", 1) for ln in status.splitlines())
                if k in ("VmRSS", "VmHWM")
            }
        finally:
            for flag in ("-u", "-uz"):
                if os.path.ismount(mnt):
                    subprocess.run(["fusermount3", flag, str(mnt)], capture_output=True)
                    time.sleep(0.05)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    res["mount"] = {
        "mounted_s": mounted,
        "first_byte_s": first,
        "find_s": find_s,
        "rss_after_find_mib": kib["VmRSS"] / 1024,
        "hwm_mib": kib["VmHWM"] / 1024,
    }
    log(
        f"  mount: mounted {mounted:.2f} s, first byte {first:.2f} s, find {find_s:.2f} s, "
        f"RSS after find {kib['VmRSS'] / 1024:.0f} MiB (peak {kib['VmHWM'] / 1024:.0f})"
    )


# -- restic ----------------------------------------------------------------------------------------
class Restic:
    name = "restic"

    def __init__(self, run: Path) -> None:
        self.run = run
        self.repo = run / "restic-repo"
        self.env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(self.repo),
            "RESTIC_PASSWORD": "bench",
            "RESTIC_CACHE_DIR": str(run / "restic-cache"),
        }
        self.logs = run / "logs-restic"
        self.logs.mkdir(parents=True)
        self.ids: dict[str, str] = {}

    def timed(self, step: str, *args: str, **kw: Any) -> dict[str, Any]:
        return run_timed(["restic", *args], self.env, self.logs, step, **kw)

    def prepare(self) -> None:
        run_quiet(["restic", "init", "--repository-version", "2"], self.env)

    def backup(self, step: str, data: Path, key: str) -> dict[str, Any]:
        r = run_timed(["restic", "backup", "--compression", "auto", "."], self.env, self.logs, step, cwd=data)
        found = re.findall(r"snapshot ([0-9a-f]{8,64}) saved", (self.logs / f"{step}.out").read_text())
        if not found:
            raise Failed(f"{step}: no snapshot id in restic's output")
        self.ids[key] = found[-1]
        return r


def bench_restic_read(r: Restic, res: dict[str, Any], n: int) -> None:
    # restic ls prints a header line first, then directories and files: the first *path* counts
    x = r.timed("ls", "ls", "latest", first_line=r"^/")
    if x["lines"] < n:
        raise Failed(f"restic ls printed {x['lines']:,} lines, expected at least {n:,}")
    res["list"] = x
    res["diff"] = r.timed("diff", "diff", r.ids["v1"], r.ids["v2"])
    res["bundle_get"] = r.timed("snapshots", "snapshots", "--latest", "1")


# -- one repeat ------------------------------------------------------------------------------------
def one_repeat(
    args: argparse.Namespace, rep: int, data: Path, runs: Path, tools: list[str]
) -> dict[str, Any]:
    n = args.files
    run = runs / f"rep{rep}"
    run.mkdir(parents=True)
    objs: dict[str, Any] = {}
    if "datamon" in tools:
        objs["datamon"] = Datamon(run)
    if "restic" in tools:
        objs["restic"] = Restic(run)
    out: dict[str, dict[str, Any]] = {t: {} for t in objs}
    for o in objs.values():
        o.prepare()
    log(f"repeat {rep + 1}: first upload / backup, then again with nothing changed")
    for t, o in objs.items():
        out[t]["first"] = o.backup("first", data, "v1")
    for t, o in objs.items():
        out[t]["again"] = o.backup("again", data, "v1-again")
    changed = mutate(data, n, rep)
    log(f"repeat {rep + 1}: {len(changed)} files changed: upload / backup")
    for t, o in objs.items():
        out[t]["changed"] = o.backup("changed", data, "v2")
    if "datamon" in objs:
        d = objs["datamon"]
        out["datamon"]["shared"] = d.shared_dirs(d.ids["v1"], d.ids["v2"])
        out["datamon"]["sizes"] = d.metadata_mib()
        bench_datamon_read(d, out["datamon"], n)
    if "restic" in objs:
        out["restic"]["sizes"] = {"store_mib": dir_mib(objs["restic"].repo)}
        bench_restic_read(objs["restic"], out["restic"], n)
    for t, o in objs.items():
        dest = run / f"restore-{t}"
        if t == "datamon":
            out[t]["restore"] = o.timed(
                "download",
                "bundle",
                "download",
                "--repo",
                "m",
                "--bundle",
                o.ids["v2"],
                "--destination",
                str(dest),
            )
        else:
            out[t]["restore"] = o.timed("restore", "restore", "latest", "--target", str(dest))
        bad = check_restore(dest, data, n, changed, rep)
        if bad:
            raise Failed(f"{t} restore check failed: {bad}")
        log(f"  {t} restore checked: {n:,} files, {len(changed) + min(SAMPLE, n)} compared byte for byte")
        if t == "datamon":
            out[t]["stat_scan"] = stat_scan(dest, o.logs)
            out[t]["update"] = o.timed(
                "update",
                "bundle",
                "update",
                "--repo",
                "m",
                "--bundle",
                o.ids["v1"],
                "--destination",
                str(dest),
            )
            # the 10 changed files are back to their first-bundle content
            if any((dest / p).read_bytes() == (data / p).read_bytes() for p in changed):
                raise Failed("bundle update left a changed file as it was")
        # deleting a million files takes minutes: set aside, deleted once at the end of the run
        dest.rename(runs / f"trash-{rep}-{t}")
    if "datamon" in objs and not args.no_mount:
        bench_mount(objs["datamon"], out["datamon"], n)
    if not args.keep:
        for t, o in objs.items():
            (o.home if t == "datamon" else o.repo).rename(runs / f"trash-{rep}-{t}-store")
    return out


# -- merging and the table -------------------------------------------------------------------------
STEPS = (
    "first",
    "again",
    "changed",
    "list",
    "diff",
    "bundle_get",
    "label_get",
    "restore",
    "update",
    "stat_scan",
)


def merge(reps: list[dict[str, Any]]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for tool in reps[0]:
        b: dict[str, Any] = {}
        for step in STEPS:
            cands = [r[tool][step] for r in reps if step in r[tool]]
            if not cands:
                continue
            pick = dict(min(cands, key=lambda c: c["seconds"]))
            pick["all_seconds"] = [c["seconds"] for c in cands]
            pick["rss_mib"] = max(c["rss_mib"] for c in cands)
            pick["cpu_best"] = min(c["cpu_s"] for c in cands)
            if any("first_line_s" in c for c in cands):
                pick["first_line_s"] = min(c["first_line_s"] for c in cands)
            b[step] = pick
        mounts = [r[tool]["mount"] for r in reps if "mount" in r[tool]]
        if mounts:
            b["mount"] = {
                k: (max if k in ("rss_after_find_mib", "hwm_mib") else min)(m[k] for m in mounts)
                for k in mounts[0]
            }
        for k in ("shared", "sizes"):
            if k in reps[-1][tool]:
                b[k] = reps[-1][tool][k]
        best[tool] = b
    return best


def table(best: dict[str, Any], n: int) -> tuple[str, list[dict[str, Any]]]:
    dm, rs = best.get("datamon", {}), best.get("restic", {})

    def sec(t: dict[str, Any], step: str) -> float | None:
        return t[step]["seconds"] if step in t else None

    def rss(t: dict[str, Any], step: str) -> float | None:
        return t[step]["rss_mib"] if step in t else None

    def f(v: float | None, fmt: str = "{:.2f}") -> str:
        return "–" if v is None else fmt.format(v)

    def ws(t: dict[str, Any], step: str) -> str:
        """Wall seconds (CPU seconds, user + system): CPU tells more on a busy machine."""
        if step not in t:
            return "–"
        return f"{t[step]['seconds']:.2f} ({t[step].get('cpu_best', t[step]['cpu_s']):.1f})"

    verdicts: list[dict[str, Any]] = []

    def judge(*checks: tuple[float | None, float | None]) -> str:
        """MISS if any measurable check fails; ok if all hold; "ok (part)" when some could not be
        measured (no restic in this run); n/a when none could."""
        known = [(v, lim) for v, lim in checks if v is not None and lim is not None]
        if not known:
            return "n/a"
        if any(v > lim for v, lim in known):
            return "MISS"
        return "ok" if len(known) == len(checks) else "ok (part)"

    rows = []

    def row(
        what: str, d_s: Any, d_rss: Any, r_s: Any, r_rss: Any, target: str, this: str, verdict: str
    ) -> None:
        rows.append(f"| {what} | {d_s} | {d_rss} | {r_s} | {r_rss} | {target} | {this} | {verdict} |")
        verdicts.append({"step": what, "target": target, "this_run": this, "verdict": verdict})

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None or b == 0 else a / b

    first_d, first_r = sec(dm, "first"), sec(rs, "first")
    q = ratio(first_d, first_r)
    row(
        "first upload / backup",
        ws(dm, "first"),
        f(rss(dm, "first"), "{:.0f}"),
        ws(rs, "first"),
        f(rss(rs, "first"), "{:.0f}"),
        "≤ 0.66 × restic; RSS ≤ 300 MiB",
        f"{f(q)} ×; {f(rss(dm, 'first'), '{:.0f}')} MiB",
        judge((q, 0.66), (rss(dm, "first"), 300)),
    )
    for step, what in (
        ("again", "re-upload, nothing changed"),
        ("changed", f"re-upload, {CHANGED} files changed"),
    ):
        a, b = sec(dm, step), sec(rs, step)
        own, peer = ratio(a, first_d), ratio(a, b)
        extra = ""
        checks = [(own, 0.1), (peer, 0.66)]
        if step == "changed" and "shared" in dm:
            sh = dm["shared"]
            extra = f"; {sh['dirs_differ']} of {sh['dirs']:,} dirs new"
            checks.append((float(sh["dirs_differ"]), float(CHANGED)))
        row(
            what,
            ws(dm, step),
            f(rss(dm, step), "{:.0f}"),
            ws(rs, step),
            f(rss(rs, step), "{:.0f}"),
            "≤ 0.1 × first upload and ≤ 0.66 × restic"
            + ("; unchanged dirs shared" if step == "changed" else ""),
            f"{f(own)} × own, {f(peer)} × restic{extra}",
            judge(*checks),
        )
    a, b = sec(dm, "list"), sec(rs, "list")
    fl = dm.get("list", {}).get("first_line_s")
    rfl = rs.get("list", {}).get("first_line_s")
    row(
        "`bundle list files` / `restic ls latest`",
        ws(dm, "list"),
        f(rss(dm, "list"), "{:.0f}"),
        ws(rs, "list"),
        f(rss(rs, "list"), "{:.0f}"),
        "≤ 5 s",
        f"{f(a)} s",
        judge((a, 5.0)),
    )
    row("… first line of output", f(fl), "", f(rfl), "", "≤ 0.5 s", f"{f(fl)} s", judge((fl, 0.5)))
    a, b = sec(dm, "diff"), sec(rs, "diff")
    row(
        f"`bundle diff` ({CHANGED} files differ) / `restic diff`",
        ws(dm, "diff"),
        f(rss(dm, "diff"), "{:.0f}"),
        ws(rs, "diff"),
        f(rss(rs, "diff"), "{:.0f}"),
        "≤ 0.5 s",
        f"{f(a)} s",
        judge((a, 0.5)),
    )
    a, b = sec(dm, "bundle_get"), sec(rs, "bundle_get")
    row(
        "`bundle get` / `restic snapshots --latest 1`",
        ws(dm, "bundle_get"),
        f(rss(dm, "bundle_get"), "{:.0f}"),
        ws(rs, "bundle_get"),
        f(rss(rs, "bundle_get"), "{:.0f}"),
        "≤ 0.3 s",
        f"{f(a)} s",
        judge((a, 0.3)),
    )
    a = sec(dm, "label_get")
    row(
        "`label get`",
        ws(dm, "label_get"),
        f(rss(dm, "label_get"), "{:.0f}"),
        "–",
        "–",
        "≤ 0.3 s",
        f"{f(a)} s",
        judge((a, 0.3)),
    )
    a, b = sec(dm, "restore"), sec(rs, "restore")
    q = ratio(a, b)
    row(
        "download / `restic restore latest`",
        ws(dm, "restore"),
        f(rss(dm, "restore"), "{:.0f}"),
        ws(rs, "restore"),
        f(rss(rs, "restore"), "{:.0f}"),
        "≤ 0.66 × restic; RSS ≤ 300 MiB",
        f"{f(q)} ×; {f(rss(dm, 'restore'), '{:.0f}')} MiB",
        judge((q, 0.66), (rss(dm, "restore"), 300)),
    )
    a, scan = sec(dm, "update"), sec(dm, "stat_scan")
    row(
        f"`bundle update` ({CHANGED} files differ)",
        ws(dm, "update"),
        f(rss(dm, "update"), "{:.0f}"),
        "–",
        "–",
        "≤ 2 s + stat scan",
        f"{f(a)} s (stat scan {f(scan)} s)",
        judge((a, None if scan is None else 2.0 + scan)),
    )
    m = dm.get("mount")
    if m:
        row(
            "mount: `find MNT -type f \\| wc -l`",
            f(m["find_s"]),
            "",
            "–",
            "–",
            "≤ 5 s",
            f"{f(m['find_s'])} s",
            judge((m["find_s"], 5.0)),
        )
        row(
            "mount: start → first byte of a file",
            f(m["first_byte_s"]),
            "",
            "–",
            "–",
            "≤ 0.5 s",
            f"{f(m['first_byte_s'])} s (mounted after {f(m['mounted_s'])} s)",
            judge((m["first_byte_s"], 0.5)),
        )
        row(
            "mount: process RSS after the find",
            "",
            f(m["rss_after_find_mib"], "{:.0f}"),
            "–",
            "–",
            "≤ 300 MiB",
            f"{f(m['rss_after_find_mib'], '{:.0f}')} MiB (peak {f(m['hwm_mib'], '{:.0f}')})",
            judge((m["rss_after_find_mib"], 300.0)),
        )
    head = [
        f"{n:,} files of 16 B–1 KiB in {-(-n // PER_DIR):,} directories; "
        "whole-process wall seconds (best of runs) and in brackets CPU seconds (user + system, "
        "least of runs); peak RSS MiB (largest of runs)",
        "",
        "| step | datamon s (CPU) | datamon RSS MiB | restic s (CPU) | restic RSS MiB | target | this run"
        " | |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    return "\n".join(head + rows), verdicts


# -- main ------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "",
    )
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def ensure_restic(no_install: bool) -> str | None:
    if not shutil.which("restic") and not no_install and shutil.which("apt-get"):
        log("apt-get install -y restic")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "restic"], env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "restic"], env=env, capture_output=True)
    if not shutil.which("restic"):
        return None
    return run_quiet(["restic", "version"]).strip()


def git_commit() -> str:
    try:
        return run_quiet(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]).strip()
    except (Failed, OSError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1_000_000, help="number of files (default 1,000,000)")
    p.add_argument("--tree", type=Path, help="use this existing tree of --files files (read-only; copied)")
    p.add_argument("--tools", default="datamon,restic", help="datamon,restic (default both)")
    p.add_argument("--repeat", type=int, default=2, help="runs of every step; best time is kept (default 2)")
    p.add_argument("--no-mount", action="store_true", help="skip the FUSE steps")
    p.add_argument("--no-install", action="store_true", help="never apt-get install restic")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: benchmarks/.work)")
    p.add_argument("--keep", action="store_true", help="keep the repositories and the working copy")
    p.add_argument("--json", type=Path, help="where to write the results (default WORKDIR/million.json)")
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="only print the table of an earlier run's JSON"
    )
    args = p.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        report(saved, saved["repeats"])
        return 0
    if args.files < 2 * CHANGED:
        raise SystemExit("--files must be at least 20")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = set(tools) - {"datamon", "restic"}
    if unknown:
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    if (
        not args.no_mount
        and "datamon" in tools
        and not (os.path.exists("/dev/fuse") and shutil.which("fusermount3"))
    ):
        log("no /dev/fuse or fusermount3: the mount steps are skipped")
        args.no_mount = True

    work = (args.workdir or REPO_ROOT / "benchmarks" / ".work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "files": args.files,
        "commit": git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "tools": tools,
    }
    if "restic" in tools:
        v = ensure_restic(args.no_install)
        if v is None:
            log("restic is not available: measuring datamon only")
            tools.remove("restic")
        info["restic"] = v
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO_ROOT / "datamon")], capture_output=True
    )

    tree = ensure_tree(args, work)
    runs = Path(tempfile.mkdtemp(prefix="million-", dir=work))
    data = runs / "data"
    t0 = time.perf_counter()
    log(f"copying {tree} to {data} (untimed)")
    subprocess.run(["cp", "-a", str(tree), str(data)], check=True)
    log(f"copied in {time.perf_counter() - t0:.0f} s")
    reps: list[dict[str, Any]] = []
    status = 0
    try:
        for rep in range(args.repeat):
            reps.append(one_repeat(args, rep, data, runs, tools))
            partial = (args.json or work / "million.json").with_suffix(".partial.json")
            partial.write_text(json.dumps({**info, "repeats": reps}, indent=1, default=str))
    except Failed as e:
        print(f"!!! FAILED: {e}", flush=True)
        status = 1
    finally:
        for mnt in runs.glob("rep*/mnt"):
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        if not args.keep:
            rmtree(runs)
    if not reps:
        return 1
    out = args.json or work / "million.json"
    report(info, reps, out)
    log(f"results in {out} ({time.perf_counter() - t0:.0f} s in all)")
    return status


def report(info: dict[str, Any], reps: list[dict[str, Any]], out: Path | None = None) -> None:
    best = merge(reps)
    text, verdicts = table(best, info["files"])
    m = info["machine"]
    print(
        f"{info['date']}, commit {info['commit']}, {m['nproc']} × {m['cpu']}, {m['memory']}, "
        f"Python {m['python']}; {info.get('restic') or 'restic not run'}; load average at start "
        f"{m['loadavg'][0]:.1f}; best of {len(reps)}\n"
    )
    print(text)
    if "datamon" in best and "sizes" in best["datamon"]:
        s = best["datamon"]["sizes"]
        print(
            f"\ndatamon store {s['store_mib']:.0f} MiB (meta.db {s['meta_db_mib']:.0f} MiB), "
            f"cache (stat cache, chunk cache) {s['cache_mib']:.0f} MiB"
            + (f"; restic repo {best['restic']['sizes']['store_mib']:.0f} MiB" if "restic" in best else "")
        )
    if out is not None:
        out.write_text(
            json.dumps({**info, "best": best, "repeats": reps, "verdicts": verdicts}, indent=1, default=str)
        )


if __name__ == "__main__":
    sys.exit(main())
