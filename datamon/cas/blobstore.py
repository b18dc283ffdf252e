"""The blob store: named immutable byte strings on any fsspec filesystem.

``BlobStore`` is the narrow interface the rest of the CAS needs: five verbs, nothing
else of fsspec leaks through. Cross-cutting concerns (retries, rate limits) are wrappers
that implement the same protocol (see ``retry.py``).

Names are ``/``-separated relative paths such as ``packs/ab/ab12….pack``.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from datamon.errors import NotFound, StoreUnavailable


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


def _fs_kwargs(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(options)
    if protocol == "memory":
        kwargs.setdefault("skip_instance_cache", False)
    return kwargs


class FsspecBlobStore:
    """``BlobStore`` over an fsspec filesystem rooted at ``url``.

    ``file://`` writes go to a temporary name and are renamed into place, so a crash never
    leaves a half-written pack under its final name. Object stores (S3, GCS) give atomic
    PUTs on their own.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec.core

        self.url = url
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as e:
            raise StoreUnavailable(
                f"cannot open blob store {url}: {e}",
                "check the URL scheme (file://, memory://, s3://, gs://) and install its extra",
            ) from e
        self.fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self._local = protocol in ("file", "local")
        if self._local:
            os.makedirs(self.root, exist_ok=True)

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"bad blob name {name!r}")
        return f"{self.root}/{name}" if self.root else name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        if self._local:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
        parent = posixpath.dirname(path)
        if self.protocol == "memory" and parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)

    def get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        path = self._path(name)
        if self._local:
            try:
                with open(path, "rb") as f:
                    if start:
                        f.seek(start)
                    if end is None:
                        return f.read()
                    return f.read(end - (start or 0))
            except FileNotFoundError:
                raise NotFound(f"blob {name} not found in {self.url}") from None
        try:
            if start is None and end is None:
                data: bytes = self.fs.cat_file(path)
            else:
                data = self.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError:
            raise NotFound(f"blob {name} not found in {self.url}") from None
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
            return None
        return int(info["size"])

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            found = self.fs.find(base) if base else self.fs.find("")
        except FileNotFoundError:
            return
        root = self.root.lstrip("/")
        for p in sorted(found):
            rel = p.lstrip("/")
            if root:
                if not rel.startswith(root + "/"):
                    continue
                rel = rel[len(root) + 1 :]
            if rel.rsplit("/", 1)[-1].startswith(".tmp-"):
                continue
            yield rel

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
            pass


def open_blobstore(url: str, **storage_options: Any) -> BlobStore:
    """Open the blob store named by an fsspec URL (``file:///…``, ``memory://…``, ``s3://…``, ``gs://…``)."""
    return FsspecBlobStore(url, **storage_options)
