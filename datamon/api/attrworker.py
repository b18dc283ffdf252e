"""An upload's attributes file, read and indexed in a process of its own (``api/upload.py``).

An upload walks its tree with a main process that is busy (it dedups, packs and writes the object
index, one core's worth) and worker processes that list and read. Reading a million attribute
rows, indexing a million files and encoding the attributes object is as much work again, mostly
Python: in the main process it would queue behind the walk for the one interpreter lock. So when
the rows come from a file and nothing can be carried over from a parent (a first upload with
attributes, or a parent without any), an ``AttrWorker`` process does it:

1. it reads and checks the rows (schema, paths of files of the upload) while the main process
   waits: nothing is written before they are known to be good, as ever (docs/query.md);
2. during the walk it receives each finished directory (batched) and indexes it with a
   ``WalkIndexer`` (``api/walkindex.py``) on its own connection to the metadata database, and
   encodes the attributes object meanwhile;
3. at the end it stores the object (``attrs/<key>``) and returns the root node and the key.

The worker is ``python -m datamon.api.attrworker`` with ``multiprocessing`` connections over its
stdin and stdout (as the walk's listing workers, ``api/dirwalk.py``). Ctrl-C is the parent's
business; the worker ends when its input closes, so an interrupted upload leaves none behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from datamon import errors
from datamon.api.dirwalk import start_child
from datamon.api.walkindex import DirReports, Event

if TYPE_CHECKING:
    from datamon.api.attributes import Schema
    from datamon.api.context import Context

BATCH_ENTRIES = 50_000  # directory entries sent to the worker together
START_TIMEOUT = 60.0


class AttrWorkerError(RuntimeError):
    """The worker could not be started (the caller reads the rows itself instead)."""


def can_share(ctx: Context) -> bool:
    """Whether a worker process can open the context's stores (not an in-memory database)."""
    url = ctx.meta_url
    if url.startswith("sqlite"):
        return not (
            url.rstrip("/") in ("sqlite:", "sqlite+pysqlite:") or ":memory:" in url or "mode=memory" in url
        )
    return True


class AttrWorker(DirReports):
    """The parent's side: ``checked`` (the rows are read and checked, raising what they break),
    then the walk's reports (``DirReports``: batched and sent to the worker), ``finish``."""

    def __init__(self, ctx: Context, root: str, source: str, schema: Schema | None) -> None:
        self._batch: list[Event] = []
        self._entries = 0
        env = dict(os.environ)
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self._proc, self._send, self._recv = start_child(
                [sys.executable, "-m", "datamon.api.attrworker"], env
            )
        except OSError as e:
            raise AttrWorkerError(f"cannot start the attributes worker: {e}") from e
        args = {
            "blob_url": ctx.blob_url,
            "meta_url": ctx.meta_url,
            "name": ctx._named,
            "cache_dir": ctx.cache_dir,
            "cache_bytes": ctx.cache_bytes,
            "compression_level": ctx.compression_level,
        }
        from datamon.api.attrfiles import split_point

        self._source, self._schema, self._root = os.fspath(source), schema, root
        self._mid = split_point(self._source)
        try:
            self._send.send(("start", self._source, schema, root, args, self._mid))
        except OSError as e:
            self.close()
            raise AttrWorkerError(f"cannot start the attributes worker: {e}") from e

    def checked(self) -> None:
        """Wait until the rows are read and checked; raise what they break. A large file is read
        in two halves at once: the first here (this process waits anyway), the second by the
        worker; an error of the first half is the earlier one in the file."""
        from datamon.api.attrfiles import missing_files, read_jsonl_part

        try:
            if self._mid is not None:
                first = read_jsonl_part(self._source, self._schema, 0, self._mid)
                missing = missing_files(self._root, first)
                try:
                    self._send.send(("first", first, missing))
                except OSError:  # the worker stopped at an error of its half: its reply says
                    pass
                del first
            self._reply(self._recv.recv(), "ok")
        except BaseException:
            self.close()
            raise

    def _reply(self, msg: tuple[Any, ...], want: str) -> tuple[Any, ...]:
        if msg[0] == want:
            return msg
        if msg[0] == "error":  # the user's error (a bad row, a path that is not a file)
            cls = getattr(errors, msg[1], None)
            plain = isinstance(cls, type) and issubclass(cls, errors.DatamonError)
            if plain and cls.__init__ is errors.DatamonError.__init__:  # type: ignore[misc]
                raise cls(msg[2], msg[3])  # type: ignore[misc]
            raise errors.UsageError(msg[2], msg[3])
        raise RuntimeError(f"the attributes worker failed:\n{msg[1] if len(msg) > 1 else msg}")

    # -- the walk's reports -------------------------------------------------------------------
    def _put(self, ev: Event, entries: int) -> None:
        self._batch.append(ev)
        self._entries += entries + 1
        if self._entries >= BATCH_ENTRIES:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch, self._entries = self._batch, [], 0
            try:
                self._send.send(("events", batch))
            except OSError:  # the worker is gone: what it said is read by ``finish``
                pass

    def finish(self) -> tuple[bytes, str | None]:
        """The root index node and the attributes key (``None``: every row was empty), once the
        worker has written every node and stored the object."""
        self._flush()
        try:
            self._send.send(("end",))
        except OSError:
            pass
        try:
            msg = self._reply(self._recv.recv(), "done")
        except EOFError:
            raise RuntimeError("the attributes worker ended unexpectedly") from None
        return msg[1], msg[2]

    def close(self) -> None:
        """Stop the worker (done, or the upload failed: it then writes nothing more)."""
        for c in (self._send,):
            try:
                c.close()
            except OSError:
                pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        try:
            self._recv.close()
        except OSError:
            pass


# -- the worker process -------------------------------------------------------------------------


def _serve(inp: Connection, out: Connection) -> None:

    from datamon.api.attrfiles import merge_parts, missing_files, read_attr_lines, read_jsonl_part
    from datamon.api.attributes import Extras, pack_attr_lines, put_packed
    from datamon.api.context import Context
    from datamon.api.uploadattrs import in_background
    from datamon.api.walkindex import WalkIndexer

    try:
        _, source, schema, root, args, mid = inp.recv()
    except EOFError:
        return
    try:
        if mid is None:
            lines = read_attr_lines(source, schema)
            missing = missing_files(root, lines)
        else:  # the second half; the parent reads the first (raising its errors first)
            second = read_jsonl_part(source, schema, mid, None)
            missing = missing_files(root, second)
            _, first, missing_first = inp.recv()
            lines = merge_parts(source, first, second)
            missing |= missing_first
            del first, second
        Extras("", {}, lines, schema).check_paths(lambda paths: missing)
    except errors.DatamonError as e:
        out.send(("error", type(e).__name__, e.message, e.hint))
        return
    out.send(("ok",))
    ctx = Context(args.pop("blob_url"), args.pop("meta_url"), **args)
    indexer = WalkIndexer(ctx, root, lines)
    try:
        encoding = in_background(pack_attr_lines, lines)
        while True:
            try:
                msg = inp.recv()
            except EOFError:
                return
            if msg[0] == "events":
                for ev in msg[1]:
                    indexer.report(ev)
            elif msg[0] == "end":
                try:
                    node = indexer.finish()
                    packed = encoding.result()
                    key = put_packed(ctx, packed) if packed is not None else None
                except errors.DatamonError as e:  # the store's (a tree it had to read is damaged)
                    out.send(("error", type(e).__name__, e.message, e.hint))
                    return
                out.send(("done", node, key))
                return
    finally:
        indexer.close()
        ctx.close()


def main() -> None:
    from datamon.api.dirscan import child_connections

    inp, out = child_connections()
    try:
        _serve(inp, out)
    except (BrokenPipeError, EOFError):
        return
    except BaseException:  # a bug: the parent raises it
        import traceback

        try:
            out.send(("fail", traceback.format_exc()))
        except OSError:
            pass


if __name__ == "__main__":
    main()
