"""``Context``: an open pair of stores (blob + metadata) and the entry point of the Python API.

The metadata store and the content store open lazily, so a command that only reads a
label never touches the blob store. Every verb is a function in its own module taking the
context first; the methods here are the same verbs for notebooks and pipelines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from datamon.config import Contributor

if TYPE_CHECKING:
    from datamon.api.bundles import Entry
    from datamon.api.download import DownloadResult
    from datamon.api.runner import Run
    from datamon.api.upload import UploadResult
    from datamon.cas.store import ContentStore
    from datamon.meta.records import BundleRecord, LabelRecord, RepoRecord
    from datamon.meta.store import MetadataStore


class Context:
    def __init__(
        self,
        blob_url: str,
        meta_url: str,
        *,
        name: str = "",
        cache_dir: str | os.PathLike[str] | None = None,
        cache_bytes: int = 1 << 30,
        contributor: Contributor | None = None,
        compression_level: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name or blob_url
        self._named = name  # named in store errors, so the user knows which context to fix
        self.blob_url = blob_url
        self.meta_url = meta_url
        self.cache_dir = str(cache_dir) if cache_dir else None
        self.cache_bytes = cache_bytes
        self._contributor = contributor
        self.compression_level = compression_level
        self.state_dir = Path(state_dir) if state_dir else None  # stat cache lives here

    @cached_property
    def meta(self) -> MetadataStore:
        """The metadata store. For SQLite, hot reads skip SQLAlchemy (``meta/quick.py``)."""
        if self.meta_url.startswith("sqlite"):
            from typing import cast

            from datamon.meta.quick import QuickMeta

            return cast("MetadataStore", QuickMeta(self.meta_url, context=self._named))
        from datamon.meta.store import MetadataStore

        return MetadataStore(self.meta_url, context=self._named)

    @cached_property
    def cas(self) -> ContentStore:
        from datamon.cas.blobstore import open_blobstore
        from datamon.cas.store import DEFAULT_LEVEL, ContentStore

        blobs = open_blobstore(self.blob_url, context=self._named)
        level = DEFAULT_LEVEL if self.compression_level is None else self.compression_level
        return ContentStore(
            blobs, self.meta, cache_dir=self.cache_dir, cache_bytes=self.cache_bytes, level=level
        )

    @property
    def contributor(self) -> Contributor:
        if self._contributor is None:
            from datamon import config

            self._contributor = config.contributor()
        return self._contributor

    def close(self) -> None:
        if "meta" in self.__dict__:
            self.meta.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the verbs, for notebooks ----------------------------------------------------------
    def create_repo(self, repo: str, description: str = "") -> RepoRecord:
        who = self.contributor
        return self.meta.create_repo(repo, description, creator_name=who.name, creator_email=who.email)

    def list_repos(self) -> list[RepoRecord]:
        return self.meta.list_repos()

    def upload(self, repo: str, path: str | os.PathLike[str], message: str, **kw: Any) -> UploadResult:
        from datamon.api.upload import upload

        return upload(self, repo, path, message=message, **kw)

    def download(self, repo: str, destination: str | os.PathLike[str], **kw: Any) -> DownloadResult:
        from datamon.api.download import download

        return download(self, repo, destination, **kw)

    def bundle(self, repo: str, bundle: str | None = None, label: str | None = None) -> BundleRecord:
        from datamon.api.bundles import resolve

        check_ref(repo, bundle, label)
        return resolve(self, repo, bundle=bundle, label=label)

    def list_bundles(self, repo: str) -> list[BundleRecord]:
        return self.meta.list_bundles(repo)

    def entries(self, repo: str, bundle: str | None = None, label: str | None = None) -> Iterator[Entry]:
        from datamon.api.bundles import iter_entries, resolve

        check_ref(repo, bundle, label)
        return iter_entries(self, resolve(self, repo, bundle=bundle, label=label))

    def open_file(
        self, repo: str, path: str, bundle: str | None = None, label: str | None = None
    ) -> BinaryIO:
        from datamon.api.bundles import open_file

        check_ref(repo, bundle, label)
        return open_file(self, repo, path, bundle=bundle, label=label)

    def set_label(self, repo: str, label: str, bundle: str, **kw: Any) -> LabelRecord:
        from datamon.api.labels import set_label

        return set_label(self, repo, label, bundle, **kw)

    def get_label(self, repo: str, label: str) -> LabelRecord:
        return self.meta.get_label(repo, label)

    def query(self, sql: str, **kw: Any) -> list[dict[str, Any]]:
        """Rows of a read-only SQL query over the views ``files``, ``bundles``, ``labels``,
        ``label_history``, ``repos`` (docs/query.md), as dicts."""
        from datamon.api.query import query

        return query(self, sql, **kw)

    def iter_query(self, sql: str, **kw: Any) -> Iterator[dict[str, Any]]:
        """``query``, streamed."""
        from datamon.api.query import iter_query

        return iter_query(self, sql, **kw)

    def query_df(self, sql: str, **kw: Any) -> Any:
        """``query`` as a pandas DataFrame (needs pandas)."""
        from datamon.api.query import query_df

        return query_df(self, sql, **kw)

    def slice(self, to_repo: str, message: str, **kw: Any) -> Any:
        """A bundle of chosen files of other bundles, moving no data (``api/slice.py``): give
        ``repo=``, ``bundle=``/``label=`` and ``where=``, or ``query=``."""
        from datamon.api.slice import slice_bundle

        return slice_bundle(self, message=message, to_repo=to_repo, **kw)

    def set_schema(self, repo: str, schema: Mapping[str, Any]) -> Any:
        """Set ``repo``'s schema (docs/query.md#schemas); ``{}`` lifts it."""
        from datamon.api.attributes import set_schema

        return set_schema(self, repo, schema)

    def run(self, inputs: Mapping[str, str], outputs: Mapping[str, str], **kw: Any) -> Run:
        """A recorded pipeline step, for ``with``: ``r.input(name)`` is a directory holding that
        input, ``r.output(name)`` a directory uploaded as a bundle when the block ends (nothing
        is uploaded if it raises; the run is recorded either way). See ``api/runner.py``."""
        from datamon.api.runner import Run

        return Run(self, inputs, outputs, **kw)


def check_ref(repo: str, bundle: str | None, label: str | None) -> None:
    """Refuse an empty or invalid repo, bundle or label reference before it is resolved: an empty
    ``label=""`` must never mean "the latest bundle". Raises ``UsageError``."""
    from datamon.errors import UsageError
    from datamon.names import check_lookup, check_name

    check_lookup("repo", repo)
    if label is not None:
        check_name("label", label)
    if bundle is not None and not bundle.strip():
        raise UsageError("the bundle id is empty", "give a bundle id or a prefix of 6+ hex characters")


def connect(context: str | None = None, **kwargs: Any) -> Context:
    """Open a context from ``$DATAMON_HOME/config.toml`` (the embedded default when unconfigured)."""
    from datamon import config

    cc = config.get_context(context)
    h = config.ensure_home()  # 0700: it holds the config, the default database and the caches
    kwargs.setdefault("cache_dir", h / "cache" / "chunks")
    kwargs.setdefault("state_dir", h / "cache")
    kwargs.setdefault("cache_bytes", config.cache_bytes())
    level = config.compression_level()
    if level is not None:
        kwargs.setdefault("compression_level", level)
    return Context(cc.blob_url, cc.meta_url, name=cc.name, **kwargs)
