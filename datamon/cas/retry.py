"""Wrappers that add retries and a concurrency limit to any ``BlobStore``.

Each wrapper implements the same five verbs as the store it wraps, so they stack:
``RetryingBlobStore(BoundedBlobStore(FsspecBlobStore(url)))`` — the limit sits inside the retries
so that a request sleeping in backoff does not hold a slot.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from datamon.cas.blobstore import BlobStore, redact_url
from datamon.errors import DatamonError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Exception class names (matched along the MRO, so that no storage library has to be imported)
# that mean "the request may succeed if sent again".
_TRANSIENT_NAMES = {
    # botocore
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "HTTPClientError",
    "ResponseStreamingError",
    "IncompleteReadError",
    # aiohttp
    "ClientConnectionError",
    "ClientPayloadError",
    "ServerTimeoutError",
    # requests
    "Timeout",
    "ChunkedEncodingError",
    # fsspec, http.client
    "FSTimeoutError",
    "IncompleteRead",
    "RemoteDisconnected",
}
# Server answers that mean "busy or broken for now, try later" (S3 error codes and messages).
_TRANSIENT_TEXT = (
    "SlowDown",
    "reduce your request rate",
    "Throttl",
    "TooManyRequests",
    "Too Many Requests",
    "RequestTimeout",
    "ServiceUnavailable",
    "Service Unavailable",
    "InternalError",
    "Internal Server Error",
    "Bad Gateway",
    "Gateway Timeout",
)
_PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
)


def _status(e: BaseException) -> int | None:
    """The HTTP status an exception carries, if any (gcsfs, aiohttp, requests, botocore)."""
    for attr in ("status", "status_code", "code"):
        value = getattr(e, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def is_transient(e: BaseException) -> bool:
    """Whether sending the same request again may succeed.

    Yes for connection errors, timeouts, HTTP 5xx/408/429 and throttling answers, and any
    ``OSError`` other than not-found/permission-like ones. No for datamon's own errors
    (``NotFound``, ``StoreUnavailable`` for a missing bucket or refused credentials) and for
    everything else, which is a bug or a permanent refusal.
    """
    if isinstance(e, DatamonError):
        return False
    if isinstance(e, _PERMANENT_OS_ERRORS):
        return False
    if isinstance(e, (TimeoutError, ConnectionError)):
        return True
    if any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__):
        return True
    status = _status(e)
    if status is not None:
        return status >= 500 or status in (408, 429)
    text = str(e)
    if any(t in text for t in _TRANSIENT_TEXT):
        return True
    return isinstance(e, OSError)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class RetryingBlobStore:
    """``BlobStore`` that retries transient errors of ``inner`` with exponential backoff and jitter.

    Attempt ``n`` (from 1) that fails transiently sleeps a random time between half and all of
    ``min(max_delay, base_delay * 2**(n-1))`` before the next. Errors that no retry can fix
    (``NotFound``, ``StoreUnavailable``, bad names, bugs) are raised at once. After
    ``max_attempts`` transient failures it raises ``StoreUnavailable`` naming the store's URL.
    Idempotence makes retrying safe: blobs are immutable, so a repeated put writes the same bytes.
    """

    def __init__(
        self,
        inner: BlobStore,
        max_attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.inner = inner
        self.url = inner.url
        self.display_url: str = getattr(inner, "display_url", None) or redact_url(inner.url)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as e:
                if not is_transient(e):
                    raise
                if attempt >= self.max_attempts:
                    tries = "1 attempt" if attempt == 1 else f"{attempt} attempts"
                    raise StoreUnavailable(
                        f"blob store {self.display_url} failed to {what} after {tries}: {_one_line(e)}",
                        "check the endpoint, the network and the storage service's status, then retry",
                    ) from e
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay = random.uniform(delay / 2, delay)
                log.debug("%s: %s failed (%s); retry %d in %.2fs", self.url, what, e, attempt, delay)
                self._sleep(delay)
                attempt += 1

    def put(self, name: str, data: bytes) -> None:
        self._call(f"put {name}", lambda: self.inner.put(name, data))

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._call(f"get {name}", lambda: self.inner.get(name, start, end))

    def size(self, name: str) -> int | None:
        return self._call(f"stat {name}", lambda: self.inner.size(name))

    def list(self, prefix: str = "") -> Iterator[str]:
        # Materialised so that a retry never yields a name twice; errors surface at the call.
        names = self._call(f"list {prefix or '/'}", lambda: list(self.inner.list(prefix)))
        return iter(names)

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.inner.delete(name))


class BoundedBlobStore:
    """``BlobStore`` that lets at most ``limit`` requests to ``inner`` run at once (threads wait)."""

    def __init__(self, inner: BlobStore, limit: int = 8) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.inner = inner
        self.url = inner.url
        self.display_url: str = getattr(inner, "display_url", None) or redact_url(inner.url)
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def put(self, name: str, data: bytes) -> None:
        with self._slots:
            self.inner.put(name, data)

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        with self._slots:
            return self.inner.get(name, start, end)

    def size(self, name: str) -> int | None:
        with self._slots:
            return self.inner.size(name)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._slots:
            names = list(self.inner.list(prefix))
        return iter(names)

    def delete(self, name: str) -> None:
        with self._slots:
            self.inner.delete(name)
