"""The FUSE adapter: serves a ``BundleView`` or a ``MutableView`` at a mount point, and the two
mount verbs (``mount_bundle``, ``mount_new``) the CLI calls.

The adapter only translates: FUSE callbacks become view calls, view results become
``struct stat`` dicts, and the views' ``OSError`` errnos pass through. It uses ``mfusepy``
(the maintained fusepy fork) on libfuse3 when installed, which lets the kernel send reads of up
to 1 MiB; libfuse2 (128 KiB reads) or plain ``fusepy`` are fallbacks.

The filesystem runs in the foreground of the calling process, multi-threaded. libfuse turns
SIGINT, SIGTERM and SIGHUP (Ctrl-C) into a clean unmount; ``fusermount3 -u DIR`` ends it too.
``spawn`` runs a mount in a detached child process and returns once it is mounted.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from datamon.errors import DatamonError, UsageError
from datamon.fuse import DEFAULT_PREFETCH
from datamon.fuse.overlay import MutableView
from datamon.fuse.vfs import BundleView, Piece, oserror

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.meta.records import BundleRecord

log = logging.getLogger("datamon.fuse")

READ_AHEAD_KB = 1024  # the kernel's read-ahead on the mount; its default (128 KiB) halves throughput
IMMUTABLE_TIMEOUT = 3600.0  # seconds the kernel may cache names and attributes of a bundle
MOUNT_TIMEOUT = 60.0
RENAME_NOREPLACE = 1  # renameat2(2) flag, as the kernel passes it on


def load_fuse() -> ModuleType:
    """The FUSE binding: ``mfusepy`` on libfuse3, else on libfuse2, else ``fusepy``.

    Raises ``UsageError`` saying what to install when none loads.
    """
    for name in ("mfusepy", "fuse"):
        if name in sys.modules:
            return sys.modules[name]
    explicit = "FUSE_LIBRARY_NAME" in os.environ
    candidates = [os.environ["FUSE_LIBRARY_NAME"]] if explicit else ["fuse3", "fuse"]
    problem = "the Python package mfusepy is not installed"
    for lib in candidates:
        os.environ["FUSE_LIBRARY_NAME"] = lib  # mfusepy reads it when imported
        try:
            import mfusepy

            return mfusepy
        except ImportError:
            break
        except (OSError, AttributeError) as e:  # no such libfuse, or an unusable version
            problem = f"libfuse could not be loaded ({e})"
    if not explicit:
        os.environ.pop("FUSE_LIBRARY_NAME", None)
    try:
        import fuse  # type: ignore[import-not-found, unused-ignore]

        return fuse  # type: ignore[no-any-return, unused-ignore]
    except (ImportError, OSError):
        pass
    raise UsageError(
        f"cannot mount: {problem}",
        "install FUSE: `apt-get install fuse3 libfuse3-3` and `pip install 'datamon[fuse]'`",
    )


def fuse_major(fuse: ModuleType) -> int:
    return int(getattr(fuse, "fuse_version_major", 2))


def check_mountpoint(path: str | os.PathLike[str]) -> str:
    """The absolute mount point; ``UsageError`` unless it is an existing, empty directory that
    is not already a mount point."""
    mnt = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(mnt)
    except FileNotFoundError:
        raise UsageError(f"mount point {mnt} does not exist", f"create it first: mkdir -p {mnt}") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise UsageError(
                f"{mnt} is a FUSE mount whose process has ended", f"unmount it with `fusermount3 -u {mnt}`"
            ) from None
        raise UsageError(f"cannot use mount point {mnt}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {mnt} is not a directory", "give an empty directory")
    if os.path.ismount(mnt):
        raise UsageError(
            f"{mnt} is already a mount point", f"unmount it first (`fusermount3 -u {mnt}`) or use another"
        )
    with os.scandir(mnt) as it:
        if any(it):
            raise UsageError(f"mount point {mnt} is not empty", "mount on an empty directory")
    return mnt


# -- FUSE operations ----------------------------------------------------------------------------
class _Ops:
    """What both mounts share. Method signatures are mfusepy's (paths as str, times in ns)."""

    use_ns = True
    read_only = True

    def __init__(self, view: BundleView | MutableView, fuse: ModuleType) -> None:
        self.view = view
        self.fuse = fuse
        self.mounted = False  # set once the kernel has connected

    def init_with_config(self, conn: Any, config: Any) -> None:
        self.mounted = True
        if config is not None:  # libfuse3: these live in struct fuse_config
            config.use_ino = 1
            config.readdir_ino = 1
            if self.read_only:  # a bundle never changes: let the kernel cache everything
                config.entry_timeout = config.attr_timeout = IMMUTABLE_TIMEOUT
                config.negative_timeout = IMMUTABLE_TIMEOUT
                config.kernel_cache = 1
        if conn is not None:
            conn.max_readahead = READ_AHEAD_KB << 10

    def init(self, path: str) -> None:  # bindings without init_with_config (fusepy)
        self.mounted = True

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self.view.getattr(path).as_dict()

    def readdir(self, path: str, fh: int) -> list[Any]:
        entries = self.view.readdir(path)
        return [".", "..", *((d.name, {"st_mode": d.mode, "st_ino": d.ino}, 0) for d in entries)]

    def readdir_raw(self, path: str) -> tuple[list[bytes], list[int], list[int]]:
        """Encoded names, modes and inode numbers of a directory (``_FUSE`` fills libfuse's
        buffer from them directly)."""
        raw = getattr(self.view, "readdir_raw", None)
        if raw is not None:
            return raw(path)
        entries = self.view.readdir(path)
        return (
            [d.name.encode("utf-8", "surrogateescape") for d in entries],
            [d.mode for d in entries],
            [d.ino for d in entries],
        )

    def readlink(self, path: str) -> str:
        return self.view.readlink(path)

    def open(self, path: str, flags: int) -> int:
        return self.view.open(path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.view.read(fh, offset, size)

    def read_pieces(self, size: int, offset: int, fh: int) -> list[Piece]:
        return self.view.read_pieces(fh, offset, size)

    def release(self, path: str, fh: int) -> int:
        self.view.release(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return self.view.statfs()


class ReadOnlyOps(_Ops):
    """A bundle: every write operation fails with ``EROFS`` (the mount is also ``ro``)."""

    def _refuse(self, path: str | None = None, *args: Any) -> int:
        raise oserror(errno.EROFS, path)

    write = create = mkdir = mknod = unlink = rmdir = symlink = link = rename = _refuse
    chmod = chown = truncate = utimens = setxattr = removexattr = fallocate = _refuse


class MutableOps(_Ops):
    """A ``MutableView``: reads and writes."""

    read_only = False
    view: MutableView

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        return self.view.create(path, mode, flags)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self.view.write(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self.view.truncate(path, length)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.view.fsync(fh)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self.view.mkdir(path, mode)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        if not stat.S_ISREG(mode):
            raise oserror(errno.EPERM, path)  # bundles hold files, directories and symlinks only
        self.view.release(self.view.create(path, mode & 0o7777, os.O_WRONLY | os.O_EXCL))
        return 0

    def unlink(self, path: str) -> int:
        self.view.unlink(path)
        return 0

    def rmdir(self, path: str) -> int:
        self.view.rmdir(path)
        return 0

    def symlink(self, path: str, target: str) -> int:
        self.view.symlink(path, target)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if flags & ~RENAME_NOREPLACE:
            raise oserror(errno.EINVAL, old)  # RENAME_EXCHANGE / RENAME_WHITEOUT: not supported
        self.view.rename(old, new, noreplace=bool(flags & RENAME_NOREPLACE))
        return 0

    def link(self, path: str, target: str) -> int:
        raise oserror(errno.EPERM, path)  # bundles have no hard links

    def chmod(self, path: str, mode: int) -> int:
        self.view.chmod(path, mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        return 0  # bundles record no owners; accepted so that `cp -p` works

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        self.view.utimens(path, times)
        return 0


# -- serving ------------------------------------------------------------------------------------
def _tune_when_mounted(mnt: str, deadline: float) -> None:
    """Raise the kernel's read-ahead for the mount (needs root; skipped otherwise)."""
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            break
        time.sleep(0.02)
    else:
        return
    try:
        dev = os.stat(mnt).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as e:
        log.debug("cannot raise read-ahead on %s: %s", mnt, e)


# libfuse's fuse_fill_dir_t (3: with flags), every argument a plain integer or bytes
_FILL_3 = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
)
_FILL_2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64)


def _address(data: bytes) -> int:
    """Where the bytes of ``data`` are (valid while ``data`` is alive)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _fuse_class(fuse: ModuleType) -> Any:
    """The binding's ``FUSE`` class, with two changes: reads copy each byte once, from the chunk
    into libfuse's buffer (the stock read slices and joins first: two more copies of every byte,
    a third of the mount's throughput); renameat2(2) flags are passed on (mfusepy drops them, so
    that `mv -n` could overwrite)."""
    if not hasattr(fuse.FUSE, "read"):
        return fuse.FUSE

    class _FUSE(fuse.FUSE):  # type: ignore[name-defined]
        def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
            pieces = self.operations.read_pieces(size, offset, fip.contents.fh)
            dest = ctypes.cast(buf, ctypes.c_void_p).value or 0
            pos = 0
            for data, start, stop in pieces:
                n = min(stop - start, size - pos)
                ctypes.memmove(dest + pos, _address(data) + start, n)
                pos += n
            return pos

        if hasattr(fuse.FUSE, "readdir_fuse_3") and hasattr(fuse, "c_stat"):
            # A directory straight into libfuse's buffer: one reused struct stat, no per-entry
            # tuples or dicts (the stock path builds both, then copies field by field), and the
            # filler called through a prototype of plain integers (cheaper argument conversion).

            def readdir_fuse_3(
                self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
            ) -> int:
                return self._fill_dir(path, buf, ctypes.cast(filler, _FILL_3), _FILL_3)

            def readdir_fuse_2(self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any) -> int:
                return self._fill_dir(path, buf, ctypes.cast(filler, _FILL_2), _FILL_2)

            def _fill_dir(self, path: bytes | None, buf: Any, fill: Any, proto: Any) -> int:
                decoded = "/" if path is None else path.decode(self.encoding, self.errors)
                names, modes, inos = self.operations.readdir_raw(decoded)
                st = fuse.c_stat()
                pst = ctypes.addressof(st)
                st.st_mode = stat.S_IFDIR | 0o755
                if proto is _FILL_3:
                    for dot in (b".", b".."):
                        if fill(buf, dot, pst, 0, 0):
                            return 0
                    for name, mode, ino in zip(names, modes, inos, strict=True):
                        st.st_mode = mode
                        st.st_ino = ino
                        if fill(buf, name, pst, 0, 0):
                            break
                else:
                    for dot in (b".", b".."):
                        if fill(buf, dot, pst, 0):
                            return 0
                    for name, mode, ino in zip(names, modes, inos, strict=True):
                        st.st_mode = mode
                        st.st_ino = ino
                        if fill(buf, name, pst, 0):
                            break
                return 0

        if hasattr(fuse.FUSE, "rename_fuse_3"):

            def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
                dec = self.encoding, self.errors
                return int(self.operations.rename(old.decode(*dec), new.decode(*dec), flags))

    return _FUSE


def serve(ops: _Ops, mountpoint: str, *, fsname: str, debug: bool = False) -> None:
    """Mount ``ops`` at ``mountpoint`` and serve until unmounted (``fusermount3 -u`` or a signal)."""
    fuse = ops.fuse
    options: dict[str, Any] = {
        "foreground": True,
        "nothreads": False,
        "debug": debug,
        "fsname": fsname,
        "subtype": "datamon",
        "default_permissions": True,
        "use_ino": True,
    }
    if ops.read_only:
        options["ro"] = True
    if fuse_major(fuse) >= 3:
        # explicit values: libfuse 3.14 otherwise logs a warning about its own default
        options.update(max_threads=8, max_idle_threads=4)
    else:  # libfuse3 takes these from init_with_config
        options.update(readdir_ino=True, max_read=1 << 20)
        if ops.read_only:
            options.update(
                kernel_cache=True,
                entry_timeout=IMMUTABLE_TIMEOUT,
                attr_timeout=IMMUTABLE_TIMEOUT,
                negative_timeout=IMMUTABLE_TIMEOUT,
            )
    deadline = time.monotonic() + MOUNT_TIMEOUT
    fuse_class = _fuse_class(fuse)
    threading.Thread(target=_tune_when_mounted, args=(mountpoint, deadline), daemon=True).start()
    try:
        fuse_class(ops, mountpoint, **options)
    except RuntimeError as e:
        if ops.mounted:  # libfuse reports an exit by signal (Ctrl-C) as an error: it unmounted cleanly
            log.debug("libfuse ended with %s after a signal", e)
            return
        raise DatamonError(
            f"mounting at {mountpoint} failed (libfuse error {e})",
            "check that /dev/fuse exists and that you may mount (root, or user_allow_other)",
        ) from None


def mount_bundle(
    ctx: Context,
    repo: str,
    mountpoint: str | os.PathLike[str],
    *,
    bundle: str | None = None,
    label: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    debug: bool = False,
) -> BundleRecord:
    """Serve a bundle (the latest without ``bundle``/``label``) read-only at ``mountpoint``
    until it is unmounted. Raises ``NotFound`` (unknown repo/bundle/label) or ``UsageError``
    (bad mount point) before mounting."""
    from datamon.api.bundles import resolve

    b = resolve(ctx, repo, bundle=bundle, label=label)
    mnt = check_mountpoint(mountpoint)
    fuse = load_fuse()
    view = BundleView(ctx, b, prefetch=prefetch)
    try:
        serve(ReadOnlyOps(view, fuse), mnt, fsname=f"datamon:{repo}@{b.id[:12]}", debug=debug)
    finally:
        view.close()
    return b


class CommitFailed(DatamonError):
    """The mutable mount ended but its changes could not be stored; they are kept on disk."""

    def __init__(self, cause: BaseException, staging: Path) -> None:
        super().__init__(
            f"the new bundle could not be stored: {cause}",
            f"the changes are kept in {staging} (manifest.json lists them); once the problem is "
            f"fixed, store them with: datamon bundle mount commit --staging {staging}",
        )
        self.staging = staging


def mount_new(
    ctx: Context,
    repo: str,
    mountpoint: str | os.PathLike[str],
    *,
    message: str,
    from_bundle: str | None = None,
    from_label: str | None = None,
    label: str | None = None,
    staging_root: str | os.PathLike[str] | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    debug: bool = False,
) -> BundleRecord | None:
    """Serve a writable directory at ``mountpoint`` (empty, or a copy-on-write view of a base
    bundle) until it is unmounted, then store what it holds as a new bundle whose parent is the
    base, point ``label`` at it, and return it; ``None`` when nothing changed.

    Staged changes live in ``staging_root/<id>/`` (default ``$DATAMON_HOME/staging``). Raises
    ``NotFound``/``UsageError`` before mounting; ``CommitFailed`` (keeping the staged changes)
    if the bundle cannot be stored.
    """
    from datamon.api.bundles import resolve
    from datamon.fuse.commit import commit, save_manifest

    if not message:
        raise UsageError("a bundle needs a message", "pass --message")
    ctx.meta.get_repo(repo)
    base = resolve(ctx, repo, bundle=from_bundle, label=from_label) if from_bundle or from_label else None
    mnt = check_mountpoint(mountpoint)
    fuse = load_fuse()
    if staging_root is None:
        staging_root = ctx.state_dir.parent / "staging" if ctx.state_dir else Path.home() / ".datamon/staging"
    staging = Path(staging_root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    view = MutableView(ctx, base, staging, prefetch=prefetch)
    try:
        name = f"datamon:{repo}@{base.id[:12]}+" if base else f"datamon:{repo}@new"
        serve(MutableOps(view, fuse), mnt, fsname=name, debug=debug)
    except BaseException:
        view.close()
        view.discard_staging()
        raise
    view.close()
    try:
        bundle = commit(ctx, repo, view, message=message, label=label)
    except (Exception, KeyboardInterrupt) as e:
        try:
            save_manifest(view, repo, message, label)
        except OSError as me:
            log.error("cannot write the manifest of %s: %s", staging, me)
        raise CommitFailed(e, staging) from e
    view.discard_staging()
    return bundle


# -- running in the background ------------------------------------------------------------------
def spawn(argv: Sequence[str], mountpoint: str, log_path: str | os.PathLike[str]) -> int:
    """Run ``argv`` (a foreground mount command) detached, its output going to ``log_path``,
    and return its pid once ``mountpoint`` is mounted. Raises ``DatamonError`` with the end of
    the log if the process exits first or the mount does not appear in time."""
    log_file = Path(log_path)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal must not reach the mount
            close_fds=True,
        )
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
            err = DatamonError(f"the mount process exited ({code}): {' / '.join(tail) or 'no output'}")
            err.exit_code = code or 1
            raise err
        if os.path.ismount(mountpoint):
            return proc.pid
        time.sleep(0.02)
    proc.terminate()
    raise DatamonError(f"{mountpoint} was not mounted after {MOUNT_TIMEOUT:.0f}s", f"see {log_file}")
