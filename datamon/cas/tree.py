"""Tree objects: one directory's entries, sorted by name, addressed by their hash.

::

    b"DMTREE\\x00\\x01" | count u32 | entries
    entry: name_len u16 | name (UTF-8, surrogateescape for undecodable bytes) | kind u8
           | mode u32 | mtime_ns i64 | size u64 | key 32 bytes | target_len u16 | target

``kind`` 1 file (key = file key), 2 directory (key = tree key, size = bytes of files below
it), 3 symlink (key all zero, target = link text). ``mode`` is the permission bits only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from datamon.cas.hashing import ZERO_KEY, key_of

MAGIC = b"DMTREE\x00\x01"
_COUNT = struct.Struct("<I")
_H = struct.Struct("<H")
_FIXED = struct.Struct("<BIqQ32s")


class EntryKind(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class TreeEntry:
    name: str
    kind: EntryKind
    mode: int
    mtime_ns: int
    size: int
    key: bytes = ZERO_KEY
    target: str = ""

    @property
    def is_dir(self) -> bool:
        return self.kind == EntryKind.DIR

    @property
    def is_file(self) -> bool:
        return self.kind == EntryKind.FILE

    @property
    def is_symlink(self) -> bool:
        return self.kind == EntryKind.SYMLINK


def validate_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"invalid entry name {name!r}")


def encode_tree(entries: list[TreeEntry]) -> bytes:
    """Canonical encoding: entries sorted by the bytes of their names; names must be unique."""
    items = sorted(((_enc(e.name), e) for e in entries), key=lambda p: p[0])
    out = [MAGIC, _COUNT.pack(len(items))]
    prev = None
    for name, e in items:
        validate_name(e.name)
        if name == prev:
            raise ValueError(f"duplicate entry name {e.name!r}")
        prev = name
        target = _enc(e.target)
        out += [
            _H.pack(len(name)),
            name,
            _FIXED.pack(int(e.kind), e.mode & 0o7777, e.mtime_ns, e.size, e.key),
            _H.pack(len(target)),
            target,
        ]
    return b"".join(out)


def decode_tree(raw: bytes) -> list[TreeEntry]:
    """Entries of an encoded tree, in order; raises ``ValueError`` on malformed input."""
    if not raw.startswith(MAGIC):
        raise ValueError("not a tree object")
    (count,) = _COUNT.unpack_from(raw, len(MAGIC))
    pos = len(MAGIC) + 4
    entries = []
    try:
        for _ in range(count):
            (n,) = _H.unpack_from(raw, pos)
            pos += 2
            name = raw[pos : pos + n].decode("utf-8", "surrogateescape")
            pos += n
            kind, mode, mtime, size, key = _FIXED.unpack_from(raw, pos)
            pos += _FIXED.size
            (t,) = _H.unpack_from(raw, pos)
            pos += 2
            target = raw[pos : pos + t].decode("utf-8", "surrogateescape")
            pos += t
            entries.append(TreeEntry(name, EntryKind(kind), mode, mtime, size, key, target))
    except (struct.error, ValueError) as e:
        raise ValueError(f"malformed tree object: {e}") from None
    if pos != len(raw):
        raise ValueError("trailing bytes after tree entries")
    return entries


def tree_key(raw: bytes) -> bytes:
    return key_of(raw)
