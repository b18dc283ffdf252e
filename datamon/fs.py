"""``datamon://`` for fsspec: bundles as a read-only filesystem for pandas, Arrow, PyTorch, HF datasets.

::

    pd.read_csv("datamon://mnist@prod/train/labels.csv")
    pd.read_parquet("datamon://mnist@3fa2c1/features.parquet", columns=["label"])
    fsspec.open_files("datamon://mnist@prod/images/*.png")
    pd.read_csv("datamon://lock:mnist/train/labels.csv")        # the bundle pinned in datamon.lock
    pd.read_csv("datamon://mnist/x.csv", storage_options={"context": "team"})  # or ?context=team

A path is ``REPO[@REF]/PATH``: ``REF`` is a label, a bundle id or a unique prefix of 6+ hex
characters (``label:NAME`` for a label that looks like hex); without ``@REF`` it is the
latest bundle. ``lock:NAME`` is the bundle pinned under ``NAME`` in the nearest
``datamon.lock`` (option ``lock`` names the file). The top level lists the repos.

Reads are the ``ContentStore``'s verified lazy reads (``datamon/cas/store.py``): a file opens
without fetching anything, a read fetches the chunks it covers, every chunk is hashed, and no
byte of a multi-chunk file's last chunk is returned before the whole file is proven.
Proofs are remembered on this machine (``datamon/api/proofs.py``), so a Parquet reader pays
the whole-file pass once per file, not once per process. Labels (and "latest") are re-read
after ``ref_ttl`` seconds; bundle ids and lock pins never change. ``checksum`` and ``ukey``
are the file key (BLAKE3, what ``b3sum`` prints). Writing raises ``PermissionError``; a path
with a ``..`` component raises ``ValueError``; anything missing is ``FileNotFoundError``.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from datamon.errors import NotFound, UsageError

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.proofs import ProofMemo
    from datamon.cas.tree import TreeEntry
    from datamon.meta.records import BundleRecord

TREES_MAX = 4096  # decoded directories kept per filesystem instance (immutable: keyed by tree key)
READ_ONLY = "datamon:// is read-only; store new data with `datamon bundle upload`"


class BadPath(UsageError, ValueError):
    """A ``datamon://`` path that is malformed or escapes its bundle."""


@dataclass(frozen=True)
class _Bundle:
    ctx: Context
    record: BundleRecord


def _not_found(path: str, e: Exception | None = None) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"{e}" if e else "no such file in the bundle", path)


class DatamonFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over datamon bundles (module docstring)."""

    protocol = "datamon"
    root_marker = ""

    def __init__(
        self,
        context: str | Context | None = None,
        lock: str | None = None,
        ref_ttl: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(context=context, lock=lock, ref_ttl=ref_ttl, **kwargs)
        self.context = context
        self.lock_path = lock
        self.ref_ttl = ref_ttl
        self._mu = threading.RLock()
        self._contexts: dict[tuple[str | None, ...], Context] = {}
        self._memos: dict[int, ProofMemo] = {}
        self._refs: dict[tuple[object, str, str | None], tuple[float, _Bundle]] = {}
        self._trees: OrderedDict[bytes, dict[str, TreeEntry]] = OrderedDict()

    # -- paths --------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("datamon://"):
            path = path[len("datamon://") :]
        elif path.startswith("datamon::"):
            path = path[len("datamon::") :]
        path = path.split("?", 1)[0]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        query = urlsplit(path).query if "?" in path else ""
        out: dict[str, Any] = {}
        for key, values in parse_qs(query).items():
            if key in ("context", "lock") and values:
                out[key] = values[-1]
        return out

    def _split(self, path: str) -> tuple[str, list[str]]:
        from datamon.api.bundles import split_path

        p = self._strip_protocol(path)
        if "\x00" in p:
            raise BadPath(f"path {path!r} contains NUL", "give a datamon://REPO@REF/PATH path")
        top, _, rest = p.partition("/")
        if ".." in rest.split("/") or top in (".", ".."):
            raise BadPath(f"path {path!r} has a '..' component", "paths stay inside their bundle")
        try:
            return top, split_path(rest.lstrip("/"))
        except UsageError as e:
            raise BadPath(e.message, e.hint) from None

    # -- contexts and refs --------------------------------------------------------------------
    def _ctx(self, name: str | None) -> Context:
        from datamon.api.context import Context, connect

        if isinstance(self.context, Context) and name is None:
            return self.context
        name = name or (self.context if isinstance(self.context, str) else None)
        env = os.environ
        key = (
            name,
            *(
                env.get(v)
                for v in ("DATAMON_HOME", "DATAMON_CONTEXT", "DATAMON_BLOB_URL", "DATAMON_META_URL")
            ),
        )
        with self._mu:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = self._contexts[key] = connect(name)
            return ctx

    def _memo(self, ctx: Context) -> ProofMemo:
        from datamon.api.proofs import ProofMemo

        with self._mu:
            memo = self._memos.get(id(ctx))
            if memo is None:
                memo = self._memos[id(ctx)] = ProofMemo(ctx.state_dir)
            return memo

    def _bundle(self, top: str) -> _Bundle:
        """The bundle a top-level component names (cached; labels for ``ref_ttl`` seconds)."""
        from datamon.api.refs import ref_is_id, resolve_ref

        if not top:
            raise _not_found(top)
        now = time.monotonic()
        ctx_key: object = self.context if not isinstance(self.context, str) else ("name", self.context)
        cache_key = (ctx_key, top, os.environ.get("DATAMON_HOME"))
        with self._mu:
            hit = self._refs.get(cache_key)
        if hit is not None and (hit[0] < 0 or now < hit[0]):
            return hit[1]
        try:
            if top.startswith("lock:"):
                from datamon.api import lock

                lf = lock.load(lock.locate(self.lock_path))
                pin = lf.get(top[len("lock:") :])
                ctx = self._ctx(pin.context)
                from datamon.api.pull import check_bundle

                b = _Bundle(ctx, check_bundle(ctx, pin))
                expires = -1.0
            else:
                repo, _, ref = top.partition("@")
                ctx = self._ctx(None)
                rec = resolve_ref(ctx, repo, ref or None)
                expires = -1.0 if ref and ref_is_id(ref) else now + self.ref_ttl  # ids never move
                b = _Bundle(ctx, rec)
        except NotFound as e:
            raise _not_found(top, e) from None
        with self._mu:
            self._refs[cache_key] = (expires, b)
        return b

    def _children(self, ctx: Context, key: bytes) -> dict[str, TreeEntry]:
        with self._mu:
            got = self._trees.get(key)
            if got is not None:
                self._trees.move_to_end(key)
                return got
        got = {e.name: e for e in ctx.cas.read_tree(key)}
        with self._mu:
            self._trees[key] = got
            while len(self._trees) > TREES_MAX:
                self._trees.popitem(last=False)
        return got

    def _entry(self, path: str) -> tuple[str, _Bundle, TreeEntry]:
        from datamon.cas.tree import EntryKind, TreeEntry

        top, parts = self._split(path)
        b = self._bundle(top)
        rec = b.record
        e = TreeEntry("", EntryKind.DIR, 0o755, rec.created_ns, rec.total_size, bytes.fromhex(rec.tree))
        for part in parts:
            if not e.is_dir:
                raise _not_found(path)
            kids = self._children(b.ctx, e.key)
            if part not in kids:
                raise _not_found(path)
            e = kids[part]
        return "/".join([top, *parts]), b, e

    # -- the fsspec read interface ------------------------------------------------------------
    @staticmethod
    def _info_of(name: str, b: _Bundle, e: TreeEntry) -> dict[str, Any]:
        kind = "directory" if e.is_dir else "file" if e.is_file else "other"
        out: dict[str, Any] = {
            "name": name,
            "size": e.size if not e.is_dir else 0,
            "type": kind,
            "mode": e.mode,
            "mtime": e.mtime_ns / 1e9,
            "mtime_ns": e.mtime_ns,
            "bundle": b.record.id,
            "repo": b.record.repo,
        }
        if e.is_file:
            out["key"] = out["checksum"] = e.key.hex()
        if e.is_symlink:
            out["target"] = e.target
        return out

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        top, _ = self._split(path)
        if not top:
            return {"name": "", "size": 0, "type": "directory"}
        name, b, e = self._entry(path)
        return self._info_of(name, b, e)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        top, _ = self._split(path)
        if not top:
            repos = [
                {"name": r.name, "size": 0, "type": "directory"} for r in self._ctx(None).meta.list_repos()
            ]
            return repos if detail else [r["name"] for r in repos]
        name, b, e = self._entry(path)
        if not e.is_dir:
            out = [self._info_of(name, b, e)]
        else:
            kids = self._children(b.ctx, e.key)
            out = [self._info_of(f"{name}/{k}", b, c) for k, c in sorted(kids.items())]
        return out if detail else [o["name"] for o in out]

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return str(info.get("key") or info["bundle"] + ":" + info["name"])

    def checksum(self, path: str) -> int:
        return int(self.ukey(path).split(":")[0], 16)

    def _lazy(self, path: str) -> tuple[str, Any, int, _Bundle, TreeEntry]:
        name, b, e = self._entry(path)
        if e.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not e.is_file:
            raise OSError(
                errno.EINVAL, "not a regular file (a symlink); datamon:// does not follow links", path
            )
        cas = b.ctx.cas
        chunks = cas.file_chunks(e.key, e.size)
        memo = self._memo(b.ctx)
        if len(chunks) > 1 and cas.proof(e.key) is None and memo.proven(e.key, chunks):
            cas.record_proof(e.key, True)
        return name, cas.open_file(e.key, e.size), len(chunks), b, e

    def _remember(self, b: _Bundle, e: TreeEntry, nchunks: int) -> None:
        cas = b.ctx.cas
        if nchunks > 1 and cas.proof(e.key) is True:
            memo = self._memo(b.ctx)
            chunks = cas.file_chunks(e.key, e.size)
            if not memo.proven(e.key, chunks):
                memo.remember(e.key, chunks)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DatamonFile:
        if mode != "rb":
            raise PermissionError(errno.EROFS, READ_ONLY, path)
        name, lazy, nchunks, b, e = self._lazy(path)
        return DatamonFile(
            self,
            name,
            lazy,
            on_proof=(lambda: self._remember(b, e, nchunks)) if nchunks > 1 else None,
            proven=lambda: b.ctx.cas.proof(e.key) is True,
            block_size=block_size,
            cache_options=cache_options,
            cache_type=kwargs.pop("cache_type", "none"),
        )

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        _, lazy, nchunks, b, e = self._lazy(path)
        try:
            size = e.size
            lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
            hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
            data: bytes = lazy.pread(max(0, hi - lo), lo)
        finally:
            lazy.close()
        self._remember(b, e, nchunks)
        return data

    # -- everything that writes ---------------------------------------------------------------
    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EROFS, READ_ONLY)

    mkdir = makedirs = rmdir = rm = rm_file = _rm = touch = _read_only
    put_file = pipe_file = mv = cp_file = _read_only

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget resolved labels (they are re-read at the next access)."""
        with self._mu:
            self._refs.clear()


class DatamonFile(AbstractBufferedFile):
    """A seekable read-only file over a ``LazyFile``: reads fetch only the chunks they cover.
    ``on_proof`` runs once, as soon as a read has proven the whole file (readers such as
    pyarrow do not always close their files)."""

    DEFAULT_BLOCK_SIZE = 1 << 20

    def __init__(
        self,
        fs: DatamonFileSystem,
        path: str,
        lazy: Any,
        *,
        on_proof: Any,
        proven: Any,
        block_size: int | None,
        cache_options: dict[str, Any] | None,
        cache_type: str,
    ) -> None:
        self._lazy = lazy
        self._on_proof = on_proof
        self._proven = proven
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=block_size or "default",
            cache_type=cache_type,
            cache_options=cache_options,
            size=lazy.size,
        )

    def _fetch_range(self, start: int, end: int) -> bytes:
        data: bytes = self._lazy.pread(end - start, start)
        if self._on_proof is not None and self._proven():
            on_proof, self._on_proof = self._on_proof, None
            on_proof()
        return data

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._lazy.close()
