"""The read-only bundle view, without FUSE: attributes, listings, reads, laziness, errors."""

from __future__ import annotations

import errno
import logging
import os
import random
import stat
import threading
import time
from pathlib import Path

import pytest

from datamon.api.context import Context
from datamon.cas.pack import pack_blob_name
from datamon.fuse.vfs import KEEP_BEHIND, BundleView, path_ino
from datamon.meta.records import BundleRecord


def _walk(root: Path) -> dict[str, os.stat_result]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            out["/" + str(p.relative_to(root))] = p.lstat()
    return out


def _read_all(view: BundleView, path: str, size: int = 128 * 1024) -> bytes:
    fh = view.open(path)
    try:
        out, off = [], 0
        while True:
            data = view.read(fh, off, size)
            if not data:
                return b"".join(out)
            out.append(data)
            off += len(data)
    finally:
        view.release(fh)


def test_attributes_and_listings_match_the_source(ctx: Context, bundle: BundleRecord, source: Path) -> None:
    view = BundleView(ctx, bundle)
    expected = _walk(source)
    for path, st in expected.items():
        a = view.getattr(path)
        assert stat.S_IFMT(a.mode) == stat.S_IFMT(st.st_mode), path
        if stat.S_ISLNK(st.st_mode):
            assert view.readlink(path) == os.readlink(source / path[1:])
            assert a.size == len(os.readlink(source / path[1:]).encode())
            continue
        assert stat.S_IMODE(a.mode) == stat.S_IMODE(st.st_mode), path
        assert a.mtime_ns == st.st_mtime_ns, path
        if stat.S_ISREG(st.st_mode):
            assert a.size == st.st_size, path
    listed = {}

    def walk(path: str) -> None:
        for d in view.readdir(path):
            child = f"{path.rstrip('/')}/{d.name}"
            listed[child] = d
            assert d.ino == view.getattr(child).ino == path_ino(child)
            if stat.S_ISDIR(d.mode):
                walk(child)

    walk("/")
    assert set(listed) == set(expected)
    assert [d.name for d in view.readdir("/")] == sorted(os.listdir(source), key=lambda n: n.encode())
    assert view.getattr("/").ino == 1 and stat.S_ISDIR(view.getattr("/").mode)


def test_reads_are_byte_identical_at_any_offset(ctx: Context, bundle: BundleRecord, source: Path) -> None:
    view = BundleView(ctx, bundle, prefetch=2)
    for path, st in _walk(source).items():
        if stat.S_ISREG(st.st_mode):
            assert _read_all(view, path) == (source / path[1:]).read_bytes(), path
    big = (source / "big.bin").read_bytes()
    fh = view.open("/big.bin")
    rng = random.Random(5)
    for _ in range(200):
        off = rng.randrange(0, len(big) + 10)
        n = rng.choice([1, 7, 4096, 128 * 1024, 1 << 20, 3 << 20])
        assert view.read(fh, off, n) == big[off : off + n]
    assert view.read(fh, len(big), 10) == b""
    h = view._handles[fh]
    assert len(h.window) <= view.files.prefetch + KEEP_BEHIND + 2  # memory stays bounded
    view.release(fh)
    # the Python API reads the same bytes through the same path
    with ctx.open_file("r", "big.bin", label="prod") as f:
        f.seek(1_000_000)
        assert f.read(5000) == big[1_000_000:1_005_000]
    view.close()


def test_concurrent_reads_on_one_handle_and_across_handles(
    ctx: Context, bundle: BundleRecord, source: Path
) -> None:
    big = (source / "big.bin").read_bytes()
    view = BundleView(ctx, bundle, prefetch=3)
    shared = view.open("/big.bin")
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        own = view.open("/big.bin")
        for _ in range(60):
            fh = shared if rng.random() < 0.5 else own
            off = rng.randrange(0, len(big))
            n = rng.choice([4096, 128 * 1024, 1 << 20])
            if view.read(fh, off, n) != big[off : off + n]:
                errors.append(f"{fh} {off} {n}")
        view.release(own)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    view.close()


def test_errors_a_filesystem_would_give(ctx: Context, bundle: BundleRecord) -> None:
    view = BundleView(ctx, bundle)
    cases = [
        (lambda: view.getattr("/nope"), errno.ENOENT),
        (lambda: view.getattr("/one.bin/x"), errno.ENOTDIR),
        (lambda: view.readdir("/one.bin"), errno.ENOTDIR),
        (lambda: view.readlink("/one.bin"), errno.EINVAL),
        (lambda: view.open("/deep"), errno.EISDIR),
        (lambda: view.open("/one.bin", os.O_WRONLY), errno.EROFS),
        (lambda: view.open("/one.bin", os.O_RDWR), errno.EROFS),
        (lambda: view.open("/one.bin", os.O_RDONLY | os.O_TRUNC), errno.EROFS),
        (lambda: view.read(999, 0, 1), errno.EBADF),
        (lambda: view.refuse("/x"), errno.EROFS),
    ]
    for call, code in cases:
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == code


def test_directories_load_lazily_and_the_tree_cache_is_bounded(ctx: Context, bundle: BundleRecord) -> None:
    view = BundleView(ctx, bundle)
    assert view.trees.loads == 0  # creating the view reads nothing
    view.getattr("/")
    assert view.trees.loads == 0
    view.getattr("/deep/a/b/leaf.txt")
    assert view.trees.loads == 4  # root, deep, a, b
    view.getattr("/deep/a/b")
    assert view.trees.loads == 4
    small = BundleView(ctx, bundle, tree_cache_entries=3)
    for _ in range(3):
        assert small.getattr("/deep/a/b/leaf.txt").size == 5
        assert len(small.readdir("/")) == 11
    assert small.trees._entries <= max(3, 11)


def test_sequential_reads_prefetch_the_next_chunks_into_the_cache(
    ctx: Context, bundle: BundleRecord, tmp_path: Path
) -> None:
    view = BundleView(ctx, bundle, prefetch=8)
    fh = view.open("/big.bin")
    h = view._handles[fh]
    assert len(h.chunks) >= 2
    view.read(fh, 0, 1)
    deadline = time.monotonic() + 10
    while view.files._inflight and time.monotonic() < deadline:
        time.sleep(0.01)
    cached = {p.name for p in (tmp_path / "chunks").rglob("*") if p.is_file()}
    assert {k.hex() for k, _ in h.chunks} <= cached
    for i in range(len(h.chunks)):  # and are held for the reader: it will not read them again
        got = h.window.get(i)
        assert isinstance(got, bytes) or (got is not None and got.done()), i
    view.close()
    off = BundleView(ctx, bundle, prefetch=0)
    assert off.files._pool is None


def test_a_corrupt_chunk_is_eio_and_a_logged_error_never_wrong_bytes(
    ctx: Context, bundle: BundleRecord, caplog: pytest.LogCaptureFixture
) -> None:
    view = BundleView(ctx, bundle, prefetch=0)
    key = view.lookup("/big.bin").key
    chunk = ctx.cas.file_chunks(key, view.lookup("/big.bin").size)[1][0]
    loc = ctx.cas.reader.locate([chunk])[chunk]
    blobs = ctx.cas.blobs
    data = bytearray(blobs.get(pack_blob_name(loc.pack)))
    data[loc.offset + loc.length // 2] ^= 0xFF
    blobs.delete(pack_blob_name(loc.pack))
    blobs.put(pack_blob_name(loc.pack), bytes(data))
    fh = view.open("/big.bin")
    assert view.read(fh, 0, 100)  # the first chunk is fine
    with caplog.at_level(logging.ERROR, logger="datamon.fuse"), pytest.raises(OSError) as ei:
        view.read(fh, 0, 8 << 20)
    assert ei.value.errno == errno.EIO
    assert chunk.hex() in caplog.text and "/big.bin" in caplog.text
    assert _read_all(view, "/text.csv")  # other files still read


def test_inode_numbers_are_stable_per_path() -> None:
    assert path_ino("/") == path_ino("") == 1
    assert path_ino("/a/b") == path_ino("a/b") == path_ino("/a/b/")
    inos = {path_ino(f"/d/{i}") for i in range(10_000)}
    assert len(inos) == 10_000 and 1 not in inos and 0 not in inos
    assert all(2 <= i < 1 << 63 for i in inos)
