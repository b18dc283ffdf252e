"""Uploading one bundle from many machines on a Dask cluster (``pip install 'datamon[dask]'``).

``upload(context, repo, source, client=…, splits=N)`` lists ``source`` (a directory every worker
can read at the same path, or an ``s3://``/``gs://`` prefix), cuts the sorted listing into ``N``
contiguous splits of about equal bytes, opens a diamond, runs one ``split add`` per part as a
Dask task (a failed task is retried by Dask; a retry re-uses the split id, so it replaces the
failed attempt), and commits
the diamond into one bundle. Workers open the context from its URLs: they need the same access
to the blob store, the metadata database and the source as the caller (credentials come from
each worker's environment). A split that still fails leaves the diamond open: its id is in the
error, and ``datamon diamond split add --split-id …`` then ``datamon diamond commit`` finish it
by hand (or ``datamon diamond cancel`` drops it).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from datamon.errors import DatamonError, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.diamond import CommitResult
    from datamon.api.remotesrc import RemoteFile

PER_FILE_WEIGHT: Final = 16 << 10  # what one file costs besides its bytes, in bytes (balancing)
DEFAULT_RETRIES: Final = 3


@dataclass(frozen=True)
class ContextSpec:
    """What a worker needs to open the caller's context (no open connections cross the wire)."""

    blob_url: str
    meta_url: str
    name: str
    contributor_name: str
    contributor_email: str
    compression_level: int | None

    @classmethod
    def of(cls, ctx: Context) -> ContextSpec:
        who = ctx.contributor
        return cls(ctx.blob_url, ctx.meta_url, ctx.name, who.name, who.email, ctx.compression_level)

    def open(self) -> Context:
        from datamon.api.context import Context
        from datamon.config import Contributor

        return Context(
            self.blob_url,
            self.meta_url,
            name=self.name,
            contributor=Contributor(self.contributor_name, self.contributor_email),
            compression_level=self.compression_level,
        )


@dataclass(frozen=True)
class Item:
    rel: str
    size: int


def list_local(root: str) -> list[Item]:
    """Files and symlinks below ``root``, and its empty directories (so that they are uploaded
    too), with their sizes. Symlinks are not followed."""
    out: list[Item] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        here = os.path.join(root, rel) if rel else root
        with os.scandir(here) as it:
            entries = list(it)
        if not entries and rel:
            out.append(Item(rel, 0))
        for de in entries:
            sub = f"{rel}/{de.name}" if rel else de.name
            st = de.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(sub)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out.append(Item(sub, st.st_size if stat.S_ISREG(st.st_mode) else 0))
    out.sort(key=lambda i: i.rel)
    return out


def partition(items: Sequence[Any], n: int, size_of: Any = lambda i: i.size) -> list[list[Any]]:
    """``items`` (in path order) cut into at most ``n`` contiguous runs of about equal weight
    (bytes plus ``PER_FILE_WEIGHT`` a file): an item goes to the part where the middle of its
    weight falls, so parts differ by at most about one item's weight. Contiguous runs of a sorted
    listing share few directories: the commit reads and merges only the boundary directories and
    reuses every other subtree as it is. Empty parts are dropped."""
    if n < 1:
        raise UsageError("--splits must be at least 1")
    weights = [size_of(it) + PER_FILE_WEIGHT for it in items]
    total = sum(weights) or 1
    parts: list[list[Any]] = [[] for _ in range(n)]
    acc = 0
    for it, w in zip(items, weights, strict=True):
        parts[min(n - 1, (2 * acc + w) * n // (2 * total))].append(it)
        acc += w
    return [p for p in parts if p]


def split_task(
    spec: ContextSpec,
    repo: str,
    diamond: str,
    source: str,
    split: str,
    files: list[str] | None,
    entries: list[RemoteFile] | None,
    concurrency: int | None,
) -> dict[str, Any]:
    """One split, on a worker: upload ``files`` (local) or ``entries`` (remote) of ``source``."""
    from datamon.api.diamond import add_split

    with spec.open() as ctx:
        r = add_split(
            ctx, repo, diamond, source, split=split, files=files, entries=entries, concurrency=concurrency
        )
        return {"split": r.split.id, "files": r.upload.files, "bytes": r.upload.bytes, "seconds": r.seconds}


class SplitsFailed(DatamonError):
    """Some splits failed even after their retries; the diamond stays open."""


def upload(
    context: Context | str | None,
    repo: str,
    source: str | os.PathLike[str],
    *,
    client: Any,
    message: str,
    label: str | None = None,
    splits: int | None = None,
    retries: int = DEFAULT_RETRIES,
    conflicts: str = "fail",
    tag: str = "",
    files: Sequence[str] | None = None,
    concurrency: int | None = None,
) -> CommitResult:
    """Upload ``source`` as one bundle of ``repo`` with ``splits`` Dask tasks (default: one per
    worker thread of ``client``), then commit. ``context`` is a ``Context`` or a context name.
    Raises ``SplitsFailed`` naming the diamond and the failed split ids if a split still fails
    after ``retries`` retries."""
    from datamon.api import diamond as dia
    from datamon.api.context import Context, connect
    from datamon.api.remotesrc import is_remote, list_source, open_source, select

    ctx = context if isinstance(context, Context) else connect(context)
    ctx.meta.get_repo(repo)
    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    src = os.fspath(source)
    if is_remote(src):
        listed: list[Any] = list_source(open_source(src))
        if files is not None:

            def missing(path: str, err: OSError) -> None:
                raise UsageError(f"cannot read {path}: {err.strerror or err}", "fix the list of files")

            listed = select(listed, files, missing)
    else:
        from datamon.api.localtree import check_root

        src = check_root(src)
        if files is not None:
            listed = [Item(f, _local_size(src, f)) for f in files if f.strip()]
        else:
            listed = list_local(src)
    if not listed:
        raise UsageError(f"nothing to upload in {src}")
    if splits is None:
        splits = max(1, sum(client.nthreads().values()))
    parts = partition(listed, splits)
    spec = ContextSpec.of(ctx)
    d = dia.initialize(ctx, repo, tag=tag or "dask")
    remote = is_remote(src)
    futures = []
    for i, part in enumerate(parts):
        split = f"part-{i:04d}"
        futures.append(
            client.submit(
                split_task,
                spec,
                repo,
                d.id,
                src,
                split,
                None if remote else [p.rel for p in part],
                part if remote else None,
                concurrency,
                key=f"datamon-split-{d.id}-{split}",
                retries=retries,
                pure=False,
            )
        )
    failed: list[str] = []
    first: BaseException | None = None
    for i, fut in enumerate(futures):
        try:
            fut.result()
        except Exception as e:
            failed.append(f"part-{i:04d}")
            first = first or e
    if failed:
        raise SplitsFailed(
            f"{len(failed)} of {len(futures)} splits of diamond {d.id} failed after {retries} retries "
            f"({', '.join(failed[:10])}): {first}",
            f"re-run them with `datamon diamond split add --repo {repo} --diamond {d.id} --split-id ID "
            "--path …`, then `datamon diamond commit`; or `datamon diamond cancel`",
        )
    return dia.commit(ctx, repo, d.id, message=message, label=label, conflicts=conflicts)


def _local_size(root: str, rel: str) -> int:
    try:
        st = os.lstat(os.path.join(root, rel))
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
