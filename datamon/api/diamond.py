"""Diamonds: many writers, one bundle (docs/diamonds.md).

``initialize`` opens a diamond on a repo; any number of workers, on any machines that share the
context, each ``add_split`` (upload a directory, or part of one, as a root tree without making a
bundle); ``commit`` merges the splits' trees (``treemerge``) into one bundle, once. ``cancel``
closes a diamond without a bundle.

Crash safety follows ``upload``: a split's objects are content-addressed and written before its
row says ``done``; a worker that dies leaves its split ``running`` (ignored by gc as a root, its
fresh packs kept for the grace period as for any upload); re-running the same split id replaces
it. The commit writes the merged trees, then (if ``last-wins`` found conflicts) the conflict
record blob, then — in one database transaction — the diamond's state, the bundle row and the
conflict rows; a commit that dies before that transaction left only unreferenced objects, and
can be run again. gc keeps the trees of the finished splits of every ``initialized`` diamond,
and the losing versions that commits recorded.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from datamon.api.treemerge import FAIL, IGNORE, LAST_WINS, MODES, PathConflict, SplitTree, merge_trees
from datamon.errors import Conflict, UsageError
from datamon.meta.diamonds import (
    CANCELED,
    COMMITTED,
    DONE,
    INITIALIZED,
    RUNNING,
    ConflictRow,
    DiamondRow,
    DiamondsMixin,
    SplitRow,
    SplitsChanged,
)
from datamon.names import check_name

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.progress import Progress
    from datamon.api.remotesrc import RemoteFile
    from datamon.api.upload import TreeUpload
    from datamon.meta.records import BundleRecord

__all__ = [
    "CANCELED",
    "COMMITTED",
    "DONE",
    "FAIL",
    "IGNORE",
    "INITIALIZED",
    "LAST_WINS",
    "MODES",
    "RUNNING",
    "CommitResult",
    "DiamondConflicts",
    "SplitResult",
    "add_split",
    "cancel",
    "commit",
    "initialize",
    "new_id",
]

CONFLICTS_PREFIX: Final = "diamonds/conflicts/"
COMMIT_ATTEMPTS: Final = 5
SHOWN_CONFLICTS: Final = 20

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KSUID_EPOCH = 1_400_000_000


def new_id() -> str:
    """A KSUID (27 base62 characters, sortable by creation second), as Datamon's diamond and
    split ids are."""
    payload = int(time.time() - _KSUID_EPOCH).to_bytes(4, "big") + secrets.token_bytes(16)
    n = int.from_bytes(payload, "big")
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_B62[r])
    return "".join(reversed(out)).rjust(27, "0")


class DiamondConflicts(Conflict):
    """``commit --conflicts fail`` found paths with different content in several splits (exit 3)."""

    def __init__(self, repo: str, diamond: str, conflicts: Sequence[PathConflict]) -> None:
        shown = "; ".join(
            f"{c.path} ({', '.join(v.split for v in c.versions)})" for c in conflicts[:SHOWN_CONFLICTS]
        )
        more = f" and {len(conflicts) - SHOWN_CONFLICTS} more" if len(conflicts) > SHOWN_CONFLICTS else ""
        super().__init__(
            f"diamond {diamond!r} of repo {repo!r} has {len(conflicts)} conflicting paths: {shown}{more}",
            "re-run the splits without the overlap, or commit with --conflicts last-wins (records them) "
            "or --conflicts ignore",
        )
        self.conflicts = list(conflicts)


# -- initialize --------------------------------------------------------------------------------------


def initialize(ctx: Context, repo: str, *, diamond: str | None = None, tag: str = "") -> DiamondRow:
    """Open a new diamond on ``repo`` (id: ``diamond``, or a new KSUID). Raises ``NotFound`` (repo),
    ``Conflict`` if the id is taken in that repo, ``UsageError`` for an id breaking the name rule."""
    did = check_name("diamond", diamond) if diamond is not None else new_id()
    who = ctx.contributor
    return ctx.meta.create_diamond(
        repo,
        did,
        tag=tag,
        contributor_name=who.name,
        contributor_email=who.email,
        now_ns=time.time_ns(),
    )


def get(ctx: Context, repo: str, diamond: str) -> DiamondRow:
    return ctx.meta.get_diamond(repo, diamond)


def list_diamonds(ctx: Context, repo: str, state: str | None = None) -> list[DiamondRow]:
    return ctx.meta.list_diamonds(repo, state)


def list_splits(ctx: Context, repo: str, diamond: str) -> list[SplitRow]:
    return ctx.meta.list_splits(repo, diamond)


def _open_diamond(ctx: Context, repo: str, diamond: str, doing: str) -> DiamondRow:
    d = ctx.meta.get_diamond(repo, diamond)
    if d.state != INITIALIZED:
        raise DiamondsMixin._closed(d, doing)
    return d


# -- splits ------------------------------------------------------------------------------------------


@dataclass
class SplitResult:
    split: SplitRow
    upload: TreeUpload
    seconds: float = 0.0


def add_split(
    ctx: Context,
    repo: str,
    diamond: str,
    path: str | os.PathLike[str],
    *,
    split: str | None = None,
    tag: str = "",
    files: Sequence[str] | None = None,
    entries: Sequence[RemoteFile] | None = None,
    skip_on_error: bool = False,
    concurrency: int | None = None,
    progress: Progress | None = None,
) -> SplitResult:
    """Upload ``path`` (a directory, or ``s3://``/``gs://`` prefix; only ``files`` under it if
    given) as split ``split`` (default: a new id) of ``diamond``. A split id that exists is
    replaced (a retried worker is safe); a newer run of the same id started meanwhile wins, and
    this one raises ``Conflict``. Raises ``Conflict`` if the diamond is committed or canceled.
    ``entries`` (for an object-store ``path``) are the objects to upload as listed before."""
    from datamon.api.upload import upload_tree

    t0 = time.perf_counter()
    sid = check_name("split", split) if split is not None else new_id()
    _open_diamond(ctx, repo, diamond, f"add split {sid!r}")
    generation = uuid.uuid4().hex
    who = ctx.contributor
    source = os.fspath(path)
    ctx.meta.start_split(
        repo,
        diamond,
        sid,
        generation=generation,
        tag=tag,
        source=_shown_source(source),
        contributor_name=who.name,
        contributor_email=who.email,
        host=socket.gethostname(),
        now_ns=time.time_ns(),
    )
    if entries is not None:  # an object-store source already listed (datamon.distributed)
        from datamon.api.remotesrc import upload_remote_tree

        t = upload_remote_tree(
            ctx,
            source,
            entries=entries,
            skip_on_error=skip_on_error,
            concurrency=concurrency,
            progress=progress,
        )
    else:
        t = upload_tree(
            ctx, path, files=files, skip_on_error=skip_on_error, concurrency=concurrency, progress=progress
        )
    ctx.meta.finish_split(
        repo,
        diamond,
        sid,
        generation=generation,
        tree=t.tree,
        file_count=t.files,
        total_size=t.bytes,
        now_ns=time.time_ns(),
    )
    row = next(s for s in ctx.meta.list_splits(repo, diamond) if s.id == sid)
    return SplitResult(row, t, time.perf_counter() - t0)


def _shown_source(source: str) -> str:
    from datamon.config import redact_url

    if "://" in source:
        return redact_url(source)
    return os.path.abspath(source).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- commit ------------------------------------------------------------------------------------------


@dataclass
class CommitResult:
    diamond: DiamondRow
    bundle: BundleRecord
    splits: list[SplitRow]
    conflicts: list[PathConflict] = field(default_factory=list)
    label: str | None = None
    trees_written: int = 0
    trees_read: int = 0
    seconds: float = 0.0
    merge_seconds: float = 0.0


def _text(path: str) -> str:
    """A path as storable text (bytes that are not UTF-8 written as ``\\xNN``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def conflict_rows(conflicts: Sequence[PathConflict]) -> list[ConflictRow]:
    return [
        ConflictRow(_text(c.path), v.split, int(v.entry.kind), v.entry.key.hex(), v.entry.size, v.winner)
        for c in conflicts
        for v in c.versions
    ]


def conflict_record(repo: str, diamond: str, mode: str, conflicts: Sequence[PathConflict]) -> bytes:
    """The conflict record blob: canonical JSON naming every version of every conflicting path."""
    doc: dict[str, Any] = {
        "version": 1,
        "repo": repo,
        "diamond": diamond,
        "mode": mode,
        "conflicts": [
            {
                "path": _text(c.path),
                "versions": [
                    {
                        "split": v.split,
                        "seq": v.seq,
                        "kind": {1: "file", 2: "dir", 3: "symlink"}[int(v.entry.kind)],
                        "key": v.entry.key.hex(),
                        "size": v.entry.size,
                        **({"target": _text(v.entry.target)} if v.entry.is_symlink else {}),
                        "winner": v.winner,
                    }
                    for v in c.versions
                ],
            }
            for c in conflicts
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def commit(
    ctx: Context,
    repo: str,
    diamond: str,
    *,
    message: str,
    label: str | None = None,
    conflicts: str = FAIL,
    parents: Sequence[str] | None = None,
    ignore_running: bool = False,
) -> CommitResult:
    """Merge the finished splits of ``diamond`` into one bundle of ``repo`` and close the diamond.

    Raises ``Conflict`` (exit 3) if the diamond is already committed or canceled (of two racing
    commits exactly one wins), if a split is still running (unless ``ignore_running``: then only
    finished splits count), or — ``DiamondConflicts`` — if splits disagree on a path and
    ``conflicts`` is ``fail``. ``last-wins`` keeps the latest finished split's version and records
    every conflict (the diamond's conflict rows and a blob named by ``conflicts_blob``); ``ignore``
    keeps it without a record. ``UsageError`` if no split has finished."""
    from datamon.api.bundles import make_bundle
    from datamon.api.refs import parent_id

    t0 = time.perf_counter()
    if conflicts not in MODES:
        raise UsageError(f"unknown conflict mode {conflicts!r}", f"use one of {', '.join(MODES)}")
    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    meta = ctx.meta
    parent_ids = [parent_id(ctx, repo, p) for p in parents] if parents is not None else None
    for attempt in range(COMMIT_ATTEMPTS):
        d = _open_diamond(ctx, repo, diamond, "commit")  # read before the splits: see SplitsChanged
        splits = meta.list_splits(repo, diamond)
        running = [s for s in splits if s.state != DONE]
        if running and not ignore_running:
            raise Conflict(
                f"diamond {diamond!r} has {len(running)} split(s) still running: "
                + ", ".join(s.id for s in running[:SHOWN_CONFLICTS]),
                "wait for them (or re-run them with the same --split-id), or commit with --ignore-running "
                "to leave them out",
            )
        done = [s for s in splits if s.state == DONE and s.tree]
        if not done:
            raise UsageError(
                f"diamond {diamond!r} has no finished split to commit",
                "add one with `datamon diamond split add`, or cancel the diamond",
            )
        tm = time.perf_counter()
        merged = merge_trees(
            ctx.cas,
            [
                SplitTree(s.id, s.seq or 0, bytes.fromhex(s.tree or ""), s.file_count, s.total_size)
                for s in done
            ],
            conflicts,
        )
        merge_seconds = time.perf_counter() - tm
        if merged.conflicts and conflicts == FAIL:
            raise DiamondConflicts(repo, diamond, merged.conflicts)
        if merged.objects:
            with ctx.cas.writing() as ing:
                ing.store_objects(merged.objects)
        recorded = merged.conflicts if conflicts == LAST_WINS else []
        blob_name = None
        if recorded:
            from datamon.cas.hashing import key_of

            raw = conflict_record(repo, diamond, conflicts, recorded)
            blob_name = f"{CONFLICTS_PREFIX}{key_of(raw).hex()}.json"
            ctx.cas.blobs.put(blob_name, raw)
        if parent_ids is None:
            latest = meta.latest_bundle(repo)
            pids = [latest.id] if latest else []
        else:
            pids = parent_ids
        who = ctx.contributor
        bundle = make_bundle(
            repo=repo,
            tree=merged.tree.hex(),
            parents=pids,
            message=message,
            contributor_name=who.name,
            contributor_email=who.email,
            time_ns=time.time_ns(),
            file_count=merged.files,
            total_size=merged.size,
        )
        try:
            row = meta.commit_diamond(
                repo,
                diamond,
                seq=d.seq,
                bundle=bundle,
                mode=conflicts,
                conflicts=conflict_rows(recorded),
                conflicts_blob=blob_name,
                now_ns=time.time_ns(),
            )
        except SplitsChanged:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise
            continue
        if label:
            from datamon.api.labels import set_label

            set_label(ctx, repo, label, bundle.id)
        return CommitResult(
            row,
            bundle,
            done,
            list(merged.conflicts) if conflicts != IGNORE else [],
            label,
            len(merged.objects),
            merged.trees_read,
            time.perf_counter() - t0,
            merge_seconds,
        )
    raise AssertionError("unreachable")


def cancel(ctx: Context, repo: str, diamond: str) -> DiamondRow:
    """Close ``diamond`` without a bundle (idempotent). Its splits' objects are no longer kept by
    gc. Raises ``Conflict`` if it is committed."""
    return ctx.meta.cancel_diamond(repo, diamond, now_ns=time.time_ns())


def read_conflict_record(ctx: Context, d: DiamondRow) -> dict[str, Any] | None:
    """The conflict record blob of a committed diamond, or ``None``."""
    if not d.conflicts_blob:
        return None
    data: dict[str, Any] = json.loads(ctx.cas.blobs.get(d.conflicts_blob))
    return data


# -- gc and verify hooks -----------------------------------------------------------------------------


def gc_roots(meta: Any) -> list[tuple[bytes, int | None]]:
    """Roots gc keeps for diamonds: finished split trees of open diamonds, recorded losers."""
    from datamon.cas.hashing import EMPTY_KEY
    from datamon.cas.pack import Kind

    fn = getattr(meta, "diamond_gc_roots", None)
    if fn is None:
        return []
    out: list[tuple[bytes, int | None]] = []
    for key, kind in fn():
        k = bytes.fromhex(key)
        if k != EMPTY_KEY:
            out.append((k, Kind.TREE if kind == 2 else None))
    return out


def split_records(ctx: Context, repo: str | None = None) -> list[BundleRecord]:
    """The finished splits of open diamonds (of ``repo``, or all) as bundle-like records for
    ``verify``: ``id`` is ``diamond D split S``, ``tree`` the split's root tree."""
    from datamon.meta.records import BundleRecord

    fn = getattr(ctx.meta, "live_splits", None)
    if fn is None:
        return []
    return [
        BundleRecord(
            id=f"diamond {s.diamond} split {s.id}",
            repo=s.repo,
            tree=s.tree or "",
            parents=(),
            message="",
            contributor_name=s.contributor_name,
            contributor_email=s.contributor_email,
            created_ns=s.started_ns,
            file_count=s.file_count,
            total_size=s.total_size,
            record=b"",
        )
        for s in fn(repo)
    ]
