"""``gc``: give back the space of objects that no bundle reaches, without racing uploads.

How it stays safe (docs/guarantees.md says it for users):

* **Fresh packs are untouchable, and are roots.** A pack is *fresh* while its last use (its
  ``created_ns``, or the newest *used mark* an upload left when it deduplicated against the
  pack, see ``cas.ingest.reusable``) is younger than the grace period. Nothing in a fresh
  pack is removed, and every tree and file map in it is marked like a bundle root, so an
  upload's new objects, and whatever older objects its new or reused trees and file maps
  point at, survive until its bundle lands.
* **Hide, re-check, then delete.** Garbage rows (unreachable objects in stale packs) are
  dropped from the index first, so no new upload can deduplicate against them. gc then looks
  again: packs that became fresh meanwhile (an upload marked them between its lookup and its
  mark), new packs and new bundles are marked from, and every hidden row they need is put
  back while the bytes are still there. Only then are pack blobs deleted or rewritten.
  An upload looks its keys up again after marking, so it either sees a key gc hid (and
  writes it anew) or its mark is seen by the re-check.
* **Crash-safe order.** Rows go before blobs; a repacked pack is written before the old
  pack's rows go, and is indexed right after. A crash in between leaves pack blobs without
  pack rows (*orphans*): the next gc re-indexes from an orphan's own index any object a
  bundle still needs (``adopted``), and deletes orphans first seen more than the grace period
  ago (first-seen times are kept in ``gc/orphans.json`` in the blob store).
* **A damaged store is not collected.** If marking finds a reachable object missing or
  unreadable, gc stops before removing anything (exit 4) and points at ``datamon verify``.
* **Erased bytes go at once.** Keys that ``repo delete files`` queued (the ``erasures`` table) are
  looked for in every pack blob's own index (indexed or not, so a duplicate copy that no index row
  names is found too). A stale pack holding one that nothing reaches is rewritten without it
  whatever its share of garbage; a key leaves the queue once no pack holds it. Packs younger than
  the grace period are left alone as always: their erased keys wait for a later gc.
* One gc at a time: the ``gc`` lock in the metadata database (taken over after an hour
  without a refresh, so a killed gc does not block the next one forever).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from datamon.api.verify import IndexRow, Problem, Reach, read_objects, read_pack_index
from datamon.cas.ingest import parse_used_mark
from datamon.cas.pack import ENTRY, FOOTER, HEADER_SIZE, Kind, PackBuilder, pack_blob_name
from datamon.errors import Conflict, IntegrityError, NotFound, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.blobstore import BlobStore
    from datamon.meta.records import PackRecord
    from datamon.meta.store import MetadataStore

DEFAULT_GRACE_NS = 24 * 3600 * 10**9
DEFAULT_REPACK_RATIO = 0.2  # repack a stale pack once this share of its bytes is garbage
LOCK_NAME = "gc"
LOCK_STALE_NS = 3600 * 10**9  # a gc lock not refreshed for this long belongs to a dead gc
LOCK_REFRESH_S = 60.0
ORPHANS_BLOB = "gc/orphans.json"
PACK_BLOB = re.compile(r"^packs/[0-9a-f]{2}/([0-9a-f]{64})\.pack$")

PackEntryTuple = tuple[bytes, int, int, int, int, int]


@dataclass
class GcReport:
    dry_run: bool
    grace_s: float
    bundles: int = 0
    reachable_objects: int = 0
    packs: int = 0
    fresh_packs: int = 0  # kept whole because they are younger than the grace period
    garbage_objects: int = 0  # index rows removed (unreachable objects in stale packs)
    garbage_bytes: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    new_packs: int = 0
    orphans: int = 0  # pack blobs without a pack row
    deleted_orphans: int = 0
    adopted_objects: int = 0  # reachable objects re-indexed from orphan packs
    restored_objects: int = 0  # hidden rows put back because an upload started using them
    temporaries: int = 0  # stale temporaries (of writers killed mid-write) removed from a local store
    run_inputs: int = 0  # trees kept only because a run that produced an output read them (lineage)
    freed_bytes: int = 0  # blob store bytes given back (or that would be, with dry_run)
    erased_purged: int = 0  # erased objects (``repo delete files``) now gone from every pack
    erased_waiting: int = 0  # erased objects still stored: held by a live bundle, or in a fresh pack
    index_nodes: int = 0  # file index nodes no bundle reaches, older than the grace period, removed
    index_rows: int = 0  # and their file and link rows
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # packs left alone because of a problem

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


MAX_DURATION_NS = 100 * 365 * 86400 * 10**9  # a century: longer is a typo, and overflows SQL integers


def parse_duration(text: str) -> int:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"``, ``"1h30m"`` or plain seconds → nanoseconds.

    Raises ``UsageError`` for anything else: negative, not a number, or longer than a century."""
    hint = "write it like 24h, 30m, 7d, 90s or 1h30m (at most 36500d)"
    t = text.strip().lower() if isinstance(text, str) else ""
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if re.fullmatch(r"\d{1,30}(\.\d{1,30})?", t):
        parts = [(t, "s")]
    else:
        parts = re.findall(r"(\d{1,30}(?:\.\d{1,30})?)([smhdw])", t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise UsageError(f"{text[:40]!r} is not a duration", hint)
    from decimal import Decimal

    total = sum(Decimal(n) * unit[u] for n, u in parts) * 10**9
    if total > MAX_DURATION_NS:
        raise UsageError(f"{text[:40]!r} is longer than a century", hint)
    return int(total)


class GcLock:
    """The ``gc`` lock (also taken by ``admin reindex``), refreshed while the holder works."""

    def __init__(self, meta: MetadataStore, what: str = "gc") -> None:
        self.meta = meta
        self.what = what
        self.holder = f"{what} {socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._last = 0.0

    def acquire(self) -> None:
        if not self.meta.try_lock(LOCK_NAME, self.holder, LOCK_STALE_NS):
            raise Conflict(
                "another gc or reindex is running on this store",
                "wait for it to finish and retry; a lock left by a killed gc expires after one hour",
            )
        self._last = time.monotonic()

    def refresh(self) -> None:
        if time.monotonic() - self._last < LOCK_REFRESH_S:
            return
        if not self.meta.try_lock(LOCK_NAME, self.holder, LOCK_STALE_NS):
            raise Conflict(
                f"the {self.what} lock was taken over by another process",
                f"run `datamon {self.what}` again; everything done so far is consistent",
            )
        self._last = time.monotonic()

    def release(self) -> None:
        self.meta.unlock(LOCK_NAME, self.holder)


def list_pack_blobs(blobs: BlobStore) -> set[str]:
    """Names of the packs present in the blob store."""
    out = set()
    for name in blobs.list("packs/"):
        m = PACK_BLOB.match(name)
        if m:
            out.add(m.group(1))
    return out


def read_used_marks(blobs: BlobStore) -> dict[str, list[tuple[int, str]]]:
    """pack name → [(time_ns, mark blob name)] of the used marks uploads left."""
    out: dict[str, list[tuple[int, str]]] = {}
    for name in blobs.list("used/"):
        parsed = parse_used_mark(name)
        if parsed is not None:
            out.setdefault(parsed[0], []).append((parsed[1], name))
    return out


def gc(
    ctx: Context,
    *,
    grace_ns: int = DEFAULT_GRACE_NS,
    dry_run: bool = False,
    repack_ratio: float = DEFAULT_REPACK_RATIO,
    keep_run_inputs: bool = True,
) -> GcReport:
    """Remove what no bundle reaches and that has been unused for ``grace_ns``.

    The inputs of every recorded run that produced an output are kept too, even after their
    bundles were deleted (so such a run can still be reproduced), unless ``keep_run_inputs`` is
    False (``gc --drop-run-inputs``).

    Raises ``Conflict`` (exit 3) if another gc or reindex holds the lock, ``IntegrityError``
    (exit 4, before removing anything) if a reachable object is missing or unreadable.
    Safe to interrupt at any point and to run again. ``dry_run`` changes nothing.
    """
    if grace_ns < 0:
        raise UsageError("the grace period cannot be negative")
    lock = GcLock(ctx.meta)
    lock.acquire()
    try:
        return _Collector(ctx, grace_ns, dry_run, repack_ratio, lock, keep_run_inputs).run()
    finally:
        lock.release()


class _Collector:
    def __init__(
        self,
        ctx: Context,
        grace_ns: int,
        dry_run: bool,
        repack_ratio: float,
        lock: GcLock,
        keep_run_inputs: bool,
    ) -> None:
        self.ctx = ctx
        self.keep_run_inputs = keep_run_inputs
        self._bundle_trees: set[str] = set()
        self.meta = ctx.meta
        self.blobs = ctx.cas.blobs
        self.pack_size = ctx.cas.pack_size
        self.dry_run = dry_run
        self.repack_ratio = repack_ratio
        self.lock = lock
        self.report = GcReport(dry_run=dry_run, grace_s=grace_ns / 1e9)
        self.t0 = time.time_ns()
        self.cutoff = self.t0 - grace_ns
        self.packs: dict[str, PackRecord] = {}
        self.hidden: dict[str, list[IndexRow]] = {}  # stale pack → its garbage rows, removed
        self.cancelled: set[str] = set()  # packs that must not be deleted or repacked this run
        self.orphans: set[str] = set()
        self._orphan_index: dict[bytes, tuple[str, PackEntryTuple]] | None = None
        self._orphan_sizes: dict[str, int] = {}
        self.gone_packs: set[str] = set()  # pack blobs deleted (or that would be, with dry_run)

    # -- freshness ---------------------------------------------------------------------
    def _last_use(self, p: PackRecord, marks: Mapping[str, list[tuple[int, str]]]) -> int:
        return max([p.created_ns, *(t for t, _ in marks.get(p.name, ()))])

    def _fresh(self, packs: Mapping[str, PackRecord], marks: Mapping[str, list[tuple[int, str]]]) -> set[str]:
        return {n for n, p in packs.items() if self._last_use(p, marks) > self.cutoff}

    def _pack_roots(self, names: Iterable[str]) -> list[tuple[bytes, int | None]]:
        roots: list[tuple[bytes, int | None]] = []
        for name in sorted(names):
            self.lock.refresh()
            roots += [
                (r[0], r[5]) for r in self.meta.objects_in_pack(name) if r[5] in (Kind.TREE, Kind.FILEMAP)
            ]
        return roots

    def _bundle_roots(self, seen: set[str]) -> list[tuple[bytes, int | None]]:
        roots: list[tuple[bytes, int | None]] = []
        for b in self.meta.iter_all_bundles():
            if b.id not in seen:
                seen.add(b.id)
                roots.append((bytes.fromhex(b.tree), Kind.TREE))
        if self.keep_run_inputs:  # lineage: what a recorded step read stays reproducible
            self._bundle_trees.update(k.hex() for k, _ in roots)
            extra = [t for t in self.meta.run_input_trees() if t not in self._bundle_trees]
            self.report.run_inputs = len(extra)
            roots += [(bytes.fromhex(t), Kind.TREE) for t in extra]
        # Git LFS objects are named by the lfs_objects table, not by any bundle.
        lfs = getattr(self.meta, "iter_lfs_file_keys", None)
        if lfs is not None:
            roots += [(bytes.fromhex(k), None) for k in lfs()]
        # Diamonds: the finished splits of open diamonds, and conflict losers commits recorded.
        from datamon.api.diamond import gc_roots as diamond_roots

        roots += diamond_roots(self.meta)
        return roots

    # -- finding rows the index lacks --------------------------------------------------
    def _resolve(self, keys: list[bytes]) -> dict[bytes, IndexRow]:
        """Rows for reachable keys the index lacks: hidden by this run (put back), or in an
        orphan pack left by a crash (adopted)."""
        found: dict[bytes, IndexRow] = {}
        wanted = set(keys)
        for pack, rows in self.hidden.items():
            back = [r for r in rows if r[0] in wanted]
            if back:
                self._reindex(pack, self.packs[pack].size, back)
                self.cancelled.add(pack)
                self.report.restored_objects += len(back)
                found.update((r[0], r) for r in back)
        rest = [k for k in keys if k not in found]
        if rest and self.orphans:
            index = self._orphans_by_key()
            by_pack: dict[str, list[IndexRow]] = {}
            for k in rest:
                hit = index.get(k)
                if hit is not None:
                    pack, e = hit
                    by_pack.setdefault(pack, []).append((e[0], pack, *e[1:]))
            for pack, rows in by_pack.items():
                self._reindex(pack, self._orphan_sizes[pack], rows)
                self.report.adopted_objects += len(rows)
                found.update((r[0], r) for r in rows)
        return found

    def _reindex(self, pack: str, size: int, rows: list[IndexRow]) -> None:
        if not self.dry_run:
            self.meta.add_pack(pack, size, [(r[0], *r[2:]) for r in rows])

    def _orphans_by_key(self) -> dict[bytes, tuple[str, PackEntryTuple]]:
        if self._orphan_index is None:
            self._orphan_index = {}
            for pack in sorted(self.orphans):
                entries = read_pack_index(self.blobs, pack)
                if isinstance(entries, Problem):
                    continue
                self._orphan_sizes[pack] = self.blobs.size(pack_blob_name(pack)) or 0
                for e in entries:
                    self._orphan_index.setdefault(e[0], (pack, e))
        return self._orphan_index

    # -- the run -------------------------------------------------------------------------
    def run(self) -> GcReport:
        rep = self.report
        t_start = time.perf_counter()
        self.packs = {p.name: p for p in self.meta.list_packs()}
        present = list_pack_blobs(self.blobs)
        self.orphans = present - self.packs.keys()
        marks = read_used_marks(self.blobs)
        fresh = self._fresh(self.packs, marks)
        rep.packs, rep.fresh_packs = len(self.packs), len(fresh)

        erased = set(self.meta.erasure_keys())
        erased_in, unreadable = self._erased_in_packs(erased, present) if erased else ({}, False)

        bundle_ids: set[str] = set()
        reach = Reach(self.ctx, resolve_missing=self._resolve)
        reach.walk(self._bundle_roots(bundle_ids) + self._pack_roots(fresh))
        self._stop_if_damaged(reach)
        rep.bundles = len(bundle_ids)

        # Plan: garbage rows of stale packs; which packs go entirely, which get rewritten.
        live_bytes: dict[str, int] = {}
        for name in sorted(self.packs.keys() - fresh):
            self.lock.refresh()
            rows = self.meta.objects_in_pack(name)
            garbage = [r for r in rows if r[0] not in reach.rows]
            live_bytes[name] = sum(r[3] for r in rows if r[0] in reach.rows)
            if garbage:
                self.hidden[name] = garbage
                rep.garbage_objects += len(garbage)
                rep.garbage_bytes += sum(r[3] for r in garbage)
        if not self.dry_run and self.hidden:
            self.meta.remove_objects([r[0] for rows in self.hidden.values() for r in rows])
            self._recheck(reach, bundle_ids, fresh)

        # A stale pack holding erased bytes that nothing reaches is rewritten whatever its waste.
        force = {
            n for n, keys in erased_in.items() if n in live_bytes and any(k not in reach.rows for k in keys)
        }
        doomed = [n for n, b in live_bytes.items() if b == 0 and n not in self.cancelled]
        partial = [
            n
            for n, b in live_bytes.items()
            if b > 0
            and n not in self.cancelled
            and (n in force or self._waste(self.packs[n], b) > self.repack_ratio)
        ]
        for name in doomed:
            self.lock.refresh()
            if not self.dry_run:
                self.meta.remove_pack(name)  # rows first: a crash here leaves an orphan blob
                self._delete_pack_blob(name, marks)
            rep.deleted_packs += 1
            rep.freed_bytes += self.packs[name].size
            self.gone_packs.add(name)
        self._repack(partial, marks)
        self._collect_orphans()
        self._collect_temporaries()
        if erased:
            self._settle_erasures(erased, erased_in, reach, unreadable)
        if not self.dry_run:
            self._drop_dead_marks()
        # The file index (docs/query.md): nodes of deleted bundles that no other bundle shares.
        rep.index_nodes, rep.index_rows = self.meta.collect_index(self.cutoff, dry_run=self.dry_run)
        rep.reachable_objects = len(reach.rows)
        rep.seconds = time.perf_counter() - t_start
        return rep

    def _erased_in_packs(self, erased: set[bytes], present: set[str]) -> tuple[dict[str, set[bytes]], bool]:
        """Pack → the erased keys its own index lists (every pack blob, indexed or orphan), and
        whether some pack could not be read (then no key is known to be gone)."""
        found: dict[str, set[bytes]] = {}
        unreadable = False
        for pack in sorted(present):
            self.lock.refresh()
            entries = read_pack_index(self.blobs, pack)
            if isinstance(entries, Problem):
                unreadable = True
                continue
            keys = {e[0] for e in entries if e[0] in erased}
            if keys:
                found[pack] = keys
        return found, unreadable

    def _settle_erasures(
        self, erased: set[bytes], erased_in: dict[str, set[bytes]], reach: Reach, unreadable: bool
    ) -> None:
        """Forget the erased keys no pack holds any more (none, if a pack could not be read)."""
        still = {k for pack, keys in erased_in.items() if pack not in self.gone_packs for k in keys}
        gone = [] if unreadable else sorted(k for k in erased if k not in still and k not in reach.rows)
        self.report.erased_purged = len(gone)
        self.report.erased_waiting = len(erased) - len(gone)
        if gone and not self.dry_run:
            self.meta.forget_erasures(gone)

    def _stop_if_damaged(self, reach: Reach) -> None:
        if not reach.bad:
            return
        first = next(iter(reach.bad.values()))
        raise IntegrityError(
            f"gc stopped before removing anything: {len(reach.bad)} reachable objects are missing or "
            f"unreadable (first: object {first.key}: {first.detail})",
            "run `datamon verify` to see the bundles affected; repair them or delete them, then rerun gc",
        )

    def _recheck(self, reach: Reach, bundle_ids: set[str], fresh: set[str]) -> None:
        """After hiding garbage: mark from what appeared or was reused since the first mark,
        and put back the hidden rows it needs (their bytes are all still in place)."""
        self.lock.refresh()
        now_packs = {p.name: p for p in self.meta.list_packs()}
        newly_fresh = self._fresh(now_packs, read_used_marks(self.blobs)) - fresh
        for name in sorted(newly_fresh & self.hidden.keys()):
            # An upload marked this pack: it may rely on any object it looked up in it.
            rows = self.hidden[name]
            self._reindex(name, self.packs[name].size, rows)
            self.report.restored_objects += len(rows)
        self.cancelled |= newly_fresh
        reach.walk(self._bundle_roots(bundle_ids) + self._pack_roots(newly_fresh))
        self._stop_if_damaged(reach)

    @staticmethod
    def _waste(p: PackRecord, live_bytes: int) -> float:
        """Share of a pack's bytes that are neither live objects nor pack structure."""
        structure = HEADER_SIZE + p.object_count * ENTRY.size + FOOTER.size
        return max(0, p.size - structure - live_bytes) / max(p.size, 1)

    def _delete_pack_blob(self, name: str, marks: Mapping[str, list[tuple[int, str]]]) -> None:
        self.blobs.delete(pack_blob_name(name))
        for _, mark in marks.get(name, ()):
            self.blobs.delete(mark)

    def _repack(self, names: list[str], marks: Mapping[str, list[tuple[int, str]]]) -> None:
        """Copy the live objects of ``names`` into new packs, verified and still compressed.

        Order per group: new pack blob → old packs' rows → new pack's rows → old blobs. A crash
        leaves the new pack (and maybe old ones) as orphans that the next gc adopts from."""
        rep = self.report
        builder = PackBuilder()
        group: list[str] = []
        if self.dry_run:
            # Mirror the grouping below, so the estimate counts the new packs' own header,
            # index and footer exactly as writing them would.
            data = count = 0
            for i, name in enumerate(names):
                live = self._live_rows(name)
                self.gone_packs.add(name)
                rep.repacked_packs += 1
                rep.freed_bytes += self.packs[name].size
                data += sum(r[3] for r in live)
                count += len(live)
                if HEADER_SIZE + data >= self.pack_size or i == len(names) - 1:
                    rep.freed_bytes -= HEADER_SIZE + data + ENTRY.size * count + FOOTER.size
                    data = count = 0
            return
        for name in names:
            self.lock.refresh()
            rows = self.meta.objects_in_pack(name)
            copied, failed = self._read_live(rows)
            if failed or len(copied) != len(rows):
                rep.skipped.append(
                    f"pack {name}: {failed[0] if failed else 'objects changed'}; left in place"
                )
                continue
            for row, stored in copied:
                builder.add(row[0], stored, row[4], row[5], row[6])
            group.append(name)
            if len(builder) >= self.pack_size:
                self._finish_group(builder, group, marks)
                builder, group = PackBuilder(), []
        if group:
            self._finish_group(builder, group, marks)

    def _read_live(self, rows: list[IndexRow]) -> tuple[list[tuple[IndexRow, bytes]], list[str]]:
        """(row, stored bytes) of every object that reads back intact, and what failed."""
        failed: list[str] = []
        copied = [
            (row, stored)
            for row, stored, _ in read_objects(self.blobs, rows, lambda r, k, d: failed.append(d))
        ]
        return copied, failed

    def _live_rows(self, name: str) -> list[IndexRow]:
        hidden = {r[0] for r in self.hidden.get(name, ())}
        return [r for r in self.meta.objects_in_pack(name) if r[0] not in hidden]

    def _finish_group(
        self, builder: PackBuilder, group: list[str], marks: Mapping[str, list[tuple[int, str]]]
    ) -> None:
        rep = self.report
        old_bytes = sum(self.packs[n].size for n in group)
        name, data, entries = builder.finish()
        self.blobs.put(pack_blob_name(name), data)
        # One transaction: old rows out, new rows in (no window with live objects unindexed).
        self.meta.add_pack(name, len(data), [e.as_tuple() for e in entries], replaces=group)
        for old in group:
            if old != name:  # the same live objects in the same order make the same pack
                self._delete_pack_blob(old, marks)
                self.gone_packs.add(old)
        rep.new_packs += 1
        new_size = len(data)
        rep.repacked_packs += len(group)
        rep.freed_bytes += max(0, old_bytes - new_size)

    def _collect_orphans(self) -> None:
        """Delete pack blobs that have had no pack row for longer than the grace period."""
        rep = self.report
        try:
            seen: dict[str, int] = json.loads(self.blobs.get(ORPHANS_BLOB))
        except (NotFound, ValueError):
            seen = {}
        indexed = {p.name for p in self.meta.list_packs()}
        orphans = self.orphans - indexed
        rep.orphans = len(orphans)
        keep: dict[str, int] = {}
        for name in sorted(orphans):
            first = int(seen.get(name, self.t0))
            if first > self.cutoff:
                keep[name] = first
                continue
            rep.deleted_orphans += 1
            self.gone_packs.add(name)
            rep.freed_bytes += self._orphan_sizes.get(name) or self.blobs.size(pack_blob_name(name)) or 0
            if not self.dry_run:
                self.blobs.delete(pack_blob_name(name))
        if not self.dry_run and (keep or seen):
            self.blobs.put(ORPHANS_BLOB, json.dumps(keep, sort_keys=True).encode())

    def _collect_temporaries(self) -> None:
        """Delete temporaries a killed writer left in a local blob store, once older than the grace
        period (an upload writing one right now is younger). Object stores leave none."""
        lister = getattr(self.blobs, "list_temporaries", None)
        if lister is None:
            return
        rep = self.report
        for name in lister(self.cutoff):
            rep.temporaries += 1
            rep.freed_bytes += self.blobs.size(name) or 0
            if not self.dry_run:
                self.blobs.remove_temporary(name)  # type: ignore[attr-defined]

    def _drop_dead_marks(self) -> None:
        """Used marks of packs that are gone, and all but the newest mark of the others."""
        indexed = {p.name for p in self.meta.list_packs()}
        present = list_pack_blobs(self.blobs)
        for pack, marks in read_used_marks(self.blobs).items():
            marks.sort()
            stale = marks if pack not in indexed and pack not in present else marks[:-1]
            for _, name in stale:
                self.blobs.delete(name)
