"""What an upload does with its meta and attribute rows (``api/upload.py``'s ``upload``).

``AttrPlan`` decides, before the walk, where the rows are read and when the bundle is indexed
(docs/query.md, "The file index"):

- **a worker process** (``api/attrworker.py``) when the rows come from a file (of ``WORKER_BYTES``
  or more) and the parent has none to carry over: it reads and checks them, indexes the
  directories the walk reports and stores the attributes object, while the upload's main
  process walks;
- **this process, indexing as it walks** (``api/walkindex.py``) when every row is known before
  the walk otherwise (rows given in memory, or for every path the parent has rows for);
- **this process, indexing after the walk** when rows are carried over from the parent (which
  needs the new tree to know which files did not change).

In every case every row is checked before anything is written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from datamon.api import attributes as attrs
from datamon.api.localtree import check_root

if TYPE_CHECKING:
    from datamon.api.attrworker import AttrWorker
    from datamon.api.context import Context
    from datamon.api.walkindex import DirReports, WalkIndexer
    from datamon.meta.records import BundleRecord

ATTR_WORKER = True  # read an attributes file in a worker process (tests turn it off)
WORKER_BYTES = 4 << 20  # an attributes file this large is worth a worker process (~0.3 s to start)


class AttrPlan:
    """The meta and attributes of one upload of ``path`` (``local``: a local tree, whole)."""

    def __init__(
        self,
        ctx: Context,
        repo: str,
        path: str | os.PathLike[str],
        *,
        meta: Mapping[str, Any] | None,
        attributes: Any,
        parents: Sequence[str] | None,
        local: bool,
    ) -> None:
        self.ctx = ctx
        self.parents = list(parents) if parents is not None else None
        self._worker: AttrWorker | None = None
        self._indexer: WalkIndexer | None = None
        self._packing: Future[attrs.Packed | None] | None = None
        self._root: bytes | None = None
        from_file = isinstance(attributes, str | os.PathLike) and local
        self.extras = extras = attrs.prepare(
            ctx, repo, meta=meta, attributes=None if from_file else attributes, parents=parents
        )
        if from_file and not extras.parent_lines:
            self._worker = _attr_worker(ctx, path, attributes, extras.schema)
            if self._worker is not None and self.parents is None:  # the parent the rows were checked against
                self.parents = [extras.parent.id] if extras.parent is not None else []
        if from_file and self._worker is None:
            from datamon.api.attrfiles import read_attr_lines

            extras.lines = read_attr_lines(attributes, extras.schema)
        if extras.final_known and local and self._worker is None:
            from datamon.api.walkindex import WalkIndexer

            lines = extras.lines or {}
            self._indexer = WalkIndexer(ctx, check_root(path), lines)
            self._packing = in_background(attrs.pack_attr_lines, lines)

    @property
    def check_paths(self) -> Callable[[Callable[[Iterable[str]], set[str]]], None] | None:
        """For the walk: checks the rows' paths before anything is written (None: nothing to check;
        a worker checked them)."""
        return self.extras.check_paths if self._worker is None and self.extras.needs_paths else None

    @property
    def reports(self) -> DirReports | None:
        """For the walk: who indexes each directory as it is finished (None: nobody)."""
        return self._worker if self._worker is not None else self._indexer

    def finish(self, tree: str, parents: Sequence[str]) -> tuple[dict[str, Any], str | None]:
        """(meta, attributes key) of the bundle of root ``tree``; the attributes object is stored."""
        extras = self.extras
        if self._worker is not None:
            self._root, key = self._worker.finish()
            return extras.meta, key
        packing = self._packing
        meta, key = extras.finish(
            ctx=self.ctx, tree=tree, parents=parents, packed=packing.result if packing else None
        )
        if self._indexer is not None and not extras.carried:
            self._root = self._indexer.finish()
        return meta, key

    def index(self, bundle: BundleRecord) -> None:
        """Record bundle ``bundle``'s index (built from the rows now if it was not as it was
        walked). A bundle without attributes is indexed by the first query that needs it."""
        if bundle.attrs is None:
            return
        if self._root is not None:
            self.ctx.meta.set_bundle_index(bundle.id, self._root)
        else:  # rows carried over from the parent: index from the rows, reading new trees only
            from datamon.api.fileindex import index_bundle, texts_of

            index_bundle(self.ctx, bundle, texts=texts_of(self.extras.final_lines))

    def close(self) -> None:
        if self._indexer is not None:
            self._indexer.close()
        if self._worker is not None:
            self._worker.close()


def _attr_worker(ctx: Context, path: str | os.PathLike[str], source: Any, schema: Any) -> AttrWorker | None:
    """A worker process reading, checking and indexing the attributes file ``source`` of an
    upload of ``path`` (``api/attrworker.py``), once it has checked the rows (raises what they
    break); ``None`` where one cannot run (the caller reads the rows itself)."""
    from datamon.api.attrworker import AttrWorker, AttrWorkerError, can_share

    if not ATTR_WORKER or not can_share(ctx):
        return None
    try:
        if os.stat(source).st_size < WORKER_BYTES:
            return None
    except OSError:
        return None  # the caller reads it, and says what is wrong with it
    try:
        worker = AttrWorker(ctx, check_root(path), os.fspath(source), schema)
    except AttrWorkerError:
        return None
    worker.checked()
    return worker


def in_background(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` on a thread of its own; its result (or exception) through the future."""
    fut: Future[Any] = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:
            fut.set_exception(e)

    threading.Thread(target=run, name="datamon-background", daemon=True).start()
    return fut
