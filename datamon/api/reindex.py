"""``admin reindex``: rebuild the object index from the packs' own trailing indexes.

The recovery path when the metadata database is lost, or restored from a backup older than
the blob store. Every pack blob's footer and index are read (two ranged reads per pack) and
recorded with ``add_pack``, which keeps rows that exist, so running it again changes
nothing. Run records (lineage) are in the blob store too (``runs/<id>``): their rows are
rebuilt from those blobs, and a row whose blob copy is missing gets it back. Repo renames are in
the blob store too (``renames/<id>``, ``api/rename.py``): a rename the database does not know is
replayed when its repo still has the old name, so run records naming the new name find their repo.
Bundles, labels and repos are not in the blob store: they come back only with a backup of the
database.
rebuilt from those blobs, and a row whose blob copy is missing gets it back. Bundles, labels and
repos are not in the blob store: they come back only with a backup of the database. The file index
(``datamon query``'s ``files`` view) is derived from bundles' trees and attribute objects: bundles
it lacks are indexed again (``files=True`` drops it first and rebuilds all of it).

A pack may hold objects gc had already dropped from the index (garbage it had not rewritten
yet). Putting those back is harmless, except for a file map whose chunks gc has since
deleted: an upload that finds that file's key by its stat cache would trust it. So file maps
that come back are read, and a file map with a chunk missing from the index is dropped again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from datamon.api.gc import GcLock, list_pack_blobs
from datamon.api.verify import Problem, lookup_many, read_objects, read_pack_index
from datamon.cas.filemap import decode_filemap
from datamon.cas.pack import Kind, pack_blob_name

if TYPE_CHECKING:
    from datamon.api.context import Context


@dataclass
class ReindexReport:
    packs: int = 0  # pack blobs read
    new_packs: int = 0  # packs the index did not list
    objects: int = 0  # objects listed by the packs
    added: int = 0  # index rows added
    dropped_filemaps: int = 0  # file maps put back and dropped again: a chunk is gone
    runs: int = 0  # run records found in the blob store
    added_runs: int = 0  # run rows rebuilt from them
    restored_run_blobs: int = 0  # blob copies written back from run rows
    renames: int = 0  # rename records found in the blob store
    replayed_renames: int = 0  # renames the database did not know, applied
    restored_rename_blobs: int = 0  # blob copies of renames written back from the database
    renamed: list[str] = field(default_factory=list)  # renames replayed: "old -> new"
    indexed_bundles: int = 0  # bundles (re)added to the file index
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # unreadable packs, left alone

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


def reindex(ctx: Context, *, files: bool = False) -> ReindexReport:
    """Index every object of every pack in the blob store, and every bundle missing from the file
    index (all of them with ``files``, which drops the file index first). Idempotent.

    Takes the gc lock (``Conflict``, exit 3, while a gc runs). Unreadable packs are listed in
    ``problems`` and skipped; ``datamon verify`` shows what they affect.
    """
    t0 = time.perf_counter()
    meta = ctx.meta
    blobs = ctx.cas.blobs
    report = ReindexReport()
    lock = GcLock(meta, "admin reindex")
    lock.acquire()
    try:
        known = {p.name for p in meta.list_packs()}
        added_filemaps: list[tuple[bytes, str, int, int, int, int, int]] = []
        for pack in sorted(list_pack_blobs(blobs)):
            lock.refresh()
            entries = read_pack_index(blobs, pack)
            if isinstance(entries, Problem):
                report.problems.append(entries.detail)
                continue
            report.packs += 1
            report.objects += len(entries)
            if pack not in known:
                report.new_packs += 1
            present = lookup_many(meta, [e[0] for e in entries])
            new = [e for e in entries if e[0] not in present]
            if new or pack not in known:
                size = blobs.size(pack_blob_name(pack)) or 0
                meta.add_pack(pack, size, new)
                report.added += len(new)
                added_filemaps += [(e[0], pack, *e[1:]) for e in new if e[4] == Kind.FILEMAP]
        report.dropped_filemaps = _drop_dangling_filemaps(ctx, added_filemaps, report)
        if report.added or report.dropped_filemaps:
            from datamon.cas.ingest import bump_index_epoch

            bump_index_epoch(blobs)  # a tree put back may name objects gc deleted: caches of trees go
        _reindex_runs(ctx, report)
        _reindex_renames(ctx, report)
        _reindex_files(ctx, report, rebuild=files)
    finally:
        lock.release()
    report.seconds = time.perf_counter() - t0
    return report


def _drop_dangling_filemaps(
    ctx: Context, rows: list[tuple[bytes, str, int, int, int, int, int]], report: ReindexReport
) -> int:
    if not rows:
        return 0
    chunks_of: dict[bytes, list[bytes]] = {}
    unreadable: set[bytes] = set()

    def failed(row: tuple[bytes, str, int, int, int, int, int], kind: str, detail: str) -> None:
        unreadable.add(row[0])
        report.problems.append(f"file map {row[0].hex()}: {detail}")

    for row, _, raw in read_objects(ctx.cas.blobs, rows, failed):
        try:
            chunks_of[row[0]] = [c for c, _ in decode_filemap(raw)]
        except ValueError:
            unreadable.add(row[0])
    wanted = sorted({c for cs in chunks_of.values() for c in cs})
    present = lookup_many(ctx.meta, wanted)
    dangling = unreadable | {fm for fm, cs in chunks_of.items() if any(c not in present for c in cs)}
    if dangling:
        ctx.meta.remove_objects(sorted(dangling))
    return len(dangling)


def _reindex_renames(ctx: Context, report: ReindexReport) -> None:
    from datamon.api.rename import replay_renames

    r = replay_renames(ctx)
    report.renames = r.records
    report.replayed_renames = r.replayed
    report.restored_rename_blobs = r.restored_blobs
    report.renamed += r.renamed
    report.problems += r.problems


def _reindex_runs(ctx: Context, report: ReindexReport) -> None:
    from datamon.api.runs import RUN_BLOB_PREFIX, from_row, load_run_blobs, row_of
    from datamon.errors import IntegrityError

    good, bad = load_run_blobs(ctx)
    report.runs = len(good)
    report.problems += [f"run record {name}: does not hash to its name; left alone" for name in bad]
    on_blobs = {r.id for r in good}
    for r in good:
        if ctx.meta.add_run(row_of(r)):
            report.added_runs += 1
    for row in ctx.meta.iter_all_runs():
        if row.id in on_blobs:
            continue
        try:
            r = from_row(row)
        except IntegrityError as e:
            report.problems.append(e.message)
            continue
        ctx.cas.blobs.put(RUN_BLOB_PREFIX + r.id, r.raw)
        report.restored_run_blobs += 1


def _reindex_files(ctx: Context, report: ReindexReport, *, rebuild: bool) -> None:
    from datamon.api.bundles import check_record
    from datamon.api.fileindex import index_bundle
    from datamon.errors import DatamonError

    if rebuild:
        ctx.meta.clear_file_index()
    for repo, bid in ctx.meta.unindexed_bundles():
        try:
            b = ctx.meta.get_bundle(repo, bid)
            check_record(b)
            index_bundle(ctx, b)
        except DatamonError as e:
            report.problems.append(f"bundle {bid} of repo {repo!r} not indexed: {e.message}")
            continue
        report.indexed_bundles += 1
