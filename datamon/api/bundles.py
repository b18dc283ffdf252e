"""Bundles: the record whose hash is the id, resolving ids/labels, walking and reading trees."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, TypeVar

from datamon.errors import NotFound, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.objects import Location
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord

RECORD_VERSION = 1
RECORD_VERSION_EXTRAS = 2  # a record with "meta" or "attrs" (docs/format.md)

T = TypeVar("T")


class Descend:
    """Yielded by a step generator of ``flatten``: run this step generator here, then go on."""

    __slots__ = ("gen",)

    def __init__(self, gen: Iterator[object]) -> None:
        self.gen = gen


Step = Iterator[T | Descend]


def flatten(step: Step[T]) -> Iterator[T]:
    """The items of a recursive walk written as step generators that yield ``Descend(sub)``
    instead of ``yield from sub``: same order, but an explicit stack instead of Python's
    (a tree thousands of directories deep does not hit the recursion limit)."""
    stack: list[Iterator[object]] = [step]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(item, Descend):
            stack.append(item.gen)
        else:
            yield item  # type: ignore[misc]


def encode_record(
    *,
    repo: str,
    tree: str,
    parents: Sequence[str],
    message: str,
    contributor_name: str,
    contributor_email: str,
    time_ns: int,
    file_count: int,
    total_size: int,
    meta: Mapping[str, object] | None = None,
    attrs: str | None = None,
) -> bytes:
    """Canonical bundle record (docs/format.md): compact JSON, sorted keys, UTF-8.

    ``meta`` (bundle metadata) and ``attrs`` (hex key of the file attributes object) are written
    only when given and non-empty, in a version-2 record; without them the record is the version-1
    record, byte for byte."""
    record: dict[str, object] = {
        "contributor": {"email": contributor_email, "name": contributor_name},
        "files": file_count,
        "message": message,
        "parents": list(parents),
        "repo": repo,
        "size": total_size,
        "time_ns": time_ns,
        "tree": tree,
        "version": RECORD_VERSION,
    }
    if meta:
        from datamon.meta.records import meta_problem

        problem = meta_problem(dict(meta))
        if problem:
            raise UsageError(f"bundle metadata cannot be stored: {problem}")
        record["meta"] = dict(meta)
    if attrs:
        record["attrs"] = attrs
    if meta or attrs:
        record["version"] = RECORD_VERSION_EXTRAS
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def make_bundle(
    *,
    repo: str,
    tree: str,
    parents: Sequence[str],
    message: str,
    contributor_name: str,
    contributor_email: str,
    time_ns: int,
    file_count: int,
    total_size: int,
    meta: Mapping[str, object] | None = None,
    attrs: str | None = None,
) -> BundleRecord:
    """A new bundle record; its id is the BLAKE3 of its canonical encoding."""
    from datamon.cas.hashing import key_of
    from datamon.meta.records import BundleRecord

    raw = encode_record(
        repo=repo,
        tree=tree,
        parents=parents,
        message=message,
        contributor_name=contributor_name,
        contributor_email=contributor_email,
        time_ns=time_ns,
        file_count=file_count,
        total_size=total_size,
        meta=meta,
        attrs=attrs,
    )
    return BundleRecord(
        id=key_of(raw).hex(),
        repo=repo,
        tree=tree,
        parents=tuple(parents),
        message=message,
        contributor_name=contributor_name,
        contributor_email=contributor_email,
        created_ns=time_ns,
        file_count=file_count,
        total_size=total_size,
        record=raw,
    )


def check_record(b: BundleRecord) -> None:
    """Raise ``IntegrityError`` unless the stored record hashes to the bundle id."""
    from datamon.cas.hashing import key_of
    from datamon.errors import IntegrityError

    if key_of(b.record).hex() != b.id:
        raise IntegrityError(
            f"bundle {b.id} in repo {b.repo}: its record does not hash to its id",
            "restore the metadata database from a backup",
        )
    try:
        tree = json.loads(b.record)["tree"]
    except (ValueError, KeyError):
        tree = None
    if tree != b.tree:
        raise IntegrityError(
            f"bundle {b.id}: record and tree column disagree", "restore the metadata database"
        )


_HEX = re.compile(r"^[0-9a-f]+$")


def resolve(ctx: Context, repo: str, *, bundle: str | None = None, label: str | None = None) -> BundleRecord:
    """The bundle named by an id (or unique prefix of 6+ hex chars), a label, or neither
    (the latest bundle). Raises ``NotFound``, ``AmbiguousId`` or ``UsageError``."""
    if bundle and label:
        raise UsageError("give either --bundle or --label, not both")
    meta = ctx.meta
    if label:
        rec = meta.get_bundle(repo, meta.get_label(repo, label).bundle_id)
    elif bundle:
        b = bundle.strip().lower()
        if not _HEX.match(b):
            raise UsageError(
                f"{bundle!r} is not a bundle id", "bundle ids are hex; see `datamon bundle list`"
            )
        rec = meta.get_bundle(repo, b) if len(b) == 64 else meta.resolve_bundle(repo, b)
    else:
        latest = meta.latest_bundle(repo)
        if latest is None:
            meta.get_repo(repo)  # NotFound for an unknown repo
            raise NotFound(
                f"repo {repo!r} has no bundles yet", f"upload one with `datamon bundle upload --repo {repo}`"
            )
        rec = latest
    check_record(rec)
    return rec


class Entry(NamedTuple):
    """One entry of a bundle with its path relative to the bundle root (``/``-separated)."""

    path: str
    entry: TreeEntry

    @property
    def size(self) -> int:
        return self.entry.size


def split_path(path: str) -> list[str]:
    """Components of a bundle path; rejects anything that would escape the bundle. Names are
    Linux names: a backslash is an ordinary character, not a separator."""
    if "\x00" in path:
        raise UsageError(f"path {path!r} contains a NUL character", "give a path of the bundle")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or path.startswith("/"):
        raise UsageError(f"path {path!r} escapes the bundle", "give a path relative to the bundle root")
    return parts


def read_tree_once(ctx: Context, key: bytes) -> list[TreeEntry]:
    """``ctx.cas.read_tree`` for a walk that reads each tree once (a download, a listing, a
    diff): the same checks (indexed as a tree, bytes hash to the key, a valid tree), without
    filling the object reader's caches, which would otherwise hold every tree of the bundle."""
    from datamon.cas.objects import Location
    from datamon.cas.pack import Kind
    from datamon.cas.tree import decode_tree
    from datamon.errors import CorruptObject, MissingObject

    cas = ctx.cas
    row = cas.index.lookup_objects([key]).get(key)
    if row is None:
        raise MissingObject(key.hex(), "not in the object index")
    loc = Location.from_row(row)
    if loc.kind != Kind.TREE:
        raise CorruptObject(
            key.hex(), f"pack {loc.pack}", f"indexed as kind {loc.kind} where kind {Kind.TREE} is needed"
        )
    raw = cas.reader.read_location(loc)
    try:
        return decode_tree(raw)
    except ValueError as e:
        raise CorruptObject(key.hex(), "tree", str(e)) from None


def locate_once(ctx: Context, keys: Sequence[bytes]) -> dict[bytes, Location]:
    """``ctx.cas.reader.locate`` without its cache of locations (which keeps 200,000)."""
    from datamon.cas.objects import Location
    from datamon.errors import MissingObject

    rows = ctx.cas.index.lookup_objects(keys)
    out = {}
    for k in keys:
        row = rows.get(k)
        if row is None:
            raise MissingObject(k.hex(), "not in the object index")
        out[k] = Location.from_row(row)
    return out


def iter_entries(
    ctx: Context, b: BundleRecord, *, files_only: bool = False, name_filter: str | None = None
) -> Iterator[Entry]:
    """Every entry of the bundle, depth-first in name order. Streams: one tree object is
    decoded at a time (``read_tree_once``), when the walk reaches it, so the first entries
    come before the rest of the bundle is read and memory follows the depth, not the size."""
    return iter_tree_entries(ctx, bytes.fromhex(b.tree), files_only=files_only, name_filter=name_filter)


def iter_tree_entries(
    ctx: Context, root: bytes, *, files_only: bool = False, name_filter: str | None = None
) -> Iterator[Entry]:
    """``iter_entries`` of the tree ``root``."""
    from datamon.cas.tree import EntryKind

    pattern = re.compile(name_filter) if name_filter else None
    search = pattern.search if pattern is not None else None
    DIR = EntryKind.DIR
    stack: list[tuple[str, Iterator[TreeEntry]]] = [("", iter(read_tree_once(ctx, root)))]
    while stack:
        prefix, it = stack[-1]
        for e in it:
            path = prefix + e.name
            if e.kind == DIR:
                if not files_only and (search is None or search(path)):
                    yield Entry(path, e)
                stack.append((path + "/", iter(read_tree_once(ctx, e.key))))
                break
            if search is None or search(path):
                yield Entry(path, e)
        else:
            stack.pop()


def lookup(ctx: Context, b: BundleRecord, path: str) -> TreeEntry:
    """The entry at ``path`` in bundle ``b``; raises ``NotFound``."""
    from datamon.cas.tree import EntryKind, TreeEntry

    parts = split_path(path)
    tree = bytes.fromhex(b.tree)
    entry = TreeEntry("", EntryKind.DIR, 0o755, b.created_ns, b.total_size, tree)
    for i, part in enumerate(parts):
        if not entry.is_dir:
            break
        found = [e for e in ctx.cas.read_tree(entry.key) if e.name == part]
        if not found:
            break
        entry = found[0]
        if i == len(parts) - 1:
            return entry
    else:
        if not parts:
            return entry
    raise NotFound(
        f"no file {path!r} in bundle {b.id[:12]} of repo {b.repo}",
        f"list its files with `datamon bundle list files --repo {b.repo} --bundle {b.id[:12]}`",
    )


def open_file(
    ctx: Context, repo: str, path: str, *, bundle: str | None = None, label: str | None = None
) -> BinaryIO:
    """A lazy, seekable, read-only file object for one file of a bundle."""
    import io

    b = resolve(ctx, repo, bundle=bundle, label=label)
    e = lookup(ctx, b, path)
    if not e.is_file:
        raise UsageError(f"{path!r} in bundle {b.id[:12]} is not a regular file")
    raw = ctx.cas.open_file(e.key, e.size)
    return io.BufferedReader(raw, buffer_size=1 << 20)
