"""The blob store: named immutable byte strings on any fsspec filesystem.

``BlobStore`` is the narrow interface the rest of the CAS needs: five verbs, nothing
else of fsspec leaks through. Cross-cutting concerns (retries, rate limits) are wrappers
that implement the same protocol (see ``retry.py``).

Names are ``/``-separated relative paths such as ``packs/ab/ab12….pack``.

Blob URLs
---------
``file:///path``, ``memory://name``, ``s3://bucket/prefix``, ``gs://bucket/prefix``. Object-store
URLs may carry connection settings (never credentials) as query parameters, which are removed
before the path reaches fsspec::

    s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-west-2&addressing_style=path
    gs://bucket/prefix?endpoint_url=http://127.0.0.1:4443&project=test&token=anon

S3 accepts ``endpoint_url``, ``region``, ``addressing_style`` (``path``/``virtual``/``auto``),
``path_style`` (bool) and ``anon`` (bool); GCS accepts ``endpoint_url``, ``project``, ``token``
and ``anon``. Keyword options of ``open_blobstore`` override the URL's. Credentials come from the
storage libraries' usual environment variables and files; datamon never stores them.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import posixpath
import stat
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

from datamon.errors import NotFound, StoreUnavailable, UsageError

TMP_PREFIX = ".tmp-"
# Modes of what a file:// store creates, before the umask: never group- or world-writable, even
# under umask 000 (blobs are immutable; only their writer's rename and gc's unlink touch them).
FILE_MODE = 0o644
DIR_MODE = 0o755

# gcsfs reads this when it is imported: with its default ("true") every bucket operation first
# waits up to 60 s on a gRPC call that plain GCS endpoints and emulators never answer.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@runtime_checkable
class BlobStore(Protocol):
    url: str

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` atomically (readers see all of it or nothing).

        Idempotent for identical data; blobs are never modified after they are written.
        """

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of blob ``name`` (whole blob by default). Raises ``NotFound``."""

    def size(self, name: str) -> int | None:
        """Size of blob ``name`` in bytes, or ``None`` if there is no such blob."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names of all blobs under ``prefix`` (a folder-like prefix such as ``packs/``)."""

    def delete(self, name: str) -> None:
        """Remove blob ``name``; a missing blob is not an error."""


# --- URLs and storage options -------------------------------------------------------------------

_QUERY_OPTIONS = {
    "s3": ("endpoint_url", "region", "addressing_style", "path_style", "anon"),
    "gs": ("endpoint_url", "project", "token", "anon"),
}
_SCHEME_ALIASES = {"s3a": "s3", "gcs": "gs"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    return _SCHEME_ALIASES.get(scheme, scheme)


def redact_url(url: str) -> str:
    """``url`` fit for messages and logs: no password, token, signature or other secret
    (``datamon.config.redact_url``, the one masking function)."""
    from datamon.config import redact_url as redact

    return redact(url)


def _split_query(url: str) -> tuple[str, dict[str, str]]:
    """Split ``url`` into the part fsspec sees and its validated query options."""
    scheme = _scheme(url)
    if "?" not in url or scheme not in _QUERY_OPTIONS:
        return url, {}  # file:// and memory:// paths are taken as they are
    base, _, query = url.partition("?")
    allowed = _QUERY_OPTIONS[scheme]
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in allowed:
            raise UsageError(
                f"unknown option {key!r} in blob URL {redact_url(url)}",
                f"options supported for {scheme}:// URLs: {', '.join(allowed)}; "
                "credentials come from the environment, never from the URL",
            )
        options[key] = value
    return base, options


def _flag(url: str, key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(
        f"option {key}={value!r} in blob URL {redact_url(url)} is not a boolean", "use true or false"
    )


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, merging nested dicts (``client_kwargs``, ``config_kwargs``)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _s3_options(url: str, query: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {
        # datamon verifies the BLAKE3 of every object it reads; botocore's newer default
        # CRC checksums break on S3-compatible servers (rclone sends a whole-object CRC for a
        # ranged GET) and add nothing here.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        # RetryingBlobStore owns the retry policy, so attempts do not multiply across layers.
        "retries": {"mode": "standard", "total_max_attempts": 1},
        "connect_timeout": 10,
    }
    kwargs: dict[str, Any] = {"use_listings_cache": False, "config_kwargs": config}
    if "endpoint_url" in query:
        kwargs["endpoint_url"] = query["endpoint_url"]
        # Custom endpoints rarely resolve bucket subdomains; every S3-compatible server speaks path style.
        config["s3"] = {"addressing_style": "path"}
    if "path_style" in query:
        style = "path" if _flag(url, "path_style", query["path_style"]) else "auto"
        config["s3"] = {"addressing_style": style}
    if "addressing_style" in query:
        config["s3"] = {"addressing_style": query["addressing_style"]}
    if "region" in query:
        kwargs["client_kwargs"] = {"region_name": query["region"]}
    if "anon" in query:
        kwargs["anon"] = _flag(url, "anon", query["anon"])
    return kwargs


def _gs_options(url: str, query: dict[str, str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"use_listings_cache": False}
    for key in ("endpoint_url", "project", "token"):
        if key in query:
            kwargs[key] = query[key]
    if "anon" in query and _flag(url, "anon", query["anon"]):
        kwargs["token"] = "anon"
    return kwargs


def _fs_kwargs(url: str, protocol: str, query: dict[str, str], options: dict[str, Any]) -> dict[str, Any]:
    if protocol == "s3":
        base = _s3_options(url, query)
    elif protocol == "gs":
        base = _gs_options(url, query)
    else:
        base = {}
    kwargs = _merge(base, options)
    if protocol == "memory":
        kwargs.setdefault("skip_instance_cache", False)
    return kwargs


# --- errors ---------------------------------------------------------------------------------------

_CREDENTIAL_ERRORS = {
    "NoCredentialsError",  # botocore: nothing in env, files or instance metadata
    "PartialCredentialsError",
    "DefaultCredentialsError",  # google.auth: no application default credentials
    "RefreshError",  # google.auth: token refresh refused
}


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _access_error(e: BaseException) -> bool:
    if isinstance(e, PermissionError):
        return True
    if getattr(e, "code", None) in (401, 403):  # gcsfs HttpError
        return True
    # gcsfs reports HTTP 403 as a plain OSError("Forbidden: …")
    return isinstance(e, OSError) and str(e).startswith("Forbidden")


class FsspecBlobStore:
    """``BlobStore`` over an fsspec filesystem rooted at ``url``.

    ``file://`` writes go to a temporary name and are renamed into place, so a crash never
    leaves a half-written pack under its final name. Object stores (S3, GCS) give atomic
    PUTs on their own.

    On object stores a missing bucket or refused credentials raise ``StoreUnavailable`` at the
    first operation that meets them; other transport errors propagate unchanged for
    ``RetryingBlobStore`` to classify.
    """

    def __init__(self, url: str, *, context: str = "", **storage_options: Any) -> None:
        import fsspec.core

        self.url = url
        # What messages call this store: the URL without secrets, and the context it belongs to.
        self.display_url = redact_url(url) + (f" (context {context!r})" if context else "")
        fs_url, query = _split_query(url)
        kwargs = _fs_kwargs(url, _scheme(fs_url), query, storage_options)
        try:
            fs, root = fsspec.core.url_to_fs(fs_url, **kwargs)
        except (ImportError, ValueError, TypeError) as e:
            raise StoreUnavailable(
                f"cannot open blob store {self.display_url}: {e}",
                "check the URL scheme (file://, memory://, s3://, gs://) and install its extra",
            ) from e
        self.fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self._local = protocol in ("file", "local")
        self._remote = protocol not in ("file", "local", "memory")
        self.bucket = self.root.split("/", 1)[0] if self._remote else ""
        self._bucket_ok = False
        if self._local:
            try:
                _makedirs(self.root)
            except OSError as e:
                raise StoreUnavailable(
                    f"cannot create blob store {self.display_url}: {e.strerror or e}",
                    "fix the blob URL of the context (`datamon context get`) or the directory's permissions",
                ) from None

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad blob name {name!r}")
        return f"{self.root}/{name}" if self.root else name

    # Object stores answer "not found" both for a missing blob and for a missing bucket; the
    # bucket is checked once, on the first "not found", so a typo in the URL is not mistaken
    # for an empty store.
    def _missing_bucket(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"bucket {self.bucket!r} of blob store {self.display_url} does not exist",
            "create the bucket, or fix the blob URL of the context (`datamon context get`)",
        )

    def _check_bucket(self) -> None:
        if self._bucket_ok or not self._remote:
            return
        try:
            self.fs.info(self.bucket)
        except FileNotFoundError:
            raise self._missing_bucket() from None
        except Exception as e:
            if _access_error(e):
                # Credentials that may read objects but not the bucket itself: assume it exists.
                self._bucket_ok = True
                return
            if (err := self._unavailable(e)) is not None:
                raise err from e
            raise
        self._bucket_ok = True

    def _unavailable(self, e: Exception) -> StoreUnavailable | None:
        """A ``StoreUnavailable`` for refused or missing credentials, which no retry can fix."""
        if self.protocol in ("gs", "gcs"):
            where = "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`"
        else:
            where = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
        if _access_error(e):
            return StoreUnavailable(
                f"access to blob store {self.display_url} was refused: {_first_line(e)}",
                f"check the credentials ({where}) and the bucket's permissions",
            )
        if any(c.__name__ in _CREDENTIAL_ERRORS for c in type(e).__mro__):
            return StoreUnavailable(
                f"no usable credentials for blob store {self.display_url}: {_first_line(e)}",
                f"provide credentials through {where}",
            )
        return None

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if self._local:
            parent = os.path.dirname(path)
            _makedirs(parent)
            tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return
        parent = posixpath.dirname(path)
        if self.protocol == "memory" and parent:
            self.fs.makedirs(parent, exist_ok=True)
        try:
            # s3fs switches to a multipart upload at 100 MiB and gcsfs to a resumable one at
            # 50 MiB; both commit the object atomically when the last part lands.
            self.fs.pipe_file(path, data)
        except FileNotFoundError:
            if self._remote:
                raise self._missing_bucket() from None
            raise
        except Exception as e:
            if (err := self._unavailable(e)) is not None:
                raise err from e
            raise

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        path = self._path(name)
        if end is not None and end <= (start or 0):
            # An empty range: an HTTP Range header for it would be ignored and return everything.
            if self.size(name) is None:
                raise NotFound(f"blob {name} not found in {self.display_url}")
            return b""
        if self._local:
            try:
                with open(path, "rb") as f:
                    if start:
                        f.seek(start)
                    if end is None:
                        return f.read()
                    return f.read(end - (start or 0))
            except FileNotFoundError:
                raise NotFound(f"blob {name} not found in {self.display_url}") from None
        try:
            if start is None and end is None:
                data: bytes = self.fs.cat_file(path)
            else:
                data = self.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError:
            self._check_bucket()
            raise NotFound(f"blob {name} not found in {self.display_url}") from None
        except Exception as e:
            if (err := self._unavailable(e)) is not None:
                raise err from e
            raise
        return data

    def size(self, name: str) -> int | None:
        path = self._path(name)
        if self._local:
            try:
                return os.stat(path).st_size
            except FileNotFoundError:
                return None
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            self._check_bucket()
            return None
        except Exception as e:
            if (err := self._unavailable(e)) is not None:
                raise err from e
            raise
        if info.get("type") == "directory":
            return None
        return int(info["size"])

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = prefix.strip("/")
        base = self._path(folder) if folder else self.root
        try:
            found = self.fs.find(base) if base else self.fs.find("")
        except FileNotFoundError:
            self._check_bucket()
            return
        except Exception as e:
            if (err := self._unavailable(e)) is not None:
                raise err from e
            raise
        root = self.root.lstrip("/")
        want = folder + "/" if folder else ""
        for p in sorted(found):
            rel = p.lstrip("/")
            if root:
                if not rel.startswith(root + "/"):
                    continue
                rel = rel[len(root) + 1 :]
            # a folder prefix: "packs/a" must not list "packs/ab/…"
            if not rel.startswith(want):
                continue
            if rel.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue
            yield rel

    def list_temporaries(self, older_than_ns: int) -> builtins.list[str]:
        """Leftover temporaries of a local store (a writer killed between write and rename) last
        modified before ``older_than_ns`` (epoch ns), as names for ``remove_temporary``. Object
        stores write atomically and never leave any: empty for them."""
        if not self._local:
            return []
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                if not f.startswith(TMP_PREFIX):
                    continue
                full = os.path.join(dirpath, f)
                try:
                    st = os.lstat(full)
                except FileNotFoundError:
                    continue
                if st.st_mtime_ns < older_than_ns:
                    out.append(os.path.relpath(full, self.root).replace(os.sep, "/"))
        return sorted(out)

    def remove_temporary(self, name: str) -> None:
        """Remove one name ``list_temporaries`` returned (only temporaries: anything else is refused)."""
        if not self._local or not name.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            raise ValueError(f"{name!r} is not a temporary of this store")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))

    def delete(self, name: str) -> None:
        path = self._path(name)
        if self._local:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            self._check_bucket()
        except Exception as e:
            if (err := self._unavailable(e)) is not None:
                raise err from e
            raise


def _makedirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` with every created directory at most ``DIR_MODE``
    (``os.makedirs`` gives intermediate directories ``0777 & ~umask``)."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, stat.S_IMODE(os.stat(d).st_mode) & DIR_MODE)


def open_blobstore(
    url: str,
    *,
    max_attempts: int | None = None,
    base_delay: float = 0.2,
    max_requests: int | None = 8,
    context: str = "",
    **storage_options: Any,
) -> BlobStore:
    """Open the blob store named by a URL (``file:///…``, ``memory://…``, ``s3://…``, ``gs://…``).

    Object stores come wrapped: at most ``max_requests`` concurrent requests
    (``BoundedBlobStore``), and transient errors retried up to ``max_attempts`` times with
    exponential backoff from ``base_delay`` seconds (``RetryingBlobStore``). ``max_attempts``
    defaults to 5 for S3, and to 1 for GCS because gcsfs already retries every transient error
    six times (about 30 s of backoff) and cannot be told not to. ``storage_options`` go to the
    fsspec filesystem and override options in the URL's query. ``context`` (a context name) is
    named in error messages next to the URL.

    Opening connects to nothing: a missing bucket, refused credentials or an unreachable
    endpoint raise ``StoreUnavailable`` at the first operation. A malformed URL raises
    ``UsageError``; an unknown scheme or a missing extra raises ``StoreUnavailable``.
    """
    store: BlobStore = FsspecBlobStore(url, context=context, **storage_options)
    scheme = _scheme(url)
    if scheme in ("file", "local", "memory"):
        return store
    from datamon.cas.retry import BoundedBlobStore, RetryingBlobStore

    if max_requests:
        store = BoundedBlobStore(store, max_requests)
    if max_attempts is None:
        max_attempts = 1 if scheme == "gs" else 5
    return RetryingBlobStore(store, max_attempts=max_attempts, base_delay=base_delay)
