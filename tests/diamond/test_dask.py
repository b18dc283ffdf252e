"""``datamon.distributed.upload`` and ``bundle upload --dask`` on a real ``LocalCluster`` with
worker processes (127.0.0.1): partitioning by bytes, a failed split retried, the commit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamon.api import diamond as dia
from datamon.distributed import Item, list_local, partition, upload
from tests.diamond.flaky import FlakyClient
from tests.diamond.helpers import listing, make_dataset
from tests.integrity.helpers import contents, open_ctx

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster(_s3_credentials: None) -> Iterator[object]:
    """Worker processes inherit this environment: the S3 test's credentials must be in it first."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    ) as c:
        yield c


def test_partition_cuts_contiguous_runs_of_equal_weight() -> None:
    from datamon.distributed import PER_FILE_WEIGHT

    sizes = [100_000, 5, 70_000, 10, 10, 250_000, 10, 5, 40_000, 1]
    items = [Item(f"f{i}", s) for i, s in enumerate(sizes)]
    parts = partition(items, 3)
    assert [i for p in parts for i in p] == items  # contiguous, in order, nothing lost
    weights = [sum(i.size + PER_FILE_WEIGHT for i in p) for p in parts]
    assert max(weights) - min(weights) <= max(sizes) + PER_FILE_WEIGHT
    assert partition(items[:2], 5) == [[items[0]], [items[1]]]  # no empty parts
    assert partition([], 3) == []
    many = [Item(f"{i:05d}", 100) for i in range(1000)]
    assert [len(p) for p in partition(many, 8)] == [125] * 8


def test_list_local_includes_links_and_empty_dirs(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", n=30)
    assert [i.rel for i in list_local(str(src))] == listing(src)


def test_dask_upload_retries_a_failed_split_and_equals_one_upload(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_dataset(tmp_path / "src", n=300, big=2)
    markers = tmp_path / "markers"
    markers.mkdir()
    with distributed.Client(cluster) as client, open_ctx(tmp_path / "s") as ctx:
        ctx.create_repo("r")
        r = upload(
            ctx, "r", str(src), client=FlakyClient(client, str(markers)), message="dask", label="L", splits=4
        )
        assert len(r.splits) == 4 and (markers / f"{r.diamond.id}-part-0001").exists()
        splits = dia.list_splits(ctx, "r", r.diamond.id)
        assert sorted(s.id for s in splits) == [f"part-{i:04d}" for i in range(4)]
        assert all(s.state == dia.DONE for s in splits)  # the failed attempt was replaced
        single = ctx.upload("r", src, message="single")
        assert (r.bundle.tree, r.bundle.file_count, r.bundle.total_size) == (
            single.bundle.tree,
            single.files,
            single.bytes,
        )
        assert ctx.get_label("r", "L").bundle_id == r.bundle.id
        ctx.download("r", tmp_path / "out", bundle=r.bundle.id)
        assert contents(tmp_path / "out") == contents(src)


def test_bundle_upload_dask_from_s3(cluster, s3_server, tmp_path: Path, dm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.create_bucket()
    client = s3_server.client()
    files = {f"d{i % 4}/f{i}.txt": f"object {i}\n".encode() * (i + 1) for i in range(60)}
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"in/{rel}", Body=data)
    monkeypatch.setenv("DATAMON_BLOB_URL", f"file://{tmp_path / 'blobs'}")
    monkeypatch.setenv("DATAMON_META_URL", f"sqlite:///{tmp_path / 'meta.db'}")
    src = s3_server.url(bucket, "in")
    assert dm("repo", "create", "--repo", "r").code == 0
    r = dm(
        "bundle", "upload", "--repo", "r", "--path", src, "--message", "m",
        "--dask", cluster.scheduler_address, "--splits", "3", "--json",
    )  # fmt: skip
    assert r.code == 0, r
    row = json.loads(r.out)
    assert row["splits"] == 3 and row["files"] == len(files)
    one = dm("bundle", "upload", "--repo", "r", "--path", src, "--message", "one", "--json")
    merged = json.loads(dm("bundle", "get", "--repo", "r", "--bundle", row["bundle"], "--json").out)
    assert json.loads(one.out)["tree"] == merged["tree"]
    got = dm("bundle", "download", "--repo", "r", "--bundle", row["bundle"], "--destination", tmp_path / "o")
    assert got.code == 0, got
    assert contents(tmp_path / "o") == files


def test_splits_without_dask_is_a_usage_error(dm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = dm("bundle", "upload", "--repo", "r", "--path", tmp_path, "--message", "m", "--splits", "2")
    assert r.code == 1 and "--dask" in r.err
