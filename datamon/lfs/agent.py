"""The agent loop: read requests from git-lfs, move bytes through ``Transfers``, reply.

The loop knows the protocol's order (``init`` first, one reply per request, ``terminate`` or
end of input to stop) and turns every failure into a reply: a bad ``init`` gets an init
error, a failed transfer gets an error in that object's ``complete``, a line that cannot be
parsed gets an error reply, and the loop keeps serving. Only stdout carries protocol
messages; logs go to the ``datamon.lfs`` logger (stderr, which git-lfs shows with
``GIT_TRACE=1``). What actually stores and fetches objects is behind ``Transfers`` so the
loop is tested with in-memory pipes and a fake store.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, Final, Protocol

from datamon.errors import DatamonError, IntegrityError, NotFound, StoreUnavailable
from datamon.lfs import protocol as P

if TYPE_CHECKING:
    from datamon.api.context import Context
    from datamon.api.progress import Progress

log = logging.getLogger("datamon.lfs")

PROGRESS_STEP: Final = 1 << 20  # send a progress message at most once per MiB moved


class Transfers(Protocol):
    """What the loop needs from a store of LFS objects."""

    def upload(self, req: P.Upload, progress: Progress) -> None:
        """Store the file at ``req.path`` as ``req.oid``; raise on failure."""

    def download(self, req: P.Download, progress: Progress) -> str:
        """Write ``req.oid`` to a new file and return its path; raise on failure."""


# Called with the init request; returns the store or raises (the message goes to git-lfs).
Opener = Callable[[P.Init], Transfers]


class InitFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _LfsProgress:
    """``Progress`` that reports bytes as LFS ``progress`` messages, throttled."""

    def __init__(self, send: Callable[[dict[str, Any]], None], oid: str, step: int) -> None:
        self._send = send
        self._oid = oid
        self._step = step
        self.so_far = 0
        self._reported = 0

    def start(self, files: int, nbytes: int) -> None:
        pass

    def advance(self, files: int, nbytes: int) -> None:
        self.so_far += nbytes
        if self.so_far - self._reported >= self._step:
            self.flush()

    def flush(self) -> None:
        self._send(P.progress(self._oid, self.so_far, self.so_far - self._reported))
        self._reported = self.so_far

    def finish(self) -> None:
        pass

    def final(self, size: int) -> None:
        """The last message must say ``bytesSoFar == size`` (an empty object gets one too)."""
        if self._reported != size or size == 0:
            self.so_far = size
            self.flush()


def error_of(exc: BaseException) -> tuple[int, str]:
    """The (code, message) git-lfs shows for a failed transfer, with any secret in it masked."""
    from datamon.config import redact_text

    code, message = _error_of(exc)
    return code, redact_text(message)


def _error_of(exc: BaseException) -> tuple[int, str]:
    from datamon.api.lfs import ContentMismatch

    if isinstance(exc, InitFailed):
        return exc.code, exc.message
    if isinstance(exc, NotFound):
        return P.NOT_FOUND, str(exc)
    if isinstance(exc, ContentMismatch):
        return P.MISMATCH, str(exc)
    if isinstance(exc, StoreUnavailable):
        return P.UNAVAILABLE, str(exc)
    if isinstance(exc, IntegrityError):
        return P.INTERNAL, str(exc)
    if isinstance(exc, DatamonError):
        return P.BAD_REQUEST, str(exc)
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return P.INTERNAL, f"I/O error{where}: {exc.strerror or exc}"
    return P.INTERNAL, (
        f"internal error in the datamon agent ({type(exc).__name__}: {exc}); "
        "the traceback is on the agent's stderr: rerun with GIT_TRACE=1 and report it"
    )


class Agent:
    """One agent process's conversation with git-lfs. ``serve()`` returns the exit code."""

    def __init__(
        self, opener: Opener, stdin: BinaryIO, stdout: BinaryIO, *, progress_step: int = PROGRESS_STEP
    ) -> None:
        self._opener = opener
        self._in = stdin
        self._out = stdout
        self._step = progress_step
        self._lock = threading.Lock()
        self._transfers: Transfers | None = None
        self._init_error: InitFailed | None = None
        self.served = 0
        self.failed = 0

    def _send(self, msg: dict[str, Any]) -> None:
        data = P.encode(msg)
        with self._lock:
            self._out.write(data)
            self._out.flush()

    def serve(self) -> int:
        """Answer requests until ``terminate`` or end of input. 0 unless stdout broke."""
        try:
            while True:
                line = self._in.readline(P.MAX_LINE + 1)
                if not line:
                    log.debug("stdin closed without terminate: exiting")
                    return 0
                if len(line) > P.MAX_LINE and not line.endswith(b"\n"):
                    self._in.readline()  # drop the rest of an oversized line
                if not line.strip():
                    continue
                if not self._handle(line):
                    return 0
        except BrokenPipeError:
            log.error("git-lfs closed the agent's stdout: exiting")
            return 1

    def _handle(self, line: bytes) -> bool:
        """Answer one line; False once git-lfs said terminate."""
        try:
            req = P.parse_request(line)
        except P.ProtocolError as e:
            log.error("bad request from git-lfs: %s: %r", e.message, line[:300])
            self._reply_bad(e)
            return True
        if isinstance(req, P.Terminate):
            log.debug("terminate after %d transfers (%d failed)", self.served, self.failed)
            return False
        if isinstance(req, P.Init):
            self._init(req)
            return True
        self._transfer(req)
        return True

    def _reply_bad(self, e: P.ProtocolError) -> None:
        error = (P.BAD_REQUEST, f"datamon agent: {e.message}")
        if self._transfers is None and self._init_error is None:
            self._send(P.init_reply(error))  # git-lfs is waiting for the init reply
        else:
            # git-lfs waits for a complete; without an oid it still fails that transfer
            # ("unexpected oid") rather than hanging.
            self._send(P.complete(e.oid or "", error=error))

    def _init(self, req: P.Init) -> None:
        if self._transfers is not None or self._init_error is not None:
            log.error("second init ignored")
            self._send(P.init_reply((P.BAD_REQUEST, "datamon agent: init sent twice")))
            return
        t0 = time.perf_counter()
        try:
            self._transfers = self._opener(req)
        except Exception as e:
            if not isinstance(e, InitFailed | DatamonError):
                log.exception("init failed")
            code, message = error_of(e)
            self._init_error = InitFailed(code, f"datamon agent: {message}")
            log.error("init failed: %s", message)
            self._send(P.init_reply((code, self._init_error.message)))
            return
        log.debug("init %s in %.3fs (pid %d)", req.operation, time.perf_counter() - t0, os.getpid())
        self._send(P.init_reply())

    def _transfer(self, req: P.Upload | P.Download) -> None:
        self.served += 1
        if self._transfers is None:
            err = self._init_error or InitFailed(P.BAD_REQUEST, "datamon agent: no init before this request")
            self.failed += 1
            self._send(P.complete(req.oid, error=(err.code, err.message)))
            return
        progress = _LfsProgress(self._send, req.oid, self._step)
        t0 = time.perf_counter()
        try:
            if isinstance(req, P.Upload):
                self._transfers.upload(req, progress)
                path = None
            else:
                path = self._transfers.download(req, progress)
        except BrokenPipeError:
            raise
        except Exception as e:
            self.failed += 1
            if not isinstance(e, DatamonError | OSError):
                log.exception("%s of %s failed", type(req).__name__.lower(), req.oid)
            code, message = error_of(e)
            log.error("%s %s failed: [%d] %s", type(req).__name__.lower(), req.oid, code, message)
            self._send(P.complete(req.oid, error=(code, message)))
            return
        progress.final(req.size)
        log.debug(
            "%s %s (%d bytes) in %.3fs",
            type(req).__name__.lower(),
            req.oid,
            req.size,
            time.perf_counter() - t0,
        )
        self._send(P.complete(req.oid, path=path))


class ApiTransfers:
    """``Transfers`` over the datamon api: objects of one repo of one context."""

    def __init__(self, ctx: Context, repo: str, tmp_dir: Callable[[], str]) -> None:
        self.ctx = ctx
        self.repo = repo
        self._tmp_dir = tmp_dir
        self._tmp: str | None = None

    def upload(self, req: P.Upload, progress: Progress) -> None:
        from datamon.api.lfs import store_object

        store_object(self.ctx, self.repo, req.oid, req.path, size=req.size, progress=progress)

    def download(self, req: P.Download, progress: Progress) -> str:
        from datamon.api.lfs import fetch_object

        if self._tmp is None:
            self._tmp = self._tmp_dir()
        return fetch_object(self.ctx, self.repo, req.oid, self._tmp, size=req.size, progress=progress)
