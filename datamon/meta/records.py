"""Plain records the metadata store hands out. No SQLAlchemy types leak past ``meta/``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RepoRecord:
    name: str
    description: str
    created_ns: int
    bundle_count: int = 0


@dataclass(frozen=True)
class BundleRecord:
    """One immutable snapshot. ``record`` is the canonical encoding whose BLAKE3 is ``id``."""

    id: str  # 64 lowercase hex chars
    repo: str
    tree: str  # root tree key, 64 hex
    parents: tuple[str, ...]
    message: str
    contributor_name: str
    contributor_email: str
    created_ns: int
    file_count: int
    total_size: int
    record: bytes = field(repr=False)


@dataclass(frozen=True)
class LabelRecord:
    repo: str
    name: str
    bundle_id: str
    updated_ns: int
    contributor: str


@dataclass(frozen=True)
class LabelEvent:
    repo: str
    name: str
    old_bundle_id: str | None
    new_bundle_id: str | None  # None when the label was deleted
    time_ns: int
    contributor: str


@dataclass(frozen=True)
class PackRecord:
    name: str
    size: int
    object_count: int
    created_ns: int


# One row of the object index, as plain tuples so that cas/ and meta/ share no types:
# (key: bytes(32), pack: str, offset: int, length: int, raw_length: int, kind: int, compression: int)
IndexRow = tuple[bytes, str, int, int, int, int, int]
# What ``add_pack`` receives per object: the same minus the pack name.
PackEntry = tuple[bytes, int, int, int, int, int]
