"""``datamon://`` through the real fsspec registry: pandas, pyarrow, glob, ranges, lazy fetches."""

from __future__ import annotations

import io
import random
import uuid
from pathlib import Path

import fsspec
import pytest

from datamon.api.context import Context
from tests.conftest import make_tree
from tests.pin.conftest import Dm, Reads, Store

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def fs():
    f = fsspec.filesystem("datamon", skip_instance_cache=True)
    yield f


def test_registered_through_the_entry_point() -> None:
    from datamon.fs import DatamonFileSystem

    assert fsspec.get_filesystem_class("datamon") is DatamonFileSystem


def test_pandas_read_csv_and_listing(fs, store: Store) -> None:
    df = pd.read_csv("datamon://mnist@prod/train/labels.csv", header=None, names=["i", "digit"])
    assert len(df) == 2000 and df["digit"].sum() == sum(i % 10 for i in range(2000))
    assert pd.read_csv(f"datamon://mnist@{store.v2[:8]}/extra.txt", header=None).iloc[0, 0] == "new in v2"
    assert fs.ls("mnist@prod", detail=False) == ["mnist@prod/README", "mnist@prod/test", "mnist@prod/train"]
    assert [r["name"] for r in fs.ls("")] == ["mnist"]
    assert sorted(fs.find("mnist@prod")) == [
        "mnist@prod/README",
        "mnist@prod/test/labels.csv",
        "mnist@prod/train/labels.csv",
        "mnist@prod/train/notes.txt",
    ]
    assert fs.glob("mnist@prod/**/*.csv") == ["mnist@prod/test/labels.csv", "mnist@prod/train/labels.csv"]
    files = fsspec.open_files("datamon://mnist@prod/train/*.txt")
    assert [f.path for f in files] == ["mnist@prod/train/notes.txt"]
    with files[0] as f:
        assert f.read() == b"v1\n"
    # no @REF: the latest bundle (v2)
    assert fs.cat_file("mnist/train/notes.txt") == b"v2\n"
    info = fs.info("mnist@prod/train/notes.txt")
    assert info["type"] == "file" and info["size"] == 3 and info["bundle"] == store.v1
    from datamon.cas.hashing import key_of

    assert info["key"] == key_of(b"v1\n").hex() == fs.ukey("mnist@prod/train/notes.txt")
    assert fs.checksum("mnist@prod/train/notes.txt") == int(info["key"], 16)
    assert fs.isdir("mnist@prod/train") and fs.exists("mnist@prod/README")
    assert not fs.exists("mnist@prod/nope") and not fs.exists("nope@prod/x")


def test_refusals(fs, store: Store) -> None:
    for bad in ("mnist@prod/../x", "mnist@prod/train/../../etc", "../mnist", "mnist@prod/a\x00b"):
        with pytest.raises(ValueError):
            fs.info(bad)
    with pytest.raises(PermissionError, match="read-only"):
        fs.open("mnist@prod/new.csv", "wb")
    with pytest.raises(PermissionError):
        fs.rm("mnist@prod/README")
    with pytest.raises(PermissionError):
        fs.pipe_file("mnist@prod/README", b"x")
    with pytest.raises(FileNotFoundError):
        fs.open("mnist@prod/nope.csv")
    with pytest.raises(FileNotFoundError):
        fs.open("mnist@nolabel/README")
    with pytest.raises(FileNotFoundError):
        pd.read_csv("datamon://nope/x.csv")
    with pytest.raises(IsADirectoryError):
        fs.open("mnist@prod/train")


def test_labels_are_reread_after_the_ttl_ids_never(store: Store) -> None:
    fs = fsspec.filesystem("datamon", ref_ttl=0, skip_instance_cache=True)
    assert fs.cat_file("mnist@prod/train/notes.txt") == b"v1\n"
    store.ctx.set_label("mnist", "prod", store.v2)
    assert fs.cat_file("mnist@prod/train/notes.txt") == b"v2\n"
    assert fs.cat_file(f"mnist@{store.v1}/train/notes.txt") == b"v1\n"


def test_lock_paths_and_context_option(dm: Dm, store: Store, project: Path, tmp_path: Path) -> None:
    import os

    assert dm("lock", "add", "digits", "--repo", "mnist", "--label", "prod", "--path", "data/d").code == 0
    store.ctx.set_label("mnist", "prod", store.v2)  # the pin stays on v1
    assert pd.read_csv("datamon://lock:digits/test/labels.csv", header=None).shape == (2, 2)
    with pytest.raises(FileNotFoundError):
        fsspec.open("datamon://lock:nope/README").open()
    home = os.environ["DATAMON_HOME"]
    assert (
        dm(
            "context",
            "create",
            "other",
            "--blob",
            f"file://{home}/blobs",
            "--meta",
            f"sqlite:///{home}/meta.db",
        ).code
        == 0
    )
    with fsspec.open("datamon://mnist@prod/extra.txt?context=other") as f:
        assert f.read() == b"new in v2\n"
    df = pd.read_csv("datamon://mnist@prod/extra.txt", header=None, storage_options={"context": "other"})
    assert df.iloc[0, 0] == "new in v2"
    with pytest.raises(Exception, match="does not exist"):
        fsspec.open("datamon://mnist@prod/extra.txt?context=missing").open()


def _big_store(tmp_path: Path, name: str) -> tuple[Context, bytes]:
    rnd = random.Random(7)
    blob = rnd.randbytes(6 << 20)
    ctx = Context(
        f"memory://pin-{uuid.uuid4().hex}",
        f"sqlite:///{tmp_path}/{name}.db",
        cache_dir=tmp_path / f"{name}-chunks",
        state_dir=tmp_path / "state",
    )
    ctx.create_repo("r")
    make_tree(tmp_path / name, {"big.bin": blob})
    ctx.upload("r", tmp_path / name, "big")
    return ctx, blob


def test_ranged_and_seeking_reads_fetch_only_the_chunks_they_need(tmp_path: Path, reads: Reads) -> None:
    ctx, blob = _big_store(tmp_path, "ranged")
    ctx.cas.cache = None  # count every fetch: no local chunk cache
    ctx.cas.reader.cache = None
    fs = fsspec.filesystem("datamon", context=ctx)
    reads.reset()
    assert fs.cat_file("r/big.bin", 1000, 2000) == blob[1000:2000]
    assert fs.cat_file("r/big.bin", 1 << 20, (1 << 20) + 10) == blob[1 << 20 : (1 << 20) + 10]
    with fs.open("r/big.bin") as f:
        f.seek(2 << 20)
        assert f.read(100) == blob[2 << 20 : (2 << 20) + 100]
        assert f.tell() == (2 << 20) + 100
        f.seek(-10, io.SEEK_END)
        assert f.read() == blob[-10:]  # the last chunk: the whole file is proven first
    assert fs.cat_file("r/big.bin", -5) == blob[-5:]
    assert fs.cat_file("r/big.bin") == blob
    ctx.close()


def test_reads_before_the_last_chunk_are_lazy(tmp_path: Path, reads: Reads) -> None:
    ctx, blob = _big_store(tmp_path, "lazy")
    fs = fsspec.filesystem("datamon", context=ctx)
    reads.reset()
    with fs.open("r/big.bin") as f:
        assert f.read(1 << 20) == blob[: 1 << 20]
    assert 0 < reads.bytes < len(blob) // 2, reads.bytes
    ctx.close()


def _parquet(tmp_path: Path) -> bytes:
    rnd = random.Random(3)
    n = 200_000
    table = pa.table({c: [rnd.random() for _ in range(n)] for c in ("a", "b", "c", "d")})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="none", row_group_size=n)
    return buf.getvalue()


def test_parquet_column_projection_fetches_part_of_the_file(tmp_path: Path, reads: Reads) -> None:
    data = _parquet(tmp_path)
    src = make_tree(tmp_path / "pq", {"t.parquet": data})
    state = tmp_path / "state"
    blob_url, meta_url = f"memory://pq-{uuid.uuid4().hex}", f"sqlite:///{tmp_path}/pq.db"
    first = Context(blob_url, meta_url, cache_dir=tmp_path / "c1", state_dir=state)
    first.create_repo("r")
    first.upload("r", src, "parquet")
    fs = fsspec.filesystem("datamon", context=first)
    # the first read in this machine proves the whole file (its footer is in the last chunk)
    reads.reset()
    t = pq.read_table("r/t.parquet", columns=["b"], filesystem=fs)
    assert t.column_names == ["b"] and t.num_rows == 200_000
    assert reads.bytes >= len(data) * 0.9
    first.close()
    # a new process (new context, empty chunk cache): the proof is remembered, the read is lazy
    second = Context(blob_url, meta_url, cache_dir=tmp_path / "c2", state_dir=state)
    fs2 = fsspec.filesystem("datamon", context=second)
    reads.reset()
    t2 = pq.read_table("r/t.parquet", columns=["b"], filesystem=fs2)
    assert t2.equals(t)
    assert reads.bytes < len(data) * 0.6, (reads.bytes, len(data))
    df = pd.read_parquet("datamon://r/t.parquet", columns=["a", "d"], storage_options={"context": second})
    assert list(df.columns) == ["a", "d"] and len(df) == 200_000
    second.close()


def test_a_file_that_does_not_hash_to_its_key_is_never_returned_whole(tmp_path: Path) -> None:
    """A hostile file map: right size, other chunks. Reads before the last chunk may be served;
    the read reaching the end raises the integrity error."""
    from datamon.errors import IntegrityError

    ctx, _ = _big_store(tmp_path, "forged")
    fs = fsspec.filesystem("datamon", context=ctx)
    e = ctx.cas.read_tree(bytes.fromhex(ctx.bundle("r").tree))[0]
    chunks = ctx.cas.file_chunks(e.key, e.size)
    assert len(chunks) > 2
    forged = [chunks[1], chunks[0], *chunks[2:]] if chunks[0][1] == chunks[1][1] else None
    if forged is None:  # swap-in same-length chunk not available: reorder by a monkeypatched map
        forged = list(reversed(chunks))
    real = ctx.cas.file_chunks
    ctx.cas.file_chunks = lambda key, size: forged if key == e.key else real(key, size)  # type: ignore[method-assign]
    with pytest.raises(IntegrityError):
        fs.cat_file("r/big.bin")
    ctx.close()


def test_data_records(store: Store) -> None:
    from datamon import data

    recs = data.records("datamon://mnist@prod/train")
    assert [r.path for r in recs] == ["labels.csv", "notes.txt"]
    assert recs[1].url == f"datamon://mnist@{store.v1}/train/notes.txt"
    store.ctx.set_label("mnist", "prod", store.v2)  # the records stay on the bundle they listed
    with fsspec.open(recs[1].url) as f:
        assert f.read() == b"v1\n"
    assert [r.path for r in data.records(f"datamon://mnist@{store.v2[:8]}", pattern=r"\.csv$")] == [
        "train/labels.csv"
    ]
    assert recs[0].as_dict()["size"] == recs[0].size
