"""Listing directories for an upload in parallel: in worker processes, or in threads.

The per-directory work (``api/dirscan.py``: ``lstat`` every entry, read, hash and compress
the small files) is plain CPU and system calls, and at a million small files it is most of
an upload; in threads it is bound by the GIL. A ``ProcessLister`` runs it in ``n`` worker
processes (each loads ``dirscan.py`` alone, so it starts in milliseconds), a
``ThreadLister`` in ``n`` threads of this process (small uploads, or when worker processes
cannot be started). Both deliver the same messages to ``put``:
``("part", job, files)``, ``("end", job, End)``, ``("fail", job, error)``, and for a
worker that died ``("dead", worker, None)``.

``put`` is expected to block when the consumer is behind (a bounded queue): a worker then
blocks writing to its pipe, so memory stays bounded by the messages in flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from datamon.api import dirscan
from datamon.api.dirscan import CacheReader, Compressor, End, list_dir

Put = Callable[[tuple[Any, ...]], None]
READY_TIMEOUT = 60.0  # seconds a new worker process may take to start

# A worker loads dirscan.py by path: ``import datamon.api.dirscan`` would import the package
# (and with it most of the client) first.
_BOOT = (
    "import importlib.util as u, sys; "
    "s = u.spec_from_file_location('datamon_dirscan', sys.argv[1]); "
    "m = u.module_from_spec(s); s.loader.exec_module(m); m.worker_main()"
)


def start_child(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Connection, Connection]:
    """Start ``argv`` talking ``multiprocessing`` connections over its stdin and stdout (the
    child takes them with ``dirscan.child_connections``): (process, send, receive). Raises
    ``OSError`` if it cannot start, leaving no descriptor open."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    try:
        proc = subprocess.Popen(argv, stdin=to_child_r, stdout=from_child_w, close_fds=True, env=env)
    except OSError:
        for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
            os.close(fd)
        raise
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)


class ThreadLister:
    """``list_dir`` jobs on a pool of threads."""

    def __init__(self, n: int, cache_path: str | None, small_limit: int, level: int, put: Put) -> None:
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="datamon-list")
        self._cache_path = cache_path
        self._small_limit = small_limit
        self._level = level
        self._put = put
        self._local = threading.local()
        self._readers: list[CacheReader] = []
        self._lock = threading.Lock()
        self.workers = n
        self.max_rss_kib = 0

    def submit(self, job: int, path: bytes, local: Any = None, allow_same: bool = True) -> None:
        self._pool.submit(self._run, job, path, local, allow_same)

    def done(self, job: int) -> None:
        pass

    def _run(self, job: int, path: bytes, local: Any, allow_same: bool) -> None:
        try:
            st = self._local
            if not hasattr(st, "cache"):
                st.cache = CacheReader(self._cache_path)
                st.comp = Compressor(self._level)
                with self._lock:
                    self._readers.append(st.cache)
            list_dir(job, path, st.cache, self._small_limit, st.comp, self._put, local, allow_same=allow_same)
        except BaseException as e:  # the consumer re-raises it
            self._put(("fail", job, e))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for r in self._readers:
                r.close()
            self._readers.clear()


class _Worker:
    def __init__(self, index: int, proc: subprocess.Popen[bytes], send: Connection, recv: Connection) -> None:
        self.index = index
        self.proc = proc
        self.send = send
        self.recv = recv
        self.inflight = 0
        self.rss_kib = 0
        self.reader: threading.Thread | None = None


class WorkerStartError(RuntimeError):
    pass


class ProcessLister:
    """``list_dir`` jobs on ``n`` worker processes (``python -c`` loading ``dirscan.py``).

    Messages come back on one reader thread per worker. A worker ignores Ctrl-C (the parent
    decides) and exits when its input closes, so an interrupted upload leaves none behind."""

    def __init__(self, n: int, cache_path: str | None, small_limit: int, level: int, put: Put) -> None:
        self._put = put
        self._workers: list[_Worker] = []
        self._job_worker: dict[int, _Worker] = {}
        self._closed = False
        self.workers = n
        try:
            for i in range(n):
                self._workers.append(self._start(i, (cache_path, small_limit, level)))
            for w in self._workers:  # each says it is ready (it could import what it needs)
                if not w.recv.poll(READY_TIMEOUT) or w.recv.recv() != ("ready",):
                    raise WorkerStartError("an upload worker did not start")
            for w in self._workers:
                w.reader = threading.Thread(
                    target=self._read, args=(w,), name=f"datamon-worker-{w.index}", daemon=True
                )
                w.reader.start()
        except BaseException as e:
            self.close(clean=False)
            if isinstance(e, (EOFError, OSError)):
                raise WorkerStartError(f"an upload worker did not start: {e}") from e
            raise

    @property
    def max_rss_kib(self) -> int:
        """Sum of the workers' peak RSS (known after ``close``)."""
        return sum(w.rss_kib for w in self._workers)

    def _start(self, index: int, init: tuple[Any, ...]) -> _Worker:
        if not sys.executable:
            raise WorkerStartError("no Python executable to start upload workers with")
        try:
            proc, send, recv = start_child([sys.executable, "-c", _BOOT, dirscan.__file__])
        except OSError as e:
            raise WorkerStartError(f"cannot start an upload worker: {e}") from e
        w = _Worker(index, proc, send, recv)
        try:
            w.send.send(init)
        except OSError as e:
            self._stop(w)
            raise WorkerStartError(f"cannot start an upload worker: {e}") from e
        return w

    def _read(self, w: _Worker) -> None:
        while True:
            try:
                msg = w.recv.recv()
            except (EOFError, OSError):
                if not self._closed:
                    self._put(("dead", w.index, None))
                return
            except Exception as e:  # an unpicklable message: a bug
                if not self._closed:
                    self._put(("dead", w.index, e))
                return
            kind = msg[0]
            if kind == "bye":
                w.rss_kib = int(msg[1])
                return
            if kind == "end":
                msg = ("end", msg[1], End.from_tuple(msg[2]))
            elif kind == "fail":
                msg = ("fail", msg[1], RuntimeError(f"upload worker failed:\n{msg[2]}"))
            if self._closed:
                return
            self._put(msg)

    def submit(self, job: int, path: bytes, local: Any = None, allow_same: bool = True) -> None:
        if local is not None:
            raise ValueError("listed uploads run in threads")
        w = min(self._workers, key=lambda w: w.inflight)
        w.inflight += 1
        self._job_worker[job] = w
        w.send.send((job, path, allow_same))

    def done(self, job: int) -> None:
        w = self._job_worker.pop(job, None)
        if w is not None:
            w.inflight -= 1

    def _stop(self, w: _Worker, *, ask: bool = True) -> None:
        if ask:
            try:
                w.send.send(None)
            except OSError:
                pass
        try:
            w.send.close()
        except OSError:
            pass
        try:
            w.proc.wait(timeout=10 if ask else 0.5)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
        if w.reader is not None:
            w.reader.join(timeout=5)
        try:
            w.recv.close()
        except OSError:
            pass

    def close(self, *, clean: bool = True) -> None:
        """Stop the workers: asked to finish (their peak RSS comes back) when ``clean``, else
        their input is closed and any that lingers is killed."""
        if not clean:
            self._closed = True
        for w in self._workers:
            self._stop(w, ask=clean)
        self._closed = True
