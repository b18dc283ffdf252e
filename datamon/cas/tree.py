"""Tree objects: one directory's entries, sorted by name, addressed by their hash.

::

    b"DMTREE\\x00\\x01" | count u32 | entries
    entry: name_len u16 | name (UTF-8, surrogateescape for undecodable bytes) | kind u8
           | mode u32 | mtime_ns i64 | size u64 | key 32 bytes | target_len u16 | target

``kind`` 1 file (key = file key), 2 directory (key = tree key, size = bytes of files below
it), 3 symlink (key all zero, target = link text). ``mode`` is the permission bits only.

A tree read from a store is hostile input: ``decode_tree`` returns only entries that an
honest writer could have encoded, else raises ``TreeFormatError`` (a ``ValueError``):

* names are single path components: not empty, not ``.`` or ``..``, no ``/`` and no NUL;
* entries are in the canonical order, strictly increasing by name bytes (no duplicates);
* kind is 1, 2 or 3; mode has no bits beyond ``0o7777``; size is below 2**63 (``off_t``);
* files and directories have an empty target; a symlink has a non-empty target without NUL
  and its size is the target's length (in bytes, or in code points as datamon has written
  it for non-ASCII targets);
* the count fits in the bytes given (no allocation before that check) and nothing trails.

``encode_tree`` refuses the same things, so an honest writer never stores a tree that a
reader rejects. Names that are not valid UTF-8 are kept with ``surrogateescape`` and
round-trip byte for byte.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from enum import IntEnum
from typing import NamedTuple

from datamon.cas.hashing import ZERO_KEY, key_of

MAGIC = b"DMTREE\x00\x01"
_COUNT = struct.Struct("<I")
_H = struct.Struct("<H")
_FIXED = struct.Struct("<BIqQ32s")
_FIXED_T = struct.Struct("<BIqQ32sH")  # the fixed part and the target length, in one unpack
_MIN_ENTRY = 2 + 1 + _FIXED.size + 2  # a one-byte name and no target
MAX_SIZE = (1 << 63) - 1  # st_size is a signed 64-bit integer
MODE_BITS = 0o7777


class TreeFormatError(ValueError):
    """A tree object that no honest writer produces."""


class EntryKind(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3


_KINDS = frozenset(int(k) for k in EntryKind)
_KIND_OF = {int(k): k for k in EntryKind}  # a dict lookup costs a fraction of EntryKind(kind)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class TreeEntry(NamedTuple):
    """One entry of a tree. A named tuple: a million of them cost a third of the memory and
    time of a dataclass (a decoded bundle listing holds one per file)."""

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


_new_entry = tuple.__new__


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\x00" in name:
        raise TreeFormatError(f"invalid entry name {name!r}")


def validate_name(name: str) -> None:
    try:
        _check_name(_enc(name))
    except UnicodeEncodeError:
        raise TreeFormatError(f"invalid entry name {name!r}") from None


def _check_entry(name: bytes, kind: int, mode: int, size: int, target: bytes, target_text: str) -> None:
    """Everything about one entry that does not depend on its neighbours."""
    _check_name(name)
    if kind not in _KINDS:
        raise TreeFormatError(f"entry {name!r} has unknown kind {kind}")
    if mode & ~MODE_BITS:
        raise TreeFormatError(f"entry {name!r} has mode bits beyond 0o7777: {mode:#o}")
    if not 0 <= size <= MAX_SIZE:
        raise TreeFormatError(f"entry {name!r} has impossible size {size}")
    if kind == 3:  # EntryKind.SYMLINK (an int compare: this runs once per entry read)
        if not target or b"\x00" in target:
            raise TreeFormatError(f"symlink {name!r} has an empty target or one containing NUL")
        if size not in (len(target), len(target_text)):
            raise TreeFormatError(f"symlink {name!r} has size {size}, its target {len(target)} bytes")
    elif target:
        raise TreeFormatError(f"entry {name!r} is not a symlink but has a target")


def encode_tree(entries: list[TreeEntry]) -> bytes:
    """Canonical encoding: entries sorted by the bytes of their names; names must be unique.
    Raises ``TreeFormatError`` for an entry ``decode_tree`` would refuse."""
    try:
        items = sorted(((_enc(e.name), e) for e in entries), key=lambda p: p[0])
    except UnicodeEncodeError as err:
        raise TreeFormatError(f"entry name is not encodable: {err}") from None
    out = [MAGIC, _COUNT.pack(len(items))]
    prev = None
    for name, e in items:
        if name == prev:
            raise TreeFormatError(f"duplicate entry name {e.name!r}")
        prev = name
        target = _enc(e.target)
        if len(name) > 0xFFFF or len(target) > 0xFFFF:
            raise TreeFormatError(f"entry {e.name!r}: name or target longer than 65535 bytes")
        mode = e.mode & MODE_BITS
        _check_entry(name, int(e.kind), mode, e.size, target, e.target)
        out += [
            _H.pack(len(name)),
            name,
            _FIXED.pack(int(e.kind), mode, e.mtime_ns, e.size, e.key),
            _H.pack(len(target)),
            target,
        ]
    return b"".join(out)


def decode_tree(raw: bytes | bytearray | memoryview) -> list[TreeEntry]:
    """Entries of an encoded tree, in order; raises ``TreeFormatError`` (a ``ValueError``) on
    anything an honest writer would not have encoded (see the module docstring)."""
    return list(iter_tree(raw))


def iter_tree(raw: bytes | bytearray | memoryview) -> Iterator[TreeEntry]:
    """``decode_tree`` one entry at a time: a caller that stops early (or streams) never
    holds the whole list. Every check of ``decode_tree`` runs before an entry is yielded, so
    the entries seen are exactly those of a valid tree's prefix; a bad entry raises
    ``TreeFormatError`` when it is reached. The count is checked against the size first."""
    raw = bytes(raw)
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _COUNT.size:
        raise TreeFormatError("not a tree object")
    (count,) = _COUNT.unpack_from(raw, len(MAGIC))
    pos = len(MAGIC) + _COUNT.size
    end = len(raw)
    if count > (end - pos) // _MIN_ENTRY:
        raise TreeFormatError(f"tree claims {count} entries in {end} bytes")
    # The hot loop (a million entries per bundle listing): one unpack for the fixed part,
    # the common case (a file or directory, no target) checked inline, the rest by
    # ``_check_entry``; entries built with tuple.__new__ (no Python-level __init__).
    unpack = _FIXED_T.unpack_from
    fixed = _FIXED_T.size
    kinds = _KIND_OF
    new = _new_entry
    cls = TreeEntry
    symlink = EntryKind.SYMLINK
    prev = b""
    for i in range(count):
        if pos + 2 > end:
            raise TreeFormatError(f"tree entry {i} is truncated")
        n = raw[pos] | raw[pos + 1] << 8
        pos += 2
        stop = pos + n
        if stop + fixed > end:
            raise TreeFormatError(f"tree entry {i} is truncated")
        name = raw[pos:stop]
        kind, mode, mtime, size, key, t = unpack(raw, stop)
        pos = stop + fixed
        if name <= prev and i:  # (the first entry's name is only checked below)
            raise TreeFormatError(
                f"tree entry {name!r} is {'a duplicate' if name == prev else 'out of order'}"
            )
        prev = name
        k = kinds.get(kind)
        if t or k is None or k is symlink or mode & ~MODE_BITS or size > MAX_SIZE or n < 3:
            # the uncommon cases, and the names `.` and `..` (n < 3), checked in full
            if pos + t > end:
                raise TreeFormatError(f"tree entry {i} is truncated")
            target = raw[pos : pos + t]
            pos += t
            target_text = target.decode("utf-8", "surrogateescape")
            _check_entry(name, kind, mode, size, target, target_text)
            assert k is not None
        else:
            if b"/" in name or b"\x00" in name:
                raise TreeFormatError(f"invalid entry name {name!r}")
            target_text = ""
        yield new(cls, (name.decode("utf-8", "surrogateescape"), k, mode, mtime, size, key, target_text))
    if pos != end:
        raise TreeFormatError("trailing bytes after tree entries")


class TreeColumns(NamedTuple):
    """A checked tree kept as columns (``scan_tree``): what a directory listing needs per
    entry, without an object per entry; ``entry(i)`` decodes one entry in full."""

    raw: bytes
    names: list[bytes]  # raw name bytes (``TreeEntry.name`` encoded back), in order
    kinds: bytearray
    modes: array  # permission bits
    offsets: array  # where each entry's fixed part starts in ``raw``

    def entry(self, i: int) -> TreeEntry:
        off = self.offsets[i]
        kind, mode, mtime, size, key, t = _FIXED_T.unpack_from(self.raw, off)
        start = off + _FIXED_T.size
        target = self.raw[start : start + t].decode("utf-8", "surrogateescape") if t else ""
        name = self.names[i].decode("utf-8", "surrogateescape")
        return _new_entry(TreeEntry, (name, _KIND_OF[kind], mode, mtime, size, key, target))

    def __len__(self) -> int:
        return len(self.names)


def scan_tree(raw: bytes | bytearray | memoryview) -> TreeColumns:
    """Check a tree exactly as ``decode_tree`` does (same errors) and keep it as columns.

    The loop is ``iter_tree``'s, building no entry objects: a mount lists a million entries
    through it. ``tests/trust/test_fuzz_decoders.py`` checks that the two agree on every input."""
    raw = bytes(raw)
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + _COUNT.size:
        raise TreeFormatError("not a tree object")
    (count,) = _COUNT.unpack_from(raw, len(MAGIC))
    pos = len(MAGIC) + _COUNT.size
    end = len(raw)
    if count > (end - pos) // _MIN_ENTRY:
        raise TreeFormatError(f"tree claims {count} entries in {end} bytes")
    unpack = _FIXED_T.unpack_from
    fixed = _FIXED_T.size
    kinds = _KIND_OF
    symlink = EntryKind.SYMLINK
    names: list[bytes] = []
    kind_col = bytearray()
    modes = array("I")
    offsets = array("Q")
    prev = b""
    for i in range(count):
        if pos + 2 > end:
            raise TreeFormatError(f"tree entry {i} is truncated")
        n = raw[pos] | raw[pos + 1] << 8
        pos += 2
        stop = pos + n
        if stop + fixed > end:
            raise TreeFormatError(f"tree entry {i} is truncated")
        name = raw[pos:stop]
        kind, mode, _, size, _, t = unpack(raw, stop)
        pos = stop + fixed
        if name <= prev and i:
            raise TreeFormatError(
                f"tree entry {name!r} is {'a duplicate' if name == prev else 'out of order'}"
            )
        prev = name
        k = kinds.get(kind)
        if t or k is None or k is symlink or mode & ~MODE_BITS or size > MAX_SIZE or n < 3:
            if pos + t > end:
                raise TreeFormatError(f"tree entry {i} is truncated")
            target = raw[pos : pos + t]
            pos += t
            _check_entry(name, kind, mode, size, target, target.decode("utf-8", "surrogateescape"))
        elif b"/" in name or b"\x00" in name:
            raise TreeFormatError(f"invalid entry name {name!r}")
        names.append(name)
        kind_col.append(kind)
        modes.append(mode)
        offsets.append(stop)
    if pos != end:
        raise TreeFormatError("trailing bytes after tree entries")
    return TreeColumns(raw, names, kind_col, modes, offsets)


def tree_key(raw: bytes) -> bytes:
    return key_of(raw)
