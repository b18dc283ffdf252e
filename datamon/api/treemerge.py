"""Merging the root trees of several splits into one tree (the commit of a diamond).

Each split is a root tree plus its order (``seq``: when it finished). The merge walks the trees
top-down, one level at a time (all trees of a level read with one batched lookup and pack-ordered
ranged reads), and only where splits overlap:

* a name only one split has keeps that split's entry as it is; for a directory that means its
  whole subtree is reused without being read;
* the same name with the same content in several splits (same kind and key; a symlink's target)
  is one entry, never a conflict; a directory that is identical in several splits is reused too;
* the same directory name with different subtrees in several splits is merged below;
* anything else is a **conflict** (the same path with different content: two file keys, a file
  and a directory, two symlink targets). ``fail`` collects every conflict and builds nothing;
  ``last-wins`` and ``ignore`` keep the version of the split that finished last (if that is a
  directory, every split's directory there is merged) and report each conflict.

Entry metadata where several splits agree on the content: the latest split's mode, and for a
directory the newest mtime of its versions (a directory's stat is the same in every split that
uploads files below it from one source tree, so the merge equals a single upload of the union).
Directory entry sizes are recomputed (bytes of the files below). The file count is the splits'
counts less the entries merged away (subtrees merged away are counted by reading them).
Nothing here recurses on depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datamon.cas.hashing import key_of
from datamon.cas.pack import Kind
from datamon.cas.tree import EntryKind, TreeEntry, decode_tree, encode_tree
from datamon.errors import CorruptObject, UsageError

if TYPE_CHECKING:
    from datamon.cas.store import ContentStore

FAIL = "fail"
LAST_WINS = "last-wins"
IGNORE = "ignore"
MODES = (FAIL, LAST_WINS, IGNORE)


@dataclass(frozen=True)
class SplitTree:
    split: str
    seq: int
    tree: bytes
    files: int
    size: int


@dataclass(frozen=True)
class Version:
    """One split's entry at a conflicting path."""

    split: str
    seq: int
    entry: TreeEntry
    winner: bool  # this version's content is (part of) what the merged tree holds


@dataclass(frozen=True)
class PathConflict:
    path: str
    versions: tuple[Version, ...]  # in split order (the last one won)


@dataclass
class MergeResult:
    tree: bytes
    files: int
    size: int
    conflicts: list[PathConflict] = field(default_factory=list)
    objects: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # new trees to store
    trees_read: int = 0


@dataclass
class _Node:
    path: str
    versions: list[tuple[int, str, bytes]]  # (seq, split, tree key), in seq order
    children: dict[str, TreeEntry | tuple[_Node, int, int]] = field(default_factory=dict)
    key: bytes = b""
    size: int = 0


def _content(e: TreeEntry) -> tuple[int, bytes, str]:
    return (int(e.kind), e.key, e.target)


def read_trees(cas: ContentStore, keys: Iterable[bytes]) -> dict[bytes, list[TreeEntry]]:
    """Entries of every tree in ``keys``: one index lookup, then pack-ordered ranged reads.
    ``MissingObject``/``CorruptObject`` (exit 4) for a key that is not a readable tree."""
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return {}
    reader = cas.reader
    locs = reader.locate(wanted)
    for loc in locs.values():
        if loc.kind != Kind.TREE:
            raise CorruptObject(loc.key.hex(), f"pack {loc.pack}", f"indexed as kind {loc.kind}, not a tree")
    out: dict[bytes, list[TreeEntry]] = {}
    for key, raw in reader.read_locations(locs.values()):
        try:
            out[key] = decode_tree(raw)
        except ValueError as e:
            raise CorruptObject(key.hex(), "tree", str(e)) from None
    return out


def count_files(cas: ContentStore, roots: Iterable[bytes]) -> dict[bytes, int]:
    """Files below each tree in ``roots`` (symlinks and directories not counted)."""
    entries: dict[bytes, list[TreeEntry]] = {}
    level = list(dict.fromkeys(roots))
    while level:
        got = read_trees(cas, [k for k in level if k not in entries])
        entries.update(got)
        level = list(dict.fromkeys(e.key for k in got for e in got[k] if e.is_dir and e.key not in entries))
    memo: dict[bytes, int] = {}
    for root in dict.fromkeys(roots):
        stack = [(root, False)]
        while stack:
            k, expanded = stack.pop()
            if k in memo:
                continue
            kids = entries[k]
            if not expanded:
                stack.append((k, True))
                stack.extend((e.key, False) for e in kids if e.is_dir and e.key not in memo)
                continue
            memo[k] = sum(1 for e in kids if e.is_file) + sum(memo[e.key] for e in kids if e.is_dir)
    return {k: memo[k] for k in roots}


def merge_trees(cas: ContentStore, splits: Sequence[SplitTree], mode: str = FAIL) -> MergeResult:
    """Merge the splits' root trees (see the module docstring). With ``mode == "fail"`` and
    conflicts, the result has the conflicts and no tree (``tree == b""``)."""
    if mode not in MODES:
        raise UsageError(f"unknown conflict mode {mode!r}", f"use one of {', '.join(MODES)}")
    if not splits:
        raise UsageError("no split to merge")
    ordered = sorted(splits, key=lambda s: (s.seq, s.split))
    if len({s.tree for s in ordered}) == 1:  # one split, or every split uploaded the same tree
        s = ordered[-1]
        return MergeResult(s.tree, s.files, s.size)

    root = _Node("", [(s.seq, s.split, s.tree) for s in ordered])
    nodes = [root]
    level = [root]
    conflicts: list[PathConflict] = []
    merged_away_files = 0
    merged_away_trees: dict[bytes, int] = {}  # tree key -> how many copies were merged away
    trees_read = 0

    while level:
        trees = read_trees(cas, (k for n in level for _, _, k in n.versions))
        trees_read += len(trees)
        nxt: list[_Node] = []
        for node in level:
            groups: dict[str, list[tuple[int, str, TreeEntry]]] = {}
            for seq, split, key in node.versions:
                for e in trees[key]:
                    groups.setdefault(e.name, []).append((seq, split, e))
            for name in sorted(groups):
                vs = groups[name]
                if len(vs) == 1:
                    node.children[name] = vs[0][2]
                    continue
                path = f"{node.path}/{name}" if node.path else name
                latest = vs[-1][2]
                contents = {_content(e) for _, _, e in vs}
                if len(contents) == 1:
                    if latest.is_dir:
                        node.children[name] = latest._replace(mtime_ns=max(e.mtime_ns for _, _, e in vs))
                        merged_away_trees[latest.key] = merged_away_trees.get(latest.key, 0) + len(vs) - 1
                    else:
                        node.children[name] = latest
                        if latest.is_file:
                            merged_away_files += len(vs) - 1
                    continue
                if all(e.is_dir for _, _, e in vs):
                    child = _Node(path, [(seq, split, e.key) for seq, split, e in vs])
                    node.children[name] = (child, latest.mode, max(e.mtime_ns for _, _, e in vs))
                    nodes.append(child)
                    nxt.append(child)
                    continue
                # A conflict: the latest split's version wins.
                win = _content(latest)
                if latest.is_dir:
                    winners = [(seq, split, e) for seq, split, e in vs if e.is_dir]
                else:
                    winners = [(seq, split, e) for seq, split, e in vs if _content(e) == win]
                won = {id(v[2]) for v in winners}
                conflicts.append(
                    PathConflict(path, tuple(Version(split, seq, e, id(e) in won) for seq, split, e in vs))
                )
                if mode == FAIL:
                    continue
                for _, _, e in vs:
                    if id(e) in won:
                        continue
                    if e.is_file:
                        merged_away_files += 1
                    elif e.is_dir:
                        merged_away_trees[e.key] = merged_away_trees.get(e.key, 0) + 1
                if not latest.is_dir:
                    node.children[name] = latest
                    if latest.is_file:
                        merged_away_files += len(winners) - 1
                elif len({e.key for _, _, e in winners}) == 1:
                    node.children[name] = latest._replace(mtime_ns=max(e.mtime_ns for _, _, e in winners))
                    merged_away_trees[latest.key] = merged_away_trees.get(latest.key, 0) + len(winners) - 1
                else:
                    child = _Node(path, [(seq, split, e.key) for seq, split, e in winners])
                    node.children[name] = (child, latest.mode, max(e.mtime_ns for _, _, e in winners))
                    nodes.append(child)
                    nxt.append(child)
        level = nxt

    conflicts.sort(key=lambda c: c.path.encode("utf-8", "surrogateescape"))
    if conflicts and mode == FAIL:
        return MergeResult(b"", 0, 0, conflicts, trees_read=trees_read)

    objects: list[tuple[bytes, bytes, int]] = []
    for node in reversed(nodes):  # children were appended after their parents
        entries: list[TreeEntry] = []
        total = 0
        for name, c in node.children.items():
            if isinstance(c, TreeEntry):
                e = c
            else:  # (a TreeEntry is a tuple too: test it first)
                child, mode_bits, mtime = c
                e = TreeEntry(name, EntryKind.DIR, mode_bits, mtime, child.size, child.key)
            if not e.is_symlink:
                total += e.size
            entries.append(e)
        raw = encode_tree(entries)
        node.key = key_of(raw)
        node.size = total
        objects.append((node.key, raw, Kind.TREE))
    files = sum(s.files for s in ordered) - merged_away_files
    if merged_away_trees:
        counts = count_files(cas, merged_away_trees)
        files -= sum(counts[k] * n for k, n in merged_away_trees.items())
    return MergeResult(root.key, files, root.size, conflicts, objects, trees_read)
