"""``verify``: prove that every object the bundles reference is indexed, stored and intact.

The walk (``Reach``) visits every tree and file map reachable from the chosen bundles once
(identical subtrees are shared between bundles and read once), looking keys up in the index
a batch at a time and reading objects pack by pack in offset order. ``gc`` marks with the
same walk.

Fast mode then checks every index row against its pack's own trailing index (two ranged
reads per pack: footer, then index; no object data). ``full`` also fetches, decompresses and
hashes every chunk (``decode_object``); trees and file maps are always decoded and verified,
since the walk reads them. A problem is reported with every bundle and path it affects.

``repair`` drops the index rows of bad objects (corrupt, or in a missing pack) and of the
file maps that list a bad chunk, so that uploading the original data again rewrites them
instead of deduplicating against the broken copy.

Trust: everything read is hostile. Index rows are bounded before any read
(``check_location``); trees go through ``decode_tree`` (names, order, kinds, modes, symlink
sizes) and file maps through ``decode_filemap`` (2+ chunks of 1..``max_size`` bytes); every
file entry's size is checked against what is stored under its key (a chunk's raw length, a
map's total, 0 for the empty key) and every map's chunk lengths against the chunks' rows
(``size-mismatch``, reported on the tree naming the entry). ``full`` also proves every file
of several chunks: its chunks are read in order and the whole file's hash compared with
its key, which is what catches a well-formed map of *other* chunks (reported ``corrupt`` on
the file key, with every path that uses it; ``repair`` drops that row so the next upload of
the file writes a correct one). No step recurses on the depth of a tree. Every bundle's
attributes object is read and hashed too (decoded with ``full``); a bad one is reported on its
key with the bundle (path ``""``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datamon.cas.filemap import decode_filemap
from datamon.cas.hashing import EMPTY_KEY, Hasher
from datamon.cas.objects import DEFAULT_MAX_CHUNK, Location, check_location, decode_object
from datamon.cas.pack import ENTRY, FOOTER, Kind, PackFormatError, pack_blob_name, parse_footer, parse_index
from datamon.cas.tree import TreeEntry, decode_tree
from datamon.errors import CorruptObject, IntegrityError, NotFound

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.blobstore import BlobStore
    from datamon.meta.records import BundleRecord

IndexRow = tuple[bytes, str, int, int, int, int, int]
LOOKUP_BATCH = 5000
READ_GAP = 1 << 20  # holes up to this size are read through rather than split into two requests
READ_SPAN = 16 << 20  # largest single ranged read
MAX_PATHS = 1000  # affected paths reported per bundle

# Problem kinds
MISSING = "missing"  # not in the object index
PACK_MISSING = "pack-missing"  # indexed, but its pack is gone from the blob store
CORRUPT = "corrupt"  # bytes do not decode or do not hash to the key
MISMATCH = "index-mismatch"  # index row disagrees with the pack's own index
WRONG_KIND = "wrong-kind"  # e.g. a directory entry whose key is a chunk
RECORD = "record"  # bundle record does not hash to the bundle id
SIZE_MISMATCH = "size-mismatch"  # a tree entry's size is not the size of what its key stores
FILE_WINDOW = 32 << 20  # bytes of chunks read together when proving a file


@dataclass(frozen=True)
class Problem:
    key: str
    kind: str
    detail: str


@dataclass(frozen=True)
class Affected:
    """One bundle path that cannot be read back because of ``problem``."""

    repo: str
    bundle: str
    path: str
    problem: Problem

    def as_dict(self) -> dict[str, object]:
        return {
            "repo": self.repo,
            "bundle": self.bundle,
            "path": self.path,
            "object": self.problem.key,
            "problem": self.problem.kind,
            "detail": self.problem.detail,
        }


@dataclass
class VerifyReport:
    full: bool = False
    bundles: int = 0
    objects: int = 0
    bytes: int = 0  # stored (compressed) bytes of the objects checked
    packs: int = 0
    seconds: float = 0.0
    problems: dict[str, Problem] = field(default_factory=dict)
    affected: list[Affected] = field(default_factory=list)
    dropped_rows: int = 0  # index rows removed by ``repair``
    runs: int = 0  # run records checked (lineage)
    splits: int = 0  # finished splits of open diamonds checked (their trees, like bundles')
    run_problems: list[Problem] = field(default_factory=list)  # key: run id

    @property
    def ok(self) -> bool:
        return not self.problems and not self.affected and not self.run_problems

    def summary(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "mode": "full" if self.full else "fast",
            "bundles": self.bundles,
            "objects": self.objects,
            "bytes": self.bytes,
            "packs": self.packs,
            "problems": len(self.problems),
            "affected_paths": len(self.affected),
            "dropped_rows": self.dropped_rows,
            "runs": self.runs,
            "splits": self.splits,
            "run_problems": len(self.run_problems),
            "seconds": round(self.seconds, 3),
        }


def lookup_many(index: object, keys: Sequence[bytes]) -> dict[bytes, IndexRow]:
    """Index rows of ``keys`` in batches (one query per ``LOOKUP_BATCH`` keys)."""
    out: dict[bytes, IndexRow] = {}
    lookup = index.lookup_objects  # type: ignore[attr-defined]
    for i in range(0, len(keys), LOOKUP_BATCH):
        out.update(lookup(keys[i : i + LOOKUP_BATCH]))
    return out


def read_objects(
    blobs: BlobStore,
    rows: Iterable[IndexRow],
    on_error: Callable[[IndexRow, str, str], None],
    max_chunk: int = DEFAULT_MAX_CHUNK,
) -> Iterator[tuple[IndexRow, bytes, bytes]]:
    """Verified (row, stored bytes, raw bytes) of every object, pack by pack in offset order,
    neighbours fetched with one ranged read. Objects that cannot be read go to
    ``on_error(row, kind, detail)``; so do rows no honest writer produces, before any read
    (``check_location``: a row cannot make this fetch or allocate more than the honest cap)."""
    by_pack: dict[str, list[IndexRow]] = {}
    for r in rows:
        try:
            check_location(Location.from_row(r), f"pack {r[1]}", max_chunk)
        except CorruptObject as e:
            on_error(r, CORRUPT, e.message)
            continue
        by_pack.setdefault(r[1], []).append(r)
    for pack in sorted(by_pack):
        items = sorted(by_pack[pack], key=lambda r: r[2])
        run: list[IndexRow] = []
        for r in items:
            if run and (r[2] - (run[-1][2] + run[-1][3]) > READ_GAP or r[2] + r[3] - run[0][2] > READ_SPAN):
                yield from _read_run(blobs, pack, run, on_error, max_chunk)
                run = []
            run.append(r)
        if run:
            yield from _read_run(blobs, pack, run, on_error, max_chunk)


def _read_run(
    blobs: BlobStore,
    pack: str,
    run: list[IndexRow],
    on_error: Callable[[IndexRow, str, str], None],
    max_chunk: int,
) -> Iterator[tuple[IndexRow, bytes, bytes]]:
    start = run[0][2]
    end = max(r[2] + r[3] for r in run)
    try:
        blob = blobs.get(pack_blob_name(pack), start, end)
    except NotFound:
        for r in run:
            on_error(r, PACK_MISSING, f"pack {pack} is missing from the blob store")
        return
    view = memoryview(blob)
    for r in run:
        stored = bytes(view[r[2] - start : r[2] - start + r[3]])
        try:
            yield r, stored, decode_object(Location.from_row(r), stored, f"pack {pack}", max_chunk)
        except CorruptObject as e:
            on_error(r, CORRUPT, f"in pack {pack}: {e.message}")


class Reach:
    """Every object reachable from some roots, each visited once.

    ``rows`` holds the index row of every reached object, ``bad`` what is wrong with the
    objects that could not be reached or read, ``filemaps`` the chunk list of every file map
    (``map_lengths`` their lengths), ``claims`` the sizes tree entries give each file key
    (size → (tree key, entry name) of the first such entry).
    ``resolve_missing`` (used by gc) may find rows for keys the index lacks.
    """

    def __init__(
        self,
        ctx: Context,
        resolve_missing: Callable[[list[bytes]], Mapping[bytes, IndexRow]] | None = None,
    ) -> None:
        self.index = ctx.meta
        self.blobs = ctx.cas.blobs
        self.resolve_missing = resolve_missing
        self.max_chunk: int = getattr(ctx.cas, "max_chunk", DEFAULT_MAX_CHUNK)
        self.rows: dict[bytes, IndexRow] = {}
        self.bad: dict[bytes, Problem] = {}
        self.filemaps: dict[bytes, list[bytes]] = {}
        self.map_lengths: dict[bytes, list[int]] = {}
        self.claims: dict[bytes, dict[int, tuple[bytes, str]]] = {}
        self.bad_sizes: dict[tuple[bytes, int], Problem] = {}  # (file key, claimed size)

    def seen(self, key: bytes) -> bool:
        return key in self.rows or key in self.bad

    def walk(self, roots: Iterable[tuple[bytes, int | None]]) -> None:
        """Visit ``(key, expected kind)`` roots (kind ``None``: a file key, chunk or file map)
        and everything below them that has not been visited yet."""
        todo: dict[bytes, int | None] = {}
        for k, kind in roots:
            if not self.seen(k):
                todo[k] = kind
        while todo:
            todo = self._level(todo)

    def _level(self, todo: dict[bytes, int | None]) -> dict[bytes, int | None]:
        keys = list(todo)
        rows = lookup_many(self.index, keys)
        missing = [k for k in keys if k not in rows]
        if missing and self.resolve_missing is not None:
            rows.update(self.resolve_missing(missing))
        to_read: list[IndexRow] = []
        for k in keys:
            row = rows.get(k)
            if row is None:
                self.bad[k] = Problem(k.hex(), MISSING, "not in the object index")
                continue
            self.rows[k] = row
            want, kind = todo[k], row[5]
            if (want is None and kind not in (Kind.CHUNK, Kind.FILEMAP)) or (
                want is not None and kind != want
            ):
                self.bad[k] = Problem(k.hex(), WRONG_KIND, f"indexed as kind {kind}, referenced as {want}")
            elif kind in (Kind.TREE, Kind.FILEMAP):
                to_read.append(row)
        nxt: dict[bytes, int | None] = {}

        def failed(row: IndexRow, kind: str, detail: str) -> None:
            self.bad[row[0]] = Problem(row[0].hex(), kind, detail)

        for row, _stored, raw in read_objects(self.blobs, to_read, failed, self.max_chunk):
            key = row[0]
            try:
                if row[5] == Kind.TREE:
                    children: list[tuple[bytes, int | None]] = []
                    for e in decode_tree(raw):
                        if e.is_dir:
                            children.append((e.key, Kind.TREE))
                        elif e.is_file:
                            self.claims.setdefault(e.key, {}).setdefault(e.size, (key, e.name))
                            if e.key != EMPTY_KEY:
                                children.append((e.key, None))
                else:
                    pairs = decode_filemap(raw, self.max_chunk)
                    chunks = [c for c, _ in pairs]
                    self.filemaps[key] = chunks
                    self.map_lengths[key] = [n for _, n in pairs]
                    children = [(c, Kind.CHUNK) for c in chunks]
            except ValueError as e:
                self.bad[key] = Problem(key.hex(), CORRUPT, str(e))
                continue
            for c, child_kind in children:
                if c not in nxt and not self.seen(c):
                    nxt[c] = child_kind
        return nxt

    def check_sizes(self) -> None:
        """Every file entry's size against what its key stores, every map's chunk lengths
        against the chunks' rows (no object data is read)."""
        for fkey, lengths in self.map_lengths.items():
            if fkey in self.bad:
                continue
            for c, n in zip(self.filemaps[fkey], lengths, strict=True):
                row = self.rows.get(c)
                if row is not None and c not in self.bad and row[4] != n:
                    detail = f"lists chunk {c.hex()} as {n} bytes, its index row says {row[4]}"
                    self.bad[fkey] = Problem(fkey.hex(), CORRUPT, detail)
                    break
        for fkey, claims in self.claims.items():
            actual: int | None
            if fkey == EMPTY_KEY:
                actual = 0
            elif fkey in self.bad or fkey not in self.rows:
                continue
            elif fkey in self.map_lengths:
                actual = sum(self.map_lengths[fkey])
            elif self.rows[fkey][5] == Kind.CHUNK:
                actual = self.rows[fkey][4]
            else:
                continue
            for size, (tree, name) in claims.items():
                if size != actual:
                    detail = f"entry {name!r} says {size} bytes, its file {fkey.hex()} has {actual}"
                    self.bad_sizes[(fkey, size)] = Problem(tree.hex(), SIZE_MISMATCH, detail)


class _Footers:
    """Pack indexes read from pack footers (two ranged reads per pack), cached per pack."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._cache: dict[str, dict[bytes, tuple[int, int, int, int, int]] | Problem] = {}

    def get(self, pack: str) -> dict[bytes, tuple[int, int, int, int, int]] | Problem:
        got = self._cache.get(pack)
        if got is None:
            got = self._cache[pack] = self._read(pack)
        return got

    def _read(self, pack: str) -> dict[bytes, tuple[int, int, int, int, int]] | Problem:
        entries = read_pack_index(self.blobs, pack)
        if isinstance(entries, Problem):
            return entries
        return {e[0]: e[1:] for e in entries}


def read_pack_index(blobs: BlobStore, pack: str) -> list[tuple[bytes, int, int, int, int, int]] | Problem:
    """The entries of a pack's own trailing index, or the ``Problem`` that prevents reading it."""
    name = pack_blob_name(pack)
    size = blobs.size(name)
    if size is None:
        return Problem("", PACK_MISSING, f"pack {pack} is missing from the blob store")
    try:
        if size < FOOTER.size:
            raise PackFormatError("pack is too short to hold a footer")
        index_offset, count, index_hash = parse_footer(blobs.get(name, size - FOOTER.size, size), size)
        raw = blobs.get(name, index_offset, index_offset + count * ENTRY.size)
        entries = parse_index(raw, count, index_hash, index_offset)
    except PackFormatError as e:
        return Problem("", CORRUPT, f"pack {pack}: {e}")
    except NotFound:
        return Problem("", PACK_MISSING, f"pack {pack} is missing from the blob store")
    return [e.as_tuple() for e in entries]


def _select_bundles(
    ctx: Context, repo: str | None, bundle: str | None, label: str | None
) -> list[BundleRecord]:
    from datamon.api.bundles import resolve

    if bundle or label:
        if not repo:
            from datamon.errors import UsageError

            raise UsageError("--bundle and --label need --repo")
        return [resolve(ctx, repo, bundle=bundle, label=label)]
    if repo:
        return ctx.meta.list_bundles(repo)
    return list(ctx.meta.iter_all_bundles())


def verify(
    ctx: Context,
    *,
    repo: str | None = None,
    bundle: str | None = None,
    label: str | None = None,
    full: bool = False,
    repair: bool = False,
) -> VerifyReport:
    """Check the chosen bundles (one bundle, one repo's, or every bundle of every repo).

    Never raises for what it finds: problems are in the report (``report.ok``). Raises
    ``NotFound``/``UsageError`` for a bad selection. Read-only unless ``repair``; with
    ``repair`` it drops index rows of unreadable objects (idempotent).
    """
    from datamon.api.bundles import check_record

    t0 = time.perf_counter()
    report = VerifyReport(full=full)
    bundles = _select_bundles(ctx, repo, bundle, label)
    report.bundles = len(bundles)
    reach = Reach(ctx)
    record_problems: dict[str, Problem] = {}
    for b in bundles:
        try:
            check_record(b)
        except IntegrityError as e:
            record_problems[b.id] = Problem(b.id, RECORD, e.message)
    attrs_problems = _check_attrs(ctx, [b for b in bundles if b.id not in record_problems], full)
    # Diamonds: what an open diamond's finished splits hold will be a bundle when it commits.
    from datamon.api.diamond import split_records

    splits = [] if (bundle or label) else split_records(ctx, repo)
    report.splits = len(splits)
    reach.walk((bytes.fromhex(b.tree), Kind.TREE) for b in [*bundles, *splits])
    reach.check_sizes()

    _check_footers(reach, report)
    if full:
        proven = _check_files(reach)
        _check_chunks(reach, report, skip=proven)
    report.objects = len(reach.rows)
    report.bytes = sum(r[3] for r in reach.rows.values())
    report.packs = len({r[1] for r in reach.rows.values()})

    for key, p in reach.bad.items():
        report.problems[key.hex()] = p
    for (fkey, size), p in reach.bad_sizes.items():
        report.problems[f"{p.key}:{fkey.hex()}:{size}"] = p
    for bid, p in record_problems.items():
        report.problems[bid] = p
    if reach.bad or reach.bad_sizes:
        report.affected = affected_paths(ctx, [*bundles, *splits], reach)
    for b in bundles:
        if b.id in record_problems:
            report.affected.append(Affected(b.repo, b.id, "", record_problems[b.id]))
        elif b.attrs and b.attrs in attrs_problems:
            report.problems[b.attrs] = attrs_problems[b.attrs]
            report.affected.append(Affected(b.repo, b.id, "", attrs_problems[b.attrs]))
    if not (bundle or label):
        from datamon.api.runs import run_problems

        report.runs, found = run_problems(ctx, repo)
        report.run_problems = [Problem(rid, kind, detail) for rid, kind, detail in found]
    if repair and reach.bad:
        report.dropped_rows = _repair(ctx, reach)
    report.seconds = time.perf_counter() - t0
    return report


def _check_attrs(ctx: Context, bundles: Sequence[BundleRecord], full: bool) -> dict[str, Problem]:
    """Problems of the bundles' attributes objects (``attrs/<key>``, docs/query.md), by key: each
    is read and hashed (``missing`` or ``corrupt``); ``full`` also decodes it (``decode_attrs``:
    canonical lines, sorted paths, scalar values). Each object is checked once."""
    from datamon.api.attributes import decode_attrs, read_attrs
    from datamon.errors import MissingObject

    problems: dict[str, Problem] = {}
    for key in sorted({b.attrs for b in bundles if b.attrs}):
        try:
            raw = read_attrs(ctx, key)
            if full:
                decode_attrs(raw, key)
        except MissingObject as e:
            problems[key] = Problem(key, MISSING, e.message)
        except IntegrityError as e:
            problems[key] = Problem(key, CORRUPT, e.message)
    return problems


def _check_footers(reach: Reach, report: VerifyReport) -> None:
    footers = _Footers(reach.blobs)
    for key, row in list(reach.rows.items()):
        if key in reach.bad:
            continue
        got = footers.get(row[1])
        if isinstance(got, Problem):
            reach.bad[key] = Problem(key.hex(), got.kind, got.detail)
            continue
        entry = got.get(key)
        if entry is None:
            reach.bad[key] = Problem(key.hex(), MISMATCH, f"pack {row[1]} does not list this object")
        elif entry != tuple(row[2:]):
            reach.bad[key] = Problem(
                key.hex(), MISMATCH, f"index row {tuple(row[2:])} != pack {row[1]} entry {entry}"
            )


def _check_chunks(reach: Reach, report: VerifyReport, skip: set[bytes] | None = None) -> None:
    def failed(row: IndexRow, kind: str, detail: str) -> None:
        reach.bad[row[0]] = Problem(row[0].hex(), kind, detail)

    chunks = (
        r
        for k, r in reach.rows.items()
        if r[5] == Kind.CHUNK and k not in reach.bad and k not in (skip or ())
    )
    for _ in read_objects(reach.blobs, chunks, failed, reach.max_chunk):
        pass


def _check_files(reach: Reach) -> set[bytes]:
    """Prove every reachable file of several chunks against its key (chunks read in order,
    a window at a time); returns the chunks read (each verified by its own hash on the way).
    A chunk shared by several files is read once per file."""
    read: set[bytes] = set()

    def failed(row: IndexRow, kind: str, detail: str) -> None:
        reach.bad[row[0]] = Problem(row[0].hex(), kind, detail)

    for fkey, chunks in reach.filemaps.items():
        if fkey in reach.bad or any(c in reach.bad or c not in reach.rows for c in chunks):
            continue
        lengths = reach.map_lengths[fkey]
        hasher = Hasher()
        complete = True
        i = 0
        while complete and i < len(chunks):
            j, total = i, 0
            while j < len(chunks) and (j == i or total + lengths[j] <= FILE_WINDOW):
                total += lengths[j]
                j += 1
            window = chunks[i:j]
            rows = [reach.rows[c] for c in dict.fromkeys(window)]
            got = {row[0]: raw for row, _s, raw in read_objects(reach.blobs, rows, failed, reach.max_chunk)}
            read.update(window)
            for c, n in zip(window, lengths[i:j], strict=True):
                data = got.get(c)
                if data is None or len(data) != n:
                    complete = False  # a bad chunk: reported on the chunk (or by check_sizes)
                    break
                hasher.update(data)
            i = j
        if complete and hasher.digest() != fkey:
            reach.bad[fkey] = Problem(
                fkey.hex(),
                CORRUPT,
                "the file's chunks do not hash to its key (its file map lists other chunks)",
            )
    return read


def affected_paths(ctx: Context, bundles: Sequence[BundleRecord], reach: Reach) -> list[Affected]:
    """Every (bundle, path) that reaches a bad object. Only subtrees holding one are read again."""
    bad = reach.bad
    cas = ctx.cas
    memo: dict[bytes, bool] = {}

    def file_problem(key: bytes, size: int) -> Problem | None:
        if key in bad:
            return bad[key]
        for c in reach.filemaps.get(key, ()):
            if c in bad:
                return bad[c]
        return reach.bad_sizes.get((key, size))

    def children(key: bytes) -> list[TreeEntry]:
        try:
            return cas.read_tree(key)
        except IntegrityError:
            return []

    def tree_has_bad(key: bytes) -> bool:
        # Post-order without recursion: trees can be deep.
        stack = [(key, False)]
        while stack:
            k, expanded = stack.pop()
            if k in memo:
                continue
            if k in bad:
                memo[k] = True
                continue
            kids = children(k)
            if not expanded:
                stack.append((k, True))
                stack.extend((e.key, False) for e in kids if e.is_dir and e.key not in memo)
                continue
            memo[k] = any(
                (e.is_dir and memo.get(e.key, False))
                or (e.is_file and file_problem(e.key, e.size) is not None)
                for e in kids
            )
        return memo[key]

    out: list[Affected] = []
    for b in bundles:
        root = bytes.fromhex(b.tree)
        if not tree_has_bad(root):
            continue
        found = 0
        stack: list[tuple[bytes, str]] = [(root, "")]
        while stack and found < MAX_PATHS:
            key, path = stack.pop()
            if key in bad:
                out.append(Affected(b.repo, b.id, path + "/" if path else "/", bad[key]))
                found += 1
                continue
            for e in sorted(children(key), key=lambda e: e.name, reverse=True):
                sub = f"{path}/{e.name}" if path else e.name
                if e.is_dir and tree_has_bad(e.key):
                    stack.append((e.key, sub))
                elif e.is_file:
                    p = file_problem(e.key, e.size)
                    if p is not None:
                        out.append(Affected(b.repo, b.id, sub, p))
                        found += 1
    return out


def _repair(ctx: Context, reach: Reach) -> int:
    """Drop index rows of bad objects and of file maps listing a bad chunk; returns rows dropped."""
    droppable = {
        k for k, p in reach.bad.items() if p.kind in (PACK_MISSING, CORRUPT, MISMATCH) and k in reach.rows
    }
    droppable |= {fm for fm, chunks in reach.filemaps.items() if any(c in reach.bad for c in chunks)}
    if droppable:
        ctx.meta.remove_objects(sorted(droppable))
    from datamon.cas.ingest import bump_index_epoch

    # Indexed trees may name what is bad or gone: uploads stop reusing trees cached before now.
    bump_index_epoch(ctx.cas.blobs)
    return len(droppable)
