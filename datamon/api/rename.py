"""``repo rename``: give a repo a new name; its bundles, labels, history, LFS ids and runs follow.

What a rename changes, and what it deliberately does not:

* The repo's row gets the new name; labels, label history, bundles and LFS ids refer to the row,
  so they follow in the same transaction. The old name becomes a *former name*, kept in
  ``repo_renames`` and reserved for this repo (``repo create`` or another rename to it is exit 3),
  so that a name always means one repo; a lookup by it says what the repo is called now.
* Bundle records are not rewritten: a record names the repo it was written in, and its hash is the
  bundle id, so every id stays valid (``bundle get ID``, pins, lock files, run records). Checks that
  compare a record with its row (``meta/records.py`` ``record_mismatch``, used by every display)
  accept a record naming the current name or a former name of the repo; ``verify`` checks the hash
  and the tree, which a rename does not touch.
* Run records (lineage) are not rewritten either (content-addressed, and copied to the blob store):
  they name the repo as it was called when the run was recorded, and ``run list --repo NEW`` also
  matches the former names.
* Each rename is also written to the blob store as ``renames/<id>`` (canonical JSON; the id is its
  BLAKE3), after the database commit. ``admin reindex`` reads these back: a rename that a restored
  database does not know is replayed when the repo it names (same creation time) still has the old
  name and the new one is free; a rename the database has but the blob store lacks gets its copy
  back. So runs recorded after the rename (which name the new name) find their repo again after a
  restore from an older backup.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from datamon.errors import DatamonError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.rewrites import RenameEvent

RENAME_BLOB_PREFIX: Final = "renames/"
RENAME_VERSION: Final = 1
MAX_RENAME_BYTES: Final = 1 << 16
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEYS: Final = frozenset({"contributor", "from", "repo_created_ns", "time_ns", "to", "version"})
_INT64 = 1 << 63


@dataclass(frozen=True)
class RenameRecord:
    id: str
    old: str
    new: str
    time_ns: int
    contributor: str
    repo_created_ns: int
    raw: bytes


def encode_rename(ev: RenameEvent) -> RenameRecord:
    """The canonical record of a rename (compact JSON, sorted keys, UTF-8)."""
    from datamon.cas.hashing import key_of

    d = {
        "contributor": ev.contributor,
        "from": ev.old_name,
        "repo_created_ns": ev.repo_created_ns,
        "time_ns": ev.time_ns,
        "to": ev.new_name,
        "version": RENAME_VERSION,
    }
    raw = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return RenameRecord(
        key_of(raw).hex(), ev.old_name, ev.new_name, ev.time_ns, ev.contributor, ev.repo_created_ns, raw
    )


def decode_rename(raw: bytes, rid: str) -> RenameRecord | None:
    """The rename a blob holds, or ``None`` unless it is a canonical record hashing to ``rid``
    (a blob in a shared store is hostile input)."""
    from datamon.cas.hashing import key_of
    from datamon.names import is_valid

    if len(raw) > MAX_RENAME_BYTES or key_of(raw).hex() != rid:
        return None
    try:
        d: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(d, dict) or set(d) != _KEYS or d["version"] != RENAME_VERSION:
        return None
    ints = (d["time_ns"], d["repo_created_ns"])
    if not all(isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64 for v in ints):
        return None
    if not (isinstance(d["from"], str) and isinstance(d["to"], str) and isinstance(d["contributor"], str)):
        return None
    if not (is_valid(d["from"]) and is_valid(d["to"])) or len(d["contributor"]) > 4096:
        return None
    if json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() != raw:
        return None
    return RenameRecord(rid, d["from"], d["to"], d["time_ns"], d["contributor"], d["repo_created_ns"], raw)


def rename_repo(ctx: Context, repo: str, new_name: str) -> RenameEvent:
    """Rename ``repo`` to ``new_name`` (database first, then the blob copy). Raises ``NotFound``,
    ``Conflict`` (exit 3: ``new_name`` exists or is reserved), ``UsageError`` (a bad name)."""
    who = ctx.contributor
    ev = ctx.meta.rename_repo(repo, new_name, contributor=f"{who.name} <{who.email}>")
    rec = encode_rename(ev)
    ctx.cas.blobs.put(RENAME_BLOB_PREFIX + rec.id, rec.raw)
    return ev


def load_rename_blobs(ctx: Context) -> tuple[list[RenameRecord], list[str]]:
    """Every rename record in the blob store, oldest first, and the names of blobs that are not one."""
    blobs = ctx.cas.blobs
    good: list[RenameRecord] = []
    bad: list[str] = []
    for name in sorted(blobs.list(RENAME_BLOB_PREFIX)):
        rid = name[len(RENAME_BLOB_PREFIX) :]
        if not _HEX64.match(rid):
            continue
        size = blobs.size(name)
        rec = decode_rename(blobs.get(name), rid) if size is not None and size <= MAX_RENAME_BYTES else None
        if rec is None:
            bad.append(name)
        else:
            good.append(rec)
    good.sort(key=lambda r: (r.time_ns, r.id))
    return good, bad


@dataclass
class RenameReplay:
    records: int = 0  # rename records in the blob store
    replayed: int = 0  # renames the database did not know, applied
    restored_blobs: int = 0  # blob copies written back from the database
    problems: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)  # "old -> new" of each rename replayed


def replay_renames(ctx: Context) -> RenameReplay:
    """(``admin reindex``) Bring the database's renames and the blob store's records together."""
    meta = ctx.meta
    out = RenameReplay()
    good, bad = load_rename_blobs(ctx)
    out.records = len(good)
    out.problems = [
        f"rename record {n}: not a rename record that hashes to its name; left alone" for n in bad
    ]
    known = {(e.old_name, e.new_name, e.time_ns) for e in meta.list_renames()}
    repos = {r.name: r for r in meta.list_repos()}
    for rec in good:
        if (rec.old, rec.new, rec.time_ns) in known:
            continue
        r = repos.get(rec.old)
        if r is None or r.created_ns != rec.repo_created_ns or rec.new in repos:
            continue  # the repo was deleted or renamed since, or the name is taken: nothing to replay
        try:
            meta.rename_repo(rec.old, rec.new, contributor=rec.contributor, time_ns=rec.time_ns)
        except DatamonError as e:
            out.problems.append(f"rename {rec.old} -> {rec.new} ({rec.id[:12]}): {e.message}")
            continue
        repos[rec.new] = repos.pop(rec.old)
        known.add((rec.old, rec.new, rec.time_ns))
        out.replayed += 1
        out.renamed.append(f"{rec.old} -> {rec.new}")
    on_blobs = {(r.old, r.new, r.time_ns) for r in good}
    for ev in meta.list_renames():
        if (ev.old_name, ev.new_name, ev.time_ns) not in on_blobs:
            rec = encode_rename(ev)
            ctx.cas.blobs.put(RENAME_BLOB_PREFIX + rec.id, rec.raw)
            out.restored_blobs += 1
    return out
