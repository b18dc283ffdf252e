"""Lying and impossible file maps and index rows: no read path delivers a wrong file as a
success, every upload repairs a row it proves wrong, and ``verify --full`` finds the lie."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from datamon.api.verify import CORRUPT, SIZE_MISMATCH, verify
from datamon.cas.filemap import encode_filemap
from datamon.cas.hashing import EMPTY_KEY, key_of
from datamon.cas.pack import Kind
from datamon.errors import CorruptObject, IntegrityError
from datamon.fuse.vfs import BundleView
from tests.integrity.helpers import contents, run_cli, write_tree
from tests.trust.forge import put_chunk, put_filemap, put_objects, put_stored
from tests.trust.test_cas_common import KiB, bundle_of, file_entry, rand, small_ctx, store_file

F = rand(600 * KiB, 1)  # the victim's file: several chunks
G = rand(600 * KiB, 2)  # other bytes, already stored


def _lying_map(ctx, size_of: bytes = G) -> tuple[bytes, list[tuple[bytes, int]]]:  # type: ignore[no-untyped-def]
    """Index BLAKE3(F) as a well-formed map of G's chunks; returns (key of F, G's chunks)."""
    _, g_chunks = store_file(ctx, G)
    fkey = key_of(F)
    put_filemap(ctx, fkey, g_chunks)
    return fkey, g_chunks


def test_upload_replaces_a_lying_map_instead_of_deduplicating(tmp_path: Path) -> None:
    root = tmp_path / "s"
    src = write_tree(tmp_path / "src", {"f.bin": F, "small.txt": b"hello"})
    with small_ctx(root) as ctx:
        fkey, _ = _lying_map(ctx)
        forged_pack = ctx.meta.lookup_objects([fkey])[fkey][1]
        res = ctx.upload("r", src, message="victim")
        row = ctx.meta.lookup_objects([fkey])[fkey]
        assert row[1] != forged_pack and row[5] == Kind.FILEMAP  # the row was replaced
        assert ctx.cas.file_chunks(fkey, len(F)) == store_file(ctx, F)[1]
        ctx.download("r", tmp_path / "d", bundle=res.bundle.id)
        assert contents(tmp_path / "d") == {"f.bin": F, "small.txt": b"hello"}
        assert verify(ctx, full=True).ok


def test_upload_of_a_large_file_streams_and_replaces_a_lying_map(tmp_path: Path) -> None:
    """Files of a window or more go through ingest_stream/store_objects, not ingest_buffers."""
    with small_ctx(tmp_path / "s") as ctx:
        big = rand(17 << 20, 7)  # more than one 16 MiB chunker window
        fkey = key_of(big)
        put_filemap(ctx, fkey, store_file(ctx, G)[1])
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "big.bin").write_bytes(big)
        res = ctx.upload("r", tmp_path / "src", message="big")
        assert b"".join(ctx.cas.iter_file(fkey, len(big))) == big
        assert res.bundle.id


def test_upload_replaces_chunk_and_tree_rows_with_wrong_facts(tmp_path: Path) -> None:
    small = rand(5000, 3)  # one chunk: file key == chunk key
    ckey = key_of(small)
    with small_ctx(tmp_path / "s") as ctx:
        # a chunk's key indexed as a file map (whose bytes are never hashed against the key)
        put_objects(ctx, [(ckey, encode_filemap([(b"\1" * 32, 1), (b"\2" * 32, 1)]), Kind.FILEMAP)])
        # another chunk indexed with a raw length that is not its length
        other = rand(7000, 4)
        okey = key_of(other)
        put_stored(ctx, okey, other, len(other) + 1, Kind.CHUNK, 0)
        src = write_tree(tmp_path / "src", {"a.bin": small, "b.bin": other})
        res = ctx.upload("r", src, message="m")
        rows = ctx.meta.lookup_objects([ckey, okey])
        assert rows[ckey][5] == Kind.CHUNK and rows[okey][4] == len(other)
        ctx.download("r", tmp_path / "d", bundle=res.bundle.id)
        assert contents(tmp_path / "d") == {"a.bin": small, "b.bin": other}


def test_every_reader_refuses_a_lying_map(tmp_path: Path) -> None:
    with small_ctx(tmp_path / "s", cache_dir=tmp_path / "cache") as ctx:
        fkey, g_chunks = _lying_map(ctx)
        bid = bundle_of(ctx, [file_entry("f.bin", fkey, len(G))])
        # iter_file: the error comes before the last piece, so no consumer sees a whole file
        pieces: list[bytes] = []
        with pytest.raises(CorruptObject) as err:
            for p in ctx.cas.iter_file(fkey, len(G)):
                pieces.append(p)
        assert fkey.hex() in str(err.value) and len(pieces) < len(g_chunks)
        # the API download (and the CLI's exit code)
        with pytest.raises(IntegrityError):
            ctx.download("r", tmp_path / "d", bundle=bid)
        assert contents(tmp_path / "d").get("f.bin") != G
        # LazyFile: a prefix may be read before the proof, never the last chunk
        ctx.cas._proofs.clear()
        f = ctx.cas.open_file(fkey, len(G))
        assert f.read(1000) == G[:1000]
        with pytest.raises(CorruptObject):
            f.read()
        with pytest.raises(CorruptObject):  # proven wrong: every later read fails
            f.pread(10, 0)
        with pytest.raises(CorruptObject):
            ctx.cas.open_file(fkey, len(G))
        # the mount's view: EIO, for every later read and open
        ctx.cas._proofs.clear()
        view = BundleView(ctx, ctx.bundle("r", bid), prefetch=2)
        fh = view.open("/f.bin")
        got, off = [], 0
        with pytest.raises(OSError) as eio:
            while True:
                data = view.read(fh, off, 128 * KiB)
                if not data:
                    break
                got.append(data)
                off += len(data)
        assert eio.value.errno == errno.EIO and b"".join(got) != G
        with pytest.raises(OSError):
            view.read(fh, 0, 10)
        with pytest.raises(OSError):
            view.open("/f.bin")
        view.close()
        # verify: fast mode cannot know (sizes agree); full mode proves the file wrong
        full = verify(ctx, full=True)
        assert full.problems[fkey.hex()].kind == CORRUPT
        assert [(a.path, a.problem.key) for a in full.affected] == [("f.bin", fkey.hex())]
        rep = verify(ctx, full=True, repair=True)
        assert rep.dropped_rows >= 1 and fkey not in ctx.meta.lookup_objects([fkey])
    cli = run_cli(
        tmp_path / "s", "bundle", "download", "--repo", "r", "--bundle", bid, "--destination", tmp_path / "c"
    )
    assert cli.returncode == 4 and fkey.hex() in cli.stderr


def test_random_access_then_last_chunk_runs_a_full_pass(tmp_path: Path) -> None:
    """A reader that jumps to the end still gets the proof (one pass over the chunks)."""
    with small_ctx(tmp_path / "s") as ctx:
        fkey, _ = store_file(ctx, F)
        f = ctx.cas.open_file(fkey, len(F))
        before = ctx.cas.full_passes
        assert f.pread(100, len(F) - 100) == F[-100:]
        assert ctx.cas.full_passes == before + 1 and ctx.cas.proof(fkey) is True
        # sequential reading proves by the running hash, without a pass of its own
        ctx.cas._proofs.clear()
        g = ctx.cas.open_file(fkey, len(F))
        assert b"".join(iter(lambda: g.read(50_000), b"")) == F
        assert ctx.cas.full_passes == before + 1


def test_mount_sequential_read_proves_without_a_second_pass(tmp_path: Path) -> None:
    with small_ctx(tmp_path / "s") as ctx:
        fkey, _ = store_file(ctx, F)
        bid = bundle_of(ctx, [file_entry("f.bin", fkey, len(F))])
        view = BundleView(ctx, ctx.bundle("r", bid), prefetch=4)
        fh = view.open("/f.bin")
        out, off = [], 0
        while data := view.read(fh, off, 128 * KiB):
            out.append(data)
            off += len(data)
        assert b"".join(out) == F and ctx.cas.proof(fkey) is True and ctx.cas.full_passes == 0
        view.close()


BAD_SIZES = {
    "tree claims more than the chunk": lambda c, k, n: (k, n + 1),
    "tree claims 2**62 bytes": lambda c, k, n: (k, 2**62),
    "empty key with bytes": lambda c, k, n: (EMPTY_KEY, 5),
    "bytes with size 0": lambda c, k, n: (k, 0),
}


@pytest.mark.parametrize("case", sorted(BAD_SIZES))
def test_a_size_that_is_not_the_stored_size_fails_everywhere(tmp_path: Path, case: str) -> None:
    with small_ctx(tmp_path / "s") as ctx:
        data = b"5byte"
        key = put_chunk(ctx, data)
        fkey, size = BAD_SIZES[case](ctx, key, len(data))
        bid = bundle_of(ctx, [file_entry("f.bin", fkey, size)])
        with pytest.raises(CorruptObject) as err:
            ctx.cas.file_chunks(fkey, size)
        assert fkey.hex() in str(err.value)
        if size:  # api/download.py writes a 0-byte entry without asking the store (see report)
            with pytest.raises(IntegrityError):
                ctx.download("r", tmp_path / "d", bundle=bid)
        view = BundleView(ctx, ctx.bundle("r", bid), prefetch=0)
        with pytest.raises(OSError) as eio:
            view.open("/f.bin")
        assert eio.value.errno == errno.EIO
        view.close()
        r = verify(ctx)
        assert not r.ok and [a.path for a in r.affected] == ["f.bin"]
        assert any(p.kind == SIZE_MISMATCH for p in r.problems.values())


def test_impossible_maps_are_refused(tmp_path: Path) -> None:
    with small_ctx(tmp_path / "s") as ctx:
        max_size = ctx.cas.chunker.params.max_size
        _, chunks = store_file(ctx, G)
        (c0, n0), (c1, n1) = chunks[0], chunks[1]
        cases = {
            "one chunk": [(c0, n0)],
            "no chunks": [],
            "zero length": [(c0, 0), (c1, n1)],
            "above max_size": [(c0, max_size + 1), (c1, n1)],
        }
        for name, fmap in cases.items():
            fkey = key_of(name.encode())
            put_filemap(ctx, fkey, fmap)
            with pytest.raises(CorruptObject) as err:
                ctx.cas.file_chunks(fkey, sum(n for _, n in fmap) or 1)
            assert fkey.hex() in str(err.value), name
        # the map's total is not the tree's size
        fkey = key_of(b"total")
        put_filemap(ctx, fkey, chunks)
        with pytest.raises(CorruptObject):
            ctx.cas.file_chunks(fkey, sum(n for _, n in chunks) + 1)
        # a map listing a chunk with the wrong length (totals agree with the tree)
        fkey = key_of(b"lengths")
        put_filemap(ctx, fkey, [(c0, n0 + 1), (c1, n1 - 1)])
        with pytest.raises(CorruptObject):
            b"".join(ctx.cas.iter_file(fkey, n0 + n1))
        with pytest.raises(CorruptObject):
            ctx.cas.open_file(fkey, n0 + n1).read()
        bid = bundle_of(ctx, [file_entry("x.bin", fkey, n0 + n1)])
        r = verify(ctx, bundle=bid, repo="r")
        assert r.problems[fkey.hex()].kind == CORRUPT


def test_small_file_download_refuses_a_file_map_row(tmp_path: Path) -> None:
    """Small files are fetched as whole objects: a map's bytes are never file content."""
    with small_ctx(tmp_path / "s") as ctx:
        fake = encode_filemap([(b"\1" * 32, 1), (b"\2" * 32, 1)])
        fkey = key_of(b"tiny")
        put_objects(ctx, [(fkey, fake, Kind.FILEMAP)])
        bid = bundle_of(ctx, [file_entry("t.txt", fkey, len(fake))])
        with pytest.raises(CorruptObject):
            ctx.cas.get_many([fkey])
        with pytest.raises(IntegrityError):
            ctx.download("r", tmp_path / "d", bundle=bid)
        assert contents(tmp_path / "d").get("t.txt") != fake
