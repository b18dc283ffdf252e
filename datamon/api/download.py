"""``download``: a bundle (or part of it) becomes a local directory, every byte verified.

The writing itself (local-write rules, streaming, bounded memory) is ``api/materialize.py``;
this module checks the destination, records it in the download registry (with a digest of
every directory it completes, for ``update``) and finishes interrupted downloads.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datamon.api.bundles import Entry, iter_entries, lookup, resolve, split_path
from datamon.api.materialize import Materializer, materialize
from datamon.api.progress import NoProgress, Progress
from datamon.errors import UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord


@dataclass
class DownloadResult:
    bundle: BundleRecord
    destination: str
    files: int
    bytes: int
    seconds: float


def _not_a_directory(dest: str) -> UsageError:
    return UsageError(f"destination {dest!r} exists and is not a directory", "choose a directory")


def download(
    ctx: Context,
    repo: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
    name_filter: str | None = None,
    force_dest: bool = False,
    concurrency: int | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Write the bundle's files (those whose path matches ``name_filter``, a regex searched
    in the path) under ``destination``, with modes, mtimes, symlinks and empty directories.

    Raises ``UsageError`` if the destination is not empty (unless ``force_dest``, or it is
    an interrupted download of this same bundle: that is finished like ``update``),
    ``NotFound`` for unknown repo/bundle/label, ``IntegrityError`` if stored bytes are bad.
    The destination is recorded in the download registry before anything is written.
    """
    from datamon.api.downloads import Registry, registered

    t0 = time.perf_counter()
    dest = os.path.abspath(os.fspath(destination))
    pattern = None
    if name_filter:
        try:
            pattern = re.compile(name_filter)
        except re.error as e:
            raise UsageError(
                f"--name-filter {name_filter!r} is not a valid regular expression: {e}"
            ) from None
    b = resolve(ctx, repo, bundle=bundle, label=label)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise _not_a_directory(dest)
    rec = registered(ctx.state_dir, dest) if os.path.isdir(dest) else None
    nonempty = os.path.isdir(dest) and any(os.scandir(dest))
    if nonempty and not force_dest:
        same = rec is not None and not rec.adopted and (rec.repo, rec.bundle) == (repo, b.id)
        if same and rec is not None and name_filter is None and rec.name_filter is None:
            return _resume(ctx, repo, dest, b, progress, concurrency, t0)
        if rec is not None and not rec.adopted:
            raise UsageError(
                f"destination {dest!r} is not empty: it holds a download of bundle {rec.bundle[:12]}"
                f" of repo {rec.repo}",
                f"run `datamon bundle update --repo {repo} --bundle {b.id[:12]} --destination {dest}`"
                " to make it this bundle, or choose an empty directory",
            )
        raise UsageError(
            f"destination {dest!r} is not empty",
            "choose an empty or new directory, or pass --force-dest to overwrite files in it",
        )
    root_key = bytes.fromhex(b.tree)
    progress = progress or NoProgress()
    if pattern is None:
        progress.start(b.file_count, b.total_size)
    else:  # a counting pass over the trees (no file is read): what the filter selects
        n = size = 0
        for entry in iter_entries(ctx, b, files_only=True, name_filter=name_filter):
            n, size = n + 1, size + entry.size
        progress.start(n, size)
    os.makedirs(dest, exist_ok=True)
    # A non-empty directory that was not a download holds files datamon did not make: it is
    # registered as adopted, and `update` will not delete in it unless forced.
    adopted = nonempty and (rec is None or rec.adopted)
    reg = Registry(ctx.state_dir)
    try:
        reg.put(dest, repo=repo, bundle=b.id, name_filter=name_filter, complete=False, adopted=adopted)
        reg.forget_dirs(dest)
        # Directory digests (what `update` checks instead of every file) only for a download
        # that writes every entry of every directory into directories that held nothing else.
        digests = reg if pattern is None and not nonempty else None
        with Materializer(ctx, dest, progress=progress, concurrency=concurrency, registry=digests) as m:
            m.write_tree(root_key, pattern)
            m.finish()
            files, nbytes = m.files, m.bytes
        reg.put(dest, repo=repo, bundle=b.id, name_filter=name_filter, complete=True, adopted=adopted)
    finally:
        reg.close()
    return DownloadResult(b, dest, files, nbytes, time.perf_counter() - t0)


def _resume(
    ctx: Context,
    repo: str,
    dest: str,
    b: BundleRecord,
    progress: Progress | None,
    concurrency: int | None,
    t0: float,
) -> DownloadResult:
    """Finish an interrupted download of ``b`` into ``dest``: only what is missing or differs."""
    from datamon.api.diff import update

    r = update(ctx, repo, dest, bundle=b.id, progress=progress, concurrency=concurrency)
    return DownloadResult(b, dest, r.files, r.bytes, time.perf_counter() - t0)


def download_file(
    ctx: Context,
    repo: str,
    path: str,
    destination: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
) -> str:
    """Write one file of a bundle to ``destination/path``; returns the written path."""
    b = resolve(ctx, repo, bundle=bundle, label=label)
    parts = split_path(path)
    e = lookup(ctx, b, path)
    if e.is_dir:
        raise UsageError(
            f"{path!r} is a directory", "use `datamon bundle download --name-filter` for directories"
        )
    dest = os.path.abspath(os.fspath(destination))
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise _not_a_directory(dest)
    os.makedirs(dest, exist_ok=True)
    materialize(ctx, dest, [Entry("/".join(parts), e)], overwrite=True)
    return os.path.join(dest, *parts)
