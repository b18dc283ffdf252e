"""One contract for every BlobStore: memory, local disk, S3 (moto and rclone) and GCS (emulator).

The object-store cases run against real servers on loopback (see ``tests/servers.py``). The
retry wrapper is tested with a fake store that fails on cue, since no real server can be made to
fail a given number of times.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from datamon.cas.blobstore import BlobStore, FsspecBlobStore, open_blobstore, redact_url
from datamon.cas.retry import BoundedBlobStore, RetryingBlobStore, is_transient
from datamon.errors import NotFound, StoreUnavailable, UsageError
from tests.servers import S3_ACCESS_KEY, free_port

StoreFactory = Callable[[str], BlobStore]

BACKENDS = [
    "memory",
    "local",
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("s3-real", marks=pytest.mark.s3),
    pytest.param("gcs", marks=pytest.mark.gcs),
]
REMOTES = [
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("s3-real", marks=pytest.mark.s3),
    pytest.param("gcs", marks=pytest.mark.gcs),
]
_SERVER_FIXTURE = {"s3": "s3_server", "s3-real": "s3_real_server", "gcs": "gcs_server"}


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores at different prefixes of one place (one bucket, one directory)."""
    kind = request.param
    if kind == "memory":
        base = f"memory://contract-{uuid.uuid4().hex}"
        yield lambda prefix: open_blobstore(f"{base}/{prefix}")
        import fsspec

        fs = fsspec.filesystem("memory")
        if fs.exists(base[len("memory:/") :]):
            fs.rm(base[len("memory:/") :], recursive=True)
    elif kind == "local":
        yield lambda prefix: open_blobstore((tmp_path / "blobs" / prefix).as_uri())
    else:
        server = request.getfixturevalue(_SERVER_FIXTURE[kind])
        bucket = server.create_bucket()
        yield lambda prefix: open_blobstore(server.url(bucket, prefix))


@pytest.fixture
def blobstore(store_factory: StoreFactory) -> BlobStore:
    return store_factory("store")


def test_round_trip(blobstore: BlobStore) -> None:
    assert isinstance(blobstore, BlobStore)
    blobstore.put("packs/one.pack", b"hello world")
    assert blobstore.get("packs/one.pack") == b"hello world"
    assert blobstore.size("packs/one.pack") == 11


def test_range_get(blobstore: BlobStore) -> None:
    data = bytes(range(256)) * 4
    blobstore.put("r", data)
    assert blobstore.get("r", 10, 20) == data[10:20]
    assert blobstore.get("r", 0, 1) == data[:1]
    assert blobstore.get("r", 1000) == data[1000:]
    assert blobstore.get("r", 0) == data
    assert blobstore.get("r", 1000, 5000) == data[1000:]
    assert blobstore.get("r", 7, 7) == b""


def test_missing_blob(blobstore: BlobStore) -> None:
    assert blobstore.size("nope/missing") is None
    with pytest.raises(NotFound, match="nope/missing"):
        blobstore.get("nope/missing")
    with pytest.raises(NotFound):
        blobstore.get("nope/missing", 1, 5)
    with pytest.raises(NotFound):
        blobstore.get("nope/missing", 3, 3)


def test_list_prefix_sorted(blobstore: BlobStore) -> None:
    names = ["packs/ab/2", "packs/aa/1", "packs/a/3", "packsx/y", "trees/x", "top"]
    for n in names:
        blobstore.put(n, n.encode())
    assert list(blobstore.list()) == sorted(names)
    assert list(blobstore.list("packs/")) == ["packs/a/3", "packs/aa/1", "packs/ab/2"]
    assert list(blobstore.list("packs")) == ["packs/a/3", "packs/aa/1", "packs/ab/2"]
    assert list(blobstore.list("packs/a")) == ["packs/a/3"]
    assert list(blobstore.list("nothing/")) == []


def test_list_empty_store(blobstore: BlobStore) -> None:
    assert list(blobstore.list()) == []


def test_delete_is_idempotent(blobstore: BlobStore) -> None:
    blobstore.put("d/x", b"1")
    blobstore.delete("d/x")
    assert blobstore.size("d/x") is None
    assert list(blobstore.list("d/")) == []
    blobstore.delete("d/x")
    blobstore.delete("never/existed")


def test_overwrite_with_identical_data(blobstore: BlobStore) -> None:
    blobstore.put("same", b"abc")
    blobstore.put("same", b"abc")
    assert blobstore.get("same") == b"abc"
    assert list(blobstore.list()) == ["same"]


def test_empty_blob(blobstore: BlobStore) -> None:
    blobstore.put("empty", b"")
    assert blobstore.size("empty") == 0
    assert blobstore.get("empty") == b""
    assert list(blobstore.list()) == ["empty"]


def test_large_blob(blobstore: BlobStore) -> None:
    # Seeded, and ending like a real pack (b"DMPKEND1"): gcp-storage-emulator drops a trailing
    # b"\r" or b"\n" from multipart upload bodies, which made random data fail ~1 run in 128.
    data = random.Random(20).randbytes(20 * 2**20 - 8) + b"DMPKEND1"
    blobstore.put("big/pack", data)
    assert blobstore.size("big/pack") == len(data)
    assert blobstore.get("big/pack") == data
    assert blobstore.get("big/pack", 10 * 2**20, 10 * 2**20 + 100) == data[10 * 2**20 : 10 * 2**20 + 100]


def test_nested_names(blobstore: BlobStore) -> None:
    blobstore.put("a/b/c/d/e.bin", b"deep")
    blobstore.put("a/b/f.bin", b"shallow")
    assert blobstore.get("a/b/c/d/e.bin") == b"deep"
    assert list(blobstore.list("a/b")) == ["a/b/c/d/e.bin", "a/b/f.bin"]
    assert list(blobstore.list("a/b/c/d/")) == ["a/b/c/d/e.bin"]


def test_bad_names_rejected(blobstore: BlobStore) -> None:
    for bad in ("/abs", "a/../b", ".."):
        with pytest.raises(ValueError):
            blobstore.put(bad, b"x")


def test_prefixes_are_isolated(store_factory: StoreFactory) -> None:
    # "data" is a string prefix of "data2": a folder prefix must still keep them apart
    one, two = store_factory("data"), store_factory("data2")
    one.put("packs/p1", b"one")
    two.put("packs/p2", b"two")
    assert list(one.list()) == ["packs/p1"]
    assert list(two.list()) == ["packs/p2"]
    assert one.size("packs/p2") is None
    with pytest.raises(NotFound):
        two.get("packs/p1")
    one.delete("packs/p2")
    assert two.get("packs/p2") == b"two"


# --- object-store failures ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", REMOTES)
def test_missing_bucket_is_unavailable(kind: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(_SERVER_FIXTURE[kind])
    store = open_blobstore(server.url(f"no-such-bucket-{uuid.uuid4().hex[:8]}", "p"))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="does not exist") as err:
        store.put("x", b"1")
    assert "no-such-bucket" in str(err.value)
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.get("x")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        store.size("x")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        list(store.list())
    assert time.monotonic() - started < 10


@pytest.mark.s3
def test_wrong_credentials_are_unavailable(s3_real_server: Any) -> None:
    url = s3_real_server.blob_url()
    store = open_blobstore(url, key=S3_ACCESS_KEY, secret="not-the-secret-key-0123456789")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="refused") as err:
        store.put("x", b"1")
    assert "not-the-secret" not in str(err.value)
    with pytest.raises(StoreUnavailable, match="refused"):
        store.get("x")
    assert time.monotonic() - started < 5


def test_unreachable_s3_endpoint_fails_quickly() -> None:
    url = f"s3://bucket/p?endpoint_url=http://127.0.0.1:{free_port()}&region=us-west-2"
    store = open_blobstore(url, max_attempts=3, base_delay=0.05, key="k" * 20, secret="s" * 30)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="after 3 attempts") as err:
        store.get("x")
    assert "127.0.0.1" in str(err.value)
    with pytest.raises(StoreUnavailable):
        store.put("x", b"1")
    assert time.monotonic() - started < 10


def test_missing_credentials_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_blobstore(f"s3://bucket/p?endpoint_url=http://127.0.0.1:{free_port()}&region=us-west-2")
    with pytest.raises(StoreUnavailable, match=r"no usable credentials.*AWS_ACCESS_KEY_ID"):
        store.get("x")


# --- URLs and options ---------------------------------------------------------------------------


def _innermost(store: BlobStore) -> Any:
    while hasattr(store, "inner"):
        store = store.inner
    return store


def test_remote_stores_are_wrapped_local_ones_not(tmp_path: Path) -> None:
    assert isinstance(open_blobstore("memory://wrap-test"), FsspecBlobStore)
    assert isinstance(open_blobstore(tmp_path.as_uri()), FsspecBlobStore)
    s3 = open_blobstore("s3://bucket/p?endpoint_url=http://127.0.0.1:1&region=us-west-2")
    assert isinstance(s3, RetryingBlobStore) and s3.max_attempts == 5
    assert isinstance(s3.inner, BoundedBlobStore) and s3.inner.limit == 8
    assert s3.url == "s3://bucket/p?endpoint_url=http://127.0.0.1:1&region=us-west-2"


def test_s3_options_from_url_and_keywords() -> None:
    url = "s3://bucket/pre/fix?endpoint_url=http://127.0.0.1:9&region=us-west-2&anon=true"
    inner = _innermost(open_blobstore(url))
    assert inner.root == "bucket/pre/fix"
    assert inner.fs.endpoint_url == "http://127.0.0.1:9"
    assert inner.fs.client_kwargs["region_name"] == "us-west-2"
    assert inner.fs.anon is True
    assert inner.fs.config_kwargs["s3"]["addressing_style"] == "path"
    inner = _innermost(open_blobstore(url, client_kwargs={"region_name": "eu-west-1"}, anon=False))
    assert inner.fs.client_kwargs["region_name"] == "eu-west-1"
    assert inner.fs.anon is False
    inner = _innermost(open_blobstore("s3://bucket?region=eu-west-1&addressing_style=virtual"))
    assert inner.root == "bucket"
    assert inner.fs.config_kwargs["s3"]["addressing_style"] == "virtual"


def test_gcs_options_from_url() -> None:
    inner = _innermost(open_blobstore("gs://bucket/pre?endpoint_url=http://127.0.0.1:9&project=p&token=anon"))
    assert inner.root == "bucket/pre"
    assert inner.fs._endpoint == "http://127.0.0.1:9"
    assert inner.fs.project == "p"


def test_unknown_url_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown option 'secret'"):
        open_blobstore("s3://bucket/p?secret=abc")
    with pytest.raises(UsageError, match="not a boolean"):
        open_blobstore("s3://bucket/p?anon=maybe")


def test_redact_url() -> None:
    assert redact_url("s3://b/p?endpoint_url=http://u:pw@host:9&region=r") == (
        "s3://b/p?endpoint_url=http://***@host:9&region=r"
    )
    assert redact_url("gs://b/p?token=/home/me/key.json") == "gs://b/p?token=***"
    assert redact_url("gs://b/p?token=anon") == "gs://b/p?token=anon"
    assert redact_url("file:///data/store") == "file:///data/store"


# --- RetryingBlobStore and BoundedBlobStore (fake store that fails on cue) ----------------------


class FlakyStore:
    """A memory BlobStore whose next ``failures`` calls raise ``error``."""

    url = "s3://flaky/store"

    def __init__(self, failures: int = 0, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionResetError("connection reset by peer")
        self.calls = 0
        self.blobs: dict[str, bytes] = {}

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error

    def put(self, name: str, data: bytes) -> None:
        self._maybe_fail()
        self.blobs[name] = data

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        self._maybe_fail()
        if name not in self.blobs:
            raise NotFound(f"blob {name} not found")
        return self.blobs[name][start:end]

    def size(self, name: str) -> int | None:
        self._maybe_fail()
        return len(self.blobs[name]) if name in self.blobs else None

    def list(self, prefix: str = "") -> Iterator[str]:
        self._maybe_fail()
        return iter(sorted(n for n in self.blobs if n.startswith(prefix)))

    def delete(self, name: str) -> None:
        self._maybe_fail()
        self.blobs.pop(name, None)


def _retrying(inner: FlakyStore, max_attempts: int = 5) -> tuple[RetryingBlobStore, list[float]]:
    sleeps: list[float] = []
    return RetryingBlobStore(inner, max_attempts=max_attempts, base_delay=0.2, sleep=sleeps.append), sleeps


def test_retry_then_succeed() -> None:
    flaky = FlakyStore(failures=3)
    store, sleeps = _retrying(flaky)
    store.put("a", b"data")
    assert flaky.calls == 4
    assert flaky.blobs == {"a": b"data"}
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps, start=1):  # exponential backoff with jitter
        assert 0.2 * 2 ** (n - 1) / 2 <= delay <= 0.2 * 2 ** (n - 1)


@pytest.mark.parametrize(
    "error",
    [TimeoutError("timed out"), OSError(5, "Input/output error"), ConnectionRefusedError(111, "refused")],
)
def test_retry_each_verb(error: BaseException) -> None:
    flaky = FlakyStore()
    store, _ = _retrying(flaky)
    flaky.blobs["k"] = b"value"
    for call, expected in [
        (lambda: store.get("k", 1, 3), b"al"),
        (lambda: store.size("k"), 5),
        (lambda: list(store.list()), ["k"]),
        (lambda: store.delete("missing"), None),
    ]:
        flaky.failures, flaky.error = 1, error
        assert call() == expected


def test_not_found_is_not_retried() -> None:
    flaky = FlakyStore()
    store, sleeps = _retrying(flaky)
    with pytest.raises(NotFound):
        store.get("missing")
    assert flaky.calls == 1 and sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailable("bucket 'b' does not exist"),
        PermissionError("Forbidden"),
        FileNotFoundError("gone"),
        ValueError("bad blob name"),
    ],
)
def test_permanent_errors_are_not_retried(error: BaseException) -> None:
    flaky = FlakyStore(failures=10, error=error)
    store, sleeps = _retrying(flaky)
    with pytest.raises(type(error)):
        store.put("a", b"1")
    assert flaky.calls == 1 and sleeps == []


def test_gives_up_with_store_unavailable() -> None:
    flaky = FlakyStore(failures=100, error=TimeoutError("read timed out"))
    store, sleeps = _retrying(flaky, max_attempts=4)
    with pytest.raises(StoreUnavailable) as err:
        store.get("a")
    assert flaky.calls == 4 and len(sleeps) == 3
    assert "s3://flaky/store" in str(err.value) and "after 4 attempts" in str(err.value)
    assert isinstance(err.value.__cause__, TimeoutError)


class _HttpError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


class _ClientError(Exception):
    def __init__(self, code: str, status: int) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(5, "Input/output error"), True),
        (OSError("Please reduce your request rate. SlowDown"), True),
        (_HttpError(503), True),
        (_HttpError(429), True),
        (_HttpError(404), False),
        (_ClientError("SlowDown", 503), True),
        (_ClientError("AccessDenied", 403), False),
        (Exception("Throttling: Rate exceeded"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
        (NotFound("x"), False),
        (StoreUnavailable("x"), False),
        (ValueError("x"), False),
        (KeyError("x"), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_bounded_store_limits_concurrency() -> None:
    active = peak = 0
    lock = threading.Lock()

    class Slow(FlakyStore):
        def put(self, name: str, data: bytes) -> None:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1
            super().put(name, data)

    store = BoundedBlobStore(Slow(), limit=3)
    threads = [threading.Thread(target=store.put, args=(f"b{i}", b"x")) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3
    assert len(list(store.list())) == 12
