"""Uploads whose source is an object store (s3:// on moto, gs:// on the GCS emulator, memory://):
round trips, splits of a remote source merging into the single upload's tree, listed subsets."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

from datamon.api import diamond as dia
from datamon.api.remotesrc import is_remote, list_source, mtime_ns, open_source
from datamon.errors import NotFound, UsageError
from tests.integrity.helpers import contents, open_ctx

BIG = 17 << 20  # above the 16 MiB chunking window: streamed, not fetched whole


def _objects(seed: int, big: bool = False) -> dict[str, bytes]:
    rnd = random.Random(seed)
    files = {f"dir{i % 3}/sub{i % 2}/f{i}.csv": rnd.randbytes(rnd.randint(0, 5000)) for i in range(40)}
    files["top.txt"] = b"top"
    files["empty.bin"] = b""
    if big:
        files["large/blob.bin"] = rnd.randbytes(BIG)
    return files


def _put_all(fs: object, base: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        fs.pipe_file(f"{base}/{rel}", data)  # type: ignore[attr-defined]


def test_is_remote() -> None:
    assert is_remote("s3://b/p") and is_remote("gs://b") and is_remote("GCS://b/x")
    assert not is_remote("/data") and not is_remote("file:///data") and not is_remote(Path("/x"))


def test_mtime_of_the_usual_info_fields() -> None:
    from datetime import UTC, datetime

    t = datetime(2024, 5, 1, 12, 0, 1, 500, tzinfo=UTC)
    want = int(t.timestamp()) * 10**9 + 500_000
    assert mtime_ns({"LastModified": t}) == want
    assert mtime_ns({"updated": "2024-05-01T12:00:01.000500Z"}) == want
    assert mtime_ns({"created": 1714564801.0}) == 1714564801 * 10**9
    assert mtime_ns({}) == 0


def test_memory_source_round_trip_and_splits(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory", skip_instance_cache=False)
    base = f"/src-{uuid.uuid4().hex[:8]}/data"
    files = _objects(1)
    _put_all(fs, base, files)
    url = f"memory://{base}"
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        single = ctx.upload("r", url, message="from memory")
        assert single.files == len(files)
        ctx.download("r", tmp_path / "out", bundle=single.bundle.id)
        assert contents(tmp_path / "out") == files
        # splits by top-level folder and interleaved subsets merge into the same tree
        listed = [f.rel for f in list_source(open_source(url))]
        d = dia.initialize(ctx, "r")
        dia.add_split(ctx, "r", d.id, url, files=["dir0", "top.txt"])
        dia.add_split(ctx, "r", d.id, url, files=[r for r in listed if not r.startswith("dir0")][::2])
        dia.add_split(ctx, "r", d.id, url, files=[r for r in listed if not r.startswith("dir0")][1::2])
        r = dia.commit(ctx, "r", d.id, message="merged")
        assert (r.bundle.tree, r.bundle.file_count, r.bundle.total_size) == (
            single.bundle.tree,
            single.files,
            single.bytes,
        )
        with pytest.raises(UsageError, match="nope"):
            ctx.upload("r", url, message="m", files=["nope.txt"])
        with pytest.raises(NotFound):
            ctx.upload("r", f"memory://{base}-missing", message="m")


def test_s3_source_bundle_upload_and_split(s3_server, tmp_path: Path, dm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.create_bucket()
    files = _objects(2, big=True)
    client = s3_server.client()
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"raw/{rel}", Body=data)
    client.put_object(Bucket=bucket, Key="other/not-this.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="raw/folder-marker/", Body=b"")  # consoles make these: skipped
    monkeypatch.setenv("DATAMON_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    monkeypatch.setenv("DATAMON_META_URL", f"sqlite:///{tmp_path / 'meta.db'}")
    src = s3_server.url(bucket, "raw")
    assert dm("repo", "create", "--repo", "r").code == 0
    up = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "from s3", "--label", "s3")
    assert up.code == 0, up
    got = dm("bundle", "download", "--repo", "r", "--label", "s3", "--destination", tmp_path / "out")
    assert got.code == 0, got
    assert contents(tmp_path / "out") == files
    d = dm("diamond", "initialize", "--repo", "r").out.strip()
    for part in ("dir0", "dir1"):
        lst = tmp_path / f"{part}.lst"
        lst.write_text(f"{part}\n")
        r = dm("diamond", "split", "add", "--repo", "r", "--diamond", d, "--path", src, "--files", lst)
        assert r.code == 0, r
    lst = tmp_path / "rest.lst"
    lst.write_text("dir2\ntop.txt\nempty.bin\nlarge/blob.bin\n")
    assert (
        dm("diamond", "split", "add", "--repo", "r", "--diamond", d, "--path", src, "--files", lst).code == 0
    )
    c = dm("diamond", "commit", "--repo", "r", "--diamond", d, "--message", "merged", "--json")
    assert c.code == 0, c
    from datamon.api.context import Context

    with Context(f"file://{tmp_path / 'blobs'}", f"sqlite:///{tmp_path / 'meta.db'}") as ctx:
        merged = ctx.meta.get_bundle("r", json.loads(c.out)["bundle"])
        single = ctx.meta.get_bundle("r", ctx.meta.get_label("r", "s3").bundle_id)
        assert (merged.tree, merged.file_count, merged.total_size) == (
            single.tree,
            single.file_count,
            single.total_size,
        )


def test_gcs_source_round_trip(gcs_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket = gcs_server.create_bucket()
    files = _objects(3)
    src = gcs_server.url(bucket, "in")
    s = open_source(src)
    _put_all(s.fs, f"{bucket}/in", files)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        up = ctx.upload("r", src, message="from gcs")
        assert up.files == len(files)
        ctx.download("r", tmp_path / "out", bundle=up.bundle.id)
        assert contents(tmp_path / "out") == files
        again = ctx.upload("r", src, message="again")
        assert again.bundle.tree == up.bundle.tree and again.new_bytes == 0


def test_large_objects_are_streamed_and_small_ones_batched(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Memory stays bounded: an object of a chunking window or more is never fetched whole, and
    small objects come in bounded batches."""
    import fsspec

    from datamon.api import remotesrc

    fs = fsspec.filesystem("memory", skip_instance_cache=False)
    base = f"/big-{uuid.uuid4().hex[:8]}"
    files = {"large.bin": random.Random(5).randbytes(BIG), **{f"s/{i}.txt": b"x" * i for i in range(600)}}
    _put_all(fs, base, files)
    cat_sizes: list[int] = []
    real_cat = type(fs).cat

    def cat(self, paths, **kw):  # type: ignore[no-untyped-def]
        got = real_cat(self, paths, **kw)
        cat_sizes.append(sum(len(v) for v in got.values()) if isinstance(got, dict) else len(got))
        assert (len(got) if isinstance(got, dict) else 1) <= remotesrc.SMALL_BATCH_FILES
        return got

    monkeypatch.setattr(type(fs), "cat", cat)
    with open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        up = ctx.upload("r", f"memory://{base}", message="m", concurrency=2)
        assert up.files == len(files)
        assert cat_sizes and max(cat_sizes) <= remotesrc.SMALL_BATCH_BYTES
        assert sum(cat_sizes) == sum(len(v) for k, v in files.items() if k != "large.bin")
        ctx.download("r", tmp_path / "out", bundle=up.bundle.id)
        assert contents(tmp_path / "out") == files
