"""``pull`` makes each pinned path equal to its pinned bundle; ``verify_pin`` checks it offline.

``pull`` downloads into an empty (or new) directory, or updates a directory that is a
previous pull or download (only the differences move), then checks the result with the
same offline check as ``datamon lock verify``. A pull whose directory already matches moves
nothing and reads no blob: the check runs against the *pin manifest*, the pinned bundle's
tree objects saved by the previous pull in the state directory (``pins/<tree key>.trees``).

The manifest is not trusted either: ``verify_pin`` hashes every tree it reads from it and
starts from the root tree key written in the lock, so a manifest that was tampered with
fails like a changed file (exit 4). It never follows a symlink: directories are opened
relative to their parent's fd with ``O_NOFOLLOW``, files with ``O_NOFOLLOW``, and a symlink
is compared as a symlink (its target text). File keys come from the stat cache when the
file's (size, mtime, ctime, inode) are what datamon recorded, else from hashing the file.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from datamon.api.lock import Pin
from datamon.errors import IntegrityError, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord

_REC = struct.Struct("<32sI")
MANIFEST_MAGIC = b"DMPINS\x00\x01"


class Contexts:
    """One open ``Context`` per context name (``None``: the invocation's context)."""

    def __init__(self, default: str | None = None) -> None:
        self.default = default
        self._open: dict[str | None, Context] = {}

    def get(self, name: str | None) -> Context:
        key = name or self.default
        if key not in self._open:
            from datamon.api.context import connect

            self._open[key] = connect(key)
        return self._open[key]

    def close(self) -> None:
        for c in self._open.values():
            c.close()
        self._open.clear()


# --- the pin manifest --------------------------------------------------------------------------


def manifest_path(state_dir: Path | None, tree: str) -> Path | None:
    return state_dir / "pins" / f"{tree}.trees" if state_dir is not None else None


def save_manifest(ctx: Context, b: BundleRecord) -> None:
    """Save the bundle's tree objects (each once) for offline checks; atomic, idempotent."""
    from datamon.cas.tree import encode_tree

    path = manifest_path(ctx.state_dir, b.tree)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [MANIFEST_MAGIC]
    seen: set[bytes] = set()
    stack = [bytes.fromhex(b.tree)]
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        entries = ctx.cas.read_tree(key)
        raw = encode_tree(entries)  # canonical: the bytes whose hash is the key
        out += [_REC.pack(key, len(raw)), raw]
        stack += [e.key for e in entries if e.is_dir]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(b"".join(out))
    os.replace(tmp, path)


class Manifest:
    """Tree objects by key, each verified against its key when first decoded."""

    def __init__(self, raw: bytes, where: str) -> None:
        self.where = where
        self._raw: dict[bytes, memoryview] = {}
        self._decoded: dict[bytes, dict[str, TreeEntry]] = {}
        view = memoryview(raw)
        if bytes(view[: len(MANIFEST_MAGIC)]) != MANIFEST_MAGIC:
            raise self._bad("it is not a pin manifest")
        pos = len(MANIFEST_MAGIC)
        while pos < len(view):
            if pos + _REC.size > len(view):
                raise self._bad("it is truncated")
            key, n = _REC.unpack_from(view, pos)
            pos += _REC.size
            if pos + n > len(view):
                raise self._bad("it is truncated")
            self._raw[key] = view[pos : pos + n]
            pos += n

    def _bad(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"pin manifest {self.where} is damaged: {why}", "delete it and run `datamon pull` again"
        )

    def children(self, key: bytes) -> dict[str, TreeEntry]:
        got = self._decoded.get(key)
        if got is not None:
            return got
        from datamon.cas.hashing import key_of
        from datamon.cas.tree import decode_tree

        raw = self._raw.get(key)
        if raw is None or key_of(raw) != key:
            raise self._bad(f"tree {key.hex()} is missing or does not hash to its key")
        try:
            entries = decode_tree(raw)
        except ValueError as e:
            raise self._bad(f"tree {key.hex()}: {e}") from None
        got = {e.name: e for e in entries}
        self._decoded[key] = got
        return got


def load_manifest(state_dir: Path | None, tree: str) -> Manifest | None:
    path = manifest_path(state_dir, tree)
    if path is None:
        return None
    try:
        return Manifest(path.read_bytes(), str(path))
    except FileNotFoundError:
        return None


# --- the offline check ---------------------------------------------------------------------------


@dataclass
class PinCheck:
    """What ``verify_pin`` found: paths (relative, '/'-separated; directories end in '/')."""

    pin: Pin
    destination: str
    added: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    files: int = 0
    hashed_bytes: int = 0
    problem: str = ""  # the check could not run (not pulled here)

    @property
    def ok(self) -> bool:
        return not (self.added or self.missing or self.changed or self.problem)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.pin.name,
            "path": self.destination,
            "ok": self.ok,
            "added": self.added,
            "missing": self.missing,
            "changed": self.changed,
            "files": self.files,
            "hashed_bytes": self.hashed_bytes,
            **({"problem": self.problem} if self.problem else {}),
        }


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def verify_pin(state_dir: Path | None, pin: Pin, destination: str | os.PathLike[str]) -> PinCheck:
    """Compare directory ``destination`` with ``pin`` using only the lock, the local files and
    the pin manifest (no store). Content counts, not mtimes: a file is changed when its kind,
    size, key, owner-executable bit or symlink target differ. Never raises for differences;
    ``IntegrityError`` only for a damaged manifest."""
    from datamon.api.statcache import StatCache

    dest = os.path.abspath(os.fspath(destination))
    check = PinCheck(pin, dest)
    manifest = load_manifest(state_dir, pin.tree)
    if manifest is None:
        check.problem = (
            f"{dest} was not pulled from bundle {pin.bundle[:12]} on this machine (no pin manifest)"
        )
        return check
    try:
        root = os.open(dest, _DIR_FLAGS)
    except FileNotFoundError:
        check.missing.append("")
        check.problem = f"{dest} does not exist"
        return check
    except OSError as e:
        check.problem = f"{dest} is not a directory one can open without following a symlink ({e})"
        return check
    cache = StatCache(state_dir)
    known = cache.lookup_under(dest)
    learned: list[tuple[str, tuple[int, int, int, int], bytes]] = []
    try:
        _compare(check, manifest, root, "", bytes.fromhex(pin.tree), known, learned)
    finally:
        os.close(root)
        cache.store(learned)
        cache.close()
    return check


def _compare(
    check: PinCheck,
    manifest: Manifest,
    root_fd: int,
    rel: str,
    tree: bytes,
    known: dict[str, tuple[tuple[int, int, int, int], bytes]],
    learned: list[tuple[str, tuple[int, int, int, int], bytes]],
) -> None:
    # an explicit stack of (dir fd, rel, tree key): deep trees do not hit the recursion limit
    stack: list[tuple[int, str, bytes]] = [(root_fd, rel, tree)]
    while stack:
        fd, rel, key = stack.pop()
        try:
            want = manifest.children(key)
            have = _scan(fd)
            for name in sorted(set(want) | set(have)):
                sub = f"{rel}{name}"
                w, h = want.get(name), have.get(name)
                if w is None:
                    assert h is not None
                    check.added.append(sub + "/" if stat.S_ISDIR(h.st_mode) else sub)
                elif h is None:
                    check.missing.extend(_leaves(manifest, w, sub))
                elif w.is_dir and stat.S_ISDIR(h.st_mode):
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        check.changed.append(sub + "/")
                        continue
                    stack.append((child, sub + "/", w.key))
                elif not _same(check, fd, name, os.path.join(check.destination, sub), w, h, known, learned):
                    check.changed.append(sub)
        finally:
            if fd != root_fd:
                os.close(fd)
    for lst in (check.added, check.missing, check.changed):
        lst.sort()


def _scan(fd: int) -> dict[str, os.stat_result]:
    out = {}
    with os.scandir(fd) as it:
        for de in it:
            out[de.name] = os.stat(de.name, dir_fd=fd, follow_symlinks=False)
    return out


def _leaves(manifest: Manifest, e: TreeEntry, path: str) -> Iterator[str]:
    if not e.is_dir:
        yield path
        return
    stack = [(e, path)]
    while stack:
        d, p = stack.pop()
        kids = manifest.children(d.key)
        if not kids:
            yield p + "/"
        for name, k in kids.items():
            if k.is_dir:
                stack.append((k, f"{p}/{name}"))
            else:
                yield f"{p}/{name}"


def _same(
    check: PinCheck,
    dir_fd: int,
    name: str,
    full: str,
    want: TreeEntry,
    st: os.stat_result,
    known: dict[str, tuple[tuple[int, int, int, int], bytes]],
    learned: list[tuple[str, tuple[int, int, int, int], bytes]],
) -> bool:
    from datamon.api.statcache import stat_key

    if want.is_symlink:
        return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == want.target
    if not (want.is_file and stat.S_ISREG(st.st_mode)):
        return False
    check.files += 1
    if st.st_size != want.size or bool(st.st_mode & 0o100) != bool(want.mode & 0o100):
        return False
    sk = stat_key(st)
    hit = known.get(full)
    if hit is not None and hit[0] == sk:
        return hit[1] == want.key
    key = _hash_at(dir_fd, name, st, check)
    if key is None:
        return False
    learned.append((full, sk, key))
    return key == want.key


def _hash_at(dir_fd: int, name: str, st: os.stat_result, check: PinCheck) -> bytes | None:
    from datamon.cas.hashing import Hasher

    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
            return None  # replaced between the scan and the open
        h = Hasher()
        with os.fdopen(fd, "rb", closefd=False) as f:
            while block := f.read(8 << 20):
                h.update(block)
                check.hashed_bytes += len(block)
        return h.digest()
    finally:
        os.close(fd)


# --- pull ----------------------------------------------------------------------------------------


@dataclass
class PullResult:
    pin: Pin
    destination: str
    action: str  # "download", "update" or "none"
    files: int  # files written
    bytes: int  # bytes of the files written: what moved from the store
    seconds: float
    check: PinCheck

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.pin.name,
            "bundle": self.pin.bundle,
            "path": self.destination,
            "action": self.action,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def check_bundle(ctx: Context, pin: Pin) -> BundleRecord:
    """The pinned bundle from the store: ``NotFound`` (exit 2) if it is not there,
    ``IntegrityError`` if the store's record disagrees with the lock."""
    from datamon.api.bundles import resolve

    b = resolve(ctx, pin.repo, bundle=pin.bundle)
    if (b.tree, b.file_count, b.total_size) != (pin.tree, pin.files, pin.size):
        raise IntegrityError(
            f"dataset {pin.name!r}: bundle {pin.bundle[:12]} of repo {pin.repo} has tree {b.tree[:12]}, "
            f"{b.file_count} files, {b.total_size} bytes; the lock says tree {pin.tree[:12]}, "
            f"{pin.files} files, {pin.size} bytes",
            "the lock file was edited by hand: restore it from git or pin again with `datamon lock add`",
        )
    return b


def pull(ctx: Context, pin: Pin, destination: str | os.PathLike[str]) -> PullResult:
    """Make ``destination`` equal the pinned bundle, moving only what differs, then check it.

    ``NotFound`` if the bundle is not in the store, ``IntegrityError`` if stored bytes are
    bad or the result does not match the pin, ``UsageError`` if ``destination`` holds files
    that datamon did not put there."""
    from datamon.api.download import download
    from datamon.api.downloads import registered

    t0 = time.perf_counter()
    if ctx.state_dir is None:
        raise UsageError(
            "pull needs a state directory (download registry, pin manifests)",
            "open the context with datamon.connect() or Context(..., state_dir=DIR)",
        )
    dest = os.path.abspath(os.fspath(destination))
    b = check_bundle(ctx, pin)
    if os.path.lexists(dest) and (os.path.islink(dest) or not os.path.isdir(dest)):
        raise UsageError(f"{dest} is not a directory", f"move it away, then `datamon pull {pin.name}`")
    rec = registered(ctx.state_dir, dest) if os.path.isdir(dest) else None
    nonempty = os.path.isdir(dest) and any(os.scandir(dest))
    if nonempty and rec is not None and rec.complete and rec.bundle == b.id and rec.name_filter is None:
        check = verify_pin(ctx.state_dir, pin, dest)
        if check.ok:
            return PullResult(pin, dest, "none", 0, 0, time.perf_counter() - t0, check)
    if nonempty and rec is not None and not rec.adopted and rec.name_filter is None:
        from datamon.api.diff import update

        r = update(ctx, pin.repo, dest, bundle=b.id)
        action, files, nbytes = "update", r.files, r.bytes
    else:
        d = download(ctx, pin.repo, dest, bundle=b.id)
        action, files, nbytes = "download", d.files, d.bytes
    save_manifest(ctx, b)
    check = verify_pin(ctx.state_dir, pin, dest)
    if not check.ok:
        raise IntegrityError(
            f"dataset {pin.name!r}: {dest} does not match bundle {b.id[:12]} after the pull "
            f"({_summary(check)})",
            "something changed it while it was pulled; run `datamon pull` again",
        )
    return PullResult(pin, dest, action, files, nbytes, time.perf_counter() - t0, check)


def _summary(check: PinCheck) -> str:
    if check.problem:
        return check.problem
    return f"{len(check.added)} added, {len(check.missing)} missing, {len(check.changed)} changed"
